#if canImport(Glibc)
import Glibc
#endif
import CHearth
import HearthCore

/// Host paths a client names (volume mounts), opened so that what is
/// opened is what was checked: every component is resolved beneath the
/// operator's prefix by the kernel (openat2), so neither a symlink nor a
/// `..` planted on the way can lead out of it, and the fd, not the path,
/// is what gets mounted.
public enum HostPath {
    /// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` (linux/openat2.h).
    private static let resolve: UInt64 = 0x08 | 0x02
    /// O_PATH (Glibc's module leaves it out: it is _GNU_SOURCE).
    private static let oPath: Int32 = 0o10000000

    /// An O_PATH fd for the directory `path`, which must lie beneath
    /// `prefix` (both absolute; `prefix` is trusted, `path` is not).
    public static func openDirectory(_ path: String, beneath prefix: String) throws -> OwnedFD {
        guard let rel = relative(path, to: prefix) else {
            throw SystemError("open", path, errno: EXDEV)
        }
        let root = try OwnedFD.open(prefix, oPath | O_DIRECTORY)
        let fd = rel.isEmpty ? hearth_openat2(root.raw, ".", oPath | O_DIRECTORY | O_CLOEXEC, 0, resolve)
            : hearth_openat2(root.raw, rel, oPath | O_DIRECTORY | O_CLOEXEC, 0, resolve)
        guard fd >= 0 else { throw SystemError.current("open", path) }
        return OwnedFD(owning: fd)
    }

    /// A detached copy of the mount at `dir` (not its submounts), nosuid,
    /// nodev and read-only if asked: what a spawn attaches (FSOp.attach).
    public static func detachedTree(of dir: OwnedFD, readOnly: Bool, display: String) throws -> OwnedFD {
        let fd = hearth_detached_tree(dir.raw, readOnly ? 1 : 0)
        guard fd >= 0 else { throw SystemError.current("open_tree", display) }
        return OwnedFD(owning: fd)
    }

    /// `path` below `prefix`, component-wise ("" for the prefix itself);
    /// nil when it is not under it.
    public static func relative(_ path: String, to prefix: String) -> String? {
        let p = prefix.count > 1 && prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        if path == p { return "" }
        let start = p == "/" ? "/" : p + "/"
        guard path.hasPrefix(start) else { return nil }
        return String(path.dropFirst(start.count))
    }
}
