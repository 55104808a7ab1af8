import Foundation
import Glibc
import HearthCore
import Synchronization

/// Hearth's cgroup subtree under the daemon's own cgroup: `<own>/<subtree>`
/// on v2, `<mount>/<own>/<subtree>` in each v1 hierarchy (cpu, memory,
/// pids, devices, and cpuacct when mounted). Never touches the host's mounts or
/// anything outside its own cgroup. Blocking file I/O: call off the
/// cooperative pool.
public final class CgroupManager: Sendable {
    public let version: CgroupVersion
    /// Name of the subtree directory; several daemons (or test runs) on one
    /// host keep apart by using different names.
    public let subtree: String
    /// Own cgroup per hierarchy: the base under which the subtree lives.
    let hierarchies: [CgroupHierarchy]

    /// v2 controllers Hearth enables for replicas.
    static let v2Controllers = ["cpu", "memory", "pids"]

    /// Detects the cgroup layout from /proc/self/mountinfo and
    /// /proc/self/cgroup; creates nothing yet (see `prepare()`).
    public convenience init(subtree: String = "hearth") throws {
        try self.init(subtree: subtree, layout: CgroupDiscovery.detect())
    }

    init(subtree: String, layout: CgroupLayout) throws {
        try Self.validate(component: subtree, field: "cgroup subtree")
        self.subtree = subtree
        self.version = layout.version
        var hierarchies = layout.hierarchies
        // A daemon that prepare() already moved into its leaf (or one
        // re-executed in place) sees the leaf as its own cgroup; the base is
        // its parent, else the subtree would nest inside the leaf.
        if version == .v2, var h = hierarchies.first, h.directory.hasSuffix("/" + Self.daemonLeafName(subtree)) {
            h.directory = (h.directory as NSString).deletingLastPathComponent
            h.cgroupPath = (h.cgroupPath as NSString).deletingLastPathComponent
            hierarchies[0] = h
        }
        self.hierarchies = hierarchies
    }

    private static func daemonLeafName(_ subtree: String) -> String { subtree + "-daemon" }

    /// A join warm-up is under way (see `prewarmJoin`).
    private let warming = Mutex(false)
    var isWarmingUp: Bool { warming.withLock { $0 } }
    private static let warmQueue = DispatchQueue(label: "hearth.cgroup-join-warmup")

    /// cgroup v1 only: starts, on a thread of its own, the wait that the
    /// next replica's move into its cgroups would otherwise start. Every v1
    /// `cgroup.procs` write takes one machine-wide lock
    /// (`cgroup_threadgroup_rwsem`) whose write side waits for an RCU grace
    /// period (5–20 ms on the build VM) unless a writer held it within the
    /// last one. Writing the daemon's pid into the cgroup it already sits
    /// in moves nothing but starts that grace period now, so a replica whose
    /// spawn is a few milliseconds away shares it instead of waiting a whole
    /// one after its clone. Best effort: a failed write only loses the head
    /// start. A no-op on v2, which places children with `CLONE_INTO_CGROUP`.
    public func prewarmJoin() {
        guard version == .v1, let own = hierarchies.first else { return }
        let start = warming.withLock { busy -> Bool in
            if busy { return false }
            busy = true
            return true
        }
        guard start else { return }
        let path = own.directory + "/cgroup.procs"
        Self.warmQueue.async { [self] in
            let fd = open(path, O_WRONLY | O_CLOEXEC)
            if fd >= 0 {
                var pid = "\(getpid())"
                _ = pid.withUTF8 { write(fd, $0.baseAddress, $0.count) }
                close(fd)
            }
            warming.withLock { $0 = false }
        }
    }

    /// The subtree directory in each hierarchy.
    public var subtreePaths: [String] { hierarchies.map { $0.directory + "/" + subtree } }

    /// Creates the subtree, ready for replicas.
    ///
    /// v2: a cgroup with processes may not enable controllers for its
    /// children (the "no internal processes" rule), so unless the daemon
    /// sits in the root cgroup, every process of its cgroup first moves
    /// into the leaf `<own>/<subtree>-daemon`. Then +cpu +memory +pids go
    /// into `<own>/cgroup.subtree_control` and into `<own>/<subtree>`'s.
    /// v1: creates `<subtree>` in each hierarchy. Idempotent.
    public func prepare() throws {
        switch version {
        case .v2: try prepareV2()
        case .v1:
            for dir in subtreePaths { try CgroupFiles.mkdir(dir) }
        }
    }

    private func prepareV2() throws {
        guard let base = hierarchies.first?.directory else { return }
        let available = try words(base + "/cgroup.controllers")
        for controller in Self.v2Controllers where !available.contains(controller) {
            throw HearthError(.unavailable,
                "cgroup v2: controller \"\(controller)\" is not available in \(base)/cgroup.controllers "
                + "(it lists: \(available.isEmpty ? "nothing" : available.sorted().joined(separator: " "))); "
                + "the cpu, memory and pids controllers must be delegated to hearthd's cgroup")
        }
        let enabled = try words(base + "/cgroup.subtree_control")
        let missing = Self.v2Controllers.filter { !enabled.contains($0) }
        if !missing.isEmpty {
            // cgroup.type exists on every cgroup but the root, and the root
            // is exempt from the no-internal-processes rule.
            let isRoot = !CgroupFiles.exists(base + "/cgroup.type")
            var attempt = 0
            while true {
                attempt += 1
                if !isRoot { try moveProcessesToDaemonLeaf(base) }
                do {
                    for controller in missing { try CgroupFiles.write(base + "/cgroup.subtree_control", "+" + controller) }
                    break
                } catch let error as SystemError where error.errno == EBUSY && !isRoot && attempt < 3 {
                    continue  // a process appeared in base (a fork) after the move: move again
                }
            }
        }
        let root = base + "/" + subtree
        try CgroupFiles.mkdir(root)
        try enableControllers(in: root)
    }

    /// Moves every process of `base` (the daemon and whatever its service
    /// started alongside) into `<base>/<subtree>-daemon`. Writing a pid to
    /// cgroup.procs moves all of its threads.
    private func moveProcessesToDaemonLeaf(_ base: String) throws {
        let leaf = base + "/" + Self.daemonLeafName(subtree)
        try CgroupFiles.mkdir(leaf)
        for pid in CgroupFiles.procs(base) {
            do {
                try CgroupFiles.write(leaf + "/cgroup.procs", "\(pid)")
            } catch let error as SystemError where error.errno == ESRCH {
                continue  // exited meanwhile
            }
        }
    }

    private func enableControllers(in dir: String) throws {
        let enabled = try words(dir + "/cgroup.subtree_control")
        for controller in Self.v2Controllers where !enabled.contains(controller) {
            try CgroupFiles.write(dir + "/cgroup.subtree_control", "+" + controller)
        }
    }

    private func words(_ path: String) throws -> Set<String> {
        Set(try CgroupFiles.read(path).split(whereSeparator: { $0 == " " || $0.isNewline }).map(String.init))
    }

    /// Kills every process in, and removes every cgroup under, the subtree:
    /// what a crashed predecessor left behind. The subtree directory itself
    /// stays. A missing subtree is not an error.
    public func cleanupStale() throws {
        let roots = subtreePaths.filter { CgroupFiles.exists($0) }
        guard !roots.isEmpty else { return }
        switch version {
        case .v2:
            for root in roots { CgroupTeardown.killV2(root) }
        case .v1:
            CgroupTeardown.killLoop(roots.flatMap { [$0] + CgroupTeardown.descendants(of: $0) })
        }
        var firstError: (any Error)?
        for root in roots {
            do { try CgroupTeardown.removeDescendants(of: root) } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
    }

    /// `cleanupStale()`, then removes the subtree directories too (daemon
    /// shutdown, tests). The v2 daemon leaf stays: the daemon is in it.
    public func removeSubtree() throws {
        try cleanupStale()
        for dir in subtreePaths { try CgroupFiles.rmdir(dir) }
    }

    /// Creates the replica cgroup `<subtree>/<name>` with `limits` applied
    /// and only the `devices` allowed (see `restrictDevices`).
    /// `name` may nest (`env/replica`): parents are created as needed and
    /// pruned again by `ReplicaCgroup.remove()`. An existing cgroup of that
    /// name is a conflict (it may be a live replica). On failure nothing
    /// created here is left behind.
    public func create(name: String, limits: CgroupLimits,
                       devices: [DeviceRule] = DeviceRule.standard) throws -> ReplicaCgroup {
        let components = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        for component in components { try Self.validate(component: component, field: "cgroup name \"\(name)\"") }
        for root in subtreePaths where !CgroupFiles.exists(root) {
            throw HearthError(.unavailable, "cgroup subtree \(root) does not exist; CgroupManager.prepare() creates it")
        }

        var created = [String]()
        func rollback() {
            for dir in created.reversed() {
                _ = Glibc.rmdir(dir)
                if let root = subtreePaths.first(where: { dir.hasPrefix($0 + "/") }) {
                    CgroupTeardown.pruneParents(of: dir, stop: root)
                }
            }
        }
        do {
            for root in subtreePaths { created.append(try makeLeaf(root: root, components: components)) }
            let replica = ReplicaCgroup(name: name, version: version, paths: created,
                                        controllers: hierarchies.map(\.controllers), subtreeRoots: subtreePaths)
            try apply(limits, to: replica)
            let d0 = ContinuousClock.now
            try restrictDevices(replica, to: devices)
            let took = ContinuousClock.now - d0
            replica.deviceSetup.withLock { $0 = took }
            return replica
        } catch {
            rollback()
            throw error
        }
    }

    /// The cgroup `create(name:)` made for a replica a previous daemon
    /// started (it is being adopted), when it still exists in every
    /// hierarchy and holds `pid`.
    public func existing(name: String, pid: Int32) -> ReplicaCgroup? {
        let components = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        for component in components {
            guard (try? Self.validate(component: component, field: "cgroup name")) != nil else { return nil }
        }
        let paths = subtreePaths.map { $0 + "/" + name }
        guard paths.allSatisfy({ CgroupFiles.exists($0) }) else { return nil }
        let replica = ReplicaCgroup(name: name, version: version, paths: paths,
                                    controllers: hierarchies.map(\.controllers), subtreeRoots: subtreePaths)
        guard replica.pids().contains(pid) else { return nil }
        return replica
    }

    /// Like `cleanupStale()`, but the replica cgroups named in `keeping`
    /// (adopted replicas) and their processes stay.
    public func cleanupStale(keeping: Set<String>) throws {
        guard !keeping.isEmpty else { return try cleanupStale() }
        var firstError: (any Error)?
        let kept = Set(keeping.map { String($0.split(separator: "/").first ?? "") })
        for root in subtreePaths where CgroupFiles.exists(root) {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
            for entry in entries where !kept.contains(entry) {
                let dir = root + "/" + entry
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else { continue }
                let all = [dir] + CgroupTeardown.descendants(of: dir)
                switch version {
                case .v2: CgroupTeardown.killV2(dir)
                case .v1: CgroupTeardown.killLoop(all)
                }
                do {
                    try CgroupTeardown.removeDescendants(of: dir)
                    try CgroupFiles.rmdir(dir)
                } catch { firstError = firstError ?? error }
            }
        }
        if let firstError { throw firstError }
    }

    /// mkdir of the parents (with controllers enabled on v2) and the leaf.
    /// A concurrent `remove()` of a sibling may prune a parent between its
    /// mkdir and the leaf's (ENOENT from mkdir); the chain is then made
    /// again. On failure, parents made here are removed again.
    private func makeLeaf(root: String, components: [String]) throws -> String {
        var attempt = 0
        while true {
            attempt += 1
            var made = [String]()
            var mkdirFailed = false
            func mkdir(_ dir: String) throws -> Bool {
                do {
                    let new = try CgroupFiles.mkdir(dir)
                    if new { made.append(dir) }
                    return new
                } catch {
                    mkdirFailed = true
                    throw error
                }
            }
            do {
                var dir = root
                for parent in components.dropLast() {
                    dir += "/" + parent
                    _ = try mkdir(dir)
                    if version == .v2 { try enableControllers(in: dir) }
                }
                let leaf = dir + "/" + (components.last ?? "")
                guard try mkdir(leaf) else { throw HearthError(.conflict, "cgroup \(leaf) already exists") }
                return leaf
            } catch {
                for dir in made.reversed() { _ = Glibc.rmdir(dir) }
                if let e = error as? SystemError, e.errno == ENOENT, mkdirFailed, components.count > 1, attempt < 5 {
                    continue
                }
                throw error
            }
        }
    }

    /// Writes `limits` into an existing replica cgroup: at creation, and
    /// when an environment adopts a pre-started spare, whose cgroup already
    /// has the default memory limit: the environment's may be higher or
    /// lower. On v1 the kernel keeps memory.memsw.limit_in_bytes ≥
    /// memory.limit_in_bytes at every write, so a raise writes memsw first
    /// and a cut writes it last. (v2's memory.max and memory.swap.max are
    /// independent; a memory.max under the current use makes the kernel
    /// reclaim, then OOM-kill, rather than refuse.)
    public func apply(_ limits: CgroupLimits, to replica: ReplicaCgroup) throws {
        var raising = false
        if version == .v1, let memory = limits.memoryLimit, let dir = replica.directory(for: "memory"),
           let text = CgroupFiles.readIfPresent(dir + "/memory.limit_in_bytes"),
           let current = Int64(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            raising = memory > current
        }
        for setting in limits.files(for: version, raisingMemory: raising) {
            guard let dir = replica.directory(for: setting.controller) else {
                if setting.optional { continue }
                throw HearthError(.unavailable, "cgroup v1: no \(setting.controller) hierarchy for \(setting.file)")
            }
            let file = dir + "/" + setting.file
            if setting.optional && !CgroupFiles.exists(file) { continue }
            try CgroupFiles.write(file, setting.value)
        }
    }

    /// Allows the replica only `devices` (default deny), before any process
    /// is placed in it. v1: `a` into devices.deny, then each rule into
    /// devices.allow (one rule per write; a fresh leaf has no children, so
    /// the kernel accepts the deny-all). v2: the rules as a BPF device
    /// program attached to the leaf; the child enters with
    /// CLONE_INTO_CGROUP, so it is never without it.
    func restrictDevices(_ replica: ReplicaCgroup, to devices: [DeviceRule]) throws {
        switch version {
        case .v2:
            guard let leaf = replica.paths.first else { throw HearthError(.internal, "cgroup \(replica.name): no leaf directory") }
            try DeviceFilterLoader.shared.attach(devices, toCgroup: leaf)
        case .v1:
            guard let dir = replica.directory(for: "devices") else {
                throw HearthError(.unavailable, "cgroup v1: no devices hierarchy for replica \(replica.name)")
            }
            try CgroupFiles.write(dir + "/devices.deny", "a")
            let file = dir + "/devices.allow"
            let fd = open(file, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw SystemError.current("write cgroup", file) }
            defer { close(fd) }
            for rule in devices { try CgroupFiles.write(fd: fd, rule.description, path: file) }
        }
    }

    /// One path component: letters, digits, `_`, `-`, `.`; not `.`/`..`; at
    /// most 128 bytes. Keeps names inside the subtree, and free of what
    /// /proc/<pid>/cgroup and mountinfo would have to escape.
    static func validate(component: String, field: String) throws {
        let allowed = component.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == UInt8(ascii: "_") || c == UInt8(ascii: "-") || c == UInt8(ascii: ".")
        }
        guard !component.isEmpty, component.utf8.count <= 128, allowed, component != ".", component != ".." else {
            throw HearthError.invalid(
                "\(field): \"\(component)\" is not a valid cgroup name; use 1 to 128 letters, digits, '_', '-' or '.'")
        }
    }
}
