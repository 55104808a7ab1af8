import Foundation
import Glibc
import HearthCore
import HearthOS
import HearthSandbox
import Synchronization

/// The CDI devices this host offers: every spec file (`*.json`, `*.yaml`,
/// `*.yml`) in the CDI directories (`hearthd --cdi-spec-dir`, default
/// /etc/cdi then /var/run/cdi; a later directory's device of the same
/// name wins, as the CDI library's priority has it). Read at each apply and
/// listing, so a spec the operator adds is seen without a restart; a file
/// that does not parse is reported with its field, and its devices are
/// not offered.
public struct CDIRegistry: Sendable {
    public struct Entry: Sendable {
        public var name: String
        public var file: String
        public var edits: CDISpec.Edits
    }

    public var devices: [String: Entry] = [:]
    /// `file: field: rule` for every file that could not be read.
    public var errors: [String] = []

    public static let defaultDirs = ["/etc/cdi", "/var/run/cdi"]

    /// `nvidiaDevDir`: where `/dev/nvidiaN` nodes are looked for when no
    /// spec offers `nvidia.com/gpu` devices (NVIDIADiscovery); nil: never.
    /// `generated`: where a generated NVIDIA spec is kept between loads
    /// (nil: made at every load).
    public static func load(dirs: [String], nvidiaDevDir: String? = "/dev",
                            ldcache: () -> String = NVIDIADiscovery.hostLdcache,
                            scanned: () -> [String] = { NVIDIADiscovery.scanLibraries() },
                            smi: () -> String? = { NVIDIADiscovery.hostSMI() },
                            generated: GeneratedSpecCache? = nil) -> CDIRegistry {
        var out = CDIRegistry()
        for dir in dirs {
            guard let entries = try? FS.list(path: dir) else { continue }
            let names = entries.map { String(decoding: $0.name, as: UTF8.self) }.sorted()
            for name in names where name.hasSuffix(".json") || name.hasSuffix(".yaml") || name.hasSuffix(".yml") {
                let file = dir + "/" + name
                do {
                    guard let bytes = try FS.readFile(file, limit: 4 << 20) else { continue }
                    let spec = try CDISpec(text: String(decoding: bytes, as: UTF8.self), file: file)
                    for d in spec.devices {
                        out.devices["\(spec.kind)=\(d.name)"] = Entry(name: "\(spec.kind)=\(d.name)", file: file, edits: spec.edits(for: d))
                    }
                } catch {
                    out.errors.append(HearthError.wrap(error).message)
                }
            }
        }
        // NVIDIA devices without a CDI spec: generated as nvidia-ctk would.
        if let dev = nvidiaDevDir, !out.devices.keys.contains(where: { $0.hasPrefix(GPUAllocator.kind + "=") }),
           access(dev + "/nvidiactl", F_OK) == 0 || access(dev + "/nvidia0", F_OK) == 0,
           let spec = generated?.spec(devDir: dev, make: {
               NVIDIADiscovery.spec(devDir: dev, ldcache: ldcache(), scanned: scanned(), smi: smi())
           }) ?? NVIDIADiscovery.spec(devDir: dev, ldcache: ldcache(), scanned: scanned(), smi: smi()) {
            for d in spec.devices {
                let name = "\(spec.kind)=\(d.name)"
                out.devices[name] = Entry(name: name, file: "(generated from \(dev)/nvidia*)", edits: spec.edits(for: d))
            }
        }
        return out
    }

    /// What a replica gets for the devices `names` (`environment` names
    /// them in errors): each must be offered; the NVIDIA toolkit's hooks
    /// are done by Hearth, any other hook is refused unless `runHooks`
    /// (`hearthd --allow-privileged`), when it is run as an OCI runtime
    /// would; device nodes are read from the host where the spec leaves
    /// out type or numbers.
    public func resolve(_ names: [String], environment: String, runHooks: Bool = false) throws -> ResolvedDevices {
        var out = ResolvedDevices()
        for (i, name) in names.enumerated() {
            let at = "environment \"\(environment)\": devices[\(i)]"
            guard let entry = devices[name] else {
                var why = "\(at): \(name.debugDescription) is not a device this host offers"
                why += devices.isEmpty ? " (no CDI spec offers any)" : " (offered: \(devices.keys.sorted().joined(separator: ", ")))"
                if !errors.isEmpty { why += "; CDI specs that could not be read: \(errors.joined(separator: "; "))" }
                throw HearthError(.invalidArgument, why)
            }
            for hook in entry.edits.hooks {
                try Self.apply(hook, to: &out, refusal: "\(at): \(name) (\(entry.file))", runHooks: runHooks)
            }
            // Several devices of one spec share its edits: each once.
            for e in entry.edits.env where !out.env.contains(e) { out.env.append(e) }
            for node in entry.edits.deviceNodes where !out.nodes.contains(where: { $0.node.path == node.path }) {
                out.nodes.append(try Self.node(node, device: name, file: entry.file))
            }
            for m in entry.edits.mounts where !out.mounts.contains(where: { $0.target == m.containerPath }) {
                out.mounts.append(BindMount(source: m.hostPath, target: m.containerPath,
                                            readOnly: m.options.contains("ro")))
            }
        }
        return out
    }

    /// The NVIDIA Container Toolkit's hooks (`nvidia-ctk hook …`,
    /// `nvidia-cdi-hook …`), done by Hearth instead of run: `update-ldcache`
    /// puts its folders on `LD_LIBRARY_PATH`, `create-symlinks` makes its
    /// links; the ones that only tune a container runtime
    /// (`disable-device-node-modification`, `enable-cuda-compat`, `chmod`)
    /// need nothing here. Any other hook is refused: Hearth runs no
    /// program a device spec names.
    static func apply(_ hook: CDISpec.Hook, to out: inout ResolvedDevices, refusal: String, runHooks: Bool = false) throws {
        let tool = hook.path.split(separator: "/").last.map(String.init) ?? hook.path
        var args = hook.args.dropFirst()  // argv[0]
        if tool == "nvidia-ctk", args.first == "hook" { args = args.dropFirst() }
        let described = "\(hook.hookName) hook (\(([hook.path] + hook.args.dropFirst()).joined(separator: " ")))"
        guard hook.hookName == "createContainer", tool == "nvidia-ctk" || tool == "nvidia-cdi-hook",
              let command = args.first else {
            guard hook.hookName == "createContainer" else {
                // prestart, createRuntime, startContainer, poststart,
                // poststop: other moments, or inside the container; none
                // is run.
                throw HearthError(.invalidArgument, "\(refusal) needs a \(described); Hearth runs createContainer hooks only (under hearthd --allow-privileged)")
            }
            guard runHooks else {
                throw HearthError(.invalidArgument, "\(refusal) needs a \(described), a program run as root on the host, which hearthd runs only when started with --allow-privileged (it does the NVIDIA toolkit's update-ldcache and create-symlinks hooks itself)")
            }
            if !out.hooks.contains(hook) { out.hooks.append(hook) }
            return
        }
        /// Every value of `flag` (`--flag V` or `--flag=V`) after the command.
        func values(_ flag: String) -> [String] {
            let rest = Array(args.dropFirst())
            var out: [String] = []
            var i = 0
            while i < rest.count {
                if rest[i] == flag, i + 1 < rest.count { out.append(rest[i + 1]); i += 2; continue }
                if rest[i].hasPrefix(flag + "=") { out.append(String(rest[i].dropFirst(flag.count + 1))) }
                i += 1
            }
            return out
        }
        switch command {
        case "update-ldcache":
            let folders = values("--folder")
            guard !folders.isEmpty else { return }
            if let i = out.env.firstIndex(where: { $0.hasPrefix("LD_LIBRARY_PATH=") }) {
                var dirs = out.env[i].dropFirst("LD_LIBRARY_PATH=".count).split(separator: ":").map(String.init)
                for f in folders where !dirs.contains(f) { dirs.append(f) }
                out.env[i] = "LD_LIBRARY_PATH=" + dirs.joined(separator: ":")
            } else {
                out.env.append("LD_LIBRARY_PATH=" + folders.joined(separator: ":"))
            }
        case "create-symlinks":
            for link in values("--link") {
                let parts = link.components(separatedBy: "::")
                guard parts.count == 2, parts[1].hasPrefix("/"), !parts[1].split(separator: "/").contains("..") else {
                    throw HearthError(.invalidArgument, "\(refusal): create-symlinks link \(link.debugDescription) is not TARGET::/ABSOLUTE/LINK")
                }
                if !out.symlinks.contains(where: { $0.link == parts[1] }) { out.symlinks.append(.init(target: parts[0], link: parts[1])) }
            }
        case "disable-device-node-modification", "enable-cuda-compat", "chmod":
            return
        default:
            guard runHooks else {
                throw HearthError(.invalidArgument, "\(refusal) needs the NVIDIA hook \(command.debugDescription), which Hearth does not do itself (it does update-ldcache and create-symlinks), and runs only when hearthd is started with --allow-privileged")
            }
            if !out.hooks.contains(hook) { out.hooks.append(hook) }
        }
    }

    private static func node(_ n: CDISpec.DeviceNode, device: String, file: String) throws -> ResolvedDevices.Node {
        let host = n.hostPath ?? n.path
        var kind: DeviceRule.Kind? = switch n.type {
        case "b": .block
        case "c", "u": .char
        default: nil
        }
        var major = n.major, minor = n.minor
        if kind == nil || major == nil || minor == nil {
            var st = stat()
            guard stat(host, &st) == 0 else {
                throw HearthError(.invalidArgument, "device \(device) (\(file)): its node \(host) cannot be read on this host: \(String(cString: strerror(errno)))")
            }
            let fmt = st.st_mode & S_IFMT
            guard fmt == S_IFCHR || fmt == S_IFBLK else {
                throw HearthError(.invalidArgument, "device \(device) (\(file)): \(host) is not a device node")
            }
            kind = kind ?? (fmt == S_IFBLK ? .block : .char)
            // glibc's major()/minor() encoding (macros Swift does not import).
            let dev = UInt64(st.st_rdev)
            major = major ?? Int64(((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff))
            minor = minor ?? Int64(((dev >> 12) & 0xffff_ff00) | (dev & 0xff))
        }
        guard let kind, let major, let minor, let ma = UInt32(exactly: major), let mi = UInt32(exactly: minor) else {
            throw HearthError(.invalidArgument, "device \(device) (\(file)): node \(n.path) has no usable type and numbers")
        }
        var access: DeviceRule.Access = []
        for c in n.permissions ?? "rwm" {
            switch c {
            case "r": access.insert(.read)
            case "w": access.insert(.write)
            case "m": access.insert(.mknod)
            default: break
            }
        }
        let rule = try DeviceRule(kind, major: ma, minor: mi, access: access)
        return .init(node: DeviceNode(path: n.path, kind: kind, major: ma, minor: mi, mode: (n.fileMode ?? 0o666) & 0o777),
                     rule: rule)
    }
}

/// The edits a replica's devices bring: nodes to make in its /dev (and
/// allow in its device cgroup), env, and bind mounts.
public struct ResolvedDevices: Sendable, Equatable {
    public struct Node: Sendable, Equatable {
        public var node: DeviceNode
        public var rule: DeviceRule
    }
    public struct Symlink: Sendable, Equatable {
        public var target: String
        public var link: String
    }
    public var nodes: [Node] = []
    public var env: [String] = []
    public var mounts: [BindMount] = []
    /// From `create-symlinks` hooks, made after the mounts.
    public var symlinks: [Symlink] = []
    /// Other createContainer hooks, run on the host while the replica
    /// waits (ContainerHooks; only under `--allow-privileged`).
    public var hooks: [CDISpec.Hook] = []
    public var isEmpty: Bool { nodes.isEmpty && env.isEmpty && mounts.isEmpty && symlinks.isEmpty && hooks.isEmpty }
}

/// The NVIDIA spec generated where no CDI spec offers GPUs, kept while
/// what it was made from is unchanged: making it runs `ldconfig -p` and
/// scans the driver folders (milliseconds to tens of them), and it is
/// needed at every apply with devices, every device listing and every GPU
/// replica's start. The key is the `nvidia*` nodes of the device folder
/// (name, device number, inode), the loader cache's and the driver
/// folders' modification times and sizes: a driver installed, a GPU added
/// or an `ldconfig` run makes it again.
public final class GeneratedSpecCache: Sendable {
    private let kept = Mutex<(key: String, spec: CDISpec?)?>(nil)
    private let folders: [String]
    private let ldcacheFile: String

    public init(folders: [String] = NVIDIADiscovery.driverFolders(), ldcacheFile: String = "/etc/ld.so.cache") {
        self.folders = folders
        self.ldcacheFile = ldcacheFile
    }

    func spec(devDir: String, make: () -> CDISpec?) -> CDISpec? {
        let key = Self.key(devDir: devDir, files: [ldcacheFile] + folders)
        if let k = kept.withLock({ $0 }), k.key == key { return k.spec }
        let spec = make()
        kept.withLock { $0 = (key, spec) }
        return spec
    }

    static func key(devDir: String, files: [String]) -> String {
        var parts: [String] = []
        let names = ((try? FS.list(path: devDir)) ?? []).map { String(decoding: $0.name, as: UTF8.self) }
        for n in names.sorted() where n.hasPrefix("nvidia") {
            var st = stat()
            if lstat(devDir + "/" + n, &st) == 0 { parts.append("\(n):\(st.st_rdev):\(st.st_ino)") }
        }
        for f in files {
            var st = stat()
            if stat(f, &st) == 0 {
                parts.append("\(f):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec):\(st.st_size):\(st.st_ino)")
            } else {
                parts.append("\(f):-")
            }
        }
        return parts.joined(separator: "|")
    }
}
