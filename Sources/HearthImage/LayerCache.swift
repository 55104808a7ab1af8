#if canImport(Glibc)
import Glibc
#endif
import CHearth
import HearthCore
import HearthOS

/// The content-addressed cache of unpacked layers, `layers/<diff ID hex>/`,
/// shared by every image that has the layer.
///
/// A directory appears there only complete and verified: a layer is
/// unpacked into the store's tmp directory (same filesystem), its blob digest
/// and diff ID are checked, the filesystem is synced, and only then is it
/// renamed into place. Whoever renames first wins; a concurrent import of the
/// same layer throws its copy away.
struct LayerCache: Sendable {
    let directory: String
    let scratch: String

    func path(_ diffID: Digest) -> String { "\(directory)/\(diffID.hex)" }

    func contains(_ diffID: Digest) throws -> Bool {
        var st = stat()
        if lstat(path(diffID), &st) == 0 { return (st.st_mode & S_IFMT) == S_IFDIR }
        if errno == ENOENT { return false }
        throw SystemError.current("stat", path(diffID))
    }

    /// Hex digests of the layers on disk.
    func installed() throws -> [String] {
        let dir = try OwnedFD.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        return try FS.list(dir, display: directory)
            .map { String(decoding: $0.name, as: UTF8.self) }
            .filter { Digest.isSHA256Hex($0) }
    }

    /// Bytes of regular files in an installed layer.
    func size(_ diffID: Digest) throws -> Int64 {
        let dir = try OwnedFD.open(path(diffID), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        return try FS.treeSize(dir, display: path(diffID))
    }

    /// Unpacks `layer` from `input`, verifies it and moves it into the
    /// cache. `tempName` must be unique within the scratch directory;
    /// `onRead` gets the blob bytes read so far. Returns the bytes of file
    /// content unpacked.
    func install(_ layer: ImagePlan.Layer, from input: ImageInput, tempName: String,
                 onRead: @escaping (Int64) -> Void) throws -> Int64 {
        try install(layer, blob: { try input.open(layer.blobPath, what: "\(layer.label) blob") },
                    tempName: tempName, onRead: onRead)
    }

    /// As above, the blob opened by `blob` (a pulled blob's file).
    /// `beforeSync` runs once the layer is unpacked and verified and the
    /// blob closed, before the file system is synced: a pull removes its
    /// blob file there, so its pages are dropped rather than written back.
    func install(_ layer: ImagePlan.Layer, blob: () throws -> FileSource, tempName: String,
                 beforeSync: () -> Void = {}, onRead: @escaping (Int64) -> Void) throws -> Int64 {
        let temp = "\(scratch)/\(tempName)"
        guard mkdir(temp, 0o755) == 0 else { throw SystemError.current("mkdir", temp) }
        do {
            let bytes = try unpackVerified(layer, blob: try blob(), into: temp, onRead: onRead)
            beforeSync()
            // Nothing may be renamed into the cache that a crash could leave
            // half-written.
            let root = try OwnedFD.open(temp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard hearth_syncfs(root.raw) == 0 else { throw SystemError.current("syncfs", temp) }
            if rename(temp, path(layer.diffID)) != 0 {
                let e = errno
                // Another import installed the same layer meanwhile: same
                // diff ID, same content; keep theirs.
                guard (e == EEXIST || e == ENOTEMPTY), try contains(layer.diffID) else {
                    throw SystemError("rename to \(path(layer.diffID))", temp, errno: e)
                }
                try FS.removeTree(path: temp)
            }
            return bytes
        } catch {
            try? FS.removeTree(path: temp)
            throw error
        }
    }

    private func unpackVerified(_ layer: ImagePlan.Layer, blob: FileSource, into temp: String,
                                onRead: @escaping (Int64) -> Void) throws -> Int64 {
        let root = try OwnedFD.open(temp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if let size = layer.size, blob.remaining != size {
            throw HearthError(.invalidImage, "\(layer.label): size mismatch: descriptor says \(size) bytes, blob has \(blob.remaining)")
        }
        // One pass: file → blob hash → gunzip → diff ID hash → tar → unpack.
        let blobHash = HashingSource(blob, onRead: onRead)
        let plain = try Compression.decompressing(blobHash, what: layer.label)
        let diffHash = HashingSource(plain)
        let reader = TarReader(diffHash, what: layer.label)
        let unpacker = LayerUnpacker(root: root, rootPath: temp, label: layer.label)
        try unpacker.unpack(reader)
        try reader.finish()
        try blobHash.drain()

        if let expected = layer.blobDigest {
            let actual = blobHash.digest()
            guard actual == expected else {
                throw HearthError(.invalidImage, "\(layer.label): blob digest mismatch: content hashes to \(actual)")
            }
        }
        let diffID = diffHash.digest()
        guard diffID == layer.diffID else {
            throw HearthError(.invalidImage, "\(layer.label): diff ID mismatch: the image config says \(layer.diffID), the uncompressed layer hashes to \(diffID)")
        }
        return unpacker.bytes
    }
}
