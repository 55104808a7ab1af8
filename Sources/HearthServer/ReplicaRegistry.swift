import Foundation
import Glibc
import HearthCore
import HearthPool
import HearthSandbox
import Logging
import ServiceLifecycle
import Synchronization

/// Every live replica, so that shutdown can drain and then tear them down.
public final class ReplicaRegistry: Sendable {
    private struct State {
        var replicas: [String: RunningReplica] = [:]
        /// Image name of each replica, so an image in use is not removed
        /// from under a mounted overlay.
        var images: [String: String] = [:]
        var draining = false
    }
    private let state = Mutex(State())
    /// Notified when a replica leaves: what a drain waits for.
    private let changes = ChangeSignal()

    public init() {}

    /// Refuses new work once the daemon is shutting down.
    public func admit() throws {
        if state.withLock({ $0.draining }) {
            throw HearthError(.unavailable, "hearthd is shutting down; no new replicas are started")
        }
    }

    public func add(_ r: RunningReplica, image: String) {
        state.withLock {
            $0.replicas[r.name] = r
            $0.images[r.name] = image
        }
    }

    public func remove(_ name: String) {
        state.withLock {
            $0.replicas.removeValue(forKey: name)
            $0.images.removeValue(forKey: name)
        }
        changes.notify()
    }

    /// Replicas running on image `name` (as resolved: NAME:TAG).
    public func users(ofImage name: String) -> [String] {
        state.withLock { s in s.images.filter { $0.value == name }.map(\.key).sorted() }
    }
    public var count: Int { state.withLock { $0.replicas.count } }

    /// Stops admitting, waits up to `deadline` for running replicas to end,
    /// then kills and tears down the rest.
    public func drain(deadline: Duration, logger: Logger) async {
        state.withLock { $0.draining = true }
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: deadline)
        if count > 0 { logger.info("draining \(count) replica(s), up to \(deadline)") }
        await changes.wait(until: end) { count == 0 }
        let left = state.withLock { Array($0.replicas.values) }
        if !left.isEmpty { logger.info("killing \(left.count) replica(s) still running after the deadline") }
        for r in left { r.signal(SIGKILL) }
        // Their request handlers tear them down; give them a moment, then
        // make sure nothing is left either way.
        await changes.wait(until: clock.now.advanced(by: .seconds(2))) { count == 0 }
        for r in state.withLock({ Array($0.replicas.values) }) {
            _ = try? await Blocking.run { r.teardown() }
        }
    }
}

/// Runs until graceful shutdown begins, then drains the registry. Listed
/// after the HTTP server in the service group, so it is shut down first:
/// running replicas get their deadline before the server stops.
struct DrainService: Service {
    let registry: ReplicaRegistry
    let pool: Pool
    let deadline: Duration
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        async let sandboxes: Void = registry.drain(deadline: deadline, logger: logger)
        async let environments: Void = pool.shutdown(deadline: deadline)
        _ = await (sandboxes, environments)
    }
}
