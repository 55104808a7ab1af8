import Foundation
import HearthCore
import NIOSSL
import X509

/// The PEM files of one side of a mutual-TLS connection: its certificate,
/// its key and the cluster CA it trusts for the other side. Loaded once,
/// checked before anything listens or dials, so a wrong path or a key of
/// another certificate is an error naming the file, not a failed handshake.
public struct TLSFiles: Sendable {
    public var certificate: String
    public var key: String
    public var ca: String

    /// `what` names where the paths came from in errors (`--tls-cert`,
    /// `HEARTH_TLS_CERT`).
    public struct Names: Sendable {
        public var certificate: String
        public var key: String
        public var ca: String
        public init(certificate: String, key: String, ca: String) {
            self.certificate = certificate; self.key = key; self.ca = ca
        }
        public static let daemon = Names(certificate: "--tls-cert", key: "--tls-key", ca: "--tls-ca")
        public static let client = Names(certificate: "HEARTH_TLS_CERT", key: "HEARTH_TLS_KEY", ca: "HEARTH_TLS_CA")
    }

    public init(certificate: String, key: String, ca: String) {
        self.certificate = certificate; self.key = key; self.ca = ca
    }

    /// The loaded and cross-checked material.
    public struct Material: @unchecked Sendable {
        // @unchecked: NIOSSL's certificate and key objects are immutable after loading.
        public var chain: [NIOSSLCertificate]
        public var key: NIOSSLPrivateKey
        public var trust: [NIOSSLCertificate]
        /// The certificate's subject (RFC 4514) and validity, for logs and errors.
        public var subject: String
        public var notAfter: Date
    }

    public func load(_ names: Names, now: Date = Date()) throws -> Material {
        let certText = try Self.read(certificate, names.certificate)
        let keyText = try Self.read(key, names.key)
        let caText = try Self.read(ca, names.ca)
        let leaf: Certificate
        let privateKey: Certificate.PrivateKey
        do { leaf = try Certificate(pemEncoded: Self.firstPEM(certText, "CERTIFICATE") ?? certText) } catch {
            throw HearthError.invalid("\(names.certificate) \(certificate): not a PEM certificate (\(error))")
        }
        do { privateKey = try Certificate.PrivateKey(pemEncoded: keyText) } catch {
            throw HearthError.invalid("\(names.key) \(key): not a PEM private key (\(error))")
        }
        guard privateKey.publicKey == leaf.publicKey else {
            throw HearthError.invalid("\(names.key) \(key) is not the key of \(names.certificate) \(certificate) (\(leaf.subject))")
        }
        guard leaf.notValidAfter > now else {
            throw HearthError.invalid("\(names.certificate) \(certificate) (\(leaf.subject)) expired on \(leaf.notValidAfter); make a new one (hearth certs)")
        }
        guard leaf.notValidBefore <= now else {
            throw HearthError.invalid("\(names.certificate) \(certificate) (\(leaf.subject)) is not valid before \(leaf.notValidBefore); check this machine's clock")
        }
        do {
            let chain = try NIOSSLCertificate.fromPEMBytes(Array(certText.utf8))
            let key = try NIOSSLPrivateKey(bytes: Array(keyText.utf8), format: .pem)
            let trust = try NIOSSLCertificate.fromPEMBytes(Array(caText.utf8))
            guard !trust.isEmpty else {
                throw HearthError.invalid("\(names.ca) \(ca): no PEM certificate in it")
            }
            return Material(chain: chain, key: key, trust: trust, subject: leaf.subject.description,
                            notAfter: leaf.notValidAfter)
        } catch let e as HearthError {
            throw e
        } catch {
            throw HearthError.invalid("\(names.ca) \(ca): not PEM certificates (\(error))")
        }
    }

    /// The daemon's side: a client must present a certificate the cluster
    /// CA signed (no hostname check: a client has no name to check), TLS
    /// 1.2 at least.
    public func serverConfiguration() throws -> (TLSConfiguration, Material) {
        let m = try load(.daemon)
        var c = TLSConfiguration.makeServerConfiguration(certificateChain: m.chain.map { .certificate($0) },
                                                         privateKey: .privateKey(m.key))
        c.trustRoots = .certificates(m.trust)
        c.certificateVerification = .noHostnameVerification
        c.minimumTLSVersion = .tlsv12
        return (c, m)
    }

    /// A client's side: the daemon's certificate must come from the cluster
    /// CA and name the host dialled.
    public func clientConfiguration() throws -> (TLSConfiguration, Material) {
        let m = try load(.client)
        var c = TLSConfiguration.makeClientConfiguration()
        c.certificateChain = m.chain.map { .certificate($0) }
        c.privateKey = .privateKey(m.key)
        c.trustRoots = .certificates(m.trust)
        c.certificateVerification = .fullVerification
        c.minimumTLSVersion = .tlsv12
        return (c, m)
    }

    /// The client's files from the environment: `HEARTH_TLS_CERT`,
    /// `HEARTH_TLS_KEY`, `HEARTH_TLS_CA`, each defaulting to
    /// `~/.hearth/tls/{cert,key,ca}.pem` (what `hearth certs client` writes).
    public static func fromEnvironment(_ env: [String: String]) throws -> TLSFiles {
        let dir = (env["HOME"] ?? "/root") + "/.hearth/tls"
        func pick(_ name: String, _ file: String) throws -> String {
            if let v = env[name], !v.isEmpty { return v }
            let p = dir + "/" + file
            guard FileManager.default.fileExists(atPath: p) else {
                throw HearthError.invalid("HEARTH_HOST names a TCP daemon, which speaks only mutual TLS: set \(name) (or put \(file) in \(dir)); `hearth certs client` makes the files")
            }
            return p
        }
        return TLSFiles(certificate: try pick("HEARTH_TLS_CERT", "cert.pem"), key: try pick("HEARTH_TLS_KEY", "key.pem"),
                        ca: try pick("HEARTH_TLS_CA", "ca.pem"))
    }

    static func read(_ path: String, _ what: String) throws -> String {
        guard let fh = FileHandle(forReadingAtPath: path) else {
            let err = errno
            throw HearthError.invalid("\(what) \(path): cannot read it (\(ErrnoName.name(err)))")
        }
        defer { try? fh.close() }
        // Certificates and keys are small; a huge file is not one.
        let data = (try? fh.read(upToCount: 1 << 20)) ?? Data()
        guard let text = String(data: data, encoding: .utf8), text.contains("-----BEGIN ") else {
            throw HearthError.invalid("\(what) \(path): not a PEM file (no -----BEGIN line)")
        }
        return text
    }

    /// The first PEM block of `kind` (a chain file holds several).
    static func firstPEM(_ text: String, _ kind: String) -> String? {
        let begin = "-----BEGIN \(kind)-----", end = "-----END \(kind)-----"
        guard let b = text.range(of: begin), let e = text.range(of: end, range: b.upperBound..<text.endIndex) else { return nil }
        return String(text[b.lowerBound..<e.upperBound])
    }
}
