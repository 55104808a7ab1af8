#if canImport(Glibc)
import Glibc
#endif
import CHearth
import Foundation
@testable import HearthBuild
import HearthCore
@testable import HearthImage
import XCTest
import HearthOS

/// Layers written from overlay-form trees come back through the store's
/// own unpacker (the one every import uses) as the same tree: files,
/// modes, owners, symlinks, hard links, long names, xattrs, whiteouts and
/// opaque directories; what Hearth writes into an upper directory and
/// scratch space stay out; unchanged directories are left out.
final class LayerWriterTests: XCTestCase {
    var base = ""

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("layer tests need root (mknod, chown, trusted xattrs)") }
        base = "/var/tmp/hearth-build-test-\(UUID().uuidString)"
        guard mkdir(base, 0o700) == 0 else { throw SystemError.current("mkdir", base) }
    }

    override func tearDownWithError() throws {
        if !base.isEmpty { try? FileManager.default.removeItem(atPath: base) }
    }

    // MARK: helpers

    func path(_ p: String) -> String { base + "/" + p }

    func mkdirs(_ p: String, mode: mode_t = 0o755) throws {
        try FileManager.default.createDirectory(atPath: path(p), withIntermediateDirectories: true)
        chmod(path(p), mode)
    }

    func write(_ p: String, _ text: String, mode: mode_t = 0o644) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path(p)))
        chmod(path(p), mode)
    }

    func setxattr(_ p: String, _ name: String, _ value: String) throws {
        let fd = open(path(p), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError.current("open", path(p)) }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        guard bytes.withUnsafeBytes({ hearth_fsetxattr(fd, name, $0.baseAddress, $0.count, 0) }) == 0 else {
            throw SystemError.current("setxattr \(name)", path(p))
        }
    }

    func xattr(_ p: String, _ name: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = hearth_lgetxattr(path(p), name, &buffer, buffer.count)
        return n >= 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
    }

    func lstatAt(_ p: String) -> stat? {
        var st = stat()
        return lstat(path(p), &st) == 0 ? st : nil
    }

    func read(_ p: String) -> String? {
        FileManager.default.contents(atPath: path(p)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Writes the layer of `source` and unpacks it into `into` with the
    /// store's unpacker.
    @discardableResult
    func roundTrip(_ source: LayerSource, into: String, tar: String = "layer.tar") throws -> LayerWriter.Result {
        let result = try LayerWriter.write(source, to: path(tar))
        try mkdirs(into)
        let root = try OwnedFD.open(path(into), O_RDONLY | O_DIRECTORY)
        let file = try OwnedFD.open(path(tar), O_RDONLY)
        var st = stat()
        fstat(file.raw, &st)
        let reader = TarReader(FileSource(fd: file, path: path(tar), offset: 0, length: Int64(st.st_size)), what: "layer")
        try LayerUnpacker(root: root, rootPath: path(into), label: "layer").unpack(reader)
        try reader.finish()
        // The diff ID is the SHA-256 of exactly the bytes written.
        let bytes = try XCTUnwrap(FileManager.default.contents(atPath: path(tar)))
        XCTAssertEqual(result.diffID, "sha256:" + ContentHash.sha256Hex(Array(bytes)))
        XCTAssertEqual(result.tarBytes, Int64(bytes.count))
        return result
    }

    // MARK: tests

    func testRoundTripThroughTheUnpacker() throws {
        try mkdirs("upper/usr/local/lib/app")
        try write("upper/usr/local/lib/app/main.py", "print('hi')\n")
        try write("upper/usr/local/bin-tool", "#!/bin/sh\n", mode: 0o4755)
        chown(path("upper/usr/local/bin-tool"), 12, 34)
        chmod(path("upper/usr/local/bin-tool"), 0o4755)  // chown cleared setuid
        try mkdirs("upper/data", mode: 0o1777)
        symlink("../usr/local/lib/app/main.py", path("upper/data/link"))
        link(path("upper/usr/local/lib/app/main.py"), path("upper/data/hard"))
        let long = String(repeating: "d", count: 90) + "/" + String(repeating: "f", count: 80)
        try mkdirs("upper/" + String(repeating: "d", count: 90))
        try write("upper/" + long, "long\n")
        symlink("/" + String(repeating: "t", count: 150), path("upper/data/longlink"))
        try setxattr("upper/usr/local/lib/app/main.py", "user.origin", "test")
        try setxattr("upper/usr/local/lib/app/main.py", "trusted.overlay.origin", "x")
        // A whiteout (the file deleted) and an opaque directory (replaced).
        try mkdirs("upper/etc")
        XCTAssertEqual(mknod(path("upper/etc/gone.conf"), S_IFCHR, 0), 0)
        try mkdirs("upper/srv")
        try setxattr("upper/srv", "trusted.overlay.opaque", "y")
        try write("upper/srv/only", "only\n")
        // What Hearth writes, and scratch space: left out.
        try write("upper/etc/hostname", "build-1\n")
        try write("upper/etc/hosts", "127.0.0.1 localhost\n")
        try write("upper/etc/resolv.conf", "nameserver 10.0.0.1\n")
        try mkdirs("upper/.hearth")
        try mkdirs("upper/.hearth-build")
        try mkdirs("upper/tmp")
        try write("upper/tmp/scratch", "x")
        try mkdirs("upper/root/.cache/uv")
        try write("upper/root/.cache/uv/blob", "x")
        try write("upper/root/.bashrc", "# kept\n")

        let source = LayerSource(root: path("upper"), excluded: ImageBuilder.excluded)
        let result = try roundTrip(source, into: "out")
        XCTAssertEqual(read("out/usr/local/lib/app/main.py"), "print('hi')\n")
        let tool = try XCTUnwrap(lstatAt("out/usr/local/bin-tool"))
        XCTAssertEqual(tool.st_mode & 0o7777, 0o4755)
        XCTAssertEqual([tool.st_uid, tool.st_gid], [12, 34])
        XCTAssertEqual(try XCTUnwrap(lstatAt("out/data")).st_mode & 0o7777, 0o1777)
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: path("out/data/link")), "../usr/local/lib/app/main.py")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: path("out/data/longlink")), "/" + String(repeating: "t", count: 150))
        XCTAssertEqual(lstatAt("out/data/hard")?.st_ino, lstatAt("out/usr/local/lib/app/main.py")?.st_ino)
        XCTAssertEqual(read("out/" + long), "long\n")
        XCTAssertEqual(xattr("out/usr/local/lib/app/main.py", "user.origin"), "test")
        XCTAssertNil(xattr("out/usr/local/lib/app/main.py", "trusted.overlay.origin"))
        let whiteout = try XCTUnwrap(lstatAt("out/etc/gone.conf"))
        XCTAssertEqual(whiteout.st_mode & S_IFMT, S_IFCHR)
        XCTAssertEqual(whiteout.st_rdev, 0)
        XCTAssertEqual(xattr("out/srv", "trusted.overlay.opaque"), "y")
        XCTAssertEqual(read("out/srv/only"), "only\n")
        XCTAssertEqual(read("out/root/.bashrc"), "# kept\n")
        for gone in ["etc/hostname", "etc/hosts", "etc/resolv.conf", ".hearth", ".hearth-build", "tmp", "root/.cache"] {
            XCTAssertNil(lstatAt("out/" + gone), gone)
        }
        let contents = ["print('hi')\n", "#!/bin/sh\n", "long\n", "only\n", "# kept\n"]
        let expected: Int = contents.map { $0.utf8.count }.reduce(0, +)
        XCTAssertEqual(result.bytes, Int64(expected))

        // The same tree gives the same bytes.
        XCTAssertEqual(try LayerWriter.write(source, to: path("again.tar")).diffID, result.diffID)
    }

    /// A directory that is only copied up (or made by Hearth) and has
    /// nothing in the layer below it stays out; a new one, or one whose
    /// mode or owner changed, goes in.
    func testUnchangedDirectoriesAreLeftOut() throws {
        try mkdirs("lower/etc")
        try mkdirs("lower/var/lib", mode: 0o755)
        try mkdirs("lower/opt", mode: 0o755)
        try mkdirs("upper/etc")            // Hearth's /etc, only its own files in it
        try write("upper/etc/hostname", "x")
        try mkdirs("upper/var/lib")        // copied up, unchanged, empty
        try mkdirs("upper/opt", mode: 0o700)  // chmod'ed
        try mkdirs("upper/new/empty")      // made by the step
        var source = LayerSource(root: path("upper"), excluded: ImageBuilder.excluded)
        source.setLower(layersBottomFirst: [path("lower")])
        try roundTrip(source, into: "out")
        XCTAssertNil(lstatAt("out/etc"))
        XCTAssertNil(lstatAt("out/var"))
        XCTAssertEqual(lstatAt("out/opt").map { $0.st_mode & 0o7777 }, 0o700)
        XCTAssertNotNil(lstatAt("out/new/empty"))
    }

    /// A copy: a plain tree under a prefix, whose parents take the owner and
    /// mode the image below has for them (/root stays 0700).
    func testCopyUnderAPrefix() throws {
        try mkdirs("lower/root", mode: 0o700)
        try mkdirs("bundle/src/pkg")
        try write("bundle/src/pkg/mod.py", "x = 1\n")
        try write("bundle/setup.cfg", "[x]\n")
        var source = LayerSource(root: path("bundle"), prefix: LayerSource.components("/root"))
        source.setLower(layersBottomFirst: [path("lower")])
        try roundTrip(source, into: "out")
        XCTAssertEqual(lstatAt("out/root").map { $0.st_mode & 0o7777 }, 0o700)
        XCTAssertEqual(read("out/root/src/pkg/mod.py"), "x = 1\n")
        XCTAssertEqual(read("out/root/setup.cfg"), "[x]\n")
    }

    /// A plain root filesystem (image import of a directory) leaves its
    /// device nodes and FIFOs out instead.
    func testPlainRootfsLeavesNodesOut() throws {
        try mkdirs("rootfs/dev")
        try write("rootfs/etc-file", "x\n")
        XCTAssertEqual(mknod(path("rootfs/dev/null"), S_IFCHR | 0o666, UInt(1 << 8 | 3)), 0)
        XCTAssertEqual(mkfifo(path("rootfs/pipe"), 0o600), 0)
        var source = LayerSource(root: path("rootfs"))
        source.plainRootfs = true
        _ = try roundTrip(source, into: "plain-out")
        XCTAssertEqual(read("plain-out/etc-file"), "x\n")
        XCTAssertNil(lstatAt("plain-out/dev/null"))
        XCTAssertNil(lstatAt("plain-out/pipe"))
        XCTAssertNotNil(lstatAt("plain-out/dev"))
    }

    /// What a layer cannot hold is refused, naming the path.
    func testRefusals() throws {
        try mkdirs("dev-upper")
        XCTAssertEqual(mknod(path("dev-upper/kvm"), S_IFCHR | 0o600, UInt(10 << 8 | 232)), 0)
        XCTAssertThrowsError(try LayerWriter.write(LayerSource(root: path("dev-upper")), to: path("a.tar"))) { error in
            XCTAssertTrue("\(error)".contains("dev-upper/kvm is a device node (10:232)"), "\(error)")
        }
        try mkdirs("fifo-upper")
        XCTAssertEqual(mkfifo(path("fifo-upper/pipe"), 0o600), 0)
        XCTAssertThrowsError(try LayerWriter.write(LayerSource(root: path("fifo-upper")), to: path("b.tar"))) { error in
            XCTAssertTrue("\(error)".contains("fifo-upper/pipe is a FIFO"), "\(error)")
        }
        try mkdirs("wh-upper")
        try write("wh-upper/.wh.trick", "")
        XCTAssertThrowsError(try LayerWriter.write(LayerSource(root: path("wh-upper")), to: path("c.tar"))) { error in
            XCTAssertTrue("\(error)".contains("wh-upper/.wh.trick: names beginning with .wh. are reserved"), "\(error)")
        }
        try mkdirs("meta-upper")
        try write("meta-upper/f", "")
        try setxattr("meta-upper/f", "trusted.overlay.metacopy", "")
        XCTAssertThrowsError(try LayerWriter.write(LayerSource(root: path("meta-upper")), to: path("d.tar"))) { error in
            XCTAssertTrue("\(error)".contains("metacopy"), "\(error)")
        }
    }

    func testLowerViewFollowsWhiteoutsAndOpaqueDirectories() throws {
        try mkdirs("l1/a/b")
        try write("l1/a/b/f", "1")
        try write("l1/a/g", "1")
        try mkdirs("l2/a")
        XCTAssertEqual(mknod(path("l2/a/g"), S_IFCHR, 0), 0)
        try mkdirs("l3/a/b")
        try setxattr("l3/a/b", "trusted.overlay.opaque", "y")
        let view = LowerView(layersBottomFirst: [path("l1"), path("l2"), path("l3")])
        XCTAssertNotNil(view.lstat(LayerSource.components("a")))
        XCTAssertNil(view.lstat(LayerSource.components("a/g")))      // whited out in l2
        XCTAssertNil(view.lstat(LayerSource.components("a/b/f")))    // below an opaque dir in l3
        XCTAssertNotNil(view.lstat(LayerSource.components("a/b")))
        XCTAssertNil(view.lstat(LayerSource.components("nothing")))
    }
}

/// Plans: flytekit's order, keys that change from the changed step on,
/// packages Hearth provides dropped.
final class BuildPlanTests: XCTestCase {
    func kinds(_ plan: BuildPlan) -> [String] {
        plan.steps.map {
            switch $0.kind {
            case .apt: return "apt"
            case .python: return "python"
            case .copy: return "copy"
            case .command(let c): return "command:" + c
            }
        }
    }

    func testOrderAndKeys() {
        let copy = ImageBuildSpec.Copy(bundle: String(repeating: "a", count: 64))
        let spec = ImageBuildSpec(packages: ["pandas"], aptPackages: ["jq"], env: ["A": "1"],
                                  commands: ["echo 1", "echo 2"], copy: copy)
        let plan = BuildPlan(spec: spec, baseID: "sha256:base")
        XCTAssertEqual(kinds(plan), ["apt", "python", "copy", "command:echo 1", "command:echo 2"])
        XCTAssertEqual(plan.steps.map(\.afterEnv), [false, false, true, true, true])
        XCTAssertEqual(plan.env, ["A=1"])
        XCTAssertEqual(Set(plan.steps.map(\.key)).count, 5)
        XCTAssertEqual(BuildPlan(spec: spec, baseID: "sha256:base"), plan)

        var onePackage = spec
        onePackage.packages = ["pandas", "six"]
        let changed = BuildPlan(spec: onePackage, baseID: "sha256:base")
        XCTAssertEqual(changed.steps[0].key, plan.steps[0].key)
        for i in 1..<5 { XCTAssertNotEqual(changed.steps[i].key, plan.steps[i].key) }

        var otherEnv = spec
        otherEnv.env = ["A": "2"]
        let envChanged = BuildPlan(spec: otherEnv, baseID: "sha256:base")
        XCTAssertEqual(envChanged.steps[0...1].map(\.key), plan.steps[0...1].map(\.key))
        XCTAssertNotEqual(envChanged.steps[2].key, plan.steps[2].key)

        XCTAssertNotEqual(BuildPlan(spec: spec, baseID: "sha256:other").steps[0].key, plan.steps[0].key)
    }

    func testProvidedPackagesNeedNoStep() {
        let spec = ImageBuildSpec(packages: ["flytekitplugins-hearth>=0.1", "Union", "flytekitplugins_pod", "hearth==0.1"],
                                  requirements: "# pinned\nFlytekitplugins.Hearth==0.1.0\n\n")
        XCTAssertEqual(BuildPlan(spec: spec, baseID: "x").steps, [])
        let mixed = ImageBuildSpec(packages: ["flytekit", "pandas"], requirements: "union\nnumpy<2\n-i https://x/simple\n")
        guard case .python(let install)? = BuildPlan(spec: mixed, baseID: "x").steps.first?.kind else {
            return XCTFail("no python step")
        }
        // flytekit is a real package (the plugin's tasks import it), not Hearth's.
        XCTAssertEqual(install.packages, ["flytekit", "pandas"])
        XCTAssertEqual(install.requirements, "numpy<2\n-i https://x/simple")
    }

    func testProjectNames() {
        XCTAssertEqual(BuildPlan.projectName("Flytekit>=1.10"), "flytekit")
        XCTAssertEqual(BuildPlan.projectName("flytekitplugins_pod"), "flytekitplugins-pod")
        XCTAssertEqual(BuildPlan.projectName(" zope.interface [x]"), "zope-interface")
    }
}
