import CHearth
import Glibc
import HearthCore
import Hummingbird
import NIOCore

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

    /// nil when the transport has no peer credentials (not a Unix socket).
    func peer() async -> PeerCredentials? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        do {
            let cred: hearth_ucred = try await provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(HEARTH_SO_PEERCRED)).get()
            return PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
        } catch {
            return nil
        }
    }
}
