import HearthCore
import Synchronization

/// The machine's memory as admission hands it out: what admitted
/// environments hold (all replicas at their limits) and what pre-started
/// spares hold (each at the daemon's default limit). Admission and the
/// spare pool both go through it under one lock, so a spare is never built
/// into room an environment was just given, nor an environment admitted
/// into room a spare just took.
public final class MemoryLedger: Sendable {
    /// Bytes environments and spares may hold together.
    public let capacity: Int64
    /// The memory limit each spare has (`hearthd --default-memory`); 0
    /// when there is none, and then spares hold nothing here.
    public let spareLimit: Int64

    struct State {
        var environments: Int64 = 0
        var spares = 0
    }
    private let state = Mutex(State())

    public init(capacity: Int64, spareLimit: Int64?) {
        self.capacity = capacity
        self.spareLimit = max(0, spareLimit ?? 0)
    }

    /// Runs admission with the spares held now; `body` throws to refuse or
    /// returns what environments hold once it is admitted, recorded before
    /// the lock is released.
    public func admit(_ body: (SpareReservation) throws -> Int64) rethrows {
        try state.withLock { s in
            s.environments = try body(SpareReservation(count: s.spares, each: spareLimit))
        }
    }

    /// What environments hold, recomputed after one goes (or an apply failed).
    public func setEnvironments(_ bytes: Int64) {
        state.withLock { $0.environments = bytes }
    }

    /// Takes room for one more spare; false when it does not fit beside
    /// the environments and the other spares.
    func reserveSpare() -> Bool {
        state.withLock { s in
            let spares = SpareReservation(count: s.spares + 1, each: spareLimit).bytes
            let (total, overflow) = s.environments.addingReportingOverflow(spares)
            guard !overflow, total <= capacity else { return false }
            s.spares += 1
            return true
        }
    }

    /// A spare was adopted (its environment's share holds it now), torn
    /// down, or never built.
    func releaseSpare() {
        state.withLock { $0.spares = max(0, $0.spares - 1) }
    }

    public var spares: SpareReservation {
        state.withLock { SpareReservation(count: $0.spares, each: spareLimit) }
    }

    /// Why a spare was not built, for `GET /v1/spares`.
    func noRoomMessage() -> String {
        let s = state.withLock { $0 }
        return "no room for a spare replica: environments hold \(Admission.formatMemory(s.environments)) and "
            + "\(s.spares) spare(s) × \(Admission.formatMemory(spareLimit)) of the "
            + "\(Admission.formatMemory(capacity)) this machine can give"
    }
}
