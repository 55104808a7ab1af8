import XCTest
@testable import HearthCore

final class PrivilegePolicyTests: XCTestCase {
    private func effective(_ yaml: String) throws -> EffectiveEnvironment {
        let specs = try EnvironmentSpec.parseDocuments(yaml, source: "env.yaml")
        return try XCTUnwrap(specs.first).effective
    }

    func testDefaultSpecIsNotPrivileged() throws {
        XCTAssertEqual(PrivilegePolicy.violations(of: try effective("name: a")), [])
        // network egress is a wall of its own, not a hole in one.
        XCTAssertEqual(PrivilegePolicy.violations(of: try effective("name: a\nnetwork: egress")), [])
        XCTAssertEqual(try effective("name: a\nnetwork: egress").network, .egress)
        XCTAssertEqual(PrivilegePolicy.violations(of: SandboxRequest(network: "egress", argv: ["true"])), [])
        // Dropping capabilities takes nothing down.
        XCTAssertEqual(PrivilegePolicy.violations(of: try effective("name: a\ncapabilities: {drop: [CHOWN]}")), [])
    }

    func testEachPrivilegedFieldIsNamed() throws {
        let v = PrivilegePolicy.violations(of: try effective(
            "name: a\nseccomp: /etc/x.json\ncapabilities: {add: [NET_ADMIN]}\nnetwork: host"))
        XCTAssertEqual(v.map(\.field), ["seccomp", "capabilities.add", "network"])
        XCTAssertEqual(PrivilegePolicy.violations(of: try effective("name: a\nseccomp: unconfined")).map(\.value),
                       ["unconfined"])
    }

    func testCheckRefusesWithForbiddenUnlessAllowed() throws {
        let v = PrivilegePolicy.violations(of: try effective("name: a\nnetwork: host"))
        XCTAssertNoThrow(try PrivilegePolicy(allowPrivileged: true).check(v, subject: "environment \"a\""))
        XCTAssertThrowsError(try PrivilegePolicy(allowPrivileged: false).check(v, subject: "environment \"a\"")) {
            let e = $0 as? HearthError
            XCTAssertEqual(e?.code, .forbidden)
            XCTAssertTrue(e?.message.hasPrefix("environment \"a\": network: host shares") == true, e?.message ?? "")
            XCTAssertTrue(e?.message.contains("--allow-privileged") == true)
        }
    }

    func testSandboxRequests() {
        XCTAssertEqual(PrivilegePolicy.violations(of: SandboxRequest(argv: ["true"])), [])
        XCTAssertEqual(PrivilegePolicy.violations(of: SandboxRequest(network: "host", seccomp: "profile",
                                                                     argv: ["true"])).map(\.field),
                       ["seccomp", "network"])
    }
}
