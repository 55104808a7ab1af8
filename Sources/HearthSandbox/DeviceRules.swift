import HearthCore

/// What a replica may do with device nodes: an allow-list, everything else
/// refused (cgroup v1 `devices` controller, cgroup v2 BPF_CGROUP_DEVICE).
/// Root in a replica keeps CAP_MKNOD, so without it any node it makes
/// (a host disk, /dev/kvm, a GPU) would open.
public struct DeviceRule: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Character, Sendable, Hashable {
        case char = "c", block = "b"
    }

    /// Access bits, as the kernel's BPF_DEVCG_ACC_* (mknod 1, read 2, write 4).
    public struct Access: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let mknod = Access(rawValue: 1)
        public static let read = Access(rawValue: 2)
        public static let write = Access(rawValue: 4)
        public static let all: Access = [.read, .write, .mknod]
    }

    /// Largest device numbers Linux encodes (12-bit major, 20-bit minor).
    public static let maxMajor: UInt32 = 0xfff
    public static let maxMinor: UInt32 = 0xf_ffff

    public var kind: Kind
    /// nil: any.
    public var major: UInt32?
    /// nil: any.
    public var minor: UInt32?
    public var access: Access

    /// Refuses numbers Linux cannot encode and an empty access set.
    public init(_ kind: Kind, major: UInt32?, minor: UInt32?, access: Access = .all) throws {
        if let major, major > Self.maxMajor {
            throw HearthError.invalid("device rule: major \(major) is over \(Self.maxMajor)")
        }
        if let minor, minor > Self.maxMinor {
            throw HearthError.invalid("device rule: minor \(minor) is over \(Self.maxMinor)")
        }
        if access.isEmpty { throw HearthError.invalid("device rule: access must name at least one of r, w, m") }
        self.kind = kind; self.major = major; self.minor = minor; self.access = access
    }

    /// For the constants below, which are in range by inspection.
    private init(known kind: Kind, _ major: UInt32?, _ minor: UInt32?, _ access: Access = .all) {
        self.kind = kind; self.major = major; self.minor = minor; self.access = access
    }

    /// The cgroup v1 `devices.allow` form: `c 1:3 rwm`, `c 136:* rwm`, `b *:* m`.
    public var description: String {
        var letters = ""
        if access.contains(.read) { letters += "r" }
        if access.contains(.write) { letters += "w" }
        if access.contains(.mknod) { letters += "m" }
        return "\(kind.rawValue) \(major.map(String.init) ?? "*"):\(minor.map(String.init) ?? "*") \(letters)"
    }

    /// Whether this rule allows `access` on the device: every bit asked for
    /// must be in the rule (the kernel asks read and write together for O_RDWR).
    public func allows(_ kind: Kind, major: UInt32, minor: UInt32, access asked: Access) -> Bool {
        self.kind == kind && (self.major ?? major) == major && (self.minor ?? minor) == minor
            && access.isSuperset(of: asked)
    }

    /// What every replica gets, as Docker gives every container: mknod of
    /// any node (so images that make nodes still build; opening is what is
    /// refused), and the standard devices the spawn path puts in /dev:
    /// null, zero, full, random, urandom, tty, ptmx (devpts' 5:2) and the
    /// pty slaves (136:*).
    public static let standard: [DeviceRule] = [
        DeviceRule(known: .char, nil, nil, .mknod),
        DeviceRule(known: .block, nil, nil, .mknod),
        DeviceRule(known: .char, 1, 3), DeviceRule(known: .char, 1, 5), DeviceRule(known: .char, 1, 7),
        DeviceRule(known: .char, 1, 8), DeviceRule(known: .char, 1, 9), DeviceRule(known: .char, 5, 0),
        DeviceRule(known: .char, 5, 2), DeviceRule(known: .char, 136, nil),
    ]

    /// Whether a list of rules allows `access` (default deny).
    public static func allowed(by rules: [DeviceRule], _ kind: Kind, major: UInt32, minor: UInt32,
                               access: Access) -> Bool {
        rules.contains { $0.allows(kind, major: major, minor: minor, access: access) }
    }
}


/// A device node made in a replica's /dev (a CDI device's `deviceNodes`).
public struct DeviceNode: Sendable, Equatable {
    /// Under /dev.
    public var path: String
    public var kind: DeviceRule.Kind
    public var major: UInt32
    public var minor: UInt32
    /// Permission bits (0666 unless the spec says).
    public var mode: UInt32
    public init(path: String, kind: DeviceRule.Kind, major: UInt32, minor: UInt32, mode: UInt32) {
        self.path = path; self.kind = kind; self.major = major; self.minor = minor; self.mode = mode
    }
}
