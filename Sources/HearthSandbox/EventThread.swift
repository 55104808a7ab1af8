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

/// How a process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    /// Shell convention: the exit code, or 128 + signal.
    public var shellCode: Int32 {
        switch self {
        case .exited(let c): return c
        case .signaled(let s): return 128 + s
        }
    }

    public var description: String {
        switch self {
        case .exited(let c): return "exited with code \(c)"
        case .signaled(let s): return "killed by signal \(s) (\(signalName(s)))"
        }
    }
}

public func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGKILL: return "SIGKILL"
    case SIGTERM: return "SIGTERM"
    case SIGINT: return "SIGINT"
    case SIGSEGV: return "SIGSEGV"
    case SIGABRT: return "SIGABRT"
    case SIGSYS: return "SIGSYS"
    case SIGBUS: return "SIGBUS"
    case SIGHUP: return "SIGHUP"
    case SIGPIPE: return "SIGPIPE"
    default: return "signal \(sig)"
    }
}

/// Waits for children through their pidfds on the event thread.
public enum ProcessReaper {
    /// Reaps the process behind `pidfd` when it exits and hands its status
    /// to `onExit`, once (on the event thread, or a blocking thread when
    /// epoll refuses the fd). One watch per pidfd: callers share the result.
    /// The caller still owns (and closes) the pidfd, after the exit.
    public static func watch(pidfd: Int32, onExit: @escaping @Sendable (ExitStatus) -> Void) {
        do {
            try EventThread.shared.watch(pidfd) { _ in
                var code: Int32 = 0, status: Int32 = 0
                let rc = hearthPidfdWait(pidfd, nohang: true, code: &code, status: &status)
                if rc == 1 { return .keep }
                onExit(rc == 0 ? exitStatus(code: code, status: status) : .signaled(SIGKILL))
                return .remove
            }
        } catch {
            Blocking.queue.async {
                var code: Int32 = 0, status: Int32 = 0
                let rc = hearthPidfdWait(pidfd, nohang: false, code: &code, status: &status)
                onExit(rc == 0 ? exitStatus(code: code, status: status) : .signaled(SIGKILL))
            }
        }
    }

    static func exitStatus(code: Int32, status: Int32) -> ExitStatus {
        // CLD_EXITED = 1; CLD_KILLED = 2; CLD_DUMPED = 3
        code == 1 ? .exited(status) : .signaled(status)
    }
}

/// Where blocking work (mounts, cgroup files, spawning, unpacking) runs:
/// Dispatch's own threads, never the cooperative pool.
public enum Blocking {
    public static let queue = DispatchQueue(label: "hearth.blocking", qos: .userInitiated, attributes: .concurrent)

    public static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            queue.async {
                do { cont.resume(returning: try work()) } catch { cont.resume(throwing: error) }
            }
        }
    }
}
