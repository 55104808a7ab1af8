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

    func testNoGPUNodesNoSpec() throws {
        let dev = FileManager.default.temporaryDirectory.appendingPathComponent("nv-\(UUID().uuidString)").path
        try FS.makeDirectory(dev)
        defer { try? FS.removeTree(path: dev) }
        FileManager.default.createFile(atPath: dev + "/nvidiactl", contents: nil)
        XCTAssertNil(NVIDIADiscovery.spec(devDir: dev, ldcache: "", smi: nil))
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

    func testOtherHooksAreRefused() {
        var out = ResolvedDevices()
        XCTAssertThrowsError(try CDIRegistry.apply(hook("/usr/local/bin/vendor-setup", ["vendor-setup", "--all"]), to: &out, refusal: "d")) {
            XCTAssertTrue((($0 as? HearthError)?.message ?? "").contains("Hearth runs no program a CDI spec names"))
        }
        XCTAssertThrowsError(try CDIRegistry.apply(hook("/usr/bin/nvidia-ctk", ["nvidia-ctk", "hook", "something-new"]), to: &out, refusal: "d")) {
            XCTAssertTrue((($0 as? HearthError)?.message ?? "").contains("which Hearth does not do"))
        }
        XCTAssertThrowsError(try CDIRegistry.apply(hook("/usr/bin/nvidia-ctk", ["nvidia-ctk", "hook", "create-symlinks", "--link", "a::../../etc/x"]), to: &out, refusal: "d"))
    }
}
