import Glibc
import HearthCore
import HearthSandbox
import Hummingbird
import NIOCore

/// An image archive sent as the request body, written to a private file
/// (0600 in the store's 0700 scratch directory) so the importer can read it
/// like any archive: OCI archives and `docker save` tarballs need random
/// access, which a stream does not give.
enum UploadSpool {
    /// Larger uploads are refused, so a client cannot fill the state root's disk with one.
    static let maxBytes: Int64 = 64 << 30
    /// Written in pieces of this size, off the event loop.
    static let chunk = 1 << 20

    static func isArchive(contentType: String?) -> Bool {
        guard let type = contentType?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased()
        else { return false }
        return ["application/x-tar", "application/octet-stream", "application/gzip", "application/x-gzip",
                "application/vnd.oci.image.layout.v1+tar"].contains(type)
    }

    /// Receives the whole body; returns the spool file's path.
    static func receive(_ body: RequestBody, into dir: String, limit: Int64 = maxBytes) async throws -> String {
        let path = dir + "/\(getpid())-upload-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError.current("create", path) }
        var total: Int64 = 0
        var pending: [UInt8] = []
        pending.reserveCapacity(chunk)
        do {
            for try await buffer in body {
                total += Int64(buffer.readableBytes)
                if total > limit {
                    throw HearthError.invalid("image upload: more than \(limit >> 30) GiB; the largest archive hearthd accepts is \(limit >> 30) GiB")
                }
                pending.append(contentsOf: buffer.readableBytesView)
                if pending.count >= chunk {
                    let piece = pending
                    pending.removeAll(keepingCapacity: true)
                    try await Blocking.run { try write(fd, piece, path) }
                }
            }
            if !pending.isEmpty {
                let piece = pending
                try await Blocking.run { try write(fd, piece, path) }
            }
            guard total > 0 else {
                throw HearthError.invalid("image upload: the body is empty; send an OCI archive, an OCI layout as a tar, or a `docker save` tarball")
            }
            close(fd)
            return path
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
    }

    private static func write(_ fd: Int32, _ bytes: [UInt8], _ path: String) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.write(fd, base + off, raw.count - off)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write", path)
            }
            off += n
        }
    }
}
