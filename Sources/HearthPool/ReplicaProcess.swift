import HearthSandbox

/// What a warm replica needs of the process under its worker: its output,
/// its exit, and ways to stop it. A `RunningReplica` (a real sandbox) in the
/// daemon; the pool's unit tests give a fake with an in-process worker.
protocol ReplicaProcess: Sendable {
    /// Where the start time went (for a cold task's phases).
    var startPhases: [StartPhase] { get }
    /// Set when the replica was killed for its writable layer's size.
    var eviction: Eviction? { get }
    /// stdout and stderr chunks as they arrive, then nil at EOF of both. Once.
    func startOutput(_ sink: @escaping @Sendable (OutputChunk?) -> Void)
    /// Hands on what output is already there (before a result is delivered).
    func drainOutput()
    func signal(_ sig: Int32)
    /// Kills every process of the replica (its cgroup). Blocking, quick.
    func killAll()
    /// The last exit was the kernel's OOM kill.
    func oomKilled() -> Bool
    /// The replica's exit, for any number of callers.
    func wait() async -> ExitStatus
    /// Kills what is left and removes the replica's cgroup and files. Blocking; idempotent.
    func teardown()
    /// An adopting environment's limits, written over the spare's.
    func applyLimits(_ limits: CgroupLimits, ephemeralStorage: Int64?, cgroups: CgroupManager) throws
}

extension RunningReplica: ReplicaProcess {
    func killAll() { cgroup.killAll() }
    func oomKilled() -> Bool { cgroup.oomKilled() }
    func applyLimits(_ limits: CgroupLimits, ephemeralStorage: Int64?, cgroups: CgroupManager) throws {
        try cgroups.apply(limits, to: cgroup)
        if let ephemeralStorage { limitEphemeralStorage(ephemeralStorage) }
    }
}
