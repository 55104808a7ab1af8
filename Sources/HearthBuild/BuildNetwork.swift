#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import HearthSandbox
import HearthOS

/// How a build step reaches the package indexes: the one place that decides
/// a build replica's network. `.egress`: a network namespace of its own
/// whose only way out is hearthd's filtering proxy (public addresses on
/// ports 80 and 443, plus `--egress-allow`), since a step runs code from any
/// client of the socket (commands, apt maintainer scripts, setup.py) and must
/// not reach the host's loopback services, its LAN or cloud metadata. The
/// host's CA bundle goes in too, so a host whose way out inspects TLS with
/// its own CA (a corporate proxy, this project's build machines) still
/// reaches PyPI.
public enum BuildNetwork {
    /// Where the trust store is mounted in a build replica (read-only); the
    /// layer writer leaves the mount point out of the layer.
    public static let mountPoint = "/.hearth-build"
    static let hostCABundle = "/etc/ssl/certs/ca-certificates.crt"

    /// Prepares `<stateRoot>/build/trust` (the host's CA bundle, copied
    /// fresh for each build) and returns its path; nil when the host has no
    /// bundle at the usual place.
    static func prepareTrust(stateRoot: String) throws -> String? {
        guard let bundle = FileManager.default.contents(atPath: hostCABundle) else { return nil }
        let dir = stateRoot + "/build/trust"
        try FS.makeDirectory(stateRoot + "/build", mode: 0o755)
        try FS.makeDirectory(dir, mode: 0o755)
        try AtomicFile.write(Array(bundle), to: dir + "/ca-certificates.crt", mode: 0o644)
        return dir
    }

    /// Sets the network of a build replica and what goes with it.
    static func configure(_ spec: inout ReplicaSpec, trust: String?) {
        // The replica's proxy variables point at the egress proxy; the
        // host's own are not passed (they name what the host reaches).
        spec.network = .egress
        if let trust {
            spec.mounts.append(BindMount(source: trust, target: mountPoint, readOnly: true))
            let file = mountPoint + "/ca-certificates.crt"
            // OpenSSL and uv read SSL_CERT_FILE, pip PIP_CERT, requests REQUESTS_CA_BUNDLE.
            spec.env += ["SSL_CERT_FILE=\(file)", "PIP_CERT=\(file)", "REQUESTS_CA_BUNDLE=\(file)"]
        }
    }
}
