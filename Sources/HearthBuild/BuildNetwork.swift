#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import HearthSandbox

/// How a build step reaches the package indexes: the one place that decides
/// a build replica's network. For now the host's network (`.host`), with
/// the host's trust store and proxy settings, so a step reaches what the
/// host reaches the way the host does (a host that inspects TLS with its own
/// CA keeps working). The egress-proxy network mode will replace this: a
/// build replica in its own network namespace that reaches only the proxy.
public enum BuildNetwork {
    /// Where the trust store is mounted in a build replica (read-only); the
    /// layer writer leaves the mount point out of the layer.
    public static let mountPoint = "/.hearth-build"
    static let hostCABundle = "/etc/ssl/certs/ca-certificates.crt"
    static let proxyVariables = ["http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"]

    /// Prepares `<stateRoot>/build/trust` (the host's CA bundle, copied
    /// fresh for each build) and returns its path; nil when the host has no
    /// bundle at the usual place.
    static func prepareTrust(stateRoot: String) throws -> String? {
        guard let bundle = FileManager.default.contents(atPath: hostCABundle) else { return nil }
        let dir = stateRoot + "/build/trust"
        try FileTree.makeDirectory(stateRoot + "/build", mode: 0o755)
        try FileTree.makeDirectory(dir, mode: 0o755)
        try AtomicFile.write(Array(bundle), to: dir + "/ca-certificates.crt", mode: 0o644)
        return dir
    }

    /// Sets the network of a build replica and what goes with it.
    static func configure(_ spec: inout ReplicaSpec, trust: String?) {
        spec.network = .host
        for name in proxyVariables {
            if let value = ProcessInfo.processInfo.environment[name], !value.isEmpty {
                spec.env.append("\(name)=\(value)")
            }
        }
        if let trust {
            spec.mounts.append(BindMount(source: trust, target: mountPoint, readOnly: true))
            let file = mountPoint + "/ca-certificates.crt"
            // OpenSSL and uv read SSL_CERT_FILE, pip PIP_CERT, requests REQUESTS_CA_BUNDLE.
            spec.env += ["SSL_CERT_FILE=\(file)", "PIP_CERT=\(file)", "REQUESTS_CA_BUNDLE=\(file)"]
        }
    }
}
