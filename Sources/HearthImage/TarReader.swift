import HearthCore

/// One archive member, after GNU long-name and PAX extended headers have been
/// applied to it.
public struct TarEntry {
    public enum Kind: Equatable {
        case regular
        case hardLink
        case symlink
        case characterDevice
        case blockDevice
        case directory
        case fifo
    }

    public var kind: Kind
    /// Raw bytes as the archive has them: tar names are not necessarily UTF-8.
    public var path: [UInt8]
    public var linkTarget: [UInt8]
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Bytes of content that follow the header (0 for header-only kinds).
    public var size: Int64
    var mtimeSeconds: Int64
    var mtimeNanoseconds: Int
    var deviceMajor: UInt32
    var deviceMinor: UInt32
    /// From PAX `SCHILY.xattr.NAME` records, in archive order.
    public var xattrs: [(name: String, value: [UInt8])]

    /// The path for messages.
    public var displayPath: String { TarEntry.display(path) }

    /// Bytes rendered for a message: UTF-8 where valid, control characters
    /// and quotes escaped so a hostile name cannot forge message text.
    public static func display(_ bytes: [UInt8]) -> String {
        var out = ""
        for scalar in String(decoding: bytes, as: UTF8.self).unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    out += "\\x" + String(scalar.value, radix: 16)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }
}

/// A streaming tar reader: ustar, GNU (`L`/`K` long names, base-256
/// numbers) and PAX (`x` records for path, linkpath, size, uid, gid, mtime,
/// `SCHILY.xattr.*`; `g` global headers are ignored). It never seeks
/// backwards and reads each byte of its source once.
public final class TarReader {
    /// Upper bound for PAX records and GNU long names: real ones are a few
    /// hundred bytes, and they are held in memory.
    static let maxExtendedHeader: Int64 = 1 << 20

    private let source: ByteSource
    private let what: String
    private let buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private var sourceEnded = false
    /// Stream offset of `buffer[start]`.
    private var consumed: Int64 = 0
    /// Content bytes of the current entry not yet read, and the padding
    /// that follows them up to the next 512-byte block.
    private var remaining: Int64 = 0
    private var padding: Int64 = 0
    private var finished = false

    /// Stream offset of the current entry's content.
    private(set) var contentOffset: Int64 = 0

    /// `what` names the archive in errors (`layer sha256:…`, a file path).
    public init(_ source: ByteSource, what: String, bufferSize: Int = 1 << 20) {
        self.source = source
        self.what = what
        buffer = .allocate(byteCount: max(bufferSize, 4096), alignment: 4096)
    }

    deinit {
        buffer.deallocate()
    }

    private func invalid(_ message: String) -> HearthError {
        HearthError(.invalidImage, "\(what): invalid tar archive: \(message)")
    }

    // MARK: buffer

    private var available: Int { end - start }

    private func advance(_ n: Int) {
        start += n
        consumed += Int64(n)
    }

    /// Makes at least `need` bytes available; false when the stream ends first.
    private func fill(_ need: Int) throws -> Bool {
        if available >= need { return true }
        if start > 0 {
            if available > 0, let base = buffer.baseAddress {
                (base).copyMemory(from: base + start, byteCount: available)
            }
            end = available
            start = 0
        }
        while available < need && !sourceEnded {
            let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
            if n == 0 { sourceEnded = true } else { end += n }
        }
        return available >= need
    }

    /// Discards `count` bytes: buffered ones first, then the source's own
    /// skip (a seek for files, a read for hashers).
    private func skipBytes(_ count: Int64) throws {
        var left = count
        let fromBuffer = Int(min(left, Int64(available)))
        advance(fromBuffer)
        left -= Int64(fromBuffer)
        if left > 0 {
            let skipped = try source.skip(left)
            consumed += skipped
            if skipped < left { throw invalid("unexpected end of archive") }
        }
    }

    // MARK: content

    /// Passes the current entry's remaining content to `body` in chunks
    /// (zero-copy views into the read buffer, valid during the call only).
    func readContent(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        while remaining > 0 {
            if available == 0 {
                guard try fill(1) else { throw invalid("unexpected end of archive inside an entry") }
            }
            let n = Int(min(remaining, Int64(available)))
            try body(UnsafeRawBufferPointer(rebasing: buffer[start..<start + n]))
            advance(n)
            remaining -= Int64(n)
        }
    }

    /// The current entry's content in memory, for extended headers.
    private func readSmallContent(limit: Int64, kind: String) throws -> [UInt8] {
        guard remaining <= limit else {
            throw invalid("\(kind) of \(remaining) bytes is larger than the limit of \(limit)")
        }
        var out: [UInt8] = []
        out.reserveCapacity(Int(remaining))
        try readContent { out.append(contentsOf: $0) }
        return out
    }

    /// Reads the rest of the stream, so that hashers in front of it see
    /// every byte, including the archive's trailing zero blocks.
    func finish() throws {
        try skipBytes(remaining + padding)
        remaining = 0
        padding = 0
        advance(available)
        try source.drain()
        finished = true
    }

    // MARK: headers

    /// The next entry, or nil at the end of the archive. The previous
    /// entry's unread content is skipped.
    public func next() throws -> TarEntry? {
        if finished { return nil }
        var longName: [UInt8]?
        var longLink: [UInt8]?
        var pax = PaxRecords()

        while true {
            // The unread content of the previous member (or extended
            // header) and its padding.
            try skipBytes(remaining + padding)
            remaining = 0
            padding = 0
            guard try fill(512) else {
                if available == 0 && longName == nil && longLink == nil && pax.isEmpty {
                    // Archives cut right after a member (no zero blocks) are
                    // accepted, as GNU tar and Go do.
                    finished = true
                    return nil
                }
                throw invalid("unexpected end of archive inside a header")
            }
            let headerOffset = consumed
            let block = UnsafeRawBufferPointer(rebasing: buffer[start..<start + 512])
            if block.allSatisfy({ $0 == 0 }) {
                advance(512)
                if try fill(512) {
                    let second = UnsafeRawBufferPointer(rebasing: buffer[start..<start + 512])
                    guard second.allSatisfy({ $0 == 0 }) else {
                        throw invalid("a zero block at offset \(headerOffset) is followed by data")
                    }
                    advance(512)
                }
                finished = true
                return nil
            }
            let header = try Header(block, offset: headerOffset, invalid: invalid)
            advance(512)

            // Content that follows this header in the stream.
            var contentSize = header.size
            if header.isHeaderOnly { contentSize = 0 }
            if header.typeflag == UInt8(ascii: "x") || header.typeflag == UInt8(ascii: "g")
                || header.typeflag == UInt8(ascii: "L") || header.typeflag == UInt8(ascii: "K") {
                contentSize = header.size
            } else if let size = pax.size, !header.isHeaderOnly {
                contentSize = size
            }
            guard contentSize >= 0 else { throw invalid("negative size at offset \(headerOffset)") }
            remaining = contentSize
            padding = (512 - contentSize % 512) % 512
            contentOffset = consumed

            switch header.typeflag {
            case UInt8(ascii: "x"):
                let data = try readSmallContent(limit: TarReader.maxExtendedHeader, kind: "PAX header")
                try pax.parse(data, invalid: invalid)
                continue
            case UInt8(ascii: "g"):
                // Global headers would apply to every later member; images
                // do not use them and honouring them is not required.
                continue
            case UInt8(ascii: "L"):
                longName = trimNULs(try readSmallContent(limit: TarReader.maxExtendedHeader, kind: "GNU long name"))
                continue
            case UInt8(ascii: "K"):
                longLink = trimNULs(try readSmallContent(limit: TarReader.maxExtendedHeader, kind: "GNU long link name"))
                continue
            case UInt8(ascii: "V"):
                continue  // GNU volume label: not a file
            default:
                break
            }

            var path = pax.path ?? longName ?? header.name
            let linkTarget = pax.linkPath ?? longLink ?? header.linkName
            var kind: TarEntry.Kind
            switch header.typeflag {
            case UInt8(ascii: "0"), UInt8(ascii: "7"):
                kind = .regular
            case 0:
                // Pre-POSIX archives mark directories with a trailing slash only.
                kind = path.last == UInt8(ascii: "/") ? .directory : .regular
            case UInt8(ascii: "1"): kind = .hardLink
            case UInt8(ascii: "2"): kind = .symlink
            case UInt8(ascii: "3"): kind = .characterDevice
            case UInt8(ascii: "4"): kind = .blockDevice
            case UInt8(ascii: "5"): kind = .directory
            case UInt8(ascii: "6"): kind = .fifo
            case UInt8(ascii: "D"):
                kind = .directory  // GNU dump directory; its content (a listing) is skipped
            case UInt8(ascii: "S"):
                throw invalid("entry \"\(TarEntry.display(path))\": GNU sparse files are not supported")
            default:
                throw invalid("entry \"\(TarEntry.display(path))\": unsupported entry type '\(TarEntry.display([header.typeflag]))'")
            }
            if pax.sparse {
                throw invalid("entry \"\(TarEntry.display(path))\": PAX sparse files (GNU.sparse.*) are not supported")
            }
            if path.isEmpty { throw invalid("entry at offset \(headerOffset) has an empty name") }
            if path.contains(0) || linkTarget.contains(0) {
                throw invalid("entry \"\(TarEntry.display(path))\": name contains a NUL byte")
            }
            if kind == .directory, path.count > 1, path.last == UInt8(ascii: "/") {
                path.removeLast()
            }
            let uid = pax.uid ?? header.uid
            let gid = pax.gid ?? header.gid
            guard (0...Int64(UInt32.max - 1)).contains(uid), (0...Int64(UInt32.max - 1)).contains(gid) else {
                throw invalid("entry \"\(TarEntry.display(path))\": uid/gid \(uid)/\(gid) is out of range")
            }
            return TarEntry(
                kind: kind, path: path, linkTarget: linkTarget,
                mode: UInt32(truncatingIfNeeded: header.mode) & 0o7777,
                uid: UInt32(uid), gid: UInt32(gid),
                size: kind == .regular ? contentSize : 0,
                mtimeSeconds: pax.mtime?.seconds ?? header.mtime,
                mtimeNanoseconds: pax.mtime?.nanoseconds ?? 0,
                deviceMajor: UInt32(truncatingIfNeeded: header.deviceMajor),
                deviceMinor: UInt32(truncatingIfNeeded: header.deviceMinor),
                xattrs: pax.xattrs)
        }
    }
}

private func trimNULs(_ bytes: [UInt8]) -> [UInt8] {
    if let nul = bytes.firstIndex(of: 0) { return Array(bytes[..<nul]) }
    return bytes
}

/// The fixed 512-byte header block.
private struct Header {
    var name: [UInt8]
    var mode: Int64
    var uid: Int64
    var gid: Int64
    var size: Int64
    var mtime: Int64
    var typeflag: UInt8
    var linkName: [UInt8]
    var deviceMajor: Int64
    var deviceMinor: Int64

    /// Kinds whose size field says nothing about content following them
    /// (as Go's archive/tar treats them).
    var isHeaderOnly: Bool {
        switch typeflag {
        case UInt8(ascii: "1"), UInt8(ascii: "2"), UInt8(ascii: "3"), UInt8(ascii: "4"),
             UInt8(ascii: "5"), UInt8(ascii: "6"):
            return true
        default:
            return false
        }
    }

    init(_ b: UnsafeRawBufferPointer, offset: Int64, invalid: (String) -> HearthError) throws {
        func field(_ from: Int, _ count: Int) -> [UInt8] {
            let slice = b[from..<from + count]
            if let nul = slice.firstIndex(of: 0) { return Array(b[from..<nul]) }
            return Array(slice)
        }
        func number(_ from: Int, _ count: Int, _ name: String) throws -> Int64 {
            guard let v = Header.parseNumber(b[from..<from + count]) else {
                throw invalid("header at offset \(offset): invalid \(name) field")
            }
            return v
        }

        // Checksum: the header's bytes summed with the checksum field read as
        // spaces. Some old tars summed signed bytes; both are accepted.
        let stored = try number(148, 8, "checksum")
        var unsigned: Int64 = 0
        var signed: Int64 = 0
        for i in 0..<512 {
            let byte = (148..<156).contains(i) ? UInt8(ascii: " ") : b[i]
            unsigned += Int64(byte)
            signed += Int64(Int8(bitPattern: byte))
        }
        guard stored == unsigned || stored == signed else {
            throw invalid("header at offset \(offset): checksum mismatch (not a tar archive, or corrupt)")
        }

        typeflag = b[156]
        mode = try number(100, 8, "mode")
        uid = try number(108, 8, "uid")
        gid = try number(116, 8, "gid")
        size = try number(124, 12, "size")
        mtime = try number(136, 12, "mtime")
        linkName = field(157, 100)
        name = field(0, 100)
        let magic = Array(b[257..<263])
        let isUstar = magic == Array("ustar\0".utf8)
        let isGNU = magic == Array("ustar ".utf8)
        if isUstar || isGNU {
            deviceMajor = try number(329, 8, "devmajor")
            deviceMinor = try number(337, 8, "devminor")
        } else {
            deviceMajor = 0
            deviceMinor = 0
        }
        // POSIX ustar splits long paths into prefix + "/" + name. GNU uses
        // the same bytes for atime/ctime, so only the POSIX magic counts.
        if isUstar {
            let prefix = field(345, 155)
            if !prefix.isEmpty { name = prefix + [UInt8(ascii: "/")] + name }
        }
    }

    /// Octal (NUL/space padded) or GNU base-256 (high bit of the first byte set).
    static func parseNumber(_ bytes: Slice<UnsafeRawBufferPointer>) -> Int64? {
        guard let first = bytes.first else { return 0 }
        if first & 0x80 != 0 {
            // Base-256, two's complement, big-endian.
            let negative = first & 0x40 != 0
            var value: UInt64 = 0
            var significant = 0
            for (i, byte) in bytes.enumerated() {
                var v = byte
                if i == 0 { v &= 0x7f; if negative { v |= 0x80 } }
                if negative { v = ~v }
                if significant > 0 || v != 0 { significant += 1 }
                guard significant <= 8 else { return nil }
                value = value << 8 | UInt64(v)
            }
            guard value <= UInt64(Int64.max) else { return nil }
            return negative ? -Int64(value) - 1 : Int64(value)
        }
        var value: Int64 = 0
        var seenDigit = false
        var ended = false
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                if ended { return nil }
                seenDigit = true
                let (m, o1) = value.multipliedReportingOverflow(by: 8)
                let (s, o2) = m.addingReportingOverflow(Int64(byte - UInt8(ascii: "0")))
                if o1 || o2 { return nil }
                value = s
            case UInt8(ascii: " "):
                if seenDigit { ended = true }
            case 0:
                ended = true
            default:
                return nil
            }
        }
        return value
    }
}

/// PAX extended header records (`"%d %s=%s\n"`) for the next member.
private struct PaxRecords {
    var path: [UInt8]?
    var linkPath: [UInt8]?
    var size: Int64?
    var uid: Int64?
    var gid: Int64?
    var mtime: (seconds: Int64, nanoseconds: Int)?
    var xattrs: [(name: String, value: [UInt8])] = []
    var sparse = false
    var isEmpty = true

    mutating func parse(_ data: [UInt8], invalid: (String) -> HearthError) throws {
        isEmpty = false
        var i = 0
        while i < data.count {
            // "<length> <key>=<value>\n", length counting the whole record.
            var length = 0
            var j = i
            while j < data.count, data[j] >= UInt8(ascii: "0"), data[j] <= UInt8(ascii: "9") {
                length = length * 10 + Int(data[j] - UInt8(ascii: "0"))
                guard length <= data.count else { throw invalid("PAX record length exceeds its header") }
                j += 1
            }
            guard j > i, j < data.count, data[j] == UInt8(ascii: " "), length > j - i + 1,
                  i + length <= data.count, data[i + length - 1] == UInt8(ascii: "\n") else {
                throw invalid("malformed PAX record")
            }
            let record = data[(j + 1)..<(i + length - 1)]
            guard let eq = record.firstIndex(of: UInt8(ascii: "=")) else { throw invalid("PAX record without '='") }
            let key = String(decoding: record[record.startIndex..<eq], as: UTF8.self)
            let value = Array(record[(eq + 1)...])
            try apply(key: key, value: value, invalid: invalid)
            i += length
        }
    }

    private mutating func apply(key: String, value: [UInt8], invalid: (String) -> HearthError) throws {
        func decimal() throws -> Int64 {
            guard let text = String(validating: value, as: UTF8.self), let v = Int64(text), v >= 0 else {
                throw invalid("PAX record \(key) has an invalid value")
            }
            return v
        }
        // An empty value removes the field (falls back to the header's).
        switch key {
        case "path": path = value.isEmpty ? nil : value
        case "linkpath": linkPath = value.isEmpty ? nil : value
        case "size": size = value.isEmpty ? nil : try decimal()
        case "uid": uid = value.isEmpty ? nil : try decimal()
        case "gid": gid = value.isEmpty ? nil : try decimal()
        case "mtime":
            if value.isEmpty { mtime = nil; return }
            guard let t = PaxRecords.parseTime(value) else { throw invalid("PAX record mtime has an invalid value") }
            mtime = t
        default:
            if key.hasPrefix("SCHILY.xattr.") {
                let name = String(key.dropFirst("SCHILY.xattr.".count))
                guard !name.isEmpty, !name.utf8.contains(0) else { throw invalid("PAX xattr record with an invalid name") }
                xattrs.removeAll { $0.name == name }
                xattrs.append((name, value))
            } else if key.hasPrefix("GNU.sparse.") {
                sparse = true
            }
            // atime, ctime, uname, gname, comment, charset…: not needed.
        }
    }

    /// `seconds[.fraction]`, possibly negative.
    static func parseTime(_ value: [UInt8]) -> (seconds: Int64, nanoseconds: Int)? {
        guard let text = String(validating: value, as: UTF8.self) else { return nil }
        let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let seconds = Int64(parts[0]) else { return nil }
        var nanos = 0
        if parts.count == 2 {
            let digits = parts[1]
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            let nine = String((digits + "000000000").prefix(9))
            nanos = Int(nine) ?? 0
            if text.hasPrefix("-") && nanos > 0 {
                // -1.5 is 1.5 s before the epoch: -2 s + 0.5 s.
                return (seconds - 1, 1_000_000_000 - nanos)
            }
        }
        return (seconds, nanos)
    }
}
