#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What the daemon acts on for one environment: the spec with its pod
/// template's primary container merged in, quantities in numbers, the
/// request/limit defaults applied and list order normalized. Obtained from
/// `EnvironmentSpec.effective`.
public struct EffectiveEnvironment: Codable, Sendable, Equatable {
    public var name: String
    /// Primary container image, else `container_image`, else the default image.
    public var image: String
    /// `environment` with the primary container's `env` added over it.
    public var environment: [String: String]
    public var cpuRequestMilli: Int64?
    public var cpuLimitMilli: Int64?
    /// Bytes.
    public var memoryRequest: Int64?
    /// Bytes.
    public var memoryLimit: Int64?
    /// Whole GPUs asked for (Kubernetes requires request = limit for GPUs).
    public var gpus: Int64?
    /// Bytes.
    public var ephemeralStorageRequest: Int64?
    /// Bytes.
    public var ephemeralStorageLimit: Int64?
    /// The most replicas at once (`replica_count`, or `replicas.max`).
    public var replicaCount: Int
    /// The least the environment keeps while in use; nil: `replicaCount`.
    public var minReplicas: Int?
    public var ttlSeconds: Int
    /// How long an idle environment keeps `minReplicas` before going to
    /// zero; nil: `ttlSeconds`.
    public var scaledownTTLSeconds: Int?
    /// Tasks one replica runs at once; nil: 1.
    public var concurrency: Int?
    /// Start `minReplicas` at apply; nil: no.
    public var prewarm: Bool?
    /// Host directories in every replica, sorted by `path`; nil: none.
    public var mounts: [Mount]?
    /// CDI devices, sorted, without duplicates; nil: none.
    public var devices: [String]?
    /// Modules imported before `ready`, in order, without duplicates; nil: none.
    public var preload: [String]?

    public struct Mount: Codable, Sendable, Equatable {
        public var hostPath: String
        public var path: String
        public var readOnly: Bool
        public init(hostPath: String, path: String, readOnly: Bool) {
            self.hostPath = hostPath; self.path = path; self.readOnly = readOnly
        }

        enum CodingKeys: String, CodingKey {
            case hostPath = "host_path"
            case path
            case readOnly = "read_only"
        }
    }
    /// Secret keys, sorted, without duplicates.
    public var secrets: [String]
    public var network: EnvironmentSpec.Network
    public var seccomp: EnvironmentSpec.Seccomp
    /// `CAP_X` names (or `ALL`), each list sorted, without duplicates.
    public var capabilities: EnvironmentSpec.Capabilities
    public var timeoutSeconds: Double?
    public var maxTasksPerReplica: Int?
    public var maxQueue: Int
    /// The pod template's labels and annotations: metadata for `hearth status`.
    public var labels: [String: String]
    public var annotations: [String: String]
    /// Required Python distributions, sorted; nil when none (so environments
    /// without any keep the identity they had before this field existed).
    public var packages: [String]?
    /// nil: the daemon's default; left out of the identity then, so
    /// environments that do not say keep the identity they had.
    public var userNamespace: Bool?
    /// The primary container's `imagePullPolicy`, else the environment's;
    /// nil: `IfNotPresent`. Not part of the identity (it is not in
    /// `CodingKeys`): when the image is fetched changes nothing a replica runs.
    public var imagePullPolicy: EnvironmentSpec.PullPolicy?

    public init(
        name: String, image: String, environment: [String: String] = [:],
        cpuRequestMilli: Int64? = nil, cpuLimitMilli: Int64? = nil, memoryRequest: Int64? = nil, memoryLimit: Int64? = nil,
        gpus: Int64? = nil, ephemeralStorageRequest: Int64? = nil, ephemeralStorageLimit: Int64? = nil,
        replicaCount: Int = EnvironmentSpec.defaultReplicaCount, ttlSeconds: Int = EnvironmentSpec.defaultTTLSeconds,
        secrets: [String] = [], network: EnvironmentSpec.Network = .none, seccomp: EnvironmentSpec.Seccomp = .default,
        capabilities: EnvironmentSpec.Capabilities = .init(), timeoutSeconds: Double? = nil,
        maxTasksPerReplica: Int? = nil, maxQueue: Int = EnvironmentSpec.defaultMaxQueue,
        labels: [String: String] = [:], annotations: [String: String] = [:], packages: [String]? = nil,
        userNamespace: Bool? = nil
    ) {
        self.name = name; self.image = image; self.environment = environment
        self.cpuRequestMilli = cpuRequestMilli; self.cpuLimitMilli = cpuLimitMilli
        self.memoryRequest = memoryRequest; self.memoryLimit = memoryLimit; self.gpus = gpus
        self.ephemeralStorageRequest = ephemeralStorageRequest; self.ephemeralStorageLimit = ephemeralStorageLimit
        self.replicaCount = replicaCount; self.ttlSeconds = ttlSeconds; self.secrets = secrets
        self.network = network; self.seccomp = seccomp; self.capabilities = capabilities
        self.timeoutSeconds = timeoutSeconds; self.maxTasksPerReplica = maxTasksPerReplica; self.maxQueue = maxQueue
        self.labels = labels; self.annotations = annotations; self.packages = packages
        self.userNamespace = userNamespace
    }

    /// `replicas.min`, else `replica_count`.
    public var leastReplicas: Int { minReplicas ?? replicaCount }
    /// Tasks one replica runs at once.
    public var tasksPerReplica: Int { concurrency ?? 1 }
    /// Seconds an idle environment keeps its least replicas.
    public var scaledownSeconds: Int { scaledownTTLSeconds ?? ttlSeconds }

    /// The per-task timeout as a `Duration`; nil when there is none (or it
    /// is not a finite positive number, which validation refuses).
    /// The memory limit each replica gets: its limit, else its request
    /// (Flyte's rule: a request alone is also the limit), else the daemon's
    /// default (`hearthd --default-memory`); nil: none. Admission counts
    /// this and the replica's cgroup gets it.
    public func replicaMemoryLimit(default defaultMemory: Int64?) -> Int64? {
        memoryLimit ?? memoryRequest ?? defaultMemory
    }

    /// Bytes a replica may write to its writable layer: the limit, else the
    /// request (the same rule); nil: not measured.
    public var replicaEphemeralStorage: Int64? { ephemeralStorageLimit ?? ephemeralStorageRequest }

    public var timeout: Duration? {
        guard let seconds = timeoutSeconds, seconds.isFinite, seconds > 0, seconds < 9e9 else { return nil }
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    enum CodingKeys: String, CodingKey {
        case name, image, environment
        case cpuRequestMilli = "cpu_request_milli"
        case cpuLimitMilli = "cpu_limit_milli"
        case memoryRequest = "memory_request"
        case memoryLimit = "memory_limit"
        case gpus
        case ephemeralStorageRequest = "ephemeral_storage_request"
        case ephemeralStorageLimit = "ephemeral_storage_limit"
        case replicaCount = "replica_count"
        case minReplicas = "min_replicas"
        case ttlSeconds = "ttl_seconds"
        case scaledownTTLSeconds = "scaledown_ttl_seconds"
        case concurrency, prewarm, mounts, devices, preload
        case secrets, network, seccomp, capabilities
        case timeoutSeconds = "timeout_seconds"
        case maxTasksPerReplica = "max_tasks_per_replica"
        case maxQueue = "max_queue"
        case labels, annotations, packages
        case userNamespace = "user_namespace"
    }

    /// Hex SHA-256 of the canonical encoding (JSON, sorted keys). Two specs
    /// that mean the same (YAML or JSON, keys in any order, `memory` for
    /// `mem`, the same value in the pod template or at the top) share it;
    /// any change to what the daemon acts on gives another. Optional fields
    /// that are unset are left out of the encoding, so adding a new
    /// optional field later does not change existing identities.
    public var identity: String {
        SHA256.hex(canonicalEncoding)
    }

    /// The bytes `identity` hashes.
    var canonicalEncoding: [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Strings for non-finite numbers, so encoding cannot fail.
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        do {
            return Array(try encoder.encode(self))
        } catch {
            // Unreachable with the strategy above; the description is still
            // deterministic, so identity stays a function of the value.
            return Array(String(reflecting: self).utf8)
        }
    }
}
