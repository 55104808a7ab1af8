import Glibc
import HearthCore

/// Streams an image for `POST /v1/images/import` from the client's side,
/// so the daemon reads only bytes it was sent, never a path: a file (an
/// OCI archive or a `docker save` tarball) as it is, a directory (an OCI
/// image layout) as a tar of its regular files and directories, a plain
/// root filesystem directory as a tar that keeps modes, owners and links.
public enum ArchiveStreamer {
    static let piece = 1 << 20

    /// Whether `path` is a directory (after following symlinks, as the user named it).
    public static func isDirectory(_ path: String) throws -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { throw SystemError.current("stat", path) }
        return st.st_mode & S_IFMT == S_IFDIR
    }

    /// Emits a tar of a root filesystem directory as it is on disk:
    /// directories, regular files, symlinks (never followed), with their
    /// modes (setuid bits included), owners and mtimes; a hard link's other
    /// names as copies. Device nodes, FIFOs and sockets are left out (the
    /// daemon would leave them out too); returns how many. A file the
    /// caller cannot read fails with its path.
    @discardableResult
    public static func streamRootfsTar(directory: String, emit: ([UInt8]) throws -> Void) throws -> Int {
        var skipped = 0
        try walkRootfs(directory, relative: "", skipped: &skipped, emit: emit)
        try emit([UInt8](repeating: 0, count: 1024))
        return skipped
    }

    private static func walkRootfs(_ dir: String, relative: String, skipped: inout Int,
                                   emit: ([UInt8]) throws -> Void) throws {
        let names: [String]
        do {
            names = try BundleWriter.names(in: dir).sorted()
        } catch let e as SystemError where e.errno == EACCES {
            throw unreadable(dir)
        }
        for name in names {
            let full = dir + "/" + name
            let rel = relative.isEmpty ? name : relative + "/" + name
            var st = stat()
            guard lstat(full, &st) == 0 else { throw SystemError.current("lstat", full) }
            let mode = UInt32(st.st_mode) & 0o7777
            let uid = Int(st.st_uid), gid = Int(st.st_gid), mtime = Int(st.st_mtim.tv_sec)
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                try emit(BundleWriter.header(name: rel + "/", size: 0, mode: mode, type: "5", uid: uid, gid: gid, mtime: mtime))
                try walkRootfs(full, relative: rel, skipped: &skipped, emit: emit)
            case S_IFLNK:
                var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlink(full, &target, target.count)
                guard n >= 0 else { throw SystemError.current("readlink", full) }
                try emit(BundleWriter.header(name: rel, size: 0, mode: 0o777, type: "2",
                                             linkName: String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self),
                                             uid: uid, gid: gid, mtime: mtime))
            case S_IFREG:
                let fd = open(full, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                guard fd >= 0 else {
                    if errno == EACCES { throw unreadable(full) }
                    throw SystemError.current("open", full)
                }
                defer { close(fd) }
                let size = Int(st.st_size)
                try emit(BundleWriter.header(name: rel, size: size, mode: mode, type: "0", uid: uid, gid: gid, mtime: mtime))
                let sent = try copy(fd, path: full, limit: size, emit: emit)
                guard sent == size else {
                    throw HearthError.invalid("\(full) changed size while it was being sent (\(size) bytes, then \(sent))")
                }
                try emit([UInt8](repeating: 0, count: (512 - size % 512) % 512))
            default:
                skipped += 1
            }
        }
    }

    private static func unreadable(_ path: String) -> HearthError {
        HearthError(.forbidden, "\(path): permission denied; a root filesystem is sent whole, so every file in it must be readable by you (run the import as root, where hearthd reads the directory itself)")
    }

    /// Emits the file's bytes in pieces.
    public static func streamFile(_ path: String, emit: ([UInt8]) throws -> Void) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError.current("open", path) }
        defer { close(fd) }
        try copy(fd, path: path, emit: emit)
    }

    /// Emits a tar of the directory: sorted, regular files and directories
    /// only (an OCI layout holds nothing else; anything else is refused).
    public static func streamTar(directory: String, emit: ([UInt8]) throws -> Void) throws {
        try walk(directory, relative: "", emit: emit)
        try emit([UInt8](repeating: 0, count: 1024))
    }

    private static func walk(_ dir: String, relative: String, emit: ([UInt8]) throws -> Void) throws {
        for name in try BundleWriter.names(in: dir).sorted() {
            let full = dir + "/" + name
            let rel = relative.isEmpty ? name : relative + "/" + name
            var st = stat()
            guard lstat(full, &st) == 0 else { throw SystemError.current("lstat", full) }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                try emit(BundleWriter.header(name: rel + "/", size: 0, mode: 0o755, type: "5"))
                try walk(full, relative: rel, emit: emit)
            case S_IFREG:
                let fd = open(full, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                guard fd >= 0 else { throw SystemError.current("open", full) }
                defer { close(fd) }
                let size = Int(st.st_size)
                try emit(BundleWriter.header(name: rel, size: size, mode: 0o644, type: "0"))
                let sent = try copy(fd, path: full, limit: size, emit: emit)
                guard sent == size else {
                    throw HearthError.invalid("\(full) changed size while it was being sent (\(size) bytes, then \(sent))")
                }
                try emit([UInt8](repeating: 0, count: (512 - size % 512) % 512))
            default:
                throw HearthError.invalid("\(full): not a regular file or directory; an OCI image layout holds only those")
            }
        }
    }

    /// Copies up to `limit` bytes (all when nil); returns how many.
    @discardableResult
    private static func copy(_ fd: Int32, path: String, limit: Int? = nil,
                             emit: ([UInt8]) throws -> Void) throws -> Int {
        var buf = [UInt8](repeating: 0, count: piece)
        var total = 0
        while limit.map({ total < $0 }) ?? true {
            let want = min(piece, (limit ?? Int.max) - total)
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, want) }
            if n < 0 { if errno == EINTR { continue }; throw SystemError.current("read", path) }
            if n == 0 { break }
            try emit(Array(buf[0..<n]))
            total += n
        }
        return total
    }
}
