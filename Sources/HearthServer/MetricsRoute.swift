import HearthCore
import HearthPool
import Hummingbird
import Metrics
import NIOCore
import Prometheus

/// `GET /metrics` in Prometheus text format: the pool's timers and counters,
/// plus gauges taken at scrape time: replicas by state, queue depth,
/// environments, spare replicas by state and spares adopted so far.
struct MetricsRoute: Sendable {
    let registry: PrometheusCollectorRegistry
    let pool: Pool

    static let states = ["starting", "ready", "busy", "draining", "stopped", "failed"]

    func register(on router: Router<HearthRequestContext>) {
        router.get("/metrics") { _, _ in
            let envs = await pool.list()
            for s in Self.states {
                let n = envs.reduce(0) { $0 + $1.replicas.filter { $0.state == s }.count }
                registry.makeGauge(name: "hearth_replicas", labels: [("state", s)]).set(Double(n))
            }
            let queued = envs.reduce(0) { $0 + $1.queued }
            registry.makeGauge(name: "hearth_queue_depth", labels: []).set(Double(queued))
            registry.makeGauge(name: "hearth_environments", labels: []).set(Double(envs.count))
            if let spares = pool.spares?.status() {
                let ready = spares.keys.reduce(0) { $0 + $1.ready }, starting = spares.keys.reduce(0) { $0 + $1.starting }
                registry.makeGauge(name: "hearth_spares", labels: [("state", "ready")]).set(Double(ready))
                registry.makeGauge(name: "hearth_spares", labels: [("state", "starting")]).set(Double(starting))
                registry.makeGauge(name: "hearth_spare_adoptions", labels: []).set(Double(spares.adopted))
            }
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
    }
}
