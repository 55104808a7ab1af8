import Foundation
import Glibc
import HearthCore
import HearthSandbox
import Logging
import Synchronization
import HearthOS

/// A replica's channel as an upgrade sees it: quiescent or not.
public struct HandoverChannel: Sendable {
    let replica: WarmReplica
    /// Nothing half-read or half-written; on the daemon's event loop.
    public func quiescent() -> Bool { replica.quiescent() }
    public var name: String { replica.name }
}

public enum ApplyOutcome: String, Codable, Sendable {
    case created, unchanged, replaced
}

/// Every environment of the daemon, their specs on disk, and the journal of
/// tasks in flight (so a task lost to a daemon crash is reported as lost).
public final class Pool: Sendable {
    let ctx: PoolContext
    private let envDir: String
    private let journalDir: String
    private struct Entry {
        var pool: EnvironmentPool
        var config: PoolConfig
    }
    private let envs = Mutex<[String: Entry]>([:])
    /// Set while hearthd hands over to a new binary: why tasks are refused
    /// meanwhile (other changing requests: the server's UpgradeGate).
    private let closed = Mutex<String?>(nil)

    public init(context: PoolContext, stateRoot: String) throws {
        ctx = context
        envDir = stateRoot + "/environments"
        journalDir = context.tasks.journalDir
        try FS.makeDirectory(envDir, mode: 0o700)
        try FS.makeDirectory(journalDir, mode: 0o700)
        try context.tasks.journal.open()
    }

    public var tasks: TaskRegistry { ctx.tasks }
    public var spares: SparePool? { ctx.spares }

    // MARK: environments

    /// The specs saved by earlier runs, as (name, spec document).
    public func savedSpecs() -> [(String, Data)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: envDir)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted().compactMap { file in
            guard let data = FileManager.default.contents(atPath: envDir + "/" + file) else { return nil }
            return (String(file.dropLast(5)), data)
        }
    }

    /// Creates or replaces an environment. The same identity changes
    /// nothing; a new one drains the old replicas and serves new tasks from
    /// fresh ones. `spec` is saved so the environment comes back after a restart.
    public func apply(_ config: PoolConfig, spec: Data, persist: Bool = true) async throws -> ApplyOutcome {
        let (old, outcome): (EnvironmentPool?, ApplyOutcome) = envs.withLock { envs in
            if let existing = envs[config.name] {
                if existing.config.identity == config.identity { return (nil, .unchanged) }
                let pool = EnvironmentPool(config: config, context: ctx)
                envs[config.name] = Entry(pool: pool, config: config)
                return (existing.pool, .replaced)
            }
            envs[config.name] = Entry(pool: EnvironmentPool(config: config, context: ctx), config: config)
            return (nil, .created)
        }
        if outcome == .unchanged { return .unchanged }
        ctx.launcher.expectBuild()
        if persist {
            try FS.writeAtomically(Array(spec), to: envDir + "/" + config.name + ".json")
        }
        if let pool = envs.withLock({ $0[config.name]?.pool }) { await pool.start() }
        if let old {
            ctx.logger.info("environment \(config.name): spec changed; rolling its replicas")
            Task { await old.drain(deadline: .seconds(300)) }
        } else {
            ctx.logger.info("environment \(config.name) \(outcome.rawValue)")
        }
        return outcome
    }

    public func remove(_ name: String, deadline: Duration = .seconds(30)) async throws {
        guard let entry = envs.withLock({ $0.removeValue(forKey: name) }) else {
            throw HearthError(.environmentNotFound, "environment \"\(name)\" not found")
        }
        unlink(envDir + "/" + name + ".json")
        await entry.pool.drain(deadline: deadline)
    }

    public func configs() -> [PoolConfig] { envs.withLock { $0.values.map(\.config) } }

    public func list() async -> [EnvironmentStatus] {
        let pools = envs.withLock { $0.values.map(\.pool) }
        var out: [EnvironmentStatus] = []
        for p in pools { out.append(await p.status()) }
        return out.sorted { $0.name < $1.name }
    }

    public func status(_ name: String) async throws -> EnvironmentStatus {
        try await pool(name).status()
    }

    private func pool(_ name: String) throws -> EnvironmentPool {
        guard let p = envs.withLock({ $0[name]?.pool }) else {
            throw HearthError(.environmentNotFound, "environment \"\(name)\" not found; apply it first (`hearth apply -f FILE`)")
        }
        return p
    }

    // MARK: tasks

    public struct Submission: Sendable {
        public var module: String
        public var function: String
        /// A validated JSON object, as the client wrote it (never parsed into values).
        public var kwargs: [UInt8]
        public var bundle: String?
        public var timeout: Duration?
        /// The identity the caller applied; nil skips the check.
        public var identity: String?
        /// Someone waits for the result: it stays out of the result budget
        /// (never spilled or dropped) until `TaskRegistry.release`.
        public var pinned = false
        /// The client's id for the task; a second submission with the id of
        /// a task in memory is that task (a client's retry), not a new one.
        public var id: String?
        public init(module: String, function: String, kwargs: [UInt8], bundle: String?, timeout: Duration?,
                    identity: String? = nil) {
            self.module = module; self.function = function; self.kwargs = kwargs; self.bundle = bundle; self.timeout = timeout
            self.identity = identity
        }
    }

    /// Submits tasks together: one journal write and one pass of the
    /// scheduler for the lot (the batch route). Either every task is
    /// accepted, or none is and the error says why.
    public func submitMany(_ env: String, _ subs: [Submission]) throws -> [TaskRecord] {
        try checkOpen()
        let pool = try pool(env)
        let have = envs.withLock { $0[env]?.config.identity }
        var checked = Set<String>()
        // A run frame is the kwargs plus its names and a few hundred bytes; one
        // over the worker's limit would fail the channel there (ProtocolError),
        // so it is refused here, before anything is queued.
        let frameRoom = ctx.maxFrame - 1024
        for (i, s) in subs.enumerated() {
            let size = s.kwargs.count + s.module.utf8.count + s.function.utf8.count + (s.bundle?.utf8.count ?? 0) * 2
            if size > frameRoom {
                let which = subs.count == 1 ? "kwargs" : "inputs[\(i)]"
                throw HearthError.invalid("\(which): \(size) bytes do not fit in a task's run frame (at most \(frameRoom) bytes of arguments; the workers' frame limit is \(ctx.maxFrame)); send large data as a FlyteFile or through a volume")
            }
        }
        for s in subs {
            if let want = s.identity, let have, want != have {
                throw HearthError(.specChanged, "environment \"\(env)\" was re-applied with another spec (identity \(have.prefix(12))); this task was sent for identity \(want.prefix(12)): apply your spec again to run on it")
            }
            if let b = s.bundle, !checked.contains(b) {
                checked.insert(b)
                guard ctx.code.exists(b) else {
                    throw HearthError(.notFound, "code bundle \(b) is not uploaded; PUT /v1/code/\(b) first")
                }
            }
        }
        // Client ids (a task's, or a batch's ID-0, ID-1, …): a submission
        // whose ids are all known is those tasks (a client's retry); one
        // whose ids are partly known is refused, and none is added.
        if subs.first?.id != nil {
            var added: [TaskRecord] = [], known: [TaskRecord] = []
            for s in subs {
                let t = TaskRecord(id: s.id ?? ctx.tasks.newID(), environment: env, module: s.module, function: s.function,
                                   kwargs: s.kwargs, bundle: s.bundle, timeout: s.timeout)
                if let old = ctx.tasks.addIfAbsent(t) { known.append(old) } else { added.append(t) }
            }
            let pinned = subs[0].pinned
            if known.isEmpty { return try enqueue(added, in: pool, env: env, pinned: pinned, clientID: true) }
            for t in added { ctx.tasks.withdraw(t) }
            let clash = known.first { $0.environment != env } ?? known[0]
            guard added.isEmpty, clash.environment == env else {
                throw HearthError(.conflict, "task id \(clash.id) is already used by a task of environment \"\(clash.environment)\"; give each task an id of its own")
            }
            if pinned { for t in known { t.pin() } }
            return known
        }
        let tasks = subs.map { s in
            TaskRecord(id: ctx.tasks.newID(), environment: env, module: s.module, function: s.function,
                       kwargs: s.kwargs, bundle: s.bundle, timeout: s.timeout)
        }
        for t in tasks { ctx.tasks.add(t) }
        return try enqueue(tasks, in: pool, env: env, pinned: subs.first?.pinned == true)
    }

    /// Journals tasks already in the registry and hands them to their pool;
    /// refused, they end `failed` with the reason, which is thrown.
    private func enqueue(_ tasks: [TaskRecord], in pool: EnvironmentPool, env: String, pinned: Bool,
                         clientID: Bool = false) throws -> [TaskRecord] {
        if pinned { for t in tasks { t.pin() } }
        ctx.tasks.journal.add(tasks.map { (id: $0.id, environment: env) })
        do {
            try pool.submit(tasks)
        } catch {
            for task in tasks {
                task.finish(.failed, error: TaskError(type: "Refused", message: HearthError.wrap(error).message))
                // A client's id stays free for its retry (the task was never accepted).
                if clientID { ctx.tasks.withdraw(task) } else { ctx.tasks.retire(task) }
                if pinned { ctx.tasks.release(task) }
            }
            throw error
        }
        return tasks
    }

    /// Cancels a task: a queued one at once, a running one with SIGINT and,
    /// after a grace period, by killing its replica.
    public func cancel(_ id: String) async throws -> TaskRecord {
        guard let task = ctx.tasks.get(id) else { throw HearthError(.notFound, "task \(id) not found") }
        if task.isFinal { return task }
        let pool = try pool(task.environment)
        _ = await pool.cancel(task)
        return task
    }


    // MARK: the journal of tasks in flight

    /// Tasks a previous daemon accepted and never finished: with replicas
    /// adopted from the keeper they wait for those replicas to report them
    /// (ReplicaAdoption); otherwise, and for environments with no adopted
    /// replica, they are reported as lost. Returns (waiting, lost).
    public func recoverTasks() -> (waiting: Int, lost: [String]) {
        var left = ctx.tasks.journal.recover()
        var waiting: [TaskRecord] = []
        if let adoption = ctx.adoption {
            let envs = adoption.environmentsAdopted
            let (wait, rest) = (left.filter { envs.contains($0.environment) }, left.filter { !envs.contains($0.environment) })
            left = rest
            for (id, env) in wait {
                let t = TaskRecord(id: id, environment: env, module: "?", function: "?", kwargs: Array("{}".utf8), bundle: nil, timeout: nil)
                ctx.tasks.add(t)
                waiting.append(t)
            }
            // Journaled again: a second crash before they end still knows them.
            ctx.tasks.journal.add(wait.map { (id: $0.id, environment: $0.environment) })
            adoption.recovery.add(waiting)
        }
        let lost = left
        for (id, env) in lost {
            let t = TaskRecord(id: id, environment: env, module: "?", function: "?", kwargs: Array("{}".utf8), bundle: nil, timeout: nil)
            t.finish(.lost, error: TaskError(type: "TaskLost", message: "task \(id) was queued or running when hearthd stopped unexpectedly; its result is lost"))
            ctx.tasks.add(t)
            ctx.tasks.retire(t)
        }
        return (waiting.count, lost.map(\.id))
    }

    // MARK: handing over to a new binary (hearthd --upgrade)

    /// Refuses tasks and environment changes (HTTP 503 `upgrading`, which
    /// clients retry) until `reopen`; `why` is the message they get.
    public func close(_ why: String) { closed.withLock { $0 = why } }
    public func reopen() { closed.withLock { $0 = nil } }

    func checkOpen() throws {
        if let why = closed.withLock({ $0 }) { throw HearthError(.upgrading, why) }
    }

    /// Tasks queued in every environment (in no replica yet).
    public var queuedTasks: Int { envs.withLock { $0.values.reduce(0) { $0 + $1.pool.queued } } }

    /// What the exec of an upgrade would lose now (empty: nothing), and
    /// every environment replica, whose channels must be quiescent then.
    public func handover() async -> (blockers: [String], replicas: [HandoverChannel]) {
        let pools = envs.withLock { $0.values.map(\.pool) }
        var blockers: [String] = [], replicas: [HandoverChannel] = []
        for p in pools {
            let (b, r) = await p.handover()
            blockers += b
            replicas += r.map(HandoverChannel.init)
        }
        return (blockers, replicas)
    }

    /// Puts every environment replica with the keeper again (a new keeper).
    public func depositAll() async {
        let pools = envs.withLock { $0.values.map(\.pool) }
        for p in pools { await p.depositAll() }
    }

    public func shutdown(deadline: Duration) async {
        let pools = envs.withLock { $0.values.map(\.pool) }
        await withTaskGroup(of: Void.self) { group in
            for p in pools { group.addTask { await p.drain(deadline: deadline) } }
            if let spares = ctx.spares { group.addTask { await spares.shutdown() } }
        }
    }
}
