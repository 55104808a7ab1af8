import HearthCore
import HearthOS
import Logging

/// The daemon's one event poller for every replica's exit (pidfd) and
/// output pipes.
public enum ReplicaEvents {
    /// Made on first use. Should that fail (no descriptors left), every
    /// watch throws it and its caller falls back (a blocking wait, no output).
    static let poller: Result<EventPoller, any Error> = Result {
        try EventPoller(name: "hearth-events") { error in
            // Never silently: every replica's exit and output pass here.
            Logger(label: "hearth.events").critical("\(error); retrying every second")
        }
    }

    public static func watch(_ fd: Int32, handler: @escaping EventPoller.Handler) throws {
        try poller.get().watch(fd, handler: handler)
    }

    public static func unwatch(_ fd: Int32) {
        if case .success(let p) = poller { p.unwatch(fd) }
    }

    /// Ends the poller's thread, once every replica is gone (daemon exit).
    public static func shutdown() {
        if case .success(let p) = poller { p.shutdown() }
    }
}
