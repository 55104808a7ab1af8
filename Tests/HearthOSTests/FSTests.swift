#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
@testable import HearthOS
import XCTest

/// HearthOS against the real filesystem (a temporary directory under
/// /var/tmp; the mount test needs root and tmpfs).
final class FSTests: XCTestCase {
    private var base = ""

    override func setUpWithError() throws {
        var template = Array("/var/tmp/hearthos-test.XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw SystemError.current("mkdtemp", "/var/tmp") }
        base = String(cString: p)
    }

    override func tearDownWithError() throws {
        for mp in FS.mountPoints(under: base).reversed() { _ = umount2(mp, Int32(MNT_DETACH)) }
        if !base.isEmpty { try FS.removeTree(path: base) }
    }

    private func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    func testRemovesATreeWithFilesLinksAndEmptyDirectories() throws {
        let top = base + "/t"
        try FS.makeDirectory(top + "/a/b/c")
        try FS.makeDirectory(top + "/empty")
        try FS.writeFile(top + "/a/f", "x")
        try FS.writeFile(top + "/a/b/c/g", "y")
        XCTAssertEqual(symlink("a/f", top + "/link"), 0)
        XCTAssertEqual(mkfifo(top + "/a/fifo", 0o600), 0)
        try FS.removeTree(path: top)
        XCTAssertFalse(exists(top))
        XCTAssertTrue(exists(base), "only the tree goes, not its parent")
        try FS.removeTree(path: top)  // missing is fine
        try FS.removeTree(path: base + "/no/such/parent/x")
    }

    func testNeverFollowsASymlinkOutOfTheTree() throws {
        let outside = base + "/outside"
        try FS.makeDirectory(outside + "/keep")
        try FS.writeFile(outside + "/keep/precious", "p")
        let top = base + "/t"
        try FS.makeDirectory(top + "/d")
        XCTAssertEqual(symlink(outside, top + "/d/escape"), 0)
        XCTAssertEqual(symlink(outside + "/keep/precious", top + "/file-link"), 0)
        try FS.removeTree(path: top)
        XCTAssertFalse(exists(top))
        XCTAssertTrue(exists(outside + "/keep/precious"), "what a link pointed at is untouched")
        // A symlink given as the path itself is removed, not its target.
        XCTAssertEqual(symlink(outside, base + "/top-link"), 0)
        try FS.removeTree(path: base + "/top-link")
        XCTAssertFalse(exists(base + "/top-link"))
        XCTAssertTrue(exists(outside + "/keep/precious"))
    }

    /// Deeper than PATH_MAX and than the descriptors a process may hold:
    /// the walk climbs with ".." and keeps no descriptor per level (the C
    /// nftw it replaces stopped at PATH_MAX; a recursive walk would run out
    /// of descriptors or stack).
    func testRemovesATreeDeeperThanPathMaxAndTheDescriptorLimit() throws {
        // 5000 levels of "dd/": 15 000 bytes of path, and more levels than
        // the 256 descriptors this test leaves the process.
        var saved = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved)
        var low = saved
        low.rlim_cur = 256
        XCTAssertEqual(setrlimit(Int32(RLIMIT_NOFILE.rawValue), &low), 0)
        defer { setrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) }
        let depth = 5000
        let top = base + "/deep"
        try FS.makeDirectory(top)
        var fd = open(top, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        for i in 0..<depth {
            XCTAssertEqual(mkdirat(fd, "dd", 0o755), 0, "mkdir at depth \(i)")
            if i % 100 == 0 {
                let f = openat(fd, "file", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
                close(f)
            }
            let next = openat(fd, "dd", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            close(fd)
            fd = next
            XCTAssertGreaterThanOrEqual(fd, 0)
        }
        close(fd)
        try FS.removeTree(path: top)
        XCTAssertFalse(exists(top))
    }

    /// A filesystem mounted inside the tree is not emptied: the walk stops at
    /// it, removes everything else, and reports the mount point (EBUSY).
    func testLeavesAMountInsideTheTreeAndNamesIt() throws {
        guard geteuid() == 0 else { throw XCTSkip("mounting tmpfs needs root") }
        let top = base + "/t"
        try FS.makeDirectory(top + "/m")
        try FS.makeDirectory(top + "/other/x")
        try FS.writeFile(top + "/other/x/f", "gone")
        guard mount("tmpfs", top + "/m", "tmpfs", 0, "size=1m") == 0 else {
            throw XCTSkip("mount tmpfs: errno \(errno)")
        }
        defer { _ = umount2(top + "/m", Int32(MNT_DETACH)) }
        try FS.writeFile(top + "/m/kept", "k")
        XCTAssertThrowsError(try FS.removeTree(path: top)) { error in
            guard let e = error as? SystemError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.errno, EBUSY, "\(e)")
            XCTAssertTrue(e.description.contains(top + "/m"), "\(e)")
        }
        XCTAssertTrue(exists(top + "/m/kept"), "the mounted filesystem is not emptied")
        XCTAssertFalse(exists(top + "/other"), "the rest of the tree is removed")
        XCTAssertEqual(umount2(top + "/m", 0), 0)
        try FS.removeTree(path: top)
        XCTAssertFalse(exists(top))
    }

    func testWriteAtomicallyReplacesWholeAndLeavesNoTemporary() throws {
        let path = base + "/state.json"
        try FS.writeAtomically(Array("one".utf8), to: path)
        try FS.writeAtomically(Array("two, longer".utf8), to: path, mode: 0o640)
        XCTAssertEqual(try FS.readFile(path, limit: 100), Array("two, longer".utf8))
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o640)
        XCTAssertEqual(try FS.names(base), ["state.json"], "no temporary is left next to it")
        try FS.writeAtomically(Array("fast".utf8), to: path, sync: false)
        XCTAssertEqual(try FS.readFile(path, limit: 100), Array("fast".utf8))
        XCTAssertThrowsError(try FS.readFile(path, limit: 2)) { error in
            XCTAssertEqual((error as? SystemError)?.errno, EFBIG)
        }
        XCTAssertNil(try FS.readFile(base + "/missing", limit: 1))
        XCTAssertThrowsError(try FS.writeAtomically([1], to: base + "/no-dir/x")) { error in
            XCTAssertEqual((error as? SystemError)?.errno, ENOENT)
        }
    }

    func testMakeDirectoryMakesParentsAndSetsTheMode() throws {
        let path = base + "/a/b/c"
        try FS.makeDirectory(path, mode: 0o700)
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o700)
        XCTAssertEqual(chmod(path, 0o755), 0)
        try FS.makeDirectory(path, mode: 0o711)  // existing: the mode is set anyway
        XCTAssertEqual(stat(path, &st), 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o711)
        try FS.writeFile(base + "/file", "f")
        XCTAssertThrowsError(try FS.makeDirectory(base + "/file")) { error in
            XCTAssertEqual((error as? SystemError)?.errno, ENOTDIR)
        }
    }

    func testPipeEndsAreCloseOnExec() throws {
        let (r, w) = try Pipe.make()
        defer { close(r); close(w) }
        XCTAssertNotEqual(fcntl(r, F_GETFD) & FD_CLOEXEC, 0)
        XCTAssertNotEqual(fcntl(w, F_GETFD) & FD_CLOEXEC, 0)
    }

    func testUnescapesMountinfoFields() {
        XCTAssertEqual(FS.unescapeMountField("/a\\040b"), "/a b")
        XCTAssertEqual(FS.unescapeMountField("/plain"), "/plain")
    }
}
