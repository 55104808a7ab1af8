import HearthCore

/// Everything an import needs, read and verified from an input's metadata:
/// which layers to unpack, in order, and what they must hash to.
struct ImagePlan {
    struct Layer {
        /// Path of the blob inside the input.
        var blobPath: String
        /// The compressed blob's digest; nil for legacy `docker save`
        /// layers, which are verified by their diff ID alone.
        var blobDigest: Digest?
        var size: Int64?
        var diffID: Digest
        var mediaType: String?

        /// Names the layer in messages.
        var label: String { "layer \(blobDigest ?? diffID)" }
    }

    var manifestDigest: Digest?
    var configDigest: Digest
    var config: ImageConfigFile
    var layers: [Layer]
    /// Names the input gives the image, best first (already normalized).
    var names: [String]

    static let maxMetadataBytes = 4 << 20
    static let maxConfigBytes = 16 << 20

    /// Reads the input's metadata: an OCI layout (`index.json`), else a
    /// `docker save` archive (`manifest.json`). `wanted` (the --name) picks
    /// among several images in one input.
    static func load(_ input: ImageInput, wanted: String?) throws -> ImagePlan {
        if try input.contains("index.json") {
            return try loadOCI(input, wanted: wanted)
        }
        if try input.contains("manifest.json") {
            return try loadDocker(input, wanted: wanted)
        }
        throw HearthError(.invalidImage, "\(input.path) is not an OCI image layout, OCI archive or docker save tarball (it has no index.json or manifest.json)")
    }

    // MARK: OCI

    private static func loadOCI(_ input: ImageInput, wanted: String?) throws -> ImagePlan {
        if let layoutFile = try input.openIfPresent("oci-layout") {
            struct Layout: Decodable { var imageLayoutVersion: String }
            let bytes = try layoutFile.readAll(limit: 4096, what: "\(input.path): oci-layout")
            let layout: Layout = try decodeJSON(bytes, what: "\(input.path): oci-layout")
            guard layout.imageLayoutVersion.hasPrefix("1.") else {
                throw HearthError(.invalidImage, "\(input.path): unsupported OCI layout version \(layout.imageLayoutVersion)")
            }
        }
        let what = "\(input.path): index.json"
        let index: OCIIndex = try decodeJSON(
            try input.read("index.json", limit: maxMetadataBytes, what: "index.json"), what: what)

        var candidates = dedupe(index.manifests)
        guard !candidates.isEmpty else { throw HearthError(.invalidImage, "\(what) lists no images") }
        // A layout can hold several tagged images: --name picks one by its ref.name.
        if candidates.count > 1, let wanted {
            let matching = candidates.filter { refMatches($0, wanted) }
            if !matching.isEmpty { candidates = matching }
        }
        if candidates.count > 1 && candidates.allSatisfy({ $0.platform == nil }) {
            let refs = candidates.map { $0.annotations?[Descriptor.refNameAnnotation] ?? $0.digest }
            throw HearthError(.invalidImage, "\(what) lists \(candidates.count) images (\(refs.joined(separator: ", "))); pass --name with the one to import")
        }
        var seen: [String] = []
        guard let (chosen, manifestDigest, manifest) = try pick(candidates, input: input, depth: 0, platforms: &seen) else {
            let available = seen.isEmpty ? "none declared" : seen.joined(separator: ", ")
            throw HearthError(.invalidImage, "\(input.path) has no \(Platform.host.description) image; available platforms: \(available)")
        }

        // The descriptor picked at the top level carries the names.
        var names: [String] = []
        if let top = candidates.first(where: { $0.digest == chosen.digest }) ?? (candidates.count == 1 ? candidates.first : nil) {
            if let n = top.annotations?[Descriptor.containerdNameAnnotation], let name = ImageName.fromAnnotation(n) { names.append(name) }
            if let n = top.annotations?[Descriptor.refNameAnnotation], let name = ImageName.fromAnnotation(n) { names.append(name) }
        }

        if let type = manifest.config.mediaType, !MediaType.configs.contains(type) {
            throw HearthError(.invalidImage, "manifest \(manifestDigest): unsupported config media type \(type)")
        }
        let configDigest = try Digest(parsing: manifest.config.digest, what: "manifest \(manifestDigest): config digest")
        let configBytes = try readBlob(input, digest: configDigest, size: manifest.config.size,
                                       limit: maxConfigBytes, what: "image config")
        let config: ImageConfigFile = try decodeJSON(configBytes, what: "image config \(configDigest)")
        try checkPlatform(config, what: "image config \(configDigest)")
        let diffIDs = try diffIDs(config, configDigest: configDigest)
        guard diffIDs.count == manifest.layers.count else {
            throw HearthError(.invalidImage, "manifest \(manifestDigest) has \(manifest.layers.count) layers but its config lists \(diffIDs.count) diff IDs")
        }
        var layers: [Layer] = []
        for (i, descriptor) in manifest.layers.enumerated() {
            let digest = try Digest(parsing: descriptor.digest, what: "manifest \(manifestDigest): layer \(i + 1) digest")
            try MediaType.checkLayer(descriptor.mediaType, digest: digest.description)
            layers.append(Layer(blobPath: blobPath(digest), blobDigest: digest, size: descriptor.size,
                                diffID: diffIDs[i], mediaType: descriptor.mediaType))
        }

        // Docker 25+ archives are OCI layouts that also carry manifest.json,
        // whose RepoTags are the real names.
        if let docker = try input.openIfPresent("manifest.json") {
            let bytes = try docker.readAll(limit: maxMetadataBytes, what: "\(input.path): manifest.json")
            if let entries: [DockerArchiveManifest] = try? decodeJSON(bytes, what: "manifest.json"),
               let entry = entries.first(where: { ImageInput.normalize($0.Config) == blobPath(configDigest) }) {
                names.insert(contentsOf: (entry.RepoTags ?? []).compactMap { try? ImageName.normalize($0) }, at: 0)
            }
        }
        return ImagePlan(manifestDigest: manifestDigest, configDigest: configDigest, config: config,
                         layers: layers, names: names)
    }

    private static func dedupe(_ descriptors: [Descriptor]) -> [Descriptor] {
        var seen = Set<String>()
        return descriptors.filter { seen.insert($0.digest).inserted }
    }

    /// Whether a descriptor's annotations name `wanted`: as a full name, or
    /// by the tag alone (ref.name often holds only the tag).
    private static func refMatches(_ d: Descriptor, _ wanted: String) -> Bool {
        for key in [Descriptor.containerdNameAnnotation, Descriptor.refNameAnnotation] {
            guard let value = d.annotations?[key] else { continue }
            if value == wanted || (try? ImageName.normalize(value)) == wanted || ImageName.split(wanted).tag == value {
                return true
            }
        }
        return false
    }

    /// Follows indexes down to the manifest for the host platform. Returns
    /// nil when there is none; `platforms` collects what was offered.
    static func pick(_ descriptors: [Descriptor], input: ImageInput, depth: Int, platforms: inout [String])
        throws -> (Descriptor, Digest, OCIManifest)? {
        guard depth < 4 else { throw HearthError(.invalidImage, "\(input.path): image indexes nested more than 4 deep") }
        let host = Platform.host
        let ordered: [Descriptor]
        if descriptors.count == 1 && descriptors[0].platform == nil {
            ordered = descriptors
        } else {
            for d in descriptors {
                if let p = d.platform { platforms.append(p.description) }
            }
            // Matching platforms first, then nested indexes that declare none.
            ordered = descriptors.filter { $0.platform?.matches(host) ?? false }
                + descriptors.filter { $0.platform == nil }
        }
        for descriptor in ordered {
            let digest = try Digest(parsing: descriptor.digest, what: "\(input.path): manifest descriptor")
            let bytes = try readBlob(input, digest: digest, size: descriptor.size, limit: maxMetadataBytes,
                                     what: "manifest")
            switch try ManifestDocument.decode(bytes, declared: descriptor.mediaType, what: "manifest \(digest)") {
            case .manifest(let manifest):
                if descriptor.platform == nil && descriptors.count > 1 {
                    continue  // an unlabelled manifest among platform-labelled ones: not ours to guess
                }
                return (descriptor, digest, manifest)
            case .index(let index):
                if let found = try pick(index.manifests, input: input, depth: depth + 1, platforms: &platforms) {
                    return found
                }
            }
        }
        return nil
    }

    static func checkPlatform(_ config: ImageConfigFile, what: String) throws {
        let host = Platform.host
        if let os = config.os, os != host.os {
            throw HearthError(.invalidImage, "\(what) is for \(os)/\(config.architecture ?? "?"); this host runs \(host.description)")
        }
        if let arch = config.architecture, arch != host.architecture {
            throw HearthError(.invalidImage, "\(what) is for \(config.os ?? "?")/\(arch); this host runs \(host.description)")
        }
    }

    static func diffIDs(_ config: ImageConfigFile, configDigest: Digest) throws -> [Digest] {
        guard config.rootfs.type == "layers" else {
            throw HearthError(.invalidImage, "image config \(configDigest): rootfs.type is \"\(config.rootfs.type)\", expected \"layers\"")
        }
        return try config.rootfs.diff_ids.enumerated().map { i, text in
            try Digest(parsing: text, what: "image config \(configDigest): rootfs.diff_ids[\(i)]")
        }
    }

    static func blobPath(_ digest: Digest) -> String { "blobs/sha256/\(digest.hex)" }

    /// Reads a small blob and checks its size (when known) and digest.
    static func readBlob(_ input: ImageInput, digest: Digest, size: Int64?, limit: Int, what: String) throws -> [UInt8] {
        if let size, size < 0 || size > Int64(limit) {
            throw HearthError(.invalidImage, "\(what) \(digest): size \(size) is out of range (limit \(limit) bytes)")
        }
        let bytes = try input.read(blobPath(digest), limit: limit, what: "\(what) \(digest)")
        if let size, Int64(bytes.count) != size {
            throw HearthError(.invalidImage, "\(what) \(digest): size mismatch: descriptor says \(size) bytes, blob has \(bytes.count)")
        }
        let actual = Digest.of(bytes)
        guard actual == digest else {
            throw HearthError(.invalidImage, "\(what) \(digest): digest mismatch: content hashes to \(actual)")
        }
        return bytes
    }

    // MARK: docker save

    private static func loadDocker(_ input: ImageInput, wanted: String?) throws -> ImagePlan {
        let what = "\(input.path): manifest.json"
        let entries: [DockerArchiveManifest] = try decodeJSON(
            try input.read("manifest.json", limit: maxMetadataBytes, what: "manifest.json"), what: what)
        let entry: DockerArchiveManifest
        if entries.count == 1 {
            entry = entries[0]
        } else if let wanted, let match = entries.first(where: {
            ($0.RepoTags ?? []).contains { (try? ImageName.normalize($0)) == wanted }
        }) {
            entry = match
        } else if entries.isEmpty {
            throw HearthError(.invalidImage, "\(what) lists no images")
        } else {
            let tags = entries.map { ($0.RepoTags ?? ["<untagged>"]).joined(separator: " ") }
            throw HearthError(.invalidImage, "\(what) lists \(entries.count) images (\(tags.joined(separator: ", "))); pass --name with one of their tags")
        }

        let configBytes = try input.read(entry.Config, limit: maxConfigBytes, what: "image config")
        let configDigest = Digest.of(configBytes)
        // The config is named after its digest: `<hex>.json` (Docker < 25)
        // or `blobs/sha256/<hex>` (Docker 25+).
        if let named = digestInName(entry.Config), named != configDigest {
            throw HearthError(.invalidImage, "image config \(entry.Config): digest mismatch: content hashes to \(configDigest)")
        }
        let config: ImageConfigFile = try decodeJSON(configBytes, what: "image config \(configDigest)")
        try checkPlatform(config, what: "image config \(configDigest)")
        let diffIDs = try diffIDs(config, configDigest: configDigest)
        guard diffIDs.count == entry.Layers.count else {
            throw HearthError(.invalidImage, "\(what) lists \(entry.Layers.count) layers but the config lists \(diffIDs.count) diff IDs")
        }
        let layers = entry.Layers.enumerated().map { i, path in
            let blobDigest = path.hasPrefix("blobs/") ? digestInName(path) : nil
            return Layer(blobPath: path, blobDigest: blobDigest, size: nil, diffID: diffIDs[i], mediaType: nil)
        }
        let names = (entry.RepoTags ?? []).compactMap { try? ImageName.normalize($0) }
        return ImagePlan(manifestDigest: nil, configDigest: configDigest, config: config, layers: layers, names: names)
    }

    /// The digest a file is named after: `…/<hex>`, `<hex>.json`.
    private static func digestInName(_ path: String) -> Digest? {
        var name = Substring(path.split(separator: "/").last ?? "")
        if name.hasSuffix(".json") { name = name.dropLast(5) }
        return try? Digest(hex: String(name))
    }
}
