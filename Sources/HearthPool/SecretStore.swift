#if canImport(Glibc)
import Glibc
#endif
import HearthCore
import HearthImage
import HearthSandbox
import HearthOS

/// Secrets under `<stateRoot>/secrets/` (0700 root): one file per key,
/// named by the key, mode 0600, replaced atomically (temporary file, fsync,
/// rename, fsync of the directory).
///
/// Values are opaque bytes. No API returns them except `materialize`, which
/// copies them for a replica; no message or description includes them. The
/// store holds no value in memory beyond the copy in progress.
public final class SecretStore: Sendable, CustomStringConvertible {
    /// Largest value accepted, in bytes.
    public static let maxValueBytes = 1 << 20
    public static let maxKeyBytes = 253
    public static let keyRule = "keys match ^[A-Za-z0-9_.-]{1,253}$ and are not \".\" or \"..\""

    /// `<stateRoot>/secrets`.
    public let root: String

    public var description: String { "SecretStore(\(root))" }

    public init(stateRoot: String) throws {
        root = stateRoot + "/secrets"
        try FS.makeDirectory(root, mode: 0o700)
        // makeDirectory sets the mode best-effort; a secrets directory that
        // others can read is not something to run with.
        var st = stat()
        guard lstat(root, &st) == 0 else { throw SystemError.current("stat", root) }
        if st.st_uid != geteuid() || st.st_mode & 0o7777 != 0o700 {
            guard lchown(root, geteuid(), getegid()) == 0 else { throw SystemError.current("chown", root) }
            guard chmod(root, 0o700) == 0 else { throw SystemError.current("chmod", root) }
        }
        // Temporary files of an interrupted `set` (their names are never
        // valid keys, so nothing else can own them).
        for name in try Dir.names(root) where name.hasPrefix(SecretStore.tempPrefix) {
            _ = unlink(root + "/" + name)
        }
    }

    // MARK: keys

    /// Throws `.invalidArgument` naming the key and the rule.
    public static func validate(key: String) throws {
        guard isValid(key: key) else {
            throw HearthError(.invalidArgument, "secret key \(SecretStore.quote(key)) is invalid: \(keyRule)")
        }
    }

    public static func isValid(key: String) -> Bool {
        let bytes = key.utf8
        guard (1...maxKeyBytes).contains(bytes.count), key != ".", key != ".." else { return false }
        return bytes.allSatisfy { b in
            (0x41...0x5a).contains(b) || (0x61...0x7a).contains(b) || (0x30...0x39).contains(b)
                || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") || b == UInt8(ascii: "-")
        }
    }

    /// Temporary names contain `+`, which no key can, so `list` never shows
    /// them and a key can never collide with one.
    static let tempPrefix = ".tmp+"

    /// A key for a message: quoted, escaped, bounded (it may be hostile input).
    static func quote(_ key: String) -> String {
        key.utf8.count <= maxKeyBytes ? key.debugDescription : (String(key.prefix(64)) + "…").debugDescription
    }

    // MARK: API

    /// Sets (or replaces) a secret. Readers see the old value or the new
    /// one, never a mix; the new value is on disk when this returns.
    public func set(key: String, value: [UInt8]) throws {
        try SecretStore.validate(key: key)
        guard value.count <= SecretStore.maxValueBytes else {
            throw HearthError(.invalidArgument,
                              "secret \"\(key)\": the value is \(value.count) bytes, over the limit of \(SecretStore.maxValueBytes) bytes (1 MiB)")
        }
        let path = root + "/" + key
        // Not derived from the key: a 253-byte key plus a suffix would pass
        // NAME_MAX.
        let temp = root + "/" + SecretStore.tempPrefix + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        do {
            let fd = try OwnedFD.open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode: 0o600)
            // The umask could only narrow 0600; fchmod makes it exact.
            guard fchmod(fd.raw, 0o600) == 0 else { throw SystemError.current("chmod", temp) }
            try SecretStore.writeAll(fd, value, display: temp)
            guard fsync(fd.raw) == 0 else { throw SystemError.current("fsync", temp) }
            guard rename(temp, path) == 0 else { throw SystemError.current("rename to \(path)", temp) }
        } catch {
            _ = unlink(temp)
            throw error
        }
        try CodeStore.syncDirectory(root)
    }

    /// Names of the secrets set, sorted. Never values.
    public func list() throws -> [String] {
        try Dir.names(root).filter { SecretStore.isValid(key: $0) && isRegularFile(root + "/" + $0) }.sorted()
    }

    public func exists(key: String) -> Bool {
        SecretStore.isValid(key: key) && isRegularFile(root + "/" + key)
    }

    public func remove(key: String) throws {
        try SecretStore.validate(key: key)
        let path = root + "/" + key
        guard unlink(path) == 0 else {
            if errno == ENOENT { throw HearthError(.notFound, "secret \"\(key)\" is not set") }
            throw SystemError.current("unlink", path)
        }
        try CodeStore.syncDirectory(root)
    }

    /// Creates `dir` holding exactly the secrets `keys` names, for one
    /// replica: the daemon bind-mounts it read-only at `/etc/secrets`.
    ///
    /// - `dir` is 0700, owned by `uid`:`gid` (root by default; pass the
    ///   replica's user when it is not root so it can enter the directory).
    ///   Its parent should be root-only: the mode is what keeps other host
    ///   users out, and `dir` must not be reachable by them while it is
    ///   filled.
    /// - Each secret is a file `KEY`, 0444 root:root. Not 0400: a replica
    ///   whose process is not root (or not the owner) could not read its own
    ///   secrets, and 0400 would protect nothing more — the 0700 directory
    ///   already keeps every other host user out, the mount is read-only, and
    ///   inside the replica whoever can enter the directory is the replica.
    ///   Kubernetes secret volumes are world-readable (0644) for the same
    ///   reason.
    ///
    /// Every key is checked before anything is written; a missing one fails
    /// with `.notFound`. An existing `dir` is replaced as a whole (built
    /// beside it, then renamed over it), so it never holds a stale key.
    public func materialize(keys: [String], into dir: String, uid: UInt32 = 0, gid: UInt32 = 0) throws {
        var wanted: [String] = []
        for key in keys where !wanted.contains(key) {
            guard SecretStore.isValid(key: key) else {
                throw HearthError(.invalidArgument,
                                  "secret key \(SecretStore.quote(key)) requested by the environment is invalid: \(SecretStore.keyRule)")
            }
            guard exists(key: key) else { throw SecretStore.missing(key) }
            wanted.append(key)
        }

        let suffix = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let temp = dir + ".tmp+" + suffix
        guard mkdir(temp, 0o700) == 0 else { throw SystemError.current("mkdir", temp) }
        do {
            guard lchown(temp, uid, gid) == 0 else { throw SystemError.current("chown", temp) }
            guard chmod(temp, 0o700) == 0 else { throw SystemError.current("chmod", temp) }
            for key in wanted {
                try copy(key, to: temp + "/" + key)
            }
            // No fsync: these copies are rebuilt for every replica start,
            // and the originals are durable.
            if rename(temp, dir) != 0 {
                guard errno == EEXIST || errno == ENOTEMPTY || errno == ENOTDIR || errno == EISDIR else {
                    throw SystemError.current("rename to \(dir)", temp)
                }
                // Something is there: set it aside, put the new one in place,
                // then delete the old one.
                let old = dir + ".old+" + suffix
                guard rename(dir, old) == 0 else { throw SystemError.current("rename to \(old)", dir) }
                guard rename(temp, dir) == 0 else {
                    let e = SystemError.current("rename to \(dir)", temp)
                    _ = rename(old, dir)  // put the previous one back
                    throw e
                }
                try FS.removeTree(path: old)
            }
        } catch {
            try? FS.removeTree(path: temp)
            throw error
        }
    }

    static func missing(_ key: String) -> HearthError {
        HearthError(.notFound, "secret \"\(key)\" requested by the environment is not set; set it with `hearth secret set \(key)`")
    }

    // MARK: files

    private func isRegularFile(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// Copies one secret through a fixed buffer that is wiped afterwards.
    private func copy(_ key: String, to target: String) throws {
        let source = root + "/" + key
        let input: OwnedFD
        do {
            input = try OwnedFD.open(source, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        } catch let e as SystemError where e.errno == ENOENT {
            throw SecretStore.missing(key)  // removed since the check
        }
        var st = stat()
        guard fstat(input.raw, &st) == 0 else { throw SystemError.current("stat", source) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw HearthError(.internal, "\(source): not a regular file")
        }
        let output = try OwnedFD.open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode: 0o444)
        guard fchmod(output.raw, 0o444) == 0 else { throw SystemError.current("chmod", target) }

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            buffer.deallocate()
        }
        var total = 0
        while true {
            guard let base = buffer.baseAddress else { return }
            let n = Glibc.read(input.raw, base, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("read", source)
            }
            if n == 0 { break }
            total += n
            // A file edited behind the store's back: refuse rather than copy
            // an unbounded amount.
            guard total <= SecretStore.maxValueBytes else {
                throw HearthError(.internal, "\(source): larger than \(SecretStore.maxValueBytes) bytes; was it written outside hearth?")
            }
            try SecretStore.writeAll(output, UnsafeRawBufferPointer(rebasing: buffer[0..<n]), display: target)
        }
    }

    private static func writeAll(_ fd: OwnedFD, _ bytes: [UInt8], display: String) throws {
        try bytes.withUnsafeBytes { try writeAll(fd, $0, display: display) }
    }

    private static func writeAll(_ fd: OwnedFD, _ bytes: UnsafeRawBufferPointer, display: String) throws {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd.raw, base + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write", display)
            }
            done += n
        }
    }
}
