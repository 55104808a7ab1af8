#if canImport(Glibc)
import Glibc
#endif
import HearthCore
import HearthOS

/// What an import reads from: an OCI layout directory (or an extracted
/// `docker save`), or an archive of either. Files are addressed by their path
/// inside the layout (`index.json`, `blobs/sha256/<hex>`, `<id>/layer.tar`).
///
/// Uncompressed archives are not extracted: one pass over the headers
/// (seeking past the content) records where each member's bytes are, and
/// blobs are then read in place. A gzipped archive is first decompressed into
/// an unlinked temporary file in the store's tmp directory.
final class ImageInput {
    let path: String
    private let backing: Backing

    private enum Backing {
        case directory
        case archive(OwnedFD, [String: Member])
    }

    private enum Member {
        case file(offset: Int64, size: Int64)
        case symlink(String)
        case hardLink(String)
    }

    private init(path: String, backing: Backing) {
        self.path = path
        self.backing = backing
    }

    /// Opens `path` as a directory or an archive. `scratchDirectory` is where
    /// a compressed archive is decompressed to.
    static func open(_ path: String, scratchDirectory: String) throws -> ImageInput {
        var st = stat()
        guard stat(path, &st) == 0 else {
            if errno == ENOENT { throw HearthError(.notFound, "\(path) does not exist") }
            throw SystemError.current("stat", path)
        }
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            return ImageInput(path: path, backing: .directory)
        case S_IFREG:
            return try openArchive(path, scratchDirectory: scratchDirectory)
        default:
            throw HearthError.invalid("\(path) is neither a directory nor a regular file")
        }
    }

    private static func openArchive(_ path: String, scratchDirectory: String) throws -> ImageInput {
        let file = try FileSource.open(path)
        let head = try file.readUpTo(4)
        switch Compression.detect(head) {
        case .zstd:
            throw HearthError(.invalidImage, "\(path) is zstd-compressed: unsupported (decompress it or use gzip)")
        case .gzip:
            let plain = try decompress(path, scratchDirectory: scratchDirectory)
            return try index(fd: plain, path: path)
        case .none:
            return try index(fd: file.fd, path: path)
        }
    }

    /// gunzips `path` into a temporary file that is unlinked at once, so
    /// nothing is left behind whatever happens next.
    private static func decompress(_ path: String, scratchDirectory: String) throws -> OwnedFD {
        let temp = "\(scratchDirectory)/\(getpid())-archive-\(UInt64.random(in: 0...UInt64.max))"
        let out = try OwnedFD.open(temp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode: 0o600)
        _ = unlink(temp)
        let source = try GzipSource(FileSource.open(path), what: path)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = try source.read(into: buffer)
            if n == 0 { break }
            try out.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), display: "\(temp) (decompressing \(path))")
        }
        return out
    }

    private static func index(fd: OwnedFD, path: String) throws -> ImageInput {
        let size = try Int64(fd.stat(path).st_size)
        let reader = TarReader(FileSource(fd: fd, path: path, offset: 0, length: size), what: path, bufferSize: 64 * 1024)
        var members: [String: Member] = [:]
        while let entry = try reader.next() {
            guard let name = normalize(String(decoding: entry.path, as: UTF8.self)) else { continue }
            switch entry.kind {
            case .regular: members[name] = .file(offset: reader.contentOffset, size: entry.size)
            case .symlink: members[name] = .symlink(String(decoding: entry.linkTarget, as: UTF8.self))
            case .hardLink: members[name] = .hardLink(String(decoding: entry.linkTarget, as: UTF8.self))
            default: break
            }
        }
        guard !members.isEmpty else { throw HearthError(.invalidImage, "\(path): the archive is empty") }
        return ImageInput(path: path, backing: .archive(fd, members))
    }

    /// `./a//b/../c` → `a/c`; nil if it climbs above the top.
    static func normalize(_ path: String) -> String? {
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            if part == "." { continue }
            if part == ".." {
                if parts.isEmpty { return nil }
                parts.removeLast()
                continue
            }
            parts.append(part)
        }
        return parts.joined(separator: "/")
    }

    /// Where a member's bytes are, following links inside the archive
    /// (older `docker save` links duplicate layers to one copy).
    private func locate(_ name: String, in members: [String: Member]) -> (offset: Int64, size: Int64)? {
        var current = name
        for _ in 0..<16 {
            switch members[current] {
            case .file(let offset, let size)?:
                return (offset, size)
            case .symlink(let target)?:
                let base = current.split(separator: "/").dropLast().joined(separator: "/")
                let joined = target.hasPrefix("/") ? target : base + "/" + target
                guard let next = ImageInput.normalize(joined) else { return nil }
                current = next
            case .hardLink(let target)?:
                guard let next = ImageInput.normalize(target) else { return nil }
                current = next
            case nil:
                return nil
            }
        }
        return nil
    }

    /// The member `name` (a path inside the layout), nil when absent.
    func openIfPresent(_ name: String) throws -> FileSource? {
        guard let clean = ImageInput.normalize(name), !clean.isEmpty else {
            throw HearthError(.invalidImage, "\(path): \"\(name)\" is not a path inside the image")
        }
        switch backing {
        case .directory:
            do {
                return try FileSource.open(self.path + "/" + clean)
            } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
                return nil
            }
        case .archive(let fd, let members):
            guard let (offset, size) = locate(clean, in: members) else { return nil }
            return FileSource(fd: fd, path: "\(path):\(clean)", offset: offset, length: size)
        }
    }

    func open(_ name: String, what: String) throws -> FileSource {
        guard let source = try openIfPresent(name) else {
            throw HearthError(.invalidImage, "\(path): \(what) (\(name)) is missing")
        }
        return source
    }

    /// An archive of a plain root filesystem (`docker export`,
    /// `mmdebstrap --format=tar`, `tar -C DIR -c .`) rather than of an
    /// image: none of an image's top-level files (index.json, oci-layout,
    /// manifest.json), and a bin, usr or etc folder. Its whole tar, nil for
    /// anything else.
    var plainRootfsArchive: FileSource? {
        guard case .archive(let fd, let members) = backing,
              !["index.json", "oci-layout", "manifest.json"].contains(where: { members[$0] != nil }),
              members.keys.contains(where: { n in ["bin", "usr", "etc"].contains { n == $0 || n.hasPrefix($0 + "/") } }),
              let size = try? Int64(fd.stat(path).st_size)
        else { return nil }
        return FileSource(fd: fd, path: path, offset: 0, length: size)
    }

    func contains(_ name: String) throws -> Bool {
        try openIfPresent(name) != nil
    }

    func read(_ name: String, limit: Int, what: String) throws -> [UInt8] {
        try open(name, what: what).readAll(limit: limit, what: "\(path): \(what) (\(name))")
    }
}
