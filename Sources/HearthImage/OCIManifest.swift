import Foundation
import HearthCore

/// Media types Hearth understands (OCI and their Docker v2 equivalents).
enum MediaType {
    static let ociIndex = "application/vnd.oci.image.index.v1+json"
    static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    static let ociConfig = "application/vnd.oci.image.config.v1+json"
    static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    static let dockerConfig = "application/vnd.docker.container.image.v1+json"

    static let indexes: Set<String> = [ociIndex, dockerManifestList]
    static let manifests: Set<String> = [ociManifest, dockerManifest]
    static let configs: Set<String> = [ociConfig, dockerConfig]

    /// Layer media types, with whether they are gzip-compressed. The
    /// content is sniffed anyway; this only refuses what cannot be read.
    static let layers: [String: Bool] = [
        "application/vnd.oci.image.layer.v1.tar": false,
        "application/vnd.oci.image.layer.v1.tar+gzip": true,
        "application/vnd.oci.image.layer.nondistributable.v1.tar": false,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": true,
        "application/vnd.docker.image.rootfs.diff.tar": false,
        "application/vnd.docker.image.rootfs.diff.tar.gzip": true,
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": true,
    ]

    static func checkLayer(_ mediaType: String?, digest: String) throws {
        guard let mediaType else { return }  // docker archives: sniffed
        if layers[mediaType] != nil { return }
        if mediaType.hasSuffix("+zstd") || mediaType.hasSuffix(".zstd") {
            throw HearthError(.invalidImage, "layer \(digest): unsupported media type \(mediaType) (zstd layers are not supported; re-export the image with gzip or uncompressed layers)")
        }
        throw HearthError(.invalidImage, "layer \(digest): unsupported media type \(mediaType)")
    }
}

struct Platform: Codable, Equatable, Sendable {
    var architecture: String?
    var os: String?
    var variant: String?

    var description: String {
        [os ?? "?", architecture ?? "?", variant].compactMap { $0 }.joined(separator: "/")
    }

    /// The platform this daemon runs images for, in OCI (GOARCH) terms.
    static let host: Platform = {
        #if arch(x86_64)
        return Platform(architecture: "amd64", os: "linux", variant: nil)
        #elseif arch(arm64)
        return Platform(architecture: "arm64", os: "linux", variant: nil)
        #else
        return Platform(architecture: "unknown", os: "linux", variant: nil)
        #endif
    }()

    func matches(_ wanted: Platform) -> Bool {
        os == wanted.os && architecture == wanted.architecture
    }
}

struct Descriptor: Codable, Sendable {
    var mediaType: String?
    var digest: String
    var size: Int64?
    var platform: Platform?
    var annotations: [String: String]?

    static let refNameAnnotation = "org.opencontainers.image.ref.name"
    /// Docker 25+ `docker save` (containerd store) names images here; its
    /// ref.name holds only the tag.
    static let containerdNameAnnotation = "io.containerd.image.name"
}

struct OCIIndex: Codable, Sendable {
    var schemaVersion: Int?
    var mediaType: String?
    var manifests: [Descriptor]
}

struct OCIManifest: Codable, Sendable {
    var schemaVersion: Int?
    var mediaType: String?
    var config: Descriptor
    var layers: [Descriptor]
}

/// What a document's own fields say it is, for descriptors that carry no
/// media type.
private struct DocumentProbe: Decodable {
    var schemaVersion: Int?
    var mediaType: String?
    var manifests: [Descriptor]?
    var layers: [Descriptor]?
    var config: Descriptor?
}

enum ManifestDocument {
    case index(OCIIndex)
    case manifest(OCIManifest)

    /// Decodes an index or a manifest, whichever `data` is. `declared` is
    /// the media type its descriptor gave, if any.
    static func decode(_ data: [UInt8], declared: String?, what: String) throws -> ManifestDocument {
        let probe: DocumentProbe = try decodeJSON(data, what: what)
        if probe.schemaVersion == 1 {
            throw HearthError(.invalidImage, "\(what): Docker schema 1 manifests are not supported")
        }
        let type = declared ?? probe.mediaType
        if let declared, let own = probe.mediaType, declared != own {
            throw HearthError(.invalidImage, "\(what): descriptor says \(declared) but the document says \(own)")
        }
        if let type {
            if MediaType.indexes.contains(type) { return .index(try decodeJSON(data, what: what)) }
            if MediaType.manifests.contains(type) { return .manifest(try decodeJSON(data, what: what)) }
            throw HearthError(.invalidImage, "\(what): unsupported media type \(type)")
        }
        if probe.manifests != nil { return .index(try decodeJSON(data, what: what)) }
        if probe.layers != nil && probe.config != nil { return .manifest(try decodeJSON(data, what: what)) }
        throw HearthError(.invalidImage, "\(what): neither an image index nor an image manifest")
    }
}

/// The image configuration: what a replica runs and the layers' diff IDs.
struct ImageConfigFile: Codable, Sendable {
    struct Container: Codable, Sendable {
        var Env: [String]?
        var Entrypoint: [String]?
        var Cmd: [String]?
        var WorkingDir: String?
        var User: String?
    }

    struct RootFS: Codable, Sendable {
        var type: String
        var diff_ids: [String]
    }

    var created: String?
    var architecture: String?
    var os: String?
    var variant: String?
    var config: Container?
    var rootfs: RootFS
}

/// One element of a `docker save` manifest.json.
struct DockerArchiveManifest: Codable, Sendable {
    var Config: String
    var RepoTags: [String]?
    var Layers: [String]
}

func decodeJSON<T: Decodable>(_ data: [UInt8], what: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: Data(data))
    } catch let error as DecodingError {
        throw HearthError(.invalidImage, "\(what): invalid JSON: \(describe(error))")
    } catch {
        throw HearthError(.invalidImage, "\(what): invalid JSON: \(error)")
    }
}

/// DecodingError descriptions are long; this names the field and the problem.
private func describe(_ error: DecodingError) -> String {
    func path(_ context: DecodingError.Context) -> String {
        let p = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        return p.isEmpty ? "document" : p
    }
    switch error {
    case .keyNotFound(let key, let context):
        return "\(path(context)): missing field \"\(key.stringValue)\""
    case .typeMismatch(_, let context), .valueNotFound(_, let context):
        return "\(path(context)): \(context.debugDescription)"
    case .dataCorrupted(let context):
        return "\(path(context)): \(context.debugDescription)"
    @unknown default:
        return String(describing: error)
    }
}
