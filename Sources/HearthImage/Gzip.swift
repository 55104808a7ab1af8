import CZlib
import HearthCore

/// Compression of a blob, sniffed from its first bytes rather than trusted
/// from the media type (docker archives carry no media types at all).
public enum Compression: Equatable {
    case none
    case gzip
    case zstd

    static func detect(_ head: [UInt8]) -> Compression {
        if head.count >= 2 && head[0] == 0x1f && head[1] == 0x8b { return .gzip }
        if head.count >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd { return .zstd }
        return .none
    }

    /// Wraps `source` in a decompressor when needed. `what` names the blob
    /// in errors.
    public static func decompressing(_ source: ByteSource, what: String) throws -> ByteSource {
        let head = try source.readUpTo(4)
        let rest = PrefixedSource(prefix: head, inner: source)
        switch detect(head) {
        case .none: return rest
        case .gzip: return try GzipSource(rest, what: what)
        case .zstd:
            throw HearthError(.invalidImage, "\(what) is zstd-compressed: unsupported media type (only gzip and uncompressed layers are supported)")
        }
    }
}

/// Inflates a gzip stream (several concatenated members allowed, as gzip(1)
/// and Go's reader do). Trailing zero bytes after the last member are
/// tolerated; any other trailing data is an error.
final class GzipSource: ByteSource {
    private let input: ByteSource
    private let what: String
    // zlib keeps a pointer back to its z_stream and checks it on every call,
    // so the stream lives at a fixed address rather than in a Swift property.
    private let stream: UnsafeMutablePointer<z_stream>
    private let inBuffer: UnsafeMutableRawBufferPointer
    private var inputEnded = false
    private var state = State.inflating

    private enum State {
        case inflating
        case betweenMembers
        case finished
    }

    init(_ input: ByteSource, what: String) throws {
        self.input = input
        self.what = what
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        inBuffer = .allocate(byteCount: 256 * 1024, alignment: 16)
        // 15 + 32: maximum window, gzip or zlib header detected automatically.
        let rc = inflateInit2_(stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard rc == Z_OK else {
            stream.deinitialize(count: 1)
            stream.deallocate()
            inBuffer.deallocate()
            throw HearthError(.internal, "inflateInit2 failed for \(what): zlib error \(rc)")
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
        inBuffer.deallocate()
    }

    /// Makes input available; false at the end of the compressed stream.
    private func refill() throws -> Bool {
        if stream.pointee.avail_in > 0 { return true }
        if inputEnded { return false }
        let n = try input.read(into: inBuffer)
        if n == 0 {
            inputEnded = true
            return false
        }
        stream.pointee.next_in = inBuffer.baseAddress?.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_in = uInt(n)
        return true
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0, let out = buffer.baseAddress else { return 0 }
        while true {
            switch state {
            case .finished:
                return 0
            case .betweenMembers:
                // Another member follows, or zero padding up to the end.
                var sawZero = false
                while try refill() {
                    guard let next = stream.pointee.next_in else { break }
                    if next.pointee != 0 { break }
                    sawZero = true
                    stream.pointee.next_in = next + 1
                    stream.pointee.avail_in -= 1
                }
                if stream.pointee.avail_in == 0 {
                    state = .finished
                    return 0
                }
                if sawZero {
                    throw HearthError(.invalidImage, "\(what): unexpected data after the end of the gzip stream")
                }
                guard inflateReset(stream) == Z_OK else {
                    throw HearthError(.internal, "inflateReset failed for \(what)")
                }
                state = .inflating
            case .inflating:
                let haveInput = try refill()
                stream.pointee.next_out = out.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_out = uInt(min(buffer.count, Int(UInt32.max)))
                let rc = inflate(stream, Z_NO_FLUSH)
                let produced = min(buffer.count, Int(UInt32.max)) - Int(stream.pointee.avail_out)
                switch rc {
                case Z_STREAM_END:
                    state = .betweenMembers
                    if produced > 0 { return produced }
                case Z_OK:
                    if produced > 0 { return produced }
                case Z_BUF_ERROR:
                    // No progress possible: zlib needs input that is not there.
                    if !haveInput {
                        throw HearthError(.invalidImage, "\(what): gzip stream is truncated")
                    }
                default:
                    let detail = stream.pointee.msg.map { String(cString: $0) } ?? "zlib error \(rc)"
                    throw HearthError(.invalidImage, "\(what): invalid gzip data: \(detail)")
                }
                if produced == 0 && !haveInput && rc != Z_STREAM_END {
                    throw HearthError(.invalidImage, "\(what): gzip stream is truncated")
                }
            }
        }
    }
}

/// gzip compression of a byte array: used to write compressed blobs (the
/// tests build their own images with it).
enum Gzip {
    static func compress(_ bytes: [UInt8], level: Int32 = 6) throws -> [UInt8] {
        // Fixed address: zlib checks its back pointer to the stream.
        let strm = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        strm.initialize(to: z_stream())
        defer { strm.deinitialize(count: 1); strm.deallocate() }
        // 31: 15-bit window with a gzip header.
        var rc = deflateInit2_(strm, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                               Int32(MemoryLayout<z_stream>.size))
        guard rc == Z_OK else { throw HearthError(.internal, "deflateInit2 failed: zlib error \(rc)") }
        defer { deflateEnd(strm) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(strm, uLong(bytes.count))) + 64)
        var input = bytes
        let total = try input.withUnsafeMutableBufferPointer { inBuf -> Int in
            try out.withUnsafeMutableBufferPointer { outBuf -> Int in
                strm.pointee.next_in = inBuf.baseAddress
                strm.pointee.avail_in = uInt(inBuf.count)
                strm.pointee.next_out = outBuf.baseAddress
                strm.pointee.avail_out = uInt(outBuf.count)
                rc = deflate(strm, Z_FINISH)
                guard rc == Z_STREAM_END else { throw HearthError(.internal, "deflate failed: zlib error \(rc)") }
                return outBuf.count - Int(strm.pointee.avail_out)
            }
        }
        out.removeSubrange(total...)
        return out
    }
}
