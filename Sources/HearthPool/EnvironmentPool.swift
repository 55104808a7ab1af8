import Foundation
import Glibc
import HearthCore
import HearthImage
import HearthSandbox
import Logging
import Metrics

/// What one environment's replicas are, resolved from its spec.
public struct PoolConfig: Sendable {
    public var name: String
    public var identity: String
    public var image: String
    public var env: [String: String]
    public var limits: CgroupLimits
    public var replicaCount: Int
    public var ttl: Duration
    public var secrets: [String]
    public var network: NetworkMode
    public var seccomp: SeccompProfile?
    public var capabilities: CapabilitySet
    public var timeout: Duration?
    public var maxTasksPerReplica: Int?
    public var maxQueue: Int
    /// Python distributions the worker must find before it says `ready`.
    public var packages: [String]

    public init(name: String, identity: String, image: String, env: [String: String], limits: CgroupLimits,
                replicaCount: Int, ttl: Duration, secrets: [String], network: NetworkMode,
                seccomp: SeccompProfile?, capabilities: CapabilitySet, timeout: Duration?,
                maxTasksPerReplica: Int?, maxQueue: Int, packages: [String] = []) {
        self.name = name; self.identity = identity; self.image = image; self.env = env; self.limits = limits
        self.replicaCount = replicaCount; self.ttl = ttl; self.secrets = secrets; self.network = network
        self.seccomp = seccomp; self.capabilities = capabilities; self.timeout = timeout
        self.maxTasksPerReplica = maxTasksPerReplica; self.maxQueue = maxQueue; self.packages = packages
    }
}

/// Shared services every environment uses.
public struct PoolContext: Sendable {
    public var runtime: SandboxRuntime
    public var images: ImageStore
    public var code: CodeStore
    public var secrets: SecretStore
    public var tasks: TaskRegistry
    public var logger: Logger
    /// Host directory holding the `hearth` package (mounted read-only at /.hearth/worker).
    public var workerDir: String
    public var maxFrame: Int = Frames.defaultMaxBytes

    public init(runtime: SandboxRuntime, images: ImageStore, code: CodeStore, secrets: SecretStore,
                tasks: TaskRegistry, logger: Logger, workerDir: String) {
        self.runtime = runtime; self.images = images; self.code = code; self.secrets = secrets
        self.tasks = tasks; self.logger = logger; self.workerDir = workerDir
    }
}

/// One environment: a bounded FIFO of tasks and up to `replicaCount` warm
/// replicas. A task goes to an idle replica; if none is idle and fewer than
/// `replicaCount` exist, one is started (a cold start); otherwise it waits.
actor EnvironmentPool {
    private(set) var config: PoolConfig
    private let ctx: PoolContext
    private var replicas: [String: WarmReplica] = [:]
    private var idle: [WarmReplica] = []
    private var queue: [TaskRecord] = []
    private var queueHead = 0
    private var starting = 0
    private var startFailures = 0
    private var nextStartAllowed = ContinuousClock.now
    private var retryScheduled = false
    private(set) var lastError: String?
    private var draining = false
    private var ttlTask: Task<Void, Never>?
    /// Replicas being torn down; drain waits for them.
    private var teardowns: [String: Task<Void, Never>] = [:]

    init(config: PoolConfig, context: PoolContext) {
        self.config = config
        self.ctx = context
    }

    func startTTLLoop() {
        ttlTask = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                await self?.reapIdle()
            }
        }
    }

    var queued: Int { queue.count - queueHead }

    // MARK: submission

    func submit(_ task: TaskRecord) throws {
        if draining {
            throw HearthError(.unavailable, "environment \"\(config.name)\" is being removed; no new tasks are accepted")
        }
        if queued >= config.maxQueue {
            throw HearthError(.queueFull, "environment \"\(config.name)\": the queue is full (\(queued) tasks waiting, max_queue \(config.maxQueue)); retry later or raise max_queue")
        }
        queue.append(task)
        pump()
    }

    /// Cancels a queued task (true), or asks a running one to stop.
    func cancel(_ task: TaskRecord) -> Bool {
        if let i = queue[queueHead...].firstIndex(where: { $0 === task }) {
            queue.remove(at: i)
            task.finish(.cancelled, error: TaskError(type: "Cancelled", message: "task \(task.id) was cancelled before it started"))
            ctx.tasks.retire(task)
            return true
        }
        for r in replicas.values where r.state.withLock({ $0.current === task }) {
            r.state.withLock { $0.cancelRequested = true }
            // hearth-init forwards SIGINT to the worker: KeyboardInterrupt in the task.
            r.running.signal(SIGINT)
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
        r.running.cgroup.killAll()
    }

    // MARK: scheduling

    private func pump() {
        while queued > 0, let r = idle.popLast() {
            let task = queue[queueHead]
            queueHead += 1
            if queueHead > 1024 && queueHead * 2 > queue.count {
                queue.removeFirst(queueHead)
                queueHead = 0
            }
            dispatch(task, on: r, cold: false)
        }
        if queueHead == queue.count { queue.removeAll(keepingCapacity: true); queueHead = 0 }
        // Start replicas for waiting tasks, up to replica_count.
        while !draining && queued > starting && replicas.count + starting < config.replicaCount {
            let now = ContinuousClock.now
            if now < nextStartAllowed {
                scheduleRetry(at: nextStartAllowed)
                return
            }
            starting += 1
            startReplica()
        }
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
                let replica = try await Self.build(config: config, ctx: ctx)
                self.replicaStarted(replica)
            } catch {
                self.startFailed(error)
            }
        }
    }

    /// Builds a replica and waits for its worker to say `ready`.
    private static func build(config: PoolConfig, ctx: PoolContext) async throws -> WarmReplica {
        let name = ctx.runtime.newReplicaName(prefix: config.name)
        let toWorker = try PipePair.make(), fromWorker = try PipePair.make()
        let replica: WarmReplica
        do {
            let running = try await Blocking.run { () throws -> RunningReplica in
                let image = try ctx.images.resolve(config.image)
                var spec = ReplicaSpec(name: name, image: image,
                                       argv: ["python3", "-X", "utf8", "/.hearth/worker/hearth/_worker.py"],
                                       limits: config.limits)
                spec.env = config.env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                spec.env.append("HEARTH_ENVIRONMENT=\(config.name)")
                spec.env.append("HEARTH_REPLICA=\(name)")
                spec.env.append("HEARTH_MAX_FRAME=\(ctx.maxFrame)")
                spec.env.append("HEARTH_IMAGE=\(config.image)")
                if !config.packages.isEmpty {
                    // Validated requirement strings: no spaces, so a space list needs no quoting.
                    spec.env.append("HEARTH_REQUIRE_PACKAGES=\(config.packages.joined(separator: " "))")
                }
                // Bundles are read-only: do not even try to write bytecode caches there.
                spec.env.append("PYTHONDONTWRITEBYTECODE=1")
                spec.network = config.network
                spec.seccomp = config.seccomp
                spec.capabilities = config.capabilities
                spec.mounts = [
                    BindMount(source: ctx.workerDir, target: "/.hearth/worker", readOnly: true),
                    BindMount(source: ctx.code.root, target: "/.hearth/code", readOnly: true),
                ]
                if !config.secrets.isEmpty {
                    let dir = ctx.runtime.replicasDir + "/" + name + ".secrets"
                    try ctx.secrets.materialize(keys: config.secrets, into: dir)
                    spec.mounts.append(BindMount(source: dir, target: "/etc/secrets", readOnly: true))
                    spec.cleanupPaths.append(dir)
                }
                spec.extraFDs = [(toWorker.read, 3), (fromWorker.write, 4)]
                return try ctx.runtime.start(spec)
            }
            close(toWorker.read)
            close(fromWorker.write)
            replica = WarmReplica(name: name, running: running, toWorker: toWorker.write,
                                  fromWorker: fromWorker.read, maxFrame: ctx.maxFrame)
        } catch {
            for fd in [toWorker.read, toWorker.write, fromWorker.read, fromWorker.write] { close(fd) }
            throw error
        }
        do {
            try replica.attach()
            _ = try await replica.waitReady()
            return replica
        } catch {
            // The worker died before `ready`: say why, with what it printed.
            let status = await replica.running.wait()
            let output = replica.idleOutput.suffix(2000)
            _ = try? await Blocking.run { replica.teardown() }
            var message = "replica \(name): the worker \(status) before it was ready"
            if replica.running.cgroup.oomKilled() { message += " (out of memory)" }
            if !output.isEmpty { message += "; its output:\n" + output }
            throw HearthError(.spawnFailed, message)
        }
    }

    private func replicaStarted(_ r: WarmReplica) {
        starting -= 1
        startFailures = 0
        lastError = nil
        if draining {
            Task { _ = try? await Blocking.run { r.teardown() } }
            return
        }
        replicas[r.name] = r
        r.setPhase(.ready)
        PoolMetrics.coldStart.record(duration: ContinuousClock.now - r.started)
        ctx.logger.info("environment \(config.name): replica \(r.name) ready (\(Int((ContinuousClock.now - r.started).milliseconds)) ms)")
        watchExit(r)
        if queued > 0 {
            let task = queue[queueHead]
            queueHead += 1
            dispatch(task, on: r, cold: true)
        } else {
            idle.append(r)
        }
        pump()
    }

    private func startFailed(_ error: any Error) {
        starting -= 1
        startFailures += 1
        let message = HearthError.wrap(error).message
        lastError = message
        // Exponential backoff, never a tight loop: 0.5 s, 1 s, 2 s … 60 s.
        let delay = min(60.0, 0.5 * pow(2.0, Double(startFailures - 1)))
        nextStartAllowed = .now + .milliseconds(Int(delay * 1000))
        ctx.logger.warning("environment \(config.name): replica failed to start (attempt \(startFailures), next in \(delay) s): \(message)")
        // Tasks waiting for this start would wait forever on a broken
        // environment: fail them with the reason.
        if replicas.isEmpty && starting == 0 {
            while queued > 0 {
                let task = queue[queueHead]
                queueHead += 1
                task.finish(.failed, error: TaskError(type: "ReplicaStartFailed", message: message))
                ctx.tasks.retire(task)
            }
        }
        pump()
    }

    /// A replica that dies while idle is removed at once.
    private func watchExit(_ r: WarmReplica) {
        Task {
            _ = await r.running.wait()
            self.replicaExited(r)
        }
    }

    private func replicaExited(_ r: WarmReplica) {
        guard replicas[r.name] != nil else { return }
        if r.state.withLock({ $0.current }) != nil { return } // the task path handles it
        remove(r)
        pump()
    }

    private func remove(_ r: WarmReplica) {
        replicas.removeValue(forKey: r.name)
        idle.removeAll { $0 === r }
        let name = r.name
        teardowns[name] = Task { _ = try? await Blocking.run { r.teardown() } }
        Task { [weak self] in
            await self?.teardowns[name]?.value
            await self?.teardownDone(name)
        }
    }

    private func teardownDone(_ name: String) { teardowns.removeValue(forKey: name) }

    // MARK: running a task

    private func dispatch(_ task: TaskRecord, on r: WarmReplica, cold: Bool) {
        guard task.markRunning(replica: r.name, pid: r.state.withLock({ $0.workerPid }), cold: cold,
                               coldPhases: cold ? Self.coldPhases(r) : nil) else {
            // Cancelled while queued; the replica stays idle.
            idle.append(r)
            pump()
            return
        }
        let bundlePath = task.bundle.map { "/.hearth/code/" + $0 }
        let timeout = task.timeout ?? config.timeout
        if let timeout {
            Task {
                try? await Task.sleep(for: timeout)
                if task.currentState == .running, r.state.withLock({ $0.current === task }) {
                    r.state.withLock { $0.timedOut = true }
                    r.running.cgroup.killAll()
                }
            }
        }
        Task {
            do {
                let msg = try await r.run(task, bundlePath: bundlePath, env: nil)
                self.completed(task, on: r, msg)
            } catch {
                await self.lost(task, on: r, error)
            }
        }
    }

    /// A new replica's start phases in µs, for its first task's snapshot;
    /// worker_ready runs from the spawn's return to now (the ready frame has
    /// just been handled): interpreter start-up and the worker's imports.
    private static func coldPhases(_ r: WarmReplica) -> [String: Int64] {
        func micros(_ d: Duration) -> Int64 { d.components.seconds * 1_000_000 + d.components.attoseconds / 1_000_000_000_000 }
        var out: [String: Int64] = [:]
        for p in r.running.startPhases { out[p.name] = micros(p.duration) }
        out["worker_ready"] = micros(ContinuousClock.now - r.started)
        return out
    }

    private func completed(_ task: TaskRecord, on r: WarmReplica, _ msg: WorkerMessage) {
        if let started = task.state.withLock({ $0.coldStart == false ? $0.started : nil }) {
            // Warm dispatch: run frame out → result frame in, on a ready replica.
            PoolMetrics.warmDispatch.record(duration: ContinuousClock.now - started)
        }
        let cancelled = r.state.withLock { $0.cancelRequested }
        if msg.ok == true {
            task.finish(.succeeded, result: msg.value ?? .null, workerMicros: msg.duration_us)
        } else if cancelled && msg.error?.type == "KeyboardInterrupt" {
            task.finish(.cancelled, error: TaskError(type: "Cancelled", message: "task \(task.id) was cancelled while running"),
                        workerMicros: msg.duration_us)
        } else {
            task.finish(.failed, error: msg.error ?? TaskError(type: "TaskFailed", message: "the task failed"),
                        workerMicros: msg.duration_us)
        }
        ctx.tasks.retire(task)
        r.finishTask()
        let used = r.state.withLock { $0.tasksRun }
        if draining || (config.maxTasksPerReplica.map { used >= $0 } ?? false) {
            remove(r)
        } else {
            idle.append(r)
        }
        pump()
    }

    /// The worker died or broke the protocol mid-task.
    private func lost(_ task: TaskRecord, on r: WarmReplica, _ error: any Error) async {
        let reason = (error as? ChannelError) ?? .closed
        let status: ExitStatus
        if case .protocolViolation = reason {
            r.running.cgroup.killAll()
        }
        status = await r.running.wait()
        let (timedOut, cancelled) = r.state.withLock { ($0.timedOut, $0.cancelRequested) }
        let taskError: TaskError
        if timedOut {
            let t = task.timeout ?? config.timeout ?? .zero
            taskError = TaskError(type: "Timeout", message: "task \(task.id) did not finish within \(t.seconds) s; its replica was killed")
        } else if r.running.cgroup.oomKilled() {
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
        r.state.withLock { $0.current = nil }
        remove(r)
        pump()
    }

    // MARK: TTL, status, shutdown

    private func reapIdle() {
        let now = ContinuousClock.now
        for r in idle where now - r.state.withLock({ $0.lastUsed }) >= config.ttl {
            ctx.logger.info("environment \(config.name): replica \(r.name) idle for its TTL (\(config.ttl.seconds) s); removing it")
            remove(r)
        }
    }

    func status() -> EnvironmentStatus {
        let now = ContinuousClock.now
        let reps = replicas.values.sorted { $0.name < $1.name }.map { r -> ReplicaStatus in
            r.state.withLock { s in
                let idleFor = s.current == nil ? (now - s.lastUsed).seconds : 0
                return ReplicaStatus(name: r.name, state: s.phase.rawValue, pid: s.workerPid, tasksRun: s.tasksRun,
                                     idleSeconds: idleFor,
                                     ttlLeftSeconds: s.current == nil ? max(0, config.ttl.seconds - idleFor) : nil,
                                     python: s.python)
            }
        }
        return EnvironmentStatus(name: config.name, identity: config.identity, image: config.image,
                                 replicaCount: config.replicaCount, ttlSeconds: config.ttl.seconds,
                                 queued: queued, replicas: reps, lastError: lastError)
    }

    /// Stops taking tasks, lets running ones finish (up to `deadline`), then
    /// removes every replica. Queued tasks are cancelled.
    func drain(deadline: Duration) async {
        draining = true
        ttlTask?.cancel()
        while queued > 0 {
            let task = queue[queueHead]
            queueHead += 1
            task.finish(.cancelled, error: TaskError(type: "Cancelled", message: "environment \(config.name) was removed or replaced before the task started"))
            ctx.tasks.retire(task)
        }
        for r in idle { remove(r) }
        idle.removeAll()
        let end = ContinuousClock.now + deadline
        while !replicas.isEmpty && ContinuousClock.now < end {
            try? await Task.sleep(for: .milliseconds(20))
        }
        for r in replicas.values { remove(r) }
        while starting > 0 && ContinuousClock.now < end + .seconds(5) {
            try? await Task.sleep(for: .milliseconds(20))
        }
        for t in Array(teardowns.values) { await t.value }
    }
}

enum PipePair {
    static func make() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard hearthPipe2(&fds) == 0 else { throw SystemError.current("pipe2", "") }
        return (fds[0], fds[1])
    }
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
    var milliseconds: Double { seconds * 1000 }
}
