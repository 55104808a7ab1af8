import CHearth
import Foundation
import Glibc
import HearthCore
import Synchronization

/// How a process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    /// A process that is not our child (a replica adopted after a daemon
    /// restart: its parent is now the host's init, which reaps it): that it
    /// exited is known from its pidfd, how is not.
    case unknown

    /// Shell convention: the exit code, or 128 + signal (255: unknown).
    public var shellCode: Int32 {
        switch self {
        case .exited(let c): return c
        case .signaled(let s): return 128 + s
        case .unknown: return 255
        }
    }

    public var description: String {
        switch self {
        case .exited(let c): return "exited with code \(c)"
        case .signaled(let s): return "killed by signal \(s) (\(signalName(s)))"
        case .unknown: return "exited (how is unknown: the replica was adopted after a hearthd restart, and its exit status went to the host's init)"
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
