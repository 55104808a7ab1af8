import Glibc
import HearthCore
import HearthSandbox
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The egress proxy: an HTTP forward proxy on each egress replica's
/// listener (127.0.0.1:3128 in its own network namespace), connecting out
/// from the host's namespace to what `EgressPolicy` allows. `CONNECT
/// host:port` opens a tunnel; an absolute-form `GET http://host/…` is
/// forwarded as received. A connection reaches one destination: the name
/// is resolved here, every address checked, and the connection made to a
/// checked address (no second lookup, so no DNS rebinding).
///
/// Its event loop and resolver threads are its own (started with the first
/// egress replica): a build's downloads never queue behind the API's loop.
public final class EgressProxy: EgressGateway {
    public struct Limits: Sendable {
        /// Client connections one replica may hold open; more get 503.
        public var connectionsPerReplica = 64
        /// Over every replica: each connection holds two fds of the daemon's.
        public var connectionsTotal = 1024
        /// A request head larger than this gets 431.
        public var maxHead = 16 << 10
        /// From accept to the tunnel (head, lookup, connect); then 408.
        public var requestTimeout: TimeAmount = .seconds(30)
        public var connectTimeout: TimeAmount = .seconds(10)
        /// A relay with no byte either way for this long is closed.
        public var idleTimeout: TimeAmount = .seconds(300)
        public init() {}
    }

    public let policy: EgressPolicy
    public let limits: Limits
    let logger: Logger
    let total = Atomic<Int>(0)
    private let threads = Mutex<(group: MultiThreadedEventLoopGroup, resolver: NIOThreadPool)?>(nil)

    public init(policy: EgressPolicy, logger: Logger, limits: Limits = Limits()) {
        self.policy = policy
        self.logger = logger
        self.limits = limits
    }

    private func started() -> (group: MultiThreadedEventLoopGroup, resolver: NIOThreadPool) {
        threads.withLock { t in
            if let t { return t }
            // Lookups block (getaddrinfo): a few threads, so a slow name
            // holds one of them, never the event loop.
            let resolver = NIOThreadPool(numberOfThreads: 4)
            resolver.start()
            let started = (group: MultiThreadedEventLoopGroup(numberOfThreads: 1), resolver: resolver)
            t = started
            return started
        }
    }

    /// Serves `replica`'s listener until the session is closed. Blocking
    /// (registers the listener on the event loop): call off the event loop.
    public func serve(listener: Int32, replica: String) throws -> any EgressSession {
        let (group, resolver) = started()
        let session = ProxySession(replica: replica, proxy: self)
        let proxy = self
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 128)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                guard session.admit(channel) else {
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RefuseHandler(
                            status: 503,
                            message: "hearth egress: too many connections (\(proxy.limits.connectionsPerReplica) per replica, \(proxy.limits.connectionsTotal) in all); close some and retry"))
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        EgressClientHandler(proxy: proxy, session: session, resolver: resolver))
                }
            }
        let server: any Channel
        do {
            server = try bootstrap.withBoundSocket(listener).wait()
        } catch {
            close(listener)
            throw HearthError(.system, "network egress: serve the proxy of \(replica): \(error)")
        }
        session.attach(server)
        return session
    }

    /// Stops the threads (the daemon's exit; every replica is gone by then).
    public func shutdown() async {
        guard let t = threads.withLock({ t in defer { t = nil }; return t }) else { return }
        try? await t.group.shutdownGracefully()
        try? await t.resolver.shutdownGracefully()
    }
}

/// One replica's proxy: its listener and every connection through it.
final class ProxySession: EgressSession {
    let replica: String
    let proxy: EgressProxy
    private struct State {
        var server: (any Channel)?
        var closed = false
        var clients = 0
        /// Client and upstream channels, closed with the session.
        var open: [ObjectIdentifier: any Channel] = [:]
    }
    private let state = Mutex(State())
    private let refusals = Atomic<Int>(0)

    /// A replica refused in a loop must not flood the daemon's log.
    static let refusalsAtInfo = 100
    enum LogLevel { case info, last, debug }

    func countRefusal() -> LogLevel {
        let n = refusals.add(1, ordering: .relaxed).newValue
        return n < Self.refusalsAtInfo ? .info : n == Self.refusalsAtInfo ? .last : .debug
    }

    init(replica: String, proxy: EgressProxy) {
        self.replica = replica
        self.proxy = proxy
    }

    func attach(_ server: any Channel) {
        let closed = state.withLock { s in
            s.server = server
            return s.closed
        }
        if closed { server.close(promise: nil) }
    }

    /// A new client connection: counted against the limits, or refused.
    func admit(_ channel: any Channel) -> Bool {
        let limits = proxy.limits
        let ok: Bool = state.withLock { s in
            guard !s.closed, s.clients < limits.connectionsPerReplica else { return false }
            guard proxy.total.add(1, ordering: .relaxed).newValue <= limits.connectionsTotal else {
                proxy.total.subtract(1, ordering: .relaxed)
                return false
            }
            s.clients += 1
            s.open[ObjectIdentifier(channel)] = channel
            return true
        }
        guard ok else { return false }
        channel.closeFuture.whenComplete { [self] _ in
            state.withLock { s in
                s.clients -= 1
                s.open[ObjectIdentifier(channel)] = nil
            }
            proxy.total.subtract(1, ordering: .relaxed)
        }
        return true
    }

    /// An upstream connection: closed with the session. False (and the
    /// caller closes it) when the session is closed already.
    func track(_ channel: any Channel) -> Bool {
        let ok = state.withLock { s in
            guard !s.closed else { return false }
            s.open[ObjectIdentifier(channel)] = channel
            return true
        }
        guard ok else { return false }
        channel.closeFuture.whenComplete { [self] _ in
            state.withLock { s in _ = s.open.removeValue(forKey: ObjectIdentifier(channel)) }
        }
        return true
    }

    func close() {
        let (server, open): ((any Channel)?, [any Channel]) = state.withLock { s in
            guard !s.closed else { return (nil, []) }
            s.closed = true
            return (s.server, Array(s.open.values))
        }
        for c in open { c.close(promise: nil) }
        guard let server else { return }
        let done = server.close()
        // Teardown runs on a blocking thread: when it returns, nothing
        // listens in the namespace any more.
        if MultiThreadedEventLoopGroup.currentEventLoop == nil { try? done.wait() }
    }
}
