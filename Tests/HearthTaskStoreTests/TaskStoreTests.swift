import Foundation
import HearthCore
@testable import HearthTaskStore
import XCTest

private func row(_ id: String, finished: Double = Date().timeIntervalSince1970, payload: [UInt8]? = [1, 2, 3]) -> TaskStore.Row {
    TaskStore.Row(id: id, environment: "env", finished: finished, snapshot: Array(#"{"id":"\#(id)"}"#.utf8),
                  payload: payload)
}

/// The task store against a real SQLite file in a temporary directory.
final class TaskStoreTests: XCTestCase {
    var dir = ""
    var path: String { dir + "/tasks.db" }

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "taskstore-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }


    func testRowsAreReadableQueuedAndSurviveAReopen() throws {
        let store = try TaskStore(path: path, retention: .init())
        let r = row("t-1", payload: [0, 255, 7])
        store.enqueue("t-1") { r }
        XCTAssertEqual(try store.row("t-1"), r, "a queued row is read from the queue")
        store.enqueue("t-2") { row("t-2", payload: []) }
        store.enqueue("t-3") { row("t-3", payload: nil) }
        store.close()

        let again = try TaskStore(path: path, retention: .init())
        defer { again.close() }
        XCTAssertEqual(try again.row("t-1"), r)
        XCTAssertEqual(try again.row("t-2")?.payload, [], "an empty payload stays empty, not NULL")
        XCTAssertNil(try again.row("t-3")?.payload)
        XCTAssertNil(try again.row("t-9"))
        XCTAssertEqual(again.usage.rows, 3)
        XCTAssertEqual(again.usage.payloadBytes, 3)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)
    }

    func testTheWriterThreadCommitsWithoutAFlush() throws {
        let store = try TaskStore(path: path, retention: .init())
        defer { store.close() }
        store.enqueue("t-1") { row("t-1") }
        // Read the file from a second connection: only a commit shows there.
        let deadline = Date().addingTimeInterval(10)
        var seen: Int64 = 0
        while Date() < deadline {
            let c = try SQLiteConnection(path: path)
            seen = try c.integer("SELECT COUNT(*) FROM tasks WHERE id = 't-1'")
            if seen == 1 { break }
            usleep(10_000)
        }
        XCTAssertEqual(seen, 1)
    }

    func testOldestPayloadsAreDroppedPastTheBudgetKeepingTheRecord() throws {
        let store = try TaskStore(path: path, retention: .init(payloadBudget: 250, payloadRule: "over the budget"))
        defer { store.close() }
        let now = Date().timeIntervalSince1970
        for i in 0..<4 {
            store.enqueue("t-\(i)") { row("t-\(i)", finished: now + Double(i), payload: Array(repeating: UInt8(i), count: 100)) }
        }
        store.enqueue("big") { row("big", finished: now + 9, payload: Array(repeating: 9, count: 251)) }
        store.flush()
        XCTAssertNil(try store.row("t-0")?.payload)
        XCTAssertNil(try store.row("t-1")?.payload)
        XCTAssertEqual(try store.row("t-0")?.expired, "over the budget")
        XCTAssertEqual(try store.row("t-2")?.payload?.count, 100)
        XCTAssertEqual(try store.row("t-3")?.payload?.count, 100)
        XCTAssertNil(try store.row("big")?.payload, "a payload larger than the budget is not kept at all")
        XCTAssertEqual(try store.row("big")?.expired, "over the budget")
        XCTAssertEqual(store.usage.payloadBytes, 200)
        XCTAssertEqual(store.usage.rows, 5, "records stay when their payload goes")
    }

    func testRetentionRemovesOldRecordsAndKeepsTheNewestCount() throws {
        let now = Date().timeIntervalSince1970
        var store = try TaskStore(path: path, retention: .init(maxAge: .seconds(3600), maxCount: 1000))
        store.enqueue("old") { row("old", finished: now - 7200) }
        for i in 0..<5 { store.enqueue("t-\(i)") { row("t-\(i)", finished: now + Double(i)) } }
        store.flush()
        try store.pruneNow()
        XCTAssertNil(try store.row("old"), "older than the age")
        XCTAssertNotNil(try store.row("t-0"))
        store.close()

        store = try TaskStore(path: path, retention: .init(maxAge: .seconds(3600), maxCount: 2))
        defer { store.close() }
        XCTAssertEqual(store.usage.rows, 2, "opening applies the count")
        XCTAssertNil(try store.row("t-2"))
        XCTAssertNotNil(try store.row("t-3"))
        XCTAssertNotNil(try store.row("t-4"))
        XCTAssertEqual(store.usage.payloadBytes, 6)
        XCTAssertEqual(store.retention.recordRule, "finished tasks are kept for 1h and the newest 2 (--task-retention)")
    }

    func testAStreamPastTheCountIsCutAtEveryCommitNotHourly() throws {
        let store = try TaskStore(path: path, retention: .init(maxCount: 100))
        defer { store.close() }
        let now = Date().timeIntervalSince1970
        for i in 0..<1000 { store.enqueue("t-\(i)") { row("t-\(i)", finished: now + Double(i) / 1000) } }
        // The thread's commits prune; wait for them rather than flushing here.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, (try? SQLiteConnection(path: path).integer("SELECT COUNT(*) FROM tasks")) ?? 0 < 100 {
            usleep(10_000)
        }
        usleep(100_000)
        XCTAssertLessThanOrEqual(store.usage.rows, 105)
        XCTAssertNotNil(try store.row("t-999"))
    }

    /// A store opened over what is at `path` now works, and what was
    /// there was moved aside, not read.
    func assertMovedAsideAndFresh(file: StaticString = #filePath, line: UInt = #line) throws {
        let store = try TaskStore(path: path, retention: .init())
        store.enqueue("t-1") { row("t-1") }
        store.close()
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        XCTAssertTrue(names.contains { $0.hasPrefix("tasks.db.corrupt-") }, "\(names)", file: file, line: line)
        XCTAssertNotNil(try TaskStore(path: path, retention: .init()).row("t-1"), file: file, line: line)
    }

    func testAFileThatIsNotADatabaseIsMovedAsideNotFatal() throws {
        try Data("this is not sqlite, just bytes that fill a page........".utf8).write(to: URL(fileURLWithPath: path))
        try assertMovedAsideAndFresh()
    }

    func testAnotherSchemaVersionIsMovedAsideNotMisread() throws {
        do {
            let c = try SQLiteConnection(path: path)
            try c.exec("CREATE TABLE tasks (x); PRAGMA user_version = 99;")
        }
        try assertMovedAsideAndFresh()
    }

    func testRetentionFlagParses() throws {
        XCTAssertEqual(try TaskRetention.parse("24h"), TaskRetention(maxAge: .seconds(86400), maxCount: 100_000))
        XCTAssertEqual(try TaskRetention.parse("90m,500"), TaskRetention(maxAge: .seconds(5400), maxCount: 500))
        XCTAssertTrue(try TaskRetention.parse("0").isOff)
        for bad in ["", "1h,", "1h,0", "1h,x", "soon", "1h,2,3"] {
            XCTAssertThrowsError(try TaskRetention.parse(bad), bad) { e in
                XCTAssertTrue("\(e)".contains("--task-retention"), "\(e)")
            }
        }
        XCTAssertEqual(DurationText.format(.seconds(5400)), "1h30m")
        XCTAssertEqual(DurationText.format(.seconds(86400)), "24h")
    }
}
