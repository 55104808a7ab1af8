#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import Synchronization
import HearthOS

/// Progress of an import, reported at the start of every layer and every
/// few MiB while one is read.
public struct ImportProgress: Sendable, Equatable {
    /// 1-based index of the layer being imported.
    public var layer: Int
    public var layers: Int
    /// Blob bytes read so far in this import; layers already in the cache
    /// count as read.
    public var bytes: Int64
    /// Sum of the layers' blob sizes.
    public var totalBytes: Int64?

    public init(layer: Int, layers: Int, bytes: Int64, totalBytes: Int64?) {
        self.layer = layer
        self.layers = layers
        self.bytes = bytes
        self.totalBytes = totalBytes
    }
}

/// An image ready to become a replica's root filesystem.
public struct ResolvedImage: Sendable, Equatable {
    public var name: String
    /// Config digest, `sha256:…`.
    public var id: String
    /// Absolute paths of the unpacked layers, bottom layer first (overlayfs
    /// wants `lowerdir` top first: reverse them).
    public var layerPaths: [String]
    public var env: [String]
    public var entrypoint: [String]
    public var cmd: [String]
    /// The image's working directory; `/` when it sets none.
    public var workingDir: String
    /// The image's user (`name`, `uid`, `uid:gid`…); empty means root.
    public var user: String

    public init(name: String, id: String, layerPaths: [String], env: [String], entrypoint: [String],
                cmd: [String], workingDir: String, user: String) {
        self.name = name
        self.id = id
        self.layerPaths = layerPaths
        self.env = env
        self.entrypoint = entrypoint
        self.cmd = cmd
        self.workingDir = workingDir
        self.user = user
    }
}

/// Imported images and their unpacked layers under the daemon's state root:
///
///     <root>/images.json          index: images by name, layer sizes
///     <root>/images.lock          flock(2) for the index
///     <root>/layers/<diff ID>/    unpacked layers (overlayfs form), shared
///     <root>/tmp/                 unpacking in progress, garbage being removed
///
/// `layers/` and `tmp/` are mode 0700: layers hold setuid binaries and
/// devices (whiteouts) owned by root, which host users must not reach.
///
/// Safe for concurrent use from many threads: the index is read and written
/// under a mutex and a file lock; layers are unpacked outside the lock.
public final class ImageStore: Sendable {
    public let root: String
    private let indexPath: String
    private let lockPath: String
    let cache: LayerCache
    let state = Mutex(State())

    struct State: Sendable {
        /// Layers an import in progress relies on: garbage collection must
        /// not take them before the image that uses them is recorded.
        var pinned: [String: Int] = [:]
        var counter = 0

        mutating func tempName(_ purpose: String) -> String {
            counter += 1
            return "\(getpid())-\(counter)-\(purpose)"
        }
    }

    /// `<root>/tmp`, 0700: where an upload is spooled before its import.
    /// Name entries `<pid>-…`: those of dead processes go at the next open.
    public var scratchDirectory: String { cache.scratch }

    /// Opens (creating if needed) the store under `root`, the daemon's state
    /// root, and removes what crashed predecessors left in `tmp/`.
    public init(root: String) throws {
        var trimmed = root
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard trimmed.hasPrefix("/") else { throw HearthError.invalid("image store root \"\(root)\" must be an absolute path") }
        self.root = trimmed
        indexPath = trimmed + "/images.json"
        lockPath = trimmed + "/images.lock"
        cache = LayerCache(directory: trimmed + "/layers", scratch: trimmed + "/tmp")
        try FS.makeDirectory(trimmed, mode: nil)
        try FS.makeDirectory(cache.directory, mode: 0o700)
        try FS.makeDirectory(cache.scratch, mode: 0o700)
        try removeStaleScratch()
    }

    /// Entries in tmp/ are named `<pid>-…`; those of dead processes are
    /// leftovers of a crash.
    private func removeStaleScratch() throws {
        let dir = try OwnedFD.open(cache.scratch, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        for entry in try FS.list(dir, display: cache.scratch) {
            let name = String(decoding: entry.name, as: UTF8.self)
            if let pid = Int32(name.prefix { $0 != "-" }) {
                if pid == getpid() { continue }
                if kill(pid, 0) == 0 || errno == EPERM { continue }
            }
            try FS.removeTree(dir, entry.name, display: cache.scratch + "/" + name)
        }
    }

    // MARK: lock

    /// Runs `body` on the current index under the store's mutex and file
    /// lock; writes the index back if `body` changed it.
    func withIndex<T: Sendable>(_ body: (inout StoreIndex, inout State) throws -> T) throws -> T {
        try state.withLock { state throws -> T in
            let lock = try OwnedFD.open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, mode: 0o600)
            while flock(lock.raw, LOCK_EX) != 0 {
                if errno != EINTR { throw SystemError.current("flock", lockPath) }
            }
            var index = try StoreIndex.load(indexPath)
            let before = index
            let result = try body(&index, &state)
            if index != before { try index.save(indexPath) }
            return result
            // Closing `lock` releases the file lock.
        }
    }

    func pin(_ layers: [String]) {
        state.withLock { state in
            for hex in layers { state.pinned[hex, default: 0] += 1 }
        }
    }

    func unpin(_ layers: [String]) {
        state.withLock { state in
            for hex in layers {
                let n = (state.pinned[hex] ?? 1) - 1
                state.pinned[hex] = n > 0 ? n : nil
            }
        }
    }

    func tempName(_ purpose: String) -> String {
        state.withLock { $0.tempName(purpose) }
    }

    // MARK: import

    /// Imports an OCI image layout directory, an OCI archive (tar, possibly
    /// gzipped) or a `docker save` tarball. Every blob's digest and size and
    /// every layer's diff ID is verified; layers already cached are not
    /// unpacked again. `name` (else the name the input carries) gets
    /// `:latest` if it has no tag; an existing image of that name is
    /// replaced.
    ///
    /// `plainRootfs` imports a root filesystem directory: an archive of one
    /// (no index.json, oci-layout or manifest.json; a bin, usr or etc) is
    /// unpacked into a scratch directory, device nodes and FIFOs left out,
    /// and handed to it; nil: such an archive is refused like any other
    /// that is not an image.
    public func importImage(path: String, name: String?,
                            progress: @Sendable (ImportProgress) -> Void = { _ in },
                            plainRootfs: ((String) throws -> ImageSummary)? = nil) throws -> ImageSummary {
        let explicit = try name.map { try ImageName.normalize($0) }
        let input = try ImageInput.open(path, scratchDirectory: cache.scratch)
        if let plainRootfs, let tar = input.plainRootfsArchive {
            guard name != nil else {
                throw HearthError.invalid("\(path) is an archive of a root filesystem, which carries no image name; pass one: hearth image import \(path) --name NAME[:TAG]")
            }
            let temp = "\(cache.scratch)/\(tempName("rootfs"))"
            guard mkdir(temp, 0o700) == 0 else { throw SystemError.current("mkdir", temp) }
            defer { try? FS.removeTree(path: temp) }
            let root = try OwnedFD.open(temp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let unpacker = LayerUnpacker(root: root, rootPath: temp, label: "\(path) (a root filesystem archive)")
            unpacker.skipSpecialFiles = true
            let reader = TarReader(tar, what: path)
            try unpacker.unpack(reader)
            try reader.finish()
            return try plainRootfs(temp)
        }
        let plan = try ImagePlan.load(input, wanted: explicit)
        guard let imageName = explicit ?? plan.names.first else {
            throw HearthError.invalid("\(path) does not name its image (no RepoTags, no org.opencontainers.image.ref.name with a repository); pass one: hearth image import \(path) --name NAME[:TAG]")
        }

        // Open every blob first: a missing one fails the import before
        // anything is unpacked, and the sizes give the total.
        var blobSizes: [Int64] = []
        for layer in plan.layers {
            blobSizes.append(try input.open(layer.blobPath, what: "\(layer.label) blob").remaining)
        }
        let total = blobSizes.reduce(0, +)
        let hexes = plan.layers.map(\.diffID.hex)
        pin(hexes)
        defer { unpin(hexes) }

        var unpacked: [String: Int64] = [:]
        var done: Int64 = 0
        let count = plan.layers.count
        try withoutActuallyEscaping(progress) { report in
            for (i, layer) in plan.layers.enumerated() {
                report(ImportProgress(layer: i + 1, layers: count, bytes: done, totalBytes: total))
                if try cache.contains(layer.diffID) {
                    done += blobSizes[i]
                    continue
                }
                let base = done
                var reported: Int64 = 0
                unpacked[layer.diffID.hex] = try cache.install(
                    layer, from: input, tempName: tempName("layer-\(layer.diffID.hex.prefix(12))")
                ) { read in
                    if read - reported >= 4 << 20 {
                        reported = read
                        report(ImportProgress(layer: i + 1, layers: count, bytes: base + read, totalBytes: total))
                    }
                }
                done += blobSizes[i]
            }
            report(ImportProgress(layer: count, layers: count, bytes: done, totalBytes: total))
        }

        return try record(name: imageName, config: plan.config, configDigest: plan.configDigest.description,
                          manifestDigest: plan.manifestDigest?.description, layers: plan.layers, unpacked: unpacked)
    }

    /// Records an image whose layers are all in the cache under `name`,
    /// replacing an image of that name, and collects what no image uses
    /// any more. `unpacked`: sizes of layers this caller installed (others
    /// found on disk without a record, left by a crash between rename and
    /// index write, are measured once).
    func record(name: String, config: ImageConfigFile, configDigest: String, manifestDigest: String?,
                layers: [ImagePlan.Layer], unpacked: [String: Int64]) throws -> ImageSummary {
        let container = config.config
        let record = ImageRecord(
            name: name, id: configDigest, manifestDigest: manifestDigest,
            diffIDs: layers.map(\.diffID.description),
            created: config.created,
            imported: Date().formatted(.iso8601),
            os: config.os, architecture: config.architecture,
            env: container?.Env ?? [], entrypoint: container?.Entrypoint ?? [], cmd: container?.Cmd ?? [],
            workingDir: container?.WorkingDir ?? "", user: container?.User ?? "")
        let (summary, garbage) = try withIndex { index, state -> (ImageSummary, [String]) in
            for layer in layers where index.layers[layer.diffID.hex] == nil {
                let size = try unpacked[layer.diffID.hex] ?? cache.size(layer.diffID)
                index.layers[layer.diffID.hex] = StoreIndex.LayerRecord(size: size)
            }
            index.images[name] = record
            let garbage = try collectGarbage(&index, &state)
            return (index.summary(record), garbage)
        }
        removeGarbage(garbage)
        return summary
    }

    // MARK: queries

    /// Every image, by name.
    public func list() throws -> [ImageSummary] {
        try withIndex { index, _ in
            index.images.values.sorted { $0.name < $1.name }.map { index.summary($0) }
        }
    }

    /// Removes the image named `name` (`:latest` implied) and every layer no
    /// other image uses.
    public func remove(name: String) throws {
        let key = try ImageName.normalize(name, allowDigest: true)
        let garbage = try withIndex { index, state -> [String] in
            guard index.images.removeValue(forKey: key) != nil else {
                throw HearthError(.imageNotFound, "image \"\(key)\" not found")
            }
            return try collectGarbage(&index, &state)
        }
        removeGarbage(garbage)
    }

    /// The image named `ref` (`:latest` implied), or with config digest
    /// `ref` (`sha256:…`).
    public func resolve(_ ref: String) throws -> ResolvedImage {
        let record: ImageRecord? = try withIndex { index, _ in
            if ref.hasPrefix("sha256:") {
                let matches = index.images.values.filter { $0.id == ref }.sorted { $0.name < $1.name }
                return matches.first
            }
            guard let key = try? ImageName.normalize(ref, allowDigest: true) else { return nil }
            if let record = index.images[key] { return record }
            // NAME@sha256:…: an image of that repository pulled by tag whose
            // manifest has that digest is the same image.
            guard let (repository, digest) = ImageName.splitDigest(key) else { return nil }
            return index.images.values
                .filter { $0.manifestDigest == digest && ImageName.repository(of: $0.name) == repository }
                .min { $0.name < $1.name }
        }
        guard let record else {
            let key = (try? ImageName.normalize(ref, allowDigest: true)) ?? ref
            let importHint = key.contains("@") ? "" : " or import it with `hearth image import PATH --name \(key)`"
            throw HearthError(.imageNotFound, "image \"\(key)\" not found; pull it with `hearth image pull \(key)`\(importHint)")
        }
        // A layer listed twice (identical layers) is kept at its topmost
        // position only: the merged view is the same, and overlayfs refuses
        // the same directory twice.
        var seen = Set<String>()
        var paths: [String] = []
        for diffID in record.diffIDs.reversed() where seen.insert(diffID).inserted {
            let digest = try Digest(parsing: diffID, what: "image \(record.name)")
            guard try cache.contains(digest) else {
                throw HearthError(.invalidImage, "image \"\(record.name)\": layer \(diffID) is missing from \(cache.directory); remove the image and import it again")
            }
            paths.append(cache.path(digest))
        }
        return ResolvedImage(
            name: record.name, id: record.id, layerPaths: paths.reversed(), env: record.env,
            entrypoint: record.entrypoint, cmd: record.cmd,
            workingDir: record.workingDir.isEmpty ? "/" : record.workingDir, user: record.user)
    }

    // MARK: garbage

    /// Drops layers no image uses (and no import in progress relies on)
    /// from the index and moves them out of `layers/` into `tmp/`. Returns
    /// their new paths, to be deleted outside the lock.
    func collectGarbage(_ index: inout StoreIndex, _ state: inout State) throws -> [String] {
        let referenced = index.referencedLayers
        var candidates = Set(index.layers.keys)
        candidates.formUnion(try cache.installed())
        var moved: [String] = []
        for hex in candidates.sorted() where !referenced.contains(hex) && state.pinned[hex] == nil {
            index.layers[hex] = nil
            let from = "\(cache.directory)/\(hex)"
            let to = "\(cache.scratch)/\(state.tempName("gc-\(hex.prefix(12))"))"
            if rename(from, to) != 0 {
                if errno == ENOENT { continue }
                throw SystemError.current("rename to \(to)", from)
            }
            moved.append(to)
        }
        return moved
    }

    func removeGarbage(_ paths: [String]) {
        // The index no longer lists these; what fails to go now is removed
        // from tmp/ at the next start.
        for path in paths { try? FS.removeTree(path: path) }
    }
}
