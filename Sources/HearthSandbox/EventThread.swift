import CHearth
import Foundation
import Glibc
import HearthCore
import Synchronization

/// One thread, one epoll set: watches pidfds and pipes for every replica so
/// that no read and no child wait ever blocks Swift's cooperative pool.
/// Handlers run on this thread and must be quick (hand data on, return).
public final class EventThread: Sendable {
    public static let shared = EventThread()

    public enum Verdict: Sendable { case keep, remove }
    public typealias Handler = @Sendable (_ events: UInt32) -> Verdict

    private let epfd: Int32
    private let handlers = Mutex<[Int32: Handler]>([:])

    private init() {
        epfd = hearth_epoll_create()
        let thread = Thread { [self] in self.loop() }
        thread.name = "hearth-events"
        thread.start()
    }

    /// Watches `fd` for readability (level-triggered) until the handler says
    /// `.remove`. The caller keeps ownership of the fd and closes it only
    /// after removal.
    public func watch(_ fd: Int32, handler: @escaping Handler) throws {
        // One handler per fd: replacing a live one would drop whatever it
        // was to resume (a waiter's continuation) without a word.
        let added = handlers.withLock { h -> Bool in
            if h[fd] != nil { return false }
            h[fd] = handler
            return true
        }
        guard added else { throw SystemError("epoll_ctl add fd", "\(fd)", errno: EEXIST) }
        if hearth_epoll_add(epfd, fd) != 0 {
            let err = errno
            _ = handlers.withLock { $0.removeValue(forKey: fd) }
            throw SystemError("epoll_ctl add fd", "\(fd)", errno: err)
        }
    }

    /// Stops watching `fd` (idempotent).
    public func unwatch(_ fd: Int32) {
        let had = handlers.withLock { $0.removeValue(forKey: fd) != nil }
        if had { _ = hearth_epoll_del(epfd, fd) }
    }

    private func loop() {
        var fds = [Int32](repeating: -1, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while true {
            let n = hearth_epoll_wait(epfd, &fds, &events, 64, -1)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            for i in 0..<Int(n) {
                let fd = fds[i]
                let mask = events[i]
                guard let handler = handlers.withLock({ $0[fd] }) else { continue }
                if handler(mask) == .remove { unwatch(fd) }
            }
        }
    }
}
