import HearthOS
import CHearth
import Foundation
import Glibc
import HearthCore
import Synchronization

/// Waits for children through their pidfds on the event thread.
public enum ProcessReaper {
    /// Reaps the process behind `pidfd` when it exits and hands its status
    /// to `onExit`, once (on the event thread, or a blocking thread when
    /// epoll refuses the fd). One watch per pidfd: callers share the result.
    /// The caller still owns (and closes) the pidfd, after the exit.
    public static func watch(pidfd: Int32, onExit: @escaping @Sendable (ExitStatus) -> Void) {
        do {
            try ReplicaEvents.watch(pidfd) { _ in
                var code: Int32 = 0, status: Int32 = 0
                let rc = Pidfd.wait(pidfd, nohang: true, code: &code, status: &status)
                if rc == 1 { return .keep }
                onExit(rc == 0 ? exitStatus(code: code, status: status) : errno == ECHILD ? .unknown : .signaled(SIGKILL))
                return .remove
            }
        } catch {
            Blocking.queue.async {
                var code: Int32 = 0, status: Int32 = 0
                let rc = Pidfd.wait(pidfd, nohang: false, code: &code, status: &status)
                onExit(rc == 0 ? exitStatus(code: code, status: status) : .signaled(SIGKILL))
            }
        }
    }

    static func exitStatus(code: Int32, status: Int32) -> ExitStatus {
        // CLD_EXITED = 1; CLD_KILLED = 2; CLD_DUMPED = 3
        code == 1 ? .exited(status) : .signaled(status)
    }
}
