import Foundation
@testable import HearthCore
@testable import HearthTLS
import XCTest

final class DaemonEndpointTests: XCTestCase {
    func testForms() throws {
        XCTAssertEqual(try DaemonEndpoint.parse("tcp://127.0.0.1:7443", what: "HEARTH_HOST"), .tcp(host: "127.0.0.1", port: 7443))
        XCTAssertEqual(try DaemonEndpoint.parse("tcp://node-1.lan:7443/", what: "HEARTH_HOST"), .tcp(host: "node-1.lan", port: 7443))
        XCTAssertEqual(try DaemonEndpoint.parse("tcp://[::1]:7443", what: "HEARTH_HOST"), .tcp(host: "::1", port: 7443))
        XCTAssertEqual(try DaemonEndpoint.parse("unix:///run/hearth/hearthd.sock", what: "HEARTH_HOST"), .unix(path: "/run/hearth/hearthd.sock"))
        XCTAssertEqual(DaemonEndpoint.tcp(host: "::1", port: 1).description, "tcp://[::1]:1")
    }

    func testRefusalsNameTheValueAndTheRule() {
        let cases: [(String, String)] = [
            ("127.0.0.1:7443", "expected tcp://HOST:PORT"),
            ("tcp://127.0.0.1", "the port is missing"),
            ("tcp://127.0.0.1:0", "not a number from 1 to 65535"),
            ("tcp://127.0.0.1:99999", "not a number from 1 to 65535"),
            ("tcp://:7443", "the host is missing"),
            ("tcp://[::1]7443", "[ADDR]:PORT"),
            ("unix://relative.sock", "absolute path"),
        ]
        for (text, rule) in cases {
            XCTAssertThrowsError(try DaemonEndpoint.parse(text, what: "HEARTH_HOST"), text) { e in
                let m = (e as? HearthError)?.message ?? ""
                XCTAssertTrue(m.contains("HEARTH_HOST") && m.contains(text.debugDescription) && m.contains(rule), m)
            }
        }
    }
}

final class ClusterCertificatesTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "hearth-tls-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ name: String, _ text: String) -> String {
        let p = dir + "/" + name
        FileManager.default.createFile(atPath: p, contents: Data(text.utf8))
        return p
    }

    func testIssuedCertificatesLoadAndCarryTheirIdentity() throws {
        let ca = try ClusterCertificates.makeCA(name: "test CA", validity: .days(10))
        let server = try ClusterCertificates.makeServer(ca: ca, name: "node1", hosts: ["127.0.0.1", "node1.lan"], validity: .days(5))
        let client = try ClusterCertificates.makeClient(ca: ca, name: "alice", validity: .days(5))
        let caPath = write("ca.pem", ca.certificatePEM)
        let s = try TLSFiles(certificate: write("s.pem", server.certificatePEM), key: write("s-key.pem", server.keyPEM), ca: caPath)
            .serverConfiguration()
        XCTAssertEqual(s.1.subject, "CN=node1,O=hearth")
        let c = try TLSFiles(certificate: write("c.pem", client.certificatePEM), key: write("c-key.pem", client.keyPEM), ca: caPath)
            .clientConfiguration()
        XCTAssertEqual(c.1.subject, "CN=alice,O=hearth")
        XCTAssertEqual(c.0.certificateVerification, .fullVerification)
        XCTAssertEqual(s.0.certificateVerification, .noHostnameVerification)
    }

    func testAKeyOfAnotherCertificateIsNamed() throws {
        let ca = try ClusterCertificates.makeCA(name: "test CA", validity: .days(10))
        let a = try ClusterCertificates.makeClient(ca: ca, name: "a", validity: .days(5))
        let b = try ClusterCertificates.makeClient(ca: ca, name: "b", validity: .days(5))
        let files = TLSFiles(certificate: write("a.pem", a.certificatePEM), key: write("b-key.pem", b.keyPEM),
                             ca: write("ca.pem", ca.certificatePEM))
        XCTAssertThrowsError(try files.load(.client)) { e in
            let m = (e as? HearthError)?.message ?? "\(e)"
            XCTAssertTrue(m.contains("HEARTH_TLS_KEY") && m.contains("b-key.pem") && m.contains("is not the key of"), m)
        }
    }

    func testAnExpiredCertificateAndAMissingFileAreNamed() throws {
        let ca = try ClusterCertificates.makeCA(name: "test CA", validity: .days(10))
        let now = Date()
        let old = try ClusterCertificates.makeClient(
            ca: ca, name: "old", validity: .init(notBefore: now.addingTimeInterval(-86400 * 3), notAfter: now.addingTimeInterval(-86400)))
        let files = TLSFiles(certificate: write("old.pem", old.certificatePEM), key: write("old-key.pem", old.keyPEM),
                             ca: write("ca.pem", ca.certificatePEM))
        XCTAssertThrowsError(try files.load(.daemon)) { e in
            let m = (e as? HearthError)?.message ?? "\(e)"
            XCTAssertTrue(m.contains("--tls-cert") && m.contains("expired"), m)
        }
        let missing = TLSFiles(certificate: dir + "/nope.pem", key: dir + "/old-key.pem", ca: dir + "/ca.pem")
        XCTAssertThrowsError(try missing.load(.client)) { e in
            let m = (e as? HearthError)?.message ?? "\(e)"
            XCTAssertTrue(m.contains("HEARTH_TLS_CERT") && m.contains("nope.pem") && m.contains("ENOENT"), m)
        }
        let notPEM = TLSFiles(certificate: write("junk.pem", "hello"), key: dir + "/old-key.pem", ca: dir + "/ca.pem")
        XCTAssertThrowsError(try notPEM.load(.client)) { e in
            XCTAssertTrue(((e as? HearthError)?.message ?? "").contains("not a PEM file"))
        }
    }

    func testAServerCertificateNeedsAHostAndCannotOutliveItsCA() throws {
        let ca = try ClusterCertificates.makeCA(name: "short CA", validity: .days(1))
        XCTAssertThrowsError(try ClusterCertificates.makeServer(ca: ca, name: "n", hosts: [], validity: .days(1)))
        XCTAssertThrowsError(try ClusterCertificates.makeServer(ca: ca, name: "n", hosts: ["bad host!"], validity: .days(1))) { e in
            XCTAssertTrue(((e as? HearthError)?.message ?? "").contains("neither an IP address nor a DNS name"))
        }
        XCTAssertThrowsError(try ClusterCertificates.makeClient(ca: ca, name: "a", validity: .days(30))) { e in
            XCTAssertTrue(((e as? HearthError)?.message ?? "").contains("outlive its CA"))
        }
    }

    func testIdentityIsTheSubject() throws {
        let ca = try ClusterCertificates.makeCA(name: "test CA", validity: .days(10))
        let c = try ClusterCertificates.makeClient(ca: ca, name: "flyte-connector", validity: .days(5))
        let der = try XCTUnwrap(PEMBody.der(c.certificatePEM))
        XCTAssertEqual(ClusterCertificates.identity(ofDER: der), "CN=flyte-connector,O=hearth")
        XCTAssertNil(ClusterCertificates.identity(ofDER: [1, 2, 3]))
    }
}

/// The DER inside one PEM block.
enum PEMBody {
    static func der(_ pem: String) -> [UInt8]? {
        let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        return Data(base64Encoded: body).map(Array.init)
    }
}
