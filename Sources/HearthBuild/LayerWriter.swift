#if canImport(Glibc)
import Glibc
#endif
import CHearth
import HearthCore
import HearthImage
import HearthOS

/// What a layer is written from: a tree in overlayfs form (a build
/// replica's upper directory), or a plain tree placed under a prefix (a
/// code bundle copied into the image).
public struct LayerSource: Sendable {
    /// The directory whose contents become the layer.
    public var root: String
    /// Where its entries go in the image (`root/app` for a copy to /root/app).
    public var prefix: [[UInt8]] = []
    /// Image paths (components) left out, with everything below them.
    public var excluded: Set<[[UInt8]]> = []
    /// A plain root filesystem (`hearth image import DIR`), not overlayfs:
    /// no entry is a whiteout, and device nodes and FIFOs (a debootstrap
    /// tree's /dev) are left out instead of refused; a replica's /dev is
    /// made fresh anyway.
    public var plainRootfs = false
    /// The image below the layer: a directory that has nothing in the layer
    /// below it and the same owner and mode as there is left out (it was
    /// only copied up, or made by Hearth). Without one, every directory is
    /// written.
    var lower: LowerView?

    public init(root: String, prefix: [[UInt8]] = [], excluded: Set<[[UInt8]]> = []) {
        self.root = root
        self.prefix = prefix
        self.excluded = excluded
    }

    /// The image's layers, bottom first, as the merged view below this layer.
    public mutating func setLower(layersBottomFirst: [String]) {
        lower = LowerView(layersBottomFirst: layersBottomFirst)
    }

    /// Splits an absolute or relative path into components.
    public static func components(_ path: String) -> [[UInt8]] {
        path.utf8.split(separator: UInt8(ascii: "/")).map(Array.init).filter { $0 != [UInt8(ascii: ".")] }
    }
}

/// Writes an OCI layer: an uncompressed tar of a tree, hashed as it is
/// written (the SHA-256 of the stream is the diff ID). Overlayfs whiteouts
/// (0:0 character devices) become `.wh.NAME`; an opaque directory
/// (`trusted.overlay.opaque` or `user.overlay.opaque` = `y`) becomes the
/// directory and `.wh..wh..opq`; hard links within the tree become tar
/// links; `security.capability` and `user.*` xattrs (not `user.overlay.*`)
/// go into PAX records; long names and link targets too. Entries are sorted
/// byte-wise, depth first, parents before children, so the same tree gives
/// the same bytes. Nothing on the host is followed: every directory and
/// file is opened relative to its parent with `O_NOFOLLOW`.
///
/// Refused, naming the path: device nodes and FIFOs (no image layer may hold
/// them), names beginning with `.wh.` (they would read as whiteouts),
/// overlayfs metacopy and redirect entries (their data or name is in a lower
/// layer), paths over 4095 bytes or 256 levels deep. Sockets are skipped.
public enum LayerWriter {
    public struct Result: Sendable {
        /// `sha256:…` of the tar stream.
        public var diffID: String
        public var entries: Int
        /// Bytes of regular file content.
        public var bytes: Int64
        /// Bytes of the tar stream.
        public var tarBytes: Int64
    }

    static let maxDepth = 256

    /// glibc's dev_t encoding (sys/sysmacros.h, whose macros Swift cannot call).
    static func major(_ dev: UInt64) -> UInt64 { ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff)) }
    static func minor(_ dev: UInt64) -> UInt64 { (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff)) }
    static let maxPathBytes = 4095

    /// Writes the layer of `source` to `tarPath` (created, mode 0600; it
    /// must not exist). On failure the caller removes `tarPath`.
    public static func write(_ source: LayerSource, to tarPath: String) throws -> Result {
        let out = try OwnedFD.open(tarPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode: 0o600)
        let root = try OwnedFD.open(source.root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        let walk = Walk(source: source, writer: TarWriter(fd: out, display: tarPath))
        try walk.start()
        try walk.directory(root, [], depth: 0)
        let diffID = try walk.writer.finish()
        guard fsync(out.raw) == 0 else { throw SystemError.current("fsync", tarPath) }
        return Result(diffID: diffID, entries: walk.entries, bytes: walk.bytes, tarBytes: walk.writer.count)
    }

    private final class Walk {
        let source: LayerSource
        let writer: TarWriter
        /// Directories on the current path not written yet: one is written
        /// when something below it is, or when it must be for itself.
        var pending: [(member: TarMember, written: Bool)] = []
        /// (device, inode) of files with several links → the first path written.
        var links: [[UInt64]: [UInt8]] = [:]
        var entries = 0
        var bytes: Int64 = 0

        init(source: LayerSource, writer: TarWriter) {
            self.source = source
            self.writer = writer
        }

        func display(_ components: [[UInt8]]) -> String {
            source.root + "/" + TarEntry.display(Array(components.joined(separator: [UInt8(ascii: "/")])))
        }

        func imagePath(_ components: [[UInt8]]) -> [[UInt8]] { source.prefix + components }

        func joined(_ components: [[UInt8]]) throws -> [UInt8] {
            let path = Array(components.joined(separator: [UInt8(ascii: "/")]))
            guard path.count <= LayerWriter.maxPathBytes else {
                throw HearthError(.invalidArgument, "/\(TarEntry.display(Array(path.prefix(200))))…: the path is longer than \(LayerWriter.maxPathBytes) bytes, more than an image layer may hold")
            }
            return path
        }

        /// The prefix's directories (a copy's destination and its parents)
        /// with the owner and mode the image below has for them.
        func start() throws {
            for i in source.prefix.indices {
                let components = Array(source.prefix[...i])
                var member = TarMember(kind: .directory, path: try joined(components), mode: 0o755)
                if let st = source.lower?.lstat(components), (st.st_mode & S_IFMT) == S_IFDIR {
                    member.mode = UInt32(st.st_mode & 0o7777)
                    member.uid = st.st_uid
                    member.gid = st.st_gid
                    member.mtime = Int64(st.st_mtim.tv_sec)
                }
                pending.append((member, false))
            }
            try flushPending()
        }

        func flushPending() throws {
            for i in pending.indices where !pending[i].written {
                try emit(pending[i].member)
                pending[i].written = true
            }
        }

        func emit(_ member: TarMember) throws {
            try writer.append(member)
            entries += 1
        }

        func directory(_ dir: OwnedFD, _ components: [[UInt8]], depth: Int) throws {
            guard depth < LayerWriter.maxDepth else {
                throw HearthError(.invalidArgument, "\(display(components)): nested deeper than \(LayerWriter.maxDepth) directories, more than an image layer may hold")
            }
            for name in try names(dir, display: display(components)) {
                let child = components + [name]
                let inImage = imagePath(child)
                if source.excluded.contains(inImage) { continue }
                var st = stat()
                let rc = withCString(name) { fstatat(dir.raw, $0, &st, AT_SYMLINK_NOFOLLOW) }
                guard rc == 0 else { throw SystemError.current("lstat", display(child)) }
                let isWhiteout = !source.plainRootfs && LowerView.isWhiteout(st)
                if !isWhiteout && name.starts(with: Array(".wh.".utf8)) {
                    throw HearthError(.invalidArgument, "\(display(child)): names beginning with .wh. are reserved for whiteouts in image layers; rename it")
                }
                switch st.st_mode & S_IFMT {
                case S_IFDIR:
                    try subdirectory(dir, name, child, st, depth: depth)
                case S_IFREG:
                    try flushPending()
                    try regular(dir, name, child, st)
                case S_IFLNK:
                    try flushPending()
                    try symlink(dir, name, child, st)
                case S_IFCHR where isWhiteout:
                    try flushPending()
                    try emit(TarMember(kind: .regular, path: try joined(imagePath(components) + [Array(".wh.".utf8) + name]),
                                       mode: 0))
                case S_IFSOCK:
                    continue  // a socket is a live endpoint, not content; tar cannot hold one
                case S_IFCHR where source.plainRootfs, S_IFBLK where source.plainRootfs, S_IFIFO where source.plainRootfs:
                    continue
                default:
                    let what = (st.st_mode & S_IFMT) == S_IFIFO ? "a FIFO"
                        : "a device node (\(LayerWriter.major(UInt64(st.st_rdev))):\(LayerWriter.minor(UInt64(st.st_rdev))))"
                    throw HearthError(.invalidArgument, "\(display(child)) is \(what); image layers cannot hold device nodes or FIFOs (make it when the image runs instead)")
                }
            }
        }

        func subdirectory(_ parent: OwnedFD, _ name: [UInt8], _ components: [[UInt8]], _ st: stat, depth: Int) throws {
            let fd = withCString(name) { openat(parent.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            guard fd >= 0 else { throw SystemError.current("open", display(components)) }
            let dir = OwnedFD(owning: fd)
            let attributes = try xattrs(dir, display: display(components))
            let opaque = !source.plainRootfs && LowerView.isOpaque(dir.raw)
            let member = TarMember(kind: .directory, path: try joined(imagePath(components)),
                                   mode: UInt32(st.st_mode & 0o7777), uid: st.st_uid, gid: st.st_gid,
                                   mtime: Int64(st.st_mtim.tv_sec), xattrs: attributes)
            pending.append((member, false))
            defer { pending.removeLast() }
            if opaque {
                try flushPending()
                try emit(TarMember(kind: .regular, path: try joined(imagePath(components) + [Array(".wh..wh..opq".utf8)]),
                                   mode: 0))
            }
            try directory(dir, components, depth: depth + 1)
            if let last = pending.last, !last.written, mustWrite(imagePath(components), st) {
                try flushPending()
            }
        }

        /// A directory with nothing written below it is written when the
        /// image below lacks it, or has it with another owner or mode.
        func mustWrite(_ inImage: [[UInt8]], _ st: stat) -> Bool {
            guard let lower = source.lower else { return true }
            guard let below = lower.lstat(inImage), (below.st_mode & S_IFMT) == S_IFDIR else { return true }
            return (below.st_mode & 0o7777) != (st.st_mode & 0o7777) || below.st_uid != st.st_uid || below.st_gid != st.st_gid
        }

        /// A second link to a file already written: a tar hard link to it.
        func linkedCopy(_ components: [[UInt8]], _ st: stat) throws -> Bool {
            guard st.st_nlink > 1 else { return false }
            let key = [UInt64(st.st_dev), UInt64(st.st_ino)]
            let path = try joined(imagePath(components))
            if let first = links[key] {
                try emit(TarMember(kind: .hardLink, path: path, linkTarget: first, mode: UInt32(st.st_mode & 0o7777),
                                   uid: st.st_uid, gid: st.st_gid, mtime: Int64(st.st_mtim.tv_sec)))
                return true
            }
            links[key] = path
            return false
        }

        func regular(_ parent: OwnedFD, _ name: [UInt8], _ components: [[UInt8]], _ st: stat) throws {
            if try linkedCopy(components, st) { return }
            let where_ = display(components)
            let fd = withCString(name) { openat(parent.raw, $0, O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC) }
            guard fd >= 0 else { throw SystemError.current("open", where_) }
            let file = OwnedFD(owning: fd)
            var now = stat()
            guard fstat(file.raw, &now) == 0 else { throw SystemError.current("stat", where_) }
            guard (now.st_mode & S_IFMT) == S_IFREG, now.st_ino == st.st_ino else {
                throw HearthError(.internal, "\(where_) changed while it was written into a layer")
            }
            let attributes = try xattrs(file, display: where_)
            try emit(TarMember(kind: .regular, path: try joined(imagePath(components)), mode: UInt32(st.st_mode & 0o7777),
                               uid: st.st_uid, gid: st.st_gid, size: Int64(st.st_size),
                               mtime: Int64(st.st_mtim.tv_sec), xattrs: attributes))
            try writer.appendContent(from: file, size: Int64(st.st_size), display: where_)
            bytes += Int64(st.st_size)
        }

        func symlink(_ parent: OwnedFD, _ name: [UInt8], _ components: [[UInt8]], _ st: stat) throws {
            if try linkedCopy(components, st) { return }
            var buffer = [CChar](repeating: 0, count: LayerWriter.maxPathBytes + 2)
            let n = withCString(name) { cname in readlinkat(parent.raw, cname, &buffer, buffer.count) }
            guard n >= 0 else { throw SystemError.current("readlink", display(components)) }
            guard n <= LayerWriter.maxPathBytes else {
                throw HearthError(.invalidArgument, "\(display(components)): the symlink's target is longer than \(LayerWriter.maxPathBytes) bytes, more than an image layer may hold")
            }
            try emit(TarMember(kind: .symlink, path: try joined(imagePath(components)), linkTarget: buffer[0..<n].map { UInt8(bitPattern: $0) },
                               mode: UInt32(st.st_mode & 0o7777), uid: st.st_uid, gid: st.st_gid,
                               mtime: Int64(st.st_mtim.tv_sec)))
        }

        /// The xattrs a layer may carry, sorted by name; overlayfs entries
        /// whose data or name lives in a lower layer are refused.
        func xattrs(_ fd: OwnedFD, display where_: String) throws -> [(name: String, value: [UInt8])] {
            var list = [CChar](repeating: 0, count: 4096)
            var n = hearth_flistxattr(fd.raw, &list, list.count)
            if n < 0 && errno == ERANGE {
                // Longer than 4 KiB of names: the kernel's limit is 64 KiB.
                list = [CChar](repeating: 0, count: 65536)
                n = hearth_flistxattr(fd.raw, &list, list.count)
            }
            if n < 0 {
                if errno == ENOTSUP { return [] }
                throw SystemError.current("listxattr", where_)
            }
            let names = list[0..<n].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            var out: [(name: String, value: [UInt8])] = []
            for name in names.sorted() {
                if name == "trusted.overlay.metacopy" || name == "trusted.overlay.redirect"
                    || name == "user.overlay.metacopy" || name == "user.overlay.redirect" {
                    throw HearthError(.internal, "\(where_): overlayfs wrote it as \(name.split(separator: ".").last ?? "") (its data or name is in a lower layer); the build's overlay must run without metacopy and redirect_dir")
                }
                guard name == "security.capability" || (name.hasPrefix("user.") && !name.hasPrefix("user.overlay.")) else { continue }
                var value = [UInt8](repeating: 0, count: 65536)
                let size = value.withUnsafeMutableBytes { hearth_fgetxattr(fd.raw, name, $0.baseAddress, $0.count) }
                guard size >= 0 else { throw SystemError.current("getxattr \(name)", where_) }
                out.append((name, Array(value[0..<size])))
            }
            return out
        }

        /// The entries of a directory, sorted byte-wise.
        func names(_ dir: OwnedFD, display where_: String) throws -> [[UInt8]] {
            try FS.list(dir, display: where_).map(\.name).sorted { $0.lexicographicallyPrecedes($1) }
        }
    }
}
