import CHearth
import Glibc
import HearthCore
import Synchronization
import HearthOS

/// Host id ranges for replicas that run in a user namespace: each such
/// replica gets a range of its own (65536 ids: root inside is the first),
/// so two replicas never share a host uid, and none is a uid the host uses.
/// The ranges start at 0x70000000 (1879048192), in the span systemd leaves
/// unused above its container ranges (0x00080000–0x6FFFFFFF) and below its
/// foreign range (0x7FFE0000); 4094 ranges fit.
public final class UserNamespaces: Sendable {
    public static let rangeSize: UInt32 = 65536
    public static let firstBase: UInt32 = 0x7000_0000
    public static let slots = Int((0x7FFE_0000 - 0x7000_0000) / 65536)

    private let used = Mutex<Set<Int>>([])
    private let next = Atomic<Int>(0)

    public init() {}

    /// A replica's range and the namespace that maps it.
    public struct Lease: Sendable {
        public let slot: Int
        public let base: UInt32
        public var count: UInt32 { UserNamespaces.rangeSize }
        /// The host id of `id` inside the namespace.
        public func host(_ id: UInt32) -> UInt32 { base &+ id }
    }

    /// Takes a free range; throws when all are in use.
    public func take() throws -> Lease {
        let start = next.wrappingAdd(1, ordering: .relaxed).oldValue
        let slot: Int? = used.withLock { used in
            // Round-robin from a moving start: a freed range is not reused at
            // once, so no file a dead replica left can meet a new owner soon.
            for i in 0..<Self.slots {
                let s = (start + i) % Self.slots
                if !used.contains(s) {
                    used.insert(s)
                    return s
                }
            }
            return nil
        }
        guard let slot else {
            throw HearthError(.unavailable, "user namespaces: all \(Self.slots) host id ranges are in use; remove replicas or run fewer with user_namespace")
        }
        return Lease(slot: slot, base: Self.firstBase + UInt32(slot) * Self.rangeSize)
    }

    /// The lease of an adopted replica (a previous daemon took it): nil
    /// when `base` is not a range's start or the range is already in use.
    public func reserve(base: UInt32) -> Lease? {
        guard base >= Self.firstBase, (base - Self.firstBase) % Self.rangeSize == 0 else { return nil }
        let slot = Int((base - Self.firstBase) / Self.rangeSize)
        guard slot < Self.slots, used.withLock({ $0.insert(slot).inserted }) else { return nil }
        return Lease(slot: slot, base: base)
    }

    public func release(_ lease: Lease) {
        _ = used.withLock { $0.remove(lease.slot) }
    }

    /// A new user namespace mapping the lease's range to 0…65535 inside.
    public func open(_ lease: Lease) throws -> Int32 {
        var err: Int32 = 0
        let fd = hearth_userns_open(lease.base, lease.base, lease.count, &err)
        guard fd >= 0 else {
            throw SystemError("create a user namespace for host ids \(lease.base)…\(lease.base + lease.count - 1)", "", errno: err)
        }
        return fd
    }
}

/// Moves what the daemon made for a replica into its id range: an owner
/// `id` (a uid inside) becomes `base + id` on the host. Ids already in a
/// range, or beyond the range's size, are left as they are.
enum IDShift {
    static func shift(_ path: String, into lease: UserNamespaces.Lease, recursive: Bool) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw SystemError.current("stat", path) }
        if st.st_uid < lease.count || st.st_gid < lease.count {
            let uid = st.st_uid < lease.count ? lease.host(st.st_uid) : st.st_uid
            let gid = st.st_gid < lease.count ? lease.host(st.st_gid) : st.st_gid
            guard lchown(path, uid, gid) == 0 else { throw SystemError.current("chown", path) }
            // chown clears set-id bits; restore the mode of what is not a link.
            if st.st_mode & S_IFMT != S_IFLNK, chmod(path, st.st_mode & 0o7777) != 0 {
                throw SystemError.current("chmod", path)
            }
        }
        guard recursive, st.st_mode & S_IFMT == S_IFDIR else { return }
        for entry in try FS.list(path: path, noFollow: true) {
            try shift(path + "/" + String(decoding: entry.name, as: UTF8.self), into: lease, recursive: true)
        }
    }
}
