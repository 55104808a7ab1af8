#if canImport(Glibc)
import Glibc
#endif
import Crypto
import HearthCore
import HearthImage
import HearthOS

/// One member to write: ustar where the value fits, PAX records where it
/// does not (long paths and link targets, large ids, sizes, times) and for
/// extended attributes (`SCHILY.xattr.NAME`).
struct TarMember {
    enum Kind: UInt8 {
        case regular = 0x30     // '0'
        case hardLink = 0x31    // '1'
        case symlink = 0x32     // '2'
        case directory = 0x35   // '5'
    }

    var kind: Kind
    /// Relative, no leading `/`; directories without a trailing `/` (added here).
    var path: [UInt8]
    var linkTarget: [UInt8] = []
    var mode: UInt32
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var size: Int64 = 0
    var mtime: Int64 = 0
    var xattrs: [(name: String, value: [UInt8])] = []
}

/// Writes an uncompressed tar stream to a file and hashes every byte it
/// writes: the SHA-256 of the stream is the layer's diff ID. Deterministic:
/// the same members give the same bytes (no user or group names, no access
/// or change times, no device numbers).
final class TarWriter {
    private let fd: OwnedFD
    private let display: String
    private var hasher = SHA256()
    private var buffer: [UInt8] = []
    private static let flushAt = 1 << 20
    /// Bytes written so far.
    private(set) var count: Int64 = 0

    init(fd: OwnedFD, display: String) {
        self.fd = fd
        self.display = display
        buffer.reserveCapacity(Self.flushAt + 4096)
    }

    func append(_ member: TarMember) throws {
        var records: [(String, [UInt8])] = []
        var path = member.path
        if member.kind == .directory { path.append(UInt8(ascii: "/")) }
        var name = path
        if path.count > 100 {
            records.append(("path", path))
            name = Array(path.suffix(99))
        }
        var link = member.linkTarget
        if link.count > 100 {
            records.append(("linkpath", link))
            link = Array(link.prefix(100))
        }
        let maxOctal7: Int64 = 0o7777777, maxOctal11: Int64 = 0o77777777777
        if Int64(member.uid) > maxOctal7 { records.append(("uid", Array(String(member.uid).utf8))) }
        if Int64(member.gid) > maxOctal7 { records.append(("gid", Array(String(member.gid).utf8))) }
        if member.size > maxOctal11 { records.append(("size", Array(String(member.size).utf8))) }
        let mtime = max(member.mtime, 0)
        if mtime > maxOctal11 { records.append(("mtime", Array(String(mtime).utf8))) }
        for (xname, value) in member.xattrs { records.append(("SCHILY.xattr." + xname, value)) }

        if !records.isEmpty {
            var body: [UInt8] = []
            for (key, value) in records { body += Self.paxRecord(key, value) }
            append(header(name: Array("././@PaxHeader".utf8), typeflag: UInt8(ascii: "x"), mode: 0o644, uid: 0, gid: 0,
                          size: Int64(body.count), mtime: 0, link: []))
            append(body)
            pad(Int64(body.count))
        }
        append(header(name: name, typeflag: member.kind.rawValue, mode: member.mode & 0o7777,
                      uid: min(Int64(member.uid), maxOctal7), gid: min(Int64(member.gid), maxOctal7),
                      size: member.kind == .regular ? min(member.size, maxOctal11) : 0,
                      mtime: min(mtime, maxOctal11), link: link))
        try flushIfFull()
    }

    /// The content of the regular member just appended: `size` bytes from
    /// `source`, read until EOF (a file that shrank meanwhile is an error,
    /// one that grew is cut at `size`).
    func appendContent(from source: OwnedFD, size: Int64, display sourceDisplay: String) throws {
        var left = size
        let chunk = 1 << 20
        var scratch = [UInt8](repeating: 0, count: chunk)
        while left > 0 {
            let want = Int(min(Int64(chunk), left))
            let n = scratch.withUnsafeMutableBytes { read(source.raw, $0.baseAddress, want) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("read", sourceDisplay)
            }
            if n == 0 {
                throw HearthError(.internal, "\(sourceDisplay) shrank while it was written into a layer (\(size - left) of \(size) bytes)")
            }
            append(scratch[0..<n])
            left -= Int64(n)
            try flushIfFull()
        }
        pad(size)
    }

    /// The two zero blocks that end an archive; flushes and returns the
    /// diff ID (`sha256:…`).
    func finish() throws -> String {
        append([UInt8](repeating: 0, count: 1024))
        try flush()
        return "sha256:" + Hex.string(hasher.finalize())
    }

    // MARK: bytes

    private func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        buffer.append(contentsOf: bytes)
        count += Int64(bytes.count)
    }

    private func pad(_ size: Int64) {
        let n = Int((512 - size % 512) % 512)
        if n > 0 { append([UInt8](repeating: 0, count: n)) }
    }

    private func flushIfFull() throws {
        if buffer.count >= Self.flushAt { try flush() }
    }

    private func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { raw in
            hasher.update(bufferPointer: raw)
            var done = 0
            while done < raw.count {
                guard let base = raw.baseAddress else { return }
                let n = write(fd.raw, base + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SystemError.current("write", display)
                }
                done += n
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }

    // MARK: headers

    /// `"<length> <key>=<value>\n"`, the length counting itself.
    static func paxRecord(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let rest = 1 + key.utf8.count + 1 + value.count + 1
        var length = rest + 1
        while String(length).utf8.count + rest != length { length = String(length).utf8.count + rest }
        return Array("\(length) \(key)=".utf8) + value + [10]
    }

    private func header(name: [UInt8], typeflag: UInt8, mode: UInt32, uid: Int64, gid: Int64, size: Int64,
                        mtime: Int64, link: [UInt8]) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: [UInt8], _ offset: Int, _ length: Int) {
            for (i, b) in bytes.prefix(length).enumerated() { h[offset + i] = b }
        }
        func octal(_ value: Int64, _ offset: Int, _ length: Int) {
            let digits = String(value, radix: 8)
            put(Array((String(repeating: "0", count: max(0, length - 1 - digits.count)) + digits).utf8), offset, length - 1)
        }
        put(name, 0, 100)
        octal(Int64(mode), 100, 8)
        octal(uid, 108, 8)
        octal(gid, 116, 8)
        octal(size, 124, 12)
        octal(mtime, 136, 12)
        put(Array("        ".utf8), 148, 8)
        h[156] = typeflag
        put(link, 157, 100)
        put(Array("ustar\0".utf8), 257, 6)
        put(Array("00".utf8), 263, 2)
        octal(0, 329, 8)
        octal(0, 337, 8)
        let sum = h.reduce(Int64(0)) { $0 + Int64($1) }
        octal(sum, 148, 7)
        h[155] = UInt8(ascii: " ")
        return h
    }
}
