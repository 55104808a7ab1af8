import Foundation
import Glibc
import HearthCore
import HearthImage
import HearthSandbox
import Logging
import Metrics
import NIOCore
import Synchronization
import HearthOS

/// Shared services every environment uses.
public struct PoolContext: Sendable {
    /// Where replicas come from: built from an image or adopted spares.
    let launcher: any ReplicaLaunching
    public var code: CodeStore
    public var tasks: TaskRegistry
    public var logger: Logger
    /// The task channel's frame limit (the worker gets it too).
    public let maxFrame: Int
    /// Pre-started replicas new environments adopt; nil: none.
    public var spares: SparePool?
    /// The memory limit of a replica whose spec sets none, spares included
    /// (`hearthd --default-memory`); nil: no limit.
    public var defaultMemory: Int64?
    /// Admission's memory ledger, where spares reserve their limit; nil:
    /// spares are not counted.
    public var memory: MemoryLedger?
    /// Whole GPUs for replicas with `gpu: N`; nil: none to give.
    public var gpus: GPUAllocator?
    /// The keeper and the replicas a previous daemon left; nil: replicas
    /// die with the daemon (unit tests).
    public var adoption: ReplicaAdoption?
    /// The daemon's (single) HTTP event loop: replicas' result frames are
    /// read there, next to the responses waiting for them.
    public var resultLoop: any EventLoop

    /// `workerDir`: host directory holding the `hearth` package (mounted
    /// read-only at /.hearth/worker).
    public init(runtime: SandboxRuntime, images: ImageStore, code: CodeStore, secrets: SecretStore,
                tasks: TaskRegistry, logger: Logger, workerDir: String, resultLoop: any EventLoop,
                maxFrame: Int = Frames.defaultMaxBytes, gpus: GPUAllocator? = nil) {
        self.init(launcher: ReplicaLauncher(runtime: runtime, images: images, secrets: secrets, workerDir: workerDir,
                                            maxFrame: maxFrame, resultLoop: resultLoop, logger: logger, gpus: gpus),
                  code: code, tasks: tasks, logger: logger, resultLoop: resultLoop, maxFrame: maxFrame)
        self.gpus = gpus
    }

    init(launcher: any ReplicaLaunching, code: CodeStore, tasks: TaskRegistry, logger: Logger,
         resultLoop: any EventLoop, maxFrame: Int = Frames.defaultMaxBytes) {
        self.launcher = launcher; self.code = code; self.tasks = tasks; self.logger = logger
        self.resultLoop = resultLoop; self.maxFrame = maxFrame
    }
}

/// One environment: a bounded FIFO of tasks and up to `replicaCount` warm
/// replicas. A task goes to an idle replica; if none is idle and fewer than
/// `replicaCount` exist, one is started (a cold start); otherwise it waits.
///
/// The queue and the idle replicas live in `dispatcher`, under a lock, so
/// the warm path never waits for the actor: a submission that finds an idle
/// replica writes the run frame at once, and a result is handled on the
/// event loop that reads it, which hands the replica the next queued task right there.
/// The actor keeps the replicas' lives: starts, exits, TTL, drain.
actor EnvironmentPool {
    nonisolated let config: PoolConfig
    private nonisolated let ctx: PoolContext
    private nonisolated let dispatcher = Dispatcher()
    private var replicas: [String: WarmReplica] = [:]
    private var starting = 0
    private var startFailures = 0
    private var nextStartAllowed = ContinuousClock.now
    private var retryScheduled = false
    private(set) var lastError: String?
    private var ttlTask: Task<Void, Never>?
    /// Notified when a replica goes, a start ends or a teardown finishes:
    /// what a drain waits for.
    private nonisolated let changes = ChangeSignal()
    /// Replicas being torn down; drain waits for them.
    private var teardowns: [String: Task<Void, Never>] = [:]
    /// The last time the environment scaled, and why (for status).
    private var lastScale: ScaleDecision?

    /// What the warm path shares with the actor. Lock order: the
    /// dispatcher's lock, then a replica's or a task's, never the reverse.
    final class Dispatcher: Sendable {
        struct State {
            var queue: [TaskRecord] = []
            var head = 0
            /// Replicas with a free slot (idle, or running fewer tasks than
            /// their concurrency); most recently used last.
            var idle: [WarmReplica] = []
            var draining = false
            /// Scaled to zero after `scaledown_ttl`: prewarm's floor waits
            /// for the next task.
            var asleep = false

            var queued: Int { queue.count - head }

            mutating func popTask() -> TaskRecord? {
                guard head < queue.count else { return nil }
                let t = queue[head]
                head += 1
                if head == queue.count {
                    queue.removeAll(keepingCapacity: queue.count <= 4096)
                    head = 0
                } else if head > 1024 && head * 2 > queue.count {
                    queue.removeFirst(head)
                    head = 0
                }
                return t
            }

            /// The most recently used replica with a free slot that can take
            /// `task`; one left full stays out of the list until a task of
            /// its ends, and replicas found closed, exited or at
            /// `max_tasks_per_replica` are dropped (the actor removes or
            /// retires them).
            mutating func claimIdle(for task: TaskRecord, maxTasks: Int?) -> WarmReplica? {
                while let r = idle.last {
                    switch r.claim(task, maxTasks: maxTasks) {
                    case .claimed(let full):
                        if full { idle.removeLast() }
                        return r
                    case .refused:
                        idle.removeLast()
                    }
                }
                return nil
            }

            /// Back among the replicas with a free slot (once).
            mutating func offer(_ r: WarmReplica) {
                if !idle.contains(where: { $0 === r }) { idle.append(r) }
            }

            /// `r` takes queued tasks while it has free slots; offered when
            /// a slot is left.
            mutating func fill(_ r: WarmReplica, maxTasks: Int?) -> [TaskRecord] {
                var out: [TaskRecord] = []
                while queued > 0 {
                    switch r.claim(queue[head], maxTasks: maxTasks) {
                    case .claimed(let full):
                        if let t = popTask() { out.append(t) }
                        if full { return out }
                    case .refused:
                        return out
                    }
                }
                offer(r)
                return out
            }
        }
        let state = Mutex(State())
    }

    init(config: PoolConfig, context: PoolContext) {
        self.config = config
        self.ctx = context
    }

    /// Starts the TTL loop and, with `prewarm`, the least replicas.
    func start() {
        startTTLLoop()
        for o in ctx.adoption?.claim(environment: config.name, identity: config.identity) ?? [] { adopt(o) }
        pump()
    }

    // MARK: replicas that outlived a daemon restart

    /// Takes a replica the previous daemon left: it serves tasks once its
    /// worker answered the adoption's ping (tasks it still runs are held
    /// as if sent here).
    private func adopt(_ o: ReplicaAdoption.Orphan) {
        guard let adoption = ctx.adoption else { return }
        let reclaimer = Reclaimer(pool: self, recovery: adoption.recovery)
        let r = WarmReplica(adopting: o.running.name, running: o.running, toWorker: o.toWorker, fromWorker: o.fromWorker,
                            maxFrame: o.record.maxFrame, codeView: o.record.codeView, concurrency: config.concurrency,
                            workerPid: o.record.workerPid, python: o.record.python, tasksRun: o.record.tasksRun,
                            reclaimer: reclaimer)
        replicas[r.name] = r
        changes.notify()
        watchExit(r)
        let loop = ctx.resultLoop
        Task {
            defer { adoption.recovery.settled() }
            do {
                try await r.attach(loop: loop)
                let pong = try await r.reattach()
                self.reattached(r, running: pong.running?.count ?? 0)
            } catch {
                ctx.logger.warning("environment \(config.name): adopted replica \(r.name) did not answer (\(error)); it is replaced")
                self.remove(r)
                self.pump()
            }
        }
    }

    private func reattached(_ r: WarmReplica, running: Int) {
        ctx.logger.info("environment \(config.name): adopted replica \(r.name) (worker pid \(r.workerPid.map(String.init) ?? "?"), \(running) task\(running == 1 ? "" : "s") still running)")
        guard replicas[r.name] != nil else { return }
        let (draining, next): (Bool, [TaskRecord]) = dispatcher.state.withLock { s in
            if s.draining { return (true, []) }
            return (false, s.fill(r, maxTasks: config.maxTasksPerReplica))
        }
        if draining, r.inFlight == 0 {
            remove(r)
            return
        }
        for t in next { dispatch(t, on: r, cold: false) }
        pump()
    }

    /// Puts every live replica with the keeper again (a new keeper, after
    /// the last one died).
    func depositAll() {
        for r in replicas.values where r.closedReason == nil { ctx.adoption?.deposit(r, config: config) }
    }

    /// What an upgrade's exec would lose now: queued tasks (in no replica
    /// yet) and tasks in replicas the keeper does not hold; and the
    /// replicas, whose channels must be quiescent at the exec.
    func handover() -> (blockers: [String], replicas: [WarmReplica]) {
        var blockers: [String] = []
        if queued > 0 { blockers.append("\(queued) task(s) queued in environment \(config.name)") }
        if !ReplicaAdoption.keeps(config) {
            let running = replicas.values.reduce(0) { $0 + $1.inFlight }
            if running > 0 {
                blockers.append("\(running) task(s) running in environment \(config.name), whose replicas do not outlive hearthd (GPUs or network egress)")
            }
        }
        return (blockers, Array(replicas.values))
    }

    /// Hands an adopted replica the tasks the previous daemon sent it.
    struct Reclaimer: TaskReclaiming {
        let pool: EnvironmentPool
        let recovery: TaskRecovery

        func claim(_ id: String, on r: WarmReplica, workerPid: Int32?) -> (TaskRecord, WarmReplica.ResultHandler)? {
            guard let task = recovery.claim(id) else { return nil }
            _ = task.markRunning(replica: r.name, pid: workerPid, cold: false)
            let pool = self.pool
            return (task, { result in
                switch result {
                case .success(let msg): pool.completed(task, on: r, msg)
                case .failure(let error): Task { await pool.lost(task, on: r, error) }
                }
            })
        }

        func abandon(_ task: TaskRecord) {
            recovery.lose(task, why: "its result was read by the hearthd that stopped before it could record it; the task is lost")
        }
    }

    private func startTTLLoop() {
        ttlTask = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                await self?.reapIdle()
            }
        }
    }

    nonisolated var queued: Int { dispatcher.state.withLock { $0.queued } }

    // MARK: submission

    /// Queues tasks, or hands them straight to idle replicas; all or none.
    /// Runs on the caller's thread: the actor is visited only when a task
    /// has to wait (a replica may need starting).
    nonisolated func submit(_ tasks: [TaskRecord]) throws {
        var direct: [(TaskRecord, WarmReplica)] = []
        let waiting: Bool = try dispatcher.state.withLock { s in
            if s.draining {
                throw HearthError(.unavailable, "environment \"\(config.name)\" is being removed; no new tasks are accepted")
            }
            var i = 0
            if s.queued == 0 {
                while i < tasks.count, let r = s.claimIdle(for: tasks[i], maxTasks: config.maxTasksPerReplica) {
                    direct.append((tasks[i], r))
                    i += 1
                }
            }
            let rest = tasks.count - i
            if let refusal = Scheduling.queueRefusal(environment: config.name, queued: s.queued, adding: rest,
                                                     maxQueue: config.maxQueue) {
                for (t, r) in direct { r.unclaim(t); s.offer(r) }
                direct = []
                throw refusal
            }
            s.queue.append(contentsOf: tasks[i...])
            // A task wakes an environment that scaled to zero.
            let woke = s.asleep
            s.asleep = false
            return rest > 0 || (woke && config.prewarm)
        }
        for (t, r) in direct { dispatch(t, on: r, cold: false) }
        if waiting { Task { await self.pump() } }
    }

    /// Cancels a queued task (true), or asks a running one to stop.
    func cancel(_ task: TaskRecord) -> Bool {
        let wasQueued: Bool = dispatcher.state.withLock { s in
            guard let i = s.queue[s.head...].firstIndex(where: { $0 === task }) else { return false }
            s.queue.remove(at: i)
            return true
        }
        if wasQueued {
            task.finish(.cancelled, error: TaskError(type: "Cancelled", message: "task \(task.id) was cancelled before it started"))
            ctx.tasks.retire(task)
            return true
        }
        for r in replicas.values where r.requestCancel(of: task) {
            if r.concurrency > 1 {
                // Beside other tasks: the worker cancels this one alone.
                r.sendCancel(task)
            } else {
                // hearth-init forwards SIGINT to the worker: KeyboardInterrupt in the task.
                r.running.signal(SIGINT)
            }
            let grace = Duration.seconds(5)
            Task { [weak self] in
                try? await Task.sleep(for: grace)
                if task.currentState == .running { await self?.kill(r) }
            }
            return true
        }
        return false
    }

    private func kill(_ r: WarmReplica) {
        r.running.killAll()
    }

    // MARK: scheduling

    /// Pairs queued tasks with idle replicas, then starts replicas for the
    /// tasks still waiting (and prewarm's least), up to the most.
    private func pump() {
        let (pairs, waiting, draining, asleep): ([(TaskRecord, WarmReplica)], Int, Bool, Bool) = dispatcher.state.withLock { s in
            var pairs: [(TaskRecord, WarmReplica)] = []
            while s.queued > 0, !s.idle.isEmpty {
                let t = s.queue[s.head]
                guard let r = s.claimIdle(for: t, maxTasks: config.maxTasksPerReplica) else { break }
                _ = s.popTask()
                pairs.append((t, r))
            }
            return (pairs, s.queued, s.draining, s.asleep)
        }
        for (t, r) in pairs { dispatch(t, on: r, cold: false) }
        let floor = config.prewarm && !asleep ? config.minReplicas : 0
        let wanted = Scheduling.replicasToStart(queued: waiting, starting: starting, running: replicas.count,
                                                maxReplicas: config.replicaCount, concurrency: config.concurrency,
                                                floor: floor, draining: draining)
        guard wanted > 0 else { return }
        if case .at(let instant) = Scheduling.startGate(now: .now, nextStartAllowed: nextStartAllowed) {
            scheduleRetry(at: instant)
            return
        }
        let before = replicas.count + starting
        let reason = waiting > 0
            ? "\(waiting) task\(waiting == 1 ? "" : "s") waiting, \(replicas.count) running and \(starting) starting (max \(config.replicaCount))"
            : "prewarm: keeping min \(config.minReplicas)"
        for _ in 0..<wanted {
            starting += 1
            startReplica()
        }
        recordScale(.up, from: before, to: before + wanted, reason: reason)
    }

    private func recordScale(_ direction: ScaleDecision.Direction, from: Int, to: Int, reason: String) {
        lastScale = ScaleDecision(direction: direction, from: from, to: to, reason: reason,
                                  at: Date().timeIntervalSince1970)
        PoolMetrics.scaleEvents(direction).increment()
        ctx.logger.info("environment \(config.name): scale \(direction.rawValue) \(from) → \(to): \(reason)")
    }

    private func scheduleRetry(at instant: ContinuousClock.Instant) {
        guard !retryScheduled else { return }
        retryScheduled = true
        Task { [weak self] in
            try? await Task.sleep(until: instant, clock: .continuous)
            await self?.retryDue()
        }
    }

    private func retryDue() {
        retryScheduled = false
        pump()
    }

    private func startReplica() {
        let config = self.config, ctx = self.ctx
        Task {
            do {
                let key = await ctx.spares?.key(for: config)
                var replica: WarmReplica?
                if let key, let spare = ctx.spares?.take(key) {
                    replica = try await ctx.launcher.adopt(spare, into: config)
                }
                let r: WarmReplica
                if let replica { r = replica } else { r = try await ctx.launcher.build(config, spare: false) }
                self.replicaStarted(r)
                if let key { ctx.spares?.learn(key, config: config) }
            } catch {
                self.startFailed(error)
            }
        }
    }

    private func replicaStarted(_ r: WarmReplica) {
        starting -= 1
        changes.notify()
        startFailures = 0
        lastError = nil
        replicas[r.name] = r
        ctx.adoption?.deposit(r, config: config)
        let adopted = r.adoptMicros
        if adopted == nil { PoolMetrics.coldStart.record(duration: ContinuousClock.now - r.started) }
        watchExit(r)
        // The tasks that waited for it: as many as its concurrency takes.
        let (draining, first): (Bool, [TaskRecord]) = dispatcher.state.withLock { s in
            if s.draining { return (true, []) }
            return (false, s.fill(r, maxTasks: config.maxTasksPerReplica))
        }
        if draining {
            remove(r)
            return
        }
        if let adopted {
            ctx.logger.info("environment \(config.name): adopted spare replica \(r.name) (\(adopted) µs)")
        } else {
            ctx.logger.info("environment \(config.name): replica \(r.name) ready (\(Int((ContinuousClock.now - r.started).milliseconds)) ms)")
        }
        for t in first { dispatch(t, on: r, cold: true) }
        pump()
    }

    private func startFailed(_ error: any Error) {
        starting -= 1
        changes.notify()
        startFailures += 1
        let message = HearthError.wrap(error).message
        lastError = message
        // Never a tight loop.
        let delay = Backoff.delay(afterFailures: startFailures)
        nextStartAllowed = .now + delay
        ctx.logger.warning("environment \(config.name): replica failed to start (attempt \(startFailures), next in \(delay.seconds) s): \(message)")
        // Tasks waiting for this start would wait forever on a broken
        // environment: fail them with the reason.
        if replicas.isEmpty && starting == 0 {
            let failed: [TaskRecord] = dispatcher.state.withLock { s in
                var out: [TaskRecord] = []
                while let t = s.popTask() { out.append(t) }
                return out
            }
            for task in failed {
                task.finish(.failed, error: TaskError(type: "ReplicaStartFailed", message: message))
                ctx.tasks.retire(task)
            }
        }
        pump()
    }

    /// A replica that dies while idle is removed at once; one that is busy
    /// is left to its task's path (the channel closes, `lost`).
    private func watchExit(_ r: WarmReplica) {
        Task {
            _ = await r.running.wait()
            self.replicaExited(r)
        }
    }

    private func replicaExited(_ r: WarmReplica) {
        guard replicas[r.name] != nil else { return }
        let busy: Bool = dispatcher.state.withLock { s in
            s.idle.removeAll { $0 === r }
            return r.markExited()
        }
        if busy { return }
        if case .protocolViolation(let m)? = r.closedReason {
            // No task to carry the reason: the log does.
            ctx.logger.warning("environment \(config.name): replica \(r.name) broke the task protocol while idle (\(m)); it was killed and will be replaced")
        }
        remove(r)
        pump()
    }

    /// A replica that finished a task and cannot take another (draining,
    /// max_tasks_per_replica, its process gone).
    private func retireReplica(_ r: WarmReplica) {
        remove(r)
        pump()
    }

    private func remove(_ r: WarmReplica) {
        replicas.removeValue(forKey: r.name)
        changes.notify()
        dispatcher.state.withLock { s in s.idle.removeAll { $0 === r } }
        // Once per replica, whichever path (exit, loss, TTL, drain) came first.
        guard r.markRemoved() else { return }
        let name = r.name
        // The keeper lets go first: its copy of fd 3 must not keep the worker.
        ctx.adoption?.withdraw(name)
        let gpus = ctx.gpus
        teardowns[name] = Task {
            _ = try? await Blocking.run { r.teardown() }
            // Its GPUs are free once its processes are gone.
            gpus?.release(name)
        }
        Task { [weak self] in
            await self?.teardowns[name]?.value
            await self?.teardownDone(name)
        }
    }

    private func teardownDone(_ name: String) {
        teardowns.removeValue(forKey: name)
        changes.notify()
    }

    // MARK: running a task

    /// Sends a task to a replica claimed for it. Any thread.
    private nonisolated func dispatch(_ task: TaskRecord, on r: WarmReplica, cold: Bool) {
        guard task.markRunning(replica: r.name, pid: r.workerPid, cold: cold,
                               coldPhases: cold ? Self.coldPhases(r) : nil) else {
            // Cancelled meanwhile: the slot takes the next task, or is free.
            r.unclaim(task)
            for next in nextTasks(for: r) { dispatch(next, on: r, cold: false) }
            return
        }
        let bundlePath = task.bundle.map { "/.hearth/code/" + $0 }
        if let timeout = task.timeout ?? config.timeout {
            // A timer on the event loop, cancelled when the task ends (a
            // sleeping Task per task outlived every task that finished in time).
            let loop = ctx.resultLoop
            r.setDeadline(loop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) { [task] in
                guard task.currentState == .running, r.markTimedOut(task) else { return }
                if r.concurrency > 1 {
                    // Beside other tasks: cancelled alone; killed (with
                    // them) only if it ignores that for the grace period.
                    r.sendCancel(task)
                    loop.scheduleTask(in: .seconds(5)) {
                        if task.currentState == .running { Blocking.queue.async { r.running.killAll() } }
                    }
                } else {
                    // cgroup writes and kill(2)s: off the event loop.
                    Blocking.queue.async { r.running.killAll() }
                }
            }, for: task)
        }
        let send: @Sendable () -> Void = { [self, task] in
            r.send(task, bundlePath: bundlePath, env: nil) { [self, task] result in
                switch result {
                case .success(let msg): completed(task, on: r, msg)
                case .failure(let error): Task { await self.lost(task, on: r, error) }
                }
            }
        }
        guard let sha = task.bundle, !r.hasLinked(sha) else { return send() }
        // A bundle new to this replica: link it into its view first, off
        // the event loop (once per replica and bundle version).
        Blocking.queue.async { [self, task] in
            do {
                try ctx.code.link(sha, into: r.codeView)
                r.markLinked(sha)
                send()
            } catch {
                task.finish(.failed, error: TaskError(type: "BundleUnavailable",
                    message: "task \(task.id): code bundle \(sha) could not be made visible to replica \(r.name): \(HearthError.wrap(error).message)"))
                ctx.tasks.retire(task)
                r.finishTask(task)
                for next in nextTasks(for: r) { dispatch(next, on: r, cold: false) }
            }
        }
    }

    /// A slot of the replica just came free: it takes queued tasks
    /// (returned, claimed for it) or waits among the replicas with a free
    /// slot. When it may not take more, the actor retires it once its last
    /// task has ended.
    private nonisolated func nextTasks(for r: WarmReplica) -> [TaskRecord] {
        let used = r.tasksRun
        let (next, retire): ([TaskRecord], Bool) = dispatcher.state.withLock { s in
            let exited = !r.usable
            switch Scheduling.afterTask(tasksRun: used, maxTasksPerReplica: config.maxTasksPerReplica,
                                        draining: s.draining, exited: exited, queued: s.queued) {
            case .retire:
                s.idle.removeAll { $0 === r }
                return ([], r.inFlight == 0)
            case .takeNext, .idle:
                return (s.fill(r, maxTasks: config.maxTasksPerReplica), false)
            }
        }
        if retire { Task { await self.retireReplica(r) } }
        return next
    }

    /// A new replica's start phases in µs, for its first task's snapshot;
    /// worker_ready runs from the spawn's return to now (the ready frame has
    /// just been handled): interpreter start-up and the worker's imports.
    private nonisolated static func coldPhases(_ r: WarmReplica) -> [String: Int64] {
        // An adopted spare was built earlier, off this task's path: only
        // the adoption was on it.
        if let adopted = r.adoptMicros { return ["spare_adopt": adopted] }
        var out: [String: Int64] = [:]
        for p in r.running.startPhases { out[p.name] = p.duration.microseconds }
        out["worker_ready"] = (ContinuousClock.now - r.started).microseconds
        return out
    }

    /// A result frame, on the thread that read it (the event loop): the
    /// task ends here (its waiter wakes at once) and the replica takes the
    /// next task without a hop.
    nonisolated func completed(_ task: TaskRecord, on r: WarmReplica, _ msg: WorkerMessage) {
        if let started = task.state.withLock({ $0.coldStart == false ? $0.started : nil }) {
            // Warm dispatch: run frame out → result frame in, on a ready replica.
            PoolMetrics.warmDispatch.record(duration: ContinuousClock.now - started)
        }
        let (cancelled, timedOut) = r.marks(of: task)
        // A task stopped by a `cancel` frame (concurrency > 1) answers with
        // the exception that stopped it.
        let interrupted = msg.error?.type == "KeyboardInterrupt" || msg.error?.type == "CancelledError"
        if msg.ok == true {
            task.finish(.succeeded, result: msg.value ?? Array("null".utf8), workerMicros: msg.duration_us, resultBytes: msg.frameBytes)
        } else if timedOut && interrupted {
            let t = task.timeout ?? config.timeout ?? .zero
            task.finish(.failed, error: TaskError(type: "Timeout", message: "task \(task.id) did not finish within \(t.seconds) s; it was cancelled (the replica's other tasks go on)"),
                        workerMicros: msg.duration_us)
        } else if cancelled && interrupted {
            task.finish(.cancelled, error: TaskError(type: "Cancelled", message: "task \(task.id) was cancelled while running"),
                        workerMicros: msg.duration_us)
        } else {
            task.finish(.failed, error: msg.error ?? TaskError(type: "TaskFailed", message: "the task failed"),
                        workerMicros: msg.duration_us, resultBytes: msg.frameBytes)
        }
        ctx.tasks.retire(task)
        r.finishTask(task)
        for next in nextTasks(for: r) { dispatch(next, on: r, cold: false) }
    }

    /// The worker died or broke the protocol mid-task.
    func lost(_ task: TaskRecord, on r: WarmReplica, _ error: ChannelError) async {
        r.cancelDeadline(of: task)
        let reason = error
        let status: ExitStatus
        if case .protocolViolation = reason {
            r.running.killAll()
        }
        status = await r.running.wait()
        let held = r.releaseHeld(task)
        let (timedOut, cancelled) = (held?.timedOut ?? false, held?.cancelRequested ?? false)
        let taskError: TaskError
        if let eviction = r.running.eviction {
            ctx.logger.warning("environment \(config.name): \(eviction.message)")
            taskError = TaskError(type: "EphemeralStorageExceeded", message: "task \(task.id): \(eviction.message) and will be replaced")
        } else if timedOut {
            let t = task.timeout ?? config.timeout ?? .zero
            taskError = TaskError(type: "Timeout", message: "task \(task.id) did not finish within \(t.seconds) s; its replica was killed")
        } else if r.running.oomKilled() {
            let limit = config.limits.memoryLimit.map(Quantity.formatMemory) ?? "none"
            taskError = TaskError(type: "OOMKilled", message: "task \(task.id) ran out of memory (limit \(limit)); its replica was killed and will be replaced")
        } else if case .protocolViolation(let m) = reason {
            taskError = TaskError(type: "ProtocolError", message: "task \(task.id): \(m); the replica was replaced")
        } else if cancelled {
            taskError = TaskError(type: "Cancelled", message: "task \(task.id) was cancelled; its replica was killed after the grace period")
        } else {
            // hearth-init reports a worker killed by a signal as 128 + signal.
            let how: String
            if case .exited(let c) = status, c > 128, c < 128 + 65 {
                how = "was killed by signal \(c - 128) (\(signalName(c - 128)))"
            } else {
                how = "\(status)"
            }
            taskError = TaskError(type: "ReplicaLost", message: "task \(task.id): the replica's worker \(how); the replica will be replaced")
        }
        task.finish(cancelled && !timedOut ? .cancelled : .failed, error: taskError)
        ctx.tasks.retire(task)
        remove(r)
        pump()
    }

    // MARK: TTL, status, shutdown

    /// Replicas idle for `ttl` go while more than `min` remain; all go
    /// once nothing has been queued or running for `scaledown_ttl`.
    private func reapIdle() {
        let now = ContinuousClock.now
        let total = replicas.count
        let lastUsed = replicas.values.map(\.lastUsed).max()
        let busy = starting > 0 || replicas.values.contains { $0.inFlight > 0 }
        let decision: ([WarmReplica], Scheduling.ScaleDownReason)? = dispatcher.state.withLock { s in
            // Least recently used first (the list keeps the most recent
            // last); only replicas running nothing.
            let idle = s.idle.filter { $0.inFlight == 0 }
            let quiet = !busy && s.queued == 0 && idle.count == total
            guard let (indices, reason) = Scheduling.replicasToRetire(
                idleLastUsed: idle.map(\.lastUsed), total: total, minReplicas: config.minReplicas, ttl: config.ttl,
                environmentIdleSince: quiet ? lastUsed : nil, scaledownTTL: config.scaledownTTL, now: now)
            else { return nil }
            let out = indices.map { idle[$0] }
            s.idle.removeAll { r in out.contains { $0 === r } }
            if reason == .scaledownTTL { s.asleep = true }
            return (out, reason)
        }
        guard let (expired, reason) = decision else { return }
        let why = switch reason {
        case .idleTTL: "idle for ttl (\(config.ttl.seconds) s) with more than min (\(config.minReplicas))"
        case .scaledownTTL: "nothing queued or running for scaledown_ttl (\(config.scaledownTTL.seconds) s)"
        }
        for r in expired { remove(r) }
        recordScale(.down, from: total, to: total - expired.count, reason: why)
    }

    func status() -> EnvironmentStatus {
        let now = ContinuousClock.now
        let holders = ctx.gpus?.holders() ?? [:]
        let reps = replicas.values.sorted { $0.name < $1.name }.map { r -> ReplicaStatus in
            var st = r.status(now: now, ttl: config.ttl)
            let held = holders.filter { $0.value == r.name }.keys.sorted()
            if !held.isEmpty { st.gpus = held }
            return st
        }
        var status = EnvironmentStatus(name: config.name, identity: config.identity, image: config.image,
                                       replicaCount: config.replicaCount, ttlSeconds: config.ttl.seconds,
                                       queued: queued, replicas: reps, lastError: lastError)
        status.scaling = ScalingStatus(min: config.minReplicas, max: config.replicaCount, current: replicas.count,
                                       starting: starting, concurrency: config.concurrency, prewarm: config.prewarm,
                                       scaledownTTLSeconds: config.scaledownTTL.seconds, lastDecision: lastScale)
        return status
    }

    /// Stops taking tasks, lets running ones finish (up to `deadline`), then
    /// removes every replica. Queued tasks are cancelled.
    func drain(deadline: Duration) async {
        ttlTask?.cancel()
        let (queuedTasks, idleReplicas): ([TaskRecord], [WarmReplica]) = dispatcher.state.withLock { s in
            s.draining = true
            var out: [TaskRecord] = []
            while let t = s.popTask() { out.append(t) }
            // Replicas running nothing go now; the others retire as their
            // last task ends (nextTasks sees the drain).
            let idle = s.idle.filter { $0.inFlight == 0 }
            s.idle = []
            return (out, idle)
        }
        for task in queuedTasks {
            task.finish(.cancelled, error: TaskError(type: "Cancelled", message: "environment \(config.name) was removed or replaced before the task started"))
            ctx.tasks.retire(task)
        }
        for r in idleReplicas { remove(r) }
        // Running tasks finish (their replicas retire as they do), then
        // the rest go; starts in flight are waited for. Woken by changes,
        // not by polling.
        let end = ContinuousClock.now + deadline
        while true {
            let seen = changes.generation
            if replicas.isEmpty || ContinuousClock.now >= end { break }
            await changes.wait(after: seen, until: end)
        }
        for r in replicas.values { remove(r) }
        while true {
            let seen = changes.generation
            if starting == 0 || ContinuousClock.now >= end + .seconds(5) { break }
            await changes.wait(after: seen, until: end + .seconds(5))
        }
        for t in Array(teardowns.values) { await t.value }
    }
}
