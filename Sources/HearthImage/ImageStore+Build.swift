#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore

/// What an image build needs to know of an image: its record, every layer
/// in order (duplicates kept), and the config a derived image inherits.
public struct ImageDetails: Sendable, Equatable {
    public var name: String
    /// Config digest, `sha256:…`.
    public var id: String
    /// `sha256:…`, bottom layer first.
    public var diffIDs: [String]
    public var env: [String]
    public var entrypoint: [String]
    public var cmd: [String]
    public var workingDir: String
    public var user: String
    public var os: String?
    public var architecture: String?

    /// This machine's os and architecture, as image configs spell them.
    public static var hostPlatform: (os: String?, architecture: String?) { (Platform.host.os, Platform.host.architecture) }

    public init(name: String, id: String, diffIDs: [String], env: [String], entrypoint: [String], cmd: [String],
                workingDir: String, user: String, os: String?, architecture: String?) {
        self.name = name; self.id = id; self.diffIDs = diffIDs; self.env = env; self.entrypoint = entrypoint
        self.cmd = cmd; self.workingDir = workingDir; self.user = user; self.os = os; self.architecture = architecture
    }
}

/// Entry points for `hearth image build` (HearthBuild): a layer comes in as
/// an uncompressed tar written by the daemon and is unpacked and verified
/// exactly as an imported one; the built image is recorded with its parent's
/// layers and config plus the new layers and env.
extension ImageStore {
    /// The record of the image named `ref` (or with config digest `ref`).
    public func details(_ ref: String) throws -> ImageDetails {
        let record: ImageRecord? = try withIndex { index, _ in
            if ref.hasPrefix("sha256:") {
                return index.images.values.filter { $0.id == ref }.min { $0.name < $1.name }
            }
            guard let key = try? ImageName.normalize(ref) else { return nil }
            return index.images[key]
        }
        guard let record else {
            let key = (try? ImageName.normalize(ref)) ?? ref
            throw HearthError(.imageNotFound, "image \"\(key)\" not found; import it with `hearth image import PATH --name \(key)`")
        }
        return ImageDetails(name: record.name, id: record.id, diffIDs: record.diffIDs, env: record.env,
                            entrypoint: record.entrypoint, cmd: record.cmd, workingDir: record.workingDir,
                            user: record.user, os: record.os, architecture: record.architecture)
    }

    /// Whether the layer `diffID` (`sha256:…`) is unpacked in the store.
    public func hasLayer(_ diffID: String) throws -> Bool {
        try cache.contains(Digest(parsing: diffID, what: "layer"))
    }

    /// The unpacked layers' directories, bottom first; a layer listed twice
    /// is kept at its topmost position only (overlayfs refuses the same
    /// directory twice, and the merged view is the same).
    public func layerPaths(_ diffIDs: [String]) throws -> [String] {
        var seen = Set<String>()
        var paths: [String] = []
        for diffID in diffIDs.reversed() where seen.insert(diffID).inserted {
            let digest = try Digest(parsing: diffID, what: "layer")
            guard try cache.contains(digest) else {
                throw HearthError(.invalidImage, "layer \(diffID) is missing from \(cache.directory)")
            }
            paths.append(cache.path(digest))
        }
        return paths.reversed()
    }

    /// Keeps these layers (`sha256:…`) from garbage collection until
    /// `unpinLayers` with the same list: a build relies on its base image's
    /// layers and on the layers it made before its image is recorded.
    public func pinLayers(_ diffIDs: [String]) {
        pin(diffIDs.map(Self.hex))
    }

    public func unpinLayers(_ diffIDs: [String]) {
        unpin(diffIDs.map(Self.hex))
    }

    /// Unpacks the uncompressed layer tar at `path` into the store, verified
    /// against `diffID` as an import verifies a layer (same unpacker, same
    /// refusals), unless the store has it already. Pin `diffID` first:
    /// until an image uses the layer, garbage collection would take it.
    /// Returns the bytes of file content.
    public func installLayer(tarAt path: String, diffID: String) throws -> Int64 {
        let digest = try Digest(parsing: diffID, what: "layer")
        if try cache.contains(digest) { return try cache.size(digest) }
        let layer = ImagePlan.Layer(blobPath: path, blobDigest: nil, size: nil, diffID: digest, mediaType: nil)
        return try cache.install(layer, blob: { try FileSource.open(path) },
                                 tempName: tempName("layer-\(digest.hex.prefix(12))"), onRead: { _ in })
    }

    /// Records the image `name` (replacing one of that name): `base`'s
    /// layers and config, then `layers` on top, with `env` as its Env. The
    /// config digest (the image's id) depends only on these, so the same
    /// build gives the same id. `sizes` are the new layers' byte counts
    /// where known. Layers no image uses any more are collected.
    public func recordBuiltImage(name: String, base: ImageDetails, layers: [String], env: [String],
                                 sizes: [String: Int64] = [:]) throws -> ImageSummary {
        let imageName = try ImageName.normalize(name)
        let diffIDs = base.diffIDs + layers
        for diffID in diffIDs {
            guard try hasLayer(diffID) else {
                throw HearthError(.internal, "image \(imageName): layer \(diffID) is missing from \(cache.directory)")
            }
        }
        let config = ImageConfigFile(
            created: nil, architecture: base.architecture ?? Platform.host.architecture, os: base.os ?? Platform.host.os,
            variant: nil,
            config: .init(Env: env, Entrypoint: base.entrypoint.isEmpty ? nil : base.entrypoint,
                          Cmd: base.cmd.isEmpty ? nil : base.cmd,
                          WorkingDir: base.workingDir.isEmpty ? nil : base.workingDir,
                          User: base.user.isEmpty ? nil : base.user),
            rootfs: .init(type: "layers", diff_ids: diffIDs))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let configBytes: Data
        do { configBytes = try encoder.encode(config) } catch {
            throw HearthError(.internal, "encoding the config of image \(imageName): \(error)")
        }
        let record = ImageRecord(
            name: imageName, id: Digest.of(Array(configBytes)).description, manifestDigest: nil,
            diffIDs: diffIDs, created: nil, imported: Date().formatted(.iso8601),
            os: config.os, architecture: config.architecture,
            env: env, entrypoint: base.entrypoint, cmd: base.cmd, workingDir: base.workingDir, user: base.user)
        let (summary, garbage) = try withIndex { index, state -> (ImageSummary, [String]) in
            for diffID in diffIDs {
                let hex = Self.hex(diffID)
                if index.layers[hex] == nil {
                    index.layers[hex] = StoreIndex.LayerRecord(
                        size: try sizes[diffID] ?? cache.size(Digest(parsing: diffID, what: "layer")))
                }
            }
            if var existing = index.images[imageName] {
                // The same image again: keep its record (and import time).
                existing.imported = record.imported
                if existing == record { return (index.summary(index.images[imageName] ?? record), []) }
            }
            index.images[imageName] = record
            let garbage = try collectGarbage(&index, &state)
            return (index.summary(record), garbage)
        }
        removeGarbage(garbage)
        return summary
    }

    /// Removes every layer no image uses and nothing pins: what a failed
    /// build installed.
    public func removeUnusedLayers() throws {
        let garbage = try withIndex { index, state in try collectGarbage(&index, &state) }
        removeGarbage(garbage)
    }

    /// `sha256:<hex>` → `<hex>`.
    static func hex(_ diffID: String) -> String {
        diffID.hasPrefix("sha256:") ? String(diffID.dropFirst("sha256:".count)) : diffID
    }
}
