#if canImport(Glibc)
import Glibc
#endif
import AsyncHTTPClient
import Crypto
import Dispatch
import Foundation
import HearthCore
import HearthImage
import NIOCore
import Synchronization

/// Pulls images from OCI distribution registries into the image store.
///
/// A pull resolves the reference to a manifest (through an image index to
/// this host's platform), fetches and checks the config, then downloads
/// the layers the store does not have (same diff ID), a few at once, each
/// into a blob file in the store's scratch directory, hashed and counted
/// while it streams. Each verified blob is unpacked into the layer cache
/// as soon as it is complete; the image is recorded only once every layer
/// is there. On any failure the blob files are removed and the layers this
/// pull installed are collected: nothing is left and nothing is recorded.
///
/// The entry point for other modules (the builder's base images, apply):
/// `pull(reference:name:progress:)`.
public final class Puller: Sendable {
    public let store: ImageStore
    public let credentials: CredentialStore
    let client: RegistryClient
    let parallelDownloads: Int

    /// Progress events of one layer are at most this far apart while it downloads.
    static let progressInterval: Duration = .milliseconds(200)
    static let manifestDeadline: TimeAmount = .seconds(120)

    /// `credentialsPath`: where `login` saves credentials (0600).
    public init(store: ImageStore, configuration: RegistryConfiguration, credentialsPath: String) throws {
        for host in configuration.insecureRegistries {
            try ImageReference.checkHost(host) { why in HearthError.invalid("--insecure-registry \(host): \(why)") }
        }
        for (registry, host) in configuration.mirrors {
            try ImageReference.checkHost(registry) { why in HearthError.invalid("--registry-mirror \(registry)=\(host): \(why)") }
            try ImageReference.checkHost(host) { why in HearthError.invalid("--registry-mirror \(registry)=\(host): \(why)") }
        }
        self.store = store
        credentials = CredentialStore(path: credentialsPath)
        client = try RegistryClient(configuration: configuration, credentials: credentials)
        parallelDownloads = max(1, configuration.parallelDownloads)
    }

    /// Closes connections; pulls after this fail.
    public func shutdown() async {
        await client.shutdown()
    }

    // MARK: pull

    /// Pulls `reference` and records it under `name` (else the reference's
    /// familiar name: `python:3.11`, or `NAME@sha256:…` for a digest
    /// reference). Returns the stored image. `progress` gets `resolved`
    /// and `layer` events (never `done` or `error`: the caller has the
    /// result).
    public func pull(reference text: String, name: String? = nil,
                     progress: @escaping @Sendable (ImagePullEvent) -> Void = { _ in }) async throws -> ImageSummary {
        let ref = try ImageReference.parse(text)
        let storeName = try name.map { try ImageName.normalize($0) } ?? ref.storeName
        let label = "pull \(ref)"
        do {
            return try await pull(ref, storeName: storeName, label: label, progress: progress)
        } catch {
            // Every message names the pull.
            let e = HearthError.wrap(error)
            throw e.message.hasPrefix(label) ? e : HearthError(e.code, "\(label): \(e.message)")
        }
    }

    private func pull(_ ref: ImageReference, storeName: String, label: String,
                      progress: @escaping @Sendable (ImagePullEvent) -> Void) async throws -> ImageSummary {
        let endpoint = try client.endpoint(ref.registry)
        let (manifestDigest, config, blobs) = try await resolve(ref, endpoint: endpoint, label: label)
        let configBytes = try await fetchSmall(config, ref: ref, endpoint: endpoint,
                                               limit: RegistryDocument.maxConfigBytes, what: "\(label): image config \(config.digest)")
        let store = self.store
        let image = try await Self.blocking {
            try store.preparePull(manifestDigest: manifestDigest, config: configBytes, configDescriptor: config, layers: blobs)
        }
        let reference = ref.description
        progress(ImagePullEvent(event: "resolved", reference: reference, manifestDigest: manifestDigest,
                                layers: image.layers.count))
        // One download per diff ID; the rest of the image's copies wait for it.
        var fetch: [Int] = []
        var seen = Set<String>()
        for (i, layer) in image.layers.enumerated() {
            let first = seen.insert(layer.diffID).inserted
            progress(ImagePullEvent(event: "layer", reference: reference, digest: layer.blob.digest, size: layer.blob.size,
                                    bytes: layer.cached ? layer.blob.size : 0, state: layer.cached ? "cached" : "waiting"))
            if first && !layer.cached { fetch.append(i) }
        }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var running = 0
                for index in fetch {
                    if running >= parallelDownloads {
                        try await group.next()
                        running -= 1
                    }
                    group.addTask {
                        try await self.fetchLayer(image, index: index, ref: ref, endpoint: endpoint, label: label,
                                                  progress: progress)
                    }
                    running += 1
                }
                try await group.waitForAll()
            }
            return try await Self.blocking { try store.commitPull(image, name: storeName) }
        } catch {
            await Self.blockingQuietly { store.abandonPull(image) }
            throw error
        }
    }

    /// The manifest for this host: (digest of the document the reference
    /// names, config, layers).
    private func resolve(_ ref: ImageReference, endpoint: Endpoint, label: String)
        async throws -> (String, BlobDescriptor, [BlobDescriptor]) {
        let (bytes, digest, type) = try await fetchManifest(ref, endpoint: endpoint, reference: ref.manifestReference,
                                                            size: nil, label: label)
        let document = try RegistryDocument.decode(bytes, contentType: type, what: "\(label): manifest \(digest)")
        var platforms: [String] = []
        guard let (config, layers) = try await pick(document, ref: ref, endpoint: endpoint, label: label, depth: 0,
                                                    platforms: &platforms) else {
            let offered = platforms.isEmpty ? "none declared" : platforms.joined(separator: ", ")
            throw HearthError(.invalidImage, "\(label): the image index \(digest) has no \(RegistryDocument.hostPlatform) image; available platforms: \(offered)")
        }
        return (digest, config, layers)
    }

    /// Follows indexes down to this host's manifest; nil when none fits.
    private func pick(_ document: RegistryDocument, ref: ImageReference, endpoint: Endpoint, label: String, depth: Int,
                      platforms: inout [String]) async throws -> (BlobDescriptor, [BlobDescriptor])? {
        switch document {
        case .manifest(let config, let layers):
            return (config, layers)
        case .index(let candidates, let offered, let count):
            guard depth < 4 else { throw HearthError(.invalidImage, "\(label): image indexes nested more than 4 deep") }
            platforms += offered
            for candidate in candidates {
                let (bytes, digest, type) = try await fetchManifest(ref, endpoint: endpoint, reference: candidate.digest,
                                                                    size: candidate.size, label: label)
                let inner = try RegistryDocument.decode(bytes, contentType: candidate.mediaType ?? type,
                                                        what: "\(label): manifest \(digest)")
                // An unlabelled manifest among platform-labelled ones is not ours to guess.
                if case .manifest = inner, candidate.platform == nil && count > 1 { continue }
                if let found = try await pick(inner, ref: ref, endpoint: endpoint, label: label, depth: depth + 1,
                                              platforms: &platforms) {
                    return found
                }
            }
            return nil
        }
    }

    /// GET a manifest by tag or digest: its bytes, digest and media type.
    /// A digest reference must match what arrives; so must the registry's
    /// `Docker-Content-Digest`, when it sends one.
    private func fetchManifest(_ ref: ImageReference, endpoint: Endpoint, reference: String, size: Int64?,
                               label: String) async throws -> ([UInt8], String, String?) {
        let what = "\(label): manifest \(reference)"
        let response = try await client.get(endpoint, "/v2/\(ref.repository)/manifests/\(reference)", scope: ref.pullScope,
                                            accept: RegistryDocument.acceptedMediaTypes,
                                            deadline: .now() + Self.manifestDeadline)
        guard response.status.code == 200 else {
            let body = await RegistryClient.drain(response)
            throw RegistryClient.statusError(response, body: body, endpoint: endpoint, what: what,
                                             credential: try? credentials.credential(for: endpoint.registry))
        }
        let bytes = try await collect(response, limit: RegistryDocument.maxManifestBytes, endpoint: endpoint, what: what)
        let digest = RegistryDocument.digest(of: bytes)
        if let size, Int64(bytes.count) != size {
            throw HearthError(.invalidImage, "\(what): size mismatch: the index says \(size) bytes, the registry sent \(bytes.count)")
        }
        if RegistryDocument.isDigest(reference) {
            guard digest == reference else {
                throw HearthError(.invalidImage, "\(what): digest mismatch: the registry sent a manifest that hashes to \(digest)")
            }
        } else if let announced = response.headers.first(name: "Docker-Content-Digest"), announced.hasPrefix("sha256:"),
                  announced != digest {
            throw HearthError(.invalidImage, "\(what): digest mismatch: the registry says \(announced), the manifest it sent hashes to \(digest)")
        }
        return (bytes, digest, response.headers.first(name: "Content-Type"))
    }

    /// A small blob (the config), read into memory and checked.
    private func fetchSmall(_ blob: BlobDescriptor, ref: ImageReference, endpoint: Endpoint, limit: Int,
                            what: String) async throws -> [UInt8] {
        guard blob.size <= Int64(limit) else {
            throw HearthError(.invalidImage, "\(what): size \(blob.size) is over the limit of \(limit) bytes")
        }
        let response = try await client.get(endpoint, "/v2/\(ref.repository)/blobs/\(blob.digest)", scope: ref.pullScope,
                                            deadline: .now() + Self.manifestDeadline)
        guard response.status.code == 200 else {
            let body = await RegistryClient.drain(response)
            throw RegistryClient.statusError(response, body: body, endpoint: endpoint, what: what,
                                             credential: try? credentials.credential(for: endpoint.registry))
        }
        let bytes = try await collect(response, limit: limit, endpoint: endpoint, what: what)
        guard Int64(bytes.count) == blob.size else {
            throw HearthError(.invalidImage, "\(what): size mismatch: the manifest says \(blob.size) bytes, the registry sent \(bytes.count)")
        }
        let digest = RegistryDocument.digest(of: bytes)
        guard digest == blob.digest else {
            throw HearthError(.invalidImage, "\(what): digest mismatch: content hashes to \(digest)")
        }
        return bytes
    }

    private func collect(_ response: HTTPClientResponse, limit: Int, endpoint: Endpoint, what: String) async throws -> [UInt8] {
        do {
            return Array(try await response.body.collect(upTo: limit).readableBytesView)
        } catch is NIOTooManyBytesError {
            throw HearthError(.invalidImage, "\(what): larger than \(limit) bytes")
        } catch {
            throw HearthError(.unavailable, "\(what): \(client.transportError(error, endpoint: endpoint).message)")
        }
    }

    // MARK: layers

    private func fetchLayer(_ image: PendingImage, index: Int, ref: ImageReference, endpoint: Endpoint, label: String,
                            progress: @escaping @Sendable (ImagePullEvent) -> Void) async throws {
        let layer = image.layers[index]
        let blob = layer.blob
        let reference = ref.description
        func report(_ state: String, _ bytes: Int64) {
            progress(ImagePullEvent(event: "layer", reference: reference, digest: blob.digest, size: blob.size,
                                    bytes: bytes, state: state))
        }
        let path = store.scratchPath("blob-\(blob.digest.dropFirst("sha256:".count).prefix(12))")
        defer { unlink(path) }
        report("downloading", 0)
        var last = ContinuousClock.now
        try await download(blob, ref: ref, endpoint: endpoint, to: path, what: "\(label): layer \(blob.digest)") { bytes in
            let now = ContinuousClock.now
            if now - last >= Self.progressInterval {
                last = now
                report("downloading", bytes)
            }
        }
        report("unpacking", blob.size)
        let store = self.store
        try await Self.blocking { try store.installLayer(image, at: index, blobFile: path) }
        report("done", blob.size)
    }

    /// Streams a blob into `path` (created 0600, exclusively), hashing and
    /// counting as it arrives: more bytes than the descriptor's size stop
    /// the download at once; too few, or a digest that differs, fail it.
    func download(_ blob: BlobDescriptor, ref: ImageReference, endpoint: Endpoint, to path: String, what: String,
                  onBytes: (Int64) -> Void) async throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemError.current("create", path) }
        let file = BlobFile(fd: fd, path: path)
        defer { file.close() }
        let response = try await client.get(endpoint, "/v2/\(ref.repository)/blobs/\(blob.digest)", scope: ref.pullScope,
                                            deadline: .distantFuture)
        guard response.status.code == 200 else {
            let body = await RegistryClient.drain(response)
            throw RegistryClient.statusError(response, body: body, endpoint: endpoint, what: what,
                                             credential: try? credentials.credential(for: endpoint.registry))
        }
        if let announced = response.headers.first(name: "Content-Length").flatMap({ Int64($0) }), announced != blob.size {
            throw HearthError(.invalidImage, "\(what): the registry announces \(announced) bytes, the manifest says \(blob.size)")
        }
        var hasher = SHA256()
        var received: Int64 = 0
        var pending: [UInt8] = []
        pending.reserveCapacity(Self.writeChunk)
        do {
            for try await chunk in response.body {
                received += Int64(chunk.readableBytes)
                guard received <= blob.size else {
                    throw HearthError(.invalidImage, "\(what): the registry sent more than the \(blob.size) bytes the manifest says")
                }
                chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                pending.append(contentsOf: chunk.readableBytesView)
                if pending.count >= Self.writeChunk {
                    let data = pending
                    pending.removeAll(keepingCapacity: true)
                    try await Self.blocking { try file.write(data) }
                }
                onBytes(received)
            }
        } catch let e as HearthError {
            throw e
        } catch let e as SystemError {
            throw e
        } catch {
            throw HearthError(.unavailable, "\(what): the download broke off after \(received) of \(blob.size) bytes: \(RegistryClient.describe(error))")
        }
        if !pending.isEmpty {
            let data = pending
            try await Self.blocking { try file.write(data) }
        }
        guard received == blob.size else {
            throw HearthError(.unavailable, "\(what): the registry sent \(received) of \(blob.size) bytes (the blob is truncated)")
        }
        let digest = Self.hex(hasher.finalize())
        guard digest == blob.digest else {
            throw HearthError(.invalidImage, "\(what): blob digest mismatch: the \(received) bytes the registry sent hash to \(digest)")
        }
    }

    static let writeChunk = 1 << 20

    static func hex(_ digest: SHA256.Digest) -> String { "sha256:" + Hex.string(digest) }

    // MARK: login

    /// Checks `username`/`password` against `registry` (its challenge
    /// flow on `GET /v2/`) and saves them. A refusal carries the
    /// registry's own message; nothing is saved then.
    public func login(registry: String, username: String, password: String) async throws -> RegistryLoginResult {
        let name = try Self.registryName(registry)
        guard !username.isEmpty, !username.contains(":") else {
            throw HearthError.invalid("login \(name): the user name is empty or has a ':'")
        }
        guard !password.isEmpty else { throw HearthError.invalid("login \(name): the password is empty") }
        let credential = RegistryCredential(username: username, password: password)
        let endpoint = try client.endpoint(name)
        let response: HTTPClientResponse
        do {
            response = try await client.get(endpoint, "/v2/", scope: nil, deadline: .now() + Self.manifestDeadline,
                                            credential: credential)
        } catch let e as HearthError where e.code == .forbidden {
            throw HearthError(.forbidden, "login to \(name) as \(username) refused: \(e.message)")
        }
        let body = await RegistryClient.drain(response)
        guard response.status.code == 200 else {
            if [401, 403].contains(response.status.code) {
                throw HearthError(.forbidden, "login to \(name) as \(username) refused: registry \(name) answered \(response.status.code): \(RegistryClient.errorText(body, status: response.status))")
            }
            throw RegistryClient.statusError(response, body: body, endpoint: endpoint, what: "login to \(name)", credential: nil)
        }
        try credentials.save(credential, for: name)
        client.forgetTokens(name)
        return RegistryLoginResult(registry: name, username: username, message: "login succeeded; credentials saved for \(name)")
    }

    /// Forgets `registry`'s saved credentials.
    public func logout(registry: String) throws -> RegistryLoginResult {
        let name = try Self.registryName(registry)
        let removed = try credentials.remove(name)
        client.forgetTokens(name)
        return RegistryLoginResult(registry: name, username: nil,
                                   message: removed ? "credentials for \(name) removed" : "no credentials were saved for \(name)")
    }

    /// `host[:port]` (or `docker.io`) as references name it.
    static func registryName(_ text: String) throws -> String {
        var name = text
        for scheme in ["https://", "http://"] where name.hasPrefix(scheme) { name.removeFirst(scheme.count) }
        while name.hasSuffix("/") { name.removeLast() }
        try ImageReference.checkHost(name) { why in
            HearthError.invalid("registry \"\(text)\": \(why); expected HOST[:PORT] as image references name it")
        }
        return name
    }

    // MARK: blocking work

    /// File and store work runs here, never on Swift's cooperative pool.
    static let queue = DispatchQueue(label: "hearth.registry", qos: .userInitiated, attributes: .concurrent)

    static func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            queue.async {
                do { cont.resume(returning: try work()) } catch { cont.resume(throwing: error) }
            }
        }
    }

    static func blockingQuietly(_ work: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { cont in
            queue.async {
                work()
                cont.resume()
            }
        }
    }
}

/// A blob file being written; writes happen on the blocking queue, one at
/// a time (the download awaits each).
final class BlobFile: Sendable {
    let fd: Int32
    let path: String
    private let closed = Mutex(false)

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write", path)
            }
            offset += n
        }
    }

    func close() {
        let first = closed.withLock { c -> Bool in
            defer { c = true }
            return !c
        }
        if first { _ = Glibc.close(fd) }
    }
}
