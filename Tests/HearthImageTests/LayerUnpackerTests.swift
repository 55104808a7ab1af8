#if canImport(Glibc)
import Glibc
#endif
import Foundation
@testable import HearthImage
import HearthCore
import XCTest
import HearthOS

final class LayerUnpackerTests: ImageTestCase {
    static let label = "layer sha256:test"

    /// Unpacks `tar` into a fresh `<base>/layerN`; `<base>/outside` is a
    /// sibling that must stay empty.
    @discardableResult
    private func unpack(_ tar: TarWriter, into name: String = "layer") throws -> String {
        let dir = base + "/" + name
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let root = try OwnedFD.open(dir, O_RDONLY | O_DIRECTORY)
        let unpacker = LayerUnpacker(root: root, rootPath: dir, label: Self.label)
        let reader = TarReader(MemorySource(tar.finished()), what: Self.label)
        try unpacker.unpack(reader)
        try reader.finish()
        return dir
    }

    private var outside: String { base + "/outside" }

    override func setUpWithError() throws {
        try super.setUpWithError()
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
    }

    /// Every unsafe entry is refused with an error naming it, and nothing
    /// lands outside the layer directory.
    func testUnsafeEntriesRefused() throws {
        typealias Case = (String, (inout TarWriter) -> Void, String, [String])
        let outsideAbs = outside
        let cases: [Case] = [
            ("dotdot", { $0.file("../x", "x") }, "../x", ["leaves the layer", "\"..\""]),
            ("nested dotdot", { $0.file("a/../../x", "x") }, "a/../../x", ["leaves the layer"]),
            ("absolute dotdot", { $0.file("/../x", "x") }, "/../x", ["leaves the layer"]),
            ("dotdot inside", { $0.dir("a"); $0.file("a/b/../c", "x") }, "a/b/../c", ["\"..\""]),
            ("symlink escape", { $0.dir("a"); $0.symlink("a/evil", "../../outside") }, "a/evil", ["symlink target", "leaves the layer"]),
            ("absolute symlink escape", { $0.symlink("evil", "/../outside") }, "evil", ["leaves the layer"]),
            ("write through symlink", { $0.symlink("link", outsideAbs); $0.file("link/passwd", "pwned") },
             "link/passwd", ["\"link\" is a symlink"]),
            ("dir through symlink", { $0.symlink("link", outsideAbs); $0.dir("link/sub") }, "link/sub", ["is a symlink"]),
            ("whiteout through symlink", { $0.symlink("link", outsideAbs); $0.file("link/.wh.x", "") }, "link/.wh.x", ["is a symlink"]),
            ("hard link outside", { $0.hardLink("h", "../outside/secret") }, "h", ["hard link target", "leaves the layer"]),
            ("hard link absolute", { $0.hardLink("h", "/etc/passwd") }, "h", ["does not exist in this layer"]),
            ("hard link through symlink", { $0.symlink("dir", outsideAbs); $0.hardLink("h", "dir/secret") },
             "h", ["hard link target", "\"dir\" is a symlink"]),
            ("hard link to dir", { $0.dir("d"); $0.hardLink("h", "d") }, "h", ["is a directory"]),
            ("char device", { $0.add("dev/mem", .characterDevice(1, 1)) }, "dev/mem", ["device nodes are not allowed"]),
            ("block device", { $0.add("sda", .blockDevice(8, 0)) }, "sda", ["device nodes are not allowed"]),
            ("whiteout-looking device", { $0.add("null", .characterDevice(0, 0)) }, "null", ["device nodes are not allowed"]),
            ("fifo", { $0.add("pipe", .fifo) }, "pipe", ["FIFOs are not allowed"]),
            ("parent is a file", { $0.file("f", "x"); $0.file("f/g", "y") }, "f/g", ["\"f\" is not a directory"]),
            ("root as file", { $0.file("./", "x") }, "./", ["layer root"]),
        ]
        try write(outside + "/secret", Array("secret".utf8))
        for (i, (name, build, entry, rules)) in cases.enumerated() {
            var tar = TarWriter()
            build(&tar)
            assertHearthError(.unsafeLayer, contains: [Self.label, "entry \"\(entry)\""] + rules) {
                try unpack(tar, into: "layer\(i)")
            }
            XCTAssertEqual(directoryEntries(outside), ["secret"], name)
            XCTAssertEqual(readString(outside + "/secret"), "secret", name)
            XCTAssertNil(lstatPath(base + "/x"), name)
        }
        XCTAssertEqual(lstatPath(outside + "/secret")?.st_nlink, 1)
    }

    /// The classic: `link -> /etc`, then `link/…`. Refused before anything
    /// is opened through the link (the probe name does not exist in /etc).
    func testSymlinkToEtcThenWriteThroughIt() throws {
        let probe = "hearth-image-test-probe-\(getpid())"
        var tar = TarWriter()
        tar.symlink("link", "/etc")
        tar.file("link/\(probe)", "pwned")
        assertHearthError(.unsafeLayer, contains: ["entry \"link/\(probe)\"", "is a symlink"]) { try unpack(tar) }
        XCTAssertNil(lstatPath("/etc/" + probe))
        _ = unlink("/etc/" + probe)
    }

    func testWhiteoutsBecomeOverlayForm() throws {
        var tar = TarWriter()
        tar.dir("a")
        tar.file("a/.wh.gone", "")
        tar.file(".wh.toplevel", "")
        tar.dir("opaque")
        tar.file("opaque/.wh..wh..opq", "")
        tar.file("opaque/kept", "k")
        tar.file("implicit/.wh..wh..opq", "")
        tar.file("a/.wh..wh.plnk", "")   // aufs bookkeeping: ignored
        let dir = try unpack(tar)
        for path in ["a/gone", "toplevel"] {
            let st = try XCTUnwrap(lstatPath(dir + "/" + path), path)
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFCHR, path)
            XCTAssertEqual(st.st_rdev, 0, path)
        }
        XCTAssertNil(lstatPath(dir + "/a/.wh.gone"))
        XCTAssertNil(lstatPath(dir + "/a/.wh..wh.plnk"))
        XCTAssertNil(lstatPath(dir + "/opaque/.wh..wh..opq"))
        XCTAssertEqual(xattr(dir + "/opaque", "trusted.overlay.opaque"), [UInt8(ascii: "y")])
        XCTAssertEqual(xattr(dir + "/implicit", "trusted.overlay.opaque"), [UInt8(ascii: "y")])
        XCTAssertNil(xattr(dir + "/a", "trusted.overlay.opaque"))
        XCTAssertEqual(readString(dir + "/opaque/kept"), "k")
    }

    func testMetadataAndXattrs() throws {
        // vfs_cap_data revision 2: effective, permitted = CAP_NET_BIND_SERVICE.
        let capability: [UInt8] = [0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        var tar = TarWriter()
        tar.dir("./", mode: 0o755, mtime: 1_500_000_000)
        tar.dir("bin", mode: 0o750, uid: 3, gid: 4, mtime: 1_400_000_000)
        tar.file("bin/su", "#!", mode: 0o4755, uid: 0, gid: 0, mtime: 1_300_000_000)
        tar.file("bin/ping", "p", mode: 0o755, xattrs: [("security.capability", capability)])
        tar.file("bin/data", "d", mode: 0o640, uid: 1000, gid: 1001,
                 xattrs: [("user.note", Array("hi".utf8)), ("trusted.overlay.opaque", [UInt8(ascii: "y")]),
                          ("trusted.evil", [1]), ("user.overlay.redirect", Array("/x".utf8))])
        tar.symlink("bin/sh", "su")
        tar.hardLink("bin/su2", "bin/su")
        tar.dir("bin/sub", mode: 0o1777, mtime: 1_200_000_000)
        let dir = try unpack(tar)

        let bin = try XCTUnwrap(lstatPath(dir + "/bin"))
        XCTAssertEqual(bin.st_mode & 0o7777, 0o750)
        XCTAssertEqual(bin.st_uid, 3)
        XCTAssertEqual(bin.st_gid, 4)
        XCTAssertEqual(bin.st_mtim.tv_sec, 1_400_000_000, "directory mtime is set after its content")
        XCTAssertEqual(lstatPath(dir)?.st_mtim.tv_sec, 1_500_000_000)
        XCTAssertEqual(lstatPath(dir + "/bin/sub")?.st_mode ?? 0 & 0o7777, S_IFDIR | 0o1777)

        let su = try XCTUnwrap(lstatPath(dir + "/bin/su"))
        XCTAssertEqual(su.st_mode & 0o7777, 0o4755, "setuid survives chown")
        XCTAssertEqual(su.st_mtim.tv_sec, 1_300_000_000)
        XCTAssertEqual(su.st_nlink, 2)
        XCTAssertEqual(lstatPath(dir + "/bin/su2")?.st_ino, su.st_ino)

        XCTAssertEqual(xattr(dir + "/bin/ping", "security.capability"), capability)
        let data = try XCTUnwrap(lstatPath(dir + "/bin/data"))
        XCTAssertEqual(data.st_uid, 1000)
        XCTAssertEqual(data.st_gid, 1001)
        XCTAssertEqual(data.st_mode & 0o7777, 0o640)
        XCTAssertEqual(xattr(dir + "/bin/data", "user.note"), Array("hi".utf8))
        XCTAssertNil(xattr(dir + "/bin/data", "trusted.overlay.opaque"), "images must not set overlay xattrs")
        XCTAssertNil(xattr(dir + "/bin/data", "trusted.evil"))
        XCTAssertNil(xattr(dir + "/bin/data", "user.overlay.redirect"))

        let sh = try XCTUnwrap(lstatPath(dir + "/bin/sh"))
        XCTAssertEqual(sh.st_mode & S_IFMT, S_IFLNK)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: dir + "/bin/sh"), "su")
    }

    func testLaterEntriesReplaceEarlierOnes() throws {
        var tar = TarWriter()
        tar.file("a", "file")
        tar.dir("a")                 // file → directory
        tar.file("a/inner", "1")
        tar.dir("a", mode: 0o700)    // existing directory kept, metadata updated
        tar.symlink("b", "/nowhere")
        tar.file("b", "now a file")  // symlink → file (not written through)
        tar.dir("c")
        tar.file("c/deep", "x")
        tar.file("c", "dir replaced")  // directory → file
        tar.file("d", "old")
        tar.file("d", "new")
        tar.file("deep/dirs/made/implicitly", "x")
        let dir = try unpack(tar)
        XCTAssertEqual(readString(dir + "/a/inner"), "1")
        XCTAssertEqual((lstatPath(dir + "/a")?.st_mode ?? 0) & 0o7777, 0o700)
        XCTAssertEqual(readString(dir + "/b"), "now a file")
        XCTAssertEqual(lstatPath(dir + "/b")?.st_mode ?? 0 & S_IFMT, S_IFREG | 0o644)
        XCTAssertEqual(readString(dir + "/c"), "dir replaced")
        XCTAssertEqual(readString(dir + "/d"), "new")
        XCTAssertEqual(readString(dir + "/deep/dirs/made/implicitly"), "x")
        XCTAssertNil(lstatPath("/nowhere"))
    }

    func testSymlinkEscapeRules() {
        func escapes(_ dir: String, _ target: String) -> Bool {
            LayerUnpacker.symlinkEscapes(linkDirectory: dir.split(separator: "/").map { Array($0.utf8) },
                                         target: Array(target.utf8))
        }
        XCTAssertFalse(escapes("etc", "../usr/lib/os-release"))
        XCTAssertFalse(escapes("", "/usr/bin/python3"))
        XCTAssertFalse(escapes("usr/lib/x86_64-linux-gnu", "../../../lib/x"))
        XCTAssertFalse(escapes("a", "./b/../c"))
        XCTAssertTrue(escapes("usr/lib", "../../../x"))
        XCTAssertTrue(escapes("", "../x"))
        XCTAssertTrue(escapes("a/b", "/../x"))
        XCTAssertTrue(escapes("a", "b/../../../x"))
    }
}
