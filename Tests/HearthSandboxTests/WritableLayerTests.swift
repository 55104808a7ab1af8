import Foundation
import Glibc
import XCTest

@testable import HearthSandbox

/// The writable-layer walk: allocated blocks, symlinks not followed,
/// resumable in bounded steps.
final class WritableLayerTests: XCTestCase {
    private var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "/hearth-walk-" + UUID().uuidString
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir + "/a/b/c", withIntermediateDirectories: true)
        try Data(repeating: 1, count: 1 << 20).write(to: URL(fileURLWithPath: dir + "/a/b/c/big"))
        for i in 0..<50 { try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/a/small\(i)")) }
        // A symlink to a large tree and a sparse file: neither counts what it is not.
        try fm.createSymbolicLink(atPath: dir + "/a/usr", withDestinationPath: "/usr")
        let fd = open(dir + "/sparse", O_WRONLY | O_CREAT, 0o644)
        XCTAssertEqual(ftruncate(fd, 1 << 30), 0)
        close(fd)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func measure(budget: Int) -> (Int64, Int) {
        var walk = DiskUsageWalk(roots: [dir, dir + "/a/b"])
        var steps = 0
        while true {
            steps += 1
            if case .done(let n) = walk.step(budget: budget) { return (n, steps) }
            if steps > 10_000 { return (-1, steps) }
        }
    }

    func testCountsAllocatedBlocksWithoutFollowingSymlinks() {
        let (total, steps) = measure(budget: 1_000_000)
        XCTAssertEqual(steps, 1)
        // 1 MiB of data plus 50 small files and a few directories (the
        // second root counts its tree again), far below /usr or the 1 GiB
        // sparse file.
        XCTAssertGreaterThanOrEqual(total, 2 << 20)
        XCTAssertLessThan(total, 4 << 20)
    }

    func testSmallBudgetsResumeToTheSameTotal() {
        let (whole, _) = measure(budget: 1_000_000)
        let (stepped, steps) = measure(budget: 7)
        XCTAssertEqual(stepped, whole)
        XCTAssertGreaterThan(steps, 5)
    }

    func testAMissingRootIsEmpty() {
        var walk = DiskUsageWalk(roots: [dir + "/gone"])
        XCTAssertEqual(walk.step(budget: 10), .done(0))
    }
}
