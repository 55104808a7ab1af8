import AsyncHTTPClient
import Foundation
import HearthCore
import HearthImage
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// How hearthd reaches registries (`hearthd --registry-ca`,
/// `--insecure-registry`, `--registry-mirror`).
public struct RegistryConfiguration: Sendable {
    /// `host[:port]` of registries spoken to in plain HTTP; every other
    /// registry gets HTTPS.
    public var insecureRegistries: Set<String> = []
    /// PEM files of CAs trusted beside the system's.
    public var caFiles: [String] = []
    /// Registry name → `host[:port]` contacted instead (same repository
    /// paths), e.g. `docker.io` → a local mirror.
    public var mirrors: [String: String] = [:]
    /// Layers downloaded at once per pull.
    public var parallelDownloads = 4

    public init() {}
}

/// Where a registry is reached.
struct Endpoint: Sendable {
    /// The registry as references name it (`docker.io`, `host:5000`).
    let registry: String
    /// The host contacted (the registry, or its mirror).
    let host: String
    let secure: Bool

    var base: String { (secure ? "https://" : "http://") + host }
}

/// The OCI distribution protocol over AsyncHTTPClient: manifests and
/// blobs, the `WWW-Authenticate` challenge flow (anonymous or Basic
/// credentials for Bearer tokens, cached per registry and scope; Basic auth
/// straight to the registry), the registry's JSON errors quoted in
/// messages. Redirects are followed here, not by the client, so that an
/// `Authorization` header never leaves the registry's origin.
final class RegistryClient: Sendable {
    let configuration: RegistryConfiguration
    let credentials: CredentialStore
    private let tls: TLSConfiguration
    /// Created on the first request: an idle daemon spends no thread on it.
    private let state = Mutex<(client: HTTPClient?, group: MultiThreadedEventLoopGroup?, closed: Bool)>((nil, nil, false))
    private let tokens = Mutex<[String: CachedToken]>([:])

    private struct CachedToken {
        var header: String
        var expires: ContinuousClock.Instant
    }

    static let userAgent = "hearthd/0.1"
    static let maxErrorBody = 64 << 10

    init(configuration: RegistryConfiguration, credentials: CredentialStore) throws {
        self.configuration = configuration
        self.credentials = credentials
        var tls = TLSConfiguration.makeClientConfiguration()
        var extra: [NIOSSLCertificate] = []
        for file in configuration.caFiles {
            do {
                let certs = try NIOSSLCertificate.fromPEMFile(file)
                guard !certs.isEmpty else { throw HearthError.invalid("no certificate in it") }
                extra += certs
            } catch {
                throw HearthError.invalid("--registry-ca \(file): not a readable PEM file of CA certificates (\(RegistryClient.describe(error)))")
            }
        }
        if !extra.isEmpty { tls.additionalTrustRoots = [.certificates(extra)] }
        self.tls = tls
    }

    private func client() throws -> HTTPClient {
        try state.withLock { s in
            if s.closed { throw HearthError(.unavailable, "hearthd is shutting down") }
            if let c = s.client { return c }
            var conf = HTTPClient.Configuration(
                tlsConfiguration: tls, redirectConfiguration: .disallow,
                // read: the longest a registry may stay silent mid-response.
                timeout: .init(connect: .seconds(15), read: .seconds(60)), decompression: .disabled)
            // A refused connection or a failed handshake is the answer, not
            // something to retry until a deadline.
            conf.connectionPool.retryConnectionEstablishment = false
            // Its own event loop: pulls never delay the daemon's API loop.
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let c = HTTPClient(eventLoopGroupProvider: .shared(group), configuration: conf)
            s.client = c
            s.group = group
            return c
        }
    }

    func shutdown() async {
        let (c, g) = state.withLock { s -> (HTTPClient?, MultiThreadedEventLoopGroup?) in
            s.closed = true
            return (s.client, s.group)
        }
        try? await c?.shutdown()
        try? await g?.shutdownGracefully()
    }

    // MARK: endpoints

    /// Where `registry` is reached. The default registry's name is only a
    /// name here: without a mirror for it there is no endpoint (the
    /// daemon never guesses a public service's address).
    func endpoint(_ registry: String) throws -> Endpoint {
        if registry == ImageName.defaultRegistry && configuration.mirrors[registry] == nil {
            throw HearthError(.imageNotFound, "\(registry) has no endpoint on this daemon: hearthd reaches it only through --registry-mirror \(registry)=HOST[:PORT]; or name the image with its registry (HOST[:PORT]/NAME:TAG), or import it")
        }
        let host = configuration.mirrors[registry] ?? registry
        let insecure = configuration.insecureRegistries.contains(host) || configuration.insecureRegistries.contains(registry)
        return Endpoint(registry: registry, host: host, secure: !insecure)
    }

    // MARK: requests

    /// GET `path` on the registry, authenticating as its challenge asks
    /// (once per request) and following up to 5 redirects. Returns the
    /// final response, whatever its status; its body is still unread.
    /// `credential`: authenticate with these rather than the saved ones
    /// (a login being checked; its token is not cached).
    func get(_ endpoint: Endpoint, _ path: String, scope: String?, accept: [String] = [],
             deadline: NIODeadline, credential: RegistryCredential? = nil) async throws -> HTTPClientResponse {
        var url = endpoint.base + path
        var sameOrigin = true
        var authorization = credential == nil ? cachedToken(endpoint, scope) : nil
        var challenged = false
        for _ in 0...5 {
            var request = HTTPClientRequest(url: url)
            request.method = .GET
            request.headers.add(name: "User-Agent", value: Self.userAgent)
            if !accept.isEmpty { request.headers.add(name: "Accept", value: accept.joined(separator: ", ")) }
            if sameOrigin, let authorization { request.headers.add(name: "Authorization", value: authorization) }
            let response = try await execute(request, endpoint: endpoint, deadline: deadline)
            switch response.status.code {
            case 401 where sameOrigin && !challenged:
                challenged = true
                let body = await Self.drain(response)
                guard let header = response.headers.first(name: "WWW-Authenticate") else {
                    throw HearthError(.forbidden, "registry \(endpoint.registry) answered 401 to GET \(path) without a WWW-Authenticate challenge: \(Self.errorText(body, status: response.status))")
                }
                authorization = try await authorize(header, endpoint: endpoint, scope: scope, credential: credential,
                                                    refusal: Self.errorText(body, status: response.status))
            case 301, 302, 303, 307, 308:
                _ = await Self.drain(response)
                guard let location = response.headers.first(name: "Location"), let next = URL(string: location, relativeTo: URL(string: url)) else {
                    throw HearthError(.unavailable, "registry \(endpoint.registry) redirected GET \(path) without a usable Location")
                }
                let nextURL = next.absoluteString
                guard nextURL.hasPrefix("https://") || (nextURL.hasPrefix("http://") && !endpoint.secure) else {
                    throw HearthError(.forbidden, "registry \(endpoint.registry) redirected GET \(path) to \(Self.redactedURL(nextURL)), which is not HTTPS")
                }
                if URL(string: nextURL)?.host != URL(string: url)?.host || URL(string: nextURL)?.port != URL(string: url)?.port {
                    sameOrigin = false
                }
                url = nextURL
            default:
                return response
            }
        }
        throw HearthError(.unavailable, "registry \(endpoint.registry): GET \(path) was redirected more than 5 times")
    }

    private func execute(_ request: HTTPClientRequest, endpoint: Endpoint, deadline: NIODeadline) async throws -> HTTPClientResponse {
        do {
            return try await client().execute(request, deadline: deadline)
        } catch let e as HearthError {
            throw e
        } catch {
            throw transportError(error, endpoint: endpoint)
        }
    }

    /// Reads a small body (an error, a token) whatever the status; empty
    /// when it cannot be read.
    static func drain(_ response: HTTPClientResponse) async -> [UInt8] {
        guard let buffer = try? await response.body.collect(upTo: maxErrorBody) else { return [] }
        return Array(buffer.readableBytesView)
    }

    // MARK: auth

    private func tokenKey(_ endpoint: Endpoint, _ scope: String?) -> String {
        "\(endpoint.registry)|\(scope ?? "")"
    }

    private func cachedToken(_ endpoint: Endpoint, _ scope: String?) -> String? {
        let key = tokenKey(endpoint, scope)
        return tokens.withLock { t in
            guard let token = t[key] else { return nil }
            if token.expires < .now { t[key] = nil; return nil }
            return token.header
        }
    }

    /// Answers a challenge: the `Authorization` value to retry with.
    /// `refusal`: the registry's words with its 401, for messages.
    func authorize(_ header: String, endpoint: Endpoint, scope: String?,
                   credential explicit: RegistryCredential? = nil, refusal: String? = nil) async throws -> String {
        let challenge = Challenge.parse(header)
        let credential = try explicit ?? credentials.credential(for: endpoint.registry)
        switch challenge.scheme {
        case "basic":
            guard let credential else {
                throw HearthError(.forbidden, "registry \(endpoint.registry) requires a login (Basic auth\(refusal.map { ": it answered \($0)" } ?? "")); run `hearth login \(endpoint.registry)`")
            }
            return Self.basic(credential)
        case "bearer":
            guard let realm = challenge.parameters["realm"], var components = URLComponents(string: realm),
                  components.scheme == "https" || components.scheme == "http" else {
                throw HearthError(.unavailable, "registry \(endpoint.registry) sent a Bearer challenge without a usable realm: \(header)")
            }
            if components.scheme == "http" && endpoint.secure && credential != nil {
                throw HearthError(.forbidden, "registry \(endpoint.registry) asks for credentials at \(Self.redactedURL(realm)), which is not HTTPS; not sending them")
            }
            var query = components.queryItems ?? []
            if let service = challenge.parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
            if let scope = scope ?? challenge.parameters["scope"] { query.append(URLQueryItem(name: "scope", value: scope)) }
            if let credential { query.append(URLQueryItem(name: "account", value: credential.username)) }
            components.queryItems = query.isEmpty ? nil : query
            guard let tokenURL = components.string else {
                throw HearthError(.unavailable, "registry \(endpoint.registry): cannot build a token URL from realm \(realm)")
            }
            var request = HTTPClientRequest(url: tokenURL)
            request.headers.add(name: "User-Agent", value: Self.userAgent)
            if let credential { request.headers.add(name: "Authorization", value: Self.basic(credential)) }
            let response = try await execute(request, endpoint: endpoint, deadline: .now() + .seconds(60))
            let body = await Self.drain(response)
            guard response.status.code == 200 else {
                let who = credential.map { " as \($0.username)" } ?? " anonymously"
                let code: HearthError.Code = [401, 403].contains(response.status.code) ? .forbidden : .unavailable
                throw HearthError(code, "registry \(endpoint.registry): the token server refused access\(who): \(Self.errorText(body, status: response.status))")
            }
            struct TokenResponse: Decodable {
                var token: String?
                var access_token: String?
                var expires_in: Int?
            }
            guard let parsed = try? JSONDecoder().decode(TokenResponse.self, from: Data(body)),
                  let token = parsed.token ?? parsed.access_token, !token.isEmpty else {
                throw HearthError(.unavailable, "registry \(endpoint.registry): the token server's answer has no token")
            }
            let header = "Bearer \(token)"
            // Renewed a little early; 60 s when the server does not say.
            let lifetime = max(10, (parsed.expires_in ?? 60) - 10)
            if explicit == nil {
                let key = tokenKey(endpoint, scope)
                tokens.withLock { $0[key] = CachedToken(header: header, expires: .now + .seconds(lifetime)) }
            }
            return header
        default:
            throw HearthError(.unavailable, "registry \(endpoint.registry) asks for \(challenge.scheme) authentication, which hearthd does not speak (Basic and Bearer only)")
        }
    }

    static func basic(_ c: RegistryCredential) -> String {
        "Basic " + Data("\(c.username):\(c.password)".utf8).base64EncodedString()
    }

    /// Forgets cached tokens of `registry` (after a login or logout).
    func forgetTokens(_ registry: String) {
        tokens.withLock { t in t = t.filter { !$0.key.hasPrefix(registry + "|") } }
    }

    // MARK: errors

    /// A registry's error body as `CODE: message` (several joined by `; `),
    /// else the status and the start of the text.
    static func errorText(_ body: [UInt8], status: HTTPResponseStatus) -> String {
        struct Errors: Decodable {
            struct Entry: Decodable { var code: String?; var message: String? }
            var errors: [Entry]?
            var details: String?
        }
        if let parsed = try? JSONDecoder().decode(Errors.self, from: Data(body)), let list = parsed.errors, !list.isEmpty {
            return list.map { e in
                [e.code, e.message].compactMap { $0 }.joined(separator: ": ")
            }.joined(separator: "; ")
        }
        if let parsed = try? JSONDecoder().decode(Errors.self, from: Data(body)), let details = parsed.details {
            return "\(status.code) \(status.reasonPhrase): \(details)"
        }
        let text = String(decoding: body.prefix(300), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
            .replacingOccurrences(of: "\n", with: " ")
        return text.isEmpty ? "\(status.code) \(status.reasonPhrase)" : "\(status.code) \(status.reasonPhrase): \(text)"
    }

    /// The error for a final non-2xx answer to `what`, with the registry's
    /// own words.
    static func statusError(_ response: HTTPClientResponse, body: [UInt8], endpoint: Endpoint, what: String,
                            credential: RegistryCredential?) -> HearthError {
        let text = errorText(body, status: response.status)
        let code: HearthError.Code
        var hint = ""
        switch response.status.code {
        case 404: code = .imageNotFound
        case 401, 403:
            code = .forbidden
            hint = credential.map { "; the saved login for \(endpoint.registry) (user \($0.username)) was refused: run `hearth login \(endpoint.registry)` again" }
                ?? "; if the repository is private, run `hearth login \(endpoint.registry)`"
        case 429, 500...599: code = .unavailable
        default: code = .invalidArgument
        }
        return HearthError(code, "\(what): registry \(endpoint.registry) answered \(response.status.code): \(text)\(hint)")
    }

    func transportError(_ error: any Error, endpoint: Endpoint) -> HearthError {
        let text = Self.describe(error)
        var hint = ""
        if error is NIOSSLError || error is NIOSSLExtraError || text.contains("SSL") || text.contains("TLS") {
            if text.contains("WRONG_VERSION_NUMBER") || text.contains("PACKET_LENGTH_TOO_LONG") || text.contains("HTTP_REQUEST") {
                hint = "; it does not speak TLS: if \(endpoint.host) serves plain HTTP, start hearthd with --insecure-registry \(endpoint.host)"
            } else if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate") {
                hint = "; its certificate is not signed by a CA hearthd trusts (the system's, and --registry-ca FILE)"
            } else {
                hint = "; hearthd speaks HTTPS to registries not listed in --insecure-registry"
            }
            return HearthError(.unavailable, "registry \(endpoint.registry): TLS with \(endpoint.host) failed: \(text)\(hint)")
        }
        return HearthError(.unavailable, "registry \(endpoint.registry) (\(endpoint.base)) is unreachable: \(text)")
    }

    static func describe(_ error: any Error) -> String {
        if let e = error as? HearthError { return e.message }
        if let e = error as? IOError {
            return "\(ErrnoName.name(e.errnoCode)) (\(String(cString: strerror(e.errnoCode))))"
        }
        if let e = error as? NIOSSLError, case .handshakeFailed(let inner) = e {
            return "handshake failed: \(boringReasons(String(describing: inner)))"
        }
        if let e = error as? NIOConnectionError {
            let inner = e.connectionErrors.map { describe($0.error) }
            return inner.isEmpty ? String(describing: e) : inner.joined(separator: "; ")
        }
        if let e = error as? HTTPClientError { return e.description }
        return String(describing: error)
    }

    /// `…error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /path…`
    /// → `CERTIFICATE_VERIFY_FAILED`: BoringSSL's reasons without its source paths.
    static func boringReasons(_ text: String) -> String {
        var reasons: [String] = []
        var rest = Substring(text)
        while let r = rest.range(of: "OPENSSL_internal:") {
            rest = rest[r.upperBound...]
            let reason = rest.prefix { $0.isUppercase || $0.isNumber || $0 == "_" }
            if !reason.isEmpty { reasons.append(String(reason)) }
        }
        return reasons.isEmpty ? text : reasons.joined(separator: ", ")
    }

    /// A URL without its query (tokens, accounts) for messages.
    static func redactedURL(_ url: String) -> String {
        String(url.prefix { $0 != "?" })
    }
}

/// A parsed `WWW-Authenticate` value: `Bearer realm="…",service="…",scope="…"`.
struct Challenge: Equatable {
    /// Lowercased.
    var scheme: String
    var parameters: [String: String]

    static func parse(_ header: String) -> Challenge {
        var rest = Substring(header).drop { $0 == " " }
        let scheme = rest.prefix { $0 != " " }
        rest = rest.dropFirst(scheme.count)
        var parameters: [String: String] = [:]
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " || $0 == "," }
            let key = rest.prefix { $0 != "=" && $0 != "," }
            rest = rest.dropFirst(key.count)
            guard rest.first == "=" else { continue }
            rest = rest.dropFirst()
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                while let c = rest.first, c != "\"" {
                    if c == "\\", let next = rest.dropFirst().first {
                        value.append(next)
                        rest = rest.dropFirst(2)
                    } else {
                        value.append(c)
                        rest = rest.dropFirst()
                    }
                }
                rest = rest.dropFirst()
            } else {
                let raw = rest.prefix { $0 != "," }
                value = raw.trimmingCharacters(in: .whitespaces)
                rest = rest.dropFirst(raw.count)
            }
            let name = key.trimmingCharacters(in: .whitespaces).lowercased()
            if !name.isEmpty { parameters[name] = value }
        }
        return Challenge(scheme: scheme.lowercased(), parameters: parameters)
    }
}
