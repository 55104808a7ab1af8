import Foundation
import Glibc
import HearthCore
import Synchronization

/// What the spawn path needs to put the child into the replica's cgroup:
/// on v2 an O_DIRECTORY fd of the leaf for CLONE_INTO_CGROUP, on v1 an
/// O_WRONLY fd of each hierarchy's cgroup.procs, into which the parent
/// writes the child's pid before releasing it. All fds are O_CLOEXEC.
///
/// The fds stay open until `close()` — deliberately not on deinit, so that
/// an fd copied into a SpawnPlan cannot be closed (and its number reused)
/// behind the spawn's back. Call `close()` once the spawn has returned.
public final class CgroupSpawnHandle: Sendable {
    /// v2: the leaf directory fd; v1: -1.
    public let cgroupFD: Int32
    /// v1: one cgroup.procs fd per hierarchy; v2: empty.
    public let procsFDs: [Int32]
    private let closed = Mutex(false)

    init(cgroupFD: Int32, procsFDs: [Int32]) {
        self.cgroupFD = cgroupFD
        self.procsFDs = procsFDs
    }

    /// Closes the fds; later calls do nothing.
    public func close() {
        let first = closed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        if cgroupFD >= 0 { _ = Glibc.close(cgroupFD) }
        for fd in procsFDs { _ = Glibc.close(fd) }
    }
}

/// Resource usage of a replica's cgroup, best effort.
public struct CgroupUsage: Sendable, Equatable {
    /// CPU time of all its processes; 0 where the kernel does not say
    /// (v1 without a cpuacct hierarchy).
    public var cpuNanos: UInt64
    public var memoryBytes: UInt64
    /// High-water mark of memory use, where the kernel keeps one
    /// (v2 memory.peak, kernel ≥ 5.19; v1 memory.max_usage_in_bytes).
    public var memoryPeak: UInt64?
}

/// One replica's cgroup: a leaf on v2, one directory per hierarchy on v1.
/// Made by `CgroupManager.create`; all methods do blocking file I/O and
/// belong off the cooperative pool.
public final class ReplicaCgroup: Sendable, CustomStringConvertible {
    public let name: String
    public let version: CgroupVersion
    /// The leaf directories (v2: one; v1: cpu, memory, pids, devices and,
    /// when mounted on its own, cpuacct), for messages and inspection.
    public let paths: [String]
    /// Controllers per entry of `paths` (v1); empty lists on v2.
    let controllers: [[String]]
    /// The subtree roots (parallel to `paths`) that `remove()` prunes up to.
    let subtreeRoots: [String]
    /// How long writing the device allow-list took (a start phase of its own).
    public let deviceSetup = Mutex<Duration>(.zero)

    init(name: String, version: CgroupVersion, paths: [String], controllers: [[String]], subtreeRoots: [String]) {
        self.name = name
        self.version = version
        self.paths = paths
        self.controllers = controllers
        self.subtreeRoots = subtreeRoots
    }

    public var description: String { "cgroup \(paths.joined(separator: ", "))" }

    /// The v1 directory holding `controller`, or the v2 leaf.
    func directory(for controller: String) -> String? {
        if version == .v2 { return paths.first }
        return zip(paths, controllers).first(where: { $0.1.contains(controller) })?.0
    }

    /// Opens what the spawn path needs to place the child here.
    public func openForSpawn() throws -> CgroupSpawnHandle {
        switch version {
        case .v2:
            guard let leaf = paths.first else { throw HearthError(.internal, "cgroup \(name): no leaf directory") }
            let fd = open(leaf, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw SystemError.current("open cgroup", leaf) }
            return CgroupSpawnHandle(cgroupFD: fd, procsFDs: [])
        case .v1:
            var fds = [Int32]()
            for dir in paths {
                let file = dir + "/cgroup.procs"
                let fd = open(file, O_WRONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    let err = SystemError.current("open cgroup", file)
                    for fd in fds { _ = Glibc.close(fd) }
                    throw err
                }
                fds.append(fd)
            }
            return CgroupSpawnHandle(cgroupFD: -1, procsFDs: fds)
        }
    }

    /// Moves an already running process (all its threads) into this cgroup.
    /// The spawn path places replicas itself; this is for other children.
    public func add(pid: Int32) throws {
        for dir in paths { try CgroupFiles.write(dir + "/cgroup.procs", "\(pid)") }
    }

    /// Whether the kernel's OOM killer has killed a process in this cgroup.
    public func oomKilled() -> Bool {
        switch version {
        case .v2:
            guard let leaf = paths.first, let text = CgroupFiles.readIfPresent(leaf + "/memory.events") else { return false }
            return (CgroupFiles.keyedValue(text, "oom_kill") ?? 0) > 0
                || (CgroupFiles.keyedValue(text, "oom_group_kill") ?? 0) > 0
        case .v1:
            guard let dir = directory(for: "memory"),
                  let text = CgroupFiles.readIfPresent(dir + "/memory.oom_control") else { return false }
            return (CgroupFiles.keyedValue(text, "oom_kill") ?? 0) > 0
        }
    }

    /// The processes in this cgroup (every hierarchy on v1), ascending.
    public func pids() -> [Int32] {
        Array(Set(paths.flatMap { CgroupFiles.procs($0) })).sorted()
    }

    /// Kills every process in the cgroup and waits (bounded) until it is
    /// empty: cgroup.kill on v2, a SIGKILL loop over cgroup.procs on v1.
    public func killAll() {
        switch version {
        case .v2:
            if let leaf = paths.first { CgroupTeardown.killV2(leaf) }
        case .v1:
            CgroupTeardown.killLoop(paths)
        }
    }

    /// Removes the cgroup directories (retrying briefly while the last
    /// processes exit), then parents a nested name left empty. Call after
    /// `killAll()`; a cgroup that still has processes fails with EBUSY.
    /// Removing an already removed cgroup is not an error.
    public func remove() throws {
        var firstError: (any Error)?
        for (dir, root) in zip(paths, subtreeRoots) {
            do {
                try CgroupFiles.rmdir(dir)
                CgroupTeardown.pruneParents(of: dir, stop: root)
            } catch {
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
    }

    /// CPU time and memory of the cgroup; zeros where unreadable.
    public func usage() -> CgroupUsage {
        var usage = CgroupUsage(cpuNanos: 0, memoryBytes: 0, memoryPeak: nil)
        func number(_ path: String) -> UInt64? {
            CgroupFiles.readIfPresent(path).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        switch version {
        case .v2:
            guard let leaf = paths.first else { return usage }
            if let stat = CgroupFiles.readIfPresent(leaf + "/cpu.stat"),
               let usec = CgroupFiles.keyedValue(stat, "usage_usec") {
                usage.cpuNanos = usec &* 1000
            }
            usage.memoryBytes = number(leaf + "/memory.current") ?? 0
            usage.memoryPeak = number(leaf + "/memory.peak")
        case .v1:
            if let dir = directory(for: "cpuacct") { usage.cpuNanos = number(dir + "/cpuacct.usage") ?? 0 }
            if let dir = directory(for: "memory") {
                usage.memoryBytes = number(dir + "/memory.usage_in_bytes") ?? 0
                usage.memoryPeak = number(dir + "/memory.max_usage_in_bytes")
            }
        }
        return usage
    }
}
