import Foundation
import Glibc
import HearthCore
import HearthOS

/// What `nvidia-ctk cdi generate` would write, made by Hearth itself for a
/// host with NVIDIA devices but no `nvidia.com/gpu` CDI spec: one device
/// per `/dev/nvidiaN`, and for every one of them the control nodes
/// (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset`,
/// `nvidia-caps/*`), the driver's user-space libraries found in the
/// loader's cache (`ldconfig -p`) or, for those the cache lacks, in the
/// driver folders `nvidia-ctk` also searches (`/usr/local/nvidia/lib64`,
/// the daemon's `LD_LIBRARY_PATH`, …), read-only at the same paths and on
/// `LD_LIBRARY_PATH`, and `nvidia-smi`.
public enum NVIDIADiscovery {
    /// Libraries of the driver a CUDA program or nvidia-smi loads.
    static let libraryPrefixes = ["libcuda.so", "libcudadebugger.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so",
                                  "libnvidia-nvvm.so", "libnvidia-opencl.so", "libnvidia-gpucomp.so",
                                  "libnvidia-allocator.so", "libnvidia-cfg.so", "libnvcuvid.so",
                                  "libnvidia-encode.so", "libnvidia-opticalflow.so"]

    /// The spec for the nodes under `devDir` (`/dev`), or nil when it has
    /// no `nvidiaN`. `ldcache`: `ldconfig -p`'s output; `scanned`: driver
    /// library files found in driver folders (used for the names the cache
    /// lacks); `smi`: the nvidia-smi binary, if any.
    public static func spec(devDir: String, ldcache: String, scanned: [String] = [], smi: String?) -> CDISpec? {
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
        for lib in libraries(ldcache, scanned: scanned) {
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
    /// each path once), then those of `scanned` that are libraries the
    /// cache does not have at all (a driver installed outside the loader's
    /// folders, as in containers that mount it under /usr/local/nvidia).
    static func libraries(_ ldcache: String, scanned: [String] = []) -> [String] {
        var out: [String] = []
        for line in ldcache.split(separator: "\n") {
            guard let arrow = line.range(of: " => ") else { continue }
            let name = line[..<arrow.lowerBound].trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init) ?? ""
            let path = String(line[arrow.upperBound...]).trimmingCharacters(in: .whitespaces)
            guard libraryPrefixes.contains(where: { name.hasPrefix($0) }), line.contains("x86-64"), !out.contains(path)
            else { continue }
            out.append(path)
        }
        // A library the cache has (under any version) comes from there alone.
        let cached = libraryPrefixes.filter { p in out.contains { baseName($0).hasPrefix(p) } }
        for path in scanned where !cached.contains(where: { baseName(path).hasPrefix($0) }) && !out.contains(path) {
            out.append(path)
        }
        return out
    }

    private static func baseName(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }

    /// `ldconfig -p` of this host; "" when it cannot run.
    public static func hostLdcache() -> String {
        for ldconfig in ["/sbin/ldconfig", "/usr/sbin/ldconfig"] where access(ldconfig, X_OK) == 0 {
            guard let outcome = try? HostCommand.run(ldconfig, argv: [ldconfig, "-p"], environment: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                                                     timeout: .seconds(30), outputLimit: 64 << 20),
                  outcome.succeeded else { return "" }
            return String(decoding: outcome.output, as: UTF8.self)
        }
        return ""
    }

    /// Folders a driver's libraries live in outside the loader's cache:
    /// the daemon's `LD_LIBRARY_PATH`, then where containers and distros
    /// put them.
    public static func driverFolders(environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        var dirs = (environment["LD_LIBRARY_PATH"] ?? "").split(separator: ":").map(String.init).filter { $0.hasPrefix("/") }
        // 64-bit folders only: /usr/local/nvidia/lib holds the 32-bit driver.
        for d in ["/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64",
                  "/usr/lib/x86_64-linux-gnu/nvidia/current"] where !dirs.contains(d) {
            dirs.append(d)
        }
        return dirs
    }

    /// Driver library files (regular files or links to them) in `folders`,
    /// by the same name prefixes as the cache.
    public static func scanLibraries(in folders: [String] = driverFolders()) -> [String] {
        var out: [String] = []
        for dir in folders {
            guard let entries = try? FS.list(path: dir) else { continue }
            for name in entries.map({ String(decoding: $0.name, as: UTF8.self) }).sorted()
            where libraryPrefixes.contains(where: { name.hasPrefix($0) }) {
                var st = stat()
                guard stat(dir + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
                out.append(dir + "/" + name)
            }
        }
        return out
    }

    /// `nvidia-smi` in the usual folders, the driver's folder or the
    /// daemon's PATH, if any: the first that is a program itself, since
    /// some hosts put a script in /usr/bin that runs the driver's copy (a
    /// replica has neither that path nor, perhaps, a shell).
    public static func hostSMI(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        let path = (environment["PATH"] ?? "").split(separator: ":").map { String($0) + "/nvidia-smi" }
        let found = (["/usr/bin/nvidia-smi", "/usr/local/bin/nvidia-smi", "/usr/sbin/nvidia-smi",
                      "/usr/local/nvidia/bin/nvidia-smi"] + path).filter { $0.hasPrefix("/") && access($0, X_OK) == 0 }
        return found.first(where: isELF) ?? found.first
    }

    static func isELF(_ path: String) -> Bool {
        guard let fd = try? OwnedFD.open(path, O_RDONLY | O_CLOEXEC) else { return false }
        var magic = [UInt8](repeating: 0, count: 4)
        let n = magic.withUnsafeMutableBytes { read(fd.raw, $0.baseAddress, 4) }
        return n == 4 && magic == [0x7F, 0x45, 0x4C, 0x46]
    }
}
