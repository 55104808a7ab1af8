import CHearth
import Glibc
import HearthCore
import HearthTLS
import Hummingbird
import NIOCore
import NIOSSL

/// The process on the other end of the Unix socket, from SO_PEERCRED:
/// what the kernel recorded at connect(2), which a client cannot forge.
struct PeerCredentials: Sendable, Equatable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// Hummingbird's basic context plus the connection, so a route can ask
/// who is calling (only the routes that need it pay for the getsockopt).
struct HearthRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// nil when the transport has no peer credentials (not a Unix socket:
    /// a TCP peer's SO_PEERCRED would be the kernel's overflow uid).
    func peer() async -> PeerCredentials? {
        if await tlsPeer().isTLS { return nil }
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        do {
            let cred: hearth_ucred = try await provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(HEARTH_SO_PEERCRED)).get()
            return PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
        } catch {
            return nil
        }
    }

    /// Who is calling, for messages and `GET /v1/version`: a remote
    /// caller's certificate subject (`CN=alice,O=hearth`), or a local
    /// peer's uid and pid.
    func caller() async -> String {
        let tls = await tlsPeer()
        if tls.isTLS {
            return tls.der.flatMap { ClusterCertificates.identity(ofDER: $0) } ?? "a TLS client without a certificate"
        }
        guard let p = await peer() else { return "a peer without credentials" }
        return "uid \(p.uid) (pid \(p.pid))"
    }

    /// Whether the connection came through the TLS listener, and the
    /// client certificate it presented (DER).
    private func tlsPeer() async -> (isTLS: Bool, der: [UInt8]?) {
        do {
            let der = try await channel.pipeline.handler(type: NIOSSLServerHandler.self)
                .map { try? $0.peerCertificate?.toDERBytes() }.get()
            return (true, der)
        } catch {
            return (false, nil)
        }
    }
}
