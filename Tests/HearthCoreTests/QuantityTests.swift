import HearthCore
import XCTest

final class QuantityTests: XCTestCase {
    func testCPU() throws {
        XCTAssertEqual(try Quantity.parseCPU("500m"), 500)
        XCTAssertEqual(try Quantity.parseCPU("2"), 2000)
        XCTAssertEqual(try Quantity.parseCPU("0.5"), 500)
        XCTAssertEqual(try Quantity.parseCPU("1.25"), 1250)
        XCTAssertEqual(try Quantity.parseCPU(" 1 "), 1000)
        XCTAssertEqual(try Quantity.parseCPU("1e1"), 10000)
    }

    func testBadCPU() {
        for bad in ["", "-1", "0", "0m", "1.5m", "two", "2 cores", "1Gi", "m", "0.0001"] {
            XCTAssertThrowsError(try Quantity.parseCPU(bad, field: "requests.cpu"), bad) { error in
                let message = (error as? HearthError)?.message ?? ""
                XCTAssertTrue(message.hasPrefix("requests.cpu:"), message)
                XCTAssertEqual((error as? HearthError)?.code, .invalidArgument)
            }
        }
    }

    func testMemory() throws {
        XCTAssertEqual(try Quantity.parseMemory("300Mi"), 300 * 1024 * 1024)
        XCTAssertEqual(try Quantity.parseMemory("1Gi"), 1 << 30)
        XCTAssertEqual(try Quantity.parseMemory("1G"), 1_000_000_000)
        XCTAssertEqual(try Quantity.parseMemory("512M"), 512_000_000)
        XCTAssertEqual(try Quantity.parseMemory("64Ki"), 65536)
        XCTAssertEqual(try Quantity.parseMemory("1k"), 1000)
        XCTAssertEqual(try Quantity.parseMemory("4096"), 4096)
        XCTAssertEqual(try Quantity.parseMemory("1.5Gi"), 1_610_612_736)
        XCTAssertEqual(try Quantity.parseMemory("1e3"), 1000)
    }

    func testBadMemory() {
        for bad in ["", "lots", "-1Mi", "0", "1MB", "Mi", "1 Mi x", "1.2.3Gi", "1ee3"] {
            XCTAssertThrowsError(try Quantity.parseMemory(bad, field: "limits.mem"), bad) { error in
                let message = (error as? HearthError)?.message ?? ""
                XCTAssertTrue(message.hasPrefix("limits.mem:"), message)
                XCTAssertTrue(message.contains("Mi") || message.contains("range") || message.contains("empty"), message)
            }
        }
    }

    func testFormat() {
        XCTAssertEqual(Quantity.formatMemory(64 << 20), "64Mi")
        XCTAssertEqual(Quantity.formatMemory(1 << 30), "1Gi")
        XCTAssertEqual(Quantity.formatMemory(1000), "1000")
        XCTAssertEqual(Quantity.formatCPU(500), "500m")
        XCTAssertEqual(Quantity.formatCPU(2000), "2")
    }

    func testSystemErrorNamesOperationPathAndErrno() {
        let e = SystemError("mount overlay on", "/var/lib/hearth/replicas/r1/rootfs", errno: EINVAL)
        XCTAssertTrue(e.description.hasPrefix("mount overlay on /var/lib/hearth/replicas/r1/rootfs: EINVAL"), e.description)
    }
}
