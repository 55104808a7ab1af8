/// Container Device Interface specs (github.com/cncf-tags/container-device-interface,
/// versions 0.3 to 0.8), the files podman, containerd, CRI-O and Docker read
/// from /etc/cdi and /var/run/cdi: a vendor's devices and what giving one to
/// a container takes (device nodes, env, mounts, hooks). Pure: text in,
/// values or an error naming the file and the field out.
public struct CDISpec: Sendable, Equatable {
    /// `vendor.com/class`.
    public var kind: String
    public var version: String
    public var devices: [Device]
    /// Edits every device of this spec brings along.
    public var edits: Edits

    public struct Device: Sendable, Equatable {
        public var name: String
        public var edits: Edits
        public init(name: String, edits: Edits) { self.name = name; self.edits = edits }
    }

    public init(kind: String, version: String, devices: [Device], edits: Edits) {
        self.kind = kind; self.version = version; self.devices = devices; self.edits = edits
    }

    public struct Edits: Sendable, Equatable {
        public var env: [String] = []
        public var deviceNodes: [DeviceNode] = []
        public var mounts: [Mount] = []
        public var hooks: [Hook] = []
        public init() {}

        public var isEmpty: Bool { env.isEmpty && deviceNodes.isEmpty && mounts.isEmpty && hooks.isEmpty }

        /// `self` then `other`, as the CDI library merges a spec's and a device's edits.
        public func merged(with other: Edits) -> Edits {
            var out = self
            out.env += other.env; out.deviceNodes += other.deviceNodes
            out.mounts += other.mounts; out.hooks += other.hooks
            return out
        }
    }

    public struct DeviceNode: Sendable, Equatable {
        /// Path in the container.
        public var path: String
        /// Path on the host; nil: `path`.
        public var hostPath: String?
        /// `c`, `b` (or `u`, unbuffered char); nil: from the host node.
        public var type: String?
        public var major: Int64?
        public var minor: Int64?
        /// Any of `r`, `w`, `m`; nil: `rwm`.
        public var permissions: String?
        public var fileMode: UInt32?
        public var uid: UInt32?
        public var gid: UInt32?
        public init(path: String, hostPath: String?, type: String?, major: Int64?, minor: Int64?, permissions: String?,
                    fileMode: UInt32?, uid: UInt32?, gid: UInt32?) {
            self.path = path; self.hostPath = hostPath; self.type = type; self.major = major; self.minor = minor
            self.permissions = permissions; self.fileMode = fileMode; self.uid = uid; self.gid = gid
        }
    }

    public struct Mount: Sendable, Equatable {
        public var hostPath: String
        public var containerPath: String
        public var options: [String]
        public var type: String?
        public init(hostPath: String, containerPath: String, options: [String], type: String?) {
            self.hostPath = hostPath; self.containerPath = containerPath; self.options = options; self.type = type
        }
    }

    public struct Hook: Sendable, Equatable {
        public var hookName: String
        public var path: String
        public var args: [String]
        public var env: [String]
        /// Seconds the hook may run; nil: the runner's default.
        public var timeout: Int?
        public init(hookName: String, path: String, args: [String], env: [String], timeout: Int? = nil) {
            self.hookName = hookName; self.path = path; self.args = args; self.env = env; self.timeout = timeout
        }
    }

    /// `vendor.com/class=name` for each device.
    public var qualifiedNames: [String] { devices.map { "\(kind)=\($0.name)" } }

    /// The edits a container gets for `device`: the spec's, then the device's.
    public func edits(for device: Device) -> Edits { edits.merged(with: device.edits) }

    /// `kind`: a vendor (a domain-like name) and a class, `vendor.com/class`.
    public static func isKind(_ s: String) -> Bool {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return false }
        func ok(_ p: Substring, extra: Set<Character>) -> Bool {
            guard let f = p.first, let l = p.last, f.isLetter || f.isNumber, l.isLetter || l.isNumber else { return false }
            return p.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || extra.contains($0) }
        }
        return ok(parts[0], extra: [".", "-"]) && ok(parts[1], extra: ["-", "_", "."])
    }

    /// A device name: letters, digits, `-`, `_`, `.`, `:`, starting and
    /// ending with a letter or digit.
    public static func isDeviceName(_ s: String) -> Bool {
        guard let f = s.first, let l = s.last, f.isASCII && (f.isLetter || f.isNumber), l.isASCII && (l.isLetter || l.isNumber)
        else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.:".contains($0)) }
    }

    /// `vendor.com/class=name` split in two; nil when it is not one.
    public static func parseQualified(_ s: String) -> (kind: String, name: String)? {
        guard let eq = s.firstIndex(of: "=") else { return nil }
        let kind = String(s[..<eq]), name = String(s[s.index(after: eq)...])
        guard isKind(kind), isDeviceName(name) else { return nil }
        return (kind, name)
    }

    // MARK: reading

    /// Parses one spec file's text (JSON or YAML); errors start with `file`.
    public init(text: String, file: String) throws {
        do {
            let node: SpecNode
            let start = text.first { !$0.isWhitespace }
            if start == "{" {
                node = try SpecNode.parseJSON(text)
            } else {
                let docs = try SpecNode.yamlDocuments(text)
                guard docs.count == 1, let doc = docs.first else {
                    throw HearthError.invalid("expected one YAML document, got \(docs.count)")
                }
                node = try SpecNode(yaml: doc, path: "")
            }
            try self.init(node: node)
        } catch {
            let e = error as? HearthError ?? HearthError.invalid("\(error)")
            throw HearthError(e.code, "\(file): \(e.message)")
        }
    }

    init(node: SpecNode) throws {
        let r = try SpecReader(node, path: "", what: "a CDI spec (a mapping with cdiVersion, kind and devices)")
        version = try r.requiredString("cdiVersion")
        guard Self.supportedVersions.contains(version) else {
            throw SpecReader.error("cdiVersion", "\"\(version)\" is not a CDI version Hearth reads; expected one of \(Self.supportedVersions.joined(separator: ", "))")
        }
        kind = try r.requiredString("kind")
        guard Self.isKind(kind) else {
            throw SpecReader.error("kind", "\"\(kind)\" is not a CDI kind; expected vendor.com/class")
        }
        edits = try Self.edits(r.node("containerEdits"), path: "containerEdits")
        guard let list = r.node("devices") else { throw SpecReader.error("devices", "missing; a CDI spec lists its devices") }
        guard case .sequence(let items) = list.value, !items.isEmpty else {
            throw SpecReader.error("devices", "expected a non-empty list of devices")
        }
        var seen = Set<String>()
        devices = try items.enumerated().map { i, item in
            let path = "devices[\(i)]"
            let d = try SpecReader(item, path: path, what: "a device (a mapping with name and containerEdits)")
            let name = try d.requiredString("name")
            guard Self.isDeviceName(name) else {
                throw SpecReader.error(d.path("name"), "\"\(name)\" is not a CDI device name; use letters, digits, '-', '_', '.' or ':'")
            }
            guard seen.insert(name).inserted else { throw SpecReader.error(d.path("name"), "\"\(name)\" appears twice") }
            return Device(name: name, edits: try Self.edits(d.node("containerEdits"), path: d.path("containerEdits")))
        }
    }

    public static let supportedVersions = ["0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0"]

    private static func edits(_ node: SpecNode?, path: String) throws -> Edits {
        var out = Edits()
        guard let node else { return out }
        let r = try SpecReader(node, path: path, what: "containerEdits (env, deviceNodes, mounts, hooks)")
        out.env = try r.list("env", SpecReader.string)
        for (i, e) in out.env.enumerated() where !e.contains("=") || e.hasPrefix("=") || e.utf8.contains(0) {
            throw SpecReader.error("\(r.path("env"))[\(i)]", "\(e.debugDescription) is not NAME=value")
        }
        out.deviceNodes = try r.list("deviceNodes") { n, p in
            let d = try SpecReader(n, path: p, what: "a device node (path, hostPath, type, major, minor, permissions)")
            let node = DeviceNode(
                path: try d.requiredString("path"), hostPath: try d.string("hostPath"), type: try d.string("type"),
                major: try d.int("major").map(Int64.init), minor: try d.int("minor").map(Int64.init),
                permissions: try d.string("permissions"), fileMode: try d.int("fileMode").map { UInt32(truncatingIfNeeded: $0) },
                uid: try d.int("uid").map { UInt32(truncatingIfNeeded: $0) }, gid: try d.int("gid").map { UInt32(truncatingIfNeeded: $0) })
            guard node.path.hasPrefix("/dev/"), !node.path.split(separator: "/").contains("..") else {
                throw SpecReader.error(d.path("path"), "\(node.path.debugDescription) is not a path under /dev")
            }
            if let h = node.hostPath, !h.hasPrefix("/") {
                throw SpecReader.error(d.path("hostPath"), "\(h.debugDescription) is not an absolute path")
            }
            if let t = node.type, !["c", "b", "u"].contains(t) {
                throw SpecReader.error(d.path("type"), "\"\(t)\" is not a device type; expected c, b or u")
            }
            if let p = node.permissions, p.isEmpty || !p.allSatisfy({ "rwm".contains($0) }) {
                throw SpecReader.error(d.path("permissions"), "\"\(p)\" is not a permission set; expected letters from r, w and m")
            }
            return node
        }
        out.mounts = try r.list("mounts") { n, p in
            let m = try SpecReader(n, path: p, what: "a mount (hostPath, containerPath, options, type)")
            let mount = Mount(hostPath: try m.requiredString("hostPath"), containerPath: try m.requiredString("containerPath"),
                              options: try m.list("options", SpecReader.string), type: try m.string("type"))
            for (field, v) in [("hostPath", mount.hostPath), ("containerPath", mount.containerPath)] where !v.hasPrefix("/") {
                throw SpecReader.error(m.path(field), "\(v.debugDescription) is not an absolute path")
            }
            return mount
        }
        out.hooks = try r.list("hooks") { n, p in
            let h = try SpecReader(n, path: p, what: "a hook (hookName, path, args, env, timeout)")
            let hook = Hook(hookName: try h.requiredString("hookName"), path: try h.requiredString("path"),
                            args: try h.list("args", SpecReader.string), env: try h.list("env", SpecReader.string),
                            timeout: try h.int("timeout"))
            if !hook.path.hasPrefix("/") {
                throw SpecReader.error(h.path("path"), "\(hook.path.debugDescription) is not an absolute path")
            }
            if let t = hook.timeout, t < 1 {
                throw SpecReader.error(h.path("timeout"), "\(t) is not allowed; a hook's timeout is at least 1 second")
            }
            return hook
        }
        return out
    }
}
