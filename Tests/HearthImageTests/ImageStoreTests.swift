#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Foundation
@testable import HearthImage
import HearthCore
import Synchronization
import XCTest

final class ImageStoreTests: ImageTestCase {
    private var storeRoot: String { base + "/state" }

    private func layer(_ build: (inout TarWriter) -> Void, gzip: Bool = true) -> LayoutBuilder.Layer {
        var tar = TarWriter()
        build(&tar)
        return LayoutBuilder.Layer(tar: tar.finished(), gzip: gzip)
    }

    private var baseLayer: LayoutBuilder.Layer {
        layer { t in
            t.dir("./")
            t.dir("etc")
            t.file("etc/os-release", "ID=test\n")
            t.dir("usr/bin")
            t.file("usr/bin/python3", "#!/bin/false\n", mode: 0o755)
            t.symlink("bin", "usr/bin")
            t.dir("tmp", mode: 0o1777)
            t.file("tmp/junk", "j")
            t.dir("var/cache")
            t.file("var/cache/x", "x")
        }
    }

    private var appLayer: LayoutBuilder.Layer {
        layer({ t in
            t.file("tmp/.wh.junk", "")
            t.file("var/cache/.wh..wh..opq", "")
            t.dir("app")
            t.file("app/main.py", "print('hi')\n")
        }, gzip: false)
    }

    private func files(in dir: String) -> Set<String> {
        var out = Set<String>()
        if let e = FileManager.default.enumerator(atPath: dir) { while let p = e.nextObject() as? String { out.insert(p) } }
        return out
    }

    /// Two layers (gzip, then plain with a whiteout and an opaque dir),
    /// imported, resolved, listed, removed.
    func testImportOCILayout() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let manifest = try layout.image([baseLayer, appLayer], config: [
            "Env": ["PATH=/usr/bin", "A=1"], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["python3"],
            "WorkingDir": "/app", "User": "1000:1000",
        ])
        try layout.writeIndex([descriptor(manifest, ref: "example.com/app:1.0")])
        let store = try ImageStore(root: storeRoot)
        let events = Mutex<[ImportProgress]>([])
        let summary = try store.importImage(path: layout.dir, name: nil) { p in events.withLock { $0.append(p) } }
        XCTAssertEqual(summary.name, "example.com/app:1.0")
        XCTAssertEqual(summary.layers, 2)
        XCTAssertEqual(summary.created, "2024-01-02T03:04:05Z")
        let contentBytes: [String] = ["ID=test\n", "#!/bin/false\n", "j", "x", "print('hi')\n"]
        let expectedSize: Int = contentBytes.map { $0.utf8.count }.reduce(0, +)
        XCTAssertEqual(summary.size, Int64(expectedSize))
        let progress = events.withLock { $0 }
        XCTAssertEqual(progress.first?.layer, 1)
        XCTAssertEqual(progress.last?.layer, 2)
        XCTAssertEqual(progress.last?.layers, 2)
        XCTAssertEqual(progress.last?.bytes, progress.last?.totalBytes)

        let image = try store.resolve("example.com/app:1.0")
        XCTAssertEqual(image.id, summary.id)
        XCTAssertEqual(image.layerPaths.count, 2)
        XCTAssertEqual(image.layerPaths[0], "\(storeRoot)/layers/\(Digest.of(baseLayer.tar).hex)")
        XCTAssertEqual(image.layerPaths[1], "\(storeRoot)/layers/\(Digest.of(appLayer.tar).hex)")
        XCTAssertEqual(image.env, ["PATH=/usr/bin", "A=1"])
        XCTAssertEqual(image.entrypoint, ["/bin/sh", "-c"])
        XCTAssertEqual(image.cmd, ["python3"])
        XCTAssertEqual(image.workingDir, "/app")
        XCTAssertEqual(image.user, "1000:1000")

        let top = image.layerPaths[1]
        XCTAssertEqual(lstatPath(top + "/tmp/junk")?.st_mode ?? 0 & S_IFMT, S_IFCHR)
        XCTAssertEqual(lstatPath(top + "/tmp/junk")?.st_rdev, 0)
        XCTAssertEqual(xattr(top + "/var/cache", "trusted.overlay.opaque"), [UInt8(ascii: "y")])
        XCTAssertEqual(readString(top + "/app/main.py"), "print('hi')\n")
        XCTAssertEqual(readString(image.layerPaths[0] + "/usr/bin/python3"), "#!/bin/false\n")
        XCTAssertEqual((lstatPath(storeRoot + "/layers")?.st_mode ?? 0) & 0o777, 0o700)

        XCTAssertEqual(try store.list(), [summary])
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), [])

        // A second store on the same root sees the same state.
        XCTAssertEqual(try ImageStore(root: storeRoot + "/").list(), [summary])

        try store.remove(name: "example.com/app:1.0")
        XCTAssertEqual(try store.list(), [])
        XCTAssertEqual(directoryEntries(storeRoot + "/layers"), [])
        assertHearthError(.imageNotFound, contains: ["\"example.com/app:1.0\" not found", "hearth image import PATH --name example.com/app:1.0"]) {
            _ = try store.resolve("example.com/app:1.0")
        }
        assertHearthError(.imageNotFound, contains: ["not found"]) { try store.remove(name: "example.com/app:1.0") }
    }

    func testSharedLayersAreReferenceCounted() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let other = layer { $0.file("other", "o") }
        let a = try layout.image([baseLayer, appLayer])
        let b = try layout.image([baseLayer, other], config: ["Cmd": ["b"]])
        try layout.writeIndex([descriptor(a, ref: "a:1"), descriptor(b, ref: "b:1")])
        let store = try ImageStore(root: storeRoot)
        _ = try store.importImage(path: layout.dir, name: "a:1")
        let b1 = try store.importImage(path: layout.dir, name: "b:1")
        XCTAssertEqual(try store.resolve("b:1").cmd, ["b"])
        let baseHex = Digest.of(baseLayer.tar).hex
        XCTAssertEqual(Set(directoryEntries(storeRoot + "/layers")),
                       [baseHex, Digest.of(appLayer.tar).hex, Digest.of(other.tar).hex])
        XCTAssertEqual(try store.list().map(\.name), ["a:1", "b:1"])

        try store.remove(name: "a:1")
        XCTAssertEqual(Set(directoryEntries(storeRoot + "/layers")), [baseHex, Digest.of(other.tar).hex])
        XCTAssertEqual(try store.list(), [b1])
        XCTAssertEqual(try store.resolve("b:1").layerPaths.count, 2)

        // Re-importing a name replaces the record; the layer it no longer uses goes.
        _ = try store.importImage(path: layout.dir, name: "a:1")
        _ = try store.importImage(path: layout.dir, name: "b:1")
        let replaced = try store.importImage(path: layout.dir, name: "b:1")
        XCTAssertEqual(replaced.id, b1.id)
        try layout.writeIndex([descriptor(a, ref: "b:1")])
        _ = try store.importImage(path: layout.dir, name: "b:1")
        XCTAssertEqual(try store.resolve("b:1").id, try store.resolve("a:1").id)
        XCTAssertEqual(Set(directoryEntries(storeRoot + "/layers")), [baseHex, Digest.of(appLayer.tar).hex])

        try store.remove(name: "a:1")
        try store.remove(name: "b:1")
        XCTAssertEqual(directoryEntries(storeRoot + "/layers"), [])
    }

    func testConcurrentImports() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let shared = baseLayer
        var descriptors: [[String: Any]] = []
        for i in 0..<6 {
            let own = layer { $0.file("n", "\(i)") }
            descriptors.append(descriptor(try layout.image([shared, own], config: ["Cmd": ["\(i)"]]), ref: "img:\(i)"))
        }
        try layout.writeIndex(descriptors)
        let store = try ImageStore(root: storeRoot)
        let errors = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 12) { i in
            do {
                if i < 6 {
                    _ = try store.importImage(path: layout.dir, name: "img:\(i)")
                } else {
                    _ = try? store.remove(name: "img:\(i - 6)")
                    _ = try store.list()
                }
            } catch {
                errors.withLock { $0.append("\(error)") }
            }
        }
        XCTAssertEqual(errors.withLock { $0 }, [])
        // Whatever interleaving happened, every listed image resolves.
        for summary in try store.list() {
            let image = try store.resolve(summary.name)
            for path in image.layerPaths { XCTAssertNotNil(lstatPath(path), path) }
        }
        for i in 0..<6 { _ = try store.importImage(path: layout.dir, name: "img:\(i)") }
        XCTAssertEqual(try store.list().count, 6)
        XCTAssertEqual(directoryEntries(storeRoot + "/layers").count, 7)
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), [])
    }

    func testDigestMismatchesRejected() throws {
        let store = try ImageStore(root: storeRoot)
        // Blob digest: the manifest names a digest the content does not have.
        let layout = try LayoutBuilder(base + "/blob")
        let wrong = "sha256:" + String(repeating: "0", count: 64)
        try layout.writeIndex([try layout.image([baseLayer], layerDigests: [wrong])])
        assertHearthError(.invalidImage, contains: ["layer \(wrong)", "blob digest mismatch"]) {
            _ = try store.importImage(path: layout.dir, name: "x")
        }
        // Diff ID: the config lists another uncompressed digest.
        let layout2 = try LayoutBuilder(base + "/diff")
        try layout2.writeIndex([try layout2.image([baseLayer], diffIDs: [wrong])])
        assertHearthError(.invalidImage, contains: ["diff ID mismatch", wrong]) {
            _ = try store.importImage(path: layout2.dir, name: "x")
        }
        // A corrupted config blob.
        let layout3 = try LayoutBuilder(base + "/config")
        let m = try layout3.image([baseLayer])
        let configDigest = try XCTUnwrap((try layout3.manifest(m)["config"] as? [String: Any])?["digest"] as? String)
        try write("\(layout3.dir)/blobs/sha256/\(configDigest.dropFirst(7))", Array("{}".utf8))
        try layout3.writeIndex([m])
        assertHearthError(.invalidImage, contains: ["mismatch"]) { _ = try store.importImage(path: layout3.dir, name: "x") }
        // Size mismatch in a descriptor.
        var sized = m
        sized["size"] = 1
        try layout3.writeIndex([sized])
        assertHearthError(.invalidImage, contains: ["size"]) { _ = try store.importImage(path: layout3.dir, name: "x") }

        XCTAssertEqual(directoryEntries(storeRoot + "/layers"), [])
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), [])
        XCTAssertEqual(try store.list(), [])
    }

    func testUnsafeLayerLeavesNothingBehind() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let evil = layer { t in
            t.file("ok", "fine")
            t.symlink("link", self.base + "/outside")
            t.file("link/pwned", "x")
        }
        try FileManager.default.createDirectory(atPath: base + "/outside", withIntermediateDirectories: true)
        try layout.writeIndex([try layout.image([baseLayer, evil])])
        let store = try ImageStore(root: storeRoot)
        assertHearthError(.unsafeLayer, contains: ["entry \"link/pwned\"", "is a symlink"]) {
            _ = try store.importImage(path: layout.dir, name: "evil")
        }
        XCTAssertEqual(directoryEntries(base + "/outside"), [])
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), [])
        XCTAssertEqual(try store.list(), [])
    }

    func testNames() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let m = try layout.image([baseLayer])
        let store = try ImageStore(root: storeRoot)
        try layout.writeIndex([descriptor(m, ref: "3.11")])   // a bare tag (umoci, docker) is not a name
        assertHearthError(.invalidArgument, contains: ["--name"]) { _ = try store.importImage(path: layout.dir, name: nil) }
        try layout.writeIndex([m])
        assertHearthError(.invalidArgument, contains: ["--name"]) { _ = try store.importImage(path: layout.dir, name: nil) }
        XCTAssertEqual(try store.importImage(path: layout.dir, name: "hearth/python").name, "hearth/python:latest")
        XCTAssertEqual(try store.resolve("hearth/python").name, "hearth/python:latest")
        XCTAssertEqual(try store.resolve(try store.resolve("hearth/python").id).name, "hearth/python:latest")
        assertHearthError(.invalidArgument, contains: ["not valid"]) { _ = try store.importImage(path: layout.dir, name: "Bad Name") }
        assertHearthError(.notFound, contains: ["does not exist"]) { _ = try store.importImage(path: base + "/nope", name: "a") }
    }

    func testPlatformSelection() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let amd = try layout.image([baseLayer], arch: "amd64", config: ["Cmd": ["amd64"]])
        let arm = try layout.image([appLayer], arch: "arm64", config: ["Cmd": ["arm64"]])
        // An attestation-like entry and a nested index that holds amd64.
        let nested = try layout.index([
            descriptor(arm, platform: ("linux", "arm64", "v8")),
            descriptor(amd, platform: ("linux", "amd64", nil)),
            descriptor(arm, platform: ("unknown", "unknown", nil)),
        ])
        try layout.writeIndex([descriptor(nested, ref: "example/multi:1")])
        let store = try ImageStore(root: storeRoot)
        let summary = try store.importImage(path: layout.dir, name: nil)
        XCTAssertEqual(summary.name, "example/multi:1")
        XCTAssertEqual(try store.resolve("example/multi:1").cmd, ["amd64"])

        // No amd64 anywhere: the error lists what there is.
        let armOnly = try layout.index([
            descriptor(arm, platform: ("linux", "arm64", "v8")),
            descriptor(arm, platform: ("linux", "arm", "v7")),
        ])
        try layout.writeIndex([armOnly])
        assertHearthError(.invalidImage, contains: ["no linux/amd64 image", "linux/arm64/v8", "linux/arm/v7"]) {
            _ = try store.importImage(path: layout.dir, name: "x")
        }
        // A single-platform layout whose config is for another architecture.
        try layout.writeIndex([arm])
        assertHearthError(.invalidImage, contains: ["linux/arm64", "this host runs linux/amd64"]) {
            _ = try store.importImage(path: layout.dir, name: "x")
        }
        // Several untagged images in one layout: ambiguous without --name.
        try layout.writeIndex([descriptor(amd, ref: "one"), descriptor(arm, ref: "two")])
        assertHearthError(.invalidImage, contains: ["2 images", "one", "two"]) {
            _ = try store.importImage(path: layout.dir, name: "x")
        }
        XCTAssertEqual(try store.importImage(path: layout.dir, name: "one").name, "one:latest")
    }

    func testUnsupportedMediaTypes() throws {
        let layout = try LayoutBuilder(base + "/layout")
        var zstd = baseLayer
        zstd.mediaType = "application/vnd.oci.image.layer.v1.tar+zstd"
        try layout.writeIndex([try layout.image([zstd])])
        let store = try ImageStore(root: storeRoot)
        assertHearthError(.invalidImage, contains: ["unsupported media type", "zstd"]) {
            _ = try store.importImage(path: layout.dir, name: "x")
        }
        var odd = baseLayer
        odd.mediaType = "application/x-something"
        try layout.writeIndex([try layout.image([odd])])
        assertHearthError(.invalidImage, contains: ["unsupported media type application/x-something"]) {
            _ = try store.importImage(path: layout.dir, name: "x")
        }
    }

    /// The layout as a tar (OCI archive), plain and gzipped.
    func testOCIArchives() throws {
        let layout = try LayoutBuilder(base + "/layout")
        try layout.writeIndex([descriptor(try layout.image([baseLayer, appLayer]), ref: "arch/ive:1")])
        let tar = try tarDirectory(layout.dir)
        try write(base + "/image.tar", tar)
        try write(base + "/image.tar.gz", try Gzip.compress(tar))
        let store = try ImageStore(root: storeRoot)
        let plain = try store.importImage(path: base + "/image.tar", name: nil)
        XCTAssertEqual(plain.name, "arch/ive:1")
        let gz = try store.importImage(path: base + "/image.tar.gz", name: "gz:1")
        XCTAssertEqual(gz.id, plain.id)
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), [])
        XCTAssertEqual(readString(try store.resolve("gz:1").layerPaths[1] + "/app/main.py"), "print('hi')\n")
    }

    /// `docker save` before Docker 25: manifest.json, `<hex>.json` config,
    /// `<id>/layer.tar` (one of them a symlink to another's, as docker writes
    /// duplicates).
    func testDockerSaveArchive() throws {
        let l1 = baseLayer.tar
        let l2 = appLayer.tar
        let config = try json([
            "architecture": "amd64", "os": "linux", "created": "2023-05-06T07:08:09Z",
            "config": ["Env": ["X=1"], "Cmd": ["sh"], "WorkingDir": "/w"],
            "rootfs": ["type": "layers", "diff_ids": [Digest.of(l1).description, Digest.of(l2).description, Digest.of(l1).description]],
        ])
        let configName = "\(Digest.of(config).hex).json"
        let manifest = try json([[
            "Config": configName, "RepoTags": ["legacy/app:2"],
            "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
        ]])
        var tar = TarWriter()
        tar.dir("aaa")
        tar.add("aaa/layer.tar", .file(l1))
        tar.dir("bbb")
        tar.add("bbb/layer.tar", .file(l2))
        tar.dir("ccc")
        tar.symlink("ccc/layer.tar", "../aaa/layer.tar")
        tar.add(configName, .file(config))
        tar.add("manifest.json", .file(manifest))
        tar.add("repositories", .file(Array("{}".utf8)))
        try write(base + "/docker.tar", tar.finished())

        let store = try ImageStore(root: storeRoot)
        let summary = try store.importImage(path: base + "/docker.tar", name: nil)
        XCTAssertEqual(summary.name, "legacy/app:2")
        XCTAssertEqual(summary.id, Digest.of(config).description)
        XCTAssertEqual(summary.layers, 3)
        let image = try store.resolve("legacy/app:2")
        XCTAssertEqual(image.env, ["X=1"])
        XCTAssertEqual(image.workingDir, "/w")
        // The repeated layer is kept at its topmost position only.
        XCTAssertEqual(image.layerPaths.map { String($0.split(separator: "/").last ?? "") },
                       [Digest.of(l2).hex, Digest.of(l1).hex])

        // Config tampering is caught through its file name.
        var bad = TarWriter()
        bad.add(configName, .file(Array("{\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}".utf8)))
        bad.add("manifest.json", .file(try json([["Config": configName, "RepoTags": ["x:1"], "Layers": []]])))
        try write(base + "/bad.tar", bad.finished())
        assertHearthError(.invalidImage, contains: ["digest mismatch"]) { _ = try store.importImage(path: base + "/bad.tar", name: nil) }
    }

    /// Docker 25+: an OCI layout whose manifest.json carries the RepoTags,
    /// and whose index ref.name is only the tag.
    func testDockerSaveOCIArchive() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let m = try layout.image([baseLayer])
        var d = descriptor(m, ref: "1.0")
        d["annotations"] = ["org.opencontainers.image.ref.name": "1.0", "io.containerd.image.name": "docker.io/library/app:1.0"]
        try layout.writeIndex([d])
        let manifestObject = try layout.manifest(m)
        let config = try XCTUnwrap((manifestObject["config"] as? [String: Any])?["digest"] as? String)
        let layerDigest = try XCTUnwrap(((manifestObject["layers"] as? [[String: Any]])?.first)?["digest"] as? String)
        try write(layout.dir + "/manifest.json", try json([[
            "Config": "blobs/sha256/\(config.dropFirst(7))", "RepoTags": ["app:1.0"],
            "Layers": ["blobs/sha256/\(layerDigest.dropFirst(7))"],
        ]]))
        try write(base + "/docker25.tar", try tarDirectory(layout.dir))
        let store = try ImageStore(root: storeRoot)
        XCTAssertEqual(try store.importImage(path: base + "/docker25.tar", name: nil).name, "app:1.0")
        try FileManager.default.removeItem(atPath: layout.dir + "/manifest.json")
        // Docker's default registry in its familiar form (the same name as app:1.0).
        XCTAssertEqual(try store.importImage(path: layout.dir, name: nil).name, "app:1.0")
    }

    /// What a pull does: the config checked, blob files installed one by
    /// one, the image recorded only at the commit; an abandoned pull takes
    /// the layers it installed with it.
    func testPulledImageIsRecordedOnlyWhenComplete() throws {
        let layout = try LayoutBuilder(base + "/layout")
        let m = try layout.manifest(try layout.image([baseLayer, appLayer]))
        let config = try XCTUnwrap(m["config"] as? [String: Any])
        let configDigest = try XCTUnwrap(config["digest"] as? String)
        let configBytes = Array(try Data(contentsOf: URL(fileURLWithPath: layout.dir + "/blobs/sha256/" + configDigest.dropFirst(7))))
        let layers = try XCTUnwrap(m["layers"] as? [[String: Any]]).map {
            BlobDescriptor(mediaType: $0["mediaType"] as? String, digest: $0["digest"] as? String ?? "",
                           size: Int64($0["size"] as? Int ?? 0), platform: nil)
        }
        let configDescriptor = BlobDescriptor(mediaType: MediaType.ociConfig, digest: configDigest,
                                              size: Int64(configBytes.count), platform: nil)
        // A fresh copy of layer i's blob, as a download leaves it: installLayer removes it.
        var copies = 0
        let blobPath = { (i: Int) throws -> String in
            copies += 1
            let path = "\(self.base)/blob-\(copies)"
            try FileManager.default.copyItem(atPath: layout.dir + "/blobs/sha256/" + layers[i].digest.dropFirst(7), toPath: path)
            return path
        }
        let store = try ImageStore(root: storeRoot)

        // A config that is not what the manifest says is refused at once.
        assertHearthError(.invalidImage, contains: ["image config", "digest mismatch"]) {
            _ = try store.preparePull(manifestDigest: "sha256:" + String(repeating: "0", count: 64),
                                      config: configBytes + [32], configDescriptor: BlobDescriptor(
                                          mediaType: nil, digest: configDigest, size: Int64(configBytes.count + 1), platform: nil),
                                      layers: layers)
        }
        // Installed layers of an abandoned pull go; nothing is recorded.
        let abandoned = try store.preparePull(manifestDigest: "sha256:" + String(repeating: "1", count: 64),
                                              config: configBytes, configDescriptor: configDescriptor, layers: layers)
        XCTAssertEqual(abandoned.layers.map(\.cached), [false, false])
        let first = try blobPath(0)
        try store.installLayer(abandoned, at: 0, blobFile: first)
        XCTAssertEqual(directoryEntries(storeRoot + "/layers").count, 1)
        XCTAssertNil(lstatPath(first), "the blob file goes once its layer is unpacked")
        assertHearthError(.internal, contains: ["not installed"]) { _ = try store.commitPull(abandoned, name: "app:1") }
        store.abandonPull(abandoned)
        XCTAssertEqual(directoryEntries(storeRoot + "/layers"), [])
        XCTAssertEqual(try store.list(), [])

        // A blob file that is not the layer's blob is refused; the rest goes on.
        let pulled = try store.preparePull(manifestDigest: "sha256:" + String(repeating: "2", count: 64),
                                           config: configBytes, configDescriptor: configDescriptor, layers: layers)
        let wrong = try blobPath(1)
        assertHearthError(.invalidImage, contains: ["mismatch"]) { try store.installLayer(pulled, at: 0, blobFile: wrong) }
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), [])
        try store.installLayer(pulled, at: 0, blobFile: blobPath(0))
        try store.installLayer(pulled, at: 1, blobFile: blobPath(1))
        let summary = try store.commitPull(pulled, name: "docker.io/library/app:1")
        XCTAssertEqual(summary.name, "app:1")
        XCTAssertEqual(summary.id, configDigest)
        XCTAssertEqual(try store.resolve("app:1").layerPaths.count, 2)
        XCTAssertEqual(try store.resolve("docker.io/app:1").id, configDigest)
        XCTAssertEqual(try store.resolve("app@sha256:" + String(repeating: "2", count: 64)).id, configDigest)
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), [])
        // A second pull of the same layers finds them cached.
        let again = try store.preparePull(manifestDigest: "sha256:" + String(repeating: "2", count: 64),
                                          config: configBytes, configDescriptor: configDescriptor, layers: layers)
        XCTAssertEqual(again.layers.map(\.cached), [true, true])
        XCTAssertEqual(try store.commitPull(again, name: "app@sha256:" + String(repeating: "2", count: 64)).layers, 2)
        try store.remove(name: "app:1")
        try store.remove(name: "app@sha256:" + String(repeating: "2", count: 64))
        XCTAssertEqual(directoryEntries(storeRoot + "/layers"), [])
    }

    /// A layout written by umoci (a real tool) from a small directory.
    func testUmociLayout() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/umoci") else { throw XCTSkip("umoci is not installed") }
        let layout = base + "/umoci"
        func umoci(_ args: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/umoci")
            p.arguments = args
            try p.run()
            p.waitUntilExit()
            XCTAssertEqual(p.terminationStatus, 0, "umoci \(args)")
        }
        try umoci(["init", "--layout", layout])
        try umoci(["new", "--image", layout + ":t"])
        try umoci(["unpack", "--image", layout + ":t", base + "/bundle"])
        let rootfs = base + "/bundle/rootfs"
        try FileManager.default.createDirectory(atPath: rootfs + "/etc/sub", withIntermediateDirectories: true)
        try write(rootfs + "/etc/sub/file", Array("umoci".utf8))
        XCTAssertEqual(symlink("sub/file", rootfs + "/etc/link"), 0)
        try umoci(["repack", "--image", layout + ":t", base + "/bundle"])
        // Second layer: a deletion, which umoci writes as a whiteout (diffed
        // against a fresh unpack: a bundle keeps its original baseline).
        try umoci(["unpack", "--image", layout + ":t", base + "/bundle2"])
        try FileManager.default.removeItem(atPath: base + "/bundle2/rootfs/etc/link")
        try umoci(["repack", "--image", layout + ":t", base + "/bundle2"])
        try umoci(["config", "--image", layout + ":t", "--config.cmd", "python3"])

        let store = try ImageStore(root: storeRoot)
        let summary = try store.importImage(path: layout, name: "umoci/test:t")
        let image = try store.resolve("umoci/test:t")
        XCTAssertEqual(image.cmd, ["python3"])
        XCTAssertEqual(image.layerPaths.count, summary.layers)
        XCTAssertTrue(image.layerPaths.contains { readString($0 + "/etc/sub/file") == "umoci" })
        XCTAssertTrue(image.layerPaths.contains {
            let st = lstatPath($0 + "/etc/link")
            return st.map { ($0.st_mode & S_IFMT) == S_IFCHR && $0.st_rdev == 0 } ?? false
        }, "the deletion became a 0:0 whiteout")
    }

    /// What a crashed predecessor left in tmp/ is removed when a store opens;
    /// entries of live processes are not.
    func testStaleScratchRemovedOnOpen() throws {
        _ = try ImageStore(root: storeRoot)
        let dead = storeRoot + "/tmp/99999999-1-layer-abc"   // above pid_max: no such process
        let live = storeRoot + "/tmp/1-1-layer-abc"          // pid 1 exists
        for dir in [dead, live] {
            try FileManager.default.createDirectory(atPath: dir + "/usr/bin", withIntermediateDirectories: true)
            XCTAssertEqual(symlink("/etc", dir + "/usr/bin/etc"), 0)
        }
        _ = try ImageStore(root: storeRoot)
        XCTAssertEqual(directoryEntries(storeRoot + "/tmp"), ["1-1-layer-abc"])
        XCTAssertNotNil(lstatPath("/etc/passwd"), "removal does not follow symlinks")
    }

    /// Imports the default image (rootfs/build) when it has been built;
    /// HEARTH_TEST_DEFAULT_IMAGE names its layout.
    func testDefaultImageIfBuilt() throws {
        guard let path = ProcessInfo.processInfo.environment["HEARTH_TEST_DEFAULT_IMAGE"] else {
            throw XCTSkip("set HEARTH_TEST_DEFAULT_IMAGE to the rootfs/build output to import it")
        }
        let store = try ImageStore(root: storeRoot)
        let started = Date()
        let summary = try store.importImage(path: path, name: "hearth/python:3.11")
        let cold = Date().timeIntervalSince(started)
        let again = Date()
        _ = try store.importImage(path: path, name: "hearth/python:3.11")
        let warm = Date().timeIntervalSince(again)
        print("default image: \(summary.layers) layer(s), \(summary.size) bytes unpacked; import \(String(format: "%.2f", cold)) s, re-import \(String(format: "%.3f", warm)) s")
        let image = try store.resolve("hearth/python:3.11")
        XCTAssertTrue(image.layerPaths.contains { lstatPath($0 + "/usr/bin/python3") != nil })
        XCTAssertEqual(image.cmd, ["python3"])
    }
}
