import Foundation
import Glibc
import HearthCore
import Synchronization

/// Reads a non-blocking pipe on the event poller; hands each chunk on, then
/// nil at EOF, and closes the fd.
final class PipeReader: Sendable {
    let fd: Int32
    let onData: @Sendable ([UInt8]?) -> Void

    /// This pipe's own lock and buffer: the poller's reads and a drain on
    /// the thread that handles a result frame must not interleave, or a
    /// task's lines could land after its result or out of order. Pipes of
    /// other replicas never wait on it. The buffer is made once (every
    /// result drains both pipes, usually finding nothing) and freed at EOF.
    private struct ReadState {
        var done = false
        var buffer: [UInt8] = []
    }
    private let reading = Mutex(ReadState())
    private static let chunk = 32 << 10

    init(fd: Int32, onData: @escaping @Sendable ([UInt8]?) -> Void) {
        self.fd = fd
        self.onData = onData
    }

    func start() throws {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        try ReplicaEvents.watch(fd) { [self] _ in drain() ? .keep : .remove }
    }

    /// Reads until the pipe is empty; at EOF closes it and reports nil.
    /// Returns false once the pipe is finished. Any thread.
    @discardableResult
    func drain() -> Bool {
        reading.withLock { st in
            if st.done { return false }
            if st.buffer.isEmpty { st.buffer = [UInt8](repeating: 0, count: Self.chunk) }
            while true {
                let n = st.buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    onData(Array(st.buffer[0..<n]))
                    if n < st.buffer.count { return true }
                    continue
                }
                if n < 0 && (errno == EAGAIN || errno == EINTR) { return true }
                // EOF or a hard error: either way this pipe is done.
                st.done = true
                st.buffer = []
                ReplicaEvents.unwatch(fd)
                close(fd)
                onData(nil)
                return false
            }
        }
    }
}
