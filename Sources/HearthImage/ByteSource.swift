#if canImport(Glibc)
import Glibc
#endif
import Crypto
import HearthCore
import HearthOS

/// A pull-based stream of bytes: a file or a section of one, a decompressor,
/// a hasher in front of either. Blobs are read exactly once, front to back,
/// so every stage (blob digest, gunzip, diff ID, tar) works on the same pass.
public protocol ByteSource: AnyObject {
    /// Reads up to `buffer.count` bytes; returns 0 only at the end of the stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Discards up to `count` bytes; returns how many were discarded (fewer
    /// only at the end of the stream).
    func skip(_ count: Int64) throws -> Int64
}

extension ByteSource {
    func skip(_ count: Int64) throws -> Int64 {
        try discard(count)
    }

    /// Skipping by reading: what every stage that must see all bytes (a
    /// hasher, a decompressor) does.
    func discard(_ count: Int64) throws -> Int64 {
        var left = count
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
        defer { scratch.deallocate() }
        while left > 0 {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: scratch[0..<Int(min(left, Int64(scratch.count)))]))
            if n == 0 { break }
            left -= Int64(n)
        }
        return count - left
    }

    /// Reads to the end of the stream, so that hashers in front of this
    /// source see every byte (tar padding, trailing zero blocks).
    func drain() throws {
        while try discard(1 << 30) == 1 << 30 {}
    }

    /// Reads up to `count` bytes; fewer only at the end of the stream. The
    /// buffer grows as data arrives, so a generous `count` costs nothing.
    func readUpTo(_ count: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: min(count, 64 * 1024))
        while out.count < count {
            let want = min(chunk.count, count - out.count)
            let n = try chunk.withUnsafeMutableBytes { raw in
                try read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<want]))
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// Reads the whole stream into memory, refusing more than `limit` bytes
    /// (manifests and configs are small; a huge one is an attack or a mistake).
    func readAll(limit: Int, what: String) throws -> [UInt8] {
        let bytes = try readUpTo(limit + 1)
        guard bytes.count <= limit else {
            throw HearthError(.invalidImage, "\(what) is larger than \(limit) bytes")
        }
        return bytes
    }
}

/// A regular file, or a section of one (a blob inside an uncompressed
/// archive), read with pread so that sections share one descriptor.
public final class FileSource: ByteSource {
    let fd: OwnedFD
    let path: String
    private var offset: Int64
    private let end: Int64
    /// Whose input a short read is blamed on (an image by default).
    private let truncationCode: HearthError.Code
    private let what: String

    public init(fd: OwnedFD, path: String, offset: Int64, length: Int64,
                truncationCode: HearthError.Code = .invalidImage, what: String? = nil) {
        self.fd = fd
        self.path = path
        self.offset = offset
        self.end = offset + length
        self.truncationCode = truncationCode
        self.what = what ?? path
    }

    /// Opens a regular file for reading. FIFOs and devices are refused: the
    /// import path comes from a client and must not make the daemon block.
    static func open(_ path: String) throws -> FileSource {
        let fd = try OwnedFD.open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        let st = try fd.stat(path)
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw HearthError(.invalidArgument, "\(path) is not a regular file")
        }
        return FileSource(fd: fd, path: path, offset: 0, length: Int64(st.st_size))
    }

    var remaining: Int64 { end - offset }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let want = Int(min(Int64(buffer.count), end - offset))
        guard want > 0, let base = buffer.baseAddress else { return 0 }
        while true {
            let n = pread(fd.raw, base, want, off_t(offset))
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("read", path)
            }
            if n == 0 {
                throw HearthError(truncationCode, "\(what): file ended at byte \(offset), expected \(end) bytes; was it truncated while reading?")
            }
            offset += Int64(n)
            return n
        }
    }

    public func skip(_ count: Int64) throws -> Int64 {
        let n = min(max(count, 0), end - offset)
        offset += n
        return n
    }
}

/// Gives back bytes that were read ahead (to sniff a format) before the rest
/// of the stream; with no `inner`, a source of just those bytes.
public final class PrefixedSource: ByteSource {
    private let prefix: [UInt8]
    private var prefixOffset = 0
    private let inner: ByteSource?

    public init(prefix: [UInt8], inner: ByteSource? = nil) {
        self.prefix = prefix
        self.inner = inner
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if prefixOffset < prefix.count {
            let n = min(buffer.count, prefix.count - prefixOffset)
            prefix.withUnsafeBytes { src in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[prefixOffset..<prefixOffset + n]))
            }
            prefixOffset += n
            return n
        }
        return try inner?.read(into: buffer) ?? 0
    }

    public func skip(_ count: Int64) throws -> Int64 {
        let fromPrefix = min(max(count, 0), Int64(prefix.count - prefixOffset))
        prefixOffset += Int(fromPrefix)
        guard let inner, fromPrefix < count else { return fromPrefix }
        return try fromPrefix + inner.skip(count - fromPrefix)
    }
}

/// Hashes (SHA-256) and counts every byte that passes through.
final class HashingSource: ByteSource {
    private let inner: ByteSource
    private var hasher = SHA256()
    private(set) var count: Int64 = 0
    private let onRead: ((Int64) -> Void)?

    init(_ inner: ByteSource, onRead: ((Int64) -> Void)? = nil) {
        self.inner = inner
        self.onRead = onRead
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try inner.read(into: buffer)
        if n > 0 {
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            count += Int64(n)
            onRead?(count)
        }
        return n
    }

    // Default `skip` reads: a hasher must see every byte.

    func digest() -> Digest {
        Digest(finalized: hasher.finalize())
    }
}
