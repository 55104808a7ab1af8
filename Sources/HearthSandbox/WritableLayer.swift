import Foundation
import Glibc
import HearthCore
import Synchronization

/// How much a replica's writable layer (the overlay's upper and work
/// directories) takes on disk: the allocated blocks (`st_blocks` × 512) of
/// every entry, the way `du` and the kubelet count, so a sparse file costs
/// what it allocates and a directory of empty files costs its inodes' blocks.
///
/// The tree belongs to an untrusted replica, so the walk never follows a
/// symlink: each directory is opened one component at a time with
/// `O_NOFOLLOW | O_DIRECTORY` from the root's fd (no path is ever resolved
/// whole, so neither a symlink swapped in nor a path longer than PATH_MAX can
/// lead it elsewhere or hide a subtree). It is resumable: `step` does a
/// bounded amount of work (directory opens plus entries read) and continues
/// where it stopped on the next call, holding at most one open directory.
/// Hard links are counted once per name (a replica that links one file many
/// times only overstates its own usage).
struct DiskUsageWalk: ~Copyable {
    enum Progress: Equatable {
        /// The walk is still going; bytes counted so far.
        case partial(Int64)
        /// The walk finished; the total. The next `step` starts a new walk.
        case done(Int64)
    }

    let roots: [String]
    /// Directories still to read: (index into roots, path components).
    private var pending: [(Int, [[UInt8]])] = []
    /// The directory being read, and where it sits.
    private var current: OpaquePointer?
    private var currentPath: (Int, [[UInt8]]) = (0, [])
    private var total: Int64 = 0
    private var started = false

    init(roots: [String]) { self.roots = roots }

    deinit { if let current { closedir(current) } }

    mutating func close() {
        if let current { closedir(current) }
        current = nil
    }

    /// Does at most about `budget` units of work (one per directory opened
    /// or component walked, one per entry read).
    mutating func step(budget: Int) -> Progress {
        if !started {
            started = true
            total = 0
            pending = roots.indices.map { ($0, []) }
            // The roots' own blocks.
            for root in roots {
                var st = stat()
                if lstat(root, &st) == 0 { total &+= Int64(st.st_blocks) &* 512 }
            }
        }
        var work = 0
        while work < budget {
            if current == nil {
                guard let next = pending.popLast() else {
                    started = false
                    return .done(total)
                }
                work += next.1.count + 1
                guard let dir = open(next) else { continue }
                current = dir
                currentPath = next
            }
            guard let dir = current else { continue }
            let fd = dirfd(dir)
            while work < budget {
                guard let entry = readdir(dir) else {
                    closedir(dir)
                    current = nil
                    break
                }
                work += 1
                var name = withUnsafeBytes(of: entry.pointee.d_name) { raw -> [UInt8] in
                    Array(raw.prefix(while: { $0 != 0 }))
                }
                if name == [0x2e] || name == [0x2e, 0x2e] { continue }
                name.append(0)
                var st = stat()
                let rc = fstatat(fd, name.map { CChar(bitPattern: $0) }, &st, AT_SYMLINK_NOFOLLOW)
                guard rc == 0 else { continue }  // removed meanwhile
                total &+= Int64(st.st_blocks) &* 512
                if (st.st_mode & S_IFMT) == S_IFDIR {
                    name.removeLast()
                    pending.append((currentPath.0, currentPath.1 + [name]))
                }
            }
        }
        return .partial(total)
    }

    /// Opens a directory of the tree component by component, refusing
    /// symlinks at every step; nil when it is gone or is not a directory.
    private func open(_ path: (Int, [[UInt8]])) -> OpaquePointer? {
        var fd = Glibc.open(roots[path.0], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        for component in path.1 {
            let next = openat(fd, (component + [0]).map { CChar(bitPattern: $0) },
                              O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            Glibc.close(fd)
            guard next >= 0 else { return nil }
            fd = next
        }
        guard let dir = fdopendir(fd) else {
            Glibc.close(fd)
            return nil
        }
        return dir
    }
}

/// Why a replica was killed by the daemon rather than by its own doing.
public struct Eviction: Sendable, Equatable {
    public var usage: Int64
    public var limit: Int64
    public var replica: String

    /// `replica my-env-… wrote 71.2Mi to its writable layer, over the
    /// ephemeral_storage limit 50Mi; it was evicted`
    public var message: String {
        "replica \(replica) wrote \(Admission.formatMemory(usage)) to its writable layer, over the ephemeral_storage limit \(Admission.formatMemory(limit)); it was evicted"
    }
}

/// Measures the writable layers of replicas with an `ephemeral_storage`
/// limit, as the kubelet does, and evicts (kills) a replica over it. One
/// thread of its own (never Swift's cooperative pool) wakes every
/// `interval`; each pass walks at most `entriesPerPass` entries of each
/// replica's tree (a larger tree is measured over several passes) and stops
/// a walk as soon as its count passes the limit.
///
/// Between two passes a fast writer can go past its limit by what the disk
/// takes in one interval; `hearthd --scratch DIR` keeps that on a
/// filesystem of its own, away from the state root.
public final class StorageWatch: Sendable {
    public static let interval = Duration.seconds(1)
    public static let entriesPerPass = 50_000

    final class Entry: Sendable {
        let name: String
        let limit: Int64
        let walk: Mutex<DiskUsageWalk>
        let active = Atomic<Bool>(true)
        let onExceeded: @Sendable (Eviction) -> Void

        init(name: String, roots: [String], limit: Int64, onExceeded: @escaping @Sendable (Eviction) -> Void) {
            self.name = name
            self.limit = limit
            self.walk = Mutex(DiskUsageWalk(roots: roots))
            self.onExceeded = onExceeded
        }
    }

    private let entries = Mutex<[String: Entry]>([:])
    private let threadStarted = Atomic<Bool>(false)

    public init() {}

    /// Starts measuring `roots` (a replica's upper and work directories)
    /// against `limit`; `onExceeded` runs once, on the watch's thread, when
    /// the usage passes it. Replaces an earlier watch of the same name.
    public func watch(name: String, roots: [String], limit: Int64,
                      onExceeded: @escaping @Sendable (Eviction) -> Void) {
        let entry = Entry(name: name, roots: roots, limit: limit, onExceeded: onExceeded)
        let old = entries.withLock { e -> Entry? in
            let old = e[name]
            e[name] = entry
            return old
        }
        if let old { stop(old) }
        if !threadStarted.exchange(true, ordering: .relaxed) {
            Thread.detachNewThread { [weak self] in
                while true {
                    usleep(UInt32(Self.interval.components.seconds * 1_000_000))
                    // No strong reference across the sleep: a runtime that
                    // goes away ends its thread.
                    guard let watch = self else { return }
                    watch.pass()
                }
            }
        }
    }

    /// Stops measuring `name` (its replica is being torn down).
    public func unwatch(name: String) {
        if let entry = entries.withLock({ $0.removeValue(forKey: name) }) { stop(entry) }
    }

    private func stop(_ entry: Entry) {
        entry.active.store(false, ordering: .relaxed)
        // Waits for a step in progress on the watch's thread, then closes.
        entry.walk.withLock { $0.close() }
    }

    /// One pass over every watched replica.
    func pass() {
        let all = entries.withLock { Array($0.values) }
        for entry in all where entry.active.load(ordering: .relaxed) {
            let progress = entry.walk.withLock { $0.step(budget: Self.entriesPerPass) }
            let counted: Int64
            switch progress {
            case .partial(let n), .done(let n): counted = n
            }
            guard counted > entry.limit, entry.active.exchange(false, ordering: .relaxed) else { continue }
            entries.withLock { e in if e[entry.name] === entry { e.removeValue(forKey: entry.name) } }
            entry.walk.withLock { $0.close() }
            entry.onExceeded(Eviction(usage: counted, limit: entry.limit, replica: entry.name))
        }
    }
}
