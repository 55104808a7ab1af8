/// One environment as a user writes it: the fields of Union's
/// `ActorEnvironment` (see seed/actors.md) plus Hearth's own isolation and
/// queue settings. Keys are snake_case in YAML and JSON.
///
/// Reading (`parseDocuments`, or `Decodable`) checks every field's type and
/// value, so a spec obtained that way is valid. A spec built in code should
/// go through `validated()`. `effective` resolves the pod template and the
/// request/limit defaults into what the daemon acts on; `identity` hashes
/// that, so re-applying an unchanged environment is recognisably a no-op.
///
/// Encoding writes the normalized form (quantities as strings, secret keys,
/// timeout in seconds), which reads back to an equal value.
public struct EnvironmentSpec: Codable, Sendable, Equatable {
    /// DNS-label-like: `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
    public var name: String
    /// Image reference; nil means `EnvironmentSpec.defaultImage`. A
    /// pod template's primary container image takes precedence.
    public var containerImage: String?
    /// Environment variables of every replica.
    public var environment: [String: String]
    /// Per replica; `requests` guide sharing (cpu weight, memory.low) and
    /// admission, `limits` are enforced by the cgroup.
    public var requests: Resources
    public var limits: Resources
    /// Most replicas kept at once, 1…64; with `replicas`, its `max`.
    public var replicaCount: Int
    /// `replicas: {min, max}`: the environment scales between them on
    /// demand; nil: `replica_count` for both.
    public var replicas: ReplicaRange?
    /// Seconds the environment keeps its `min` replicas once no task is
    /// queued or running, before it scales to zero; nil: `ttl_seconds`.
    public var scaledownTTLSeconds: Int?
    /// Tasks one replica runs at once, 1…256; nil: 1.
    public var concurrency: Int?
    /// Start `min` replicas when the environment is applied (and when it
    /// wakes from zero), before any task asks; nil: false.
    public var prewarm: Bool?
    /// Host directories mounted into every replica (`hearthd --allow-mount`
    /// says which); read-only unless `read_only: false`.
    public var mounts: [Mount] = []
    /// CDI devices every replica gets, `vendor.com/class=name` (`hearth
    /// devices` lists what the host offers).
    public var devices: [String] = []
    /// Modules every replica imports before it says `ready` (and spares for
    /// this environment's key before any environment adopts them), so the
    /// first task finds them in `sys.modules`: `numpy`, `torch.nn`, …
    public var preload: [String] = []
    /// Seconds a replica may sit idle before it is torn down, 1…86400.
    public var ttlSeconds: Int
    /// Keys of the secrets mounted at `/etc/secrets/KEY`, in the order given, without duplicates.
    public var secretRequests: [String]
    public var podTemplate: PodTemplate?
    public var network: Network
    public var seccomp: Seccomp
    public var capabilities: Capabilities
    /// Per-task time limit in seconds; nil means none.
    public var timeout: Double?
    /// A replica is recycled after this many tasks; nil means never.
    public var maxTasksPerReplica: Int?
    /// Tasks that may wait for a replica before submissions are refused (HTTP 429).
    public var maxQueue: Int
    /// Python distributions the image must provide (`name` or `name<op>version`,
    /// as ImageSpec's `packages` spells them); checked by the worker when a
    /// replica starts, and a missing one fails the start naming it.
    public var packages: [String]
    /// Run each replica in a user namespace of its own (root inside is an
    /// unprivileged host uid); nil: the daemon's default (`hearthd --userns`).
    public var userNamespace: Bool?
    /// When the daemon pulls `container_image` from its registry as the
    /// environment is applied; nil: `IfNotPresent`. The primary container's
    /// `imagePullPolicy` takes precedence.
    public var imagePullPolicy: PullPolicy?

    public init(
        name: String, containerImage: String? = nil, environment: [String: String] = [:],
        requests: Resources = Resources(), limits: Resources = Resources(),
        replicaCount: Int = EnvironmentSpec.defaultReplicaCount, ttlSeconds: Int = EnvironmentSpec.defaultTTLSeconds,
        secretRequests: [String] = [], podTemplate: PodTemplate? = nil, network: Network = .none,
        seccomp: Seccomp = .default, capabilities: Capabilities = Capabilities(), timeout: Double? = nil,
        maxTasksPerReplica: Int? = nil, maxQueue: Int = EnvironmentSpec.defaultMaxQueue, packages: [String] = [],
        replicas: ReplicaRange? = nil, scaledownTTLSeconds: Int? = nil, concurrency: Int? = nil, prewarm: Bool? = nil
    ) {
        self.name = name; self.containerImage = containerImage; self.environment = environment
        self.requests = requests; self.limits = limits; self.replicaCount = replicaCount
        self.ttlSeconds = ttlSeconds; self.secretRequests = secretRequests; self.podTemplate = podTemplate
        self.network = network; self.seccomp = seccomp; self.capabilities = capabilities; self.timeout = timeout
        self.maxTasksPerReplica = maxTasksPerReplica; self.maxQueue = maxQueue; self.packages = packages
        // `replica_count` is the maximum either way, so the two never disagree.
        if let replicas { self.replicaCount = replicas.max }
        self.replicas = replicas; self.scaledownTTLSeconds = scaledownTTLSeconds
        self.concurrency = concurrency; self.prewarm = prewarm
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name
        case containerImage = "container_image"
        case environment, requests, limits
        case replicaCount = "replica_count"
        case ttlSeconds = "ttl_seconds"
        case secretRequests = "secret_requests"
        case podTemplate = "pod_template"
        case network, seccomp, capabilities, timeout
        case maxTasksPerReplica = "max_tasks_per_replica"
        case maxQueue = "max_queue"
        case packages
        case userNamespace = "user_namespace"
        case imagePullPolicy = "image_pull_policy"
        case replicas
        case scaledownTTLSeconds = "scaledown_ttl"
        case concurrency, prewarm, mounts, devices, preload
    }

    // MARK: Defaults and ranges

    /// Image used when neither `container_image` nor the primary container names one.
    public static let defaultImage = HearthDefaults.image
    public static let defaultReplicaCount = 1
    /// Hearth's choice: long enough to keep a replica warm between the tasks
    /// of one workflow run, short enough not to hold memory for hours.
    public static let defaultTTLSeconds = 100
    public static let defaultMaxQueue = 1000
    /// flytekit's `PodTemplate` default.
    public static let defaultPrimaryContainerName = "primary"
    public static let replicaCountRange = 1...64
    /// `replicas.min`: zero lets the environment scale to nothing.
    public static let minReplicasRange = 0...64
    public static let concurrencyRange = 1...256
    public static let maxMounts = 32
    /// Where a mount may not go: the replica's kernel interfaces, its
    /// devices, Hearth's own directories and the secrets.
    public static let reservedMountPaths = ["/proc", "/sys", "/dev", "/.hearth", "/etc/secrets"]
    /// One second to one day.
    public static let ttlSecondsRange = 1...86_400
    public static let maxQueueRange = 1...100_000
    /// Seven days.
    public static let maxTimeoutSeconds: Double = 604_800

    // MARK: Nested types

    /// One host directory in every replica: `{host_path, path, read_only}`.
    public struct Mount: Codable, Sendable, Equatable {
        public var hostPath: String
        public var path: String
        /// nil: read-only.
        public var readOnly: Bool?
        public init(hostPath: String, path: String, readOnly: Bool? = nil) {
            self.hostPath = hostPath; self.path = path; self.readOnly = readOnly
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case hostPath = "host_path"
            case path
            case readOnly = "read_only"
        }
    }

    /// `replicas: {min, max}` (also `[min, max]` as Flyte 2's tuple, or one
    /// number for both).
    public struct ReplicaRange: Codable, Sendable, Equatable {
        public var min: Int
        public var max: Int
        public init(min: Int, max: Int) { self.min = min; self.max = max }

        enum CodingKeys: String, CodingKey, CaseIterable { case min, max }
    }

    /// flytekit's `Resources`. Values are Kubernetes quantities kept as
    /// written (`"2"`, `"500m"`, `"300Mi"`); numbers are accepted on input.
    /// `memory` is read as `mem`, `ephemeral-storage` as `ephemeral_storage`
    /// and `nvidia.com/gpu` as `gpu`, as Kubernetes spells them.
    public struct Resources: Codable, Sendable, Equatable {
        public var cpu: String?
        public var mem: String?
        /// A whole number of GPUs.
        public var gpu: String?
        public var ephemeralStorage: String?

        public init(cpu: String? = nil, mem: String? = nil, gpu: String? = nil, ephemeralStorage: String? = nil) {
            self.cpu = cpu; self.mem = mem; self.gpu = gpu; self.ephemeralStorage = ephemeralStorage
        }

        public var isEmpty: Bool { cpu == nil && mem == nil && gpu == nil && ephemeralStorage == nil }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case cpu, mem, gpu
            case ephemeralStorage = "ephemeral_storage"
        }
    }

    /// flytekit's `PodTemplate`, reduced to what one replica can honour: the
    /// primary container's image, env and resources override the
    /// environment's; labels and annotations are kept as metadata.
    public struct PodTemplate: Codable, Sendable, Equatable {
        public var primaryContainerName: String
        public var podSpec: PodSpec?
        public var labels: [String: String]
        public var annotations: [String: String]

        public init(primaryContainerName: String = EnvironmentSpec.defaultPrimaryContainerName, podSpec: PodSpec? = nil,
                    labels: [String: String] = [:], annotations: [String: String] = [:]) {
            self.primaryContainerName = primaryContainerName; self.podSpec = podSpec
            self.labels = labels; self.annotations = annotations
        }

        /// The container named `primaryContainerName`, if any.
        public var primaryContainer: Container? {
            podSpec?.containers.first { $0.name == primaryContainerName }
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case primaryContainerName = "primary_container_name"
            case podSpec = "pod_spec"
            case labels, annotations
        }
    }

    /// Kubernetes `V1PodSpec`: `containers`, and `volumes` of type
    /// `hostPath` (mounted where the primary container's `volumeMounts`
    /// say, as `mounts` entries).
    public struct PodSpec: Codable, Sendable, Equatable {
        public var containers: [Container]
        public var volumes: [Volume] = []
        public init(containers: [Container], volumes: [Volume] = []) {
            self.containers = containers; self.volumes = volumes
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case containers, volumes }
    }

    /// Kubernetes `V1Volume` with a `hostPath` source.
    public struct Volume: Codable, Sendable, Equatable {
        public var name: String
        public var hostPath: String
        public init(name: String, hostPath: String) { self.name = name; self.hostPath = hostPath }

        private enum CodingKeys: String, CodingKey { case name, hostPath }
        private enum HostPathKeys: String, CodingKey { case path }

        /// As Kubernetes writes it: `{name, hostPath: {path}}`.
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            var h = c.nestedContainer(keyedBy: HostPathKeys.self, forKey: .hostPath)
            try h.encode(hostPath, forKey: .path)
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            hostPath = try c.nestedContainer(keyedBy: HostPathKeys.self, forKey: .hostPath).decode(String.self, forKey: .path)
        }
    }

    /// Kubernetes `V1VolumeMount`: `name`, `mountPath`, `readOnly` (nil:
    /// read-only, Hearth's default; Kubernetes' is writable).
    public struct VolumeMount: Codable, Sendable, Equatable {
        public var name: String
        public var mountPath: String
        public var readOnly: Bool?
        public init(name: String, mountPath: String, readOnly: Bool? = nil) {
            self.name = name; self.mountPath = mountPath; self.readOnly = readOnly
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case name, mountPath, readOnly }
    }

    /// Kubernetes `V1Container`: `name`, `image`, `env`, `resources`,
    /// `imagePullPolicy`.
    public struct Container: Codable, Sendable, Equatable {
        public var name: String
        public var image: String?
        public var env: [EnvVar]
        public var resources: ResourceRequirements?
        public var imagePullPolicy: PullPolicy?
        public var volumeMounts: [VolumeMount] = []

        public init(name: String, image: String? = nil, env: [EnvVar] = [], resources: ResourceRequirements? = nil) {
            self.name = name; self.image = image; self.env = env; self.resources = resources
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case name, image, env, resources, imagePullPolicy, volumeMounts }
    }

    /// Kubernetes `V1EnvVar` with a literal value (`valueFrom` is not supported).
    public struct EnvVar: Codable, Sendable, Equatable {
        public var name: String
        public var value: String
        public init(name: String, value: String) { self.name = name; self.value = value }

        enum CodingKeys: String, CodingKey, CaseIterable { case name, value }
    }

    /// Kubernetes `V1ResourceRequirements`.
    public struct ResourceRequirements: Codable, Sendable, Equatable {
        public var requests: Resources
        public var limits: Resources
        public init(requests: Resources = Resources(), limits: Resources = Resources()) {
            self.requests = requests; self.limits = limits
        }

        enum CodingKeys: String, CodingKey, CaseIterable { case requests, limits }
    }

    /// Kubernetes' `imagePullPolicy`, spelled as Kubernetes spells it.
    public enum PullPolicy: String, Codable, Sendable, Equatable, CaseIterable {
        /// Pull when the store has no image of that name (the default).
        case ifNotPresent = "IfNotPresent"
        /// Pull at every apply: the name is resolved again.
        case always = "Always"
        /// Never pull: the image must be in the store.
        case never = "Never"

        static let rule = "expected IfNotPresent, Always or Never (as Kubernetes spells them)"
    }

    /// The replica's network namespace.
    public enum Network: String, Codable, Sendable, Equatable, CaseIterable {
        /// A fresh namespace with loopback only.
        case none
        /// The host's network namespace.
        case host
        /// A fresh namespace with loopback and the daemon's filtering
        /// proxy at 127.0.0.1:3128: HTTP and HTTPS to public hosts only.
        case egress
    }

    /// The replica's seccomp filter; written as `default`, `unconfined` or
    /// an absolute path to an OCI-format profile on the daemon's machine.
    public enum Seccomp: Codable, Sendable, Equatable, CustomStringConvertible {
        /// Hearth's built-in allow-list (like Docker's).
        case `default`
        case unconfined
        case profile(path: String)

        /// Reads the written form; nil when it is none of the three.
        public init?(text: String) {
            switch text {
            case "default": self = .default
            case "unconfined": self = .unconfined
            default:
                guard text.hasPrefix("/") else { return nil }
                self = .profile(path: text)
            }
        }

        public var description: String {
            switch self {
            case .default: return "default"
            case .unconfined: return "unconfined"
            case .profile(let path): return path
            }
        }

        public init(from decoder: any Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let value = Seccomp(text: text) else {
                throw HearthError.invalid("seccomp: \"\(text)\" is not allowed; \(Seccomp.rule)")
            }
            self = value
        }

        static let rule = "expected default, unconfined or an absolute path to an OCI seccomp profile"

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            try container.encode(description)
        }
    }

    /// Docker-style changes to the default capability set. Names are
    /// normalized to `CAP_X` (or `ALL`); whether the kernel knows them is
    /// checked by the daemon when it builds the set.
    public struct Capabilities: Codable, Sendable, Equatable {
        public var add: [String]
        public var drop: [String]
        public init(add: [String] = [], drop: [String] = []) { self.add = add; self.drop = drop }

        enum CodingKeys: String, CodingKey, CaseIterable { case add, drop }
    }
}
