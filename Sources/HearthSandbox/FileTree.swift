import CHearth
import Foundation
import Glibc
import HearthCore

/// Small filesystem helpers with errors that name the path.
public enum FileTree {
    /// mkdir that tolerates an existing directory (and sets the mode either way).
    public static func makeDirectory(_ path: String, mode: mode_t) throws {
        if mkdir(path, mode) != 0 {
            guard errno == EEXIST else { throw SystemError.current("mkdir", path) }
            var st = stat()
            guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                throw SystemError("mkdir", path, errno: ENOTDIR)
            }
        }
        _ = chmod(path, mode)
    }

    public static func writeFile(_ path: String, _ text: String, mode: mode_t = 0o644) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw SystemError.current("open", path) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write", path)
            }
            off += n
        }
    }

    /// rm -rf that never follows symlinks and never crosses into another
    /// filesystem (a stray mount under a replica is left alone, not emptied).
    public static func removeAll(_ path: String) throws {
        if hearth_remove_tree(path) != 0 { throw SystemError.current("remove", path) }
    }

    /// Mount points at or below `prefix`, from /proc/self/mountinfo.
    public static func mountPoints(under prefix: String) -> [String] {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var out: [String] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { continue }
            let mp = unescapeMountField(String(fields[4]))
            if mp == prefix || mp.hasPrefix(prefix + "/") { out.append(mp) }
        }
        return out
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescapeMountField(_ s: String) -> String {
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
