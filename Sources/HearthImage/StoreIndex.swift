import Foundation
import HearthCore
import HearthOS

/// `images.json`: every image by name, and what is known about each cached
/// layer. Written whole, atomically (temp + fsync + rename), under the
/// store's lock.
struct StoreIndex: Codable, Sendable, Equatable {
    static let currentVersion = 1

    var version = StoreIndex.currentVersion
    var images: [String: ImageRecord] = [:]
    /// Keyed by diff ID hex.
    var layers: [String: LayerRecord] = [:]

    struct LayerRecord: Codable, Sendable, Equatable {
        /// Bytes of regular file content in the unpacked layer.
        var size: Int64
    }

    static func load(_ path: String) throws -> StoreIndex {
        guard let bytes = try FS.readFile(path, limit: 256 << 20) else { return StoreIndex() }
        let index: StoreIndex
        do {
            index = try JSONDecoder().decode(StoreIndex.self, from: Data(bytes))
        } catch {
            throw HearthError(.internal, "\(path) is corrupt (\(error)); move it away and re-import the images")
        }
        guard index.version == currentVersion else {
            throw HearthError(.internal, "\(path) has version \(index.version); this hearthd understands version \(currentVersion)")
        }
        return index
    }

    func save(_ path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data: Data
        do {
            data = try encoder.encode(self)
        } catch {
            throw HearthError(.internal, "encoding \(path): \(error)")
        }
        try FS.writeAtomically(Array(data), to: path)
    }

    /// Diff IDs (hex) used by at least one image.
    var referencedLayers: Set<String> {
        Set(images.values.flatMap { $0.diffIDs.map { String($0.dropFirst("sha256:".count)) } })
    }

    func summary(_ record: ImageRecord) -> ImageSummary {
        let size = record.diffIDs.reduce(Int64(0)) { total, diffID in
            total + (layers[String(diffID.dropFirst("sha256:".count))]?.size ?? 0)
        }
        return ImageSummary(name: record.name, id: record.id, layers: record.diffIDs.count, size: size,
                            created: record.created)
    }
}

/// One imported image.
struct ImageRecord: Codable, Sendable, Equatable {
    var name: String
    /// Config digest, `sha256:…`.
    var id: String
    /// Nil for legacy `docker save` archives, which have no manifest.
    var manifestDigest: String?
    /// `sha256:…`, bottom layer first.
    var diffIDs: [String]
    var created: String?
    var imported: String
    var os: String?
    var architecture: String?
    var env: [String]
    var entrypoint: [String]
    var cmd: [String]
    var workingDir: String
    var user: String
}
