import CHearth
import Glibc
import HearthCore
import HearthOS

/// Mount flags and clone flags, spelled out because Glibc imports some of
/// them as enum cases and some not at all.
public enum MountFlags {
    public static let rdonly: UInt = 1
    public static let nosuid: UInt = 2
    public static let nodev: UInt = 4
    public static let noexec: UInt = 8
    public static let remount: UInt = 32
    public static let bind: UInt = 4096
    public static let rec: UInt = 16384
    public static let relatime: UInt = 1 << 21
}

public enum CloneFlags {
    public static let newns: UInt64 = 0x0002_0000
    public static let newcgroup: UInt64 = 0x0200_0000
    public static let newuts: UInt64 = 0x0400_0000
    public static let newipc: UInt64 = 0x0800_0000
    public static let newpid: UInt64 = 0x2000_0000
    public static let newnet: UInt64 = 0x4000_0000
}

/// One filesystem operation of the spawn path (see hearth_spawn.h).
public struct FSOp: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Int32, Sendable {
        case mount = 1, mkdir, mknod, symlink, pivot, mask, readonly, writeFile, idmapBind, attach
    }
    public var kind: Kind
    public var source: String? = nil
    public var target: String
    public var fstype: String? = nil
    public var data: String? = nil
    public var flags: UInt = 0
    public var mode: UInt32 = 0
    public var dev: UInt64 = 0
    public var optional = false
    /// `.attach`: the detached tree's fd (open in the daemon, inherited).
    public var treeFD: Int32 = -1

    public static func mount(_ fstype: String, source: String? = nil, on target: String, flags: UInt = 0,
                             data: String? = nil) -> FSOp {
        FSOp(kind: .mount, source: source ?? fstype, target: target, fstype: fstype, data: data, flags: flags)
    }
    public static func bind(_ source: String, on target: String, readOnly: Bool, flags: UInt = 0) -> FSOp {
        FSOp(kind: .mount, source: source, target: target, fstype: nil, data: nil,
             flags: MountFlags.bind | MountFlags.rec | (readOnly ? MountFlags.rdonly : 0) | flags)
    }
    /// An idmapped copy of `source` (through the plan's user namespace) on `target`.
    public static func idmapBind(_ source: String, on target: String, flags: UInt) -> FSOp {
        FSOp(kind: .idmapBind, source: source, target: target, flags: flags)
    }
    /// The detached mount tree at `tree` (HearthOS `HostPath.detachedTree`)
    /// attached on `target`.
    public static func attach(_ tree: Int32, on target: String) -> FSOp {
        FSOp(kind: .attach, target: target, treeFD: tree)
    }
    /// An empty file at `target` (what a file is bind-mounted on).
    public static func file(_ target: String, mode: UInt32 = 0o644) -> FSOp {
        FSOp(kind: .writeFile, target: target, mode: mode)
    }
    public static func mkdir(_ target: String, mode: UInt32 = 0o755) -> FSOp {
        FSOp(kind: .mkdir, target: target, mode: mode)
    }
    public static func charDevice(_ target: String, major: UInt32, minor: UInt32, mode: UInt32 = 0o666) -> FSOp {
        FSOp(kind: .mknod, target: target, mode: UInt32(S_IFCHR) | mode, dev: makedev(major, minor))
    }
    public static func deviceNode(_ target: String, kind: DeviceRule.Kind, major: UInt32, minor: UInt32, mode: UInt32) -> FSOp {
        FSOp(kind: .mknod, target: target, mode: UInt32(kind == .block ? S_IFBLK : S_IFCHR) | (mode & 0o777),
             dev: makedev(major, minor))
    }
    public static func symlink(_ linkTarget: String, at path: String) -> FSOp {
        FSOp(kind: .symlink, source: linkTarget, target: path)
    }
    public static func pivot(_ root: String) -> FSOp { FSOp(kind: .pivot, target: root) }
    public static func mask(_ path: String) -> FSOp {
        FSOp(kind: .mask, source: "/dev/null", target: path, optional: true)
    }
    public static func readOnly(_ path: String) -> FSOp { FSOp(kind: .readonly, target: path, optional: true) }

    public var description: String {
        switch kind {
        case .mount:
            if flags & MountFlags.bind != 0 {
                return "bind mount \(source ?? "?") on \(target)\(flags & MountFlags.rdonly != 0 ? " (read-only)" : "")"
            }
            return "mount \(fstype ?? "?") on \(target)"
        case .mkdir: return "mkdir \(target)"
        case .mknod: return "mknod \(target)"
        case .symlink: return "symlink \(target) -> \(source ?? "?")"
        case .pivot: return "pivot_root to \(target)"
        case .mask: return "mask \(target)"
        case .readonly: return "make \(target) read-only"
        case .writeFile: return "write \(target)"
        case .idmapBind: return "idmapped mount of \(source ?? "?") on \(target)"
        case .attach: return "attach a host directory on \(target)"
        }
    }

    private static func makedev(_ major: UInt32, _ minor: UInt32) -> UInt64 {
        let ma = UInt64(major), mi = UInt64(minor)
        return ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
    }
}

/// Everything the C spawn path needs, as Swift values. `spawn()` lays it
/// out as C data, calls `hearth_spawn` once and turns a (stage, errno)
/// report into an error that names the operation and the path.
public struct SpawnPlan: Sendable {
    public var cloneFlags: UInt64 = CloneFlags.newns | CloneFlags.newpid | CloneFlags.newuts | CloneFlags.newipc
        | CloneFlags.newnet | CloneFlags.newcgroup
    public var cgroupFD: Int32 = -1
    public var cgroupProcsFDs: [Int32] = []
    public var ops: [FSOp] = []
    public var hostname: String?
    public var loopbackUp = true
    public var rlimits: [(resource: Int32, soft: UInt64, hard: UInt64)] = []
    public var fds: [(source: Int32, target: Int32)] = []
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var groups: [UInt32] = []
    public var capBounding: UInt64 = 0
    public var capEffective: UInt64 = 0
    public var capPermitted: UInt64 = 0
    public var capInheritable: UInt64 = 0
    public var lastCap: Int32 = 40
    public var noNewPrivs = true
    /// A user namespace for the child to join (hearth_userns_open), or nil.
    public var usernsFD: Int32?
    /// A network namespace for the child to join instead of cloning one
    /// (network egress: hearth_egress_netns_open), or nil.
    public var netnsFD: Int32?
    /// Raw `struct sock_filter` bytes; empty means no filter.
    public var seccompFilter: [UInt8] = []
    public var cwd: String = "/"
    public var path: String
    public var argv: [String]
    public var envp: [String]
    /// Run on the daemon's side while the child waits with its root
    /// complete (the child's pid is the argument; see hearth_spawn.h); a
    /// throw kills the child and fails the spawn with that error.
    public var hooks: (@Sendable (Int32) throws -> Void)?

    public init(path: String, argv: [String], envp: [String]) {
        self.path = path; self.argv = argv; self.envp = envp
    }

    public struct Spawned: Sendable {
        public var pid: Int32
        public var pidfd: Int32
        /// Where the spawn went, in order: clone, mounts (cgroup sync and the
        /// ops before the pivot), pivot_root (and the ops after it),
        /// caps_seccomp (hostname, fds, rlimits, caps, seccomp), execve.
        public var phases: [StartPhase] = []
    }

    /// Blocks until the child has exec'd (or failed); call off the cooperative pool.
    public func spawn() throws -> Spawned {
        let arena = CArena()
        defer { arena.release() }

        var cops = [hearth_op]()
        cops.reserveCapacity(ops.count)
        for op in ops {
            var c = hearth_op()
            c.kind = op.kind.rawValue
            c.optional = op.optional ? 1 : 0
            c.source = arena.string(op.source)
            c.target = arena.string(op.target)
            c.fstype = arena.string(op.fstype)
            c.data = arena.string(op.data)
            c.flags = op.flags
            c.mode = op.mode
            c.dev = op.dev
            c.tree_fd = op.treeFD
            cops.append(c)
        }
        var crl = rlimits.map { r -> hearth_rlimit in
            var c = hearth_rlimit()
            c.resource = r.resource; c.soft = r.soft; c.hard = r.hard
            return c
        }
        var cfds = fds.map { f -> hearth_fd_map in
            var c = hearth_fd_map()
            c.source = f.source; c.target = f.target
            return c
        }
        var procs = cgroupProcsFDs
        var grps = groups
        var filter = seccompFilter
        let argvC = arena.stringArray(argv)
        let envpC = arena.stringArray(envp)

        let hookBox = hooks.map(HookBox.init)
        var result = hearth_spawn_result()
        let rc: Int32 = cops.withUnsafeBufferPointer { opsBuf in
            crl.withUnsafeMutableBufferPointer { rlBuf in
                cfds.withUnsafeMutableBufferPointer { fdBuf in
                    procs.withUnsafeMutableBufferPointer { procsBuf in
                        grps.withUnsafeMutableBufferPointer { grpBuf in
                            filter.withUnsafeMutableBytes { filterBuf in
                                var p = hearth_spawn_plan()
                                p.clone_flags = cloneFlags
                                p.cgroup_fd = cgroupFD
                                p.cgroup_procs_fds = UnsafePointer(procsBuf.baseAddress)
                                p.cgroup_procs_count = UInt32(procsBuf.count)
                                p.ops = opsBuf.baseAddress
                                p.op_count = UInt32(opsBuf.count)
                                p.hostname = arena.string(hostname)
                                p.loopback_up = loopbackUp ? 1 : 0
                                p.rlimits = UnsafePointer(rlBuf.baseAddress)
                                p.rlimit_count = UInt32(rlBuf.count)
                                p.fds = UnsafePointer(fdBuf.baseAddress)
                                p.fd_count = UInt32(fdBuf.count)
                                p.uid = uid
                                p.gid = gid
                                p.groups = UnsafePointer(grpBuf.baseAddress)
                                p.group_count = UInt32(grpBuf.count)
                                p.cap_bounding = capBounding
                                p.cap_effective = capEffective
                                p.cap_permitted = capPermitted
                                p.cap_inheritable = capInheritable
                                p.last_cap = lastCap
                                p.no_new_privs = noNewPrivs ? 1 : 0
                                p.use_userns = usernsFD == nil ? 0 : 1
                                p.userns_fd = usernsFD ?? -1
                                p.use_netns = netnsFD == nil ? 0 : 1
                                p.netns_fd = netnsFD ?? -1
                                p.seccomp_filter = filterBuf.isEmpty ? nil : UnsafeRawPointer(filterBuf.baseAddress)
                                p.seccomp_filter_len = UInt32(filterBuf.count / 8)
                                p.cwd = arena.string(cwd)
                                p.path = arena.string(path)
                                p.argv = argvC
                                p.envp = envpC
                                if let hookBox {
                                    p.hooks = { pid, ctx in
                                        guard let ctx else { return EINVAL }
                                        let box = Unmanaged<HookBox>.fromOpaque(ctx).takeUnretainedValue()
                                        do {
                                            try box.run(pid)
                                            return 0
                                        } catch {
                                            box.error = error
                                            return ECANCELED
                                        }
                                    }
                                    p.hooks_ctx = Unmanaged.passUnretained(hookBox).toOpaque()
                                }
                                return withExtendedLifetime(hookBox) { hearth_spawn(&p, &result) }
                            }
                        }
                    }
                }
            }
        }
        if rc == 0 { return Spawned(pid: result.pid, pidfd: result.pidfd, phases: Self.phases(result.marks)) }
        if result.stage == Int32(HEARTH_STAGE_HOOKS.rawValue), let error = hookBox?.error {
            throw HearthError(.spawnFailed, "start replica: \(HearthError.wrap(error).message)")
        }
        throw HearthError(.spawnFailed, "start replica: \(describe(stage: result.stage, errno: result.error))")
    }

    /// Durations between hearth_spawn's marks (enum hearth_spawn_mark); none
    /// when a mark is missing (the shared page could not be mapped).
    static func phases(_ m: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)) -> [StartPhase] {
        let marks = [m.0, m.1, m.2, m.3, m.4, m.5]
        guard !marks.contains(0), zip(marks, marks.dropFirst()).allSatisfy({ $0 <= $1 }) else { return [] }
        let names = ["clone", "mounts", "pivot_root", "caps_seccomp", "execve"]
        return names.indices.map {
            StartPhase(name: names[$0], duration: .nanoseconds(Int64(marks[$0 + 1] - marks[$0])))
        }
    }

    /// "mount overlay on /var/lib/hearth/replicas/r1/rootfs: EINVAL (Invalid argument)"
    public func describe(stage: Int32, errno err: Int32) -> String {
        let what: String
        if stage >= Int32(HEARTH_STAGE_OP_BASE.rawValue) {
            let index = Int(stage - Int32(HEARTH_STAGE_OP_BASE.rawValue))
            what = index < ops.count ? ops[index].description : "filesystem operation \(index)"
        } else {
            switch UInt32(stage) {
            case HEARTH_STAGE_CLONE.rawValue: what = "clone3"
            case HEARTH_STAGE_CGROUP_PROCS.rawValue: what = "write pid to cgroup.procs"
            case HEARTH_STAGE_SYNC.rawValue: what = "wait for the parent"
            case HEARTH_STAGE_UNSHARE_CGROUP.rawValue: what = "unshare cgroup namespace"
            case HEARTH_STAGE_MAKE_PRIVATE.rawValue: what = "make / private"
            case HEARTH_STAGE_HOSTNAME.rawValue: what = "sethostname \(hostname ?? "")"
            case HEARTH_STAGE_LOOPBACK.rawValue: what = "bring up lo"
            case HEARTH_STAGE_RLIMIT.rawValue: what = "setrlimit"
            case HEARTH_STAGE_FDS.rawValue: what = "arrange file descriptors"
            case HEARTH_STAGE_SIGNALS.rawValue: what = "reset signals"
            case HEARTH_STAGE_CAPBSET.rawValue: what = "drop capability bounding set"
            case HEARTH_STAGE_SETGROUPS.rawValue: what = "setgroups"
            case HEARTH_STAGE_SETGID.rawValue: what = "setgid \(gid)"
            case HEARTH_STAGE_SETUID.rawValue: what = "setuid \(uid)"
            case HEARTH_STAGE_CAPSET.rawValue: what = "capset"
            case HEARTH_STAGE_AMBIENT.rawValue: what = "clear ambient capabilities"
            case HEARTH_STAGE_NO_NEW_PRIVS.rawValue: what = "set no_new_privs"
            case HEARTH_STAGE_SECCOMP.rawValue: what = "load seccomp filter"
            case HEARTH_STAGE_CHDIR.rawValue: what = "chdir \(cwd)"
            case HEARTH_STAGE_EXEC.rawValue: what = "execve \(path)"
            case HEARTH_STAGE_SETSID.rawValue: what = "setsid"
            case HEARTH_STAGE_USERNS.rawValue: what = "join the replica's user namespace"
            case HEARTH_STAGE_NETNS.rawValue: what = "join the replica's network namespace (network egress)"
            case HEARTH_STAGE_HOOKS.rawValue: what = "wait for the createContainer hooks"
            default: what = "stage \(stage)"
            }
        }
        var hint = ""
        if stage >= Int32(HEARTH_STAGE_OP_BASE.rawValue), err == EINVAL,
           ops.indices.contains(Int(stage - Int32(HEARTH_STAGE_OP_BASE.rawValue))),
           ops[Int(stage - Int32(HEARTH_STAGE_OP_BASE.rawValue))].kind == .idmapBind {
            hint = "; the filesystem of the state root may not support idmapped mounts (ext4, xfs and btrfs do; tmpfs from Linux 6.3), which user namespaces need"
        }
        return "\(what): \(ErrnoName.name(err)) (\(String(cString: strerror(err))))" + hint
    }
}

/// The hooks of one spawn call, reached from the C callback through its
/// context pointer; used on the calling thread only, during the call.
private final class HookBox: @unchecked Sendable {
    let run: @Sendable (Int32) throws -> Void
    var error: (any Error)?
    init(_ run: @escaping @Sendable (Int32) throws -> Void) { self.run = run }
}
