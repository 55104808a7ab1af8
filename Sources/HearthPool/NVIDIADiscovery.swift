import Foundation
import Glibc
import HearthCore
import HearthOS

/// What `nvidia-ctk cdi generate` would write, made by Hearth itself for a
/// host with NVIDIA devices but no `nvidia.com/gpu` CDI spec: one device
/// per `/dev/nvidiaN`, and for every one of them the control nodes
/// (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset`,
/// `nvidia-caps/*`), the driver's user-space libraries found in the
/// loader's cache (`ldconfig -p`), read-only at the same paths and on
/// `LD_LIBRARY_PATH`, and `nvidia-smi`.
public enum NVIDIADiscovery {
    /// Libraries of the driver a CUDA program or nvidia-smi loads.
    static let libraryPrefixes = ["libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so",
                                  "libnvidia-nvvm.so", "libnvidia-opencl.so", "libnvidia-gpucomp.so",
                                  "libnvidia-allocator.so", "libnvidia-cfg.so", "libnvcuvid.so",
                                  "libnvidia-encode.so", "libnvidia-opticalflow.so"]

    /// The spec for the nodes under `devDir` (`/dev`), or nil when it has
    /// no `nvidiaN`. `ldcache`: `ldconfig -p`'s output; `smi`: the
    /// nvidia-smi binary, if any.
    public static func spec(devDir: String, ldcache: String, smi: String?) -> CDISpec? {
        let names = ((try? FS.list(path: devDir)) ?? []).map { String(decoding: $0.name, as: UTF8.self) }
        let indices = names.compactMap { n -> Int? in
            guard n.hasPrefix("nvidia"), let i = Int(n.dropFirst(6)), i >= 0 else { return nil }
            return i
        }.sorted()
        guard !indices.isEmpty else { return nil }
        var common = CDISpec.Edits()
        for n in ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"] where names.contains(n) {
            common.deviceNodes.append(node("/dev/" + n, host: devDir + "/" + n))
        }
        if let caps = try? FS.list(path: devDir + "/nvidia-caps") {
            for c in caps.map({ String(decoding: $0.name, as: UTF8.self) }).sorted() {
                common.deviceNodes.append(node("/dev/nvidia-caps/" + c, host: devDir + "/nvidia-caps/" + c))
            }
        }
        var dirs: [String] = []
        for lib in libraries(ldcache) {
            common.mounts.append(.init(hostPath: lib, containerPath: lib, options: ["ro", "nosuid", "nodev", "bind"], type: nil))
            let dir = String(lib[..<(lib.lastIndex(of: "/") ?? lib.endIndex)])
            if !dirs.contains(dir) { dirs.append(dir) }
        }
        if !dirs.isEmpty { common.env.append("LD_LIBRARY_PATH=" + dirs.joined(separator: ":")) }
        if let smi {
            common.mounts.append(.init(hostPath: smi, containerPath: "/usr/bin/nvidia-smi",
                                       options: ["ro", "nosuid", "nodev", "bind"], type: nil))
        }
        let devices = indices.map { i in
            var e = CDISpec.Edits()
            e.deviceNodes = [node("/dev/nvidia\(i)", host: "\(devDir)/nvidia\(i)")]
            return CDISpec.Device(name: "\(i)", edits: e)
        }
        return CDISpec(kind: GPUAllocator.kind, version: "0.6.0", devices: devices, edits: common)
    }

    private static func node(_ path: String, host: String) -> CDISpec.DeviceNode {
        CDISpec.DeviceNode(path: path, hostPath: host, type: nil, major: nil, minor: nil, permissions: "rw",
                           fileMode: nil, uid: nil, gid: nil)
    }

    /// The driver's libraries in `ldconfig -p` output (x86-64 entries,
    /// each path once).
    static func libraries(_ ldcache: String) -> [String] {
        var out: [String] = []
        for line in ldcache.split(separator: "\n") {
            guard let arrow = line.range(of: " => ") else { continue }
            let name = line[..<arrow.lowerBound].trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init) ?? ""
            let path = String(line[arrow.upperBound...]).trimmingCharacters(in: .whitespaces)
            guard libraryPrefixes.contains(where: { name.hasPrefix($0) }), line.contains("x86-64"), !out.contains(path)
            else { continue }
            out.append(path)
        }
        return out
    }

    /// `ldconfig -p` of this host; "" when it cannot run.
    public static func hostLdcache() -> String {
        for ldconfig in ["/sbin/ldconfig", "/usr/sbin/ldconfig"] where access(ldconfig, X_OK) == 0 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ldconfig)
            p.arguments = ["-p"]
            let out = Foundation.Pipe()
            p.standardOutput = out
            p.standardError = FileHandle.nullDevice
            do { try p.run() } catch { return "" }
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return String(decoding: data, as: UTF8.self)
        }
        return ""
    }

    /// `nvidia-smi` on this host's PATH directories, if any.
    public static func hostSMI() -> String? {
        ["/usr/bin/nvidia-smi", "/usr/local/bin/nvidia-smi", "/usr/sbin/nvidia-smi"].first { access($0, X_OK) == 0 }
    }
}
