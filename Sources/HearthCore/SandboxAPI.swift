

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
