import Foundation
import Glibc
import HearthCore
import HearthOS

/// Raw file operations on cgroupfs (and /proc), with errors that name the
/// file, the value and the errno. Plain open/read/write rather than
/// Foundation: cgroup files report bad values as the errno of write(2), and
/// a value must reach the kernel in one write call.
enum CgroupFiles {
    static func read(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError.current("read", path) }
        defer { close(fd) }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("read", path)
            }
            if n == 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Best effort read; nil when the file is missing or unreadable.
    static func readIfPresent(_ path: String) -> String? { try? read(path) }

    /// Writes `value` in a single write(2); the error reads
    /// `write cgroup /sys/fs/cgroup/…/memory.max ("67108864"): EINVAL (…)`.
    static func write(_ path: String, _ value: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError.current("write cgroup", "\(path) (\"\(value)\")") }
        defer { close(fd) }
        try write(fd: fd, value, path: path)
    }

    static func write(fd: Int32, _ value: String, path: String) throws {
        var bytes = Array(value.utf8)
        while true {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw SystemError.current("write cgroup", "\(path) (\"\(value)\")") }
            // cgroupfs consumes a value whole or fails; a short write would
            // mean something other than cgroupfs is behind the path.
            if n != bytes.count { throw SystemError("write cgroup", "\(path) (\"\(value)\")", errno: EIO) }
            return
        }
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// mkdir; false (no error) when it already exists.
    @discardableResult
    static func mkdir(_ path: String) throws -> Bool {
        if Glibc.mkdir(path, 0o755) == 0 { return true }
        if errno == EEXIST { return false }
        throw SystemError.current("create cgroup", path)
    }

    /// rmdir, retried while the kernel still counts exiting tasks (EBUSY).
    /// A directory that is already gone is not an error.
    static func rmdir(_ path: String, timeout: Double = 2.0) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if Glibc.rmdir(path) == 0 || errno == ENOENT { return }
            let err = errno
            guard err == EBUSY, Date() < deadline else { throw SystemError("remove cgroup", path, errno: err) }
            usleep(10_000)
        }
    }

    /// Names of the child directories (child cgroups) of `path`.
    static func childDirectories(_ path: String) -> [String] {
        guard let entries = try? FS.list(path: path) else { return [] }
        return entries.filter { $0.type == DT_DIR }.map { String(decoding: $0.name, as: UTF8.self) }.sorted()
    }

    /// The pids in a `cgroup.procs` file; empty when unreadable.
    static func procs(_ dir: String) -> [Int32] {
        guard let text = readIfPresent(dir + "/cgroup.procs") else { return [] }
        return text.split(whereSeparator: \.isNewline).compactMap { Int32($0) }
    }

    /// A `key value` line of a flat-keyed file such as memory.events,
    /// memory.oom_control or cpu.stat.
    static func keyedValue(_ text: String, _ key: String) -> UInt64? {
        for line in text.split(whereSeparator: \.isNewline) {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == key { return UInt64(parts[1]) }
        }
        return nil
    }
}
