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

/// The pre-started spare replicas that hold memory beside the environments:
/// `count` spares, each with the memory limit `each` (the daemon's default
/// memory limit; 0 when it has none).
public struct SpareReservation: Sendable, Equatable {
    public var count: Int
    public var each: Int64
    public init(count: Int = 0, each: Int64 = 0) { self.count = count; self.each = each }
    public var bytes: Int64 { Admission.times(Int64(count), each) }
}

/// Admission control: an environment is admitted only if every environment
/// could run all its replicas at once within the machine, beside the spare
/// replicas that exist. Memory counts each replica's limit (its request
/// when it has no limit, the daemon's default memory limit when it has
/// neither), because that is what the cgroup lets it take; cpu counts
/// requests, because limits are a ceiling on a shared resource, not a
/// reservation. An environment with nothing and no default counts as 0.
public enum Admission {
    /// Throws unless `new` fits beside `admitted`. Environments in
    /// `admitted` named `replacing` or `new.name` are left out: they are the
    /// version that `new` replaces (and a new version that takes no more of
    /// a resource than the old one is never refused for it). The message
    /// gives the arithmetic. The code is `invalidArgument` when `new` alone
    /// is too big for the machine (it can never fit), `conflict` when it
    /// would fit but others hold the room.
    /// `defaultMemory`: the memory limit a replica gets when its spec sets
    /// none (`hearthd --default-memory`); `spares`: what pre-started spares
    /// hold now (memory only).
    public static func admit(_ new: EffectiveEnvironment, replacing: String?, admitted: [EffectiveEnvironment],
                             capacity: MachineCapacity, defaultMemory: Int64? = nil,
                             spares: SpareReservation = SpareReservation()) throws {
        let replaced = admitted.filter { $0.name == new.name || $0.name == replacing }
        let others = admitted.filter { $0.name != new.name && $0.name != replacing }
        let memoryLabel = new.memoryLimit != nil ? "memory limit"
            : new.memoryRequest != nil ? "memory request" : "default memory limit"
        let resources = [
            Resource(label: memoryLabel, unit: "",
                     perReplica: { memory($0, defaultMemory: defaultMemory) }, available: capacity.memoryBytes,
                     format: formatMemory, spares: spares.bytes),
            Resource(label: "cpu request", unit: " cpus",
                     perReplica: { $0.cpuRequestMilli ?? 0 }, available: capacity.cpuMilli, format: formatCores),
            Resource(label: "gpu", unit: " GPUs",
                     perReplica: { $0.gpus ?? 0 }, available: capacity.gpus, format: { "\($0)" }),
        ]
        for resource in resources {
            let each = resource.perReplica(new)
            let wanted = times(Int64(new.replicaCount), each)
            let admittedHeld = others.reduce(Int64(0)) { plus($0, times(Int64($1.replicaCount), resource.perReplica($1))) }
            let held = plus(admittedHeld, resource.spares)
            let before = replaced.reduce(Int64(0)) { plus($0, times(Int64($1.replicaCount), resource.perReplica($1))) }
            // A version that takes no more than the one it replaces is let
            // through even on a machine already over (say, one measured
            // smaller after a restart): refusing it would free nothing.
            guard plus(wanted, held) > resource.available, wanted > before else { continue }
            let f = resource.format
            var already = admittedHeld > 0 ? ", plus \(f(admittedHeld)) already admitted" : ""
            if resource.spares > 0 {
                already += ", plus \(spares.count) spare replica\(spares.count == 1 ? "" : "s") × \(f(spares.each))"
                    + " = \(f(resource.spares))"
            }
            if !already.isEmpty { already += "," }
            // A scaling environment reserves its max: it may get there.
            let count = new.minReplicas == nil ? "replica_count \(new.replicaCount)" : "replicas.max \(new.replicaCount)"
            let message = "environment \"\(new.name)\": \(count) × \(resource.label) \(f(each))"
                + " = \(f(wanted))\(resource.unit)\(already) exceeds the \(f(max(resource.available, 0)))\(resource.unit)"
                + " this machine can give"
                + (resource.spares > 0 ? " (hearthd --spares 0 keeps no spares)" : "")
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
        /// What spare replicas hold of it.
        var spares: Int64 = 0
    }

    /// The memory one replica of `env` may take: its limit, else its
    /// request, else the daemon's default limit, else 0.
    public static func memory(_ env: EffectiveEnvironment, defaultMemory: Int64?) -> Int64 {
        env.replicaMemoryLimit(default: defaultMemory) ?? 0
    }

    /// Memory `env` holds with all replicas running: replicas × (limit,
    /// else request, else `defaultMemory`).
    public static func memoryReservation(_ env: EffectiveEnvironment, defaultMemory: Int64? = nil) -> Int64 {
        times(Int64(env.replicaCount), memory(env, defaultMemory: defaultMemory))
    }

    /// Millicores `env` asks for with all replicas running: replicas × request.
    public static func cpuReservation(_ env: EffectiveEnvironment) -> Int64 {
        times(Int64(env.replicaCount), env.cpuRequestMilli ?? 0)
    }

    // Saturating: a sum past Int64 exceeds any machine, which is the answer.
    public static func times(_ a: Int64, _ b: Int64) -> Int64 {
        let (r, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : r
    }

    public static func plus(_ a: Int64, _ b: Int64) -> Int64 {
        let (r, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : r
    }

    /// In the largest binary unit that fits: `8Gi`, `23.5Gi`, `1.25Mi`
    /// (two decimals at most); bytes below 1Ki.
    public static func formatMemory(_ bytes: Int64) -> String {
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

/// `GET /v1/info`: what a node can still take, for a scheduler that places
/// environments on many daemons (the connector). Reservations are
/// admission's: an environment holds all its replicas at their memory
/// limits and cpu requests, whether they run or not.
public struct NodeInfo: Codable, Sendable {
    public struct Amounts: Codable, Sendable, Equatable {
        public var cpuMilli: Int64
        public var memoryBytes: Int64
        public var gpus: Int64
        public init(cpuMilli: Int64, memoryBytes: Int64, gpus: Int64) {
            self.cpuMilli = cpuMilli; self.memoryBytes = memoryBytes; self.gpus = gpus
        }
    }
    public var hostname: String
    public var version: String
    public var pid: Int32
    public var cgroup: String
    /// What admission hands out: every CPU, memory less a reserve, the GPUs found.
    public var capacity: Amounts
    /// Held by admitted environments (all replicas) and by spare replicas (memory).
    public var admitted: Amounts
    /// capacity − admitted, never below 0.
    public var free: Amounts
    public var environments: Int
    /// Replicas admitted environments may run (their replica counts, or maxima).
    public var replicas: Int
    public var caller: String?

    public init(hostname: String, version: String, pid: Int32, cgroup: String, capacity: Amounts, admitted: Amounts,
                environments: Int, replicas: Int, caller: String?) {
        self.hostname = hostname; self.version = version; self.pid = pid; self.cgroup = cgroup
        self.capacity = capacity; self.admitted = admitted
        self.free = Amounts(cpuMilli: max(0, capacity.cpuMilli - admitted.cpuMilli),
                            memoryBytes: max(0, capacity.memoryBytes - admitted.memoryBytes),
                            gpus: max(0, capacity.gpus - admitted.gpus))
        self.environments = environments; self.replicas = replicas; self.caller = caller
    }
}
