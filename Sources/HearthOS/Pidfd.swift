import CHearth

/// A child's pidfd: a signal or a wait through it can never reach another
/// process that reused the pid.
public enum Pidfd {
    /// waitid(P_PIDFD, WEXITED); the C shim's rc, with the exit code
    /// (CLD_*) and status filled in when it returns 0.
    @inline(__always)
    public static func wait(_ pidfd: Int32, nohang: Bool, code: inout Int32, status: inout Int32) -> Int32 {
        hearth_pidfd_wait(pidfd, nohang ? 1 : 0, &code, &status)
    }

    /// pidfd_send_signal(2); 0 or -1 with errno.
    @inline(__always)
    public static func signal(_ pidfd: Int32, _ sig: Int32) -> Int32 {
        hearth_pidfd_send_signal(pidfd, sig)
    }
}
