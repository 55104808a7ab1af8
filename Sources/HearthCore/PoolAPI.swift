/// API types of environments and tasks.

public struct ApplyResult: Codable, Sendable {
    public var name: String
    public var outcome: String        // created | unchanged | replaced
    public var identity: String
    public init(name: String, outcome: String, identity: String) {
        self.name = name; self.outcome = outcome; self.identity = identity
    }
}

public struct TaskRequest: Codable, Sendable {
    public var module: String
    public var function: String
    public var kwargs: JSONValue?
    /// SHA-256 of an uploaded code bundle (PUT /v1/code/{sha256}).
    public var bundle: String?
    /// Seconds; overrides the environment's timeout.
    public var timeout: Double?
    /// Answer with the result instead of a task id.
    public var wait: Bool?
    /// The environment identity the caller applied (`ApplyResult.identity`):
    /// when another client has since applied a different spec under the same
    /// name, the task is refused (409) instead of running on that spec.
    public var identity: String?
    public init(module: String, function: String, kwargs: JSONValue? = nil, bundle: String? = nil,
                timeout: Double? = nil, wait: Bool? = nil, identity: String? = nil) {
        self.module = module; self.function = function; self.kwargs = kwargs; self.bundle = bundle
        self.timeout = timeout; self.wait = wait; self.identity = identity
    }
}

/// Many inputs for one function, spread over the environment's replicas;
/// results come back in input order.
public struct BatchRequest: Codable, Sendable {
    public var module: String
    public var function: String
    public var inputs: [JSONValue]
    public var bundle: String?
    public var timeout: Double?
    /// As `TaskRequest.identity`.
    public var identity: String?
    public init(module: String, function: String, inputs: [JSONValue], bundle: String? = nil, timeout: Double? = nil,
                identity: String? = nil) {
        self.module = module; self.function = function; self.inputs = inputs; self.bundle = bundle; self.timeout = timeout
        self.identity = identity
    }
}

public struct TaskLogs: Codable, Sendable {
    public struct Entry: Codable, Sendable {
        public var stream: String
        public var text: String
        public init(stream: String, text: String) { self.stream = stream; self.text = text }
    }
    public var id: String
    public var entries: [Entry]
    public var truncated: Bool
    public init(id: String, entries: [Entry], truncated: Bool) {
        self.id = id; self.entries = entries; self.truncated = truncated
    }
}

public enum TaskState: String, Codable, Sendable {
    case queued, running, succeeded, failed, cancelled, lost

    public var isFinal: Bool { self != .queued && self != .running }
}

/// What the API shows of a task.
public struct TaskSnapshot: Codable, Sendable {
    public var id: String
    public var environment: String
    public var module: String
    public var function: String
    public var state: TaskState
    public var result: JSONValue?
    public var error: TaskError?
    public var replica: String?
    public var pid: Int32?
    /// Microseconds spent queued, and running (dispatch to result).
    public var queuedMicros: Int64?
    public var runMicros: Int64?
    /// The worker's own measure of the call.
    public var workerMicros: Int64?
    public var coldStart: Bool?
    /// For the first task of a new replica: where its start went, in
    /// microseconds (dirs, cgroup, plan, clone, mounts, pivot_root,
    /// caps_seccomp, execve, worker_ready); `runMicros` is the task itself.
    public var coldPhases: [String: Int64]?

    public init(id: String, environment: String, module: String, function: String, state: TaskState,
                result: JSONValue?, error: TaskError?, replica: String?, pid: Int32?, queuedMicros: Int64?,
                runMicros: Int64?, workerMicros: Int64?, coldStart: Bool?, coldPhases: [String: Int64]? = nil) {
        self.id = id; self.environment = environment; self.module = module; self.function = function
        self.state = state; self.result = result; self.error = error; self.replica = replica; self.pid = pid
        self.queuedMicros = queuedMicros; self.runMicros = runMicros; self.workerMicros = workerMicros
        self.coldStart = coldStart; self.coldPhases = coldPhases
    }
}


/// How a task failed, as the caller sees it.
public struct TaskError: Codable, Sendable, Equatable {
    public var type: String
    public var module: String?
    public var message: String
    public var traceback: String?

    public init(type: String, module: String? = nil, message: String, traceback: String? = nil) {
        self.type = type; self.module = module; self.message = message; self.traceback = traceback
    }
}

public struct ReplicaStatus: Codable, Sendable {
    public var name: String
    public var state: String
    public var pid: Int32?
    public var tasksRun: Int
    public var idleSeconds: Double
    public var ttlLeftSeconds: Double?
    public var python: String?
    /// Tasks running in it now, when it runs several at once (`concurrency`).
    public var running: Int?
    /// The GPUs it holds (`nvidia.com/gpu=0`, …), when it holds any.
    public var gpus: [String]?

    public init(name: String, state: String, pid: Int32?, tasksRun: Int, idleSeconds: Double,
                ttlLeftSeconds: Double?, python: String?) {
        self.name = name; self.state = state; self.pid = pid; self.tasksRun = tasksRun
        self.idleSeconds = idleSeconds; self.ttlLeftSeconds = ttlLeftSeconds; self.python = python
    }
}

public struct EnvironmentStatus: Codable, Sendable {
    public var name: String
    public var identity: String
    public var image: String
    public var replicaCount: Int
    public var ttlSeconds: Double
    public var queued: Int
    public var replicas: [ReplicaStatus]
    public var lastError: String?
    /// min, max, current and the last scale decision.
    public var scaling: ScalingStatus?

    public init(name: String, identity: String, image: String, replicaCount: Int, ttlSeconds: Double, queued: Int,
                replicas: [ReplicaStatus], lastError: String?) {
        self.name = name; self.identity = identity; self.image = image; self.replicaCount = replicaCount
        self.ttlSeconds = ttlSeconds; self.queued = queued; self.replicas = replicas; self.lastError = lastError
    }
}


/// An environment's scale: its bounds, where it is, and its last decision.
public struct ScalingStatus: Codable, Sendable, Equatable {
    public var min: Int
    public var max: Int
    /// Replicas running (ready or busy).
    public var current: Int
    public var starting: Int
    /// Tasks one replica runs at once.
    public var concurrency: Int
    public var prewarm: Bool
    public var scaledownTTLSeconds: Double
    public var lastDecision: ScaleDecision?

    public init(min: Int, max: Int, current: Int, starting: Int, concurrency: Int, prewarm: Bool,
                scaledownTTLSeconds: Double, lastDecision: ScaleDecision?) {
        self.min = min; self.max = max; self.current = current; self.starting = starting
        self.concurrency = concurrency; self.prewarm = prewarm; self.scaledownTTLSeconds = scaledownTTLSeconds
        self.lastDecision = lastDecision
    }
}

/// One scale decision: replicas before and after, and why.
public struct ScaleDecision: Codable, Sendable, Equatable {
    public enum Direction: String, Codable, Sendable {
        case up, down
    }
    public var direction: Direction
    public var from: Int
    public var to: Int
    public var reason: String
    /// Unix seconds.
    public var at: Double

    public init(direction: Direction, from: Int, to: Int, reason: String, at: Double) {
        self.direction = direction; self.from = from; self.to = to; self.reason = reason; self.at = at
    }
}

/// `GET /v1/devices`: the CDI devices this host offers, and the spec files
/// that could not be read.
public struct DevicesStatus: Codable, Sendable, Equatable {
    public struct Device: Codable, Sendable, Equatable {
        public var name: String
        public var file: String
        public var nodes: [String]
        public var env: [String]
        public var mounts: [String]
        public var hooks: [String]
        public init(name: String, file: String, nodes: [String], env: [String], mounts: [String], hooks: [String]) {
            self.name = name; self.file = file; self.nodes = nodes; self.env = env; self.mounts = mounts; self.hooks = hooks
        }
    }
    public var dirs: [String]
    public var devices: [Device]
    public var errors: [String]
    public init(dirs: [String], devices: [Device], errors: [String]) {
        self.dirs = dirs; self.devices = devices; self.errors = errors
    }
}

/// `GET /v1/spares`: the pre-started replicas the daemon keeps.
public struct SparesStatus: Codable, Sendable, Equatable {
    public struct KeyStatus: Codable, Sendable, Equatable {
        public var image: String
        public var network: String
        public var ready: Int
        public var starting: Int
        public var replicas: [String]
        public var lastError: String?
        /// Named by `hearthd --spare-image`: kept without TTL or eviction.
        public var pinned: Bool
        /// Modules these spares imported before `ready`; nil: none.
        public var preload: [String]?
        public init(image: String, network: String, ready: Int, starting: Int, replicas: [String], lastError: String?,
                    pinned: Bool = false, preload: [String]? = nil) {
            self.image = image; self.network = network; self.ready = ready; self.starting = starting
            self.replicas = replicas; self.lastError = lastError; self.pinned = pinned; self.preload = preload
        }
    }
    public var enabled: Bool
    public var perKey: Int
    public var ttlSeconds: Int
    public var keys: [KeyStatus]
    /// Spares environments have taken since the daemon started.
    public var adopted: Int
    public init(enabled: Bool, perKey: Int, ttlSeconds: Int, keys: [KeyStatus], adopted: Int) {
        self.enabled = enabled; self.perKey = perKey; self.ttlSeconds = ttlSeconds; self.keys = keys; self.adopted = adopted
    }
}
