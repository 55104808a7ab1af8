import CHearth
import Glibc
import HearthCore

/// network `egress`: the replica's network namespace is made by the daemon
/// before the replica exists, with only loopback up and the daemon's proxy
/// already listening at 127.0.0.1:3128 inside it; the spawn path joins it.
/// The proxy (HearthEgress) connects out from the host's namespace, to what
/// `EgressPolicy` allows.
public enum EgressNamespace {
    public static let port: UInt16 = 3128
    public static let proxyURL = "http://127.0.0.1:3128"
    /// What tells HTTP clients (pip, urllib, apt, curl) to use the proxy.
    public static let environment = [
        "HTTP_PROXY=" + proxyURL, "HTTPS_PROXY=" + proxyURL, "http_proxy=" + proxyURL, "https_proxy=" + proxyURL,
        "NO_PROXY=localhost,127.0.0.1", "no_proxy=localhost,127.0.0.1",
    ]

    /// A new namespace and the listener inside it, both close-on-exec
    /// (hearth_egress_netns_open: made on a short-lived thread of its own,
    /// so no Swift thread changes namespace). Blocking (a thread join).
    public static func open(backlog: Int32 = 128) throws -> (netns: Int32, listener: Int32) {
        var ns: Int32 = -1, listener: Int32 = -1, stage: Int32 = 0
        let err = hearth_egress_netns_open(port, backlog, &ns, &listener, &stage)
        guard err == 0 else {
            let (op, object): (String, String)
            switch UInt32(stage) {
            case HEARTH_NETNS_THREAD.rawValue: (op, object) = ("start a thread for", "the namespace")
            case HEARTH_NETNS_UNSHARE.rawValue: (op, object) = ("unshare", "CLONE_NEWNET")
            case HEARTH_NETNS_LOOPBACK.rawValue: (op, object) = ("bring up", "lo")
            case HEARTH_NETNS_SOCKET.rawValue: (op, object) = ("socket", "AF_INET")
            case HEARTH_NETNS_BIND.rawValue: (op, object) = ("bind", "127.0.0.1:\(port)")
            case HEARTH_NETNS_LISTEN.rawValue: (op, object) = ("listen on", "127.0.0.1:\(port)")
            default: (op, object) = ("open", "/proc/thread-self/ns/net")
            }
            throw SystemError("network egress: " + op, object, errno: err)
        }
        return (ns, listener)
    }
}

/// Serves the egress proxy on replicas' listeners (HearthEgress's
/// `EgressProxy`; the daemon hands one to `SandboxRuntime`).
public protocol EgressGateway: Sendable {
    /// Takes `listener` over (closed with the session, or here on failure)
    /// and serves the connections `replica` makes to it.
    func serve(listener: Int32, replica: String) throws -> any EgressSession
}

/// One replica's proxy: its listener and every connection through it.
public protocol EgressSession: Sendable {
    /// Closes the listener and every connection (client and upstream).
    /// Idempotent; returns once the listener is closed when called off an
    /// event loop.
    func close()
}

extension SandboxRuntime {
    /// The namespace fd for the spawn, and the proxy serving its listener.
    func openEgress(replica: String) throws -> (netns: Int32, session: any EgressSession) {
        guard let egress else {
            throw HearthError(.unavailable, "network egress: this daemon runs no egress proxy")
        }
        let (ns, listener) = try EgressNamespace.open()
        do {
            return (ns, try egress.serve(listener: listener, replica: replica))
        } catch {
            close(ns)
            throw error
        }
    }
}
