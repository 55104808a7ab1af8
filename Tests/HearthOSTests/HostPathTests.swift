import Foundation
import Glibc
import HearthCore
@testable import HearthOS
import XCTest

/// HostPath: a host path opened beneath its prefix, or refused.
final class HostPathTests: XCTestCase {
    private var base = ""

    override func setUpWithError() throws {
        base = FileManager.default.temporaryDirectory.appendingPathComponent("hostpath-\(UUID().uuidString)").path
        for d in ["", "/allowed", "/allowed/a", "/allowed/a/b", "/outside"] { try FS.makeDirectory(base + d) }
        XCTAssertEqual(symlink(base + "/outside", base + "/allowed/out"), 0)
        XCTAssertEqual(symlink("../outside", base + "/allowed/rel-out"), 0)
        XCTAssertEqual(symlink("a/b", base + "/allowed/inside"), 0)
    }

    override func tearDownWithError() throws { try? FS.removeTree(path: base) }

    private func errno(_ path: String) -> Int32? {
        do {
            _ = try HostPath.openDirectory(base + "/allowed/" + path, beneath: base + "/allowed")
            return nil
        } catch let e as SystemError {
            return e.errno
        } catch {
            return -1
        }
    }

    func testOpensBeneathAndFollowsLinksThatStayInside() {
        XCTAssertNil(errno("a/b"))
        XCTAssertNil(errno("inside"), "a link that stays beneath the prefix is fine")
        XCTAssertNoThrow(try HostPath.openDirectory(base + "/allowed", beneath: base + "/allowed"))
    }

    func testRefusesLinksAndPathsThatLeave() {
        XCTAssertEqual(errno("out"), EXDEV, "an absolute link out")
        XCTAssertEqual(errno("rel-out"), EXDEV, "a relative link out")
        XCTAssertEqual(errno("a/../../outside"), EXDEV, ".. out")
        XCTAssertEqual(errno("nope"), ENOENT)
        // Control: the same links lead to a real directory when followed freely.
        XCTAssertTrue(FileManager.default.fileExists(atPath: base + "/allowed/out"))
    }

    func testRelative() {
        XCTAssertEqual(HostPath.relative("/data/x/y", to: "/data"), "x/y")
        XCTAssertEqual(HostPath.relative("/data", to: "/data/"), "")
        XCTAssertNil(HostPath.relative("/database", to: "/data"))
        XCTAssertEqual(HostPath.relative("/etc", to: "/"), "etc")
    }
}
