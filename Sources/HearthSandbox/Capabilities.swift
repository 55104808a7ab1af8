import CCap
import Foundation
import Glibc
import HearthCore

/// A set of Linux capabilities as the raw bit mask the kernel uses
/// (bit n = capability n), which is what the spawn plan hands to
/// `capset` and the bounding-set loop.
public struct CapabilitySet: Sendable, Hashable, CustomStringConvertible {
    public var mask: UInt64

    public init(mask: UInt64) { self.mask = mask }

    public static let empty = CapabilitySet(mask: 0)

    /// Docker's default set: CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD,
    /// NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE,
    /// SYS_CHROOT, KILL, AUDIT_WRITE.
    public static let dockerDefault = CapabilitySet(mask: 0x0000_0000_a804_25fb)

    /// Every capability this kernel knows (0 through `lastCap()`).
    public static var all: CapabilitySet {
        let last = min(max(lastCap(), 0), 63)
        return CapabilitySet(mask: last == 63 ? UInt64.max : (UInt64(1) << UInt64(last + 1)) - 1)
    }

    /// Parses names such as `CAP_NET_ADMIN`, `net_admin` (case-insensitive,
    /// prefix optional), or `ALL`.
    public init(names: [String]) throws {
        let parsed = try Self.parse(names, field: "capabilities")
        self = parsed.all ? .all : parsed.set
    }

    /// Docker's `--cap-add`/`--cap-drop` rules applied to `self` as the base
    /// set: `add: [ALL]` gives every capability except those dropped;
    /// `drop: [ALL]` starts from nothing and keeps only what is added;
    /// otherwise the drops are removed from the base and then the adds put
    /// in (so a capability both added and dropped ends up present).
    public func applying(add: [String], drop: [String]) throws -> CapabilitySet {
        let adds = try Self.parse(add, field: "capabilities.add")
        let drops = try Self.parse(drop, field: "capabilities.drop")
        if adds.all { return CapabilitySet(mask: Self.all.mask & ~drops.set.mask) }
        if drops.all { return adds.set }
        return CapabilitySet(mask: (mask & ~drops.set.mask) | adds.set.mask)
    }

    public func contains(_ capability: Int32) -> Bool {
        capability >= 0 && capability < 64 && mask & (UInt64(1) << UInt64(capability)) != 0
    }

    public var isEmpty: Bool { mask == 0 }

    /// `CAP_*` names in capability-number order, for display.
    public var names: [String] {
        (0..<64).compactMap { bit -> String? in
            guard mask & (UInt64(1) << UInt64(bit)) != 0 else { return nil }
            return bit < Self.table.count ? "CAP_" + Self.table[bit] : "CAP_\(bit)"
        }
    }

    public var description: String { names.isEmpty ? "(none)" : names.joined(separator: ", ") }

    /// The highest capability number the running kernel knows, from
    /// /proc/sys/kernel/cap_last_cap; libcap's CAP_LAST_CAP when that is
    /// unreadable (e.g. /proc not mounted).
    public static func lastCap() -> Int32 {
        if let text = try? CgroupFiles.read("/proc/sys/kernel/cap_last_cap"),
           let value = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), value >= 0, value < 64 {
            return value
        }
        return Int32(CAP_LAST_CAP)
    }

    /// Index = capability number, as in linux/capability.h. A table rather
    /// than libcap's cap_from_name so that names are the same whatever libcap
    /// version is installed, and parsing does no allocation through C.
    static let table: [String] = [
        "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
        "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
        "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
        "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
        "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
        "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
    ]

    private static let numbers: [String: Int] = Dictionary(
        uniqueKeysWithValues: table.enumerated().map { ($0.element, $0.offset) })

    /// The capability number for a name, or nil.
    public static func number(of name: String) -> Int32? {
        var key = name.trimmingCharacters(in: .whitespaces).uppercased()
        if key.hasPrefix("CAP_") { key.removeFirst(4) }
        return numbers[key].map { Int32($0) }
    }

    private static func parse(_ names: [String], field: String) throws -> (set: CapabilitySet, all: Bool) {
        var mask: UInt64 = 0
        var all = false
        for name in names {
            let key = name.trimmingCharacters(in: .whitespaces).uppercased()
            if key == "ALL" || key == "CAP_ALL" { all = true; continue }
            guard let bit = number(of: name) else {
                throw HearthError.invalid(
                    "\(field): unknown capability \"\(name)\"; expected a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL")
            }
            mask |= UInt64(1) << UInt64(bit)
        }
        return (CapabilitySet(mask: mask), all)
    }
}
