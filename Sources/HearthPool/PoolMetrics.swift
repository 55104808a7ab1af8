import HearthCore
import Metrics

/// The pool's metrics (swift-metrics; the daemon exports them for Prometheus).
public enum PoolMetrics {
    public static let coldStart = Metrics.Timer(label: "hearth_cold_start_seconds")
    public static let warmDispatch = Metrics.Timer(label: "hearth_warm_dispatch_seconds")
    private static let outcomes: [TaskState: Counter] = Dictionary(uniqueKeysWithValues:
        [TaskState.succeeded, .failed, .cancelled, .lost].map { ($0, Counter(label: "hearth_tasks_total", dimensions: [("outcome", $0.rawValue)])) })

    private static let scale: [ScaleDecision.Direction: Counter] = Dictionary(uniqueKeysWithValues:
        [ScaleDecision.Direction.up, .down].map { ($0, Counter(label: "hearth_scale_events_total", dimensions: [("direction", $0.rawValue)])) })

    static func scaleEvents(_ direction: ScaleDecision.Direction) -> Counter {
        scale[direction] ?? Counter(label: "hearth_scale_events_total", dimensions: [("direction", direction.rawValue)])
    }

    static func tasks(_ outcome: TaskState) -> Counter {
        outcomes[outcome] ?? Counter(label: "hearth_tasks_total", dimensions: [("outcome", outcome.rawValue)])
    }
}
