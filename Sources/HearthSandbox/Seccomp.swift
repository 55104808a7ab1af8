import Foundation
import HearthCore

/// A seccomp profile in the OCI runtime-spec format (`linux.seccomp`), as
/// Docker, Podman and Kubernetes write them. Decoding validates: an unknown
/// action, operator, architecture or flag is refused with a message that
/// names the field and the value, e.g.
/// `seccomp profile: syscalls[3].action: unknown action "SCMP_ACT_FOO"`.
/// Unknown syscall names are accepted here and skipped at compilation, as
/// Docker does, so one profile serves kernels of different ages. Keys this
/// model does not know (listenerPath, Docker's archMap/includes/comment) are
/// ignored.
public struct SeccompProfile: Codable, Sendable, Hashable {
    public enum Action: String, Codable, Sendable, Hashable, CaseIterable {
        case allow = "SCMP_ACT_ALLOW"
        case errno = "SCMP_ACT_ERRNO"
        /// Same as killThread, as in libseccomp.
        case kill = "SCMP_ACT_KILL"
        case killProcess = "SCMP_ACT_KILL_PROCESS"
        case killThread = "SCMP_ACT_KILL_THREAD"
        case trap = "SCMP_ACT_TRAP"
        case trace = "SCMP_ACT_TRACE"
        case log = "SCMP_ACT_LOG"

        public init(from decoder: any Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let action = Action(rawValue: text) else {
                let hint = text == "SCMP_ACT_NOTIFY"
                    ? "unsupported action \"\(text)\" (Hearth has no seccomp agent)"
                    : "unknown action \"\(text)\"; expected one of " + Action.allCases.map(\.rawValue).joined(separator: ", ")
                throw SeccompProfile.error(at: decoder.codingPath, hint)
            }
            self = action
        }

        /// Whether `errnoRet` means something for this action.
        public var takesErrno: Bool { self == .errno || self == .trace }
    }

    public enum Operator: String, Codable, Sendable, Hashable, CaseIterable {
        case notEqual = "SCMP_CMP_NE"
        case lessThan = "SCMP_CMP_LT"
        case lessOrEqual = "SCMP_CMP_LE"
        case equal = "SCMP_CMP_EQ"
        case greaterOrEqual = "SCMP_CMP_GE"
        case greaterThan = "SCMP_CMP_GT"
        /// `(arg & value) == valueTwo`.
        case maskedEqual = "SCMP_CMP_MASKED_EQ"

        public init(from decoder: any Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let op = Operator(rawValue: text) else {
                throw SeccompProfile.error(at: decoder.codingPath,
                    "unknown operator \"\(text)\"; expected one of " + Operator.allCases.map(\.rawValue).joined(separator: ", "))
            }
            self = op
        }
    }

    public enum Architecture: String, Codable, Sendable, Hashable, CaseIterable {
        case x86 = "SCMP_ARCH_X86"
        case x86_64 = "SCMP_ARCH_X86_64"
        case x32 = "SCMP_ARCH_X32"
        case arm = "SCMP_ARCH_ARM"
        case aarch64 = "SCMP_ARCH_AARCH64"
        case mips = "SCMP_ARCH_MIPS"
        case mips64 = "SCMP_ARCH_MIPS64"
        case mips64n32 = "SCMP_ARCH_MIPS64N32"
        case mipsel = "SCMP_ARCH_MIPSEL"
        case mipsel64 = "SCMP_ARCH_MIPSEL64"
        case mipsel64n32 = "SCMP_ARCH_MIPSEL64N32"
        case ppc = "SCMP_ARCH_PPC"
        case ppc64 = "SCMP_ARCH_PPC64"
        case ppc64le = "SCMP_ARCH_PPC64LE"
        case s390 = "SCMP_ARCH_S390"
        case s390x = "SCMP_ARCH_S390X"
        case riscv64 = "SCMP_ARCH_RISCV64"

        public init(from decoder: any Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let arch = Architecture(rawValue: text) else {
                throw SeccompProfile.error(at: decoder.codingPath, "unknown architecture \"\(text)\"")
            }
            self = arch
        }

        /// libseccomp's name for the architecture (seccomp_arch_resolve_name).
        public var libseccompName: String {
            String(rawValue.dropFirst("SCMP_ARCH_".count)).lowercased()
        }
    }

    /// seccomp(2) filter flags the profile may name. Only TSYNC is accepted:
    /// the spawn path loads the filter in a single-threaded child without
    /// flags, so TSYNC is moot, while LOG, SPEC_ALLOW and the others would
    /// change behaviour that Hearth would then silently not deliver.
    public static let supportedFlags: Set<String> = ["SECCOMP_FILTER_FLAG_TSYNC"]
    static let knownFlags: Set<String> = [
        "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    ]

    /// One comparison on a syscall argument.
    public struct Arg: Codable, Sendable, Hashable {
        /// Argument number, 0...5.
        public var index: UInt32
        public var value: UInt64
        /// The datum compared with for MASKED_EQ (value is the mask).
        public var valueTwo: UInt64
        public var op: Operator

        public init(index: UInt32, value: UInt64, valueTwo: UInt64 = 0, op: Operator) {
            self.index = index; self.value = value; self.valueTwo = valueTwo; self.op = op
        }

        enum CodingKeys: String, CodingKey { case index, value, valueTwo, op }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let path = decoder.codingPath
            guard let index = try SeccompProfile.integer(c, .index, path: path) else {
                throw SeccompProfile.error(at: path + [CodingKeys.index], "missing")
            }
            guard index <= 5 else {
                throw SeccompProfile.error(at: path + [CodingKeys.index], "argument index \(index) is out of range 0...5")
            }
            self.index = UInt32(index)
            value = try SeccompProfile.integer(c, .value, path: path) ?? 0
            valueTwo = try SeccompProfile.integer(c, .valueTwo, path: path) ?? 0
            op = try c.decode(Operator.self, forKey: .op)
        }
    }

    /// A rule: `action` for the syscalls `names`, when all `args` match.
    public struct Syscall: Codable, Sendable, Hashable {
        public var names: [String]
        public var action: Action
        /// For ERRNO: the errno returned (default EPERM); for TRACE: the
        /// value handed to the tracer.
        public var errnoRet: UInt32?
        public var args: [Arg]

        public init(names: [String], action: Action, errnoRet: UInt32? = nil, args: [Arg] = []) {
            self.names = names; self.action = action; self.errnoRet = errnoRet; self.args = args
        }

        enum CodingKeys: String, CodingKey { case names, name, action, errnoRet, args }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            // Older Docker profiles spell a single syscall as "name".
            if let names = try c.decodeIfPresent([String].self, forKey: .names) {
                self.names = names
            } else if let name = try c.decodeIfPresent(String.self, forKey: .name) {
                self.names = [name]
            } else {
                throw SeccompProfile.error(at: decoder.codingPath + [CodingKeys.names], "missing; list the syscalls")
            }
            guard !names.isEmpty else {
                throw SeccompProfile.error(at: decoder.codingPath + [CodingKeys.names], "empty; list the syscalls")
            }
            action = try c.decode(Action.self, forKey: .action)
            args = try c.decodeIfPresent([Arg].self, forKey: .args) ?? []
            errnoRet = try SeccompProfile.errno(c, .errnoRet, action: action, path: decoder.codingPath)
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(names, forKey: .names)
            try c.encode(action, forKey: .action)
            try c.encodeIfPresent(errnoRet, forKey: .errnoRet)
            if !args.isEmpty { try c.encode(args, forKey: .args) }
        }
    }

    public var defaultAction: Action
    /// The errno of an ERRNO default action; EPERM when absent.
    public var defaultErrnoRet: UInt32?
    /// Architectures the filter accepts besides the native one; empty means
    /// the native architecture only. Other architectures' syscalls hit
    /// libseccomp's bad-architecture action, which kills.
    public var architectures: [Architecture]
    public var flags: [String]
    public var syscalls: [Syscall]

    public init(defaultAction: Action, defaultErrnoRet: UInt32? = nil, architectures: [Architecture] = [],
                flags: [String] = [], syscalls: [Syscall]) {
        self.defaultAction = defaultAction
        self.defaultErrnoRet = defaultErrnoRet
        self.architectures = architectures
        self.flags = flags
        self.syscalls = syscalls
    }

    enum CodingKeys: String, CodingKey { case defaultAction, defaultErrnoRet, architectures, flags, syscalls }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        defaultAction = try c.decode(Action.self, forKey: .defaultAction)
        defaultErrnoRet = try Self.errno(c, .defaultErrnoRet, action: defaultAction, path: decoder.codingPath)
        architectures = try c.decodeIfPresent([Architecture].self, forKey: .architectures) ?? []
        flags = try c.decodeIfPresent([String].self, forKey: .flags) ?? []
        syscalls = try c.decodeIfPresent([Syscall].self, forKey: .syscalls) ?? []
        for (i, flag) in flags.enumerated() where !Self.supportedFlags.contains(flag) {
            let path = decoder.codingPath + [CodingKeys.flags, IndexKey(i)]
            throw Self.error(at: path, Self.knownFlags.contains(flag)
                ? "flag \"\(flag)\" is not supported (the filter is loaded without flags)"
                : "unknown flag \"\(flag)\"")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(defaultAction, forKey: .defaultAction)
        try c.encodeIfPresent(defaultErrnoRet, forKey: .defaultErrnoRet)
        if !architectures.isEmpty { try c.encode(architectures, forKey: .architectures) }
        if !flags.isEmpty { try c.encode(flags, forKey: .flags) }
        try c.encode(syscalls, forKey: .syscalls)
    }

    /// Parses an OCI profile; every error is a HearthError naming the field.
    public static func parse(json: Data) throws -> SeccompProfile {
        do {
            return try JSONDecoder().decode(SeccompProfile.self, from: json)
        } catch let error as HearthError {
            throw error
        } catch let error as DecodingError {
            throw describe(error)
        } catch {
            throw HearthError.invalid("seccomp profile: \(error)")
        }
    }

    /// Reads and parses the profile file at `path`.
    public static func load(path: String) throws -> SeccompProfile {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw HearthError.invalid("seccomp profile \(path): cannot read: \((error as NSError).localizedDescription)")
        }
        do {
            return try parse(json: data)
        } catch let error as HearthError {
            throw HearthError(error.code, error.message.replacingOccurrences(
                of: "seccomp profile:", with: "seccomp profile \(path):", options: .anchored))
        }
    }

    // MARK: - Errors

    /// An optional unsigned integer. Decoded by hand because JSONDecoder
    /// reports a negative or fractional number for an unsigned field as
    /// "not valid JSON", without saying where.
    static func integer<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K,
                                      path: [any CodingKey]) throws -> UInt64? {
        guard c.contains(key), !(try c.decodeNil(forKey: key)) else { return nil }
        if let value = try? c.decode(UInt64.self, forKey: key) { return value }
        if let value = try? c.decode(Int64.self, forKey: key) {
            throw error(at: path + [key], "\(value) is negative; expected a non-negative integer")
        }
        throw error(at: path + [key], "expected a non-negative integer")
    }

    /// errnoRet / defaultErrnoRet: only for ERRNO and TRACE, 16 bits wide
    /// (SECCOMP_RET_DATA).
    static func errno<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K, action: Action,
                                    path: [any CodingKey]) throws -> UInt32? {
        guard let value = try integer(c, key, path: path) else { return nil }
        guard action.takesErrno else {
            throw error(at: path + [key], "only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not \(action.rawValue)")
        }
        guard value <= 0xffff else { throw error(at: path + [key], "\(value) is out of range 0...65535") }
        return UInt32(value)
    }

    static func error(at path: [any CodingKey], _ message: String) -> HearthError {
        HearthError.invalid("seccomp profile: \(render(path)): \(message)")
    }

    /// `syscalls[3].action` from a coding path.
    static func render(_ path: [any CodingKey]) -> String {
        var out = ""
        for key in path {
            if let index = key.intValue {
                out += "[\(index)]"
            } else {
                out += out.isEmpty ? key.stringValue : "." + key.stringValue
            }
        }
        return out.isEmpty ? "(top level)" : out
    }

    static func describe(_ error: DecodingError) -> HearthError {
        switch error {
        case .typeMismatch(let type, let context):
            return Self.error(at: context.codingPath, "expected \(typeName(type))")
        case .valueNotFound(let type, let context):
            return Self.error(at: context.codingPath, "expected \(typeName(type)), found null")
        case .keyNotFound(let key, let context):
            return Self.error(at: context.codingPath + [key], "missing")
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                return HearthError.invalid("seccomp profile: not valid JSON: \(context.debugDescription)")
            }
            return Self.error(at: context.codingPath, context.debugDescription)
        @unknown default:
            return HearthError.invalid("seccomp profile: \(error)")
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is UInt32.Type, is UInt64.Type: return "a non-negative integer"
        case is [Any].Type: return "a list"
        default:
            let name = String(describing: type)
            return name.hasPrefix("Array") ? "a list" : name.hasPrefix("Dictionary") ? "an object" : name
        }
    }

    struct IndexKey: CodingKey {
        var intValue: Int?
        var stringValue: String { "\(intValue ?? 0)" }
        init(_ index: Int) { intValue = index }
        init?(intValue: Int) { self.intValue = intValue }
        init?(stringValue: String) { return nil }
    }
}
