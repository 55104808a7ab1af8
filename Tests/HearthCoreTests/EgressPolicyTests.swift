import XCTest
@testable import HearthCore

final class EgressPolicyTests: XCTestCase {
    private let policy = EgressPolicy()

    private func decide(_ address: String, _ port: UInt16, _ p: EgressPolicy? = nil,
                        host: HostNetworks = HostNetworks()) throws -> EgressPolicy.Decision {
        (p ?? policy).check(try XCTUnwrap(IPAddress(address), address), port: port, host: host)
    }

    private func reason(_ address: String, _ port: UInt16 = 443, _ p: EgressPolicy? = nil,
                        host: HostNetworks = HostNetworks()) throws -> String? {
        if case .refuse(let why) = try decide(address, port, p, host: host) { return why }
        return nil
    }

    func testPublicAddressesOnWebPortsAreAllowed() throws {
        // This machine's public names resolve to TEST-NET-3: never refused.
        XCTAssertEqual(try decide("203.0.113.80", 443), .allow)
        XCTAssertEqual(try decide("203.0.113.80", 80), .allow)
        XCTAssertEqual(try decide("192.0.2.10", 80), .allow)
        XCTAssertEqual(try decide("8.8.8.8", 443), .allow)
        XCTAssertEqual(try decide("2001:db8::1", 443), .allow)
        XCTAssertEqual(try decide("2a00:1450::1", 80), .allow)
        XCTAssertEqual(try decide("::ffff:203.0.113.80", 443), .allow)
    }

    func testOtherPortsAreRefused() throws {
        XCTAssertEqual(try reason("203.0.113.80", 22), "port 22 is not allowed")
        XCTAssertEqual(try reason("203.0.113.80", 8080), "port 8080 is not allowed")
        XCTAssertFalse(policy.portMayBeAllowed(22))
        XCTAssertTrue(policy.portMayBeAllowed(443))
        XCTAssertTrue(policy.portMayBeAllowed(80))
    }

    func testNonPublicBlocksAreRefused() throws {
        let cases: [(String, String)] = [
            ("127.0.0.1", "loopback address"), ("127.255.0.9", "loopback address"),
            ("0.0.0.0", "unspecified address (0.0.0.0/8)"), ("0.1.2.3", "unspecified address (0.0.0.0/8)"),
            ("169.254.169.254", "link-local address (169.254.0.0/16, where cloud metadata answers)"),
            ("10.0.0.1", "private address (RFC 1918)"), ("172.16.0.1", "private address (RFC 1918)"),
            ("172.31.255.255", "private address (RFC 1918)"), ("192.168.1.1", "private address (RFC 1918)"),
            ("100.64.0.1", "shared address (CGNAT, 100.64.0.0/10)"), ("100.127.255.255", "shared address (CGNAT, 100.64.0.0/10)"),
            ("224.0.0.1", "multicast address"), ("239.255.255.250", "multicast address"),
            ("255.255.255.255", "broadcast address"), ("240.0.0.1", "reserved address (240.0.0.0/4)"),
            ("::", "unspecified address"), ("::1", "loopback address"),
            ("fe80::1", "link-local address (fe80::/10)"), ("febf::1", "link-local address (fe80::/10)"),
            ("fc00::1", "unique-local address (fc00::/7)"), ("fd12:3456::1", "unique-local address (fc00::/7)"),
            ("ff02::1", "multicast address"), ("fec0::1", "site-local address (fec0::/10)"),
            ("::7f00:1", "IPv4-compatible address (::/96)"),
        ]
        for (address, why) in cases {
            XCTAssertEqual(try reason(address, 443), why, address)
            XCTAssertEqual(try reason(address, 80), why, address)
        }
        // Just outside the blocks: public.
        for address in ["172.32.0.1", "172.15.255.255", "100.128.0.1", "100.63.255.255", "169.255.0.1",
                        "11.0.0.1", "192.169.0.1", "223.255.255.255", "fbff::1", "fe7f::1"] {
            XCTAssertEqual(try decide(address, 443), .allow, address)
        }
    }

    func testIPv4MappedAndNAT64FormsAreCheckedAsIPv4() throws {
        XCTAssertEqual(try reason("::ffff:127.0.0.1"), "loopback address (IPv4-mapped)")
        XCTAssertEqual(try reason("::ffff:169.254.169.254"),
                       "link-local address (169.254.0.0/16, where cloud metadata answers) (IPv4-mapped)")
        XCTAssertEqual(try reason("::ffff:10.1.2.3"), "private address (RFC 1918) (IPv4-mapped)")
        XCTAssertEqual(try reason("64:ff9b::a9fe:a9fe"),
                       "link-local address (169.254.0.0/16, where cloud metadata answers) (NAT64 form)")
        XCTAssertEqual(try decide("64:ff9b::cb00:7150", 443), .allow)  // 203.0.113.80
        XCTAssertEqual(IPAddress("::ffff:127.0.0.1")?.unmapped, IPAddress("127.0.0.1"))
    }

    func testTheHostAndItsNetworksAreRefused() throws {
        let host = HostNetworks(addresses: [try XCTUnwrap(IPAddress("192.0.2.2"))],
                                networks: [try XCTUnwrap(CIDR("192.0.2.0/24"))])
        XCTAssertEqual(try reason("192.0.2.2", 80, host: host), "an address of this host")
        XCTAssertEqual(try reason("::ffff:192.0.2.2", 80, host: host), "an address of this host")
        XCTAssertEqual(try reason("192.0.2.1", 443, host: host),
                       "on 192.0.2.0/24, a network of this host's interfaces (the LAN)")
        XCTAssertEqual(try decide("203.0.113.80", 443, host: host), .allow)
    }

    func testAllowRulesWiden() throws {
        let p = EgressPolicy(allow: [
            try EgressPolicy.parseRule("10.1.2.0/24"),
            try EgressPolicy.parseRule("10.9.9.9:3141"),
            try EgressPolicy.parseRule("[fd00::/8]:8443"),
            try EgressPolicy.parseRule("127.0.0.1/32:8080"),
        ])
        XCTAssertEqual(try decide("10.1.2.7", 443, p), .allow)
        XCTAssertEqual(try decide("10.1.2.7", 80, p), .allow)
        XCTAssertEqual(try reason("10.1.2.7", 3141, p), "private address (RFC 1918)")
        XCTAssertEqual(try decide("10.9.9.9", 3141, p), .allow)
        XCTAssertEqual(try reason("10.9.9.9", 443, p), "private address (RFC 1918)")
        XCTAssertEqual(try decide("::ffff:10.9.9.9", 3141, p), .allow)
        XCTAssertEqual(try decide("fd00::5", 8443, p), .allow)
        XCTAssertEqual(try reason("fd00::5", 443, p), "unique-local address (fc00::/7)")
        XCTAssertEqual(try decide("127.0.0.1", 8080, p), .allow)
        XCTAssertEqual(try reason("127.0.0.2", 8080, p), "loopback address")
        // A rule's port makes a name worth resolving; other ports are not.
        XCTAssertTrue(p.portMayBeAllowed(3141))
        XCTAssertFalse(p.portMayBeAllowed(22))
        // A public address on a rule's port but outside its block: refused.
        XCTAssertEqual(try reason("203.0.113.80", 3141, p), "port 3141 is not allowed")
    }

    func testRuleParsing() throws {
        XCTAssertEqual(try EgressPolicy.parseRule("10.1.2.3").description, "10.1.2.3/32")
        XCTAssertEqual(try EgressPolicy.parseRule("10.1.2.3:3141").description, "10.1.2.3/32:3141")
        XCTAssertEqual(try EgressPolicy.parseRule("fd00::/8").description, "fd00::/8")
        XCTAssertEqual(try EgressPolicy.parseRule("[fd00::1]:443").description, "[fd00::1/128]:443")
        for bad in ["", "10.1.2.3/33", "10.1.2.0/", "10.1.2.3:0", "10.1.2.3:70000", "10.1.2.3:x", "pypi.org",
                    "[fd00::/8", "[fd00::/8]443", "10.1.2.3/24", "fd00::/129"] {
            XCTAssertThrowsError(try EgressPolicy.parseRule(bad), bad) {
                let message = ($0 as? HearthError)?.message ?? ""
                XCTAssertTrue(message.hasPrefix("--egress-allow: \"\(bad)\""), message)
            }
        }
        XCTAssertThrowsError(try EgressPolicy.parseRule("10.1.2.3/24")) {
            XCTAssertTrue(($0 as? HearthError)?.message.contains("did you mean 10.1.2.0/24?") == true)
        }
    }

    func testRefusalMessageNamesDestinationAndRule() {
        XCTAssertEqual(EgressPolicy.refusal("127.0.0.1:8080", "loopback address"),
                       "hearth egress: 127.0.0.1:8080 refused: loopback address; replicas with network egress reach public addresses on ports 80 and 443 only (hearthd --egress-allow CIDR[:PORT])")
    }

    func testCIDR() throws {
        let block = try XCTUnwrap(CIDR("172.16.0.0/12"))
        XCTAssertTrue(block.contains(try XCTUnwrap(IPAddress("172.20.1.1"))))
        XCTAssertFalse(block.contains(try XCTUnwrap(IPAddress("172.32.0.0"))))
        XCTAssertFalse(block.contains(try XCTUnwrap(IPAddress("::ffff:172.20.1.1"))))  // v6 never in a v4 block
        XCTAssertEqual(CIDR(masking: try XCTUnwrap(IPAddress("fe80::1234")), 10).description, "fe80::/10")
        XCTAssertNil(CIDR("10.0.0.1/8"))
        XCTAssertNil(IPAddress("fe80::1%eth0"))
        XCTAssertNil(IPAddress("2130706433"))
        XCTAssertEqual(IPAddress("203.0.113.80")?.withPort(443), "203.0.113.80:443")
        XCTAssertEqual(IPAddress("2001:db8::1")?.withPort(443), "[2001:db8::1]:443")
    }
}

final class EgressRequestTests: XCTestCase {
    private func parse(_ text: String) throws -> EgressRequest {
        try EgressRequest.parse(Array(text.utf8))
    }

    private func failure(_ text: String) -> EgressRequest.Failure? {
        do {
            _ = try EgressRequest.parse(Array(text.utf8))
            return nil
        } catch {
            return error
        }
    }

    func testConnect() throws {
        let r = try parse("CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
        XCTAssertEqual(r.kind, .connect)
        XCTAssertEqual(r.host, "pypi.org")
        XCTAssertEqual(r.port, 443)
        XCTAssertEqual(r.destination, "pypi.org:443")
        let v6 = try parse("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n")
        XCTAssertEqual(v6.host, "2001:db8::1")
        XCTAssertEqual(v6.destination, "[2001:db8::1]:443")
        XCTAssertEqual(try parse("CONNECT PyPI.org:443 HTTP/1.0\n\n").host, "pypi.org")
        XCTAssertEqual(failure("CONNECT pypi.org HTTP/1.1\r\n\r\n")?.status, 400)  // no port
        XCTAssertEqual(failure("CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("CONNECT pypi.org:99999 HTTP/1.1\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("CONNECT user@pypi.org:443 HTTP/1.1\r\n\r\n")?.status, 400)
    }

    func testAbsoluteForm() throws {
        let r = try parse("GET http://deb.debian.org/debian/dists/bookworm/Release HTTP/1.1\r\nHost: deb.debian.org\r\nUser-Agent: apt\r\n\r\n")
        XCTAssertEqual(r.kind, .http)
        XCTAssertEqual(r.host, "deb.debian.org")
        XCTAssertEqual(r.port, 80)
        XCTAssertEqual(r.bodyLength, 0)
        XCTAssertEqual(try parse("GET http://127.0.0.1:8080 HTTP/1.1\r\n\r\n").destination, "127.0.0.1:8080")
        XCTAssertEqual(try parse("GET http://[::1]:8080/x HTTP/1.1\r\n\r\n").destination, "[::1]:8080")
        XCTAssertEqual(try parse("POST http://a.example/x HTTP/1.1\r\nHost: a.example:80\r\nContent-Length: 12\r\n\r\n").bodyLength, 12)
        XCTAssertEqual(try parse("GET http://a.example?x HTTP/1.1\r\n\r\n").host, "a.example")
    }

    func testRefusedRequests() {
        XCTAssertEqual(failure("GET / HTTP/1.1\r\nHost: pypi.org\r\n\r\n")?.status, 400)  // origin-form
        XCTAssertEqual(failure("GET https://pypi.org/ HTTP/1.1\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/2.0\r\n\r\n")?.status, 505)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")?.status, 501)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/1.1\r\n folded\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a.example/ HTTP/1.1\r\nno colon\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("\u{1}\u{2}garbage\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a b.example/ HTTP/1.1\r\n\r\n")?.status, 400)
        XCTAssertEqual(failure("GET http://a%2e.example/ HTTP/1.1\r\n\r\n")?.status, 400)
        XCTAssertNotNil(try? parse("GET http://a.example/ HTTP/1.1\r\n\r\n"))
    }

    func testHeadEnd() {
        func end(_ s: String) -> Int? { Array(s.utf8).withUnsafeBytes { EgressRequest.headEnd($0) } }
        XCTAssertEqual(end("GET x HTTP/1.1\r\nA: b\r\n\r\nBODY"), 24)
        XCTAssertEqual(end("GET x HTTP/1.1\n\nBODY"), 16)
        XCTAssertNil(end("GET x HTTP/1.1\r\nA: b\r\n"))
        XCTAssertNil(end(""))
    }
}
