#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import Synchronization

/// A content descriptor from a registry document (OCI or Docker v2): what
/// to fetch, what it must hash to and how long it is.
public struct BlobDescriptor: Sendable, Equatable {
    public var mediaType: String?
    /// `sha256:<64 lowercase hex>`, checked when the document is decoded.
    public var digest: String
    public var size: Int64
    /// `os/architecture[/variant]` of an index entry; nil elsewhere.
    public var platform: String?
}

/// A manifest document a registry returned: an image index (a manifest
/// list) or an image manifest. Decoding checks the digests (strictly
/// `sha256:<hex>`), the sizes and the media types Hearth can unpack.
public enum RegistryDocument: Sendable {
    /// The index's manifests worth fetching for this host, best first:
    /// those for its platform, then nested indexes that declare none;
    /// `platforms` lists every platform the index offers (for messages);
    /// `count` is how many entries it has.
    case index(candidates: [BlobDescriptor], platforms: [String], count: Int)
    case manifest(config: BlobDescriptor, layers: [BlobDescriptor])

    /// The `Accept` list for manifest requests: OCI first, then Docker v2.
    public static let acceptedMediaTypes = [
        MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerManifestList, MediaType.dockerManifest,
    ]

    /// The platform images are picked for, `linux/amd64` on x86-64.
    public static var hostPlatform: String { Platform.host.description }

    /// Most bytes a manifest or index may have.
    public static let maxManifestBytes = ImagePlan.maxMetadataBytes
    /// Most bytes an image config may have.
    public static let maxConfigBytes = ImagePlan.maxConfigBytes

    /// Decodes `bytes`; `contentType` is the response's media type (ignored
    /// when it is not a manifest type, as some registries answer
    /// `application/json`), `what` names the document in errors.
    public static func decode(_ bytes: [UInt8], contentType: String?, what: String) throws -> RegistryDocument {
        let declared = contentType.map { $0.split(separator: ";").first.map(String.init) ?? $0 }
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .flatMap { acceptedMediaTypes.contains($0) ? $0 : nil }
        switch try ManifestDocument.decode(bytes, declared: declared, what: what) {
        case .index(let index):
            var platforms: [String] = []
            for d in index.manifests { if let p = d.platform { platforms.append(p.description) } }
            let host = Platform.host
            var candidates: [Descriptor]
            if index.manifests.count == 1 && index.manifests[0].platform == nil {
                candidates = index.manifests
            } else {
                candidates = index.manifests.filter { $0.platform?.matches(host) ?? false }
                    + index.manifests.filter { $0.platform == nil }
            }
            var seen = Set<String>()
            candidates = candidates.filter { seen.insert($0.digest).inserted }
            return .index(candidates: try candidates.map { try blob($0, what: "\(what): manifest") },
                          platforms: platforms, count: index.manifests.count)
        case .manifest(let manifest):
            if let type = manifest.config.mediaType, !MediaType.configs.contains(type) {
                throw HearthError(.invalidImage, "\(what): unsupported config media type \(type)")
            }
            let config = try blob(manifest.config, what: "\(what): config")
            let layers = try manifest.layers.enumerated().map { i, d in
                let b = try blob(d, what: "\(what): layer \(i + 1)")
                try MediaType.checkLayer(d.mediaType, digest: b.digest)
                return b
            }
            return .manifest(config: config, layers: layers)
        }
    }

    private static func blob(_ d: Descriptor, what: String) throws -> BlobDescriptor {
        let digest = try Digest(parsing: d.digest, what: "\(what) digest")
        guard let size = d.size else {
            throw HearthError(.invalidImage, "\(what) \(digest): the descriptor has no size")
        }
        guard size >= 0 else {
            throw HearthError(.invalidImage, "\(what) \(digest): size \(size) is negative")
        }
        return BlobDescriptor(mediaType: d.mediaType, digest: digest.description, size: size,
                              platform: d.platform?.description)
    }

    /// Whether `text` is `sha256:<64 lowercase hex>`.
    public static func isDigest(_ text: String) -> Bool {
        (try? Digest(parsing: text, what: "")) != nil
    }

    /// SHA-256 of `bytes` as `sha256:<hex>`.
    public static func digest(of bytes: [UInt8]) -> String {
        Digest.of(bytes).description
    }
}

/// An image being pulled: its config read and checked, its layers known
/// by diff ID and pinned against the store's garbage collection until it
/// is committed or abandoned. Layers are installed one by one from blob
/// files (`ImageStore.installLayer`); nothing is recorded before
/// `ImageStore.commitPull`.
public final class PendingImage: Sendable {
    public struct Layer: Sendable {
        public let blob: BlobDescriptor
        /// `sha256:…` of the uncompressed layer, from the config.
        public let diffID: String
        /// Already in the store when the pull began: nothing to fetch.
        public let cached: Bool
    }

    public let manifestDigest: String
    /// The config's digest: the image's id.
    public let configDigest: String
    public let layers: [Layer]
    let plan: [ImagePlan.Layer]
    let config: ImageConfigFile
    let hexes: [String]
    /// Bytes of file content per installed layer (diff ID hex).
    let unpacked = Mutex<[String: Int64]>([:])
    private let pinned = Mutex(true)

    init(manifestDigest: String, configDigest: String, layers: [Layer], plan: [ImagePlan.Layer],
         config: ImageConfigFile) {
        self.manifestDigest = manifestDigest
        self.configDigest = configDigest
        self.layers = layers
        self.plan = plan
        self.config = config
        hexes = plan.map(\.diffID.hex)
    }

    /// True once: the caller then unpins the layers.
    func takePins() -> Bool {
        pinned.withLock { held in
            defer { held = false }
            return held
        }
    }
}

extension ImageStore {
    /// Starts installing a pulled image: checks the config against its
    /// descriptor (digest, size), its platform, and its diff IDs against
    /// the manifest's layers; pins the layers. End with `commitPull` or
    /// `abandonPull`.
    public func preparePull(manifestDigest: String, config bytes: [UInt8], configDescriptor: BlobDescriptor,
                            layers: [BlobDescriptor]) throws -> PendingImage {
        let configDigest = try Digest(parsing: configDescriptor.digest, what: "image config digest")
        guard Int64(bytes.count) == configDescriptor.size else {
            throw HearthError(.invalidImage, "image config \(configDigest): size mismatch: descriptor says \(configDescriptor.size) bytes, the registry sent \(bytes.count)")
        }
        let actual = Digest.of(bytes)
        guard actual == configDigest else {
            throw HearthError(.invalidImage, "image config \(configDigest): digest mismatch: content hashes to \(actual)")
        }
        let config: ImageConfigFile = try decodeJSON(bytes, what: "image config \(configDigest)")
        try ImagePlan.checkPlatform(config, what: "image config \(configDigest) (manifest \(manifestDigest))")
        let diffIDs = try ImagePlan.diffIDs(config, configDigest: configDigest)
        guard diffIDs.count == layers.count else {
            throw HearthError(.invalidImage, "manifest \(manifestDigest) has \(layers.count) layers but its config lists \(diffIDs.count) diff IDs")
        }
        var plan: [ImagePlan.Layer] = []
        var pending: [PendingImage.Layer] = []
        for (i, blob) in layers.enumerated() {
            let digest = try Digest(parsing: blob.digest, what: "manifest \(manifestDigest): layer \(i + 1) digest")
            try MediaType.checkLayer(blob.mediaType, digest: digest.description)
            plan.append(ImagePlan.Layer(blobPath: "", blobDigest: digest, size: blob.size, diffID: diffIDs[i],
                                        mediaType: blob.mediaType))
        }
        // Pinned before the cache is looked at: a layer found there cannot
        // be collected before the commit.
        let hexes = plan.map(\.diffID.hex)
        pin(hexes)
        do {
            for (i, layer) in plan.enumerated() {
                pending.append(PendingImage.Layer(blob: layers[i], diffID: layer.diffID.description,
                                                  cached: try cache.contains(layer.diffID)))
            }
        } catch {
            unpin(hexes)
            throw error
        }
        return PendingImage(manifestDigest: manifestDigest, configDigest: configDigest.description,
                            layers: pending, plan: plan, config: config)
    }

    /// Unpacks layer `index` of `image` from `blobFile` (a verified
    /// download in the scratch directory) into the cache, checking the
    /// blob's digest and size and the diff ID once more as it goes, and
    /// removes `blobFile` once it is unpacked (before the sync that makes
    /// the layer durable: its pages need never reach the disk). A layer
    /// that is in the cache by now (another pull, another import) is kept.
    /// `onRead` gets the blob bytes read so far.
    public func installLayer(_ image: PendingImage, at index: Int, blobFile: String,
                             onRead: @escaping (Int64) -> Void = { _ in }) throws {
        let layer = image.plan[index]
        if try cache.contains(layer.diffID) { return }
        let bytes = try cache.install(layer, blob: { try FileSource.open(blobFile) },
                                      tempName: tempName("layer-\(layer.diffID.hex.prefix(12))"),
                                      beforeSync: { unlink(blobFile) }, onRead: onRead)
        image.unpacked.withLock { $0[layer.diffID.hex] = bytes }
    }

    /// Records `image` under `name` (normalized; `NAME@sha256:…` allowed)
    /// once every layer is in the cache, replacing an image of that name;
    /// releases the pins. Nothing is recorded if a layer is missing.
    public func commitPull(_ image: PendingImage, name: String) throws -> ImageSummary {
        let key = try ImageName.normalize(name, allowDigest: true)
        for layer in image.plan where try !cache.contains(layer.diffID) {
            throw HearthError(.internal, "image \(key): layer \(layer.diffID) is not installed; the pull did not finish")
        }
        let unpacked = image.unpacked.withLock { $0 }
        defer { if image.takePins() { unpin(image.hexes) } }
        return try record(name: key, config: image.config, configDigest: image.configDigest,
                          manifestDigest: image.manifestDigest, layers: image.plan, unpacked: unpacked)
    }

    /// Gives up on `image`: releases its pins and removes the layers it
    /// installed that no image uses, so a failed pull leaves nothing.
    public func abandonPull(_ image: PendingImage) {
        guard image.takePins() else { return }
        unpin(image.hexes)
        let garbage = (try? withIndex { index, state in try collectGarbage(&index, &state) }) ?? []
        removeGarbage(garbage)
    }

    /// A new path in the scratch directory (`<pid>-<n>-purpose`), removed
    /// at the next start if this process dies before it does.
    public func scratchPath(_ purpose: String) -> String {
        "\(cache.scratch)/\(tempName(purpose))"
    }
}
