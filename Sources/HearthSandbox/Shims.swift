import CHearth

/// Thin Swift spellings of the C shims.
@inline(__always)
func hearthPidfdWait(_ pidfd: Int32, nohang: Bool, code: inout Int32, status: inout Int32) -> Int32 {
    hearth_pidfd_wait(pidfd, nohang ? 1 : 0, &code, &status)
}

@inline(__always)
func hearth_pidfd_send_signal_swift(_ pidfd: Int32, _ sig: Int32) -> Int32 {
    hearth_pidfd_send_signal(pidfd, sig)
}
