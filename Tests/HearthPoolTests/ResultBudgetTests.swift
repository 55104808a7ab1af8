import Foundation
import HearthCore
@testable import HearthPool
import XCTest

/// The retention policy as bookkeeping: oldest spilled past the memory
/// budget, oldest dropped past the disk budget, memory never above about
/// twice its budget.
final class ResultBudgetTests: XCTestCase {
    typealias A = RetentionLedger.Action

    func testUnderBudgetNothingMoves() {
        var l = RetentionLedger(memoryBudget: 100, diskBudget: 100)
        XCTAssertEqual(l.add("a", bytes: 40), [])
        XCTAssertEqual(l.add("b", bytes: 60), [])
        XCTAssertEqual(l.memoryBytes, 100)
        XCTAssertEqual(l.place(of: "a"), .memory)
    }

    func testOldestIsSpilledThenDroppedFromDisk() {
        var l = RetentionLedger(memoryBudget: 100, diskBudget: 100)
        _ = l.add("a", bytes: 60)
        XCTAssertEqual(l.add("b", bytes: 60), [.spill("a")])
        XCTAssertEqual(l.place(of: "a"), .spilling)
        XCTAssertEqual(l.spillDone("a", ok: true).kept, true)
        XCTAssertEqual(l.place(of: "a"), .disk)
        XCTAssertEqual(l.memoryBytes, 60)
        // b needs room on disk: a, the oldest there, goes.
        XCTAssertEqual(l.add("c", bytes: 60), [.drop("a", fromDisk: true), .spill("b")])
        XCTAssertEqual(l.diskBytes, 60)
        XCTAssertNil(l.place(of: "a"))
        XCTAssertEqual(l.spillDone("b", ok: true).kept, true)
        XCTAssertEqual(l.diskBytes, 60)
    }

    func testDropFromDiskIsReportedWithItsFile() {
        var l = RetentionLedger(memoryBudget: 10, diskBudget: 10)
        _ = l.add("a", bytes: 10)
        XCTAssertEqual(l.add("b", bytes: 10), [.spill("a")])
        _ = l.spillDone("a", ok: true)
        XCTAssertEqual(l.add("c", bytes: 10), [.drop("a", fromDisk: true), .spill("b")])
    }

    func testNoDiskBudgetDropsTheOldestFromMemory() {
        var l = RetentionLedger(memoryBudget: 100, diskBudget: 0)
        _ = l.add("a", bytes: 60)
        XCTAssertEqual(l.add("b", bytes: 60), [.drop("a", fromDisk: false)])
        XCTAssertEqual(l.memoryBytes, 60)
        XCTAssertEqual(l.count, 1)
    }

    func testAPayloadLargerThanTheDiskBudgetIsDropped() {
        var l = RetentionLedger(memoryBudget: 10, diskBudget: 50)
        XCTAssertEqual(l.add("huge", bytes: 80), [.drop("huge", fromDisk: false)])
        XCTAssertEqual(l.memoryBytes, 0)
    }

    func testSpillBacklogIsBoundedSoMemoryStaysUnderTwiceTheBudget() {
        var l = RetentionLedger(memoryBudget: 100, diskBudget: 10_000)
        var actions: [A] = []
        // The disk never answers: spills pile up until a budget's worth is in flight.
        for i in 0..<20 { actions += l.add("t\(i)", bytes: 30) }
        XCTAssertLessThanOrEqual(l.memoryBytes, 2 * 100 + 30)
        XCTAssertLessThanOrEqual(l.spillingBytes, 100)
        XCTAssertEqual(Array(actions.prefix(4)), [.spill("t0"), .spill("t1"), .spill("t2"), .drop("t3", fromDisk: false)])
    }

    func testAFailedSpillDropsAndReleasesItsReservation() {
        var l = RetentionLedger(memoryBudget: 10, diskBudget: 100)
        _ = l.add("a", bytes: 10)
        _ = l.add("b", bytes: 10)
        XCTAssertEqual(l.diskBytes, 10)
        let r = l.spillDone("a", ok: false)
        XCTAssertFalse(r.kept)
        XCTAssertEqual(r.actions.first, .drop("a", fromDisk: false))
        XCTAssertEqual(l.diskBytes, 0)
        XCTAssertEqual(l.memoryBytes, 10)
    }

    func testRemoveWhileSpillingIsNotKeptWhenTheSpillEnds() {
        var l = RetentionLedger(memoryBudget: 10, diskBudget: 100)
        _ = l.add("a", bytes: 10)
        _ = l.add("b", bytes: 10)
        XCTAssertEqual(l.remove("a"), .spilling)
        XCTAssertEqual(l.diskBytes, 0)
        XCTAssertEqual(l.spillingBytes, 0)
        XCTAssertFalse(l.spillDone("a", ok: true).kept)
        XCTAssertEqual(l.memoryBytes, 10)
    }

    func testSpillFileRoundTrips() throws {
        let p = TaskPayload(result: Array(#"{"a":[1,"\u00e9"]}"#.utf8),
                            error: TaskError(type: "ValueError", module: "builtins", message: "m", traceback: "tb"),
                            logs: [.init(stream: .stdout, bytes: Array("out\n".utf8)), .init(stream: .stderr, bytes: [0xff, 0])],
                            logsDropped: 7)
        let q = try SpillCodec.decode(SpillCodec.encode(p))
        XCTAssertEqual(q.result, p.result)
        XCTAssertEqual(q.error, p.error)
        XCTAssertEqual(q.logs.map(\.bytes), p.logs.map(\.bytes))
        XCTAssertEqual(q.logs.map(\.stream), [.stdout, .stderr])
        XCTAssertEqual(q.logsDropped, 7)
        let empty = try SpillCodec.decode(SpillCodec.encode(TaskPayload()))
        XCTAssertNil(empty.result)
        XCTAssertNil(empty.error)
    }

    func testTruncatedSpillFileIsRefused() {
        let bytes = SpillCodec.encode(TaskPayload(result: Array("[1,2,3]".utf8)))
        for n in [0, 3, 8, bytes.count - 1] {
            XCTAssertThrowsError(try SpillCodec.decode(Array(bytes.prefix(n))), "prefix \(n)")
        }
        XCTAssertThrowsError(try SpillCodec.decode(bytes + [0]))
    }

    func testResultValueIsKeptAsItsJSONBytesAndValidated() throws {
        let frame = Array(#"{"type":"result","id":"t-1","ok":true,"value": [ {"a": "\u00e9"}, 1.5, null ] ,"duration_us":3}"#.utf8)
        let (o, raw) = try FastJSON.parseObject(frame, rawKey: "value")
        XCTAssertEqual(raw.map { String(decoding: $0, as: UTF8.self) }, #"[ {"a": "\u00e9"}, 1.5, null ]"#)
        XCTAssertEqual(o["id"], .string("t-1"))
        XCTAssertNil(o["value"])
        for bad in [#"{"value": [1,}"#, #"{"value": "\ud800"}"#, #"{"value": tru}"#, #"{"value": [1]] }"#, "{\"value\": \"\u{1}\"}"] {
            XCTAssertThrowsError(try FastJSON.parseObject(Array(bad.utf8), rawKey: "value"), bad)
        }
        let invalidUTF8: [UInt8] = Array(#"{"value":""#.utf8) + [0xc3, 0x28] + Array(#""}"#.utf8)
        XCTAssertThrowsError(try FastJSON.parseObject(invalidUTF8, rawKey: "value"))
        XCTAssertNotNil(WorkerMessage(frame: frame)?.value)
    }

    func testFrameReaderCutsOneFrameAtATime() throws {
        var r = FrameReader(maxBytes: 16)
        r.append([0, 0, 0, 2, 0x7b, 0x7d, 0, 0, 0, 1, 0x31, 0, 0])
        XCTAssertEqual(try r.next(), [0x7b, 0x7d])
        XCTAssertEqual(try r.next(), [0x31])
        XCTAssertNil(try r.next())
        r.append([0, 99])
        XCTAssertThrowsError(try r.next())
    }
}
