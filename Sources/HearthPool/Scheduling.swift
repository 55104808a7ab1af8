import HearthCore

/// The decisions an environment's scheduler makes, as pure functions of
/// what it knows, so that each rule has one place and a unit test.
/// `EnvironmentPool` gathers the numbers under its locks and acts on the
/// answers.
public enum Scheduling {
    /// Replicas to start now for the tasks waiting: one per queued task not
    /// already covered by a replica being started, while the environment
    /// holds fewer than `replica_count` (running and starting together);
    /// none while draining.
    public static func replicasToStart(queued: Int, starting: Int, running: Int, replicaCount: Int,
                                       draining: Bool) -> Int {
        guard !draining else { return 0 }
        let uncovered = queued - starting
        let room = replicaCount - running - starting
        return max(0, min(uncovered, room))
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
