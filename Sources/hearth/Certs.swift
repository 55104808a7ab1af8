import ArgumentParser
import Foundation
import Glibc
import HearthCore
import HearthTLS

/// `hearth certs`: a CA and certificates for a small cluster of daemons
/// (`hearthd --listen tcp://…`) and their callers (HEARTH_HOST).
struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Make a CA and the certificates of remote daemons and their clients (mutual TLS).",
        discussion: """
        hearth certs ca DIR                              DIR/ca.pem, DIR/ca-key.pem (keep the key off the nodes)
        hearth certs server DIR --ca CADIR --host H ...  DIR/server.pem, server-key.pem, ca.pem: for hearthd --tls-cert/--tls-key/--tls-ca
        hearth certs client DIR --ca CADIR --name NAME   DIR/cert.pem, key.pem, ca.pem: for HEARTH_TLS_CERT/_KEY/_CA (or ~/.hearth/tls)
        """,
        subcommands: [CA.self, Server.self, Client.self])

    struct ValidityOptions: ParsableArguments {
        @Option(help: "Days the certificate is valid, from now (default: 3650 for a CA, 365 otherwise).")
        var days: Int?
        @Option(help: ArgumentHelp("Valid from this time instead of an hour ago (ISO 8601, e.g. 2026-01-01T00:00:00Z).", valueName: "TIME"))
        var notBefore: String?
        @Option(help: ArgumentHelp("Valid until this time instead of --days from now (ISO 8601).", valueName: "TIME"))
        var notAfter: String?

        func validity(defaultDays: Int) throws -> ClusterCertificates.Validity {
            let days = self.days ?? defaultDays
            guard days > 0 else { throw ValidationError("--days \(days): must be at least 1") }
            var v = ClusterCertificates.Validity.days(days)
            if let t = notBefore { v.notBefore = try Self.time(t, "--not-before") }
            if let t = notAfter { v.notAfter = try Self.time(t, "--not-after") }
            guard v.notAfter > v.notBefore else {
                throw ValidationError("the certificate would end (\(v.notAfter)) before it begins (\(v.notBefore))")
            }
            return v
        }

        static func time(_ text: String, _ what: String) throws -> Date {
            let f = ISO8601DateFormatter()
            if let d = f.date(from: text) { return d }
            f.formatOptions = [.withFullDate]
            if let d = f.date(from: text) { return d }
            throw ValidationError("\(what) \(text.debugDescription): not an ISO 8601 time (2026-01-01 or 2026-01-01T00:00:00Z)")
        }
    }

    struct CA: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make the cluster's CA: DIR/ca.pem and DIR/ca-key.pem.")
        @Argument(help: "Directory to write into (created 0700).") var dir: String
        @Option(help: "The CA's common name.") var name = "hearth cluster CA"
        @OptionGroup var validity: ValidityOptions

        func run() throws {
            do {
                let ca = try ClusterCertificates.makeCA(name: name, validity: try validity.validity(defaultDays: 3650))
                try CertFiles.write(dir, [("ca.pem", ca.certificatePEM, 0o644), ("ca-key.pem", ca.keyPEM, 0o600)])
                print("\(dir)/ca.pem and \(dir)/ca-key.pem: CA \(name.debugDescription)")
            } catch { throw failure(error) }
        }
    }

    struct Server: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a node's certificate: DIR/server.pem, server-key.pem and ca.pem.")
        @Argument(help: "Directory to write into (created 0700).") var dir: String
        @Option(help: ArgumentHelp("The directory of `hearth certs ca`.", valueName: "CADIR")) var ca: String
        @Option(help: ArgumentHelp("A DNS name or IP address clients dial this node by; repeatable.", valueName: "HOST")) var host: [String] = []
        @Option(help: "The certificate's common name (default: the first --host).") var name: String?
        @OptionGroup var validity: ValidityOptions

        func run() throws {
            do {
                let issuer = try CertFiles.readCA(ca)
                let cert = try ClusterCertificates.makeServer(ca: issuer, name: name ?? host.first ?? "", hosts: host,
                                                              validity: try validity.validity(defaultDays: 365))
                try CertFiles.write(dir, [("server.pem", cert.certificatePEM, 0o644), ("server-key.pem", cert.keyPEM, 0o600),
                                          ("ca.pem", issuer.certificatePEM, 0o644)])
                print("\(dir)/server.pem, server-key.pem, ca.pem: hearthd --listen tcp://ADDR:PORT --tls-cert \(dir)/server.pem --tls-key \(dir)/server-key.pem --tls-ca \(dir)/ca.pem")
            } catch { throw failure(error) }
        }
    }

    struct Client: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a caller's certificate: DIR/cert.pem, key.pem and ca.pem.")
        @Argument(help: "Directory to write into (created 0700).") var dir: String
        @Option(help: ArgumentHelp("The directory of `hearth certs ca`.", valueName: "CADIR")) var ca: String
        @Option(help: "The caller's name: its identity on every daemon (the certificate's common name).") var name: String
        @OptionGroup var validity: ValidityOptions

        func run() throws {
            do {
                let issuer = try CertFiles.readCA(ca)
                let cert = try ClusterCertificates.makeClient(ca: issuer, name: name, validity: try validity.validity(defaultDays: 365))
                try CertFiles.write(dir, [("cert.pem", cert.certificatePEM, 0o644), ("key.pem", cert.keyPEM, 0o600),
                                          ("ca.pem", issuer.certificatePEM, 0o644)])
                print("\(dir)/cert.pem, key.pem, ca.pem: HEARTH_TLS_CERT=\(dir)/cert.pem HEARTH_TLS_KEY=\(dir)/key.pem HEARTH_TLS_CA=\(dir)/ca.pem")
            } catch { throw failure(error) }
        }
    }
}

enum CertFiles {
    static func readCA(_ dir: String) throws -> ClusterCertificates.Issued {
        func read(_ name: String) throws -> String {
            let path = dir + "/" + name
            guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
                throw HearthError.invalid("--ca \(dir): cannot read \(path) (make the CA with `hearth certs ca \(dir)`)")
            }
            return text
        }
        return ClusterCertificates.Issued(certificatePEM: try read("ca.pem"), keyPEM: try read("ca-key.pem"))
    }

    /// Never over an existing file: replacing a CA's key by mistake would
    /// orphan every certificate it signed.
    static func write(_ dir: String, _ files: [(String, String, mode_t)]) throws {
        if !FileManager.default.fileExists(atPath: dir) {
            guard mkdir(dir, 0o700) == 0 else { throw SystemError.current("mkdir", dir) }
        }
        for (name, _, _) in files where FileManager.default.fileExists(atPath: dir + "/" + name) {
            throw HearthError(.conflict, "\(dir)/\(name) exists; remove it or pick another directory (certificates are never overwritten)")
        }
        for (name, text, mode) in files {
            let path = dir + "/" + name
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
            guard fd >= 0 else { throw SystemError.current("create", path) }
            defer { close(fd) }
            let bytes = Array(text.utf8)
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                if n < 0 { if errno == EINTR { continue }; throw SystemError.current("write", path) }
                off += n
            }
            guard fchmod(fd, mode) == 0 else { throw SystemError.current("chmod", path) }
        }
    }
}
