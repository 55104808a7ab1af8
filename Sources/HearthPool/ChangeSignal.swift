import Synchronization

/// Lets a drain wait for a condition without polling: the owner calls
/// `notify()` wherever the state the condition reads changes, and a waiter
/// re-checks its condition after each wake-up:
///
///     while !done() && .now < end { await signal.wait(until: end) }
///
/// A wait ends at a notify, at its deadline, or when its task is cancelled.
/// A notify that comes between the check and the wait is kept for that
/// wait (a generation count), so no change is missed.
public final class ChangeSignal: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var nextID: UInt64 = 0
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        /// Waits cancelled before their continuation was registered.
        var cancelled: Set<UInt64> = []
    }
    private let state = Mutex(State())

    public init() {}

    /// The generation a waiter saw when it checked its condition.
    public var generation: UInt64 { state.withLock { $0.generation } }

    /// Wakes every waiter.
    public func notify() {
        let woken: [CheckedContinuation<Void, Never>] = state.withLock { s in
            s.generation &+= 1
            defer { s.waiters = [:] }
            return Array(s.waiters.values)
        }
        for c in woken { c.resume() }
    }

    /// Waits for a notify after `seen` (the generation read when the
    /// condition was checked), or until `deadline`.
    public func wait(after seen: UInt64, until deadline: ContinuousClock.Instant) async {
        let id: UInt64 = state.withLock { s in
            s.nextID &+= 1
            return s.nextID
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                await withTaskCancellationHandler {
                    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                        let now: Bool = state.withLock { s in
                            if s.generation != seen || s.cancelled.remove(id) != nil { return true }
                            s.waiters[id] = c
                            return false
                        }
                        if now { c.resume() }
                    }
                } onCancel: { [self] in
                    let c: CheckedContinuation<Void, Never>? = state.withLock { s in
                        if let c = s.waiters.removeValue(forKey: id) { return c }
                        s.cancelled.insert(id)
                        return nil
                    }
                    c?.resume()
                }
            }
            group.addTask { try? await Task.sleep(until: deadline, clock: .continuous) }
            await group.next()
            group.cancelAll()
        }
        // A cancellation that came after the wait had ended leaves nothing behind.
        _ = state.withLock { $0.cancelled.remove(id) }
    }

    /// Waits until `done()` holds or `deadline` passes; `done` is checked
    /// after every notify.
    public func wait(until deadline: ContinuousClock.Instant, for done: () -> Bool) async {
        while true {
            let seen = generation
            if done() || ContinuousClock.now >= deadline { return }
            await wait(after: seen, until: deadline)
        }
    }
}
