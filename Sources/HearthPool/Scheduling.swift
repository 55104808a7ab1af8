import HearthCore

/// The decisions an environment's scheduler makes, as pure functions of
/// what it knows, so that each rule has one place and a unit test.
/// `EnvironmentPool` gathers the numbers under its locks and acts on the
/// answers.
public enum Scheduling {
    /// Replicas to start now: enough for the tasks waiting that replicas
    /// being started will not take (each takes `concurrency` at once), and
    /// up to `floor` (prewarm's `min`) even with nothing waiting; never
    /// beyond `maxReplicas` running and starting together, none while
    /// draining.
    public static func replicasToStart(queued: Int, starting: Int, running: Int, maxReplicas: Int,
                                       concurrency: Int = 1, floor: Int = 0, draining: Bool) -> Int {
        guard !draining else { return 0 }
        let perReplica = max(1, concurrency)
        let uncovered = max(0, queued - starting * perReplica)
        let forQueue = (uncovered + perReplica - 1) / perReplica
        let forFloor = floor - running - starting
        let room = maxReplicas - running - starting
        return max(0, min(max(forQueue, forFloor), room))
    }

    /// Why replicas go when their environment scales down.
    public enum ScaleDownReason: Equatable, Sendable {
        /// Each was idle for `ttl` while more than `min` replicas remained.
        case idleTTL
        /// Nothing was queued or running for `scaledown_ttl`: all go.
        case scaledownTTL
    }

    /// Which idle replicas go now. `idleLastUsed`: when each idle replica
    /// (no task in flight) last finished a task, least recently used
    /// first; `total`: all replicas, busy ones included; `environmentIdle`:
    /// since when nothing has been queued or running (nil: something is).
    /// Returns indices into `idleLastUsed`.
    public static func replicasToRetire(idleLastUsed: [ContinuousClock.Instant], total: Int, minReplicas: Int,
                                        ttl: Duration, environmentIdleSince: ContinuousClock.Instant?,
                                        scaledownTTL: Duration, now: ContinuousClock.Instant)
        -> (indices: [Int], reason: ScaleDownReason)? {
        guard !idleLastUsed.isEmpty else { return nil }
        if let since = environmentIdleSince, now - since >= scaledownTTL {
            return (Array(idleLastUsed.indices), .scaledownTTL)
        }
        var left = total
        var out: [Int] = []
        for (i, used) in idleLastUsed.enumerated() where left > minReplicas && idleExpired(lastUsed: used, now: now, ttl: ttl) {
            out.append(i)
            left -= 1
        }
        return out.isEmpty ? nil : (out, .idleTTL)
    }

    /// Whether a start may happen now, or when: after a failed start the
    /// next waits out a growing backoff (`Backoff`).
    public enum StartGate: Equatable {
        case now
        case at(ContinuousClock.Instant)
    }

    public static func startGate(now: ContinuousClock.Instant, nextStartAllowed: ContinuousClock.Instant) -> StartGate {
        now < nextStartAllowed ? .at(nextStartAllowed) : .now
    }

    /// The refusal of `adding` tasks that would wait beside `queued` when
    /// the queue holds at most `maxQueue`; nil when they fit. Tasks an idle
    /// replica takes at once (`direct`) never wait, so they do not count.
    public static func queueRefusal(environment: String, queued: Int, adding: Int, maxQueue: Int) -> HearthError? {
        guard adding > 0, queued + adding > maxQueue else { return nil }
        let more = adding > 1 ? ", \(adding) more sent at once" : ""
        return HearthError(.queueFull, "environment \"\(environment)\": the queue is full (\(queued) tasks waiting, max_queue \(maxQueue)\(more)); retry later or raise max_queue")
    }

    /// What a replica does when its task is done.
    public enum AfterTask: Equatable {
        /// It takes the queued task at the head.
        case takeNext
        /// It waits, idle, until a task comes or its TTL passes.
        case idle
        /// It goes: the environment is draining, the replica has run
        /// `max_tasks_per_replica` tasks, or its process has exited.
        case retire
    }

    public static func afterTask(tasksRun: Int, maxTasksPerReplica: Int?, draining: Bool, exited: Bool,
                                 queued: Int) -> AfterTask {
        if draining || exited { return .retire }
        if let max = maxTasksPerReplica, tasksRun >= max { return .retire }
        return queued > 0 ? .takeNext : .idle
    }

    /// An idle replica whose last task ended `ttl` or more ago goes.
    public static func idleExpired(lastUsed: ContinuousClock.Instant, now: ContinuousClock.Instant, ttl: Duration) -> Bool {
        now - lastUsed >= ttl
    }
}
