import Foundation
import Glibc
import HearthCore
import HearthOS
import HearthSandbox

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

    public static func load(dirs: [String]) -> CDIRegistry {
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
        return out
    }

    /// What a replica gets for the devices `names` (`environment` and
    /// `field` name them in errors): each must be offered and carry no
    /// hooks (Hearth runs none yet); device nodes are read from the host
    /// where the spec leaves out type or numbers.
    public func resolve(_ names: [String], environment: String) throws -> ResolvedDevices {
        var out = ResolvedDevices()
        for (i, name) in names.enumerated() {
            let at = "environment \"\(environment)\": devices[\(i)]"
            guard let entry = devices[name] else {
                var why = "\(at): \(name.debugDescription) is not a device this host offers"
                why += devices.isEmpty ? " (no CDI spec offers any)" : " (offered: \(devices.keys.sorted().joined(separator: ", ")))"
                if !errors.isEmpty { why += "; CDI specs that could not be read: \(errors.joined(separator: "; "))" }
                throw HearthError(.invalidArgument, why)
            }
            if let hook = entry.edits.hooks.first {
                throw HearthError(.invalidArgument, "\(at): \(name) (\(entry.file)) needs a \(hook.hookName) hook (\(hook.path)), and Hearth runs no CDI hooks yet")
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
    public var nodes: [Node] = []
    public var env: [String] = []
    public var mounts: [BindMount] = []
    public var isEmpty: Bool { nodes.isEmpty && env.isEmpty && mounts.isEmpty }
}
