import Glibc
import HearthCore
import HearthOS

/// Packs a directory of user code into a tar archive for `PUT /v1/code`:
/// regular files and directories only, with version-control data, caches
/// and virtual environments left out, and a size cap.
public enum BundleWriter {
    public static let skippedNames: Set<String> = [".git", ".hg", ".svn", "__pycache__", ".venv", "venv",
                                                    ".mypy_cache", ".pytest_cache", ".tox", "node_modules"]
    public static let maxBytes = 64 << 20

    public static func tar(directory: String) throws -> [UInt8] {
        var entries: [(path: String, full: String, isDir: Bool, mode: UInt32)] = []
        try walk(directory, relative: "", into: &entries)
        return try archive(entries, what: "code bundle from \(directory)")
    }

    private static func archive(_ entries: [(path: String, full: String, isDir: Bool, mode: UInt32)],
                                what: String) throws -> [UInt8] {
        var out: [UInt8] = []
        for e in entries.sorted(by: { $0.path < $1.path }) {
            if e.isDir {
                out += header(name: e.path + "/", size: 0, mode: 0o755, type: "5")
            } else {
                let data = try readFile(e.full)
                out += header(name: e.path, size: data.count, mode: e.mode & 0o111 != 0 ? 0o755 : 0o644, type: "0")
                out += data
                out += [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
            }
            if out.count > maxBytes {
                throw HearthError.invalid("\(what) exceeds \(maxBytes >> 20) MiB; leave data files out of the code directory")
            }
        }
        out += [UInt8](repeating: 0, count: 1024)
        return out
    }

    /// A tar of `paths` (files or directories, relative to `base`) under
    /// their relative paths, with the directories above them: what an
    /// ImageSpec's `copy` lists. Paths may not leave `base`.
    public static func tar(paths: [String], base: String) throws -> [UInt8] {
        var entries: [(path: String, full: String, isDir: Bool, mode: UInt32)] = []
        var seen = Set<String>()
        func add(_ e: (path: String, full: String, isDir: Bool, mode: UInt32)) {
            if seen.insert(e.path).inserted { entries.append(e) }
        }
        for (i, path) in paths.enumerated() {
            var parts: [String] = []
            for part in path.split(separator: "/") where part != "." {
                guard part != ".." || !parts.isEmpty else {
                    throw HearthError.invalid("copy[\(i)]: \"\(path)\" leaves the directory of the spec file (\(base)); copy takes paths inside it")
                }
                if part == ".." { parts.removeLast() } else { parts.append(String(part)) }
            }
            guard !path.hasPrefix("/"), !parts.isEmpty else {
                throw HearthError.invalid("copy[\(i)]: \"\(path)\" is not a path relative to the spec file's directory (\(base))")
            }
            for depth in 1..<parts.count {
                let rel = parts[..<depth].joined(separator: "/")
                add((rel, base + "/" + rel, true, 0o755))
            }
            let rel = parts.joined(separator: "/"), full = base + "/" + rel
            var st = stat()
            guard stat(full, &st) == 0 else { throw SystemError.current("stat", full) }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                add((rel, full, true, 0o755))
                var below: [(path: String, full: String, isDir: Bool, mode: UInt32)] = []
                try walk(full, relative: rel, into: &below)
                below.forEach(add)
            } else if (st.st_mode & S_IFMT) == S_IFREG {
                add((rel, full, false, UInt32(st.st_mode)))
            } else {
                throw HearthError.invalid("copy[\(i)]: \(full) is neither a file nor a directory")
            }
        }
        return try archive(entries, what: "copy from \(base)")
    }

    private static func walk(_ dir: String, relative: String,
                             into entries: inout [(path: String, full: String, isDir: Bool, mode: UInt32)]) throws {
        for name in try names(in: dir) {
            if skippedNames.contains(name) || name.hasSuffix(".pyc") { continue }
            let full = dir + "/" + name
            let rel = relative.isEmpty ? name : relative + "/" + name
            var st = stat()
            guard lstat(full, &st) == 0 else { throw SystemError.current("lstat", full) }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                entries.append((rel, full, true, 0o755))
                try walk(full, relative: rel, into: &entries)
            case S_IFREG:
                entries.append((rel, full, false, UInt32(st.st_mode)))
            default:
                continue // symlinks, sockets, devices: not code
            }
        }
    }

    /// The entries of a directory, without `.` and `..`, in readdir order.
    static func names(in dir: String) throws -> [String] {
        try FS.list(path: dir).map { String(decoding: $0.name, as: UTF8.self) }
    }

    /// Reads a whole file ("-" is stdin), up to `maxBytes`.
    public static func readFile(_ path: String) throws -> [UInt8] {
        let fd = path == "-" ? 0 : open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError.current("open", path) }
        defer { if fd != 0 { close(fd) } }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw SystemError.current("read", path) }
            if n == 0 { return out }
            out += buf[0..<n]
            if out.count > maxBytes { throw HearthError.invalid("\(path) exceeds \(maxBytes >> 20) MiB") }
        }
    }

    /// A ustar header; a path over 100 bytes or a size of 8 GiB or more
    /// (the octal field's limit) goes into a PAX record before it.
    static func header(name: String, size: Int, mode: UInt32, type: Character, linkName: String = "",
                       uid: Int = 0, gid: Int = 0, mtime: Int = 0) -> [UInt8] {
        var pax: [UInt8] = []
        var stored = name
        var records = ""
        func record(_ kv: String) -> String {
            let record = " \(kv)\n"
            var len = record.utf8.count + 2
            while "\(len)\(record)".utf8.count != len { len = "\(len)\(record)".utf8.count }
            return "\(len)\(record)"
        }
        if name.utf8.count > 100 {
            records += record("path=\(name)")
            stored = String(name.utf8.suffix(99)) ?? "long"
        }
        let octalLimit = 1 << 33
        if size >= octalLimit { records += record("size=\(size)") }
        if linkName.utf8.count > 100 { records += record("linkpath=\(linkName)") }
        let idLimit = 0o7777777
        if uid > idLimit { records += record("uid=\(uid)") }
        if gid > idLimit { records += record("gid=\(gid)") }
        if !records.isEmpty {
            let body = Array(records.utf8)
            pax += header(name: "PaxHeader", size: body.count, mode: 0o644, type: "x")
            pax += body + [UInt8](repeating: 0, count: (512 - body.count % 512) % 512)
        }
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, _ off: Int, _ len: Int) {
            for (i, b) in s.utf8.prefix(len).enumerated() { h[off + i] = b }
        }
        func octal(_ v: Int, _ off: Int, _ len: Int) {
            let s = String(v, radix: 8)
            put(String(repeating: "0", count: max(0, len - 1 - s.count)) + s, off, len - 1)
        }
        put(stored, 0, 100)
        octal(Int(mode), 100, 8)
        octal(uid <= idLimit ? uid : 0, 108, 8)
        octal(gid <= idLimit ? gid : 0, 116, 8)
        octal(size < (1 << 33) ? size : 0, 124, 12)
        octal(max(0, min(mtime, 0o77777777777)), 136, 12)
        put("        ", 148, 8)
        h[156] = UInt8(ascii: type.unicodeScalars.first ?? "0")
        put(linkName, 157, 100)
        put("ustar", 257, 6)
        put("00", 263, 2)
        let sum = h.reduce(0) { $0 + Int($1) }
        octal(sum, 148, 7)
        h[155] = 32
        return pax + h
    }
}
