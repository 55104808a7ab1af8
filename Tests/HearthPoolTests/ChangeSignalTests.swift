@testable import HearthPool
import Synchronization
import XCTest

/// Drains wait on a ChangeSignal instead of polling: each way a wait ends.
final class ChangeSignalTests: XCTestCase {
    func testANotifyWakesAWaiterLongBeforeItsDeadline() async {
        let signal = ChangeSignal()
        let deadline = ContinuousClock.now + .seconds(60)
        let seen = signal.generation
        let waiter = Task { await signal.wait(after: seen, until: deadline) }
        // Notify until the waiter is woken (it may not have registered yet:
        // a notify before it does still counts, by generation).
        signal.notify()
        await waiter.value
        XCTAssertLessThan(ContinuousClock.now, deadline, "woken by the notify, not the deadline")
    }

    func testANotifyBetweenTheCheckAndTheWaitIsNotMissed() async {
        let signal = ChangeSignal()
        let seen = signal.generation
        signal.notify()
        let deadline = ContinuousClock.now + .seconds(60)
        await signal.wait(after: seen, until: deadline)
        XCTAssertLessThan(ContinuousClock.now, deadline)
    }

    func testAWaitEndsAtItsDeadlineWithoutANotify() async {
        let signal = ChangeSignal()
        let deadline = ContinuousClock.now + .milliseconds(50)
        await signal.wait(after: signal.generation, until: deadline)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now, deadline)
    }

    func testCancellingTheWaitingTaskEndsTheWait() async {
        let signal = ChangeSignal()
        let deadline = ContinuousClock.now + .seconds(60)
        let waiter = Task { await signal.wait(after: signal.generation, until: deadline) }
        waiter.cancel()
        await waiter.value
        XCTAssertLessThan(ContinuousClock.now, deadline)
    }

    func testAConditionIsRecheckedAfterEachNotify() async {
        let signal = ChangeSignal()
        let count = Mutex(3)
        let deadline = ContinuousClock.now + .seconds(60)
        let waiter = Task { await signal.wait(until: deadline) { count.withLock { $0 == 0 } } }
        for _ in 0..<3 {
            count.withLock { $0 -= 1 }
            signal.notify()
        }
        await waiter.value
        XCTAssertEqual(count.withLock { $0 }, 0)
        XCTAssertLessThan(ContinuousClock.now, deadline)
    }
}
