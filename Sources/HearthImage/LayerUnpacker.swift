#if canImport(Glibc)
import Glibc
#endif
import CHearth
import HearthCore
import HearthOS

/// Unpacks one layer tar into an empty directory, in overlayfs form, refusing
/// anything that could reach outside that directory.
///
/// The input is untrusted and this runs as root, so:
/// - every path is split into components; `..` anywhere is refused; leading
///   `/` and `./` are dropped;
/// - parents are opened one component at a time with
///   `O_DIRECTORY|O_NOFOLLOW` from the layer's own descriptor: a symlink (or
///   file) in the way is refused, never followed — so a layer cannot create
///   `link -> /etc` and then write `link/passwd`;
/// - the final component is created with *at calls that do not follow
///   symlinks (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mknodat`, `symlinkat`,
///   `linkat` without `AT_SYMLINK_FOLLOW`), replacing what was there;
/// - symlink targets that climb above the layer root, hard links that leave
///   the layer or go through a symlink, device nodes and FIFOs are refused;
/// - `trusted.*` and `user.overlay.*` xattrs are never taken from the image
///   (they would steer overlayfs); only `security.capability` and `user.*`.
///
/// Whiteouts become what overlayfs expects: `.wh.NAME` → a 0:0 character
/// device NAME, `.wh..wh..opq` → `trusted.overlay.opaque=y` on the directory.
public final class LayerUnpacker {
    /// Deeper paths are refused: nothing legitimate comes close, and the
    /// bound keeps every recursive walk of a layer (removal, size) shallow.
    static let maxDepth = 256
    /// PATH_MAX - 1: longer paths cannot be used by ordinary tools anyway.
    static let maxPathBytes = 4095

    private let root: OwnedFD
    private let rootPath: String
    private let label: String
    /// The last parent directory opened, reused while entries stay in the
    /// same directory (tar lists them together). Dropped whenever a
    /// directory is removed, so it never points at a deleted one.
    private var cachedParent: (components: ArraySlice<[UInt8]>, fd: OwnedFD)?
    private var directoryTimes: [(components: [[UInt8]], time: timespec)] = []
    /// Bytes of regular file content written.
    public private(set) var bytes: Int64 = 0
    public private(set) var entries = 0
    /// A plain root filesystem's archive rather than an image layer: its
    /// device nodes and FIFOs (a rootfs's /dev) are left out, not refused,
    /// as a directory import leaves them out; `skipped` counts them.
    public var skipSpecialFiles = false
    public private(set) var skipped = 0

    /// - Parameters:
    ///   - root: the (empty) directory to unpack into.
    ///   - rootPath: its path, for errors.
    ///   - label: names the layer in errors, e.g. `layer sha256:…`.
    public init(root: OwnedFD, rootPath: String, label: String) {
        self.root = root
        self.rootPath = rootPath
        self.label = label
    }

    /// Applies every entry, then sets directory mtimes (which the entries
    /// written into them changed).
    public func unpack(_ reader: TarReader) throws {
        while let entry = try reader.next() {
            try apply(entry, reader)
            entries += 1
        }
        try fixDirectoryTimes()
    }

    // MARK: rules

    private func refuse(_ entry: TarEntry, _ rule: String) -> HearthError {
        HearthError(.unsafeLayer, "\(label): entry \"\(entry.displayPath)\": \(rule)")
    }

    private func display(_ components: some Collection<[UInt8]>) -> String {
        TarEntry.display(Array(components.joined(separator: [UInt8(ascii: "/")])))
    }

    private func hostPath(_ components: some Collection<[UInt8]>) -> String {
        components.isEmpty ? rootPath : rootPath + "/" + display(components)
    }

    /// Splits a member path into components: leading `/` and `.` components
    /// dropped, `..` refused, length and depth bounded.
    private func components(of path: [UInt8], _ entry: TarEntry, what: String) throws -> [[UInt8]] {
        guard path.count <= LayerUnpacker.maxPathBytes else {
            throw refuse(entry, "\(what) is longer than \(LayerUnpacker.maxPathBytes) bytes")
        }
        var out: [[UInt8]] = []
        for part in path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if part.elementsEqual([UInt8(ascii: ".")]) { continue }
            if part.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                throw refuse(entry, "\(what) leaves the layer (\"..\" component)")
            }
            out.append(Array(part))
        }
        guard out.count <= LayerUnpacker.maxDepth else {
            throw refuse(entry, "\(what) is nested deeper than \(LayerUnpacker.maxDepth) directories")
        }
        return out
    }

    /// Whether a symlink at `linkDirectory` pointing to `target` climbs above
    /// the layer root, resolving lexically: relative targets from the link's
    /// directory, absolute ones from the layer root. Defence in depth: a
    /// chain of links can still point anywhere once followed, so the real
    /// guarantee is that nothing on the host follows links inside a layer
    /// (this unpacker never does; a replica resolves them in its own root).
    public static func symlinkEscapes(linkDirectory: some Collection<[UInt8]>, target: [UInt8]) -> Bool {
        var depth = target.first == UInt8(ascii: "/") ? 0 : linkDirectory.count
        for part in target.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if part.elementsEqual([UInt8(ascii: ".")]) { continue }
            if part.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                depth -= 1
                if depth < 0 { return true }
            } else {
                depth += 1
            }
        }
        return false
    }

    /// xattrs an image may set. `trusted.*` (overlayfs's own, and anything
    /// else root-only) and `user.overlay.*` (overlayfs with `userxattr`) are
    /// dropped; so are ACLs and LSM labels, which Hearth does not manage.
    static func acceptsXattr(_ name: String) -> Bool {
        if name == "security.capability" { return true }
        return name.hasPrefix("user.") && !name.hasPrefix("user.overlay.")
    }

    // MARK: entries

    private static let whiteoutPrefix = Array(".wh.".utf8)
    private static let opaqueMarker = Array(".wh..wh..opq".utf8)
    private static let whiteoutMetaPrefix = Array(".wh..wh.".utf8)

    private func apply(_ entry: TarEntry, _ reader: TarReader) throws {
        let path = try components(of: entry.path, entry, what: "path")

        if let name = path.last, name.starts(with: LayerUnpacker.whiteoutPrefix) {
            try applyWhiteout(entry, path: path, name: name)
            return
        }
        switch entry.kind {
        case .characterDevice, .blockDevice, .fifo:
            if skipSpecialFiles {
                skipped += 1
                return
            }
        default:
            break
        }
        switch entry.kind {
        case .characterDevice, .blockDevice:
            throw refuse(entry, "device nodes are not allowed in an image layer (\(entry.deviceMajor):\(entry.deviceMinor))")
        case .fifo:
            throw refuse(entry, "FIFOs are not allowed in an image layer")
        default:
            break
        }
        guard let name = path.last else {
            // `./` or `/`: the layer root's own metadata.
            guard entry.kind == .directory else { throw refuse(entry, "names the layer root but is not a directory") }
            try applyMetadata(root, entry, path: [])
            directoryTimes.append(([], LayerUnpacker.time(entry)))
            return
        }
        let parentPath = path.dropLast()
        let parent = try openDirectory(parentPath, create: true, entry, role: "parent")

        switch entry.kind {
        case .directory:
            let dir = try makeDirectory(parent, name, entry, path: path)
            try applyMetadata(dir, entry, path: path)
            directoryTimes.append((path, LayerUnpacker.time(entry)))

        case .regular:
            let file = try create(parent, name, entry, path: path) { dirfd, cname in
                let fd = openat(dirfd, cname, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                return fd >= 0 ? OwnedFD(owning: fd) : nil
            }
            let where_ = hostPath(path)
            try reader.readContent { chunk in try file.writeAll(chunk, display: where_) }
            bytes += entry.size
            try applyMetadata(file, entry, path: path)
            var times = [LayerUnpacker.time(entry), LayerUnpacker.time(entry)]
            guard futimens(file.raw, &times) == 0 else { throw SystemError.current("utimensat", where_) }

        case .symlink:
            guard !entry.linkTarget.isEmpty else { throw refuse(entry, "symlink has an empty target") }
            guard entry.linkTarget.count <= LayerUnpacker.maxPathBytes else {
                throw refuse(entry, "symlink target is longer than \(LayerUnpacker.maxPathBytes) bytes")
            }
            if LayerUnpacker.symlinkEscapes(linkDirectory: parentPath, target: entry.linkTarget) {
                throw refuse(entry, "symlink target \"\(TarEntry.display(entry.linkTarget))\" leaves the layer")
            }
            _ = try create(parent, name, entry, path: path) { dirfd, cname in
                withCName(entry.linkTarget) { target in symlinkat(target, dirfd, cname) == 0 ? () : nil }
            }
            try withCName(name) { cname in
                let where_ = hostPath(path)
                guard fchownat(parent.raw, cname, entry.uid, entry.gid, AT_SYMLINK_NOFOLLOW) == 0 else {
                    throw SystemError.current("lchown", where_)
                }
                var times = [LayerUnpacker.time(entry), LayerUnpacker.time(entry)]
                guard utimensat(parent.raw, cname, &times, AT_SYMLINK_NOFOLLOW) == 0 else {
                    throw SystemError.current("utimensat", where_)
                }
            }

        case .hardLink:
            try makeHardLink(entry, parent: parent, name: name, path: path)

        case .characterDevice, .blockDevice, .fifo:
            break  // refused above
        }
    }

    private func applyWhiteout(_ entry: TarEntry, path: [[UInt8]], name: [UInt8]) throws {
        let parentPath = path.dropLast()
        if name == LayerUnpacker.opaqueMarker {
            // The directory hides everything below it in lower layers.
            let dir = try openDirectory(parentPath, create: true, entry, role: "directory")
            let value: [UInt8] = [UInt8(ascii: "y")]
            let rc = value.withUnsafeBytes { hearth_fsetxattr(dir.raw, "trusted.overlay.opaque", $0.baseAddress, 1, 0) }
            guard rc == 0 else { throw SystemError.current("setxattr trusted.overlay.opaque", hostPath(parentPath)) }
            return
        }
        if name.starts(with: LayerUnpacker.whiteoutMetaPrefix) {
            return  // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): no meaning for overlayfs
        }
        let hidden = Array(name.dropFirst(LayerUnpacker.whiteoutPrefix.count))
        guard !hidden.isEmpty, hidden != [UInt8(ascii: ".")], hidden != [UInt8(ascii: "."), UInt8(ascii: ".")] else {
            throw refuse(entry, "invalid whiteout name")
        }
        let parent = try openDirectory(parentPath, create: true, entry, role: "parent")
        let target = Array(parentPath) + [hidden]
        _ = try create(parent, hidden, entry, path: target) { dirfd, cname in
            mknodat(dirfd, cname, S_IFCHR, 0) == 0 ? () : nil
        }
    }

    private func makeHardLink(_ entry: TarEntry, parent: OwnedFD, name: [UInt8], path: [[UInt8]]) throws {
        let target = try components(of: entry.linkTarget, entry, what: "hard link target")
        guard let targetName = target.last else { throw refuse(entry, "hard link target is the layer root") }
        guard target != path else { throw refuse(entry, "hard link to itself") }
        let targetDisplay = TarEntry.display(entry.linkTarget)
        let targetParent = try openDirectory(target.dropLast(), create: false, entry, role: "hard link target \"\(targetDisplay)\": parent")
        let st = try withCName(targetName) { try FS.lstatAt(targetParent.raw, $0, display: hostPath(target)) }
        guard let st else {
            throw refuse(entry, "hard link target \"\(targetDisplay)\" does not exist in this layer")
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG, S_IFLNK:
            break
        case S_IFDIR:
            throw refuse(entry, "hard link target \"\(targetDisplay)\" is a directory")
        default:
            throw refuse(entry, "hard link target \"\(targetDisplay)\" is not a regular file or symlink")
        }
        _ = try create(parent, name, entry, path: path) { dirfd, cname in
            withCName(targetName) { tname in
                // Flags 0: link the target itself, never what a symlink points to.
                linkat(targetParent.raw, tname, dirfd, cname, 0) == 0 ? () : nil
            }
        }
    }

    // MARK: filesystem

    /// Opens the directory at `path` below the root one component at a
    /// time, never following a symlink; missing directories are created
    /// (mode 0755, root) when `create` is set.
    private func openDirectory(_ path: ArraySlice<[UInt8]>, create: Bool, _ entry: TarEntry, role: String) throws -> OwnedFD {
        if path.isEmpty { return root }
        if let cached = cachedParent, cached.components == path { return cached.fd }
        // Fast path: one openat2 that the kernel keeps beneath the root and
        // off symlinks. Anything unusual (a missing or non-directory
        // component, a symlink, no openat2) takes the walk below, which
        // creates what is missing and names what is refused.
        if let fd = openBeneath(path) {
            cachedParent = (path, fd)
            return fd
        }
        var current = root
        for (i, component) in path.enumerated() {
            let prefix = path.prefix(i + 1)
            let next: OwnedFD = try withCName(component) { cname in
                var createdHere = false
                while true {
                    let fd = openat(current.raw, cname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    if fd >= 0 { return OwnedFD(owning: fd) }
                    let err = errno
                    switch err {
                    case EINTR:
                        continue
                    case ENOENT where create && !createdHere:
                        if mkdirat(current.raw, cname, 0o755) != 0 && errno != EEXIST {
                            throw SystemError.current("mkdir", hostPath(prefix))
                        }
                        createdHere = true
                        continue
                    case ENOENT:
                        throw refuse(entry, "\(role) \"\(display(prefix))\" does not exist in this layer")
                    case ELOOP, ENOTDIR:
                        let st = try FS.lstatAt(current.raw, cname, display: hostPath(prefix))
                        if let st, (st.st_mode & S_IFMT) == S_IFLNK {
                            throw refuse(entry, "\(role) \"\(display(prefix))\" is a symlink; paths through symlinks are refused")
                        }
                        throw refuse(entry, "\(role) \"\(display(prefix))\" is not a directory")
                    default:
                        throw SystemError("open", hostPath(prefix), errno: err)
                    }
                }
            }
            current = next
        }
        cachedParent = (path, current)
        return current
    }

    /// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    /// of a directory below the root; nil on any failure.
    private func openBeneath(_ path: some Collection<[UInt8]>) -> OwnedFD? {
        // linux/openat2.h: RESOLVE_NO_MAGICLINKS 0x02, RESOLVE_NO_SYMLINKS 0x04, RESOLVE_BENEATH 0x08.
        let resolve: UInt64 = 0x02 | 0x04 | 0x08
        let joined = Array(path.joined(separator: [UInt8(ascii: "/")]))
        let fd = withCName(joined) { hearth_openat2(root.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0, resolve) }
        return fd >= 0 ? OwnedFD(owning: fd) : nil
    }

    /// Creates the final component with `make` (which returns nil and sets
    /// errno on failure). Whatever exists under that name is removed first
    /// and the creation retried once: later entries replace earlier ones.
    private func create<T>(_ parent: OwnedFD, _ name: [UInt8], _ entry: TarEntry, path: [[UInt8]],
                           _ make: (Int32, UnsafePointer<CChar>) -> T?) throws -> T {
        try withCName(name) { cname in
            if let made = make(parent.raw, cname) { return made }
            guard errno == EEXIST else { throw SystemError.current("create", hostPath(path)) }
            try removeExisting(parent, name, path: path)
            if let made = make(parent.raw, cname) { return made }
            throw SystemError.current("create", hostPath(path))
        }
    }

    /// mkdir, keeping an existing directory (its metadata is then updated by
    /// the caller) and replacing anything else.
    private func makeDirectory(_ parent: OwnedFD, _ name: [UInt8], _ entry: TarEntry, path: [[UInt8]]) throws -> OwnedFD {
        try withCName(name) { cname in
            if mkdirat(parent.raw, cname, 0o700) != 0 {
                guard errno == EEXIST else { throw SystemError.current("mkdir", hostPath(path)) }
                let st = try FS.lstatAt(parent.raw, cname, display: hostPath(path))
                if let st, (st.st_mode & S_IFMT) != S_IFDIR {
                    try removeExisting(parent, name, path: path)
                    guard mkdirat(parent.raw, cname, 0o700) == 0 else { throw SystemError.current("mkdir", hostPath(path)) }
                }
            }
            return try parent.openAt(cname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, display: hostPath(path))
        }
    }

    private func removeExisting(_ parent: OwnedFD, _ name: [UInt8], path: [[UInt8]]) throws {
        // The cached directory could be the one removed, or below it.
        cachedParent = nil
        try FS.removeTree(parent, name, display: hostPath(path))
    }

    /// Owner, then mode (chown clears setuid/setgid), then xattrs (chown also
    /// clears security.capability).
    private func applyMetadata(_ fd: OwnedFD, _ entry: TarEntry, path: [[UInt8]]) throws {
        let where_ = hostPath(path)
        guard fchown(fd.raw, entry.uid, entry.gid) == 0 else { throw SystemError.current("chown", where_) }
        guard fchmod(fd.raw, mode_t(entry.mode & 0o7777)) == 0 else { throw SystemError.current("chmod", where_) }
        for (name, value) in entry.xattrs where LayerUnpacker.acceptsXattr(name) {
            let rc = value.withUnsafeBytes { hearth_fsetxattr(fd.raw, name, $0.baseAddress, $0.count, 0) }
            guard rc == 0 else { throw SystemError.current("setxattr \(name)", where_) }
        }
    }

    /// An existing directory, without following symlinks; nil when it is
    /// gone (replaced by a later entry).
    private func openExisting(_ path: [[UInt8]]) throws -> OwnedFD? {
        if let fd = openBeneath(path) { return fd }
        var dir = root
        for component in path {
            let fd = withCName(component) { openat(dir.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            if fd < 0 {
                if errno == ENOENT || errno == ENOTDIR || errno == ELOOP { return nil }
                throw SystemError.current("open", hostPath(path))
            }
            dir = OwnedFD(owning: fd)
        }
        return dir
    }

    private static func time(_ entry: TarEntry) -> timespec {
        timespec(tv_sec: Int(clamping: entry.mtimeSeconds), tv_nsec: min(max(entry.mtimeNanoseconds, 0), 999_999_999))
    }

    /// Directory mtimes, set last: creating entries inside a directory
    /// changes its mtime. A directory replaced by a later entry is skipped.
    private func fixDirectoryTimes() throws {
        cachedParent = nil
        for (path, time) in directoryTimes {
            guard let dir = path.isEmpty ? root : try openExisting(path) else { continue }
            var times = [time, time]
            guard futimens(dir.raw, &times) == 0 else { throw SystemError.current("utimensat", hostPath(path)) }
        }
    }
}
