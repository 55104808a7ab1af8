import Foundation
import Glibc
import HearthCore
import HearthSandbox
import Logging
import Synchronization

/// What the keeper keeps of an environment replica, beside its fds
/// (pidfd, fd 3's write end, fd 4's read end, stdout, stderr): enough for
/// the next daemon to adopt it. A record of another version is not read:
/// that replica is torn down.
struct KeptReplicaRecord: Codable, Sendable {
    static let currentVersion = 1
    var version: Int
    var environment: String
    var identity: String
    var replica: ReplicaFacts
    var codeView: String
    var maxFrame: Int
    var concurrency: Int
    var tasksRun: Int
    var workerPid: Int32?
    var python: String?
    var ephemeralStorage: Int64?
    /// The worker package version it mounts (kept while it runs).
    var workerDir: String
}

/// Replicas outliving the daemon: what is put with the keeper while
/// replicas run, and, at start, the replicas a previous daemon left (kept
/// by the keeper) waiting for their environments, with the tasks it left
/// in flight.
public final class ReplicaAdoption: Sendable {
    let keeper: ReplicaKeeper
    let recovery: TaskRecovery
    private let logger: Logger

    struct Orphan: Sendable {
        let record: KeptReplicaRecord
        let running: RunningReplica
        let toWorker: Int32
        let fromWorker: Int32
    }
    private let orphans = Mutex<[Orphan]>([])
    private let workerDir = Mutex("")
    /// Worker package versions adopted replicas mount.
    public private(set) var workerDirs: Set<String> {
        get { workerDirsKept.withLock { $0 } }
        set { workerDirsKept.withLock { $0 = newValue } }
    }
    private let workerDirsKept = Mutex<Set<String>>([])

    /// The worker package this daemon's replicas mount (for their records).
    public func setWorkerDir(_ dir: String) { workerDir.withLock { $0 = dir } }

    public init(keeper: ReplicaKeeper, tasks: TaskRegistry, logger: Logger) {
        self.keeper = keeper
        self.logger = logger
        recovery = TaskRecovery(tasks: tasks, logger: logger)
    }

    /// Checks what the keeper kept (record, process, cgroup, directory)
    /// and takes the replicas that pass; the rest are dropped from the
    /// keeper and their fds closed (stale-state cleanup then removes
    /// them). Returns the names taken: cleanup spares those.
    public func take(_ kept: [ReplicaKeeper.Kept], runtime: SandboxRuntime) -> Set<String> {
        var taken: Set<String> = []
        var list: [Orphan] = []
        for k in kept {
            func reject(_ why: String) {
                logger.warning("replica \(k.name) (kept through the restart) not adopted: \(why); it is removed")
                keeper.drop(name: k.name)
                for fd in k.fds { close(fd) }
            }
            guard k.fds.count == 5 else { reject("the keeper returned \(k.fds.count) fds, not 5"); continue }
            guard let record = try? JSONDecoder().decode(KeptReplicaRecord.self, from: Data(k.record)) else {
                reject("its record is not one this hearthd reads"); continue
            }
            guard record.version == KeptReplicaRecord.currentVersion else {
                reject("its record is version \(record.version), this hearthd reads \(KeptReplicaRecord.currentVersion)"); continue
            }
            guard record.replica.name == k.name else { reject("its record names \(record.replica.name)"); continue }
            do {
                let running = try runtime.adopt(record.replica, pidfd: k.fds[0], stdoutFD: k.fds[3], stderrFD: k.fds[4],
                                                ephemeralStorage: record.ephemeralStorage)
                list.append(Orphan(record: record, running: running, toWorker: k.fds[1], fromWorker: k.fds[2]))
                taken.insert(k.name)
            } catch {
                reject(HearthError.wrap(error).message)
            }
        }
        orphans.withLock { $0 = list }
        workerDirs = Set(list.map(\.record.workerDir))
        recovery.expect(list.count)
        return taken
    }

    var adoptedCount: Int { orphans.withLock { $0.count } }
    /// Environments with an adopted replica (their tasks in flight may be in one).
    var environmentsAdopted: Set<String> { orphans.withLock { Set($0.map(\.record.environment)) } }

    /// An environment's pool takes its replicas: those of its name and identity.
    func claim(environment: String, identity: String) -> [Orphan] {
        orphans.withLock { list in
            let mine = list.filter { $0.record.environment == environment && $0.record.identity == identity }
            list.removeAll { $0.record.environment == environment && $0.record.identity == identity }
            return mine
        }
    }

    /// After the environments were restored: replicas no environment took
    /// (it was removed, or its spec changed) are torn down.
    public func finishRestore() async {
        let left = orphans.withLock { list in
            defer { list = [] }
            return list
        }
        for o in left {
            logger.info("replica \(o.running.name): environment \(o.record.environment) with its identity is gone; removed")
            keeper.drop(name: o.running.name)
            close(o.toWorker)
            close(o.fromWorker)
            _ = try? await Blocking.run { o.running.teardown() }
            recovery.settled()
        }
        recovery.restoreFinished()
    }

    /// Puts a replica with the keeper (environment replicas only; GPUs and
    /// network egress are held by this daemon and die with it).
    /// Whether an environment's replicas are kept: not those holding GPUs
    /// (their devices are allocated anew at start) nor those with egress
    /// (their proxy lives in the daemon).
    static func keeps(_ config: PoolConfig) -> Bool { config.gpus == 0 && config.network != .egress }

    func deposit(_ r: WarmReplica, config: PoolConfig) {
        guard Self.keeps(config), let running = r.running as? RunningReplica,
              let channel = r.channelFDs else { return }
        let ready = r.readyFacts
        let record = KeptReplicaRecord(version: KeptReplicaRecord.currentVersion, environment: config.name,
                                       identity: config.identity, replica: running.facts, codeView: r.codeView,
                                       maxFrame: r.maxFrame, concurrency: r.concurrency, tasksRun: r.tasksRun,
                                       workerPid: ready.pid, python: ready.python,
                                       ephemeralStorage: config.ephemeralStorage,
                                       workerDir: workerDir.withLock { $0 })
        guard let data = try? JSONEncoder().encode(record) else { return }
        if !keeper.put(name: r.name, record: Array(data), fds: [running.pidfd] + channel + running.outputFDs) {
            logger.warning("replica \(r.name): the keeper did not take it; it will not outlive this hearthd")
        }
    }

    func withdraw(_ name: String) { keeper.drop(name: name) }
}

/// The tasks a previous daemon left in flight while its replicas were
/// kept: each waits for an adopted replica to report it (its result, its
/// log, or its id among those the worker still runs). Once every adopted
/// replica has answered (or died), the tasks nobody reported are `lost`.
final class TaskRecovery: Sendable {
    private let tasks: TaskRegistry
    private let logger: Logger
    private struct State {
        var pending: [String: TaskRecord] = [:]
        var outstanding = 0
        var restored = false
        var swept = false
    }
    private let state = Mutex(State())

    init(tasks: TaskRegistry, logger: Logger) {
        self.tasks = tasks
        self.logger = logger
    }

    func expect(_ replicas: Int) { state.withLock { $0.outstanding += replicas } }

    func add(_ list: [TaskRecord]) {
        state.withLock { s in for t in list { s.pending[t.id] = t } }
    }

    /// The task of `id` the previous daemon sent, once.
    func claim(_ id: String) -> TaskRecord? {
        state.withLock { $0.pending.removeValue(forKey: id) }
    }

    /// An adopted replica answered, died, or was removed.
    func settled() {
        state.withLock { $0.outstanding -= 1 }
        sweepIfDone()
    }

    func restoreFinished() {
        state.withLock { $0.restored = true }
        sweepIfDone()
    }

    func lose(_ task: TaskRecord, why: String) {
        task.finish(.lost, error: TaskError(type: "TaskLost", message: "task \(task.id): \(why)"))
        tasks.retire(task)
    }

    private func sweepIfDone() {
        let left: [TaskRecord] = state.withLock { s in
            guard s.restored, s.outstanding <= 0, !s.swept else { return [] }
            s.swept = true
            defer { s.pending = [:] }
            return Array(s.pending.values)
        }
        for t in left {
            lose(t, why: "it was queued or running when hearthd stopped unexpectedly, and no replica that outlived the restart had it; its result is lost")
        }
        if !left.isEmpty { logger.warning("\(left.count) task(s) in flight at the restart were not found in any adopted replica; reported as lost") }
    }
}
