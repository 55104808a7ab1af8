import Foundation
import HearthCore

/// This process's own cgroup in one mounted hierarchy.
struct CgroupHierarchy: Sendable, Equatable {
    /// The controllers Hearth uses in this hierarchy (`["cpu", "cpuacct"]`
    /// for a co-mounted v1 hierarchy); empty for the v2 unified hierarchy.
    var controllers: [String]
    var mountPoint: String
    /// The path inside the hierarchy that is mounted (mountinfo field 4).
    var mountRoot: String
    /// Own cgroup as /proc/self/cgroup shows it, e.g. `/system.slice/x`.
    var cgroupPath: String
    /// Own cgroup's directory: mountPoint + cgroupPath below mountRoot.
    var directory: String

    func has(_ controller: String) -> Bool { controllers.contains(controller) }
}

/// What the host offers: the v2 unified hierarchy, or v1 hierarchies for
/// cpu, memory, pids and devices (plus cpuacct, for usage, when mounted).
struct CgroupLayout: Sendable, Equatable {
    var version: CgroupVersion
    var hierarchies: [CgroupHierarchy]
}

/// Finds the cgroup hierarchies and this process's place in them from
/// /proc/self/mountinfo and /proc/self/cgroup. Pure parsing, so that the
/// rules can be tested with the texts of other hosts.
enum CgroupDiscovery {
    /// The v1 controllers whose presence makes a host v1 (legacy or hybrid).
    static let layoutV1 = ["cpu", "memory", "pids"]
    /// v1 controllers Hearth needs; each must be on some v1 hierarchy.
    /// `devices` keeps replicas off host devices: without it hearthd does
    /// not start (it would run replicas that can open any node they make).
    static let requiredV1 = ["cpu", "memory", "pids", "devices"]
    /// v1 controllers used when present (cpuacct gives the CPU usage).
    static let optionalV1 = ["cpuacct"]

    struct Mount: Equatable {
        var mountPoint: String
        var root: String
        var isV2: Bool
        var options: Set<String>
    }

    static func detect() throws -> CgroupLayout {
        let mountinfo = try CgroupFiles.read("/proc/self/mountinfo")
        let cgroup = try CgroupFiles.read("/proc/self/cgroup")
        return try layout(mountinfo: mountinfo, procCgroup: cgroup)
    }

    /// v1 when cpu, memory or pids sits on a v1 hierarchy (legacy and hybrid
    /// hosts: a controller is bound to one hierarchy at a time, so then the
    /// cgroup2 mount cannot have it); otherwise v2.
    static func layout(mountinfo: String, procCgroup: String) throws -> CgroupLayout {
        let mounts = parseMountinfo(mountinfo)
        let (v1Paths, v2Path) = parseProcCgroup(procCgroup)
        let v1Mounts = mounts.filter { !$0.isV2 }

        if v1Mounts.contains(where: { !$0.options.isDisjoint(with: layoutV1) }) {
            var hierarchies = [CgroupHierarchy]()
            for controller in requiredV1 + optionalV1 {
                let required = requiredV1.contains(controller)
                let need = controller == "devices"
                    ? "; hearthd needs the devices controller to keep replicas off host devices"
                    + " (mount it, e.g. mount -t cgroup -o devices cgroup /sys/fs/cgroup/devices, or boot with cgroup v2)"
                    : ""
                guard let path = v1Paths[controller] else {
                    if required {
                        throw HearthError(.unavailable,
                            "cgroup v1: /proc/self/cgroup has no line for the \(controller) controller\(need)")
                    }
                    continue
                }
                let candidates = v1Mounts.filter { $0.options.contains(controller) }
                guard let mount = candidates.first(where: { isPrefix($0.root, of: path) }) else {
                    if required {
                        let why = candidates.isEmpty ? "no \(controller) hierarchy is mounted"
                            : "no mount of the \(controller) hierarchy shows \(path)"
                        throw HearthError(.unavailable, "cgroup v1: \(why) (see /proc/self/mountinfo)\(need)")
                    }
                    continue
                }
                let directory = join(mount.mountPoint, below: mount.root, path)
                // Co-mounted controllers (cpu,cpuacct) share one directory.
                if let i = hierarchies.firstIndex(where: { $0.directory == directory }) {
                    hierarchies[i].controllers.append(controller)
                } else {
                    hierarchies.append(CgroupHierarchy(controllers: [controller], mountPoint: mount.mountPoint,
                                                       mountRoot: mount.root, cgroupPath: path, directory: directory))
                }
            }
            return CgroupLayout(version: .v1, hierarchies: hierarchies)
        }

        guard let path = v2Path else {
            throw HearthError(.unavailable,
                "cgroups: neither a cgroup v2 line (0::/…) nor v1 cpu, memory and pids lines in /proc/self/cgroup")
        }
        let candidates = mounts.filter(\.isV2)
        guard let mount = candidates.first(where: { isPrefix($0.root, of: path) }) else {
            throw HearthError(.unavailable, candidates.isEmpty
                ? "cgroups: no cgroup2 filesystem and no v1 cpu, memory, pids hierarchies in /proc/self/mountinfo"
                : "cgroup v2: no cgroup2 mount shows this process's cgroup \(path) (see /proc/self/mountinfo)")
        }
        let directory = join(mount.mountPoint, below: mount.root, path)
        return CgroupLayout(version: .v2, hierarchies: [
            CgroupHierarchy(controllers: [], mountPoint: mount.mountPoint, mountRoot: mount.root,
                            cgroupPath: path, directory: directory),
        ])
    }

    /// The cgroup and cgroup2 mounts of a mountinfo text:
    /// `id parent major:minor root mountpoint options [optional…] - fstype source superoptions`.
    static func parseMountinfo(_ text: String) -> [Mount] {
        var mounts = [Mount]()
        for line in text.split(whereSeparator: \.isNewline) {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 6, fields.count >= dash + 4 else { continue }
            let fstype = fields[dash + 1]
            guard fstype == "cgroup" || fstype == "cgroup2" else { continue }
            let options = Set(fields[dash + 3].split(separator: ",").map(String.init))
            mounts.append(Mount(mountPoint: unescape(fields[4]), root: unescape(fields[3]),
                                isV2: fstype == "cgroup2", options: options))
        }
        return mounts
    }

    /// `hierarchy-id:controllers:path` lines: v1 paths per controller, and
    /// the v2 path (the line with id 0 and no controllers).
    static func parseProcCgroup(_ text: String) -> (v1: [String: String], v2: String?) {
        var v1 = [String: String]()
        var v2: String?
        for line in text.split(whereSeparator: \.isNewline) {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            var path = String(parts[2])
            // A cgroup removed under a live process reads "/x (deleted)".
            if path.hasSuffix(" (deleted)") { path.removeLast(" (deleted)".count) }
            if parts[0] == "0" && parts[1].isEmpty {
                v2 = path
            } else {
                for controller in parts[1].split(separator: ",") { v1[String(controller)] = path }
            }
        }
        return (v1, v2)
    }

    static func isPrefix(_ root: String, of path: String) -> Bool {
        root == "/" || path == root || path.hasPrefix(root + "/")
    }

    /// The directory of cgroup `path` in a hierarchy whose `root` is mounted
    /// at `mountPoint`.
    static func join(_ mountPoint: String, below root: String, _ path: String) -> String {
        let relative = root == "/" ? path : String(path.dropFirst(root.count))
        let trimmed = relative.split(separator: "/").joined(separator: "/")
        return trimmed.isEmpty ? mountPoint : mountPoint + "/" + trimmed
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes = [UInt8]()
        let raw = Array(field.utf8)
        var i = 0
        while i < raw.count {
            if raw[i] == UInt8(ascii: "\\"), i + 3 < raw.count,
               let value = UInt8(String(decoding: raw[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(raw[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// This process's own cgroup, as admission needs it.
public enum OwnCgroup {
    /// The tightest memory limit on this process: its own cgroup's and
    /// every ancestor's up to the hierarchy's mount (v1
    /// `memory.limit_in_bytes`, v2 `memory.max`); nil when none is set or
    /// the layout cannot be read. Paths come from the discovered layout, so
    /// a hierarchy mounted at another root (inside a container) reads right.
    public static func memoryLimit() -> Int64? {
        guard let layout = try? CgroupDiscovery.detect() else { return nil }
        let (hierarchy, file): (CgroupHierarchy?, String) = layout.version == .v1
            ? (layout.hierarchies.first { $0.has("memory") }, "memory.limit_in_bytes")
            : (layout.hierarchies.first, "memory.max")
        guard let hierarchy else { return nil }
        var limit: Int64?
        var dir = hierarchy.directory
        while true {
            if let text = try? CgroupFiles.read(dir + "/" + file),
               let v = Int64(text.trimmingCharacters(in: .whitespacesAndNewlines)), v > 0 {
                limit = min(limit ?? v, v)
            }
            guard dir.count > hierarchy.mountPoint.count, let slash = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<slash])
        }
        return limit
    }
}
