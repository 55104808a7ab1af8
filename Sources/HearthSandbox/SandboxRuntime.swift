import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import Synchronization
import HearthOS

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
        try FS.makeDirectory(stateRoot, mode: 0o711)
        try FS.makeDirectory(replicasDir, mode: 0o700)
        if let scratchDir { try FS.makeDirectory(scratchDir, mode: 0o700) }
        try installInit(from: initBinary)
    }

    public func prepare() throws {
        try cgroups.prepare()
    }

    private func installInit(from source: String) throws {
        try FS.makeDirectory(runtimeDir, mode: 0o755)
        // Mount points for the worker and the code bundles (see ContainerPaths.runtimeMount).
        for sub in ContainerPaths.runtimeMountPoints { try FS.makeDirectory(runtimeDir + "/" + sub, mode: 0o755) }
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
        // v1: the cgroup join's grace period starts now (unless one is
        // already under way), beside the directories, the plan, the clone
        // and the child's mounts. The warm-up holds the kernel's
        // cgroup_mutex while it waits, so the cgroup's mkdir waits for it
        // too, but the join after the clone then costs nothing.
        cgroups.prewarmJoin()
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
            try FS.makeDirectory(dir, mode: 0o700)
            cleanup.append { try? FS.removeTree(path: dir) }
            // Host paths that belong to the replica (its secrets) go with a failed start too.
            cleanup.append { for p in spec.cleanupPaths { try? FS.removeTree(path: p) } }
            if writable != dir {
                try FS.makeDirectory(writable, mode: 0o700)
                cleanup.append { try? FS.removeTree(path: writable) }
                cleanupPaths.append(writable)
            }
            for d in [upper, work, rootfs] { try FS.makeDirectory(d, mode: 0o755) }
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
                try FS.makeDirectory(dir + "/lower", mode: 0o700)
                lowers = []
                for i in spec.image.layerPaths.indices {
                    let mountPoint = dir + "/lower/\(i)"
                    try FS.makeDirectory(mountPoint, mode: 0o755)
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

            if !spec.hooks.isEmpty {
                let hooks = spec.hooks, name = spec.name, bundle = dir + "/hook-bundle"
                plan.hooks = { pid in try ContainerHooks.run(hooks, replica: name, pid: pid, bundle: bundle) }
            }
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

    /// Takes over a replica a previous daemon started (its fds came back
    /// from the keeper): checks that it still runs in its cgroup and that
    /// its directory is there, reserves its id range, and watches its exit
    /// through the pidfd (it is no longer our child: `ExitStatus.unknown`).
    /// Takes ownership of the fds only when it returns.
    public func adopt(_ facts: ReplicaFacts, pidfd: Int32, stdoutFD: Int32, stderrFD: Int32,
                      ephemeralStorage: Int64?) throws -> RunningReplica {
        guard facts.dir == replicasDir + "/" + facts.name, !facts.name.contains("/"), !facts.name.hasPrefix(".") else {
            throw HearthError.invalid("replica \(facts.name): its directory \(facts.dir) is not under \(replicasDir)")
        }
        guard Pidfd.signal(pidfd, 0) == 0 else { throw SystemError.current("signal 0 via the pidfd of replica", facts.name) }
        guard let cgroup = cgroups.existing(name: facts.name, pid: facts.pid) else {
            throw HearthError(.notFound, "replica \(facts.name): its cgroup is gone or no longer holds pid \(facts.pid)")
        }
        guard FileManager.default.fileExists(atPath: facts.dir + "/rootfs") else {
            throw HearthError(.notFound, "replica \(facts.name): \(facts.dir)/rootfs is gone")
        }
        var release: (@Sendable () -> Void)?
        if let base = facts.hostIDBase {
            guard let lease = userNamespaces.reserve(base: base) else {
                throw HearthError(.conflict, "replica \(facts.name): host ids from \(base) are not a free range")
            }
            let namespaces = userNamespaces
            release = { namespaces.release(lease) }
        }
        let replica = RunningReplica(name: facts.name, dir: facts.dir, pid: facts.pid, pidfd: pidfd, cgroup: cgroup,
                                     stdoutFD: stdoutFD, stderrFD: stderrFD, memoryLimit: facts.memoryLimit,
                                     startPhases: [], cleanupPaths: facts.cleanupPaths,
                                     writableDirs: facts.writableDirs, storage: storage,
                                     hostIDBase: facts.hostIDBase, onTeardown: release)
        if let ephemeralStorage { replica.limitEphemeralStorage(ephemeralStorage) }
        return replica
    }

    /// Removes what a crashed predecessor left: replica directories (and any
    /// mount under them), cgroups and their processes; but not the adopted
    /// replicas named in `keeping`: their cgroups, their directories (and
    /// the `NAME.*` beside them), their writable layers.
    public func cleanupStale(keeping: Set<String> = []) throws {
        // Directories go even when a cgroup resists; the error is reported after.
        var cgroupError: (any Error)?
        do { try cgroups.cleanupStale(keeping: keeping) } catch { cgroupError = error }
        func kept(_ entry: String) -> Bool {
            keeping.contains(entry) || keeping.contains { entry.hasPrefix($0 + ".") }
        }
        for mount in FS.mountPoints(under: replicasDir).sorted(by: >) {
            let rel = mount.dropFirst(replicasDir.count + 1)
            let top = String(rel.split(separator: "/").first ?? "")
            if kept(top) { continue }
            _ = umount2(mount, Int32(MNT_DETACH))
        }
        for dir in [replicasDir] + (scratchDir.map { [$0] } ?? []) {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where !kept(entry) {
                try FS.removeTree(path: dir + "/" + entry)
            }
        }
        if let cgroupError { throw cgroupError }
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
        try FS.makeDirectory(upper + "/etc", mode: 0o755)
        try FS.writeFile(upper + "/etc/hostname", "\(spec.name)\n")
        try FS.writeFile(upper + "/etc/hosts", """
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
        try FS.writeFile(upper + "/etc/resolv.conf", resolv)
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
        // CDI devices' nodes (their rules are in the device cgroup).
        for node in spec.deviceNodes {
            ops += Self.parents(of: node.path, in: r)
            ops.append(.deviceNode(r + node.path, kind: node.kind, major: node.major, minor: node.minor, mode: node.mode))
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
            // /.hearth is read-only: its mount points are made in the runtime
            // directory. Elsewhere every missing directory on the way is made
            // (in the replica's writable layer, resolved inside its root).
            if !m.target.hasPrefix(ContainerPaths.runtimeMount + "/") {
                // A file (a CDI driver library) is bound on a file.
                var st = stat()
                let isFile = m.tree == nil && stat(m.source, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
                ops += Self.parents(of: m.target, in: r)
                ops.append(isFile ? .file(r + m.target) : .mkdir(r + m.target))
            }
            if let tree = m.tree {
                ops.append(.attach(tree, on: r + m.target))
            } else {
                ops.append(.bind(m.source, on: r + m.target, readOnly: m.readOnly, flags: MountFlags.nosuid | MountFlags.nodev))
            }
        }
        for s in spec.symlinks {
            ops += Self.parents(of: s.link, in: r)
            ops.append(.symlink(s.target, at: r + s.link))
        }
        ops.append(.pivot(r))
        ops += ContainerPaths.masked.map(FSOp.mask)
        ops += ContainerPaths.readOnly.map(FSOp.readOnly)
        return ops
    }

    /// mkdir of each directory above `path` inside the root `r`, top down
    /// (one that exists is left as it is).
    private static func parents(of path: String, in r: String) -> [FSOp] {
        var out: [FSOp] = []
        var partial = ""
        for part in path.split(separator: "/").dropLast() {
            partial += "/" + part
            out.append(.mkdir(r + partial))
        }
        return out
    }
}
