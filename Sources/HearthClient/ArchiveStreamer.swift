import Glibc
import HearthCore

/// Streams an image for `POST /v1/images/import` from the client's side,
/// so the daemon reads only bytes it was sent, never a path: a file (an
/// OCI archive or a `docker save` tarball) as it is, a directory (an OCI
/// image layout) as a tar of its regular files and directories.
public enum ArchiveStreamer {
    static let piece = 1 << 20

    /// Whether `path` is a directory (after following symlinks, as the user named it).
    public static func isDirectory(_ path: String) throws -> Bool {
        var st = stat()
        guard stat(path, &st) == 0 else { throw SystemError.current("stat", path) }
        return st.st_mode & S_IFMT == S_IFDIR
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
