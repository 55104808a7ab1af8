import Foundation
import Glibc
import HearthCore
import HearthOS
import HearthSandbox
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import HearthPool

/// The environment pool's scheduling on fake replicas (FakeReplicas.swift):
/// real task channels over pipes, real frames, real timers; no sandbox.
/// What these tests pin is the pool's decisions as a whole: how many
/// replicas start, which task goes where, what a failure does to the tasks
/// and replicas around it.
@Suite(.serialized) struct EnvironmentPoolTests {
    /// A pool on a fake launcher in a fresh state directory.
    final class Harness: Sendable {
        let dir: String
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let launcher: FakeLauncher
        let pool: Pool

        init() throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("hearth-pool-\(UUID().uuidString)").path
            try FS.makeDirectory(dir, mode: 0o700)
            launcher = FakeLauncher(loop: group.next())
            let ctx = PoolContext(launcher: launcher, code: try CodeStore(stateRoot: dir),
                                  tasks: TaskRegistry(journalDir: dir + "/journal"),
                                  logger: Logger(label: "test.pool"), resultLoop: group.next())
            pool = try Pool(context: ctx, stateRoot: dir)
        }

        func apply(_ name: String = "env", replicas: Int = 1, timeout: Duration? = nil, maxTasks: Int? = nil,
                   maxQueue: Int = 1000, ttl: Duration = .seconds(300),
                   scaling: (inout PoolConfig) -> Void = { _ in }) async throws {
            var config = PoolConfig(name: name, identity: "id-\(name)-\(replicas)-\(maxTasks ?? 0)", image: "fake:1",
                                    env: [:], limits: CgroupLimits(), replicaCount: replicas, ttl: ttl, secrets: [],
                                    network: .none, seccomp: nil, capabilities: .empty, timeout: timeout,
                                    maxTasksPerReplica: maxTasks, maxQueue: maxQueue)
            scaling(&config)
            _ = try await pool.apply(config, spec: Data("{}".utf8), persist: false)
        }

        func submit(_ function: String, _ kwargs: String = "{}", env: String = "env",
                    timeout: Duration? = nil) throws -> TaskRecord {
            try pool.submitMany(env, [.init(module: "m", function: function, kwargs: Array(kwargs.utf8),
                                           bundle: nil, timeout: timeout)])[0]
        }

        func run(_ function: String, _ kwargs: String = "{}", env: String = "env",
                 timeout: Duration? = nil) async throws -> TaskSnapshot {
            await (try submit(function, kwargs, env: env, timeout: timeout)).wait()
        }

        func close() async {
            await pool.shutdown(deadline: .seconds(5))
            try? await group.shutdownGracefully()
            try? FS.removeTree(path: dir)
        }
    }

    private func value(_ s: TaskSnapshot) -> JSONValue? { s.result }

    @Test func aWarmReplicaServesTaskAfterTaskAndKeepsItsState() async throws {
        let h = try Harness()
        try await h.apply()
        let first = try await h.run("echo", #"{"x": 1}"#)
        #expect(first.state == .succeeded, "\(String(describing: first.error))")
        #expect(first.coldStart == true)
        #expect(first.result == .object(["x": .int(1)]))
        for i in 0..<5 {
            let s = try await h.run("echo", #"{"i": \#(i)}"#)
            #expect(s.state == .succeeded && s.coldStart == false && s.replica == first.replica, "\(s)")
        }
        #expect(h.launcher.builds == 1)
        await h.close()
    }

    @Test func queuedTasksStartReplicasUpToTheReplicaCountAndNoMore() async throws {
        let h = try Harness()
        try await h.apply(replicas: 3)
        let tasks = try (0..<9).map { _ in try h.submit("sleep", #"{"ms": 60}"#) }
        var replicas = Set<String>()
        for t in tasks {
            let s = await t.wait()
            #expect(s.state == .succeeded, "\(String(describing: s.error))")
            if let r = s.replica { replicas.insert(r) }
        }
        #expect(h.launcher.builds == 3)
        #expect(replicas.count == 3, "\(replicas)")
        let status = try await h.pool.status("env")
        #expect(status.replicas.count == 3 && status.queued == 0)
        await h.close()
    }

    @Test func aFailedTaskLeavesItsReplicaWarm() async throws {
        let h = try Harness()
        try await h.apply()
        let failed = try await h.run("fail", #"{"x": "q"}"#)
        #expect(failed.state == .failed)
        #expect(failed.error?.type == "ValueError" && failed.error?.message == "bad input q")
        let next = try await h.run("echo")
        #expect(next.state == .succeeded && next.replica == failed.replica && next.coldStart == false)
        #expect(h.launcher.builds == 1)
        await h.close()
    }

    @Test func aWorkerThatDiesFailsOnlyItsTaskAndIsReplaced() async throws {
        let h = try Harness()
        try await h.apply()
        let crashed = try await h.run("crash")
        #expect(crashed.state == .failed)
        #expect(crashed.error?.type == "ReplicaLost", "\(String(describing: crashed.error))")
        #expect(crashed.error?.message.contains("exited with code 3") == true, "\(String(describing: crashed.error))")
        let next = try await h.run("echo")
        #expect(next.state == .succeeded && next.coldStart == true && next.replica != crashed.replica)
        #expect(h.launcher.builds == 2)
        // The dead one was torn down.
        try await waitUntil { h.launcher.processes.first?.tornDown == true }
        await h.close()
    }

    @Test func aWorkerThatBreaksTheProtocolIsKilledAndItsTaskSaysWhy() async throws {
        let h = try Harness()
        try await h.apply()
        let s = try await h.run("garbage")
        #expect(s.state == .failed && s.error?.type == "ProtocolError", "\(String(describing: s.error))")
        #expect(s.error?.message.contains("malformed frame") == true, "\(String(describing: s.error))")
        #expect(try await h.run("echo").state == .succeeded)
        #expect(h.launcher.builds == 2)
        await h.close()
    }

    @Test func aTimeoutKillsTheReplicaAndTheNextTaskGetsAFreshOne() async throws {
        let h = try Harness()
        try await h.apply()
        let s = try await h.run("hang", timeout: .milliseconds(150))
        #expect(s.state == .failed && s.error?.type == "Timeout", "\(String(describing: s.error))")
        let quick = try await h.run("sleep", #"{"ms": 5}"#, timeout: .seconds(30))
        #expect(quick.state == .succeeded && quick.replica != s.replica)
        // The quick task's timer was cancelled with it: its replica lives on.
        let again = try await h.run("echo")
        #expect(again.replica == quick.replica && again.state == .succeeded)
        await h.close()
    }

    @Test func maxTasksPerReplicaRetiresAReplicaAfterItsTasks() async throws {
        let h = try Harness()
        try await h.apply(maxTasks: 2)
        var replicas: [String?] = []
        for _ in 0..<5 { replicas.append(try await h.run("echo").replica) }
        #expect(h.launcher.builds == 3)
        #expect(replicas[0] == replicas[1] && replicas[1] != replicas[2] && replicas[2] == replicas[3]
                && replicas[3] != replicas[4], "\(replicas)")
        try await waitUntil { h.launcher.processes.prefix(2).allSatisfy(\.tornDown) }
        await h.close()
    }

    @Test func startFailuresFailTheWaitingTasksWithTheReasonAndBackOff() async throws {
        let h = try Harness()
        try await h.apply()
        h.launcher.failNext(2)
        let s = try await h.run("echo")
        #expect(s.state == .failed && s.error?.type == "ReplicaStartFailed")
        #expect(s.error?.message.contains("the fake image is broken") == true)
        let status = try await h.pool.status("env")
        #expect(status.lastError?.contains("the fake image is broken") == true)
        // The next start waits out the backoff, fails once more, then works.
        let t0 = ContinuousClock.now
        let second = try await h.run("echo")
        #expect(second.state == .failed)
        let third = try await h.run("echo")
        #expect(third.state == .succeeded, "\(String(describing: third.error))")
        #expect(h.launcher.builds == 3)
        // Two backoffs (0.5 s, then 1 s) lie between the three starts.
        #expect(ContinuousClock.now - t0 >= .milliseconds(1300))
        #expect(try await h.pool.status("env").lastError == nil)
        await h.close()
    }

    @Test func aFullQueueRefusesTheTaskThatDoesNotFitAndLosesNone() async throws {
        let h = try Harness()
        try await h.apply(maxQueue: 2)
        let a = try h.submit("sleep", #"{"ms": 100}"#)
        let b = try h.submit("echo")
        do {
            _ = try h.submit("echo")
            Issue.record("a third task fitted in a queue of 2")
        } catch let e as HearthError {
            #expect(e.code == .queueFull && e.message.contains("max_queue 2"), "\(e)")
        }
        #expect(await a.wait().state == .succeeded)
        #expect(await b.wait().state == .succeeded)
        await h.close()
    }

    @Test func cancellingAQueuedTaskAndARunningOne() async throws {
        let h = try Harness()
        try await h.apply()
        let running = try h.submit("hang")
        let queued = try h.submit("echo")
        try await waitUntil { running.currentState == .running }
        _ = try await h.pool.cancel(queued.id)
        let q = await queued.wait()
        #expect(q.state == .cancelled && q.error?.message.contains("before it started") == true)
        _ = try await h.pool.cancel(running.id)
        let r = await running.wait()
        #expect(r.state == .cancelled && r.error?.message.contains("while running") == true, "\(String(describing: r.error))")
        #expect(h.launcher.processes.first?.signals.contains(SIGINT) == true)
        // Interrupted, not killed: the same replica takes the next task.
        let next = try await h.run("echo")
        #expect(next.replica == r.replica && h.launcher.builds == 1)
        await h.close()
    }

    @Test func removingAnEnvironmentCancelsItsQueueFinishesItsTaskAndTearsDownEveryReplica() async throws {
        let h = try Harness()
        try await h.apply(replicas: 2)
        let busy = try (0..<2).map { _ in try h.submit("sleep", #"{"ms": 150}"#) }
        let waiting = try h.submit("echo")
        try await waitUntil { busy.allSatisfy { $0.currentState == .running } }
        try await h.pool.remove("env", deadline: .seconds(10))
        for t in busy { #expect(await t.wait().state == .succeeded) }
        #expect(await waiting.wait().state == .cancelled)
        #expect(h.launcher.processes.count == 2 && h.launcher.processes.allSatisfy(\.tornDown))
        do {
            _ = try h.submit("echo")
            Issue.record("a removed environment took a task")
        } catch let e as HearthError {
            #expect(e.code == .environmentNotFound)
        }
        await h.close()
    }

    @Test func anIdleReplicaGoesAfterItsTTL() async throws {
        let h = try Harness()
        try await h.apply(ttl: .milliseconds(300))
        #expect(try await h.run("echo").state == .succeeded)
        try await waitUntil { h.launcher.processes.first?.tornDown == true }
        #expect(try await h.pool.status("env").replicas.isEmpty)
        // The next task starts a new one.
        let s = try await h.run("echo")
        #expect(s.coldStart == true && h.launcher.builds == 2)
        await h.close()
    }

    // MARK: scaling between min and max

    @Test func aBurstScalesUpToMaxThenIdleReplicasGoDownToMin() async throws {
        let h = try Harness()
        try await h.apply(replicas: 4, ttl: .milliseconds(400)) { $0.minReplicas = 1; $0.scaledownTTL = .seconds(3600) }
        let tasks = try (0..<8).map { _ in try h.submit("sleep", #"{"ms": 300}"#) }
        var used = Set<String>()
        for t in tasks {
            let s = await t.wait()
            #expect(s.state == .succeeded, "\(String(describing: s.error))")
            if let r = s.replica { used.insert(r) }
        }
        #expect(h.launcher.builds == 4, "8 waiting tasks, max 4: four replicas, no more")
        #expect(used.count == 4)
        let up = try await h.pool.status("env").scaling?.lastDecision
        #expect(up?.direction == .up)
        // Idle past ttl: down to min, never below while scaledown_ttl has not passed.
        try await waitUntil { h.launcher.processes.filter(\.tornDown).count == 3 }
        let status = try await h.pool.status("env")
        #expect(status.replicas.count == 1)
        #expect(status.scaling?.min == 1 && status.scaling?.max == 4 && status.scaling?.current == 1)
        #expect(status.scaling?.lastDecision?.direction == .down)
        #expect(status.scaling?.lastDecision?.reason.contains("idle for ttl") == true, "\(String(describing: status.scaling))")
        // The one kept is warm.
        let next = try await h.run("echo")
        #expect(next.coldStart == false && h.launcher.builds == 4)
        await h.close()
    }

    @Test func minZeroScalesToZeroAndTheNextTaskIsAColdStart() async throws {
        let h = try Harness()
        try await h.apply(replicas: 2, ttl: .milliseconds(300)) { $0.minReplicas = 0 }
        #expect(try await h.run("echo").coldStart == true)
        try await waitUntil { h.launcher.processes.first?.tornDown == true }
        #expect(try await h.pool.status("env").replicas.isEmpty)
        let next = try await h.run("echo")
        #expect(next.coldStart == true && h.launcher.builds == 2)
        await h.close()
    }

    @Test func aFixedCountStaysUntilNothingRunsForScaledownTTL() async throws {
        let h = try Harness()
        try await h.apply(replicas: 2, ttl: .milliseconds(100)) { $0.scaledownTTL = .milliseconds(1500) }
        let a = try h.submit("sleep", #"{"ms": 50}"#), b = try h.submit("sleep", #"{"ms": 50}"#)
        _ = await a.wait(); _ = await b.wait()
        #expect(h.launcher.builds == 2)
        // Well past ttl, before scaledown_ttl: min (= replica_count) stays.
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await h.pool.status("env").replicas.count == 2)
        try await waitUntil { h.launcher.processes.allSatisfy(\.tornDown) }
        let status = try await h.pool.status("env")
        #expect(status.replicas.isEmpty)
        #expect(status.scaling?.lastDecision?.reason.contains("scaledown_ttl") == true, "\(String(describing: status.scaling))")
        await h.close()
    }

    @Test func withConcurrencyEachNewReplicaTakesThatManyWaitingTasks() async throws {
        let h = try Harness()
        // The fake worker answers one frame at a time; the pool still hands
        // each replica up to 4 tasks and starts replicas for the rest.
        try await h.apply(replicas: 8) { $0.minReplicas = 0; $0.concurrency = 4 }
        let tasks = try (0..<8).map { _ in try h.submit("sleep", #"{"ms": 20}"#) }
        var used: [String: Int] = [:]
        for t in tasks {
            let s = await t.wait()
            #expect(s.state == .succeeded, "\(String(describing: s.error))")
            if let r = s.replica { used[r, default: 0] += 1 }
        }
        #expect(h.launcher.builds == 2, "8 tasks, 4 per replica: 2 replicas")
        #expect(used.values.sorted() == [4, 4], "\(used)")
        await h.close()
    }

    @Test func prewarmStartsMinBeforeAnyTaskAndAgainWhenATaskWakesItFromZero() async throws {
        let h = try Harness()
        try await h.apply(replicas: 3, ttl: .milliseconds(100)) {
            $0.minReplicas = 2; $0.prewarm = true; $0.scaledownTTL = .milliseconds(400)
        }
        try await waitUntil { h.launcher.builds == 2 }
        for _ in 0..<500 where try await h.pool.status("env").replicas.count < 2 {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(try await h.pool.status("env").replicas.count == 2)
        let first = try await h.run("echo")
        #expect(first.state == .succeeded && first.coldStart == false, "a prewarmed replica was ready")
        // Quiet for scaledown_ttl: zero, and prewarm does not start them again by itself.
        try await waitUntil { h.launcher.processes.allSatisfy(\.tornDown) }
        try await Task.sleep(for: .milliseconds(300))
        #expect(h.launcher.builds == 2)
        // A task wakes it: its own replica and min again.
        #expect(try await h.run("echo").state == .succeeded)
        try await waitUntil { h.launcher.builds == 4 }
        await h.close()
    }
}

/// Polls `condition` (at most 10 s): for outcomes that follow a task's end
/// on another thread (a teardown).
func waitUntil(_ condition: @Sendable () -> Bool) async throws {
    let end = ContinuousClock.now + .seconds(10)
    while !condition() {
        if ContinuousClock.now > end { Issue.record("condition not met within 10 s"); return }
        try await Task.sleep(for: .milliseconds(10))
    }
}
