import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import Synchronization

/// Reads a non-blocking pipe on the event thread; hands each chunk on, then
/// nil at EOF, and closes the fd.
final class PipeReader: Sendable {
    let fd: Int32
    let onData: @Sendable ([UInt8]?) -> Void
    private let done = Atomic<Bool>(false)

    init(fd: Int32, onData: @escaping @Sendable ([UInt8]?) -> Void) {
        self.fd = fd
        self.onData = onData
    }

    func start() throws {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        try EventThread.shared.watch(fd) { [self] _ in drain() ? .keep : .remove }
    }

    /// One lock for every pipe read, with its own buffer: the event
    /// thread's reads and a drain on the thread that handles a result frame
    /// must not interleave, or a task's lines could land after its result
    /// or out of order. Every result drains both pipes, usually finding
    /// nothing, so the buffer is not allocated per call.
    private static let reading = Mutex(())
    nonisolated(unsafe) private static let buffer =
        UnsafeMutableBufferPointer<UInt8>.allocate(capacity: 64 << 10)

    /// Reads until the pipe is empty; at EOF closes it and reports nil.
    /// Returns false once the pipe is finished. Any thread.
    @discardableResult
    func drain() -> Bool {
        Self.reading.withLock { _ in drainLocked() }
    }

    private func drainLocked() -> Bool {
        if done.load(ordering: .relaxed) { return false }
        let buf = Self.buffer
        while true {
            let n = read(fd, buf.baseAddress, buf.count)
            if n > 0 {
                onData(Array(buf[0..<n]))
                if n < buf.count { return true }
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return true }
            // EOF or a hard error: either way this pipe is done.
            done.store(true, ordering: .relaxed)
            EventThread.shared.unwatch(fd)
            close(fd)
            onData(nil)
            return false
        }
    }
}

