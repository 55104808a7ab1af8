import HearthCore
import XCTest

@testable import HearthSandbox

final class CapabilitiesTests: XCTestCase {
    func testDockerDefaultMask() throws {
        XCTAssertEqual(CapabilitySet.dockerDefault.mask, 0x0000_0000_a804_25fb)
        let byName = try CapabilitySet(names: [
            "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
            "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
        ])
        XCTAssertEqual(byName, .dockerDefault)
        XCTAssertEqual(CapabilitySet.dockerDefault.names.count, 14)
        XCTAssertEqual(CapabilitySet.dockerDefault.names.first, "CAP_CHOWN")
        XCTAssertEqual(CapabilitySet.dockerDefault.names.last, "CAP_SETFCAP")
    }

    func testNamesAreCaseInsensitiveWithOptionalPrefix() throws {
        let bit12 = CapabilitySet(mask: 1 << 12)
        XCTAssertEqual(try CapabilitySet(names: ["CAP_NET_ADMIN"]), bit12)
        XCTAssertEqual(try CapabilitySet(names: ["NET_ADMIN"]), bit12)
        XCTAssertEqual(try CapabilitySet(names: ["cap_net_admin"]), bit12)
        XCTAssertEqual(try CapabilitySet(names: ["Net_Admin"]), bit12)
        XCTAssertEqual(try CapabilitySet(names: []), .empty)
        XCTAssertEqual(CapabilitySet.number(of: "sys_admin"), 21)
        XCTAssertEqual(CapabilitySet.number(of: "CAP_CHECKPOINT_RESTORE"), 40)
        XCTAssertTrue(bit12.contains(12))
        XCTAssertFalse(bit12.contains(13))
        XCTAssertEqual(bit12.names, ["CAP_NET_ADMIN"])
    }

    func testAllFollowsTheKernel() throws {
        let last = CapabilitySet.lastCap()
        XCTAssertGreaterThanOrEqual(last, 36)
        XCTAssertLessThan(last, 64)
        let all = try CapabilitySet(names: ["ALL"])
        XCTAssertEqual(all, CapabilitySet.all)
        XCTAssertEqual(all.names.count, Int(last) + 1)
        XCTAssertEqual(try CapabilitySet(names: ["all", "NET_ADMIN"]), .all)
    }

    func testUnknownCapabilityIsNamed() {
        XCTAssertThrowsError(try CapabilitySet(names: ["CHOWN", "NET_FOO"])) { error in
            XCTAssertEqual((error as? HearthError)?.code, .invalidArgument)
            XCTAssertTrue("\(error)".hasPrefix(#"capabilities: unknown capability "NET_FOO""#), "\(error)")
        }
        XCTAssertThrowsError(try CapabilitySet.dockerDefault.applying(add: ["SYS_BOGUS"], drop: [])) { error in
            XCTAssertTrue("\(error)".hasPrefix(#"capabilities.add: unknown capability "SYS_BOGUS""#), "\(error)")
        }
        XCTAssertThrowsError(try CapabilitySet.dockerDefault.applying(add: [], drop: [""])) { error in
            XCTAssertTrue("\(error)".hasPrefix(#"capabilities.drop: unknown capability """#), "\(error)")
        }
    }

    func testAddAndDropLikeDocker() throws {
        let base = CapabilitySet.dockerDefault
        let netAdmin = try CapabilitySet(names: ["NET_ADMIN"])
        let netRaw = try CapabilitySet(names: ["NET_RAW"])

        XCTAssertEqual(try base.applying(add: [], drop: []), base)
        XCTAssertEqual(try base.applying(add: ["NET_ADMIN"], drop: []).mask, base.mask | netAdmin.mask)
        XCTAssertEqual(try base.applying(add: [], drop: ["cap_net_raw"]).mask, base.mask & ~netRaw.mask)
        // Drop ALL, then add: only what is added.
        XCTAssertEqual(try base.applying(add: ["NET_BIND_SERVICE"], drop: ["ALL"]), try CapabilitySet(names: ["NET_BIND_SERVICE"]))
        XCTAssertEqual(try base.applying(add: [], drop: ["ALL"]), .empty)
        // Add ALL: everything but the drops.
        XCTAssertEqual(try base.applying(add: ["ALL"], drop: ["SYS_ADMIN"]).mask,
                       CapabilitySet.all.mask & ~(UInt64(1) << 21))
        // Both added and dropped (without ALL): the add wins, as in Docker.
        XCTAssertTrue(try base.applying(add: ["NET_RAW"], drop: ["NET_RAW"]).contains(13))
    }
}
