import Foundation
import Glibc
import HearthCore
import HearthOS
import HearthSandbox
import NIOCore
import Synchronization
@testable import HearthPool

/// A replica without a sandbox: a thread in this process speaks the worker's
/// side of the task channel over real pipes (fd 3 and fd 4 of a real
/// replica), so the pool's scheduling runs unchanged on top of it.
///
/// The task's function name says what the fake worker does:
/// `echo` answers the kwargs; `sleep` waits kwargs' `ms` (SIGINT ends it
/// with KeyboardInterrupt); `fail` raises ValueError; `crash` exits 3
/// without answering; `hang` never answers; `garbage` writes a frame that is
/// not JSON.
final class FakeProcess: ReplicaProcess {
    let name: String
    private let input: Int32     // the worker's fd 3 (run frames in)
    private let output: Int32    // the worker's fd 4 (results out)

    private struct State {
        var killed = false
        var interrupted = false
        var exit: ExitStatus?
        var waiters: [CheckedContinuation<ExitStatus, Never>] = []
        var sink: (@Sendable (OutputChunk?) -> Void)?
        var tornDown = false
        var signals: [Int32] = []
        var limitsApplied = 0
    }
    private let state = Mutex(State())
    private let finished = DispatchSemaphore(value: 0)

    init(name: String, input: Int32, output: Int32) {
        self.name = name
        self.input = input
        self.output = output
        let t = Thread { [self] in run() }
        t.name = "fake-\(name)"
        t.start()
    }

    var tornDown: Bool { state.withLock { $0.tornDown } }
    var exitStatus: ExitStatus? { state.withLock { $0.exit } }
    var signals: [Int32] { state.withLock { $0.signals } }
    var limitsApplied: Int { state.withLock { $0.limitsApplied } }

    // MARK: ReplicaProcess

    var startPhases: [StartPhase] { [] }
    var eviction: Eviction? { nil }

    func startOutput(_ sink: @escaping @Sendable (OutputChunk?) -> Void) {
        let done: Bool = state.withLock { s in
            s.sink = sink
            return s.exit != nil
        }
        if done { sink(nil) }
    }

    func drainOutput() {}

    func signal(_ sig: Int32) {
        state.withLock { s in
            s.signals.append(sig)
            if sig == SIGINT { s.interrupted = true } else if sig == SIGKILL { s.killed = true }
        }
    }

    func killAll() { state.withLock { $0.killed = true } }
    func oomKilled() -> Bool { false }

    func wait() async -> ExitStatus {
        await withCheckedContinuation { cont in
            let done: ExitStatus? = state.withLock { s in
                if let e = s.exit { return e }
                s.waiters.append(cont)
                return nil
            }
            if let done { cont.resume(returning: done) }
        }
    }

    func teardown() {
        killAll()
        finished.wait()
        finished.signal()   // a second teardown returns too
        state.withLock { $0.tornDown = true }
    }

    func applyLimits(_ limits: CgroupLimits, ephemeralStorage: Int64?, cgroups: CgroupManager) throws {
        state.withLock { $0.limitsApplied += 1 }
    }

    // MARK: the fake worker

    private func run() {
        var status = ExitStatus.exited(0)
        defer {
            close(input)
            close(output)
            let (waiters, sink): ([CheckedContinuation<ExitStatus, Never>], (@Sendable (OutputChunk?) -> Void)?) =
                state.withLock { s in
                    s.exit = status
                    defer { s.waiters = [] }
                    return (s.waiters, s.sink)
                }
            for w in waiters { w.resume(returning: status) }
            sink?(nil)
            finished.signal()
        }
        guard send(["type": "ready", "pid": 4242, "python": "3.fake"]) else { return }
        while true {
            guard let frame = readFrame() else {
                status = killedNow ? .signaled(SIGKILL) : .exited(0)
                return
            }
            guard let msg = (try? JSONSerialization.jsonObject(with: Data(frame))) as? [String: Any],
                  let type = msg["type"] as? String else { status = .exited(2); return }
            if type == "adopt" {
                guard send(["type": "adopted", "ok": true]) else { return }
                continue
            }
            guard type == "run", let id = msg["id"] as? String, let fn = msg["function"] as? String else {
                status = .exited(2); return
            }
            let kwargs = msg["kwargs"] as? [String: Any] ?? [:]
            switch fn {
            case "echo":
                guard send(["type": "result", "id": id, "ok": true, "value": kwargs, "duration_us": 7]) else { return }
            case "fail":
                guard send(["type": "result", "id": id, "ok": false,
                            "error": ["type": "ValueError", "message": "bad input \(kwargs["x"] ?? "")"]]) else { return }
            case "sleep", "hang":
                let ms = fn == "hang" ? Int.max / 2 : (kwargs["ms"] as? Int ?? 0)
                let end = Date().addingTimeInterval(Double(min(ms, 3_600_000)) / 1000)
                var interrupted = false
                while Date() < end {
                    if killedNow { status = .signaled(SIGKILL); return }
                    if state.withLock({ s in defer { s.interrupted = false }; return s.interrupted }) {
                        interrupted = true
                        break
                    }
                    usleep(2_000)
                }
                let reply: [String: Any] = interrupted
                    ? ["type": "result", "id": id, "ok": false, "error": ["type": "KeyboardInterrupt", "message": ""]]
                    : ["type": "result", "id": id, "ok": true, "value": ["slept": ms]]
                guard send(reply) else { return }
            case "crash":
                status = .exited(3)
                return
            case "garbage":
                _ = writeAll([0, 0, 0, 5] + Array("nope!".utf8))
                // The daemon kills a worker that breaks the protocol.
                while !killedNow { usleep(2_000) }
                status = .signaled(SIGKILL)
                return
            default:
                guard send(["type": "result", "id": id, "ok": false,
                            "error": ["type": "AttributeError", "message": "no function \(fn)"]]) else { return }
            }
        }
    }

    private var killedNow: Bool { state.withLock { $0.killed } }

    private func send(_ object: [String: Any]) -> Bool {
        guard let body = try? JSONSerialization.data(withJSONObject: object) else { return false }
        let n = UInt32(body.count)
        return writeAll([UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + Array(body))
    }

    private func writeAll(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(output, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    /// The next frame's body; nil at EOF or once killed (polled, so a
    /// kill ends a worker blocked in a read).
    private func readFrame() -> [UInt8]? {
        guard let header = readExactly(4) else { return nil }
        let n = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        return readExactly(n)
    }

    private func readExactly(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            if killedNow { return nil }
            var p = pollfd(fd: input, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 5)
            if ready < 0 { if errno == EINTR { continue }; return nil }
            if ready == 0 { continue }
            let n = out[got...].withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR || errno == EAGAIN { continue }; return nil }
            if n == 0 { return nil }
            got += n
        }
        return out
    }
}

/// Builds fake replicas; can be told to fail the next builds.
final class FakeLauncher: ReplicaLaunching {
    private struct State {
        var builds = 0
        var failing = 0
        var processes: [FakeProcess] = []
    }
    private let state = Mutex(State())
    let loop: any EventLoop

    init(loop: any EventLoop) {
        self.loop = loop
        // A fake worker writing after the daemon side closed must get
        // EPIPE, not kill the test process (hearthd ignores SIGPIPE too).
        signal(SIGPIPE, SIG_IGN)
    }

    var builds: Int { state.withLock { $0.builds } }
    var processes: [FakeProcess] { state.withLock { $0.processes } }
    /// The next `n` builds throw.
    func failNext(_ n: Int) { state.withLock { $0.failing = n } }

    func build(_ config: PoolConfig, spare: Bool) async throws -> WarmReplica {
        let (n, fail): (Int, Bool) = state.withLock { s in
            s.builds += 1
            if s.failing > 0 { s.failing -= 1; return (s.builds, true) }
            return (s.builds, false)
        }
        if fail { throw HearthError(.spawnFailed, "replica \(config.name)-\(n): the fake image is broken") }
        let toWorker = try Pipe.make(), fromWorker = try Pipe.make()
        let name = "\(config.name)-\(n)"
        let process = FakeProcess(name: name, input: toWorker.read, output: fromWorker.write)
        state.withLock { $0.processes.append(process) }
        let r = WarmReplica(name: name, running: process, toWorker: toWorker.write, fromWorker: fromWorker.read,
                            maxFrame: 1 << 20, codeView: "/nonexistent/\(name)", concurrency: config.concurrency)
        try await r.attach(loop: loop)
        _ = try await r.waitReady()
        return r
    }

    func adopt(_ spare: WarmReplica, into config: PoolConfig) async throws -> WarmReplica? { nil }

    func expectBuild() {}

    func imageIdentity(_ image: String) throws -> (name: String, id: String) { (image, "sha256:fake") }
}
