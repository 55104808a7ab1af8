import Foundation
import Glibc
import HearthCore
import HearthOS
import Synchronization
import Testing

@Suite struct EventPollerTests {
    private func pipe() throws -> (Int32, Int32) {
        let p = try Pipe.make()
        return (p.read, p.write)
    }

    @Test func handlerRunsOnReadableAndRemovalStopsIt() async throws {
        let poller = try EventPoller(name: "test-poller")
        defer { poller.shutdown() }
        let (r, w) = try pipe()
        defer { close(r); close(w) }
        let seen = Mutex<[UInt8]>([])
        let (stream, cont) = AsyncStream<Void>.makeStream()
        try poller.watch(r) { _ in
            var b = [UInt8](repeating: 0, count: 16)
            let n = read(r, &b, 16)
            if n > 0 { seen.withLock { $0 += b[0..<n] } }
            cont.yield()
            return .remove
        }
        #expect(poller.watching == 1)
        var x: UInt8 = 7
        #expect(write(w, &x, 1) == 1)
        var it = stream.makeAsyncIterator()
        _ = await it.next()
        #expect(seen.withLock { $0 } == [7])
        // Removed by its verdict: the count drops once the loop has unwatched it.
        for _ in 0..<200 where poller.watching != 0 { try await Task.sleep(for: .milliseconds(5)) }
        #expect(poller.watching == 0)
    }

    @Test func secondWatchOfOneFDIsRefused() throws {
        let poller = try EventPoller(name: "test-poller")
        defer { poller.shutdown() }
        let (r, w) = try pipe()
        defer { close(r); close(w) }
        try poller.watch(r) { _ in .keep }
        #expect(throws: SystemError.self) { try poller.watch(r) { _ in .keep } }
        poller.unwatch(r)
        try poller.watch(r) { _ in .keep }
        poller.unwatch(r)
    }

    @Test func shutdownEndsTheThreadAndRefusesLaterWatches() throws {
        let poller = try EventPoller(name: "test-poller")
        let (r, w) = try pipe()
        defer { close(r); close(w) }
        try poller.watch(r) { _ in .keep }
        poller.shutdown()   // returns only once the thread has left its loop
        #expect(poller.watching == 0)
        do {
            try poller.watch(r) { _ in .keep }
            Issue.record("watch after shutdown was accepted")
        } catch let e as SystemError {
            #expect(e.errno == ECANCELED)
        }
        poller.shutdown()   // idempotent
    }

    @Test func shutdownFromAHandlerDoesNotWaitForItself() async throws {
        let poller = try EventPoller(name: "test-poller")
        let (r, w) = try pipe()
        defer { close(r); close(w) }
        let (stream, cont) = AsyncStream<Void>.makeStream()
        try poller.watch(r) { _ in
            poller.shutdown()
            cont.yield()
            return .keep
        }
        var x: UInt8 = 1
        #expect(write(w, &x, 1) == 1)
        var it = stream.makeAsyncIterator()
        _ = await it.next()
        poller.shutdown()   // already stopping: returns at once
        for _ in 0..<200 where poller.watching != 0 { try await Task.sleep(for: .milliseconds(5)) }
        #expect(poller.watching == 0)
    }
}
