import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import Synchronization

public enum NetworkMode: String, Sendable, Codable {
    /// none: loopback only. egress: loopback, and the daemon's filtering
    /// proxy at 127.0.0.1:3128 (Egress.swift). host: the host's namespace.
    case none, host, egress
}

/// A host path mounted into a replica.
public struct BindMount: Sendable {
    public var source: String
    public var target: String
    public var readOnly: Bool
    public init(source: String, target: String, readOnly: Bool) {
        self.source = source; self.target = target; self.readOnly = readOnly
    }
}

/// What one replica is: its image, command, limits and isolation settings.
public struct ReplicaSpec: Sendable {
    public var name: String
    public var image: ResolvedImage
    public var argv: [String]
    public var env: [String] = []
    public var workdir: String?
    public var limits: CgroupLimits
    public var network: NetworkMode = .none
    /// nil: unconfined.
    public var seccomp: SeccompProfile? = SeccompProfile.default
    public var capabilities: CapabilitySet = .dockerDefault
    public var mounts: [BindMount] = []
    /// Devices granted beyond `DeviceRule.standard` (nothing grants any yet;
    /// GPUs will). Everything else is refused by the replica's cgroup.
    public var devices: [DeviceRule] = []
    /// Extra pipes for the child: (fd in the daemon, fd number in the replica).
    public var extraFDs: [(source: Int32, target: Int32)] = []
    /// Host paths that belong to this replica and go with it (e.g. its secrets).
    public var cleanupPaths: [String] = []
    /// Run in a user namespace of its own: root inside is an unprivileged
    /// host uid from a range of the replica's (UserNamespaces), and the
    /// image layers are idmapped mounts, so nothing is chowned on disk.
    public var userNamespace = false
    /// Host paths made for this replica whose owners are ids inside it
    /// (its secrets): shifted into its host range when it has a user namespace.
    public var idShiftedPaths: [String] = []
    /// Bytes the replica may write to its writable layer before it is
    /// evicted (`ephemeral_storage`); nil: not measured.
    public var ephemeralStorageLimit: Int64?

    public init(name: String, image: ResolvedImage, argv: [String], limits: CgroupLimits) {
        self.name = name; self.image = image; self.argv = argv; self.limits = limits
    }
}

public struct StartPhase: Sendable, CustomStringConvertible {
    public var name: String
    public var duration: Duration
    public var description: String {
        let (s, atto) = duration.components
        return "\(name) \((s * 1_000_000) + atto / 1_000_000_000_000) µs"
    }
}

/// Output of a replica's command, as it arrives.
public enum OutputChunk: Sendable {
    case stdout([UInt8])
    case stderr([UInt8])
}

/// The masked and read-only paths Docker applies (moby's
/// daemon/pkg/oci/defaults.go, checked December 2026).
enum ContainerPaths {
    /// Masked: a file reads as /dev/null, a directory as an empty
    /// read-only tmpfs. /proc/interrupts and each CPU's thermal_throttle
    /// leak host activity and let a replica wear the host's CPUs
    /// (GHSA-6fw5-f8r9-fgfm); powercap leaks energy counters (GHSA-jq35-85cj-fj4p).
    static let maskedFixed = [
        "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
        "/sys/devices/virtual/powercap", "/sys/firmware",
    ]

    /// The fixed list plus `/sys/devices/system/cpu/cpu<N>/thermal_throttle`
    /// for every possible CPU where the host has one (expanded here, as
    /// moby does, because the plan holds plain paths). Computed once: CPUs
    /// that can appear are in `possible` already.
    static let masked: [String] = maskedFixed + thermalThrottle(
        possible: (try? String(contentsOfFile: "/sys/devices/system/cpu/possible", encoding: .utf8)) ?? "",
        exists: { access($0, F_OK) == 0 })

    static func thermalThrottle(possible: String, exists: (String) -> Bool) -> [String] {
        cpuList(possible).map { "/sys/devices/system/cpu/cpu\($0)/thermal_throttle" }.filter(exists)
    }

    /// A kernel CPU list (`0-3,8,10-11`); malformed parts are skipped, and
    /// a range is bounded so a corrupt file cannot make a huge list.
    static func cpuList(_ text: String) -> [Int] {
        var cpus = [Int]()
        for part in text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            let bounds = part.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map { Int($0) }
            guard let first = bounds.first ?? nil, first >= 0 else { continue }
            let last = bounds.count == 2 ? (bounds[1] ?? -1) : first
            guard last >= first, last - first < 65536 else { continue }
            cpus += Array(first...last)
        }
        return cpus
    }

    static let readOnly = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    /// Where hearth-init (and later the worker) is mounted read-only.
    static let runtimeMount = "/.hearth"
    static let runtimeMountPoints = ["worker", "code"]
}

/// Builds replicas: directories, cgroup, plan, spawn; and tears them down.
public final class SandboxRuntime: Sendable {
    public let stateRoot: String
    public let replicasDir: String
    public let runtimeDir: String
    public let cgroups: CgroupManager
    public let seccomp: SeccompCompiler
    public let userNamespaces = UserNamespaces()
    /// Where replicas' upper and work directories live when not under
    /// `replicasDir` (`hearthd --scratch DIR`): a filesystem of its own, so
    /// a replica that fills it never fills the state root.
    public let scratchDir: String?
    /// Measures writable layers against `ephemeral_storage` limits.
    public let storage = StorageWatch()
    /// Serves the proxy of replicas with network egress; nil: such a
    /// replica fails to start.
    public let egress: (any EgressGateway)?
    private let counter = Atomic<Int>(0)
    private let bootID: String

    /// - Parameters:
    ///   - initBinary: the static hearth-init to copy into the runtime directory.
    ///   - scratchDir: see `scratchDir`; created 0700. It belongs to this
    ///     daemon: stale-state cleanup empties it.
    ///   - egress: the proxy of replicas with network egress.
    public init(stateRoot: String, initBinary: String, cgroupSubtree: String, scratchDir: String? = nil,
                egress: (any EgressGateway)? = nil) throws {
        self.stateRoot = stateRoot
        self.egress = egress
        replicasDir = stateRoot + "/replicas"
        runtimeDir = stateRoot + "/runtime"
        cgroups = try CgroupManager(subtree: cgroupSubtree)
        seccomp = SeccompCompiler()
        bootID = String(UInt32.random(in: 0..<0x100_0000), radix: 16)
        if let scratchDir {
            // The overlay's mount options are comma- and colon-separated.
            guard scratchDir.hasPrefix("/"), !scratchDir.contains(","), !scratchDir.contains(":") else {
                throw HearthError.invalid("--scratch: \"\(scratchDir)\" must be an absolute path without ',' or ':' (it goes into overlay mount options)")
            }
        }
        self.scratchDir = scratchDir
        try FileTree.makeDirectory(stateRoot, mode: 0o711)
        try FileTree.makeDirectory(replicasDir, mode: 0o700)
        if let scratchDir { try FileTree.makeDirectory(scratchDir, mode: 0o700) }
        try installInit(from: initBinary)
    }

    /// Removes what a crashed predecessor left: replica directories (and any
    /// mount under them), cgroups and their processes.
    public func cleanupStale() throws {
        // Directories go even when a cgroup resists; the error is reported after.
        var cgroupError: (any Error)?
        do { try cgroups.cleanupStale() } catch { cgroupError = error }
        for mount in FileTree.mountPoints(under: replicasDir).sorted(by: >) {
            _ = umount2(mount, Int32(MNT_DETACH))
        }
        for dir in [replicasDir] + (scratchDir.map { [$0] } ?? []) {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                try FileTree.removeAll(dir + "/" + entry)
            }
        }
        if let cgroupError { throw cgroupError }
    }

    public func prepare() throws {
        try cgroups.prepare()
    }

    private func installInit(from source: String) throws {
        try FileTree.makeDirectory(runtimeDir, mode: 0o755)
        // Mount points for the worker and the code bundles (see ContainerPaths.runtimeMount).
        for sub in ContainerPaths.runtimeMountPoints { try FileTree.makeDirectory(runtimeDir + "/" + sub, mode: 0o755) }
        let dest = runtimeDir + "/hearth-init"
        let tmp = dest + ".tmp"
        guard let data = FileManager.default.contents(atPath: source) else {
            throw HearthError(.unavailable, "hearth-init not found at \(source); build it with scripts/setup or pass --init PATH")
        }
        unlink(tmp)
        guard FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: 0o555]) else {
            throw SystemError.current("write", tmp)
        }
        if rename(tmp, dest) != 0 { throw SystemError.current("rename", dest) }
    }

    public func newReplicaName(prefix: String) -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        return "\(prefix)-\(bootID)-\(n)"
    }

    /// Builds and starts a replica. Blocking: call via `Blocking.run`.
    public func start(_ spec: ReplicaSpec) throws -> RunningReplica {
        let t0 = ContinuousClock.now
        let dir = replicasDir + "/" + spec.name
        // Upper and work share a filesystem (overlayfs needs that): the
        // scratch one when there is one.
        let writable = scratchDir.map { $0 + "/" + spec.name } ?? dir
        let upper = writable + "/upper", work = writable + "/work", rootfs = dir + "/rootfs"
        var cleanup: [() -> Void] = []
        func fail(_ e: any Error) -> any Error {
            for c in cleanup.reversed() { c() }
            return e
        }
        var cleanupPaths = spec.cleanupPaths
        do {
            try FileTree.makeDirectory(dir, mode: 0o700)
            cleanup.append { try? FileTree.removeAll(dir) }
            // Host paths that belong to the replica (its secrets) go with a failed start too.
            cleanup.append { for p in spec.cleanupPaths { try? FileTree.removeAll(p) } }
            if writable != dir {
                try FileTree.makeDirectory(writable, mode: 0o700)
                cleanup.append { try? FileTree.removeAll(writable) }
                cleanupPaths.append(writable)
            }
            for d in [upper, work, rootfs] { try FileTree.makeDirectory(d, mode: 0o755) }
            try writeEtcFiles(upper: upper, spec: spec)

            let tDirs = ContinuousClock.now
            // A user namespace: its id range, the namespace, a mount point
            // per image layer for its idmapped copy, and what we wrote into
            // the upper layer (and the secrets) owned by the range's ids.
            var lease: UserNamespaces.Lease?
            var lowers = spec.image.layerPaths
            var usernsFD: Int32?
            if spec.userNamespace {
                let l = try userNamespaces.take()
                lease = l
                cleanup.append { [userNamespaces] in userNamespaces.release(l) }
                let fd = try userNamespaces.open(l)
                usernsFD = fd
                cleanup.append { close(fd) }
                try FileTree.makeDirectory(dir + "/lower", mode: 0o700)
                lowers = []
                for i in spec.image.layerPaths.indices {
                    let mountPoint = dir + "/lower/\(i)"
                    try FileTree.makeDirectory(mountPoint, mode: 0o755)
                    lowers.append(mountPoint)
                }
                try IDShift.shift(upper, into: l, recursive: true)
                for p in spec.idShiftedPaths { try IDShift.shift(p, into: l, recursive: true) }
            }

            let t1 = ContinuousClock.now
            // network egress: the namespace, with the proxy listening and
            // served, before the replica's first process exists.
            var netnsFD: Int32?
            var egressSession: (any EgressSession)?
            if spec.network == .egress {
                let (ns, session) = try openEgress(replica: spec.name)
                netnsFD = ns
                egressSession = session
                cleanup.append { close(ns); session.close() }
            }
            let tEgress = ContinuousClock.now
            let cgroup = try cgroups.create(name: spec.name, limits: spec.limits,
                                            devices: DeviceRule.standard + spec.devices)
            let t2 = ContinuousClock.now
            cleanup.append { cgroup.killAll(); try? cgroup.remove() }

            let filter = try spec.seccomp.map { try seccomp.compile($0) } ?? []
            var plan = SpawnPlan(path: ContainerPaths.runtimeMount + "/hearth-init",
                                 argv: ["hearth-init"] + spec.argv, envp: environment(for: spec))
            if let usernsFD {
                plan.usernsFD = usernsFD
                plan.ops = zip(spec.image.layerPaths, lowers).map { layer, mountPoint in
                    .idmapBind(layer, on: mountPoint, flags: MountFlags.rdonly | MountFlags.nosuid | MountFlags.nodev)
                }
            }
            plan.ops += mountOps(spec: spec, lowers: lowers, rootfs: rootfs, upper: upper, work: work)
            plan.hostname = spec.name
            if spec.network == .host {
                plan.cloneFlags &= ~CloneFlags.newnet
                plan.loopbackUp = false
            }
            if let netnsFD {
                // Joined, not cloned; its lo is up already.
                plan.netnsFD = netnsFD
                plan.cloneFlags &= ~CloneFlags.newnet
                plan.loopbackUp = false
            }
            // Raising the hard limit needs CAP_SYS_RESOURCE, which the daemon
            // may not have: give replicas the daemon's own hard limit.
            var nofile = rlimit()
            getrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile)
            let files = UInt64(min(nofile.rlim_max, 1 << 20))
            plan.rlimits = [(Int32(RLIMIT_NOFILE.rawValue), files, files)]
            plan.capBounding = spec.capabilities.mask
            plan.capEffective = spec.capabilities.mask
            plan.capPermitted = spec.capabilities.mask
            plan.capInheritable = 0
            plan.lastCap = CapabilitySet.lastCap()
            plan.noNewPrivs = true
            plan.seccompFilter = filter
            plan.cwd = spec.workdir ?? (spec.image.workingDir.isEmpty ? "/" : spec.image.workingDir)
            let (uid, gid) = try Self.parseUser(spec.image.user)
            plan.uid = uid
            plan.gid = gid

            // stdin is /dev/null; stdout and stderr are pipes we read.
            let devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)
            guard devnull >= 0 else { throw SystemError.current("open", "/dev/null") }
            defer { close(devnull) }
            let out = try Pipe.make(), err = try Pipe.make()
            plan.fds = [(devnull, 0), (out.write, 1), (err.write, 2)] + spec.extraFDs

            let attach = try cgroup.openForSpawn()
            plan.cgroupFD = attach.cgroupFD
            // cgroup v1 (no fd): the child unshares its cgroup namespace once
            // the parent has moved it (see hearth_spawn.h).
            plan.cgroupProcsFDs = attach.procsFDs
            let spawned: SpawnPlan.Spawned
            let t3 = ContinuousClock.now
            do {
                spawned = try plan.spawn()
            } catch {
                attach.close()
                close(out.read); close(out.write); close(err.read); close(err.write)
                throw error
            }
            attach.close()
            close(out.write); close(err.write)
            // The child joined it; the daemon's reference is not needed.
            if let usernsFD { close(usernsFD) }
            if let netnsFD { close(netnsFD) }
            let t4 = ContinuousClock.now
            var releaseLease: (@Sendable () -> Void)?
            if let lease {
                let namespaces = userNamespaces
                releaseLease = { namespaces.release(lease) }
            }
            if let egressSession {
                // The proxy's listener and connections go with the replica.
                let release = releaseLease
                releaseLease = { egressSession.close(); release?() }
            }
            // The device allow-list and the user namespace are phases of their
            // own, so the benchmark shows what each costs a cold start.
            let devices = cgroup.deviceSetup.withLock { $0 }
            var phases = [StartPhase(name: "dirs", duration: tDirs - t0)]
            if lease != nil { phases.append(StartPhase(name: "userns", duration: t1 - tDirs)) }
            if netnsFD != nil { phases.append(StartPhase(name: "egress", duration: tEgress - t1)) }
            phases += [StartPhase(name: "cgroup", duration: t2 - tEgress - devices), StartPhase(name: "devices", duration: devices),
                       StartPhase(name: "plan", duration: t3 - t2)]
            phases += (spawned.phases.isEmpty ? [StartPhase(name: "spawn", duration: t4 - t3)] : spawned.phases)
            let replica = RunningReplica(name: spec.name, dir: dir, pid: spawned.pid, pidfd: spawned.pidfd,
                                         cgroup: cgroup, stdoutFD: out.read, stderrFD: err.read,
                                         memoryLimit: spec.limits.memoryLimit, startPhases: phases,
                                         cleanupPaths: cleanupPaths, writableDirs: [upper, work], storage: storage,
                                         hostIDBase: lease?.base, onTeardown: releaseLease)
            if let limit = spec.ephemeralStorageLimit { replica.limitEphemeralStorage(limit) }
            return replica
        } catch {
            throw fail(error)
        }
    }

    private func environment(for spec: ReplicaSpec) -> [String] {
        var order: [String] = []
        var values: [String: String] = [:]
        func set(_ kv: String) {
            let key = kv.split(separator: "=", maxSplits: 1).first.map(String.init) ?? kv
            if values[key] == nil { order.append(key) }
            values[key] = kv
        }
        for kv in spec.image.env { set(kv) }
        if values["PATH"] == nil { set("PATH=" + ContainerPaths.defaultPath) }
        if values["HOME"] == nil { set("HOME=/root") }
        set("HOSTNAME=" + spec.name)
        if spec.network == .egress { for kv in EgressNamespace.environment { set(kv) } }
        for kv in spec.env { set(kv) }
        return order.compactMap { values[$0] }
    }

    /// The image's `User` as uid and gid: empty or root is 0:0; only
    /// numeric `uid[:gid]` is supported (no /etc/passwd lookup in the image).
    public static func parseUser(_ user: String) throws -> (UInt32, UInt32) {
        if user.isEmpty || user == "root" || user == "0" { return (0, 0) }
        let parts = user.split(separator: ":", maxSplits: 1).map(String.init)
        guard let uid = UInt32(parts[0]) else {
            throw HearthError(.invalidImage, "image user \"\(user)\": only numeric uid[:gid] is supported")
        }
        let gid = parts.count > 1 ? UInt32(parts[1]) : uid
        guard let gid else { throw HearthError(.invalidImage, "image user \"\(user)\": gid must be numeric") }
        return (uid, gid)
    }

    /// /etc/hostname, /etc/hosts and /etc/resolv.conf go straight into the
    /// upper directory: no bind mounts needed, and the image is untouched.
    private func writeEtcFiles(upper: String, spec: ReplicaSpec) throws {
        try FileTree.makeDirectory(upper + "/etc", mode: 0o755)
        try FileTree.writeFile(upper + "/etc/hostname", "\(spec.name)\n")
        try FileTree.writeFile(upper + "/etc/hosts", """
            127.0.0.1\tlocalhost
            ::1\tlocalhost ip6-localhost ip6-loopback
            127.0.1.1\t\(spec.name)

            """)
        let resolv: String
        if spec.network == .host, let host = try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8) {
            resolv = host
        } else if spec.network == .egress {
            resolv = "# network: egress (no DNS here: HTTP and HTTPS go through the daemon's proxy, \(EgressNamespace.proxyURL), which resolves names)\n"
        } else {
            resolv = "# network: none (loopback only)\n"
        }
        try FileTree.writeFile(upper + "/etc/resolv.conf", resolv)
    }

    /// `lowers`: the image's layer directories bottom first (or their
    /// idmapped copies).
    private func mountOps(spec: ReplicaSpec, lowers: [String], rootfs r: String, upper: String, work: String) -> [FSOp] {
        let lower = lowers.reversed().joined(separator: ":")
        var ops: [FSOp] = [
            // volatile: replicas are disposable, so overlay may skip syncs.
            // nodev: a node made anywhere but /dev (root keeps CAP_MKNOD)
            // cannot even be opened; in /dev the device cgroup decides.
            .mount("overlay", on: r, flags: MountFlags.nodev,
                   data: "lowerdir=\(lower),upperdir=\(upper),workdir=\(work),volatile"),
            .mkdir(r + "/proc", mode: 0o555), .mkdir(r + "/dev"), .mkdir(r + "/sys", mode: 0o555),
            .mkdir(r + ContainerPaths.runtimeMount),
            .mount("proc", on: r + "/proc", flags: MountFlags.nosuid | MountFlags.nodev | MountFlags.noexec),
            // Not nodev: the standard nodes below live here. What a node
            // made here may open is the device cgroup's allow-list.
            .mount("tmpfs", on: r + "/dev", flags: MountFlags.nosuid, data: "mode=755,size=65536k"),
        ]
        for (name, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
                                     ("urandom", 1, 9), ("tty", 5, 0)] {
            ops.append(.charDevice(r + "/dev/" + name, major: UInt32(major), minor: UInt32(minor)))
        }
        ops += [
            .mkdir(r + "/dev/pts"),
            .mount("devpts", on: r + "/dev/pts", flags: MountFlags.nosuid | MountFlags.noexec,
                   data: "newinstance,ptmxmode=0666,mode=0620"),
            .symlink("pts/ptmx", at: r + "/dev/ptmx"),
            .mkdir(r + "/dev/shm", mode: 0o1777),
            .mount("tmpfs", source: "shm", on: r + "/dev/shm",
                   flags: MountFlags.nosuid | MountFlags.nodev | MountFlags.noexec, data: "mode=1777,size=65536k"),
            .symlink("/proc/self/fd", at: r + "/dev/fd"),
            .symlink("/proc/self/fd/0", at: r + "/dev/stdin"),
            .symlink("/proc/self/fd/1", at: r + "/dev/stdout"),
            .symlink("/proc/self/fd/2", at: r + "/dev/stderr"),
            .mount("sysfs", on: r + "/sys",
                   flags: MountFlags.rdonly | MountFlags.nosuid | MountFlags.nodev | MountFlags.noexec),
            .bind(runtimeDir, on: r + ContainerPaths.runtimeMount, readOnly: true,
                  flags: MountFlags.nosuid | MountFlags.nodev),
        ]
        for m in spec.mounts {
            // /.hearth is read-only: its mount points are made in the runtime directory.
            if !m.target.hasPrefix(ContainerPaths.runtimeMount + "/") { ops.append(.mkdir(r + m.target)) }
            ops.append(.bind(m.source, on: r + m.target, readOnly: m.readOnly, flags: MountFlags.nosuid | MountFlags.nodev))
        }
        ops.append(.pivot(r))
        ops += ContainerPaths.masked.map(FSOp.mask)
        ops += ContainerPaths.readOnly.map(FSOp.readOnly)
        return ops
    }
}

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
        _ = hearth_pidfd_send_signal_swift(pidfd, sig)
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
            let rc = hearthPidfdWait(pidfd, nohang: false, code: &code, status: &status)
            EventThread.shared.unwatch(pidfd)
            exited(rc == 0 ? ProcessReaper.exitStatus(code: code, status: status) : .signaled(SIGKILL))
        }
        try? cgroup.remove()
        close(pidfd)
        try? FileTree.removeAll(dir)
        for p in cleanupPaths { try? FileTree.removeAll(p) }
        // Its id range is free again only once nothing of it runs or remains.
        onTeardown?()
    }
}

/// Reads a non-blocking pipe on the event thread; hands each chunk on, then
/// nil at EOF, and closes the fd.
final class PipeReader: Sendable {
    let fd: Int32
    let onData: @Sendable ([UInt8]?) -> Void
    private let done = Atomic<Bool>(false)

    init(fd: Int32, onData: @escaping @Sendable ([UInt8]?) -> Void) {
        self.fd = fd
        self.onData = onData
    }

    func start() throws {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        try EventThread.shared.watch(fd) { [self] _ in drain() ? .keep : .remove }
    }

    /// One lock for every pipe read, with its own buffer: the event
    /// thread's reads and a drain on the thread that handles a result frame
    /// must not interleave, or a task's lines could land after its result
    /// or out of order. Every result drains both pipes, usually finding
    /// nothing, so the buffer is not allocated per call.
    private static let reading = Mutex(())
    nonisolated(unsafe) private static let buffer =
        UnsafeMutableBufferPointer<UInt8>.allocate(capacity: 64 << 10)

    /// Reads until the pipe is empty; at EOF closes it and reports nil.
    /// Returns false once the pipe is finished. Any thread.
    @discardableResult
    func drain() -> Bool {
        Self.reading.withLock { _ in drainLocked() }
    }

    private func drainLocked() -> Bool {
        if done.load(ordering: .relaxed) { return false }
        let buf = Self.buffer
        while true {
            let n = read(fd, buf.baseAddress, buf.count)
            if n > 0 {
                onData(Array(buf[0..<n]))
                if n < buf.count { return true }
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return true }
            // EOF or a hard error: either way this pipe is done.
            done.store(true, ordering: .relaxed)
            EventThread.shared.unwatch(fd)
            close(fd)
            onData(nil)
            return false
        }
    }
}

enum Pipe {
    static func make() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard hearth_pipe2(&fds, O_CLOEXEC) == 0 else { throw SystemError.current("pipe2", "") }
        return (fds[0], fds[1])
    }
}
