import HearthCore
@testable import HearthPool
import XCTest

/// The scheduler's decisions (`Scheduling`), case by case.
final class SchedulingTests: XCTestCase {
    func testReplicasToStartCoversWaitingTasksUpToReplicaCount() {
        func start(_ queued: Int, starting: Int = 0, running: Int = 0, count: Int = 3, draining: Bool = false) -> Int {
            Scheduling.replicasToStart(queued: queued, starting: starting, running: running, replicaCount: count,
                                       draining: draining)
        }
        XCTAssertEqual(start(0), 0, "nothing waits: nothing starts")
        XCTAssertEqual(start(1), 1)
        XCTAssertEqual(start(5), 3, "never more than replica_count")
        XCTAssertEqual(start(5, running: 2), 1, "running replicas count against replica_count")
        XCTAssertEqual(start(5, running: 3), 0, "at replica_count: the tasks wait for a replica to be free")
        XCTAssertEqual(start(2, starting: 2), 0, "each waiting task already has a replica coming")
        XCTAssertEqual(start(3, starting: 1), 2)
        XCTAssertEqual(start(3, starting: 1, running: 1), 1, "starting and running together fill replica_count")
        XCTAssertEqual(start(5, draining: true), 0, "a draining environment starts nothing")
        XCTAssertEqual(start(1, starting: 4, running: 0, count: 3), 0, "over the count (a smaller new spec): none, not negative")
    }

    func testStartsWaitOutTheBackoffAfterAFailure() {
        let now = ContinuousClock.now
        XCTAssertEqual(Scheduling.startGate(now: now, nextStartAllowed: now), .now)
        XCTAssertEqual(Scheduling.startGate(now: now, nextStartAllowed: now - .seconds(1)), .now)
        let later = now + .milliseconds(500)
        XCTAssertEqual(Scheduling.startGate(now: now, nextStartAllowed: later), .at(later))
        // The backoff itself: 0.5 s, 1 s, 2 s, … capped at a minute.
        XCTAssertEqual(Backoff.delay(afterFailures: 1), .milliseconds(500))
        XCTAssertEqual(Backoff.delay(afterFailures: 2), .seconds(1))
        XCTAssertEqual(Backoff.delay(afterFailures: 4), .seconds(4))
        XCTAssertEqual(Backoff.delay(afterFailures: 8), .seconds(60))
        XCTAssertEqual(Backoff.delay(afterFailures: 1000), .seconds(60), "no overflow after many failures")
    }

    func testTheQueueRefusesWhatWouldNotFitAndNamesTheNumbers() {
        XCTAssertNil(Scheduling.queueRefusal(environment: "e", queued: 0, adding: 0, maxQueue: 0),
                     "tasks an idle replica takes never wait")
        XCTAssertNil(Scheduling.queueRefusal(environment: "e", queued: 9, adding: 1, maxQueue: 10))
        let one = Scheduling.queueRefusal(environment: "e", queued: 10, adding: 1, maxQueue: 10)
        XCTAssertEqual(one?.code, .queueFull)
        XCTAssertEqual(one?.message, "environment \"e\": the queue is full (10 tasks waiting, max_queue 10); retry later or raise max_queue")
        let batch = Scheduling.queueRefusal(environment: "e", queued: 4, adding: 7, maxQueue: 10)
        XCTAssertEqual(batch?.message, "environment \"e\": the queue is full (4 tasks waiting, max_queue 10, 7 more sent at once); retry later or raise max_queue")
    }

    func testAfterATaskAReplicaTakesTheNextWaitsOrGoes() {
        func after(run: Int = 1, max: Int? = nil, draining: Bool = false, exited: Bool = false, queued: Int = 0) -> Scheduling.AfterTask {
            Scheduling.afterTask(tasksRun: run, maxTasksPerReplica: max, draining: draining, exited: exited, queued: queued)
        }
        XCTAssertEqual(after(), .idle)
        XCTAssertEqual(after(queued: 3), .takeNext)
        XCTAssertEqual(after(run: 1, max: 1, queued: 3), .retire, "max_tasks_per_replica 1: a fresh replica per task")
        XCTAssertEqual(after(run: 2, max: 3, queued: 3), .takeNext)
        XCTAssertEqual(after(run: 3, max: 3), .retire)
        XCTAssertEqual(after(draining: true, queued: 3), .retire)
        XCTAssertEqual(after(exited: true, queued: 3), .retire, "a replica whose process is gone takes nothing")
    }

    func testIdleReplicasGoAtTheirTTL() {
        let now = ContinuousClock.now
        XCTAssertFalse(Scheduling.idleExpired(lastUsed: now - .seconds(59), now: now, ttl: .seconds(60)))
        XCTAssertTrue(Scheduling.idleExpired(lastUsed: now - .seconds(60), now: now, ttl: .seconds(60)))
        XCTAssertTrue(Scheduling.idleExpired(lastUsed: now - .seconds(600), now: now, ttl: .seconds(60)))
    }
}
