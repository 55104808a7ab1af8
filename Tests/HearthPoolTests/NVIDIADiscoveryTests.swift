import Foundation
import HearthCore
import HearthOS
@testable import HearthPool
import XCTest

/// NVIDIADiscovery: the spec Hearth makes for NVIDIA nodes without a CDI spec.
final class NVIDIADiscoveryTests: XCTestCase {
    func testOneDevicePerGPUWithControlNodesAndDriverLibraries() throws {
        let dev = FileManager.default.temporaryDirectory.appendingPathComponent("nv-\(UUID().uuidString)").path
        try FS.makeDirectory(dev)
        try FS.makeDirectory(dev + "/nvidia-caps")
        defer { try? FS.removeTree(path: dev) }
        for n in ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps/nvidia-cap1", "null"] {
            FileManager.default.createFile(atPath: dev + "/" + n, contents: nil)
        }
        let ldcache = """
        1234 libs found in cache `/etc/ld.so.cache'
        \tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1
        \tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
        \tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
        \tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1
        """
        let spec = try XCTUnwrap(NVIDIADiscovery.spec(devDir: dev, ldcache: ldcache, smi: "/usr/bin/nvidia-smi"))
        XCTAssertEqual(spec.qualifiedNames, ["nvidia.com/gpu=0", "nvidia.com/gpu=1"])
        let edits = spec.edits(for: spec.devices[1])
        XCTAssertEqual(edits.deviceNodes.map(\.path), ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia1"])
        XCTAssertEqual(edits.deviceNodes.last?.hostPath, dev + "/nvidia1")
        XCTAssertEqual(edits.mounts.map(\.containerPath), ["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
                                                          "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/bin/nvidia-smi"])
        XCTAssertTrue(edits.mounts.allSatisfy { $0.options.contains("ro") })
        XCTAssertEqual(edits.env, ["LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu"])
    }

    func testDriverOutsideTheLoaderCacheIsFoundInItsFolder() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nvlib-\(UUID().uuidString)").path
        try FS.makeDirectory(dir)
        defer { try? FS.removeTree(path: dir) }
        for n in ["libcuda.so.580.1", "libnvidia-ml.so.580.1", "libz.so.1"] {
            FileManager.default.createFile(atPath: dir + "/" + n, contents: Data("x".utf8))
        }
        XCTAssertEqual(symlink("libcuda.so.580.1", dir + "/libcuda.so.1"), 0)
        XCTAssertEqual(symlink("missing", dir + "/libcuda.so"), 0)  // dangling: left out
        let scanned = NVIDIADiscovery.scanLibraries(in: [dir, dir + "/none"])
        XCTAssertEqual(scanned, [dir + "/libcuda.so.1", dir + "/libcuda.so.580.1", dir + "/libnvidia-ml.so.580.1"])
        // The cache's libnvidia-ml.so.580.1 wins over the scanned one of the same name.
        let ldcache = "\tlibnvidia-ml.so.580.1 (libc6,x86-64) => /usr/lib/libnvidia-ml.so.580.1\n"
        XCTAssertEqual(NVIDIADiscovery.libraries(ldcache, scanned: scanned),
                       ["/usr/lib/libnvidia-ml.so.580.1", dir + "/libcuda.so.1", dir + "/libcuda.so.580.1"])
        XCTAssertEqual(NVIDIADiscovery.driverFolders(environment: ["LD_LIBRARY_PATH": "/opt/nv:rel"]).prefix(2),
                       ["/opt/nv", "/usr/local/nvidia/lib64"])
        XCTAssertNil(NVIDIADiscovery.hostSMI(environment: ["PATH": dir]).flatMap { $0.hasPrefix(dir) ? $0 : nil })
        // A wrapper script is passed over for the program itself.
        let bin = dir + "/bin", wrapper = dir + "/wrapper"
        try FS.makeDirectory(bin)
        try FS.makeDirectory(wrapper)
        FileManager.default.createFile(atPath: wrapper + "/nvidia-smi", contents: Data("#!/bin/sh\nexec x\n".utf8),
                                       attributes: [.posixPermissions: 0o755])
        FileManager.default.createFile(atPath: bin + "/nvidia-smi", contents: Data([0x7F, 0x45, 0x4C, 0x46, 2, 1, 1]),
                                       attributes: [.posixPermissions: 0o755])
        let smi = NVIDIADiscovery.hostSMI(environment: ["PATH": wrapper + ":" + bin])
        if smi?.hasPrefix(dir) == true { XCTAssertEqual(smi, bin + "/nvidia-smi") }
    }

    func testNoGPUNodesNoSpec() throws {
        let dev = FileManager.default.temporaryDirectory.appendingPathComponent("nv-\(UUID().uuidString)").path
        try FS.makeDirectory(dev)
        defer { try? FS.removeTree(path: dev) }
        FileManager.default.createFile(atPath: dev + "/nvidiactl", contents: nil)
        XCTAssertNil(NVIDIADiscovery.spec(devDir: dev, ldcache: "", smi: nil))
    }
}

/// The generated spec is made again only when what it comes from changes.
final class GeneratedSpecCacheTests: XCTestCase {
    func testMadeOnceUntilNodesOrTheLoaderCacheOrAFolderChange() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("gsc-\(UUID().uuidString)").path
        let dev = root + "/dev", libs = root + "/lib", ldcache = root + "/ld.so.cache"
        try FS.makeDirectory(dev)
        try FS.makeDirectory(libs)
        defer { try? FS.removeTree(path: root) }
        for n in ["nvidia0", "nvidiactl", "null"] { FileManager.default.createFile(atPath: dev + "/" + n, contents: nil) }
        FileManager.default.createFile(atPath: ldcache, contents: Data("v1".utf8))
        let cache = GeneratedSpecCache(folders: [libs], ldcacheFile: ldcache)
        var made = 0
        func load() -> CDIRegistry {
            CDIRegistry.load(dirs: [], nvidiaDevDir: dev, ldcache: { made += 1; return "" }, scanned: { [] },
                             smi: { nil }, generated: cache)
        }
        XCTAssertEqual(load().devices.keys.sorted(), ["nvidia.com/gpu=0"])
        XCTAssertEqual(load().devices.keys.sorted(), ["nvidia.com/gpu=0"])
        XCTAssertEqual(made, 1, "an unchanged host: made once")
        // Timestamps tick with the kernel's coarse clock: each change lands in a later tick.
        usleep(50_000)
        FileManager.default.createFile(atPath: dev + "/nvidia1", contents: nil)
        XCTAssertEqual(load().devices.keys.sorted(), ["nvidia.com/gpu=0", "nvidia.com/gpu=1"])
        XCTAssertEqual(made, 2, "a GPU node added")
        usleep(50_000)
        FileManager.default.createFile(atPath: ldcache, contents: Data("v2 longer".utf8))
        _ = load()
        XCTAssertEqual(made, 3, "ldconfig ran")
        usleep(50_000)
        FileManager.default.createFile(atPath: libs + "/libcuda.so.1", contents: nil)
        _ = load()
        XCTAssertEqual(made, 4, "a driver library installed")
        _ = load()
        XCTAssertEqual(made, 4)
        // Without a cache, every load makes it.
        _ = CDIRegistry.load(dirs: [], nvidiaDevDir: dev, ldcache: { made += 1; return "" }, scanned: { [] }, smi: { nil })
        XCTAssertEqual(made, 5)
    }
}

/// The NVIDIA toolkit's CDI hooks, done by Hearth (CDIRegistry.apply).
final class CDIHookTests: XCTestCase {
    private func hook(_ path: String, _ args: [String]) -> CDISpec.Hook {
        CDISpec.Hook(hookName: "createContainer", path: path, args: args, env: [])
    }

    func testUpdateLdcacheAndCreateSymlinks() throws {
        var out = ResolvedDevices()
        out.env = ["LD_LIBRARY_PATH=/a"]
        try CDIRegistry.apply(hook("/usr/bin/nvidia-ctk", ["nvidia-ctk", "hook", "update-ldcache", "--folder", "/b", "--folder=/a"]),
                              to: &out, refusal: "d")
        XCTAssertEqual(out.env, ["LD_LIBRARY_PATH=/a:/b"])
        try CDIRegistry.apply(hook("/usr/bin/nvidia-cdi-hook", ["nvidia-cdi-hook", "create-symlinks", "--link", "libcuda.so.1::/usr/lib/libcuda.so"]),
                              to: &out, refusal: "d")
        XCTAssertEqual(out.symlinks, [.init(target: "libcuda.so.1", link: "/usr/lib/libcuda.so")])
        try CDIRegistry.apply(hook("/usr/bin/nvidia-cdi-hook", ["nvidia-cdi-hook", "enable-cuda-compat", "--host-driver-version", "550"]),
                              to: &out, refusal: "d")
    }

    func testOtherHooksAreRefusedUnlessPrivileged() throws {
        var out = ResolvedDevices()
        let vendor = hook("/usr/local/bin/vendor-setup", ["vendor-setup", "--all"])
        XCTAssertThrowsError(try CDIRegistry.apply(vendor, to: &out, refusal: "d")) {
            XCTAssertTrue((($0 as? HearthError)?.message ?? "").contains("which hearthd runs only when started with --allow-privileged"))
        }
        let newer = hook("/usr/bin/nvidia-ctk", ["nvidia-ctk", "hook", "something-new"])
        XCTAssertThrowsError(try CDIRegistry.apply(newer, to: &out, refusal: "d")) {
            XCTAssertTrue((($0 as? HearthError)?.message ?? "").contains("which Hearth does not do itself"))
        }
        XCTAssertThrowsError(try CDIRegistry.apply(hook("/usr/bin/nvidia-ctk", ["nvidia-ctk", "hook", "create-symlinks", "--link", "a::../../etc/x"]), to: &out, refusal: "d"))
        XCTAssertEqual(out.hooks, [])
        // Privileged: both are kept to be run, once each; the toolkit's own
        // two are still done by Hearth, and other moments stay refused.
        try CDIRegistry.apply(vendor, to: &out, refusal: "d", runHooks: true)
        try CDIRegistry.apply(vendor, to: &out, refusal: "d", runHooks: true)
        try CDIRegistry.apply(newer, to: &out, refusal: "d", runHooks: true)
        try CDIRegistry.apply(hook("/usr/bin/nvidia-ctk", ["nvidia-ctk", "hook", "update-ldcache", "--folder", "/x"]),
                              to: &out, refusal: "d", runHooks: true)
        XCTAssertEqual(out.hooks, [vendor, newer])
        XCTAssertEqual(out.env, ["LD_LIBRARY_PATH=/x"])
        let prestart = CDISpec.Hook(hookName: "prestart", path: "/usr/local/bin/vendor-setup", args: [], env: [])
        XCTAssertThrowsError(try CDIRegistry.apply(prestart, to: &out, refusal: "d", runHooks: true)) {
            XCTAssertTrue((($0 as? HearthError)?.message ?? "").contains("Hearth runs createContainer hooks only"))
        }
    }
}
