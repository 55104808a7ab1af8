import Foundation
import Glibc
import HearthCore
import HearthSandbox
import NIOCore
import NIOPosix
import Synchronization

/// Why a replica could not return a result.
enum ChannelError: Error, CustomStringConvertible {
    /// The worker's end of the channel closed (it exited or was killed).
    case closed
    /// The worker broke the protocol (garbage, a frame over the limit).
    case protocolViolation(String)

    var description: String {
        switch self {
        case .closed: return "the worker closed the task channel"
        case .protocolViolation(let m): return m
        }
    }
}

/// A replica running the Hearth worker: one long-lived interpreter, fed
/// tasks over fd 3 (one at a time, or up to `concurrency` at once) and
/// answering on fd 4.
///
/// The warm path has no thread hop of its own: the run frame is written by
/// whoever dispatches (an HTTP handler, or the reader right after the
/// previous result), and the result is handled where fd 4 is read (the
/// daemon's event loop).
final class WarmReplica: Sendable {
    /// Called once per `send`, with the result frame or why none came.
    typealias ResultHandler = @Sendable (Result<WorkerMessage, ChannelError>) -> Void

    typealias Waiter = CheckedContinuation<WorkerMessage, any Error>

    /// The task a replica holds, with what belongs to that task alone.
    struct Held {
        let task: TaskRecord
        /// Set once the run frame is sent: where its result frame goes.
        var onResult: ResultHandler?
        /// The task's timeout, a timer on the event loop; cancelled when
        /// the task ends, so none outlives its task.
        var deadline: Scheduled<Void>?
        /// The timer fired (the replica was killed for it).
        var timedOut = false
        /// Someone cancelled the task (SIGINT was sent).
        var cancelRequested = false
    }

    /// The replica's one state machine. The worker answers only what the
    /// daemon asked, so each phase says what (if anything) the worker owes.
    enum Phase {
        /// Started; the worker owes its one `ready` (a waiter once someone waits).
        case starting(Waiter?)
        /// Ready, holding no task.
        case idle
        /// A spare being adopted: the worker owes `adopted`.
        case adopting(Waiter)
        /// Holding tasks (never empty; at most `concurrency`): each claimed,
        /// then sent (the worker owes its result, and `log` frames before it).
        case busy([Held])
        /// The channel closed (the worker exited, was killed, broke the
        /// protocol, or the replica was torn down); nothing more comes from
        /// it. The tasks it held stay until the pool has settled them.
        case closed(ChannelError, [Held])
        /// Adopted after a daemon restart: the worker owes a `pong` (with
        /// the tasks it still runs), and may first send results and logs
        /// of tasks the previous daemon sent; those found so far are held.
        case reattaching(Waiter?, [Held])

        /// For status: starting, ready or busy.
        var name: String {
            switch self {
            case .starting: return "starting"
            case .idle, .adopting: return "ready"
            case .busy: return "busy"
            case .closed(_, let h): return h.isEmpty ? "ready" : "busy"
            case .reattaching: return "reattaching"
            }
        }

        var held: [Held] {
            switch self {
            case .busy(let h), .closed(_, let h), .reattaching(_, let h): return h
            default: return []
            }
        }

        /// The worker owes a frame: one may arrive.
        var expectsFrame: Bool {
            switch self {
            case .starting, .adopting, .reattaching: return true
            case .busy(let h): return h.contains { $0.onResult != nil }
            case .idle, .closed: return false
            }
        }
    }

    let name: String
    let running: any ReplicaProcess
    private let toWorker: Int32
    private let fromWorker: Int32
    /// fd 4 (read) and fd 3 (written) as one NIO pipe channel on the
    /// daemon's event loop (see attach); NIO owns and closes both fds then.
    /// nil until attached.
    private let channel = Mutex<(any Channel)?>(nil)
    /// Who closes fd 3 and fd 4: this replica until they are handed to
    /// NIO; NIO once its channel exists (closing them here then could close
    /// numbers already reused); this replica again if the hand-over fails.
    private enum FDOwner { case ours, handing, nio, closed }
    private let fdOwner = Mutex(FDOwner.ours)

    /// Closes fd 3 and fd 4 if they are still this replica's (once).
    private func closeOwnFDs(from states: Set<FDOwner>) {
        let mine: Bool = fdOwner.withLock {
            guard states.contains($0) else { return false }
            $0 = .closed
            return true
        }
        if mine {
            close(toWorker)
            close(fromWorker)
        }
    }
    let started = ContinuousClock.now
    /// The host directory mounted read-only at /.hearth/code: this
    /// replica's own view of the code store (CodeStore.link).
    let codeView: String
    /// Bundles already linked into `codeView`.
    private let linked = Mutex<Set<String>>([])

    func hasLinked(_ sha: String) -> Bool { linked.withLock { $0.contains(sha) } }
    func markLinked(_ sha: String) { _ = linked.withLock { $0.insert(sha) } }

    struct State {
        var phase: Phase = .starting(nil)
        /// Tasks the worker runs at once (the environment's `concurrency`).
        var capacity = 1
        /// The worker's `ready` frame (its pid and Python), once it came.
        var ready: WorkerMessage?
        var tasksRun = 0
        var lastUsed = ContinuousClock.now
        /// The replica's process has exited (set by the pool, under its dispatcher lock).
        var exited = false
        /// The pool has started tearing it down.
        var removed = false
        /// Set once an environment adopted this spare: how long that took.
        var adoptMicros: Int64?
        var reader: FrameReader
        /// Output while no task runs (start-up errors, a worker's last words).
        var idleLog = LogBuffer(limit: 64 << 10)

        var closedReason: ChannelError? {
            if case .closed(let reason, _) = phase { return reason }
            return nil
        }

        /// Updates `task`'s record, if it is held.
        mutating func updateHeld(_ task: TaskRecord, _ change: (inout Held) -> Void) -> Bool {
            switch phase {
            case .busy(var list):
                guard let i = list.firstIndex(where: { $0.task === task }) else { return false }
                change(&list[i])
                phase = .busy(list)
                return true
            case .closed(let reason, var list):
                guard let i = list.firstIndex(where: { $0.task === task }) else { return false }
                change(&list[i])
                phase = .closed(reason, list)
                return true
            default:
                return false
            }
        }

        /// Lets go of `task` (it ended, or was never sent): its record.
        mutating func dropHeld(_ task: TaskRecord) -> Held? {
            switch phase {
            case .busy(var list):
                guard let i = list.firstIndex(where: { $0.task === task }) else { return nil }
                let h = list.remove(at: i)
                phase = list.isEmpty ? .idle : .busy(list)
                return h
            case .closed(let reason, var list):
                guard let i = list.firstIndex(where: { $0.task === task }) else { return nil }
                let h = list.remove(at: i)
                phase = .closed(reason, list)
                return h
            default:
                return nil
            }
        }
    }
    private let state: Mutex<State>

    init(name: String, running: any ReplicaProcess, toWorker: Int32, fromWorker: Int32, maxFrame: Int, codeView: String,
         concurrency: Int = 1) {
        self.name = name
        self.codeView = codeView
        self.running = running
        self.toWorker = toWorker
        self.fromWorker = fromWorker
        self.maxFrame = maxFrame
        var st = State(reader: FrameReader(maxBytes: maxFrame))
        st.capacity = max(1, concurrency)
        state = Mutex(st)
    }

    private let reclaimer = Mutex<(any TaskReclaiming)?>(nil)
    let maxFrame: Int

    /// A replica a previous daemon started, adopted from the keeper: it
    /// starts `reattaching` (see `reattach`); `ready` is what its worker
    /// said at its start, `tasksRun` what it had run by then.
    convenience init(adopting name: String, running: any ReplicaProcess, toWorker: Int32, fromWorker: Int32, maxFrame: Int,
                     codeView: String, concurrency: Int, workerPid: Int32?, python: String?, tasksRun: Int,
                     reclaimer: any TaskReclaiming) {
        self.init(name: name, running: running, toWorker: toWorker, fromWorker: fromWorker, maxFrame: maxFrame,
                  codeView: codeView, concurrency: concurrency)
        var frame = "{\"type\":\"ready\""
        if let workerPid { frame += ",\"pid\":\(workerPid)" }
        if let python, let q = try? JSONEncoder().encode(python) { frame += ",\"python\":" + String(decoding: q, as: UTF8.self) }
        let ready = WorkerMessage(frame: Array((frame + "}").utf8))
        state.withLock { st in
            st.phase = .reattaching(nil, [])
            st.tasksRun = tasksRun
            st.ready = ready
        }
        self.reclaimer.withLock { $0 = reclaimer }
    }

    /// The task channel's daemon ends (fd 3's write end, fd 4's read end),
    /// for the keeper; nil once the channel closed.
    var channelFDs: [Int32]? {
        let open = fdOwner.withLock { $0 == .ours || $0 == .nio }
        guard open, closedReason == nil else { return nil }
        return [toWorker, fromWorker]
    }

    /// Adoption's handshake: a `ping` the worker answers once it has sent
    /// every result it owed before it (one task at a time), or at once
    /// listing the tasks it still runs (several at once). The results that
    /// come first end their tasks as usual; the tasks still running are
    /// held as if sent. Returns the `pong`.
    func reattach() async throws -> WorkerMessage {
        try await withCheckedThrowingContinuation { cont in
            let refused: ChannelError? = state.withLock { s in
                switch s.phase {
                case .reattaching(nil, let held):
                    s.phase = .reattaching(cont, held)
                    return nil
                case .closed(let c, _): return c
                default: return .protocolViolation("replica \(name) is \(s.phase.name), not being adopted")
                }
            }
            if let refused { cont.resume(throwing: refused); return }
            guard let frame = try? Frames.encode(ControlMessage(type: "ping", id: Self.adoptPing)) else { return }
            writeFrame(frame)
        }
    }

    static let adoptPing = "adopt"

    /// A frame with `id` while reattaching: the held task of that id, or
    /// the one the previous daemon sent (now held here).
    private func reattachedHandler(_ id: String?, _ s: inout State) -> (TaskRecord, ResultHandler)? {
        guard case .reattaching(let w, var held) = s.phase, let id else { return nil }
        if let h = held.first(where: { $0.task.id == id }), let p = h.onResult { return (h.task, p) }
        guard let found = reclaimer.withLock({ $0 })?.claim(id, on: self, workerPid: s.ready?.pid) else { return nil }
        var h = Held(task: found.0)
        h.onResult = found.1
        held.append(h)
        s.phase = .reattaching(w, held)
        return found
    }

    // MARK: what the pool reads and records

    var workerPid: Int32? { state.withLock { $0.ready?.pid } }
    /// What the worker's `ready` said (for the keeper's record).
    var readyFacts: (pid: Int32?, python: String?) { state.withLock { ($0.ready?.pid, $0.ready?.python) } }
    var tasksRun: Int { state.withLock { $0.tasksRun } }
    var lastUsed: ContinuousClock.Instant { state.withLock { $0.lastUsed } }
    var adoptMicros: Int64? { state.withLock { $0.adoptMicros } }
    func recordAdoption(micros: Int64) { state.withLock { $0.adoptMicros = micros } }
    /// Tasks it runs at once; an adopted spare takes its environment's.
    var concurrency: Int { state.withLock { $0.capacity } }
    func setConcurrency(_ k: Int) { state.withLock { $0.capacity = max(1, k) } }
    /// Tasks held now (claimed or running).
    var inFlight: Int { state.withLock { $0.phase.held.count } }

    /// Marks `task` (if held) as cancelled by request; false when not held.
    func requestCancel(of task: TaskRecord) -> Bool {
        state.withLock { $0.updateHeld(task) { $0.cancelRequested = true } }
    }

    /// Marks `task` (if held) as timed out; false when not held.
    func markTimedOut(_ task: TaskRecord) -> Bool {
        state.withLock { $0.updateHeld(task) { $0.timedOut = true } }
    }

    /// `task`'s marks (cancelled by request, timed out), while it is held.
    func marks(of task: TaskRecord) -> (cancelled: Bool, timedOut: Bool) {
        state.withLock { s in
            guard let h = s.phase.held.first(where: { $0.task === task }) else { return (false, false) }
            return (h.cancelRequested, h.timedOut)
        }
    }

    /// `task` ended some other way (its replica was lost): its timer goes.
    func cancelDeadline(of task: TaskRecord) {
        var timer: Scheduled<Void>?
        state.withLock { s in
            _ = s.updateHeld(task) { h in
                timer = h.deadline
                h.deadline = nil
            }
        }
        timer?.cancel()
    }

    /// The pool settled a task a closed replica held: returns its record
    /// (was it timed out, cancelled?) and cancels its timer.
    func releaseHeld(_ task: TaskRecord) -> Held? {
        let h: Held? = state.withLock { s in
            guard case .closed = s.phase else { return nil }
            return s.dropHeld(task)
        }
        h?.deadline?.cancel()
        return h
    }

    /// The process exited (the pool, under its dispatcher lock): true when
    /// tasks are still held (their own paths settle them).
    func markExited() -> Bool {
        state.withLock { s in
            s.exited = true
            return !s.phase.held.isEmpty
        }
    }

    /// True the first time: the caller tears the replica down.
    func markRemoved() -> Bool {
        state.withLock { s in
            defer { s.removed = true }
            return !s.removed
        }
    }

    /// Neither exited nor closed: it can take a task.
    var usable: Bool { state.withLock { $0.closedReason == nil && !$0.exited } }

    /// For `GET /v1/environments/NAME`.
    func status(now: ContinuousClock.Instant, ttl: Duration) -> ReplicaStatus {
        state.withLock { s in
            let holding = !s.phase.held.isEmpty
            let idleFor = holding ? 0 : (now - s.lastUsed).seconds
            var st = ReplicaStatus(name: name, state: s.phase.name, pid: s.ready?.pid, tasksRun: s.tasksRun,
                                   idleSeconds: idleFor, ttlLeftSeconds: holding ? nil : max(0, ttl.seconds - idleFor),
                                   python: s.ready?.python)
            if s.capacity > 1 { st.running = s.phase.held.count }
            return st
        }
    }

    /// Starts reading the channel and the output pipes. fd 4 is read on
    /// `loop` (the daemon's one HTTP event loop): a result frame then
    /// reaches the HTTP response that waits for it without another thread's
    /// wake-up.
    func attach(loop: any EventLoop) async throws {
        running.startOutput { [self] chunk in
            guard let chunk else { return }
            let (stream, bytes): (LogBuffer.Stream, [UInt8]) = switch chunk {
            case .stdout(let b): (.stdout, b)
            case .stderr(let b): (.stderr, b)
            }
            // One task held: its output. Several at once send theirs as
            // `log` frames; what reaches the pipes then (a subprocess, a
            // C library) is the replica's.
            let task: TaskRecord? = state.withLock { s in
                let held = s.phase.held
                let task = held.count == 1 ? held[0].task : nil
                if task == nil { s.idleLog.append(stream, bytes) }
                return task
            }
            task?.appendLog(stream, bytes)
        }
        // One channel for both directions: NIO reads fd 4 and writes fd 3
        // (non-blocking, a frame larger than the pipe's room finished as
        // the worker reads it), on the same loop.
        fdOwner.withLock { $0 = .handing }
        let ch: any Channel
        do {
            ch = try await NIOPipeBootstrap(group: loop)
            .channelInitializer { [self] ch in
                // Recorded before the first read: a `ready` read at once
                // may be answered with a run frame at once.
                channel.withLock { $0 = ch }
                return ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(WorkerChannelReader(self))
                }
            }
            .takingOwnershipOfDescriptors(input: fromWorker, output: toWorker).get()
        } catch {
            // A failed hand-over leaves the fds ours (NIO's rule).
            closeOwnFDs(from: [.handing])
            throw error
        }
        fdOwner.withLock { $0 = .nio }
        // Closed before the channel existed: close it now.
        if closedReason != nil { ch.close(promise: nil) }
    }

    /// Bytes from fd 4: cuts frames and hands each message on, stopping
    /// at the first that breaks the protocol. false once the worker broke
    /// it (the channel is closed and the worker killed).
    ///
    /// Every frame must answer something the daemon is waiting for (the one
    /// `ready`, an `adopt`, the running task's `run`), and at most one of
    /// those is outstanding at a time, so one read costs at most one
    /// legitimate frame and one offending frame of parsing: the rest of a
    /// flood is discarded unread with the channel.
    fileprivate func consume(_ bytes: UnsafeRawBufferPointer) -> Bool {
        state.withLock { $0.reader.append(bytes) }
        while true {
            let frame: [UInt8]?
            let expecting: Bool
            let announced: Int?
            do {
                (frame, expecting, announced) = try state.withLock { s in
                    (try s.reader.next(), s.phase.expectsFrame, s.reader.announced)
                }
            } catch {
                closeChannel(.protocolViolation("the worker sent a \(error)"))
                return false
            }
            guard let f = frame else {
                // An unsolicited frame is refused at its header: its body is never buffered.
                if let n = announced, !expecting, n > Self.nameableFrameBytes {
                    closeChannel(.protocolViolation("the worker started a \(n)-byte frame while the daemon was waiting for nothing; a worker only answers the daemon's requests"))
                    return false
                }
                return true
            }
            // Nothing is outstanding: the frame is unsolicited whatever it
            // says. A small one is parsed to name it; a large one is not parsed.
            if !expecting && f.count > Self.nameableFrameBytes {
                closeChannel(.protocolViolation("the worker started a \(f.count)-byte frame while the daemon was waiting for nothing; a worker only answers the daemon's requests"))
                return false
            }
            guard let msg = WorkerMessage(frame: f) else {
                let preview = String(decoding: f.prefix(80), as: UTF8.self)
                closeChannel(.protocolViolation("the worker sent a malformed frame (\(f.count) bytes, not a JSON message: \(preview.debugDescription))"))
                return false
            }
            if let violation = deliver(msg) {
                closeChannel(.protocolViolation(violation))
                return false
            }
        }
    }

    /// Unsolicited frames up to this size are parsed only to name them in the error.
    static let nameableFrameBytes = 4096

    /// fd 4 reached EOF or failed.
    fileprivate func channelEnded() { closeChannel(.closed) }

    /// Hands a message to whoever waits for it; the rule it broke when
    /// nobody does (the caller closes the channel).
    private func deliver(_ msg: WorkerMessage) -> String? {
        switch msg.type {
        case "ready":
            let (waiter, again): (Waiter?, Bool) = state.withLock { s in
                guard case .starting(let w) = s.phase else { return (nil, true) }
                s.ready = msg
                s.phase = .idle
                return (w, false)
            }
            if again { return "the worker sent a second \"ready\" frame; a worker says ready once" }
            waiter?.resume(returning: msg)
        case "adopted":
            let waiter: Waiter? = state.withLock { s in
                guard case .adopting(let w) = s.phase else { return nil }
                s.phase = .idle
                return w
            }
            guard let waiter else {
                return "the worker sent an \"adopted\" frame while no adoption was under way; a worker answers each \"adopt\" once"
            }
            waiter.resume(returning: msg)
        case "result":
            // The task's last output must land before its result.
            running.drainOutput()
            // Adopted: a result the previous daemon's task owed.
            let reattached: (TaskRecord, ResultHandler)?? = state.withLock { s in
                guard case .reattaching = s.phase else { return nil }
                guard let found = reattachedHandler(msg.id, &s) else { return .some(nil) }
                if case .reattaching(let w, var held) = s.phase {
                    held.removeAll { $0.task === found.0 }
                    s.phase = .reattaching(w, held)
                }
                return .some(found)
            }
            if let reattached {
                // A result for a task nobody waits for (it was settled
                // before the restart): nothing to deliver, nothing broken.
                reattached?.1(.success(msg))
                return nil
            }
            let (pending, current): (ResultHandler?, [String]) = state.withLock { s in
                guard case .busy(var list) = s.phase,
                      let i = list.firstIndex(where: { $0.task.id == msg.id && $0.onResult != nil }) else {
                    return (nil, s.phase.held.filter { $0.onResult != nil }.map(\.task.id))
                }
                let p = list[i].onResult
                list[i].onResult = nil
                s.phase = .busy(list)
                return (p, [])
            }
            guard let pending else {
                let running = current.isEmpty ? "no task is running"
                    : current.count == 1 ? "task \(current[0]) is running" : "tasks \(current.joined(separator: ", ")) are running"
                return "the worker sent a \"result\" frame for task \(msg.id ?? "?"), but \(running); a worker answers each \"run\" with one result for its id"
            }
            pending(.success(msg))
        case "log":
            // A running task's output, when the replica runs several at once.
            let task: TaskRecord? = state.withLock { s in
                if case .reattaching = s.phase { return reattachedHandler(msg.id, &s)?.0 }
                return s.phase.held.first { $0.task.id == msg.id && $0.onResult != nil }?.task
            }
            guard let task else {
                return "the worker sent a \"log\" frame for task \(msg.id ?? "?"), which is not running; a worker sends a task's output before its result"
            }
            let stream: LogBuffer.Stream
            switch msg.stream {
            case "stdout": stream = .stdout
            case "stderr": stream = .stderr
            default: return "the worker sent a \"log\" frame with stream \((msg.stream ?? "none").debugDescription); expected stdout or stderr"
            }
            task.appendLog(stream, Array((msg.data ?? "").utf8))
        case "error":
            return "the worker reported a channel error: \(msg.message ?? "?")"
        case "pong":
            // The daemon pings only to adopt a replica (reattach); it
            // learns of a worker's death from its exit (pidfd).
            let running = Set(msg.running ?? [])
            let answered: (Waiter?, [Held])? = state.withLock { s in
                guard case .reattaching = s.phase, msg.id == Self.adoptPing else { return nil }
                for id in running.sorted() { _ = reattachedHandler(id, &s) }
                guard case .reattaching(let w, var held) = s.phase else { return nil }
                // Held for a log frame, yet neither finished nor running:
                // its result went to the previous daemon.
                let stray = held.filter { !running.contains($0.task.id) }
                held.removeAll { !running.contains($0.task.id) }
                s.phase = held.isEmpty ? .idle : .busy(held)
                s.lastUsed = .now
                return (w, stray)
            }
            guard let (waiter, stray) = answered else {
                return "the worker sent a \"pong\" frame, but the daemon sent no \"ping\"; a worker only answers the daemon's requests"
            }
            if let r = reclaimer.withLock({ $0 }) { for h in stray { r.abandon(h.task) } }
            waiter?.resume(returning: msg)
        default:
            return "the worker sent an unknown message type \(msg.type.debugDescription)"
        }
        return nil
    }

    /// Ends the channel: waiters get the reason; the worker is killed if it
    /// broke the protocol (it cannot be trusted to resync).
    private func closeChannel(_ reason: ChannelError) {
        // The first reason wins; whoever waits hears it once.
        let (pending, waiter): ([ResultHandler], Waiter?) = state.withLock { s in
            switch s.phase {
            case .closed:
                return ([], nil)
            case .starting(let w):
                s.phase = .closed(reason, [])
                return ([], w)
            case .adopting(let w):
                s.phase = .closed(reason, [])
                return ([], w)
            case .idle:
                s.phase = .closed(reason, [])
                return ([], nil)
            case .busy(var list):
                let handlers = list.compactMap(\.onResult)
                for i in list.indices { list[i].onResult = nil }
                s.phase = .closed(reason, list)
                return (handlers, nil)
            case .reattaching(let w, var list):
                let handlers = list.compactMap(\.onResult)
                for i in list.indices { list[i].onResult = nil }
                s.phase = .closed(reason, list)
                return (handlers, w)
            }
        }
        stopReading()
        if case .protocolViolation = reason { running.killAll() }
        // Every task in flight hears it: one crash ends them all.
        for p in pending { p(.failure(reason)) }
        waiter?.resume(throwing: reason)
    }

    var closedReason: ChannelError? { state.withLock { $0.closedReason } }

    /// Waits for the worker's `ready` frame.
    func waitReady() async throws -> WorkerMessage {
        try await withCheckedThrowingContinuation { cont in
            let (ready, closed): (WorkerMessage?, ChannelError?) = state.withLock { s in
                if let r = s.ready { return (r, nil) }
                switch s.phase {
                case .closed(let c, _): return (nil, c)
                case .starting(nil):
                    s.phase = .starting(cont)
                    return (nil, nil)
                default:
                    // One waiter: the launcher that built it.
                    return (nil, .protocolViolation("replica \(name): a second wait for the worker's ready"))
                }
            }
            if let ready { cont.resume(returning: ready) } else if let closed { cont.resume(throwing: closed) }
        }
    }

    /// Hands a ready spare to an environment: the worker applies `env` to
    /// os.environ and checks `packages` against the image, then answers
    /// `adopted` (ok, or the problems in `message`). The caller has written
    /// the environment's limits into the cgroup already.
    func adopt(env: [String: String], packages: [String], image: String) async throws -> WorkerMessage {
        var w = Frames.writer()
        w.raw("{\"type\":\"adopt\"")
        w.key("env"); w.value(.object(env.mapValues { .string($0) }))
        w.key("packages"); w.value(.array(packages.map { .string($0) }))
        w.key("image"); w.string(image)
        w.byte(0x7d)
        let frame = Frames.finish(&w)
        return try await withCheckedThrowingContinuation { cont in
            let refused: ChannelError? = state.withLock { s in
                switch s.phase {
                case .closed(let c, _): return c
                case .idle:
                    s.phase = .adopting(cont)
                    s.lastUsed = .now
                    return nil
                default:
                    return .protocolViolation("replica \(name) is \(s.phase.name), not idle: it cannot be adopted")
                }
            }
            if let refused { cont.resume(throwing: refused); return }
            writeFrame(frame)
        }
    }

    /// The outcome of a claim.
    enum Claim: Equatable {
        /// Taken; `full`: no slot is left for another task.
        case claimed(full: Bool)
        /// Not taken: closed, exited, at its concurrency, or at
        /// `maxTasks` (counting the tasks it holds).
        case refused
    }

    /// Takes a slot of the replica for `task`; the pool calls it under its
    /// dispatcher lock, so a slot is free, claimed or gone, never two at once.
    func claim(_ task: TaskRecord, maxTasks: Int? = nil) -> Claim {
        state.withLock { s in
            guard !s.exited else { return .refused }
            var list: [Held]
            switch s.phase {
            case .idle: list = []
            case .busy(let l): list = l
            default: return .refused
            }
            guard list.count < s.capacity else { return .refused }
            if let maxTasks, s.tasksRun + list.count >= maxTasks { return .refused }
            list.append(Held(task: task))
            s.phase = .busy(list)
            let atMax = maxTasks.map { s.tasksRun + list.count >= $0 } ?? false
            return .claimed(full: list.count >= s.capacity || atMax)
        }
    }

    /// Gives back a claim that was not used (the task was cancelled meanwhile).
    func unclaim(_ task: TaskRecord) {
        // Closed meanwhile: nothing was sent, so no loss to settle.
        let h = state.withLock { $0.dropHeld(task) }
        h?.deadline?.cancel()
    }

    /// Arms the held task's timeout (one task at a time); a timer for a
    /// task no longer held is cancelled at once.
    func setDeadline(_ timer: Scheduled<Void>, for task: TaskRecord) {
        var old: Scheduled<Void>?
        let held = state.withLock { s in
            s.updateHeld(task) { h in
                old = h.deadline
                h.deadline = timer
            }
        }
        old?.cancel()
        if !held { timer.cancel() }
    }

    /// Sends the claimed task; `done` runs once, on fd 4's reader for a
    /// result, or wherever the channel is found closed.
    func send(_ task: TaskRecord, bundlePath: String?, env: [String: String]?, done: @escaping ResultHandler) {
        let message = RunMessage(id: task.id, module: task.module, function: task.function, kwargs: task.takeKwargs(),
                                 bundle: task.bundle.map { .init(version: $0, path: bundlePath ?? "") }, env: env)
        let frame = message.frame()
        let refused: ChannelError? = state.withLock { s in
            if case .closed(let c, _) = s.phase { return c }
            let held = s.updateHeld(task) { $0.onResult = done }
            return held ? nil : .protocolViolation("replica \(name) is \(s.phase.name) without task \(task.id) claimed: it was not sent")
        }
        if let refused { done(.failure(refused)); return }
        writeFrame(frame)
    }

    /// Asks the worker to stop `task` (it runs beside others, so no signal
    /// can single it out): an asyncio task is cancelled, a thread's task
    /// gets KeyboardInterrupt. Its result still comes, as a failure.
    func sendCancel(_ task: TaskRecord) {
        guard let frame = try? Frames.encode(ControlMessage(type: "cancel", id: task.id)) else { return }
        writeFrame(frame)
    }

    /// After a task: its slot is free again.
    func finishTask(_ task: TaskRecord) {
        let h: Held? = state.withLock { s in
            s.tasksRun += 1
            s.lastUsed = .now
            return s.dropHeld(task)
        }
        h?.deadline?.cancel()
    }

    /// Writes a frame to fd 3 through the channel: at once on the event
    /// loop, or handed to it from another thread; what the pipe cannot take
    /// now NIO writes as the worker reads. A failed write means the worker
    /// is gone or broken: it is killed, and the channel's end reports it
    /// to whoever waits.
    private func writeFrame(_ bytes: [UInt8]) {
        guard let ch = channel.withLock({ $0 }) else {
            running.killAll()
            return
        }
        ch.writeAndFlush(ch.allocator.buffer(bytes: bytes)).whenFailure { [running] _ in
            running.killAll()
        }
    }

    /// Nothing half-read from the worker, nothing half-written to it: the
    /// channel can change hands (an upgrade's exec) without cutting a
    /// frame. On the channel's event loop, where reads and writes happen.
    func quiescent() -> Bool {
        guard state.withLock({ $0.reader.buffered }) == 0 else { return false }
        guard let ch = channel.withLock({ $0 }) else { return true }
        let pending = (try? ch.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
        return pending == 0
    }

    /// Stops the worker (closing fd 3 ends it cleanly), kills what is left
    /// and removes the replica. Blocking.
    func teardown() {
        // Whoever still waits hears that the channel closed.
        closeChannel(.closed)
        running.signal(SIGKILL)
        running.teardown()
        // Never given to NIO (the start failed first): the fds are still ours.
        closeOwnFDs(from: [.ours])
    }

    /// Closes the channel, fd 3 and fd 4; true when it was attached (NIO
    /// then closes the fds).
    @discardableResult
    private func stopReading() -> Bool {
        guard let ch = channel.withLock({ $0 }) else { return false }
        ch.close(promise: nil)
        return true
    }

    var idleOutput: String {
        state.withLock { s in
            s.idleLog.entries.map { String(decoding: $0.bytes, as: UTF8.self) }.joined()
        }
    }
}

/// Reads fd 4 on the daemon's event loop (WarmReplica.attach).
private final class WorkerChannelReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let replica: WarmReplica

    init(_ replica: WarmReplica) { self.replica = replica }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let ok = unwrapInboundIn(data).withUnsafeReadableBytes { replica.consume($0) }
        if !ok { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        replica.channelEnded()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// Where an adopted replica finds the tasks the previous daemon sent it
/// (ReplicaAdoption's recovery).
protocol TaskReclaiming: Sendable {
    /// The task of `id`, if it waits for a result, and where that goes; a
    /// task is claimed once.
    /// Called under the replica's lock: it must not call back into the replica.
    func claim(_ id: String, on replica: WarmReplica, workerPid: Int32?) -> (TaskRecord, WarmReplica.ResultHandler)?
    /// A claimed task whose result will not come (the previous daemon read it).
    func abandon(_ task: TaskRecord)
}
