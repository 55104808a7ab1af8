/// API types of registry pulls and logins.

/// `POST /v1/images/pull`.
public struct ImagePullRequest: Codable, Sendable {
    /// `[HOST[:PORT]/]NAME[:TAG][@sha256:…]`, as Docker reads it.
    public var reference: String
    /// NAME[:TAG] to store it under instead of the reference's own name.
    public var name: String?
    public init(reference: String, name: String? = nil) { self.reference = reference; self.name = name }
}

/// One line of the NDJSON stream answering a pull (and, wrapped in an
/// `ApplyEvent`, an apply that pulls).
public struct ImagePullEvent: Codable, Sendable {
    /// `resolved` (the manifest is known: `manifestDigest`, `layers`),
    /// `layer` (one layer's `state`, `bytes` of `size`), `done` (with
    /// `image`) or `error`.
    public var event: String
    /// The full reference being pulled (`docker.io/library/python:3.11`).
    public var reference: String?
    public var manifestDigest: String?
    public var layers: Int?
    /// The layer's blob digest.
    public var digest: String?
    /// The blob's size in bytes.
    public var size: Int64?
    /// Blob bytes downloaded so far.
    public var bytes: Int64?
    /// `cached` (already in the store: not fetched), `waiting`,
    /// `downloading`, `unpacking`, `done`.
    public var state: String?
    public var image: ImageSummary?
    public var error: APIErrorBody.Detail?

    public init(event: String, reference: String? = nil, manifestDigest: String? = nil, layers: Int? = nil,
                digest: String? = nil, size: Int64? = nil, bytes: Int64? = nil, state: String? = nil,
                image: ImageSummary? = nil, error: APIErrorBody.Detail? = nil) {
        self.event = event; self.reference = reference; self.manifestDigest = manifestDigest; self.layers = layers
        self.digest = digest; self.size = size; self.bytes = bytes; self.state = state; self.image = image
        self.error = error
    }
}

/// One line of `POST /v1/environments` when the client accepts
/// `application/x-ndjson`: `pull` events while missing images are pulled,
/// then `applied` with the results, or `error`.
public struct ApplyEvent: Codable, Sendable {
    public var event: String
    public var pull: ImagePullEvent?
    public var results: [ApplyResult]?
    public var error: APIErrorBody.Detail?
    public init(event: String, pull: ImagePullEvent? = nil, results: [ApplyResult]? = nil,
                error: APIErrorBody.Detail? = nil) {
        self.event = event; self.pull = pull; self.results = results; self.error = error
    }
}

/// `POST /v1/registries/login`: checked against the registry, then saved.
public struct RegistryLoginRequest: Codable, Sendable {
    public var registry: String
    public var username: String
    public var password: String
    public init(registry: String, username: String, password: String) {
        self.registry = registry; self.username = username; self.password = password
    }
}

/// `POST /v1/registries/logout`.
public struct RegistryLogoutRequest: Codable, Sendable {
    public var registry: String
    public init(registry: String) { self.registry = registry }
}

/// The answer to a login or logout: never the password.
public struct RegistryLoginResult: Codable, Sendable {
    public var registry: String
    public var username: String?
    public var message: String
    public init(registry: String, username: String?, message: String) {
        self.registry = registry; self.username = username; self.message = message
    }
}
