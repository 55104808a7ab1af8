import HearthCore
import HearthImage
@testable import HearthRegistry
import NIOHTTP1
import XCTest

final class ImageReferenceTests: XCTestCase {
    private let hex = String(repeating: "ab", count: 32)

    func testDockerHubDefaults() throws {
        let r = try ImageReference.parse("python:3.11-slim")
        XCTAssertEqual(r.registry, "docker.io")
        XCTAssertEqual(r.repository, "library/python")
        XCTAssertEqual(r.tag, "3.11-slim")
        XCTAssertNil(r.digest)
        XCTAssertEqual(r.description, "docker.io/library/python:3.11-slim")
        XCTAssertEqual(r.storeName, "python:3.11-slim")
        XCTAssertEqual(r.manifestReference, "3.11-slim")
        XCTAssertEqual(r.pullScope, "repository:library/python:pull")

        XCTAssertEqual(try ImageReference.parse("python").tag, "latest")
        XCTAssertEqual(try ImageReference.parse("python").storeName, "python:latest")
        let user = try ImageReference.parse("team/app")
        XCTAssertEqual(user.registry, "docker.io")
        XCTAssertEqual(user.repository, "team/app")
        XCTAssertEqual(user.storeName, "team/app:latest")
        // The long forms are the same image and the same stored name.
        for long in ["docker.io/library/python:3.11-slim", "docker.io/python:3.11-slim", "library/python:3.11-slim"] {
            let r = try ImageReference.parse(long)
            XCTAssertEqual(r.description, "docker.io/library/python:3.11-slim", long)
            XCTAssertEqual(r.storeName, "python:3.11-slim", long)
        }
    }

    func testRegistryHosts() throws {
        let r = try ImageReference.parse("127.0.0.1:5000/team/app:1.0")
        XCTAssertEqual(r.registry, "127.0.0.1:5000")
        XCTAssertEqual(r.repository, "team/app")
        XCTAssertEqual(r.tag, "1.0")
        XCTAssertEqual(r.storeName, "127.0.0.1:5000/team/app:1.0")
        XCTAssertEqual(try ImageReference.parse("localhost/app").registry, "localhost")
        XCTAssertEqual(try ImageReference.parse("localhost/app").repository, "app")
        XCTAssertEqual(try ImageReference.parse("registry.example/a/b/c").repository, "a/b/c")
        // Not a host: no dot, no colon, not localhost, lowercase.
        XCTAssertEqual(try ImageReference.parse("hearth/python:3.11").registry, "docker.io")
        XCTAssertEqual(try ImageReference.parse("hearth/python:3.11").storeName, "hearth/python:3.11")
        // Dots are allowed in path components after the host.
        XCTAssertEqual(try ImageReference.parse("host.example/a.b/c_d--e__f").repository, "a.b/c_d--e__f")
    }

    func testDigests() throws {
        let r = try ImageReference.parse("127.0.0.1:5000/app:1.0@sha256:\(hex)")
        XCTAssertEqual(r.tag, "1.0")
        XCTAssertEqual(r.digest, "sha256:\(hex)")
        XCTAssertEqual(r.manifestReference, "sha256:\(hex)")
        XCTAssertEqual(r.storeName, "127.0.0.1:5000/app@sha256:\(hex)")
        let bare = try ImageReference.parse("python@sha256:\(hex)")
        XCTAssertNil(bare.tag)
        XCTAssertEqual(bare.description, "docker.io/library/python@sha256:\(hex)")
        XCTAssertEqual(bare.storeName, "python@sha256:\(hex)")
    }

    func testInvalidReferences() {
        let bad = [
            "", "Python", "a//b", "/a", "a/", "app:", "app:-x", "app:\(String(repeating: "x", count: 129))",
            "app@sha256:abc", "app@md5:\(hex)", "app@sha256:\(hex.uppercased())", "@sha256:\(hex)",
            "https://host/app", "host:99999/app", "host:port/app", "-host.x/app", "host.x/App", "a b",
            "host.x/a-.b:1", "host.x/a..b", "host.x/a___b",
        ]
        for text in bad {
            XCTAssertThrowsError(try ImageReference.parse(text), text) { error in
                XCTAssertEqual((error as? HearthError)?.code, .invalidArgument, text)
                XCTAssertTrue((error as? HearthError)?.message.contains("expected [HOST[:PORT]/]NAME") ?? false, text)
            }
        }
    }

    func testStoreNamesAreFamiliar() throws {
        XCTAssertEqual(try ImageName.normalize("docker.io/library/python:3.11"), "python:3.11")
        XCTAssertEqual(try ImageName.normalize("docker.io/python"), "python:latest")
        XCTAssertEqual(try ImageName.normalize("docker.io/team/app:1"), "team/app:1")
        XCTAssertEqual(try ImageName.normalize("library/python:3.11"), "python:3.11")
        XCTAssertEqual(try ImageName.normalize("library/a/b:1"), "library/a/b:1")
        XCTAssertEqual(try ImageName.normalize("hearth/python:3.11"), "hearth/python:3.11")
        XCTAssertEqual(try ImageName.normalize("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest")
        XCTAssertThrowsError(try ImageName.normalize("app@sha256:\(hex)"))
        XCTAssertEqual(try ImageName.normalize("docker.io/library/app:1@sha256:\(hex)", allowDigest: true), "app@sha256:\(hex)")
        XCTAssertThrowsError(try ImageName.normalize("app@sha256:12", allowDigest: true))
    }

    func testChallenges() {
        let c = Challenge.parse(#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#)
        XCTAssertEqual(c.scheme, "bearer")
        XCTAssertEqual(c.parameters["realm"], "https://auth.example/token")
        XCTAssertEqual(c.parameters["service"], "registry.example")
        XCTAssertEqual(c.parameters["scope"], "repository:a/b:pull,push")
        let basic = Challenge.parse(#"Basic realm="Registry Realm""#)
        XCTAssertEqual(basic.scheme, "basic")
        XCTAssertEqual(basic.parameters["realm"], "Registry Realm")
        let odd = Challenge.parse(#"Bearer realm=https://x/t, error="invalid_token", note="a \"quoted\" word""#)
        XCTAssertEqual(odd.parameters["realm"], "https://x/t")
        XCTAssertEqual(odd.parameters["error"], "invalid_token")
        XCTAssertEqual(odd.parameters["note"], #"a "quoted" word"#)
    }

    func testRegistryErrorsAreQuoted() {
        let body = Array(#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#.utf8)
        XCTAssertEqual(RegistryClient.errorText(body, status: .notFound), "MANIFEST_UNKNOWN: manifest unknown")
        let two = Array(#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"},{"code":"DENIED"}]}"#.utf8)
        XCTAssertEqual(RegistryClient.errorText(two, status: .unauthorized), "UNAUTHORIZED: authentication required; DENIED")
        XCTAssertEqual(RegistryClient.errorText(Array("<html>bad gateway</html>\n".utf8), status: .badGateway),
                       "502 Bad Gateway: <html>bad gateway</html>")
        XCTAssertEqual(RegistryClient.errorText([], status: .serviceUnavailable), "503 Service Unavailable")
    }

    func testRegistryNamesForLogin() throws {
        XCTAssertEqual(try Puller.registryName("https://127.0.0.1:5000/"), "127.0.0.1:5000")
        XCTAssertEqual(try Puller.registryName("registry.example"), "registry.example")
        XCTAssertThrowsError(try Puller.registryName("a/b"))
        XCTAssertThrowsError(try Puller.registryName("host:0"))
    }

    func testRegistryDocuments() throws {
        let config = #"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:\#(hex)","size":10}"#
        let layer = #"{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:\#(hex)","size":20}"#
        let manifest = #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":\#(config),"layers":[\#(layer)]}"#
        guard case .manifest(let c, let layers) = try RegistryDocument.decode(Array(manifest.utf8), contentType: "application/json", what: "m") else {
            return XCTFail("not a manifest")
        }
        XCTAssertEqual(c.size, 10)
        XCTAssertEqual(layers.map(\.size), [20])
        func entry(_ arch: String, _ d: String) -> String {
            #"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:\#(d)","size":5,"platform":{"os":"linux","architecture":"\#(arch)"}}"#
        }
        let other = String(repeating: "cd", count: 32)
        let index = #"{"schemaVersion":2,"manifests":[\#(entry("arm64", other)),\#(entry("amd64", hex))]}"#
        guard case .index(let candidates, let platforms, let count) = try RegistryDocument.decode(
            Array(index.utf8), contentType: "application/vnd.oci.image.index.v1+json", what: "i") else {
            return XCTFail("not an index")
        }
        XCTAssertEqual(count, 2)
        XCTAssertEqual(platforms, ["linux/arm64", "linux/amd64"])
        #if arch(x86_64)
        XCTAssertEqual(candidates.map(\.digest), ["sha256:\(hex)"])
        #endif
        let armOnly = #"{"schemaVersion":2,"manifests":[\#(entry("arm64", other))]}"#
        guard case .index(let none, _, _) = try RegistryDocument.decode(Array(armOnly.utf8), contentType: nil, what: "i") else {
            return XCTFail("not an index")
        }
        #if arch(x86_64)
        XCTAssertTrue(none.isEmpty)
        #endif
        // A descriptor digest that could name a path elsewhere is refused.
        let evil = manifest.replacingOccurrences(of: "sha256:\(hex)\",\"size\":20", with: "sha256:../../x\",\"size\":20")
        XCTAssertThrowsError(try RegistryDocument.decode(Array(evil.utf8), contentType: nil, what: "m"))
        let zstd = manifest.replacingOccurrences(of: "tar+gzip", with: "tar+zstd")
        XCTAssertThrowsError(try RegistryDocument.decode(Array(zstd.utf8), contentType: nil, what: "m"))
    }
}
