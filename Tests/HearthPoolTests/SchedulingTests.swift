import HearthCore
@testable import HearthPool
import XCTest

/// The scheduler's decisions (`Scheduling`), case by case.
final class SchedulingTests: XCTestCase {
    func testReplicasToStartCoversWaitingTasksUpToReplicaCount() {
        func start(_ queued: Int, starting: Int = 0, running: Int = 0, count: Int = 3, draining: Bool = false) -> Int {
            Scheduling.replicasToStart(queued: queued, starting: starting, running: running, maxReplicas: count,
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

    func testReplicasToStartWithConcurrencyAndAPrewarmFloor() {
        func start(_ queued: Int, starting: Int = 0, running: Int = 0, max: Int = 8, k: Int = 1, floor: Int = 0) -> Int {
            Scheduling.replicasToStart(queued: queued, starting: starting, running: running, maxReplicas: max,
                                       concurrency: k, floor: floor, draining: false)
        }
        XCTAssertEqual(start(8, k: 4), 2, "each new replica takes concurrency tasks at once")
        XCTAssertEqual(start(9, k: 4), 3, "a partial replica's worth still needs a replica")
        XCTAssertEqual(start(8, starting: 1, k: 4), 1, "a replica being started covers concurrency tasks")
        XCTAssertEqual(start(100, k: 4, floor: 0), 8, "never beyond max")
        XCTAssertEqual(start(0, floor: 2), 2, "prewarm starts min with nothing waiting")
        XCTAssertEqual(start(0, starting: 1, floor: 2), 1)
        XCTAssertEqual(start(0, running: 2, floor: 2), 0, "min already there")
        XCTAssertEqual(start(5, running: 1, floor: 2), 5, "the queue's need when larger than the floor's")
        XCTAssertEqual(start(0, max: 1, floor: 3), 1, "the floor is capped by max too")
        XCTAssertEqual(Scheduling.replicasToStart(queued: 0, starting: 0, running: 0, maxReplicas: 4, floor: 2, draining: true), 0,
                       "draining: not even prewarm")
    }

    func testScaleDownKeepsMinUntilTheEnvironmentIsIdleForScaledownTTL() {
        let now = ContinuousClock.now
        func retire(_ idleAgo: [Int], total: Int, min: Int, quietFor: Int? = nil, scaledown: Int = 300)
            -> (indices: [Int], reason: Scheduling.ScaleDownReason)? {
            Scheduling.replicasToRetire(idleLastUsed: idleAgo.map { now - .seconds($0) }, total: total, minReplicas: min,
                                        ttl: .seconds(60), environmentIdleSince: quietFor.map { now - .seconds($0) },
                                        scaledownTTL: .seconds(scaledown), now: now)
        }
        XCTAssertNil(retire([], total: 3, min: 0), "nothing idle: nothing goes")
        XCTAssertNil(retire([30, 10], total: 2, min: 0), "idle less than ttl")
        XCTAssertEqual(retire([90, 70, 10], total: 4, min: 1)?.indices, [0, 1], "idle past ttl, above min")
        XCTAssertEqual(retire([90, 70, 65], total: 3, min: 1)?.indices, [0, 1], "min stays, however long idle")
        XCTAssertEqual(retire([90, 70, 65], total: 3, min: 1)?.reason, .idleTTL)
        XCTAssertNil(retire([90, 70], total: 2, min: 2, quietFor: 65), "a fixed count waits for scaledown_ttl")
        XCTAssertEqual(retire([90, 70], total: 2, min: 2, quietFor: 300)?.indices, [0, 1],
                       "quiet for scaledown_ttl: all go")
        XCTAssertEqual(retire([90, 70], total: 2, min: 2, quietFor: 300)?.reason, .scaledownTTL)
        XCTAssertEqual(retire([90, 70], total: 2, min: 0)?.indices, [0, 1], "min 0: down to zero by ttl alone")
        XCTAssertEqual(retire([90], total: 3, min: 0, quietFor: nil, scaledown: 1)?.indices, [0],
                       "tasks still run: scaledown_ttl does not apply, ttl does")
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
