import Foundation
import HearthCore
@testable import HearthPool
import HearthTaskStore
import XCTest

/// Finished tasks through the registry into the task store and back: after
/// a restart (a new registry on the same file) and after the memory budget
/// releases a payload.
final class TaskArchiveTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "hearth-archive-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func finished(_ reg: TaskRegistry, result: String?, error: TaskError? = nil, log: String = "hello\n") -> TaskRecord {
        let t = TaskRecord(id: reg.newID(), environment: "env", module: "m", function: "f", kwargs: Array("{}".utf8),
                           bundle: nil, timeout: nil)
        reg.add(t)
        XCTAssertTrue(t.markRunning(replica: "r-1", pid: 42, cold: false))
        t.appendLog(.stdout, Array(log.utf8))
        t.finish(error == nil ? .succeeded : .failed, result: result.map { Array($0.utf8) }, error: error, workerMicros: 5,
                 resultBytes: result.map { $0.utf8.count })
        reg.retire(t)
        return t
    }

    func testAFinishedTaskIsReadBackAfterARestart() async throws {
        let budget = ResultBudget(dir: dir + "/results")
        var store = try TaskStore(path: dir + "/tasks.db", retention: .init())
        let reg = TaskRegistry(journalDir: dir, results: budget, store: store)
        let ok = finished(reg, result: #"{"answer":[42,"\u00e9"]}"#)
        let traceback = String(repeating: "frame\n", count: 400)
        let bad = finished(reg, result: nil, error: TaskError(type: "ValueError", module: "builtins", message: "boom", traceback: traceback))
        store.close()

        store = try TaskStore(path: dir + "/tasks.db", retention: .init())
        defer { store.close() }
        let after = TaskRegistry(journalDir: dir, results: budget, store: store)
        XCTAssertNil(after.get(ok.id), "not in the new daemon's memory")
        let a = try await after.archived(ok.id)
        XCTAssertEqual(a?.snapshot.state, .succeeded)
        XCTAssertEqual(a?.snapshot.pid, 42)
        XCTAssertEqual(a?.snapshot.workerMicros, 5)
        let json = try XCTUnwrap(a?.fullJSON())
        let before = try await ok.fullJSON()
        XCTAssertEqual(json, before, "the same JSON as before the restart")
        XCTAssertEqual(try a?.fullLogs().entries.map { String(decoding: $0.bytes, as: UTF8.self) }, ["hello\n"])

        let b = try await after.archived(bad.id)
        XCTAssertEqual(b?.snapshot.state, .failed)
        XCTAssertNil(b?.snapshot.error?.traceback, "the snapshot keeps the error's summary")
        let full = try JSONDecoder().decode(TaskSnapshot.self, from: Data(try XCTUnwrap(b?.fullJSON())))
        XCTAssertEqual(full.error?.traceback, traceback, "the payload keeps the whole error")
        let none = try await after.archived("t-nope-1")
        XCTAssertNil(none)
        XCTAssertTrue(after.notFoundRule.contains("--task-retention"))
    }

    func testAPayloadPastTheMemoryBudgetIsReadFromTheStore() async throws {
        let store = try TaskStore(path: dir + "/tasks.db", retention: .init())
        defer { store.close() }
        let reg = TaskRegistry(journalDir: dir, results: ResultBudget(memory: 100, disk: 1 << 20, dir: dir + "/results"),
                               store: store)
        let first = finished(reg, result: "\"" + String(repeating: "a", count: 80) + "\"")
        let second = finished(reg, result: "\"" + String(repeating: "b", count: 80) + "\"")
        // The first left memory for the store; it is still whole.
        guard case .archived = first.state.withLock({ $0.payload }) else { return XCTFail("first should be archived") }
        let json = String(decoding: try await first.fullJSON(), as: UTF8.self)
        XCTAssertTrue(json.contains(String(repeating: "a", count: 80)), json)
        let logs = try await first.fullLogs()
        XCTAssertEqual(logs.entries.count, 1)
        guard case .memory = second.state.withLock({ $0.payload }) else { return XCTFail("second should be in memory") }
        XCTAssertEqual(reg.results?.usage.disk, 0, "no spill files with a store")
    }

    func testStoreDroppedPayloadAnswersResultExpiredWithTheRule() async throws {
        let budget = ResultBudget(memory: 100, disk: 10, dir: dir + "/results")
        let store = try TaskStore(path: dir + "/tasks.db",
                                  retention: .init(payloadBudget: budget.disk, payloadRule: budget.rule))
        defer { store.close() }
        let reg = TaskRegistry(journalDir: dir, results: budget, store: store)
        let t = finished(reg, result: "\"" + String(repeating: "a", count: 200) + "\"")
        store.flush()
        do {
            _ = try await t.fullJSON()
            XCTFail("expected result_expired")
        } catch let e as ResultExpired {
            XCTAssertTrue(e.message.contains("--result-disk-budget"), e.message)
            XCTAssertEqual(e.task.state, .succeeded)
        }
    }
}
