import Foundation
import HearthOS
@testable import HearthPool
import Logging
import XCTest

/// WorkerPackage: the daemon's copy of the worker package, with bytecode.
final class WorkerPackageTests: XCTestCase {
    func testCopiesThePackageAloneAndCompilesIt() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("wp-\(UUID().uuidString)").path
        defer { try? FS.removeTree(path: base) }
        try FS.makeDirectory(base + "/src/hearth/__pycache__", mode: 0o755)
        try FS.makeDirectory(base + "/src/tests", mode: 0o755)
        try FS.makeDirectory(base + "/state", mode: 0o755)
        try FS.writeFile(base + "/src/hearth/__init__.py", "")
        try FS.writeFile(base + "/src/hearth/_worker.py", "X = 1\n")
        try FS.writeFile(base + "/src/hearth/__pycache__/stale.cpython-311.pyc", "junk")
        try FS.writeFile(base + "/src/tests/test_x.py", "")
        XCTAssertEqual(symlink("/etc/passwd", base + "/src/hearth/link.py"), 0)
        let logger = Logger(label: "test")
        let python = WorkerPackage.hostPython()
        let dir = try WorkerPackage.prepare(source: base + "/src", stateRoot: base + "/state", logger: logger, python: python)
        XCTAssertTrue(dir.hasPrefix(base + "/state/worker/"), dir)
        XCTAssertEqual(dir.count, (base + "/state/worker/").count + 16)
        // The same package again: the same version, kept.
        XCTAssertEqual(try WorkerPackage.prepare(source: base + "/src", stateRoot: base + "/state", logger: logger, python: nil), dir)
        let names = try FS.list(path: dir + "/hearth").map { String(decoding: $0.name, as: UTF8.self) }.sorted()
        XCTAssertEqual(names.filter { $0 != "__pycache__" }, ["__init__.py", "_worker.py"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/tests"))
        if python != nil {
            let cached = try FS.list(path: dir + "/hearth/__pycache__").map { String(decoding: $0.name, as: UTF8.self) }
            XCTAssertTrue(cached.contains { $0.hasPrefix("_worker.") && $0.hasSuffix(".pyc") }, "\(cached)")
            XCTAssertFalse(cached.contains("stale.cpython-311.pyc"))
        }
        // Another version: a directory of its own; the old one stays only
        // while kept (an adopted replica mounts it).
        try FS.writeFile(base + "/src/hearth/_worker.py", "X = 2\n")
        let second = try WorkerPackage.prepare(source: base + "/src", stateRoot: base + "/state", logger: logger,
                                               python: nil, keeping: [dir])
        XCTAssertNotEqual(second, dir)
        XCTAssertEqual(try FS.readFile(second + "/hearth/_worker.py", limit: 100).map { String(decoding: $0, as: UTF8.self) }, "X = 2\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: second + "/hearth/__pycache__"))
        XCTAssertEqual(try FS.readFile(dir + "/hearth/_worker.py", limit: 100).map { String(decoding: $0, as: UTF8.self) }, "X = 1\n")
        _ = try WorkerPackage.prepare(source: base + "/src", stateRoot: base + "/state", logger: logger, python: nil)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "an unkept version is removed")
        XCTAssertTrue(FileManager.default.fileExists(atPath: second + "/hearth/_worker.py"))
    }
}
