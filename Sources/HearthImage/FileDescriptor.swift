#if canImport(Glibc)
import Glibc
#endif
import CHearth
import HearthCore

/// An owned file descriptor, closed when the last reference goes away, so
/// that no error path leaks one.
public final class FileDescriptor {
    public let raw: Int32

    public init(owning raw: Int32) {
        self.raw = raw
    }

    deinit {
        _ = Glibc.close(raw)
    }

    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws -> FileDescriptor {
        while true {
            let fd = Glibc.open(path, flags, mode)
            if fd >= 0 { return FileDescriptor(owning: fd) }
            if errno == EINTR { continue }
            throw SystemError.current("open", path)
        }
    }

    /// openat(2) relative to this directory; `display` is the path used in errors.
    public func openAt(_ name: UnsafePointer<CChar>, _ flags: Int32, mode: mode_t = 0, display: String) throws -> FileDescriptor {
        while true {
            let fd = Glibc.openat(raw, name, flags | O_CLOEXEC, mode)
            if fd >= 0 { return FileDescriptor(owning: fd) }
            if errno == EINTR { continue }
            throw SystemError.current("open", display)
        }
    }

    func stat(_ display: String) throws -> stat {
        var st = Glibc.stat()
        guard fstat(raw, &st) == 0 else { throw SystemError.current("stat", display) }
        return st
    }

    /// Writes all of `bytes`, retrying short writes and EINTR.
    func writeAll(_ bytes: UnsafeRawBufferPointer, display: String) throws {
        var done = 0
        while done < bytes.count {
            guard let base = bytes.baseAddress else { return }
            let n = Glibc.write(raw, base + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write", display)
            }
            done += n
        }
    }

    func sync(_ display: String) throws {
        guard fsync(raw) == 0 else { throw SystemError.current("fsync", display) }
    }
}

/// Calls `body` with `bytes` as a NUL-terminated C string. Callers make sure
/// the bytes contain no NUL themselves (tar names are checked when parsed).
@inline(__always)
func withCName<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
    var z = bytes
    z.append(0)
    return try z.withUnsafeBufferPointer { buf in
        try buf.withMemoryRebound(to: CChar.self) { chars in
            // A non-empty buffer (it holds at least the NUL) has a base address.
            try body(chars.baseAddress.unsafelyUnwrapped)
        }
    }
}

/// Filesystem helpers built on *at calls that never follow symlinks; they
/// run on trees that came out of untrusted layers.
enum FS {
    /// `lstat` relative to a directory; nil when the name does not exist.
    static func lstatAt(_ dirfd: Int32, _ name: UnsafePointer<CChar>, display: String) throws -> stat? {
        var st = stat()
        if fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return st }
        if errno == ENOENT { return nil }
        throw SystemError.current("stat", display)
    }

    /// Names in a directory (without `.` and `..`) with their d_type.
    static func list(_ dir: FileDescriptor, display: String) throws -> [(name: [UInt8], type: UInt8)] {
        // fdopendir takes ownership of the descriptor it is given: give it a
        // duplicate, positioned at the start.
        let dupfd = fcntl(dir.raw, F_DUPFD_CLOEXEC, 0)
        guard dupfd >= 0 else { throw SystemError.current("dup", display) }
        guard let stream = fdopendir(dupfd) else {
            let e = errno
            _ = Glibc.close(dupfd)
            throw SystemError("opendir", display, errno: e)
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var out: [(name: [UInt8], type: UInt8)] = []
        while true {
            errno = 0
            guard let ent = readdir(stream) else {
                if errno != 0 { throw SystemError.current("readdir", display) }
                break
            }
            let name: [UInt8] = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                let len = raw.firstIndex(of: 0) ?? raw.count
                return Array(raw[0..<len])
            }
            if name == [0x2e] || name == [0x2e, 0x2e] { continue }
            out.append((name, ent.pointee.d_type))
        }
        return out
    }

    /// Removes `name` in `dir` and, if it is a directory, everything below it,
    /// without following any symlink. Recursion holds one descriptor per
    /// level; the unpacker caps the depth of what it creates.
    static func removeTree(_ dir: FileDescriptor, _ name: [UInt8], display: String) throws {
        try withCName(name) { cname in
            guard let st = try lstatAt(dir.raw, cname, display: display) else { return }
            if (st.st_mode & S_IFMT) != S_IFDIR {
                if unlinkat(dir.raw, cname, 0) != 0 && errno != ENOENT {
                    throw SystemError.current("unlink", display)
                }
                return
            }
            let sub = try dir.openAt(cname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, display: display)
            for entry in try list(sub, display: display) {
                let childDisplay = display + "/" + String(decoding: entry.name, as: UTF8.self)
                if entry.type == DT_DIR || entry.type == DT_UNKNOWN {
                    try removeTree(sub, entry.name, display: childDisplay)
                } else {
                    try withCName(entry.name) { child in
                        if unlinkat(sub.raw, child, 0) != 0 && errno != ENOENT {
                            throw SystemError.current("unlink", childDisplay)
                        }
                    }
                }
            }
            if unlinkat(dir.raw, cname, AT_REMOVEDIR) != 0 && errno != ENOENT {
                throw SystemError.current("rmdir", display)
            }
        }
    }

    /// Removes an absolute path and everything below it (no symlink followed
    /// below the parent). Missing is fine.
    static func removeTree(path: String) throws {
        let (parent, name) = split(path)
        let dir: FileDescriptor
        do {
            dir = try FileDescriptor.open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        } catch let e as SystemError where e.errno == ENOENT {
            return
        }
        try removeTree(dir, Array(name.utf8), display: path)
    }

    /// Bytes of regular files below `dir`, each inode counted once.
    static func treeSize(_ dir: FileDescriptor, display: String) throws -> Int64 {
        var seen = Set<[UInt64]>()
        return try treeSize(dir, display: display, depth: 0, seen: &seen)
    }

    private static func treeSize(_ dir: FileDescriptor, display: String, depth: Int, seen: inout Set<[UInt64]>) throws -> Int64 {
        guard depth < 4096 else { return 0 }
        var total: Int64 = 0
        for entry in try list(dir, display: display) {
            let childDisplay = display + "/" + String(decoding: entry.name, as: UTF8.self)
            try withCName(entry.name) { cname in
                guard let st = try lstatAt(dir.raw, cname, display: childDisplay) else { return }
                switch st.st_mode & S_IFMT {
                case S_IFREG:
                    if st.st_nlink > 1 {
                        guard seen.insert([UInt64(st.st_dev), UInt64(st.st_ino)]).inserted else { return }
                    }
                    total += Int64(st.st_size)
                case S_IFDIR:
                    let sub = try dir.openAt(cname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, display: childDisplay)
                    total += try treeSize(sub, display: childDisplay, depth: depth + 1, seen: &seen)
                default:
                    break
                }
            }
        }
        return total
    }

    /// Creates a directory and missing parents (0755). With `mode`, the
    /// directory gets exactly that mode even if it existed: these hold
    /// root-owned content.
    static func makeDirectory(_ path: String, mode: mode_t?) throws {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw SystemError.current("mkdir", prefix)
            }
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { throw SystemError.current("stat", path) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else {
            throw SystemError("mkdir", path, errno: ENOTDIR)
        }
        if let mode, st.st_mode & 0o7777 != mode {
            guard chmod(path, mode) == 0 else { throw SystemError.current("chmod", path) }
        }
    }

    /// Writes a file atomically: a temporary next to it, fsync, rename, fsync
    /// of the directory. Readers see the old or the new content, never a mix.
    static func writeAtomically(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws {
        let (parent, name) = split(path)
        let temp = "\(parent)/.\(name).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let fd = try FileDescriptor.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode: mode)
            try bytes.withUnsafeBytes { try fd.writeAll($0, display: temp) }
            try fd.sync(temp)
            guard rename(temp, path) == 0 else { throw SystemError.current("rename to \(path)", temp) }
        } catch {
            _ = unlink(temp)
            throw error
        }
        try syncDirectory(parent)
    }

    /// An xattr of `path` (not following a final symlink); nil if unset.
    static func xattr(_ path: String, _ name: String) throws -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        let n = buffer.withUnsafeMutableBytes { hearth_lgetxattr(path, name, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == ENODATA { return nil }
            throw SystemError.current("getxattr \(name)", path)
        }
        return Array(buffer[0..<n])
    }

    static func syncDirectory(_ path: String) throws {
        let dir = try FileDescriptor.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try dir.sync(path)
    }

    /// Reads a whole (small) file; nil when it does not exist.
    static func readFile(_ path: String, limit: Int) throws -> [UInt8]? {
        let source: FileSource
        do {
            source = try FileSource.open(path)
        } catch let e as SystemError where e.errno == ENOENT {
            return nil
        }
        return try source.readAll(limit: limit, what: path)
    }

    static func split(_ path: String) -> (parent: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let parent = String(path[..<slash])
        return (parent.isEmpty ? "/" : parent, String(path[path.index(after: slash)...]))
    }
}
