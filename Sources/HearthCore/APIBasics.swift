

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
    /// When the daemon (this image of its process) started, seconds since
    /// the epoch: an upgrade keeps the pid and changes this.
    public var started: Double?
    /// Who the daemon takes the caller to be: a TLS client's certificate
    /// subject (`CN=alice,O=hearth`), or a local peer's uid and pid.
    public var caller: String?
    public init(version: String, api: String, cgroup: String, pid: Int32, started: Double? = nil, caller: String? = nil) {
        self.version = version; self.api = api; self.cgroup = cgroup; self.pid = pid; self.started = started
        self.caller = caller
    }
}
