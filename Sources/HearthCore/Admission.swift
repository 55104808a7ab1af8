/// What this machine can give all environments together (the daemon
/// measures it, less what it keeps for itself).
public struct MachineCapacity: Codable, Sendable, Equatable {
    public var cpuMilli: Int64
    public var memoryBytes: Int64
    /// GPUs that may be handed to replicas; none unless the daemon says so.
    public var gpus: Int64

    public init(cpuMilli: Int64, memoryBytes: Int64, gpus: Int64 = 0) {
        self.cpuMilli = cpuMilli; self.memoryBytes = memoryBytes; self.gpus = gpus
    }
}

/// Admission control: an environment is admitted only if every environment
/// could run all its replicas at once within the machine. Memory counts
/// each replica's limit (its request when it has no limit), because that
/// is what the cgroup lets it take; cpu counts requests, because limits are
/// a ceiling on a shared resource, not a reservation. An environment with
/// neither counts as 0.
public enum Admission {
    /// Throws unless `new` fits beside `admitted`. Environments in
    /// `admitted` named `replacing` or `new.name` are left out: they are the
    /// version that `new` replaces (and a new version that takes no more of
    /// a resource than the old one is never refused for it). The message
    /// gives the arithmetic. The code is `invalidArgument` when `new` alone
    /// is too big for the machine (it can never fit), `conflict` when it
    /// would fit but others hold the room.
    public static func admit(_ new: EffectiveEnvironment, replacing: String?, admitted: [EffectiveEnvironment],
                             capacity: MachineCapacity) throws {
        let replaced = admitted.filter { $0.name == new.name || $0.name == replacing }
        let others = admitted.filter { $0.name != new.name && $0.name != replacing }
        let resources = [
            Resource(label: new.memoryLimit != nil ? "memory limit" : "memory request", unit: "",
                     perReplica: { $0.memoryLimit ?? $0.memoryRequest ?? 0 }, available: capacity.memoryBytes, format: formatMemory),
            Resource(label: "cpu request", unit: " cpus",
                     perReplica: { $0.cpuRequestMilli ?? 0 }, available: capacity.cpuMilli, format: formatCores),
            Resource(label: "gpu", unit: " GPUs",
                     perReplica: { $0.gpus ?? 0 }, available: capacity.gpus, format: { "\($0)" }),
        ]
        for resource in resources {
            let each = resource.perReplica(new)
            let wanted = times(Int64(new.replicaCount), each)
            let held = others.reduce(Int64(0)) { plus($0, times(Int64($1.replicaCount), resource.perReplica($1))) }
            let before = replaced.reduce(Int64(0)) { plus($0, times(Int64($1.replicaCount), resource.perReplica($1))) }
            // A version that takes no more than the one it replaces is let
            // through even on a machine already over (say, one measured
            // smaller after a restart): refusing it would free nothing.
            guard plus(wanted, held) > resource.available, wanted > before else { continue }
            let f = resource.format
            let already = held > 0 ? ", plus \(f(held)) already admitted," : ""
            let message = "environment \"\(new.name)\": replica_count \(new.replicaCount) × \(resource.label) \(f(each))"
                + " = \(f(wanted))\(resource.unit)\(already) exceeds the \(f(max(resource.available, 0)))\(resource.unit)"
                + " this machine can give"
            throw HearthError(wanted > resource.available ? .invalidArgument : .conflict, message)
        }
    }

    /// One kind of capacity: how much a replica of an environment takes.
    private struct Resource {
        var label: String
        var unit: String
        var perReplica: (EffectiveEnvironment) -> Int64
        var available: Int64
        var format: (Int64) -> String
    }

    /// Memory `env` holds with all replicas running: replicas × (limit, else request).
    public static func memoryReservation(_ env: EffectiveEnvironment) -> Int64 {
        times(Int64(env.replicaCount), env.memoryLimit ?? env.memoryRequest ?? 0)
    }

    /// Millicores `env` asks for with all replicas running: replicas × request.
    public static func cpuReservation(_ env: EffectiveEnvironment) -> Int64 {
        times(Int64(env.replicaCount), env.cpuRequestMilli ?? 0)
    }

    // Saturating: a sum past Int64 exceeds any machine, which is the answer.
    private static func times(_ a: Int64, _ b: Int64) -> Int64 {
        let (r, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : r
    }

    private static func plus(_ a: Int64, _ b: Int64) -> Int64 {
        let (r, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : r
    }

    /// In the largest binary unit that fits: `8Gi`, `23.5Gi`, `1.25Mi`
    /// (two decimals at most); bytes below 1Ki.
    static func formatMemory(_ bytes: Int64) -> String {
        let units: [(String, Int64)] = [("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]
        for (suffix, size) in units where bytes >= size {
            if bytes % size == 0 { return "\(bytes / size)\(suffix)" }
            return decimal((Double(bytes) / Double(size) * 100).rounded(), places: 2) + suffix
        }
        return "\(bytes)"
    }

    /// Millicores as cores: 7500 → "7.5", 250 → "0.25".
    static func formatCores(_ milli: Int64) -> String {
        decimal(Double(milli), places: 3)
    }

    /// `scaled` / 10^places, without trailing zeros; no Foundation formatting.
    private static func decimal(_ scaled: Double, places: Int) -> String {
        var divisor: Int64 = 1
        for _ in 0..<places { divisor *= 10 }
        guard scaled.isFinite, abs(scaled) < 9e18 else { return String(scaled) }
        let value = Int64(scaled)
        let whole = value / divisor
        var fraction = String(abs(value % divisor))
        fraction = String(repeating: "0", count: places - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return fraction.isEmpty ? "\(whole)" : "\(whole).\(fraction)"
    }
}
