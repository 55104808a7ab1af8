#if canImport(Glibc)
import Glibc
#endif
import CHearth
import Crypto
import HearthCore
import HearthImage
import HearthSandbox
import HearthOS

/// One stored code bundle: an unpacked tree of user code.
public struct CodeBundle: Sendable, Codable, Equatable {
    /// 64 lowercase hex digits: the SHA-256 of the uploaded tarball.
    public var sha256: String
    /// The unpacked tree on the host, `<stateRoot>/code/<sha256>`.
    public var path: String
    /// Regular files in the tree (each name counted).
    public var files: Int
    /// Bytes of regular file content (each inode counted once).
    public var bytes: Int64

    public init(sha256: String, path: String, files: Int, bytes: Int64) {
        self.sha256 = sha256
        self.path = path
        self.files = files
        self.bytes = bytes
    }
}

/// Content-addressed code bundles: `<stateRoot>/code/<sha256 hex>/`, each the
/// unpacked tar (or tar.gz) a client uploaded once per version.
///
/// Bundles come from clients, are unpacked by root and are mounted into
/// replicas, so a stored tree is normalised rather than trusted: owned by
/// root:root, directories 0755, files 0644 or 0755 (executable if any x bit
/// was set), no setuid/setgid/sticky bits, no device nodes or FIFOs, no
/// symlink that points outside the bundle. Work happens in
/// `<stateRoot>/code.staging/` (0700, outside the directory replicas see) and
/// the finished tree is renamed into place, so `code/` only ever holds
/// complete bundles.
///
/// The store keeps no state in memory: concurrent stores of the same bundle
/// each unpack, and the first rename wins. One daemon owns a state root (it
/// holds the state-root lock), so leftovers in the staging directory are
/// removed when the store is opened.
public final class CodeStore: Sendable, CustomStringConvertible {
    public struct Limits: Sendable, Equatable {
        /// The upload as sent (compressed, for tar.gz).
        public var maxUploadBytes: Int
        /// Sum of regular file sizes once unpacked.
        public var maxUnpackedBytes: Int64
        /// Tar members: files, directories, links.
        public var maxEntries: Int

        public init(maxUploadBytes: Int, maxUnpackedBytes: Int64, maxEntries: Int) {
            self.maxUploadBytes = maxUploadBytes
            self.maxUnpackedBytes = maxUnpackedBytes
            self.maxEntries = maxEntries
        }

        public static let `default` = Limits(maxUploadBytes: 64 << 20, maxUnpackedBytes: 256 << 20, maxEntries: 20_000)

        /// Bound on the decompressed tar stream: content plus generous room
        /// for headers, PAX records and padding. It caps the work a small
        /// gzip "bomb" can cause even when it declares no big entries.
        var maxTarStreamBytes: Int64 {
            maxUnpackedBytes + Int64(maxEntries) * 8192 + (1 << 20)
        }
    }

    /// The default upload limit, for HTTP layers that buffer the body.
    public static let maxUploadBytes = Limits.default.maxUploadBytes

    /// `<stateRoot>/code`: one directory per bundle, 0700. No replica mounts
    /// it: each sees hard-linked copies of its own bundles in a view.
    public let root: String
    /// `<stateRoot>/code.staging`: bundles being unpacked or removed.
    let staging: String
    public let limits: Limits

    public var description: String { "CodeStore(\(root))" }

    public init(stateRoot: String, limits: Limits = .default) throws {
        root = stateRoot + "/code"
        staging = stateRoot + "/code.staging"
        self.limits = limits
        // 0700: replicas see bundles only through their own views (link(_:into:)).
        try FS.makeDirectory(root, mode: 0o700)
        try FS.makeDirectory(staging, mode: 0o700)
        // A crash mid-store or mid-remove leaves a partial tree here; nothing
        // else can be using it (one daemon per state root).
        for name in try Dir.names(staging) {
            try FS.removeTree(path: staging + "/" + name)
        }
    }

    // MARK: queries

    /// Whether `sha` names a stored bundle. Anything that is not 64
    /// lowercase hex digits is not.
    public func exists(_ sha: String) -> Bool {
        guard CodeStore.isSHA256Hex(sha) else { return false }
        var st = stat()
        return lstat(root + "/" + sha, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// The host path of a stored bundle.
    public func path(of sha: String) throws -> String {
        try CodeStore.checkSHA(sha)
        guard exists(sha) else {
            throw HearthError(.notFound, "code bundle \(sha) is not uploaded; PUT /v1/code/\(sha) first")
        }
        return root + "/" + sha
    }

    /// A stored bundle with its file count and size (walks the tree).
    public func bundle(_ sha: String) throws -> CodeBundle {
        let path = try path(of: sha)
        let dir = try OwnedFD.open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        var tally = Tally()
        try CodeStore.walk(dir, display: path, depth: 0, fix: false, tally: &tally)
        return CodeBundle(sha256: sha, path: path, files: tally.files, bytes: tally.bytes)
    }

    /// Stored bundles, sorted.
    public func list() throws -> [String] {
        try Dir.names(root).filter { name in
            var st = stat()
            return CodeStore.isSHA256Hex(name) && lstat(root + "/" + name, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
        }.sorted()
    }

    // MARK: store

    /// Stores an upload held in memory. See `store(sha256:tarballAt:)`.
    public func store(sha256 expected: String, tarball: [UInt8]) throws -> CodeBundle {
        try store(expected, size: tarball.count,
                  hash: { CodeStore.hex(SHA256.hash(data: tarball)) },
                  open: { PrefixedSource(prefix: tarball) })
    }

    /// Stores the upload in the regular file at `path` (a temporary file the
    /// HTTP layer wrote; it is read, never moved or removed). One descriptor
    /// serves every pass, so the bytes hashed are the bytes unpacked.
    ///
    /// Verifies that the upload hashes to `expected`, checks every member
    /// and the size limits before anything is written, unpacks, normalises
    /// ownership and modes, and renames the tree into place. Storing a
    /// bundle that exists already returns it (and marks it recently stored,
    /// for `garbageCollect`).
    public func store(sha256 expected: String, tarballAt path: String) throws -> CodeBundle {
        let fd = try OwnedFD.open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW)
        var st = stat()
        guard fstat(fd.raw, &st) == 0 else { throw SystemError.current("stat", path) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw HearthError(.invalidArgument, "code bundle: \(path) is not a regular file")
        }
        let size = Int64(st.st_size)
        return try store(expected, size: Int(clamping: size),
                         hash: { try CodeStore.hashFile(fd, size: size, path: path) },
                         open: { FileSource(fd: fd, path: path, offset: 0, length: size, truncationCode: .invalidArgument, what: "code bundle \(path)") })
    }

    private func store(_ expected: String, size: Int, hash: () throws -> String,
                       open: () -> ByteSource) throws -> CodeBundle {
        try CodeStore.checkSHA(expected)
        guard size > 0 else {
            throw HearthError(.invalidArgument, "code bundle: the upload is empty; expected a tar or tar.gz archive")
        }
        guard size <= limits.maxUploadBytes else {
            throw HearthError(.invalidArgument,
                              "code bundle: the upload is \(size) bytes, over the limit of \(CodeStore.describe(Int64(limits.maxUploadBytes))) (compressed)")
        }
        let actual = try hash()
        guard actual == expected else {
            throw HearthError(.invalidArgument, "code bundle: sha256 mismatch: the upload hashes to \(actual), the URL names \(expected)")
        }
        let final = root + "/" + expected
        if exists(expected) {
            touch(final)
            return try bundle(expected)
        }

        let label = "code bundle \(expected.prefix(12))"
        // Every member is checked before the first byte is written: a
        // refused bundle costs a read, not a partial tree.
        try check(open(), label: label)

        let temp = try makeStagingDirectory(expected)
        do {
            let dir = try OwnedFD.open(temp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            try unpack(open(), into: dir, path: temp, label: label)
            var tally = Tally()
            // code.staging is 0700 root: the tree's owners and modes as the
            // archive had them (setuid included, the top directory's too)
            // are never reachable by anyone else before this pass fixes them.
            try CodeStore.walk(dir, display: temp, depth: 0, fix: true, tally: &tally)
            guard fchown(dir.raw, 0, 0) == 0 else { throw SystemError.current("chown", temp) }
            guard fchmod(dir.raw, 0o755) == 0 else { throw SystemError.current("chmod", temp) }
            // The bundle's own mtime records when it was stored (the archive's
            // `./` time would say nothing about use); garbageCollect reads it.
            var now = CodeStore.nowTimes
            guard futimens(dir.raw, &now) == 0 else { throw SystemError.current("utimensat", temp) }
            // One syncfs instead of an fsync per file: the tree is durable
            // before its name appears.
            guard hearth_syncfs(dir.raw) == 0 else { throw SystemError.current("syncfs", temp) }

            if rename(temp, final) != 0 {
                let err = errno
                // Another store of the same bundle finished first: same bytes.
                guard err == EEXIST || err == ENOTEMPTY else { throw SystemError("rename to \(final)", temp, errno: err) }
                try? FS.removeTree(path: temp)
                return try bundle(expected)
            }
            try CodeStore.syncDirectory(root)
            return CodeBundle(sha256: expected, path: final, files: tally.files, bytes: tally.bytes)
        } catch {
            try? FS.removeTree(path: temp)
            throw CodeStore.asUploadError(error)
        }
    }

    /// The validation pass: member names, kinds, link targets and limits.
    private func check(_ raw: ByteSource, label: String) throws {
        var entries = 0
        var unpacked: Int64 = 0
        do {
            let reader = TarReader(try tarStream(raw, label: label), what: label)
            while let entry = try reader.next() {
                entries += 1
                guard entries <= limits.maxEntries else {
                    throw HearthError(.invalidArgument,
                                      "\(label): more than \(limits.maxEntries) entries (the limit) at entry \"\(entry.displayPath)\"")
                }
                try CodeStore.checkEntry(entry, label: label)
                if entry.kind == .regular {
                    unpacked += entry.size
                    guard unpacked <= limits.maxUnpackedBytes else {
                        throw HearthError(.invalidArgument,
                                          "\(label): unpacked content is larger than the limit of \(CodeStore.describe(limits.maxUnpackedBytes)) at entry \"\(entry.displayPath)\"")
                    }
                }
            }
        } catch {
            throw CodeStore.asUploadError(error)
        }
    }

    private func unpack(_ raw: ByteSource, into dir: OwnedFD, path: String, label: String) throws {
        let reader = TarReader(try tarStream(raw, label: label), what: label)
        try LayerUnpacker(root: dir, rootPath: path, label: label).unpack(reader)
    }

    /// The decompressed tar stream, bounded. Formats other than tar and gzip
    /// are named rather than reported as a corrupt tar.
    private func tarStream(_ raw: ByteSource, label: String) throws -> ByteSource {
        let head = try CodeStore.readHead(raw, 6)
        let rest = PrefixedSource(prefix: head, inner: raw)
        let format: String? = switch head {
        case let h where h.starts(with: [0x28, 0xb5, 0x2f, 0xfd]): "zstd"
        case let h where h.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]): "xz"
        case let h where h.starts(with: [0x42, 0x5a, 0x68]): "bzip2"
        case let h where h.starts(with: [0x50, 0x4b, 0x03, 0x04]): "zip"
        default: nil
        }
        if let format {
            throw HearthError(.invalidArgument, "\(label): the upload is a \(format) archive; only tar and tar.gz are accepted")
        }
        return LimitedSource(try Compression.decompressing(rest, what: label), limit: limits.maxTarStreamBytes, label: label)
    }

    private func makeStagingDirectory(_ sha: String) throws -> String {
        var template = Array((staging + "/" + sha + ".XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buf -> Bool in
            guard let base = buf.baseAddress else { return false }
            return mkdtemp(base) != nil  // mode 0700
        }
        guard made else { throw SystemError.current("mkdtemp", staging + "/" + sha + ".XXXXXX") }
        return template.withUnsafeBufferPointer { buf in
            String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// Marks a bundle as stored now, so a re-upload keeps it from the
    /// collector for another grace period. Best effort: failing to touch
    /// only makes it collectable sooner.
    private func touch(_ path: String) {
        var now = CodeStore.nowTimes
        _ = utimensat(AT_FDCWD, path, &now, AT_SYMLINK_NOFOLLOW)
    }

    // MARK: removal

    /// Removes a bundle. It disappears from `code/` atomically (renamed into
    /// staging, then deleted), so no one sees half a tree; replicas that
    /// have it open keep their view.
    public func remove(_ sha: String) throws {
        try CodeStore.checkSHA(sha)
        let trash = staging + "/" + sha + ".removed." + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        if rename(root + "/" + sha, trash) != 0 {
            if errno == ENOENT { throw HearthError(.notFound, "code bundle \(sha) is not uploaded") }
            throw SystemError.current("rename to \(trash)", root + "/" + sha)
        }
        try CodeStore.syncDirectory(root)
        try FS.removeTree(path: trash)
    }

    /// Removes bundles not in `keep` that were stored (or last re-stored)
    /// at least `olderThan` ago; returns their hashes. The grace period
    /// protects a bundle uploaded just before the task that names it.
    @discardableResult
    public func garbageCollect(keep: Set<String>, olderThan: Duration) throws -> [String] {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let (seconds, attoseconds) = olderThan.components
        let graceNanos = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
        var removed: [String] = []
        for sha in try list() where !keep.contains(sha) {
            var st = stat()
            guard lstat(root + "/" + sha, &st) == 0 else { continue }
            let ageNanos = Double(now.tv_sec - st.st_mtim.tv_sec) * 1e9 + Double(now.tv_nsec - st.st_mtim.tv_nsec)
            guard ageNanos >= graceNanos else { continue }
            do {
                try remove(sha)
                removed.append(sha)
            } catch let e as HearthError where e.code == .notFound {
                continue  // removed meanwhile
            }
        }
        return removed
    }

    // MARK: rules

    /// One member against the code-bundle rules (stricter than an image
    /// layer's: no absolute names or link targets, no whiteouts, no file
    /// capabilities). The unpacker enforces its own rules again.
    static func checkEntry(_ entry: TarEntry, label: String) throws {
        func refuse(_ rule: String) -> HearthError {
            HearthError(.invalidArgument, "\(label): entry \"\(entry.displayPath)\": \(rule)")
        }
        let slash = UInt8(ascii: "/")
        if entry.path.first == slash {
            throw refuse("absolute path; members must be relative to the bundle root")
        }
        let components = entry.path.split(separator: slash, omittingEmptySubsequences: true)
            .filter { !$0.elementsEqual([UInt8(ascii: ".")]) }
        if components.contains(where: { $0.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) }) {
            throw refuse("path leaves the bundle (\"..\" component)")
        }
        if let name = components.last, name.starts(with: Array(".wh.".utf8)) {
            throw refuse("\".wh.\" names are overlay whiteouts and are not allowed in a code bundle")
        }
        switch entry.kind {
        case .characterDevice, .blockDevice:
            throw refuse("device nodes are not allowed in a code bundle")
        case .fifo:
            throw refuse("FIFOs are not allowed in a code bundle")
        case .symlink:
            let target = TarEntry.display(entry.linkTarget)
            if entry.linkTarget.first == slash {
                throw refuse("symlink target \"\(target)\" is absolute; only relative links that stay inside the bundle are allowed")
            }
            if LayerUnpacker.symlinkEscapes(linkDirectory: components.dropLast().map(Array.init), target: entry.linkTarget) {
                throw refuse("symlink target \"\(target)\" leaves the bundle")
            }
        case .hardLink:
            let target = TarEntry.display(entry.linkTarget)
            let parts = entry.linkTarget.split(separator: slash, omittingEmptySubsequences: true)
            if entry.linkTarget.first == slash || parts.contains(where: { $0.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) }) {
                throw refuse("hard link target \"\(target)\" leaves the bundle")
            }
        case .regular, .directory:
            break
        }
        if entry.xattrs.contains(where: { $0.name == "security.capability" }) {
            throw refuse("file capabilities (security.capability) are not allowed in a code bundle")
        }
    }

    /// Tar and unpacker refusals are the client's fault (HTTP 400), whatever
    /// code the image path gives them; system errors stay what they are.
    static func asUploadError(_ error: any Error) -> any Error {
        if let e = error as? HearthError, e.code == .invalidImage || e.code == .unsafeLayer {
            return HearthError(.invalidArgument, e.message)
        }
        return error
    }

    static func isSHA256Hex(_ s: String) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    static func checkSHA(_ sha: String) throws {
        guard isSHA256Hex(sha) else {
            throw HearthError(.invalidArgument,
                              "code bundle: \(String(sha.prefix(80)).debugDescription) is not a sha256 (64 lowercase hex digits)")
        }
    }

    /// `64 MiB (67108864 bytes)`.
    static func describe(_ bytes: Int64) -> String {
        if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB (\(bytes) bytes)" }
        if bytes >= 1 << 10 && bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB (\(bytes) bytes)" }
        return "\(bytes) bytes"
    }

    static func hex(_ digest: SHA256.Digest) -> String { Hex.string(digest) }

    static func hashFile(_ fd: OwnedFD, size: Int64, path: String) throws -> String {
        var hasher = SHA256()
        let source = FileSource(fd: fd, path: path, offset: 0, length: size, truncationCode: .invalidArgument, what: "code bundle \(path)")
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = try source.read(into: buffer)
            if n == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return hex(hasher.finalize())
    }

    static func readHead(_ source: ByteSource, _ count: Int) throws -> [UInt8] {
        var head = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = try head.withUnsafeMutableBytes { raw in
                try source.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[got...]))
            }
            if n == 0 { break }
            got += n
        }
        return Array(head[0..<got])
    }

    /// utimensat/futimens times meaning "now" (UTIME_NOW, a C macro
    /// Swift does not import: (1 << 30) - 1 in linux/stat.h).
    static var nowTimes: [timespec] {
        let utimeNow = (1 << 30) - 1
        return [timespec(tv_sec: 0, tv_nsec: utimeNow), timespec(tv_sec: 0, tv_nsec: utimeNow)]
    }

    static func syncDirectory(_ path: String) throws {
        let dir = try OwnedFD.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fsync(dir.raw) == 0 else { throw SystemError.current("fsync", path) }
    }

    // MARK: tree walk

    struct Tally {
        var files = 0
        var bytes: Int64 = 0
        var seen = Set<[UInt64]>()
    }

    /// Counts the tree and, with `fix`, makes it root-owned with clean
    /// modes. Never follows a symlink: directories and files are opened
    /// `O_NOFOLLOW` from their parent's descriptor, links are chowned with
    /// `AT_SYMLINK_NOFOLLOW`. Anything but directories, regular files and
    /// symlinks is an error (the checks before unpacking refused them).
    static func walk(_ dir: OwnedFD, display: String, depth: Int, fix: Bool, tally: inout Tally) throws {
        // The unpacker refuses trees deeper than 256; this only bounds the
        // descriptors a damaged tree could make this hold.
        guard depth <= 512 else { throw HearthError(.internal, "\(display): directory tree is nested too deeply") }
        // Raw names: a member name need not be UTF-8, and skipping one would
        // leave it unnormalised.
        for raw in try Dir.rawNames(dir, display: display) {
            let child = display + "/" + TarEntry.display(raw)
            let name = Dir.cString(raw)
            var st = stat()
            guard fstatat(dir.raw, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw SystemError.current("stat", child) }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                let sub = try openAt(dir, name, O_RDONLY | O_DIRECTORY, display: child)
                if fix { try setOwnerAndMode(sub, 0o755, display: child) }
                try walk(sub, display: child, depth: depth + 1, fix: fix, tally: &tally)
            case S_IFREG:
                tally.files += 1
                if tally.seen.insert([UInt64(st.st_dev), UInt64(st.st_ino)]).inserted {
                    tally.bytes += Int64(st.st_size)
                }
                if fix {
                    // O_NONBLOCK | O_NOCTTY: harmless for a regular file, and
                    // nothing here may block or take a terminal.
                    let file = try openAt(dir, name, O_RDONLY | O_NONBLOCK | O_NOCTTY, display: child)
                    try setOwnerAndMode(file, st.st_mode & 0o111 != 0 ? 0o755 : 0o644, display: child)
                }
            case S_IFLNK:
                // A symlink's own mode is meaningless; its owner is reset.
                if fix, fchownat(dir.raw, name, 0, 0, AT_SYMLINK_NOFOLLOW) != 0 {
                    throw SystemError.current("lchown", child)
                }
            default:
                throw HearthError(.invalidArgument, "\(child): not a directory, regular file or symlink; refused in a code bundle")
            }
        }
    }

    /// Owner first: chown clears setuid/setgid and file capabilities; then
    /// the exact mode, which has no special bits.
    private static func setOwnerAndMode(_ fd: OwnedFD, _ mode: mode_t, display: String) throws {
        guard fchown(fd.raw, 0, 0) == 0 else { throw SystemError.current("chown", display) }
        guard fchmod(fd.raw, mode) == 0 else { throw SystemError.current("chmod", display) }
    }

    private static func openAt(_ dir: OwnedFD, _ name: [CChar], _ flags: Int32, display: String) throws -> OwnedFD {
        while true {
            let fd = openat(dir.raw, name, flags | O_NOFOLLOW | O_CLOEXEC)
            if fd >= 0 { return OwnedFD(owning: fd) }
            if errno == EINTR { continue }
            throw SystemError.current("open", display)
        }
    }
}

// MARK: byte sources

/// Refuses to yield more than `limit` bytes. Skips read through (they are
/// decompressed anyway) so every byte is counted.
final class LimitedSource: ByteSource {
    private let inner: ByteSource
    private let limit: Int64
    private let label: String
    private var count: Int64 = 0

    init(_ inner: ByteSource, limit: Int64, label: String) {
        self.inner = inner
        self.limit = limit
        self.label = label
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try inner.read(into: buffer)
        count += Int64(n)
        guard count <= limit else {
            throw HearthError(.invalidArgument,
                              "\(label): the archive expands to more than \(CodeStore.describe(limit)) of tar data (the unpacked-size limit plus room for headers)")
        }
        return n
    }

    func skip(_ count: Int64) throws -> Int64 {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { scratch.deallocate() }
        var left = count
        while left > 0 {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<Int(min(left, Int64(scratch.count)))]))
            if n == 0 { break }
            left -= Int64(n)
        }
        return count - left
    }
}

// MARK: directory listing

/// Directory listings, errors naming the path. Shared by both stores.
enum Dir {
    static func names(_ path: String) throws -> [String] { try FS.names(path) }

    static func rawNames(_ dir: OwnedFD, display: String) throws -> [[UInt8]] {
        try FS.list(dir, display: display).map(\.name)
    }

    /// A NUL-terminated copy for *at calls (directory entries hold no NUL).
    static func cString(_ bytes: [UInt8]) -> [CChar] {
        bytes.map { CChar(bitPattern: $0) } + [0]
    }
}

// MARK: per-replica views

extension CodeStore {
    /// Makes bundle `sha` visible in `view`, a replica's own code directory
    /// (bind-mounted read-only at `/.hearth/code`): a tree of hard links to
    /// the stored files, so a replica sees the bundles its own tasks named
    /// and no other environment's. Built beside its final name and renamed
    /// in, so a replica never sees half a bundle. Idempotent. Blocking.
    public func link(_ sha: String, into view: String) throws {
        let source = try path(of: sha)
        let final = view + "/" + sha
        var st = stat()
        if lstat(final, &st) == 0 { return }
        let temp = view + "/." + sha + ".tmp-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        do {
            guard mkdir(temp, 0o755) == 0 else { throw SystemError.current("mkdir", temp) }
            let src = try OwnedFD.open(source, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let dst = try OwnedFD.open(temp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            try Self.mirror(src, source, into: dst, temp, depth: 0)
            guard rename(temp, final) == 0 else {
                // Another thread linked it meanwhile: theirs stays.
                if errno == EEXIST || errno == ENOTEMPTY { try FS.removeTree(path: temp); return }
                throw SystemError.current("rename to \(final)", temp)
            }
        } catch {
            try? FS.removeTree(path: temp)
            throw error
        }
    }

    /// Directories are made, regular files hard-linked (copied across
    /// filesystems), symlinks re-created; the store holds nothing else.
    private static func mirror(_ src: OwnedFD, _ srcPath: String, into dst: OwnedFD, _ dstPath: String,
                               depth: Int) throws {
        guard depth < 256 else { throw HearthError(.internal, "\(srcPath): nested too deeply") }
        for raw in try Dir.rawNames(src, display: srcPath) {
            let shown = String(decoding: raw, as: UTF8.self)
            try (raw + [0]).withUnsafeBufferPointer { buf in
                try buf.withMemoryRebound(to: CChar.self) { nameBuf in
                    guard let name = nameBuf.baseAddress else { return }
                    var st = stat()
                    guard fstatat(src.raw, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                        throw SystemError.current("stat", srcPath + "/" + shown)
                    }
                    switch st.st_mode & S_IFMT {
                    case S_IFDIR:
                        guard mkdirat(dst.raw, name, st.st_mode & 0o7777) == 0 else {
                            throw SystemError.current("mkdir", dstPath + "/" + shown)
                        }
                        let s = try src.openAt(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, display: srcPath + "/" + shown)
                        let d = try dst.openAt(name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, display: dstPath + "/" + shown)
                        try mirror(s, srcPath + "/" + shown, into: d, dstPath + "/" + shown, depth: depth + 1)
                    case S_IFREG:
                        if linkat(src.raw, name, dst.raw, name, 0) != 0 {
                            guard errno == EXDEV else { throw SystemError.current("link", dstPath + "/" + shown) }
                            try copyFile(src, name, to: dst, srcPath + "/" + shown, dstPath + "/" + shown,
                                         mode: st.st_mode & 0o7777)
                        }
                    case S_IFLNK:
                        var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                        let n = readlinkat(src.raw, name, &target, Int(PATH_MAX))
                        guard n >= 0 else { throw SystemError.current("readlink", srcPath + "/" + shown) }
                        target[n] = 0
                        guard symlinkat(target, dst.raw, name) == 0 else {
                            throw SystemError.current("symlink", dstPath + "/" + shown)
                        }
                    default:
                        throw HearthError(.internal, "\(srcPath)/\(shown): not a directory, regular file or symlink")
                    }
                }
            }
        }
    }

    private static func copyFile(_ src: OwnedFD, _ name: UnsafePointer<CChar>, to dst: OwnedFD,
                                 _ srcShown: String, _ dstShown: String, mode: mode_t) throws {
        let input = openat(src.raw, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard input >= 0 else { throw SystemError.current("open", srcShown) }
        defer { close(input) }
        let output = openat(dst.raw, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard output >= 0 else { throw SystemError.current("create", dstShown) }
        defer { close(output) }
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buf.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw SystemError.current("read", srcShown) }
            if n == 0 { return }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { raw -> Int in
                    guard let base = raw.baseAddress else { return 0 }
                    return write(output, base + off, n - off)
                }
                if w < 0 { if errno == EINTR { continue }; throw SystemError.current("write", dstShown) }
                off += w
            }
        }
    }
}
