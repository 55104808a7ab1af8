

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
