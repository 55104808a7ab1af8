/// Types exchanged between the CLI and hearthd over the Unix socket.

public enum HearthDefaults {
    public static let socketPath = "/run/hearth/hearthd.sock"
    public static let stateRoot = "/var/lib/hearth"
    public static let image = "hearth/python:3.11"
    public static let pidsMax: Int64 = 4096
    public static let apiVersion = "v1"
}

/// Error body of every non-2xx response: `{"error": {"code": ..., "message": ...}}`.
public struct APIErrorBody: Codable, Sendable {
    public struct Detail: Codable, Sendable {
        public var code: String
        public var message: String
        public init(code: String, message: String) { self.code = code; self.message = message }
    }
    public var error: Detail
    public init(code: String, message: String) { error = Detail(code: code, message: message) }
}

public struct VersionInfo: Codable, Sendable {
    public var version: String
    public var api: String
    public var cgroup: String
    public var pid: Int32
    public init(version: String, api: String, cgroup: String, pid: Int32) {
        self.version = version; self.api = api; self.cgroup = cgroup; self.pid = pid
    }
}

public struct ImageSummary: Codable, Sendable, Equatable {
    public var name: String
    /// Digest of the image config (`sha256:...`).
    public var id: String
    public var layers: Int
    /// Bytes of the unpacked layers.
    public var size: Int64
    public var created: String?
    public init(name: String, id: String, layers: Int, size: Int64, created: String?) {
        self.name = name; self.id = id; self.layers = layers; self.size = size; self.created = created
    }
}

public struct ImageImportRequest: Codable, Sendable {
    /// Absolute path on the daemon's machine: an OCI layout directory, an
    /// OCI archive or a `docker save` tarball.
    public var path: String
    public var name: String?
    public init(path: String, name: String?) { self.path = path; self.name = name }
}

/// One line of the NDJSON stream answering an import.
public struct ImageImportEvent: Codable, Sendable {
    public var event: String          // "progress" | "done" | "error"
    public var layer: Int?
    public var layers: Int?
    public var bytes: Int64?
    public var totalBytes: Int64?
    public var image: ImageSummary?
    public var error: APIErrorBody.Detail?
    public init(event: String, layer: Int? = nil, layers: Int? = nil, bytes: Int64? = nil, totalBytes: Int64? = nil,
                image: ImageSummary? = nil, error: APIErrorBody.Detail? = nil) {
        self.event = event; self.layer = layer; self.layers = layers; self.bytes = bytes
        self.totalBytes = totalBytes; self.image = image; self.error = error
    }
}

public struct SandboxRequest: Codable, Sendable {
    public var image: String?
    public var memory: String?
    public var cpus: String?
    public var pids: Int64?
    public var network: String?        // "none" | "egress" | "host"
    public var env: [String]?          // K=V
    public var seccomp: String?        // "default" | "unconfined" | "profile"
    /// OCI `linux.seccomp` JSON when seccomp == "profile" (the CLI reads the file).
    public var seccompProfile: String?
    public var workdir: String?
    /// A user namespace of its own; nil: the daemon's default (--userns).
    public var userNamespace: Bool?
    /// Bytes the command may write to the replica's writable layer (a
    /// memory quantity); over it the replica is killed.
    public var ephemeralStorage: String?
    public var argv: [String]
    public init(image: String? = nil, memory: String? = nil, cpus: String? = nil, pids: Int64? = nil,
                network: String? = nil, userNamespace: Bool? = nil, env: [String]? = nil, seccomp: String? = nil,
                seccompProfile: String? = nil, workdir: String? = nil, ephemeralStorage: String? = nil,
                argv: [String]) {
        self.image = image; self.memory = memory; self.cpus = cpus; self.pids = pids; self.network = network
        self.userNamespace = userNamespace
        self.env = env; self.seccomp = seccomp; self.seccompProfile = seccompProfile; self.workdir = workdir
        self.ephemeralStorage = ephemeralStorage; self.argv = argv
    }
}

/// The sandbox response is a stream of frames: 1 byte kind, 4 bytes
/// big-endian length, payload. stdout and stderr payloads are raw bytes;
/// event payloads are one JSON `SandboxEvent`.
public enum StreamFrameKind: UInt8, Sendable {
    case stdout = 1
    case stderr = 2
    case event = 3
}

public struct SandboxEvent: Codable, Sendable {
    public var event: String           // "started" | "exit" | "error"
    public var replica: String?
    /// Microseconds from request to the command's execve.
    public var startMicros: Int64?
    public var exitCode: Int32?
    public var signal: Int32?
    public var oomKilled: Bool?
    public var memoryLimit: String?
    /// The daemon killed the replica for writing more than its ephemeral storage limit.
    public var ephemeralStorageExceeded: Bool?
    public var message: String?
    public var error: APIErrorBody.Detail?
    public init(event: String, replica: String? = nil, startMicros: Int64? = nil, exitCode: Int32? = nil,
                signal: Int32? = nil, oomKilled: Bool? = nil, memoryLimit: String? = nil, message: String? = nil,
                error: APIErrorBody.Detail? = nil) {
        self.event = event; self.replica = replica; self.startMicros = startMicros; self.exitCode = exitCode
        self.signal = signal; self.oomKilled = oomKilled; self.memoryLimit = memoryLimit; self.message = message
        self.error = error
    }
}
