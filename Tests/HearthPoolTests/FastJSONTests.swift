#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
@testable import HearthPool
import XCTest

/// The hand-written JSON of the warm path must read and write what
/// JSONDecoder/JSONEncoder do.
final class FastJSONTests: XCTestCase {
    private func parse(_ s: String) throws -> JSONValue { try FastJSON.parse(Array(s.utf8)) }

    func testParsesEveryKind() throws {
        let v = try parse(#" {"a": [1, -2, 3.5, 1e3, true, false, null], "s": "x\"y\\z\n\u00e9\ud83d\ude00", "o": {}, "e": []} "#)
        XCTAssertEqual(v, .object([
            "a": .array([.int(1), .int(-2), .double(3.5), .double(1000), .bool(true), .bool(false), .null]),
            "s": .string("x\"y\\z\né😀"), "o": .object([:]), "e": .array([]),
        ]))
        XCTAssertEqual(try parse("\"caf\u{e9}\""), .string("café"))
        XCTAssertEqual(try parse("9223372036854775807"), .int(.max))
        XCTAssertEqual(try parse("9223372036854775808"), .double(9223372036854775808))
    }

    func testRefusesWhatJSONRefuses() {
        for bad in ["", "{", "[1,]", "{\"a\":1,}", "01", "1.", "-", "\"\u{1}\"", "\"\\x\"", "tru", "{} x", "NaN",
                    "\"\\ud800\"", "{1:2}", String(repeating: "[", count: 600) + String(repeating: "]", count: 600)] {
            XCTAssertThrowsError(try parse(bad), bad)
        }
        XCTAssertThrowsError(try FastJSON.parse([0x22, 0xff, 0x22]), "invalid UTF-8")
    }

    func testWriterMatchesJSONEncoder() throws {
        let values: [JSONValue] = [
            .null, .bool(true), .int(-42), .double(2.5), .double(3.0), .double(1e-7), .string("a\"b\\c\n\t\u{1}é/😀"),
            .array([.int(1), .string("x")]), .object(["k": .object(["n": .null])]),
        ]
        for v in values {
            var w = JSONWriter()
            w.value(v)
            let ours = try JSONDecoder().decode(JSONValue.self, from: Data(w.bytes))
            let theirs = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(v))
            XCTAssertEqual(ours, theirs, String(decoding: w.bytes, as: UTF8.self))
            // Unlike JSONEncoder, the writer keeps a float a float ("3.0", not "3").
            XCTAssertEqual(try FastJSON.parse(w.bytes), v, String(decoding: w.bytes, as: UTF8.self))
        }
    }

    func testFloatsStayFloats() throws {
        for d in [3.0, -0.0, 1e20, 1e-7, Double.leastNonzeroMagnitude, 1.7976931348623157e308, 0.1, -2.0] {
            var w = JSONWriter()
            w.value(.double(d))
            let back = try FastJSON.parse(w.bytes)
            guard case .double(let e) = back else { return XCTFail("\(d) came back as \(back)") }
            XCTAssertEqual(e.bitPattern, d.bitPattern, String(decoding: w.bytes, as: UTF8.self))
        }
    }

    func testSnapshotMatchesCodable() throws {
        let snap = TaskSnapshot(id: "t-1", environment: "e", module: "m", function: "f", state: .failed,
                                result: .object(["x": .array([.int(1)])]),
                                error: TaskError(type: "ValueError", module: "builtins", message: "bad \"x\"", traceback: "tb\n"),
                                replica: "e-1", pid: 7, queuedMicros: 5, runMicros: 9, workerMicros: nil, coldStart: true,
                                coldPhases: ["clone": 3, "dirs": 1])
        let ours = try JSONSerialization.jsonObject(with: Data(snap.jsonBytes)) as? NSDictionary
        let theirs = try JSONSerialization.jsonObject(with: JSONEncoder().encode(snap)) as? NSDictionary
        XCTAssertEqual(ours, theirs)
    }

    func testRawElementsKeepEachInputAsWritten() throws {
        let inputs = try FastJSON.rawElements(Array(#" [ {"z": 1, "a": 3.0} ,{}, [1] ] "#.utf8))
        XCTAssertEqual(inputs.map { String(decoding: $0, as: UTF8.self) }, [#"{"z": 1, "a": 3.0}"#, "{}", "[1]"])
        XCTAssertTrue(FastJSON.isObject(inputs[0]) && !FastJSON.isObject(inputs[2]))
        XCTAssertEqual(try FastJSON.rawElements(Array("[]".utf8)).count, 0)
        for bad in ["[1,]", "[{]", "[1] x", "{}", "[\"\\x\"]"] {
            XCTAssertThrowsError(try FastJSON.rawElements(Array(bad.utf8)), bad)
        }
    }

    func testRunFrame() throws {
        let msg = RunMessage(id: "t-1", module: "m", function: "f", kwargs: Array("{\"a\":1}".utf8),
                             bundle: .init(version: "abc", path: "/.hearth/code/abc"), env: ["K": "V"])
        let frame = msg.frame()
        let n = Int(frame[0]) << 24 | Int(frame[1]) << 16 | Int(frame[2]) << 8 | Int(frame[3])
        XCTAssertEqual(n, frame.count - 4)
        XCTAssertEqual(try FastJSON.parse(Array(frame[4...])), .object([
            "type": .string("run"), "id": .string("t-1"), "module": .string("m"), "function": .string("f"),
            "kwargs": .object(["a": .int(1)]),
            "bundle": .object(["version": .string("abc"), "path": .string("/.hearth/code/abc")]),
            "env": .object(["K": .string("V")]),
        ]))
    }

    func testWorkerMessage() throws {
        let ok = WorkerMessage(frame: Array(#"{"type":"result","id":"t-1","ok":true,"value":{"$pickle":"AA=="},"duration_us":12}"#.utf8))
        XCTAssertEqual(ok?.type, "result")
        XCTAssertEqual(ok?.ok, true)
        XCTAssertEqual(ok?.duration_us, 12)
        // The value is kept as the JSON bytes the worker wrote.
        XCTAssertEqual(ok?.value.map { String(decoding: $0, as: UTF8.self) }, #"{"$pickle":"AA=="}"#)
        let err = WorkerMessage(frame: Array(#"{"type":"result","id":"t-2","ok":false,"error":{"type":"E","module":null,"message":"m","traceback":"t"}}"#.utf8))
        XCTAssertEqual(err?.error, TaskError(type: "E", message: "m", traceback: "t"))
        XCTAssertNil(WorkerMessage(frame: Array("[1]".utf8)))
        XCTAssertNil(WorkerMessage(frame: Array("{\"id\":1}".utf8)))
        XCTAssertNil(WorkerMessage(frame: Array("garbage".utf8)))
    }
}

final class TaskJournalTests: XCTestCase {
    func testLiveEntriesSurviveAndAreReportedOnce() throws {
        let dir = NSTemporaryDirectory() + "hearth-journal-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A file of the older one-file-per-task journal is still read.
        try Data(#"{"id":"t-old-1","environment":"legacy"}"#.utf8).write(to: URL(fileURLWithPath: dir + "/t-old-1"))

        let first = TaskRegistry(journalDir: dir)
        try first.journal.open()
        first.journal.add([(id: "t-a-1", environment: "e1"), (id: "t-a-2", environment: "e2"), (id: "t-a-3", environment: "e1")])
        first.journal.remove(["t-a-2"])
        first.journal.remove(["t-never"])  // not added: nothing written

        // A second daemon on the same root (the first "crashed").
        let second = TaskRegistry(journalDir: dir)
        try second.journal.open()
        let lost = second.journal.recover()
        XCTAssertEqual(lost.map(\.id), ["t-a-1", "t-a-3", "t-old-1"])
        XCTAssertEqual(lost.map(\.environment), ["e1", "e1", "legacy"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/t-old-1"))

        // Recovery empties the log; new entries still append.
        second.journal.add([(id: "t-b-1", environment: "e")])
        let third = TaskRegistry(journalDir: dir)
        try third.journal.open()
        XCTAssertEqual(third.journal.recover().map(\.id), ["t-b-1"])
    }

    func testCompactionKeepsOnlyLiveEntries() throws {
        let dir = NSTemporaryDirectory() + "hearth-journal-c-\(getpid())-\(UInt32.random(in: 0..<UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let reg = TaskRegistry(journalDir: dir)
        try reg.journal.open()
        reg.journal.add([(id: "t-keep", environment: "e")])
        // Enough churn to pass the compaction threshold more than once.
        let batch = 1000
        for round in 0..<(TaskJournal.compactBytes / (batch * 20) + 10) {
            let ids = (0..<batch).map { "t-\(round)-\($0)" }
            reg.journal.add(ids.map { (id: $0, environment: "env") })
            reg.journal.remove(ids)
        }
        var st = stat()
        XCTAssertEqual(stat(dir + "/journal", &st), 0)
        XCTAssertLessThan(Int(st.st_size), TaskJournal.compactBytes + 64 * batch)
        let again = TaskRegistry(journalDir: dir)
        try again.journal.open()
        XCTAssertEqual(again.journal.recover().map(\.id), ["t-keep"])
    }
}
