import Foundation
@testable import HearthImage
import HearthCore
import XCTest

/// An in-memory source that hands out at most `chunk` bytes per read, to
/// exercise buffer boundaries.
final class MemorySource: ByteSource {
    let bytes: [UInt8]
    var offset = 0
    let chunk: Int
    init(_ bytes: [UInt8], chunk: Int = Int.max) { self.bytes = bytes; self.chunk = chunk }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - offset, chunk)
        guard n > 0 else { return 0 }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + n])) }
        offset += n
        return n
    }
}

final class TarReaderTests: XCTestCase {
    private func entries(_ archive: [UInt8], chunk: Int = Int.max, buffer: Int = 1 << 20) throws -> [(TarEntry, [UInt8])] {
        let reader = TarReader(MemorySource(archive, chunk: chunk), what: "test", bufferSize: buffer)
        var out: [(TarEntry, [UInt8])] = []
        while let e = try reader.next() {
            var content: [UInt8] = []
            try reader.readContent { content += $0 }
            out.append((e, content))
        }
        try reader.finish()
        return out
    }

    func testUstarPaxAndGnu() throws {
        let long = String(repeating: "d/", count: 70) + "file.txt"   // 148 bytes: needs PAX or GNU
        let longTarget = "/" + String(repeating: "t", count: 150)
        for style in [TarWriter.LongNames.pax, .gnu] {
            var tar = TarWriter()
            tar.longNames = style
            tar.dir("./etc/", mode: 0o755)
            tar.file("etc/hosts", "127.0.0.1 localhost\n", mode: 0o4755, uid: 1000, gid: 2000, mtime: 1_234_567_890)
            tar.file(long, String(repeating: "x", count: 5000))
            tar.symlink("link", longTarget)
            tar.hardLink("hard", "etc/hosts")
            tar.add("xattrs", .file([1, 2, 3]), xattrs: [("user.a", [0, 1, 2, 255]), ("security.capability", [1])])
            tar.add("paxed", .file([]), paxRecords: [("mtime", Array("1700000000.25".utf8)), ("uid", Array("70000".utf8))])
            let all = try entries(tar.finished(), chunk: 700, buffer: 4096)
            XCTAssertEqual(all.map { $0.0.displayPath },
                           ["./etc", "etc/hosts", long, "link", "hard", "xattrs", "paxed"], "\(style)")
            XCTAssertEqual(all[0].0.kind, .directory)
            let hosts = all[1].0
            XCTAssertEqual(hosts.mode, 0o4755)
            XCTAssertEqual(hosts.uid, 1000)
            XCTAssertEqual(hosts.gid, 2000)
            XCTAssertEqual(hosts.mtimeSeconds, 1_234_567_890)
            XCTAssertEqual(all[1].1, Array("127.0.0.1 localhost\n".utf8))
            XCTAssertEqual(all[2].1.count, 5000)
            XCTAssertEqual(all[3].0.kind, .symlink)
            XCTAssertEqual(String(decoding: all[3].0.linkTarget, as: UTF8.self), longTarget)
            XCTAssertEqual(all[4].0.kind, .hardLink)
            XCTAssertEqual(all[5].0.xattrs.map(\.name), ["user.a", "security.capability"])
            XCTAssertEqual(all[5].0.xattrs[0].value, [0, 1, 2, 255])
            XCTAssertEqual(all[5].1, [1, 2, 3])
            XCTAssertEqual(all[6].0.mtimeSeconds, 1_700_000_000)
            XCTAssertEqual(all[6].0.mtimeNanoseconds, 250_000_000)
            XCTAssertEqual(all[6].0.uid, 70000)
        }
    }

    func testGlobalHeaderIgnoredAndBase256() throws {
        var tar = TarWriter()
        let g = TarWriter.paxRecord("path", Array("ignored".utf8))
        tar.appendMember(tar.header(name: Array("global".utf8), type: UInt8(ascii: "g"), size: g.count), content: g)
        // A header whose size is written in GNU base-256.
        var h = tar.header(name: Array("big".utf8), type: UInt8(ascii: "0"), size: 0)
        for i in 124..<136 { h[i] = 0 }
        h[124] = 0x80
        h[135] = 3
        for i in 148..<156 { h[i] = 32 }
        let sum = h.reduce(0) { $0 + Int($1) }
        let s = Array(String(sum, radix: 8).utf8)
        for i in 0..<8 { h[148 + i] = 0 }
        for (i, b) in (Array(repeating: UInt8(ascii: "0"), count: 6 - s.count) + s).enumerated() { h[148 + i] = b }
        h[155] = 32
        tar.appendMember(h, content: [7, 8, 9])
        let all = try entries(tar.finished())
        XCTAssertEqual(all.count, 1)
        XCTAssertEqual(all[0].0.displayPath, "big")
        XCTAssertEqual(all[0].1, [7, 8, 9])
    }

    func testCorruptAndTruncated() {
        var tar = TarWriter()
        tar.file("a", String(repeating: "y", count: 2000))
        var bad = tar.finished()
        bad[10] ^= 0xff   // breaks the checksum
        XCTAssertThrowsError(try entries(bad)) { XCTAssertTrue("\($0)".contains("checksum"), "\($0)") }
        let truncated = Array(tar.bytes.prefix(1024))
        XCTAssertThrowsError(try entries(truncated)) { XCTAssertTrue("\($0)".contains("unexpected end"), "\($0)") }
        var pax = TarWriter()
        pax.add("s", .file([]), paxRecords: [("GNU.sparse.major", Array("1".utf8))])
        XCTAssertThrowsError(try entries(pax.finished())) { XCTAssertTrue("\($0)".contains("sparse"), "\($0)") }
    }

    /// One pass gives the blob digest (compressed) and the diff ID (plain),
    /// for gzip (multi-member too) and uncompressed input.
    func testDigestsWhileReading() throws {
        var tar = TarWriter()
        tar.file("a", String(repeating: "hello ", count: 10_000))
        tar.file("b", "b")
        let plain = tar.finished()
        let gz = try Gzip.compress(plain)
        let half = plain.count / 2
        let multi = try Gzip.compress(Array(plain[..<half])) + Gzip.compress(Array(plain[half...])) + [0, 0, 0]
        for blob in [plain, gz, multi] {
            let blobHash = HashingSource(MemorySource(blob, chunk: 3000))
            let diffHash = HashingSource(try Compression.decompressing(blobHash, what: "test"))
            let reader = TarReader(diffHash, what: "test", bufferSize: 8192)
            var names: [String] = []
            while let e = try reader.next() { names.append(e.displayPath) }
            try reader.finish()
            try blobHash.drain()
            XCTAssertEqual(names, ["a", "b"])
            XCTAssertEqual(blobHash.digest(), Digest.of(blob))
            XCTAssertEqual(blobHash.count, Int64(blob.count))
            XCTAssertEqual(diffHash.digest(), Digest.of(plain))
        }
        // Corrupt and truncated gzip.
        var broken = gz
        broken[broken.count / 2] ^= 0x55
        XCTAssertThrowsError(try Compression.decompressing(MemorySource(broken), what: "x").drain())
        XCTAssertThrowsError(try Compression.decompressing(MemorySource(Array(gz.prefix(gz.count - 10))), what: "x").drain()) {
            XCTAssertTrue("\($0)".contains("truncated"), "\($0)")
        }
        XCTAssertThrowsError(try Compression.decompressing(MemorySource([0x28, 0xb5, 0x2f, 0xfd, 0]), what: "x")) {
            XCTAssertTrue("\($0)".contains("zstd"), "\($0)")
        }
    }

    func testDigestParsing() throws {
        let hex = String(repeating: "ab", count: 32)
        XCTAssertEqual(try Digest(parsing: "sha256:" + hex, what: "t").hex, hex)
        for bad in ["sha256:" + hex.uppercased(), "sha256:../../etc/passwd", "sha512:" + hex, hex, "sha256:" + hex + "0"] {
            XCTAssertThrowsError(try Digest(parsing: bad, what: "t"), bad)
        }
    }

    func testImageNames() throws {
        XCTAssertEqual(try ImageName.normalize("python"), "python:latest")
        XCTAssertEqual(try ImageName.normalize("hearth/python:3.11"), "hearth/python:3.11")
        XCTAssertEqual(try ImageName.normalize("localhost:5000/a/b"), "localhost:5000/a/b:latest")
        XCTAssertEqual(try ImageName.normalize("Registry.Example.com:443/x:T_1.0-rc"), "Registry.Example.com:443/x:T_1.0-rc")
        for bad in ["", "Python", "a b", "a:", "a:-x", "/a", "a//b", "a@sha256:00", "-a"] {
            XCTAssertThrowsError(try ImageName.normalize(bad), bad)
        }
        XCTAssertNil(ImageName.fromAnnotation("3.11"))
        XCTAssertEqual(ImageName.fromAnnotation("example/app"), "example/app:latest")
    }
}
