import CHearth
import Foundation
import Glibc
import HearthCore
import HearthOS
import HearthPool
import HearthSandbox
import HearthTaskStore
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// The API's changing requests (every method but GET) in progress, and,
/// during an upgrade, the refusal of new ones (503 `upgrading`, which
/// clients send again): an upgrade's exec waits until none is in progress,
/// so no import, pull, build, apply, sandbox or batch is cut in half.
final class UpgradeGate: Sendable {
    private struct State {
        var closed: String?
        var inFlight = 0
    }
    private let state = Mutex(State())

    /// Held while a request (and its streamed response) runs.
    final class Ticket: Sendable {
        private let gate: UpgradeGate
        fileprivate init(_ gate: UpgradeGate) { self.gate = gate }
        deinit { gate.state.withLock { $0.inFlight -= 1 } }
    }

    func enter() throws -> Ticket {
        try state.withLock { s in
            if let why = s.closed { throw HearthError(.upgrading, why) }
            s.inFlight += 1
        }
        return Ticket(self)
    }

    func close(_ why: String) { state.withLock { $0.closed = why } }
    func reopen() { state.withLock { $0.closed = nil } }
    var inFlight: Int { state.withLock { $0.inFlight } }
}

/// Counts changing requests through their response's last byte (a streamed
/// import or build works while its body is written) and refuses them while
/// the gate is closed. GETs pass: reads are cheap to repeat, and long polls
/// (`GET /v1/tasks/{id}?wait`) are what clients use to ride out the exec.
/// So do single task posts (the pool refuses those itself, and one that
/// waits for its task rides out the exec by id, not holding it up).
struct UpgradeGateMiddleware<Context: RequestContext>: RouterMiddleware {
    let gate: UpgradeGate

    static func passes(method: HTTPRequest.Method, path: String) -> Bool {
        if method == .get || path == "/v1/upgrade" { return true }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        return method == .post && parts.count == 5 && parts[1] == "v1" && parts[2] == "environments" && parts[4] == "tasks"
    }

    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        if Self.passes(method: request.method, path: request.uri.path) { return try await next(request, context) }
        let ticket = try gate.enter()
        var response = try await next(request, context)
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            try await body.write(writer)
            withExtendedLifetime(ticket) {}
        }
        return response
    }
}

/// `hearthd --upgrade`, `POST /v1/upgrade` or SIGUSR2: hands the replicas
/// to the binary now at the path hearthd was started from, with no task
/// lost. New tasks and changing requests get 503 `upgrading` (the SDK
/// sends them again); queued tasks go to replicas and changing requests
/// finish (up to `timeout`, else the upgrade is refused and work goes on);
/// every replica is put with the keeper; the task store is flushed; then,
/// on the event loop that reads every replica's channel, once none holds a
/// half-read or half-written frame, hearthd exec(2)s the new binary in
/// place: same pid, same arguments. The new image adopts the kept replicas
/// (the path of a restart after a crash) and the tasks they still run end
/// with their results; clients waiting on a task ride out the gap by id.
final class Upgrader: Sendable {
    struct Plan: Sendable {
        /// The executable hearthd was started from (resolved at start: a
        /// replaced file's /proc/self/exe names the old, deleted one).
        var binary: String
        var argv: [String]
        var timeout: Duration
    }

    private let plan: Plan
    private let pool: Pool
    private let gate: UpgradeGate
    private let sandboxes: ReplicaRegistry
    private let loop: any EventLoop
    private let taskStore: TaskStore?
    private let logger: Logger
    private let busy = Mutex(false)

    /// Set in the new image's environment: CLOCK_MONOTONIC (ns) at the exec,
    /// so it can say how long the hand-over took.
    static let startedVariable = "HEARTH_UPGRADE_EXEC_NS"

    init(plan: Plan, pool: Pool, gate: UpgradeGate, sandboxes: ReplicaRegistry, loop: any EventLoop,
         taskStore: TaskStore?, logger: Logger) {
        self.plan = plan; self.pool = pool; self.gate = gate; self.sandboxes = sandboxes; self.loop = loop
        self.taskStore = taskStore; self.logger = logger
    }

    var binary: String { plan.binary }

    /// Checks the new binary, refuses new work and waits until an exec
    /// would lose nothing. Throws (and lets work go on) when it cannot.
    func prepare() async throws {
        let claimed = busy.withLock { b -> Bool in
            if b { return false }
            b = true
            return true
        }
        guard claimed else { throw HearthError(.conflict, "an upgrade is already in progress") }
        do {
            try await preflight()
            let why = "hearthd is handing over to a new binary (upgrade); nothing was accepted: send the request again in a moment"
            gate.close(why)
            pool.close(why)
            logger.notice("upgrade to \(plan.binary): new tasks and changes wait; finishing what is queued")
            let end = ContinuousClock.now + plan.timeout
            while true {
                let blockers = await self.blockers()
                if blockers.isEmpty { break }
                if ContinuousClock.now >= end {
                    throw HearthError(.conflict, "upgrade refused: after \(Self.seconds(plan.timeout)) \(blockers.joined(separator: "; ")) (an exec would lose them); hearthd goes on with the old binary")
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
        } catch {
            abandon()
            throw error
        }
    }

    /// Puts every replica with the keeper and execs; returns only when the
    /// exec failed (then work goes on with this binary).
    func commit() async {
        await pool.depositAll()
        let end = ContinuousClock.now + .seconds(5)
        var failure = ""
        while ContinuousClock.now < end {
            let blockers = await self.blockers()
            if blockers.isEmpty {
                let (_, channels) = await pool.handover()
                let outcome = try? await loop.submit { [self] () -> Int32? in
                    // On the loop: no read or write can happen until the exec.
                    guard pool.queuedTasks == 0, gate.inFlight == 0, sandboxes.count == 0,
                          channels.allSatisfy({ $0.quiescent() }) else { return nil }
                    taskStore?.flush()
                    return exec()
                }.get()
                if let err = outcome ?? nil {
                    failure = "exec \(plan.binary): \(ErrnoName.name(err)) (\(String(cString: strerror(err))))"
                    break
                }
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        if failure.isEmpty { failure = "a replica's channel or a request stayed busy for 5 s" }
        logger.error("upgrade failed: \(failure); hearthd goes on with the old binary")
        abandon()
    }

    private func abandon() {
        gate.reopen()
        pool.reopen()
        busy.withLock { $0 = false }
    }

    /// What an exec would lose now, as sentences; empty: nothing.
    private func blockers() async -> [String] {
        var out = await pool.handover().blockers
        let requests = gate.inFlight
        if requests > 0 { out.append("\(requests) request(s) (imports, pulls, builds, applies, batches) still in progress") }
        let running = sandboxes.count
        if running > 0 { out.append("\(running) sandbox or image-build replica(s) still running") }
        return out
    }

    /// `BINARY --version` must run and exit 0: a missing, truncated or
    /// foreign file is refused before anything stops.
    private func preflight() async throws {
        let binary = plan.binary
        let outcome: HostCommand.Outcome
        do {
            outcome = try await Blocking.run {
                try HostCommand.run(binary, argv: [binary, "--version"], environment: [], timeout: .seconds(10))
            }
        } catch {
            throw HearthError(.unavailable, "upgrade refused: the new binary \(binary) does not start: \(HearthError.wrap(error).message)")
        }
        guard outcome.succeeded else {
            let tail = outcome.tail(400)
            throw HearthError(.unavailable, "upgrade refused: \(binary) --version \(outcome.describe(timeout: .seconds(10)))\(tail.isEmpty ? "" : ": \(tail)")")
        }
        logger.info("upgrade: \(binary) is hearthd \(outcome.tail(100))")
    }

    /// The errno when execve failed.
    private func exec() -> Int32 {
        var env = ProcessInfo.processInfo.environment
        env[Self.startedVariable] = String(Self.monotonicNanoseconds())
        let envp = env.map { "\($0.key)=\($0.value)" }
        logger.notice("upgrade: exec \(plan.binary)")
        let arena = CArena()
        defer { arena.release() }
        return hearth_reexec(plan.binary, arena.stringArray(plan.argv), arena.stringArray(envp))
    }

    static func seconds(_ d: Duration) -> String {
        let s = d.seconds
        return s == s.rounded() ? "\(Int(s)) s" : String(format: "%.1f s", s)
    }

    /// CLOCK_MONOTONIC in nanoseconds: it runs on across an exec.
    private static func monotonicNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// In a new image started by an upgrade: how long since the exec (and
    /// the variable is cleared, so nothing started later inherits it).
    static func sinceExec() -> Duration? {
        guard let text = getenv(startedVariable).map({ String(cString: $0) }), let ns = Int64(text) else { return nil }
        unsetenv(startedVariable)
        return .nanoseconds(monotonicNanoseconds() - ns)
    }
}

/// `POST /v1/upgrade`: 202 once nothing would be lost (the exec follows,
/// just after the response), or the reason it is refused.
struct UpgradeRoute: Sendable {
    let upgrader: Upgrader?

    struct Accepted: Codable, Sendable {
        var pid: Int32
        var binary: String
    }

    func register(on router: Router<HearthRequestContext>) {
        router.post("/v1/upgrade") { _, _ in
            guard let upgrader else {
                throw HearthError(.unavailable, "this hearthd does not know the executable it was started from; restart it to upgrade")
            }
            try await upgrader.prepare()
            Task {
                // The response goes out first.
                try? await Task.sleep(for: .milliseconds(50))
                await upgrader.commit()
            }
            return try json(Accepted(pid: getpid(), binary: upgrader.binary), status: .accepted)
        }
    }
}
