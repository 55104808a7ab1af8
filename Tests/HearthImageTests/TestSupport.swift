#if canImport(Glibc)
import Glibc
#endif
import Foundation
@testable import HearthImage
import HearthCore
import XCTest
import HearthOS

/// A small tar writer (ustar + PAX + GNU long names) so tests build the
/// archives they need, hostile ones included, without external tools.
struct TarWriter {
    enum Kind {
        case file([UInt8])
        case directory
        case symlink(String)
        case hardLink(String)
        case characterDevice(UInt32, UInt32)
        case blockDevice(UInt32, UInt32)
        case fifo
    }

    enum LongNames { case pax, gnu }

    private(set) var bytes: [UInt8] = []
    var longNames = LongNames.pax

    mutating func file(_ path: String, _ content: String, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                       mtime: Int = 1_600_000_000, xattrs: [(String, [UInt8])] = []) {
        add(path, .file(Array(content.utf8)), mode: mode, uid: uid, gid: gid, mtime: mtime, xattrs: xattrs)
    }

    mutating func dir(_ path: String, mode: UInt32 = 0o755, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int = 1_600_000_000,
                      xattrs: [(String, [UInt8])] = []) {
        add(path, .directory, mode: mode, uid: uid, gid: gid, mtime: mtime, xattrs: xattrs)
    }

    mutating func symlink(_ path: String, _ target: String) { add(path, .symlink(target), mode: 0o777) }
    mutating func hardLink(_ path: String, _ target: String) { add(path, .hardLink(target)) }

    mutating func add(_ path: String, _ kind: Kind, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                      mtime: Int = 1_600_000_000, xattrs: [(String, [UInt8])] = [], paxRecords: [(String, [UInt8])] = []) {
        var name = Array(path.utf8)
        var link: [UInt8] = []
        var content: [UInt8] = []
        let type: UInt8
        var major: UInt32 = 0
        var minor: UInt32 = 0
        switch kind {
        case .file(let c): type = UInt8(ascii: "0"); content = c
        case .directory: type = UInt8(ascii: "5")
        case .symlink(let t): type = UInt8(ascii: "2"); link = Array(t.utf8)
        case .hardLink(let t): type = UInt8(ascii: "1"); link = Array(t.utf8)
        case .characterDevice(let a, let b): type = UInt8(ascii: "3"); major = a; minor = b
        case .blockDevice(let a, let b): type = UInt8(ascii: "4"); major = a; minor = b
        case .fifo: type = UInt8(ascii: "6")
        }
        var pax = paxRecords
        if name.count > 100 {
            if longNames == .gnu {
                appendMember(header(name: Array("././@LongLink".utf8), type: UInt8(ascii: "L"), size: name.count + 1),
                             content: name + [0])
            } else {
                pax.append(("path", name))
            }
            name = Array(name.prefix(100))
        }
        if link.count > 100 {
            if longNames == .gnu {
                appendMember(header(name: Array("././@LongLink".utf8), type: UInt8(ascii: "K"), size: link.count + 1),
                             content: link + [0])
            } else {
                pax.append(("linkpath", link))
            }
            link = Array(link.prefix(100))
        }
        for (k, v) in xattrs { pax.append(("SCHILY.xattr." + k, v)) }
        if !pax.isEmpty {
            var data: [UInt8] = []
            for (k, v) in pax { data += TarWriter.paxRecord(k, v) }
            appendMember(header(name: Array("PaxHeaders/x".utf8), type: UInt8(ascii: "x"), size: data.count), content: data)
        }
        appendMember(header(name: name, type: type, size: content.count, mode: mode, uid: uid, gid: gid, mtime: mtime,
                            link: link, major: major, minor: minor), content: content)
    }

    static func paxRecord(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let body = Array(" \(key)=".utf8) + value + [10]
        var length = body.count + 1
        while String(length).utf8.count + body.count != length { length = String(length).utf8.count + body.count }
        return Array(String(length).utf8) + body
    }

    /// Appends raw bytes (hand-made headers).
    mutating func raw(_ data: [UInt8]) { bytes += data }

    mutating func appendMember(_ header: [UInt8], content: [UInt8]) {
        bytes += header
        bytes += content
        bytes += [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
    }

    func header(name: [UInt8], type: UInt8, size: Int, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                mtime: Int = 1_600_000_000, link: [UInt8] = [], major: UInt32 = 0, minor: UInt32 = 0) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ offset: Int, _ value: [UInt8]) { for (i, b) in value.enumerated() { h[offset + i] = b } }
        func octal(_ offset: Int, _ width: Int, _ value: Int) {
            let s = String(value, radix: 8)
            put(offset, Array((String(repeating: "0", count: max(0, width - 1 - s.count)) + s).utf8))
        }
        put(0, Array(name.prefix(100)))
        octal(100, 8, Int(mode))
        octal(108, 8, Int(uid))
        octal(116, 8, Int(gid))
        octal(124, 12, size)
        octal(136, 12, mtime)
        h[156] = type
        put(157, Array(link.prefix(100)))
        put(257, Array("ustar\u{0}00".utf8))
        octal(329, 8, Int(major))
        octal(337, 8, Int(minor))
        put(148, Array("        ".utf8))
        let sum = h.reduce(0) { $0 + Int($1) }
        let s = String(sum, radix: 8)
        put(148, Array((String(repeating: "0", count: 6 - s.count) + s).utf8) + [0, 32])
        return h
    }

    /// The archive with its end marker, padded to a 10 KiB record as tar(1) does.
    func finished() -> [UInt8] {
        var out = bytes + [UInt8](repeating: 0, count: 1024)
        out += [UInt8](repeating: 0, count: (10240 - out.count % 10240) % 10240)
        return out
    }
}

/// Builds OCI image layouts (and archives of them) in a test directory.
struct LayoutBuilder {
    let dir: String

    init(_ dir: String) throws {
        self.dir = dir
        try FileManager.default.createDirectory(atPath: dir + "/blobs/sha256", withIntermediateDirectories: true)
        try write(dir + "/oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
    }

    @discardableResult
    func blob(_ bytes: [UInt8]) throws -> String {
        let digest = Digest.of(bytes)
        try write("\(dir)/blobs/sha256/\(digest.hex)", bytes)
        return digest.description
    }

    struct Layer {
        var tar: [UInt8]
        var gzip: Bool
        var mediaType: String?
    }

    /// Writes layers, config and manifest; returns the manifest descriptor.
    func image(_ layers: [Layer], arch: String = "amd64", config: [String: Any] = [:],
               diffIDs override: [String]? = nil, layerDigests: [String]? = nil) throws -> [String: Any] {
        var layerDescriptors: [[String: Any]] = []
        var diffIDs: [String] = []
        for (i, layer) in layers.enumerated() {
            let blob = layer.gzip ? try Gzip.compress(layer.tar) : layer.tar
            var digest = try self.blob(blob)
            if let fake = layerDigests?[i] {
                try write("\(dir)/blobs/sha256/\(fake.dropFirst(7))", blob)
                digest = fake
            }
            layerDescriptors.append([
                "mediaType": layer.mediaType ?? (layer.gzip ? "application/vnd.oci.image.layer.v1.tar+gzip"
                                                            : "application/vnd.oci.image.layer.v1.tar"),
                "digest": digest, "size": blob.count,
            ])
            diffIDs.append(Digest.of(layer.tar).description)
        }
        let configJSON: [String: Any] = [
            "created": "2024-01-02T03:04:05Z", "architecture": arch, "os": "linux",
            "config": config.isEmpty ? ["Env": ["PATH=/usr/bin:/bin"], "Cmd": ["python3"]] : config,
            "rootfs": ["type": "layers", "diff_ids": override ?? diffIDs],
        ]
        let configBytes = try json(configJSON)
        let configDigest = try blob(configBytes)
        let manifest: [String: Any] = [
            "schemaVersion": 2, "mediaType": MediaType.ociManifest,
            "config": ["mediaType": MediaType.ociConfig, "digest": configDigest, "size": configBytes.count],
            "layers": layerDescriptors,
        ]
        let manifestBytes = try json(manifest)
        return ["mediaType": MediaType.ociManifest, "digest": try blob(manifestBytes), "size": manifestBytes.count]
    }

    /// An image index blob over `manifests`; returns its descriptor.
    func index(_ manifests: [[String: Any]]) throws -> [String: Any] {
        let bytes = try json(["schemaVersion": 2, "mediaType": MediaType.ociIndex, "manifests": manifests])
        return ["mediaType": MediaType.ociIndex, "digest": try blob(bytes), "size": bytes.count]
    }

    /// The manifest a descriptor points to, as JSON.
    func manifest(_ d: [String: Any]) throws -> [String: Any] {
        let hex = (d["digest"] as? String ?? "").dropFirst("sha256:".count)
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/blobs/sha256/\(hex)"))
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    func writeIndex(_ manifests: [[String: Any]]) throws {
        try write(dir + "/index.json", json(["schemaVersion": 2, "manifests": manifests]))
    }
}

func json(_ object: Any) throws -> [UInt8] {
    Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
}

func write(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

func descriptor(_ d: [String: Any], platform: (String, String, String?)? = nil, ref: String? = nil) -> [String: Any] {
    var out = d
    if let (os, arch, variant) = platform {
        var p: [String: Any] = ["os": os, "architecture": arch]
        if let variant { p["variant"] = variant }
        out["platform"] = p
    }
    if let ref { out["annotations"] = [Descriptor.refNameAnnotation: ref] }
    return out
}

/// Tars a directory tree (regular files and directories), paths relative to it.
func tarDirectory(_ root: String) throws -> [UInt8] {
    var tar = TarWriter()
    let fm = FileManager.default
    guard let walker = fm.enumerator(atPath: root) else { return tar.finished() }
    var paths: [String] = []
    while let p = walker.nextObject() as? String { paths.append(p) }
    for p in paths.sorted() {
        var isDir: ObjCBool = false
        _ = fm.fileExists(atPath: root + "/" + p, isDirectory: &isDir)
        if isDir.boolValue {
            tar.dir(p)
        } else {
            tar.add(p, .file(Array(try Data(contentsOf: URL(fileURLWithPath: root + "/" + p)))))
        }
    }
    return tar.finished()
}

class ImageTestCase: XCTestCase {
    var base = ""

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("image tests need root (chown, mknod, trusted xattrs)") }
        let dir = "/tmp/hearth-image-test-\(UUID().uuidString)"
        guard mkdir(dir, 0o700) == 0 else { throw SystemError.current("mkdir", dir) }
        base = dir
    }

    override func tearDownWithError() throws {
        if !base.isEmpty { try FS.removeTree(path: base) }
    }

    func lstatPath(_ path: String) -> stat? {
        var st = stat()
        return lstat(path, &st) == 0 ? st : nil
    }

    func xattr(_ path: String, _ name: String) -> [UInt8]? {
        (try? FS.xattr(path, name)) ?? nil
    }

    func readString(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    func directoryEntries(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    /// Asserts `body` throws a HearthError with `code` whose message contains every string in `contains`.
    func assertHearthError(_ code: HearthError.Code, contains: [String], file: StaticString = #filePath, line: UInt = #line,
                           _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("expected \(code) error containing \(contains)", file: file, line: line)
        } catch let e as HearthError {
            XCTAssertEqual(e.code, code, e.message, file: file, line: line)
            for s in contains { XCTAssertTrue(e.message.contains(s), "\"\(e.message)\" lacks \"\(s)\"", file: file, line: line) }
        } catch {
            XCTFail("expected HearthError, got \(error)", file: file, line: line)
        }
    }
}
