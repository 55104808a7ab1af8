import CHearth
import Foundation
import Glibc
import HearthCore
import Synchronization

/// One thread, one epoll set: watches descriptors (pidfds, pipes) for
/// readability and runs each one's handler on that thread, so that no read
/// and no child wait ever blocks Swift's cooperative pool. Handlers must be
/// quick (hand data on, return). An eventfd in the set lets `shutdown()`
/// end the thread cleanly.
public final class EventPoller: Sendable {
    public enum Verdict: Sendable { case keep, remove }
    public typealias Handler = @Sendable (_ events: UInt32) -> Verdict

    private struct State {
        var handlers: [Int32: Handler] = [:]
        var stopping = false
    }

    public let name: String
    private let epfd: Int32
    private let wakeFD: Int32
    private let state = Mutex(State())
    /// The poller thread's id, so a shutdown from a handler does not wait for itself.
    private let threadID = Atomic<UInt>(0)
    private let stopped = DispatchSemaphore(value: 0)
    private let onWaitError: @Sendable (SystemError) -> Void

    /// `onWaitError`: told (once per run of failures) when epoll_wait fails
    /// with something other than EINTR; the poller then retries each second
    /// rather than end, since every watcher depends on it.
    public init(name: String, onWaitError: @escaping @Sendable (SystemError) -> Void = { _ in }) throws {
        let ep = hearth_epoll_create()
        guard ep >= 0 else { throw SystemError("epoll_create1", name, errno: errno) }
        let ev = hearth_eventfd()
        guard ev >= 0 else {
            let err = errno
            close(ep)
            throw SystemError("eventfd", name, errno: err)
        }
        guard hearth_epoll_add(ep, ev) == 0 else {
            let err = errno
            close(ep); close(ev)
            throw SystemError("epoll_ctl add eventfd", name, errno: err)
        }
        self.name = name
        epfd = ep
        wakeFD = ev
        self.onWaitError = onWaitError
        let thread = Thread { [self] in self.loop() }
        thread.name = name
        thread.start()
    }

    /// Watches `fd` for readability (level-triggered) until the handler says
    /// `.remove`. The caller keeps ownership of the fd and closes it only
    /// after removal.
    public func watch(_ fd: Int32, handler: @escaping Handler) throws {
        // One handler per fd: replacing a live one would drop whatever it
        // was to resume (a waiter's continuation) without a word.
        let refusal = state.withLock { s -> Int32? in
            if s.stopping { return ECANCELED }
            if s.handlers[fd] != nil { return EEXIST }
            s.handlers[fd] = handler
            return nil
        }
        if let refusal { throw SystemError("epoll_ctl add fd on \(name)", "\(fd)", errno: refusal) }
        if hearth_epoll_add(epfd, fd) != 0 {
            let err = errno
            _ = state.withLock { $0.handlers.removeValue(forKey: fd) }
            throw SystemError("epoll_ctl add fd on \(name)", "\(fd)", errno: err)
        }
    }

    /// Stops watching `fd` (idempotent).
    public func unwatch(_ fd: Int32) {
        let had = state.withLock { $0.handlers.removeValue(forKey: fd) != nil }
        if had { _ = hearth_epoll_del(epfd, fd) }
    }

    /// How many descriptors are watched.
    public var watching: Int { state.withLock { $0.handlers.count } }

    /// Ends the thread: handlers still registered are dropped without a
    /// call, later `watch` calls throw ECANCELED. Returns once the thread
    /// has left its loop (at once when called from a handler).
    /// Idempotent.
    public func shutdown() {
        let first = state.withLock { s -> Bool in
            defer { s.stopping = true }
            return !s.stopping
        }
        guard first else { return }
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
        if threadID.load(ordering: .acquiring) != UInt(pthread_self()) { stopped.wait() }
    }

    private func loop() {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        defer {
            state.withLock { $0.handlers.removeAll() }
            close(wakeFD)
            close(epfd)
            stopped.signal()
        }
        var fds = [Int32](repeating: -1, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        var failing = false
        while true {
            let n = hearth_epoll_wait(epfd, &fds, &events, 64, -1)
            if n < 0 {
                let err = errno
                if err == EINTR { continue }
                if !failing { onWaitError(SystemError("epoll_wait", name, errno: err)) }
                failing = true
                if state.withLock({ $0.stopping }) { return }
                sleep(1)
                continue
            }
            failing = false
            for i in 0..<Int(n) {
                let fd = fds[i]
                if fd == wakeFD {
                    if state.withLock({ $0.stopping }) { return }
                    continue
                }
                guard let handler = state.withLock({ $0.handlers[fd] }) else { continue }
                if handler(events[i]) == .remove { unwatch(fd) }
            }
        }
    }
}
