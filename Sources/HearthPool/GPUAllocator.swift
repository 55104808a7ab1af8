import HearthCore
import Synchronization

/// Whole GPUs, each owned by one replica at a time. The host's GPUs are the
/// CDI devices of kind `nvidia.com/gpu` (a device named `all`, which the
/// NVIDIA toolkit writes beside the per-GPU ones, is not a GPU of its own),
/// read from the CDI directories when a replica asks; a replica with
/// `gpu: N` takes N free ones for its life and gives them back at teardown.
public final class GPUAllocator: Sendable {
    public static let kind = "nvidia.com/gpu"

    private let dirs: [String]
    /// Where NVIDIA nodes are looked for when no spec offers GPUs.
    public let nvidiaDevDir: String?
    /// GPU device name (`nvidia.com/gpu=0`) → the replica holding it.
    private let held = Mutex<[String: String]>([:])

    /// Run GPU specs' hooks other than the NVIDIA toolkit's (`--allow-privileged`).
    public let runHooks: Bool

    public init(cdiDirs: [String], nvidiaDevDir: String? = "/dev", runHooks: Bool = false) {
        dirs = cdiDirs; self.nvidiaDevDir = nvidiaDevDir; self.runHooks = runHooks
    }

    /// The CDI devices of this host (GPUs generated where no spec has them).
    public func registry() -> CDIRegistry { CDIRegistry.load(dirs: dirs, nvidiaDevDir: nvidiaDevDir, generated: generated) }

    /// The generated NVIDIA spec between loads (see GeneratedSpecCache).
    private let generated = GeneratedSpecCache()

    /// The host's GPUs, in the order the specs list them.
    public func gpus() -> (names: [String], registry: CDIRegistry) {
        let registry = registry()
        let names = registry.devices.keys.filter {
            $0.hasPrefix(Self.kind + "=") && $0 != Self.kind + "=all"
        }.sorted { a, b in
            // Numeric names (indices) in numeric order, then the rest.
            let x = Int(a.dropFirst(Self.kind.count + 1)), y = Int(b.dropFirst(Self.kind.count + 1))
            switch (x, y) {
            case let (x?, y?): return x < y
            case (_?, nil): return true
            case (nil, _?): return false
            default: return a < b
            }
        }
        return (names, registry)
    }

    /// `count` free GPUs for `replica`, with their edits; throws when fewer
    /// are free, naming who holds the rest.
    public func take(_ count: Int, for replica: String) throws -> (names: [String], edits: ResolvedDevices) {
        let (all, registry) = gpus()
        let names: [String] = try held.withLock { h in
            let free = all.filter { h[$0] == nil }
            guard free.count >= count else {
                let holders = Set(h.values).sorted().joined(separator: ", ")
                throw HearthError(.unavailable, "replica \(replica): \(count) GPU\(count == 1 ? "" : "s") asked, \(free.count) of \(all.count) free\(holders.isEmpty ? "" : " (held by \(holders))")")
            }
            let chosen = Array(free.prefix(count))
            for n in chosen { h[n] = replica }
            return chosen
        }
        do {
            var edits = try registry.resolve(names, environment: replica, runHooks: runHooks)
            // The replica's GPUs by the names the toolkit uses, and CUDA's
            // view of them (the only ones it can see), 0…N-1.
            let ids = names.map { String($0.dropFirst(Self.kind.count + 1)) }
            edits.env.append("NVIDIA_VISIBLE_DEVICES=" + ids.joined(separator: ","))
            edits.env.append("CUDA_VISIBLE_DEVICES=" + (0..<count).map(String.init).joined(separator: ","))
            return (names, edits)
        } catch {
            release(replica)
            throw error
        }
    }

    /// Gives back what `replica` holds.
    public func release(_ replica: String) {
        held.withLock { h in h = h.filter { $0.value != replica } }
    }

    /// GPU → holder, for status.
    public func holders() -> [String: String] { held.withLock { $0 } }
}
