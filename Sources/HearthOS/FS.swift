#if canImport(Glibc)
import Glibc
#endif
import CHearth
import HearthCore

/// Filesystem helpers with errors that name the operation, the path and the
/// errno. The *at ones never follow symlinks: they run on trees that came
/// out of untrusted layers and replicas.
public enum FS {
    /// `lstat` relative to a directory; nil when the name does not exist.
    public static func lstatAt(_ dirfd: Int32, _ name: UnsafePointer<CChar>, display: String) throws -> stat? {
        var st = stat()
        if fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return st }
        if errno == ENOENT { return nil }
        throw SystemError.current("stat", display)
    }

    /// Names in a directory (without `.` and `..`) with their d_type.
    public static func list(_ dir: OwnedFD, display: String) throws -> [(name: [UInt8], type: UInt8)] {
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

    /// Names in the directory at `path`; `noFollow`: a final symlink is
    /// refused (ELOOP) rather than followed.
    public static func list(path: String, noFollow: Bool = false) throws -> [(name: [UInt8], type: UInt8)] {
        try list(OwnedFD.open(path, O_RDONLY | O_DIRECTORY | (noFollow ? O_NOFOLLOW : 0)), display: path)
    }

    /// Names in the directory at `path` that are UTF-8 (others are skipped:
    /// the daemon's stores look only for names they made, which are ASCII).
    public static func names(_ path: String, noFollow: Bool = false) throws -> [String] {
        try list(path: path, noFollow: noFollow).compactMap { String(validating: $0.name, as: UTF8.self) }
    }

    /// Bytes of regular files below `dir`, each inode counted once.
    public static func treeSize(_ dir: OwnedFD, display: String) throws -> Int64 {
        var seen = Set<[UInt64]>()
        return try treeSize(dir, display: display, depth: 0, seen: &seen)
    }

    private static func treeSize(_ dir: OwnedFD, display: String, depth: Int, seen: inout Set<[UInt64]>) throws -> Int64 {
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

    /// Creates a directory and any missing parents (0755). With `mode`, the
    /// directory gets exactly that mode even if it existed: these hold
    /// root-owned content. A non-directory in the way is ENOTDIR.
    public static func makeDirectory(_ path: String, mode: mode_t? = nil) throws {
        if mkdir(path, mode ?? 0o755) != 0 {
            switch errno {
            case EEXIST:
                break
            case ENOENT:
                // Parents first, then this one.
                var prefix = path.hasPrefix("/") ? "" : "."
                for component in path.split(separator: "/") {
                    prefix += "/" + component
                    if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                        throw SystemError.current("mkdir", prefix)
                    }
                }
            default:
                throw SystemError.current("mkdir", path)
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

    /// Creates or truncates a file (not through a symlink) and writes `bytes`.
    public static func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        let fd = try OwnedFD.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: mode)
        try bytes.withUnsafeBytes { try fd.writeAll($0, display: path) }
    }

    public static func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
        try writeFile(path, Array(text.utf8), mode: mode)
    }

    /// Writes a file atomically: a temporary next to it (created
    /// exclusively, never through a symlink), all of it written, fsync,
    /// rename, fsync of the directory. Readers see the old or the new
    /// content, never a mix; after a crash, one of the two. `sync: false`
    /// skips both fsyncs, for files rewritten often whose loss costs nothing.
    public static func writeAtomically(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600, sync: Bool = true) throws {
        let (parent, name) = split(path)
        let temp = "\(parent)/.\(name).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            let fd = try OwnedFD.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: mode)
            try bytes.withUnsafeBytes { try fd.writeAll($0, display: temp) }
            if sync { try fd.sync(temp) }
            guard rename(temp, path) == 0 else { throw SystemError.current("rename to \(path)", temp) }
        } catch {
            _ = unlink(temp)
            throw error
        }
        if sync { try syncDirectory(parent) }
    }

    /// An xattr of `path` (not following a final symlink); nil if unset.
    public static func xattr(_ path: String, _ name: String) throws -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        let n = buffer.withUnsafeMutableBytes { hearth_lgetxattr(path, name, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == ENODATA { return nil }
            throw SystemError.current("getxattr \(name)", path)
        }
        return Array(buffer[0..<n])
    }

    public static func syncDirectory(_ path: String) throws {
        try OwnedFD.open(path, O_RDONLY | O_DIRECTORY).sync(path)
    }

    /// Reads a whole (small) file; nil when it does not exist; over `limit`
    /// bytes is EFBIG.
    public static func readFile(_ path: String, limit: Int) throws -> [UInt8]? {
        let fd: OwnedFD
        do {
            fd = try OwnedFD.open(path, O_RDONLY)
        } catch let e as SystemError where e.errno == ENOENT {
            return nil
        }
        return try fd.readAll(limit: limit, display: path)
    }

    /// `/a/b/c` → (`/a/b`, `c`); `c` → (`.`, `c`); `/c` → (`/`, `c`).
    public static func split(_ path: String) -> (parent: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let parent = String(path[..<slash])
        return (parent.isEmpty ? "/" : parent, String(path[path.index(after: slash)...]))
    }

    /// Mount points at or below `prefix`, from /proc/self/mountinfo.
    public static func mountPoints(under prefix: String) -> [String] {
        guard let bytes = try? readFile("/proc/self/mountinfo", limit: 64 << 20) else { return [] }
        var out: [String] = []
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "))
            guard fields.count > 4 else { continue }
            let mp = unescapeMountField(String(decoding: fields[4], as: UTF8.self))
            if mp == prefix || mp.hasPrefix(prefix + "/") { out.append(mp) }
        }
        return out
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    public static func unescapeMountField(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == 92, i + 3 < u.count, let v = UInt8(String(decoding: u[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(v); i += 4
            } else {
                bytes.append(u[i]); i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A pipe whose both ends are close-on-exec.
public enum Pipe {
    public static func make() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard hearth_pipe2(&fds, O_CLOEXEC) == 0 else { throw SystemError.current("pipe2", "") }
        return (fds[0], fds[1])
    }
}

extension FS {
    /// A directory that is a plain root filesystem (what debootstrap or
    /// `docker export | tar x` leaves) rather than an image layout: none of
    /// an image's top-level files (index.json, oci-layout, manifest.json),
    /// and a bin, usr or etc. Links followed, as the user named it.
    public static func isPlainRootfs(_ path: String) -> Bool {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return false }
        for marker in ["index.json", "oci-layout", "manifest.json"] where access(path + "/" + marker, F_OK) == 0 {
            return false
        }
        return ["bin", "usr", "etc"].contains { access(path + "/" + $0, F_OK) == 0 }
    }
}
