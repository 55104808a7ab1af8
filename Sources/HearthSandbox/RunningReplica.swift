import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import Synchronization
import HearthOS

/// A started replica: its init process, cgroup, output pipes and directory.
public final class RunningReplica: Sendable {
    public let name: String
    public let dir: String
    public let pid: Int32
    public let pidfd: Int32
    public let cgroup: ReplicaCgroup
    public let memoryLimit: Int64?
    private let cleanupPaths: [String]
    /// With a user namespace: the host uid (and gid) of root inside.
    public let hostIDBase: UInt32?
    private let onTeardown: (@Sendable () -> Void)?
    /// The overlay's upper and work directories on the host.
    public let writableDirs: [String]
    private let storage: StorageWatch
    private let evictionState = Mutex<Eviction?>(nil)
    /// Where the start time went (dirs, cgroup, plan, then the spawn's own
    /// phases: clone, mounts, pivot_root, caps_seccomp, execve).
    public let startPhases: [StartPhase]
    private let stdoutFD: Int32
    private let stderrFD: Int32
    private let tornDown = Atomic<Bool>(false)
    private let readers = Mutex<[PipeReader]>([])

    init(name: String, dir: String, pid: Int32, pidfd: Int32, cgroup: ReplicaCgroup, stdoutFD: Int32,
         stderrFD: Int32, memoryLimit: Int64?, startPhases: [StartPhase], cleanupPaths: [String],
         writableDirs: [String], storage: StorageWatch,
         hostIDBase: UInt32? = nil, onTeardown: (@Sendable () -> Void)? = nil) {
        self.cleanupPaths = cleanupPaths
        self.hostIDBase = hostIDBase
        self.onTeardown = onTeardown
        self.writableDirs = writableDirs
        self.storage = storage
        self.name = name; self.dir = dir; self.pid = pid; self.pidfd = pidfd; self.cgroup = cgroup
        self.stdoutFD = stdoutFD; self.stderrFD = stderrFD; self.memoryLimit = memoryLimit
        self.startPhases = startPhases
        watchExit()
    }

    /// One watch on the pidfd for the replica's whole life: the exit is
    /// reaped once, and `wait()` callers share it. (Watching per caller let
    /// a second watch on the same fd replace the first and strand its
    /// waiter; a pidfd closed while still watched left a stale handler for
    /// the next fd with that number.)
    private func watchExit() {
        ProcessReaper.watch(pidfd: pidfd) { [self] status in exited(status) }
    }

    /// What a keeper's record says of this replica, for a later daemon to
    /// adopt it (`SandboxRuntime.adopt`).
    public var facts: ReplicaFacts {
        ReplicaFacts(name: name, dir: dir, pid: pid, memoryLimit: memoryLimit, cleanupPaths: cleanupPaths,
                     writableDirs: writableDirs, hostIDBase: hostIDBase)
    }

    /// The daemon's ends of the output pipes (the keeper holds copies).
    public var outputFDs: [Int32] { [stdoutFD, stderrFD] }

    /// Records the exit (first report wins) and wakes every waiter.
    private func exited(_ status: ExitStatus) {
        let waiters = exitWait.withLock { st -> [CheckedContinuation<ExitStatus, Never>] in
            switch st {
            case .done: return []
            case .waiting(let list):
                st = .done(status)
                return list
            case .idle:
                st = .done(status)
                return []
            }
        }
        for w in waiters { w.resume(returning: status) }
    }

    private var hasExited: Bool {
        exitWait.withLock { if case .done = $0 { return true } else { return false } }
    }

    /// stdout and stderr as they arrive; finishes when both reach EOF.
    public func output() -> AsyncStream<OutputChunk> {
        AsyncStream { continuation in
            startOutput { chunk in
                if let chunk { continuation.yield(chunk) } else { continuation.finish() }
            }
        }
    }

    /// Hands stdout and stderr chunks to `sink` on the event thread as they
    /// arrive, then nil once both pipes reached EOF. Call once.
    public func startOutput(_ sink: @escaping @Sendable (OutputChunk?) -> Void) {
        let open = Atomic<Int>(2)
        let finished: @Sendable () -> Void = {
            if open.subtract(1, ordering: .relaxed).newValue == 0 { sink(nil) }
        }
        var readers: [PipeReader] = []
        for (fd, isErr) in [(stdoutFD, false), (stderrFD, true)] {
            let reader = PipeReader(fd: fd) { bytes in
                if let bytes { sink(isErr ? .stderr(bytes) : .stdout(bytes)) } else { finished() }
            }
            readers.append(reader)
            do { try reader.start() } catch { finished() }
        }
        self.readers.withLock { $0 = readers }
    }

    /// Reads whatever output is already in the pipes and hands it to the
    /// sink now, so a task's last lines land before its result. Any thread:
    /// pipe reads take one lock (see PipeReader.drain).
    public func drainOutput() {
        for r in readers.withLock({ $0 }) { r.drain() }
    }

    /// The replica's exit, for any number of callers (the pool watches for
    /// exits while a failed task's path also waits).
    public func wait() async -> ExitStatus {
        await withCheckedContinuation { (cont: CheckedContinuation<ExitStatus, Never>) in
            let done: ExitStatus? = exitWait.withLock { st in
                switch st {
                case .done(let status): return status
                case .idle:
                    st = .waiting([cont])
                    return nil
                case .waiting(var list):
                    list.append(cont)
                    st = .waiting(list)
                    return nil
                }
            }
            if let done { cont.resume(returning: done) }
        }
    }

    enum ExitWait {
        case idle
        case waiting([CheckedContinuation<ExitStatus, Never>])
        case done(ExitStatus)
    }
    let exitWait = Mutex<ExitWait>(.idle)

    public func signal(_ sig: Int32) {
        _ = Pidfd.signal(pidfd, sig)
    }

    /// Measures the writable layer against `limit` from now on (at start, or
    /// when an environment adopts a spare); over it, the replica is killed
    /// and `eviction` says why.
    public func limitEphemeralStorage(_ limit: Int64) {
        storage.watch(name: name, roots: writableDirs, limit: limit) { [weak self] eviction in
            guard let self else { return }
            self.evictionState.withLock { $0 = eviction }
            self.cgroup.killAll()
        }
    }

    /// Set when the daemon killed the replica for writing more than its
    /// ephemeral_storage limit.
    public var eviction: Eviction? { evictionState.withLock { $0 } }

    /// Kills everything left in the cgroup, removes it and the replica
    /// directory. Idempotent; blocking.
    public func teardown() {
        guard !tornDown.exchange(true, ordering: .relaxed) else { return }
        storage.unwatch(name: name)
        cgroup.killAll()
        if !hasExited {
            // Killed just now: reap it here (blocking is allowed), so the
            // pidfd is never closed under its watch or its waiters.
            var code: Int32 = 0, status: Int32 = 0
            let rc = Pidfd.wait(pidfd, nohang: false, code: &code, status: &status)
            ReplicaEvents.unwatch(pidfd)
            exited(rc == 0 ? ProcessReaper.exitStatus(code: code, status: status) : .signaled(SIGKILL))
        }
        try? cgroup.remove()
        close(pidfd)
        try? FS.removeTree(path: dir)
        for p in cleanupPaths { try? FS.removeTree(path: p) }
        // Its id range is free again only once nothing of it runs or remains.
        onTeardown?()
    }
}

/// The host-side facts of a running replica, as a keeper keeps them.
public struct ReplicaFacts: Codable, Sendable, Equatable {
    public var name: String
    public var dir: String
    /// hearth-init's host pid.
    public var pid: Int32
    public var memoryLimit: Int64?
    public var cleanupPaths: [String]
    public var writableDirs: [String]
    public var hostIDBase: UInt32?
}
