#if canImport(Glibc)
import Glibc
#endif
import HearthCore

extension FS {
    /// Removes `name` in `dir` and, if it is a directory, everything below
    /// it: rm -rf for trees whose content nobody vouches for (image layers,
    /// a replica's writable layer, a build's upper directory).
    ///
    /// - Never follows a symlink (each level is opened with O_NOFOLLOW).
    /// - Never crosses into another filesystem: a mount below is left as it
    ///   is (reported as EBUSY), not emptied.
    /// - Any depth, with two descriptors: the walk keeps a list of names per
    ///   level on the heap (no recursion), climbs back with "..", and checks
    ///   that ".." is the directory it came from (device and inode).
    /// - Goes on past what it cannot remove and throws the first error at
    ///   the end, so a teardown removes all it can.
    ///
    /// Missing is fine.
    public static func removeTree(_ dir: OwnedFD, _ name: [UInt8], display: String) throws {
        let top: stat? = try withCName(name) { try lstatAt(dir.raw, $0, display: display) }
        guard let top else { return }
        if (top.st_mode & S_IFMT) != S_IFDIR {
            try withCName(name) { cname in
                if unlinkat(dir.raw, cname, 0) != 0 && errno != ENOENT { throw SystemError.current("unlink", display) }
            }
            return
        }
        var walk = TreeWalk(display: display, device: top.st_dev)
        var current = try withCName(name) {
            try dir.openAt($0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, display: display)
        }
        walk.push(name: name, inode: top.st_ino, entries: walk.list(current))
        while !walk.levels.isEmpty {
            if let entry = walk.nextEntry() {
                if let child = walk.removeOrOpen(entry, in: current) {
                    current = child.fd
                    walk.push(name: entry.name, inode: child.inode, entries: walk.list(current))
                }
                continue
            }
            // This level is done: climb to its parent and remove it there.
            let done = walk.levels.removeLast()
            let parent: OwnedFD
            if walk.levels.isEmpty {
                parent = dir
            } else {
                let up = try current.openAt("..", O_RDONLY | O_DIRECTORY, display: display)
                let st = try up.stat(display)
                guard st.st_dev == walk.device, st.st_ino == walk.levels[walk.levels.count - 1].inode else {
                    // Moved under the walk: stop rather than remove elsewhere.
                    throw SystemError("remove (the tree moved during removal)", walk.path(), errno: ESTALE)
                }
                parent = up
            }
            withCName(done.name) { cname in
                if unlinkat(parent.raw, cname, AT_REMOVEDIR) != 0 && errno != ENOENT {
                    walk.note(SystemError.current("rmdir", walk.path(appending: done.name)))
                }
            }
            current = parent
        }
        if let first = walk.firstError { throw first }
    }

    /// Removes a path and everything below it (see `removeTree(_:_:display:)`).
    /// Missing is fine.
    public static func removeTree(path: String) throws {
        let (parent, name) = split(path)
        let dir: OwnedFD
        do {
            dir = try OwnedFD.open(parent, O_RDONLY | O_DIRECTORY)
        } catch let e as SystemError where e.errno == ENOENT {
            return
        }
        try removeTree(dir, Array(name.utf8), display: path)
    }
}

/// The state of one `FS.removeTree`: a stack of levels, each with the names
/// still to visit. Paths for messages are built only when needed (a deep
/// tree's paths would cost memory quadratic in its depth).
private struct TreeWalk {
    struct Level {
        let name: [UInt8]
        let inode: ino_t
        var entries: [(name: [UInt8], type: UInt8)]
        var next = 0
    }

    let display: String
    let device: dev_t
    var levels: [Level] = []
    var firstError: SystemError?

    init(display: String, device: dev_t) {
        self.display = display
        self.device = device
    }

    mutating func note(_ error: SystemError) {
        if firstError == nil { firstError = error }
    }

    /// The path of the current level (the top's is `display`).
    func path(appending name: [UInt8]? = nil) -> String {
        var parts = levels.dropFirst().map { String(decoding: $0.name, as: UTF8.self) }
        if let name { parts.append(String(decoding: name, as: UTF8.self)) }
        return parts.isEmpty ? display : display + "/" + parts.joined(separator: "/")
    }

    mutating func push(name: [UInt8], inode: ino_t, entries: [(name: [UInt8], type: UInt8)]) {
        levels.append(Level(name: name, inode: inode, entries: entries))
    }

    mutating func list(_ dir: OwnedFD) -> [(name: [UInt8], type: UInt8)] {
        do {
            return try FS.list(dir, display: "")
        } catch let e as SystemError {
            note(SystemError(e.operation, path(), errno: e.errno))
        } catch {}
        return []
    }

    mutating func nextEntry() -> (name: [UInt8], type: UInt8)? {
        let i = levels.count - 1
        guard levels[i].next < levels[i].entries.count else { return nil }
        defer { levels[i].next += 1 }
        return levels[i].entries[levels[i].next]
    }

    /// Unlinks a non-directory; opens a directory on the same filesystem to
    /// descend into it (the descriptor's own device and inode are the ones
    /// checked: nothing can swap the entry between a look and the open);
    /// leaves a mount point (EBUSY).
    mutating func removeOrOpen(_ entry: (name: [UInt8], type: UInt8), in dir: OwnedFD) -> (fd: OwnedFD, inode: ino_t)? {
        withCName(entry.name) { cname -> (fd: OwnedFD, inode: ino_t)? in
            func where_() -> String { path(appending: entry.name) }
            func unlink() {
                if unlinkat(dir.raw, cname, 0) != 0 && errno != ENOENT { note(SystemError.current("unlink", where_())) }
            }
            if entry.type != DT_DIR && entry.type != DT_UNKNOWN {
                unlink()
                return nil
            }
            let fd = openat(dir.raw, cname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 {
                switch errno {
                case ENOENT: break
                case ENOTDIR, ELOOP: unlink()  // not a directory after all (DT_UNKNOWN), or a symlink
                default: note(SystemError.current("open", where_()))
                }
                return nil
            }
            let sub = OwnedFD(owning: fd)
            var st = stat()
            guard fstat(fd, &st) == 0 else {
                note(SystemError.current("stat", where_()))
                return nil
            }
            guard st.st_dev == device else {
                note(SystemError("remove (a mount point, left as it is)", where_(), errno: EBUSY))
                return nil
            }
            return (sub, st.st_ino)
        }
    }
}
