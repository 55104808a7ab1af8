import HearthCore
import HearthSandbox

/// What one environment's replicas are, resolved from its spec.
public struct PoolConfig: Sendable {
    public var name: String
    public var identity: String
    public var image: String
    public var env: [String: String]
    public var limits: CgroupLimits
    /// The most replicas at once (`replica_count`, `replicas.max`).
    public var replicaCount: Int
    /// The least kept while the environment is in use (`replicas.min`).
    public var minReplicas: Int
    /// A replica idle this long goes, while more than `minReplicas` remain.
    public var ttl: Duration
    /// An environment with nothing queued or running this long goes to zero.
    public var scaledownTTL: Duration
    /// Tasks one replica runs at once.
    public var concurrency = 1
    /// Start `minReplicas` at apply, and again when a task wakes the
    /// environment from zero.
    public var prewarm = false
    /// Host directories bound into every replica, each with the allowed
    /// prefix it lies under (it is opened beneath it at every build).
    public var mounts: [HostMount] = []
    /// CDI devices' edits: nodes in /dev (allowed in the device cgroup),
    /// env, bind mounts.
    public var devices = ResolvedDevices()
    /// Whole GPUs each replica holds (`limits: {gpu: N}`).
    public var gpus = 0
    /// Modules the worker imports before `ready` (`preload`); part of the
    /// spare key, so adopted spares have imported them too.
    public var preload: [String] = []

    public struct HostMount: Sendable, Equatable {
        public var prefix: String
        public var hostPath: String
        public var path: String
        public var readOnly: Bool
        public init(prefix: String, hostPath: String, path: String, readOnly: Bool) {
            self.prefix = prefix; self.hostPath = hostPath; self.path = path; self.readOnly = readOnly
        }
    }
    public var secrets: [String]
    public var network: NetworkMode
    public var seccomp: SeccompProfile?
    public var capabilities: CapabilitySet
    public var timeout: Duration?
    public var maxTasksPerReplica: Int?
    public var maxQueue: Int
    /// Python distributions the worker must find before it says `ready`.
    public var packages: [String]
    /// Each replica in a user namespace of its own (ReplicaSpec.userNamespace).
    public var userNamespace = false
    /// Bytes a replica may write to its writable layer before it is
    /// evicted (`ephemeral_storage`); nil: not measured.
    public var ephemeralStorage: Int64?

    public init(name: String, identity: String, image: String, env: [String: String], limits: CgroupLimits,
                replicaCount: Int, ttl: Duration, secrets: [String], network: NetworkMode,
                seccomp: SeccompProfile?, capabilities: CapabilitySet, timeout: Duration?,
                maxTasksPerReplica: Int?, maxQueue: Int, packages: [String] = [], ephemeralStorage: Int64? = nil) {
        self.name = name; self.identity = identity; self.image = image; self.env = env; self.limits = limits
        self.replicaCount = replicaCount; self.ttl = ttl; self.secrets = secrets; self.network = network
        // A fixed number unless the spec says otherwise (see init(_:seccomp:...)).
        self.minReplicas = replicaCount; self.scaledownTTL = ttl
        self.seccomp = seccomp; self.capabilities = capabilities; self.timeout = timeout
        self.maxTasksPerReplica = maxTasksPerReplica; self.maxQueue = maxQueue; self.packages = packages
        self.ephemeralStorage = ephemeralStorage
    }
}

extension PoolConfig {
    public func with(userNamespace: Bool) -> PoolConfig {
        var c = self
        c.userNamespace = userNamespace
        return c
    }

    /// An environment's effective spec as its replicas run it. Pure: the
    /// seccomp profile is loaded (a profile file read) by the caller.
    /// The limits follow Flyte's rule through `EffectiveEnvironment`'s
    /// `replicaMemoryLimit` and `replicaEphemeralStorage`, the same
    /// functions admission counts with.
    public init(_ e: EffectiveEnvironment, seccomp: SeccompProfile?, defaultMemory: Int64?,
                defaultUserNamespace: Bool) throws {
        let caps: CapabilitySet
        do {
            caps = try CapabilitySet.dockerDefault.applying(add: e.capabilities.add, drop: e.capabilities.drop)
        } catch {
            throw HearthError.invalid("environment \"\(e.name)\": capabilities: \(HearthError.wrap(error).message)")
        }
        // The request stays as it was: without one there is no memory.low /
        // soft limit, even when the default limit applies.
        let limits = CgroupLimits(cpuLimitMilli: e.cpuLimitMilli, cpuRequestMilli: e.cpuRequestMilli,
                                  memoryLimit: e.replicaMemoryLimit(default: defaultMemory),
                                  memoryRequest: e.memoryRequest, pidsMax: HearthDefaults.pidsMax)
        let network: NetworkMode = switch e.network {
        case .none: .none
        case .egress: .egress
        case .host: .host
        }
        self.init(name: e.name, identity: e.identity, image: e.image, env: e.environment, limits: limits,
                  replicaCount: e.replicaCount, ttl: .seconds(e.ttlSeconds), secrets: e.secrets,
                  network: network, seccomp: seccomp, capabilities: caps,
                  timeout: e.timeout, maxTasksPerReplica: e.maxTasksPerReplica, maxQueue: e.maxQueue,
                  packages: e.packages ?? [], ephemeralStorage: e.replicaEphemeralStorage)
        userNamespace = e.userNamespace ?? defaultUserNamespace
        minReplicas = e.leastReplicas
        scaledownTTL = .seconds(e.scaledownSeconds)
        concurrency = e.tasksPerReplica
        prewarm = e.prewarm ?? false
        gpus = Int(clamping: e.gpus ?? 0)
        preload = e.preload ?? []
    }
}
