import Foundation
import Glibc
import HearthCore
import HearthSandbox
import HearthTaskStore
import Logging
import Synchronization

/// One task from submission to its final state. Thread-safe.
public final class TaskRecord: Sendable {
    public let id: String
    public let environment: String
    public let module: String
    public let function: String
    let bundle: String?
    let timeout: Duration?
    let submitted = ContinuousClock.now

    struct State {
        var state: TaskState = .queued
        /// The result as JSON bytes, as the worker wrote it (see FastJSON.parseObject).
        var result: [UInt8]?
        var error: TaskError?
        var replica: String?
        var pid: Int32?
        var started: ContinuousClock.Instant?
        var finished: ContinuousClock.Instant?
        var workerMicros: Int64?
        var coldStart: Bool?
        var coldPhases: [String: Int64]?
        var logs = LogBuffer(limit: TaskRecord.logLimit)
        /// Released once the run frame is written (see takeKwargs).
        var kwargs: [UInt8]?
        /// The result's size as it arrived (the result frame's bytes), for the budget.
        var resultBytes = 0
        /// Where the payload (result, full error, logs) is once finished.
        var payload: PayloadPlace = .memory
        /// Waiters yet to be answered; the budget admits the task after the last.
        var pins = 0
        var admitWhenReleased = false
        var waiters: [CheckedContinuation<TaskSnapshot, Never>] = []
        var observers: [@Sendable () -> Void] = []
    }
    let state = Mutex(State())

    init(id: String, environment: String, module: String, function: String, kwargs: [UInt8], bundle: String?,
         timeout: Duration?) {
        self.id = id; self.environment = environment; self.module = module; self.function = function
        self.bundle = bundle; self.timeout = timeout
        state.withLock { $0.kwargs = kwargs }
    }

    static let logLimit = 1 << 20

    /// The task's arguments, for its run frame; not kept after that (a
    /// finished task's arguments would count against nothing).
    func takeKwargs() -> [UInt8] {
        state.withLock { s in
            defer { s.kwargs = nil }
            return s.kwargs ?? Array("{}".utf8)
        }
    }

    /// The task as a value; its result is parsed from the JSON it is kept
    /// as (the API's routes write `jsonBytes` instead, without parsing).
    public var snapshot: TaskSnapshot { state.withLock { snapshot(of: $0, withResult: true) } }

    /// The task as the API shows it, as JSON.
    public var jsonBytes: [UInt8] { state.withLock { Self.json(snapshot(of: $0, withResult: false), result: $0.result) } }

    static func json(_ snap: TaskSnapshot, result: [UInt8]?) -> [UInt8] {
        var w = JSONWriter(capacity: 320 + (result?.count ?? 0))
        snap.writeJSON(&w, rawResult: result)
        return w.bytes
    }

    private func snapshot(of s: State, withResult: Bool = false) -> TaskSnapshot {
        func micros(_ d: Duration) -> Int64 { d.microseconds }
        return TaskSnapshot(
            id: id, environment: environment, module: module, function: function, state: s.state,
            result: withResult ? s.result.flatMap { try? FastJSON.parse($0) } : nil, error: s.error, replica: s.replica, pid: s.pid,
            queuedMicros: s.started.map { micros($0 - submitted) },
            runMicros: s.started.flatMap { st in s.finished.map { micros($0 - st) } },
            workerMicros: s.workerMicros, coldStart: s.coldStart, coldPhases: s.coldPhases)
    }

    /// Marks the task running on a replica; false if it already ended (cancelled).
    func markRunning(replica: String, pid: Int32?, cold: Bool, coldPhases: [String: Int64]? = nil) -> Bool {
        state.withLock {
            guard $0.state == .queued else { return false }
            $0.state = .running
            $0.replica = replica
            $0.pid = pid
            $0.coldStart = cold
            $0.coldPhases = coldPhases
            $0.started = .now
            return true
        }
    }

    /// Sets the final state once; later calls are ignored. Wakes waiters.
    @discardableResult
    func finish(_ final: TaskState, result: [UInt8]? = nil, error: TaskError? = nil, workerMicros: Int64? = nil,
                resultBytes: Int? = nil) -> Bool {
        let done: (waiters: [CheckedContinuation<TaskSnapshot, Never>], observers: [@Sendable () -> Void], snap: TaskSnapshot?)? = state.withLock {
            guard !$0.state.isFinal else { return nil }
            $0.state = final
            $0.result = result
            $0.error = error
            $0.workerMicros = workerMicros
            $0.finished = .now
            $0.kwargs = nil
            $0.resultBytes = resultBytes ?? (error.map { $0.message.utf8.count + ($0.traceback?.utf8.count ?? 0) + 64 } ?? 0)
            let w = $0.waiters, o = $0.observers
            $0.waiters = []
            $0.observers = []
            // Only a waiter needs the snapshot now; a batch takes its own later.
            return (w, o, w.isEmpty ? nil : snapshot(of: $0, withResult: true))
        }
        guard let done else { return false }
        PoolMetrics.tasks(final).increment()
        if let snap = done.snap { for w in done.waiters { w.resume(returning: snap) } }
        for o in done.observers { o() }
        return true
    }

    /// Returns once the task is final, or after `timeout`, whichever is first.
    public func waitUntilFinal(timeout: Duration) async {
        if isFinal || timeout <= .zero { return }
        final class Once: Sendable { let done = Atomic<Bool>(false) }
        let once = Once()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resume: @Sendable () -> Void = {
                if !once.done.exchange(true, ordering: .acquiringAndReleasing) { c.resume() }
            }
            whenFinished(resume)
            let ns = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(ns)), execute: resume)
        }
    }

    /// Runs `observer` once the task is final (now, if it already is).
    public func whenFinished(_ observer: @escaping @Sendable () -> Void) {
        let now: Bool = state.withLock {
            if $0.state.isFinal { return true }
            $0.observers.append(observer)
            return false
        }
        if now { observer() }
    }

    /// Suspends until every task is final: one wake-up for the lot, where
    /// awaiting each in turn would wake the caller once per task.
    public static func waitAll(_ tasks: [TaskRecord]) async {
        final class Countdown: Sendable {
            let left: Atomic<Int>
            let cont = Mutex<CheckedContinuation<Void, Never>?>(nil)
            init(_ n: Int) { left = Atomic(n) }
            func tick() {
                guard left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 else { return }
                cont.withLock { c in let r = c; c = nil; return r }?.resume()
            }
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let countdown = Countdown(tasks.count + 1)
            countdown.cont.withLock { $0 = c }
            for t in tasks { t.whenFinished { countdown.tick() } }
            countdown.tick()
        }
    }

    public var isFinal: Bool { state.withLock { $0.state.isFinal } }
    public var currentState: TaskState { state.withLock { $0.state } }

    /// Suspends until the task reaches a final state.
    public func wait() async -> TaskSnapshot {
        await withCheckedContinuation { cont in
            let snap: TaskSnapshot? = state.withLock {
                if $0.state.isFinal { return snapshot(of: $0, withResult: true) }
                $0.waiters.append(cont)
                return nil
            }
            if let snap { cont.resume(returning: snap) }
        }
    }

    func appendLog(_ stream: LogBuffer.Stream, _ bytes: [UInt8]) {
        state.withLock {
            // A spilled or dropped task's logs are no longer in memory to add to.
            guard case .memory = $0.payload else { return }
            $0.logs.append(stream, bytes)
        }
    }

}

/// Where a finished task's payload (result, full error, logs) is.
enum PayloadPlace: Sendable {
    case memory
    /// Spilled to this file; memory keeps the error's summary.
    case disk(String)
    /// Dropped over budget: the budget's rule, for the error.
    case expired(String)
    /// Released from memory; the task store has it (or says why not).
    case archived(TaskStore)
}

/// A task whose result or logs were dropped over the result budget: HTTP
/// 410 `result_expired`, with what is still known of the task.
public struct ResultExpired: Error, CustomStringConvertible, Sendable {
    public let message: String
    public let task: TaskSnapshot
    public var description: String { message }
}

extension TaskRecord {
    func pin() { state.withLock { $0.pins += 1 } }

    /// Retired: true when the budget may take it now, false when a waiter
    /// holds it (the last `unpin` says so then).
    func readyForBudget() -> Bool {
        state.withLock {
            if $0.pins > 0 { $0.admitWhenReleased = true; return false }
            return true
        }
    }

    /// true when this was the last pin of a task already retired.
    func unpin() -> Bool {
        state.withLock {
            $0.pins = max(0, $0.pins - 1)
            guard $0.pins == 0, $0.admitWhenReleased else { return false }
            $0.admitWhenReleased = false
            return true
        }
    }

    /// What the budget counts for this task: the result frame and the logs.
    var payloadBytes: Int { state.withLock { $0.resultBytes + $0.logs.size } }

    /// The payload while it is in memory.
    var payloadInMemory: TaskPayload? {
        state.withLock { s in
            guard case .memory = s.payload else { return nil }
            return TaskPayload(result: s.result, error: s.error, logs: s.logs.entries, logsDropped: s.logs.dropped)
        }
    }

    /// The payload is in `path` now: memory keeps only the error's summary.
    func markSpilled(_ path: String) {
        state.withLock { s in
            guard case .memory = s.payload else { return }
            Self.release(&s)
            s.payload = .disk(path)
        }
    }

    /// The payload was dropped over budget; `rule` says which.
    func expire(_ rule: String) {
        state.withLock { s in
            if case .expired = s.payload { return }
            Self.release(&s)
            s.payload = .expired(rule)
        }
    }

    /// The payload left memory for the task store, which has it.
    func markArchived(_ store: TaskStore) {
        state.withLock { s in
            guard case .memory = s.payload else { return }
            Self.release(&s)
            s.payload = .archived(store)
        }
    }

    /// The task's row for the task store, made later on the store's thread
    /// from what is captured now (arrays are shared, not copied): the
    /// snapshot with the error's summary, and the payload if in memory.
    func archiveRow() -> @Sendable () -> TaskStore.Row {
        let (snap, payload) = state.withLock { s -> (TaskSnapshot, TaskPayload?) in
            var snap = snapshot(of: s)
            snap.error = s.error.map(Self.summary)
            guard case .memory = s.payload else { return (snap, nil) }
            return (snap, TaskPayload(result: s.result, error: s.error, logs: s.logs.entries, logsDropped: s.logs.dropped))
        }
        let finished = Date().timeIntervalSince1970
        return {
            var w = JSONWriter(capacity: 320)
            snap.writeJSON(&w)
            return TaskStore.Row(id: snap.id, environment: snap.environment, finished: finished, snapshot: w.bytes,
                                 payload: payload.map(SpillCodec.encode))
        }
    }

    private static func release(_ s: inout State) {
        s.result = nil
        s.error = s.error.map(summary)
        s.logs = LogBuffer(limit: logLimit)
    }

    /// An error as kept without its payload: type, module, the message's
    /// first 1 KiB, no traceback.
    static func summary(_ e: TaskError) -> TaskError {
        var m = e.message
        if m.utf8.count > 1024 {
            m = String(decoding: Array(m.utf8.prefix(1024)), as: UTF8.self) + " [... truncated; the whole message is part of the result]"
        }
        return TaskError(type: e.type, module: e.module, message: m, traceback: nil)
    }

    /// The task as the API shows it, as JSON, its result read back from
    /// disk if it was spilled (blocking work off the caller's thread).
    /// Throws `ResultExpired` when it was dropped.
    public func fullJSON() async throws -> [UInt8] {
        let (snap, result, place) = state.withLock { (snapshot(of: $0), $0.result, $0.payload) }
        switch place {
        case .memory: return Self.json(snap, result: result)
        case .expired(let rule): throw expired("result", rule)
        case .disk(let path):
            let payload = try await readSpill(path, what: "result")
            var full = snap
            full.error = payload.error ?? snap.error
            return Self.json(full, result: payload.result)
        case .archived(let store):
            return try await ArchivedTask.read(id, from: store, fallback: snap).fullJSON()
        }
    }

    /// The task's logs and whether older output was dropped, read back from
    /// disk if spilled. Throws `ResultExpired` when they were dropped.
    public func fullLogs() async throws -> (entries: [LogBuffer.Entry], truncated: Bool) {
        let (entries, dropped, place) = state.withLock { ($0.logs.entries, $0.logs.dropped, $0.payload) }
        switch place {
        case .memory: return (entries, dropped > 0)
        case .expired(let rule): throw expired("logs", rule)
        case .disk(let path):
            let payload = try await readSpill(path, what: "logs")
            return (payload.logs, payload.logsDropped > 0)
        case .archived(let store):
            return try await ArchivedTask.read(id, from: store, fallback: snapshot).fullLogs()
        }
    }

    private func readSpill(_ path: String, what: String) async throws -> TaskPayload {
        do {
            return try await Blocking.run { try ResultStore.read(path) }
        } catch let e as SystemError where e.errno == ENOENT {
            // Dropped while we looked: the state says why.
            let rule: String = state.withLock { if case .expired(let r) = $0.payload { return r }; return "" }
            throw expired(what, rule.isEmpty ? "its file \(path) is gone" : rule)
        }
    }

    private func expired(_ what: String, _ rule: String) -> ResultExpired {
        ResultExpired(message: "the \(what) of task \(id) (\(currentState.rawValue)) expired: \(rule)", task: snapshot)
    }
}

/// A task's stdout and stderr, bounded: the newest bytes are kept.
public struct LogBuffer: Sendable {
    public enum Stream: String, Codable, Sendable { case stdout, stderr }
    public struct Entry: Sendable {
        public var stream: Stream
        public var bytes: [UInt8]
    }
    let limit: Int
    public private(set) var entries: [Entry] = []
    public private(set) var size = 0
    public private(set) var dropped = 0

    init(limit: Int) { self.limit = limit }

    mutating func append(_ stream: Stream, _ bytes: [UInt8]) {
        var bytes = bytes
        if bytes.count > limit {
            dropped += bytes.count - limit
            bytes = Array(bytes.suffix(limit))
        }
        if let last = entries.last, last.stream == stream, last.bytes.count < 4096 {
            entries[entries.count - 1].bytes += bytes
        } else {
            entries.append(Entry(stream: stream, bytes: bytes))
        }
        size += bytes.count
        while size > limit, let first = entries.first {
            let excess = size - limit
            if first.bytes.count <= excess {
                entries.removeFirst()
                size -= first.bytes.count
                dropped += first.bytes.count
            } else {
                entries[0].bytes.removeFirst(excess)
                size -= excess
                dropped += excess
            }
        }
    }
}

/// Every task the daemon knows, finished ones kept up to a bound.
public final class TaskRegistry: Sendable {
    private struct State {
        var tasks: [String: TaskRecord] = [:]
        var finishedOrder: [String] = []
    }
    private let state = Mutex(State())
    private let keepFinished: Int
    private let counter = Atomic<UInt64>(0)
    private let prefix = String(UInt32.random(in: 0..<UInt32.max), radix: 36)

    /// The tasks in flight, so a daemon crash cannot lose a task silently.
    public let journal: TaskJournal
    public var journalDir: String { journal.dir }

    /// Finished tasks' results and logs, within their byte budget; nil:
    /// kept in memory without one (unit tests).
    let results: ResultStore?

    /// Finished tasks on disk (`--task-retention`); nil: none kept past
    /// the daemon's memory.
    public let store: TaskStore?

    public init(journalDir: String, keepFinished: Int = 10_000, results budget: ResultBudget? = nil,
                store: TaskStore? = nil, logger: Logger? = nil) {
        journal = TaskJournal(dir: journalDir)
        self.keepFinished = keepFinished
        self.store = store
        results = budget.map { ResultStore(budget: $0, store: store, logger: logger) }
        // A task leaves the journal once its record is on disk: a crash
        // before the commit reports it lost rather than forgetting it.
        let journal = journal
        store?.onCommit { journal.remove($0) }
    }

    /// Makes the spill directory and empties it (finished tasks do not
    /// outlive the daemon).
    public func prepareResults() throws { try results?.prepare() }

    /// Removes the spill files (the daemon is stopping).
    public func removeSpilledResults() throws { try results?.removeFiles() }

    func newID() -> String {
        "t-\(prefix)-\(counter.wrappingAdd(1, ordering: .relaxed).newValue)"
    }

    func add(_ t: TaskRecord) { state.withLock { $0.tasks[t.id] = t } }

    /// Forgets a task that was never accepted (its id may come again).
    func withdraw(_ t: TaskRecord) {
        state.withLock { s in
            if s.tasks[t.id] === t { s.tasks.removeValue(forKey: t.id) }
        }
        journal.remove([t.id])
    }

    /// Adds `t` unless a task with its id is known; returns that one then.
    func addIfAbsent(_ t: TaskRecord) -> TaskRecord? {
        state.withLock { s in
            if let old = s.tasks[t.id] { return old }
            s.tasks[t.id] = t
            return nil
        }
    }

    public func get(_ id: String) -> TaskRecord? { state.withLock { $0.tasks[id] } }

    /// Remembers a finished task for later GETs; evicts the oldest beyond the bound.
    func retire(_ t: TaskRecord) {
        if let store { store.enqueue(t.id, t.archiveRow()) } else { journal.remove([t.id]) }
        let evicted: [String] = state.withLock {
            $0.finishedOrder.append(t.id)
            guard $0.finishedOrder.count > keepFinished else { return [] }
            let drop = $0.finishedOrder.count - keepFinished
            let ids = Array($0.finishedOrder.prefix(drop))
            for id in ids { $0.tasks.removeValue(forKey: id) }
            $0.finishedOrder.removeFirst(drop)
            return ids
        }
        for id in evicted { results?.forget(id) }
        if t.readyForBudget() { results?.admit(t) }
    }

    /// A finished task no longer in memory (evicted, or finished before
    /// the daemon restarted), from the task store; nil when it has none.
    public func archived(_ id: String) async throws -> ArchivedTask? {
        guard let store else { return nil }
        return try await ArchivedTask.lookup(id, in: store)
    }

    /// Why a task that is nowhere is not found.
    public var notFoundRule: String {
        if let store { return store.retention.recordRule }
        return "finished tasks are kept in memory for the last \(keepFinished), and none are kept on disk (--task-retention 0)"
    }

    /// A pinned task's waiter has its result: the budget takes it from here.
    public func release(_ t: TaskRecord) {
        // One the registry evicted meanwhile has nobody to fetch it: not admitted.
        if t.unpin(), get(t.id) === t { results?.admit(t) }
    }
}

/// A finished task as the task store has it.
public struct ArchivedTask: Sendable {
    /// With the error's summary; its result is in `payload`.
    public let snapshot: TaskSnapshot
    let payload: TaskPayload?
    /// Why the payload is gone, when it is.
    let expired: String?

    /// Blocking work off the caller's thread; nil when the store has no row.
    static func lookup(_ id: String, in store: TaskStore) async throws -> ArchivedTask? {
        try await Blocking.run { () throws -> ArchivedTask? in
            guard let row = try store.row(id) else { return nil }
            return try ArchivedTask(row)
        }
    }

    /// For a task whose payload was released to the store: its row, or,
    /// if retention removed it meanwhile, the snapshot with that rule.
    static func read(_ id: String, from store: TaskStore, fallback: TaskSnapshot) async throws -> ArchivedTask {
        if let a = try await lookup(id, in: store) { return a }
        return ArchivedTask(snapshot: fallback, payload: nil, expired: store.retention.recordRule)
    }

    init(snapshot: TaskSnapshot, payload: TaskPayload?, expired: String?) {
        self.snapshot = snapshot; self.payload = payload; self.expired = expired
    }

    init(_ row: TaskStore.Row) throws {
        do {
            snapshot = try JSONDecoder().decode(TaskSnapshot.self, from: Data(row.snapshot))
            payload = try row.payload.map(SpillCodec.decode)
        } catch {
            throw HearthError(.internal, "task \(row.id)'s record in the task store is unreadable: \(error)")
        }
        expired = row.expired ?? (row.payload == nil ? "its result was not stored" : nil)
    }

    /// The task as the API shows it; throws `ResultExpired` without a payload.
    public func fullJSON() throws -> [UInt8] {
        guard let payload else { throw expiredError("result") }
        var full = snapshot
        full.error = payload.error ?? snapshot.error
        return TaskRecord.json(full, result: payload.result)
    }

    public func fullLogs() throws -> (entries: [LogBuffer.Entry], truncated: Bool) {
        guard let payload else { throw expiredError("logs") }
        return (payload.logs, payload.logsDropped > 0)
    }

    private func expiredError(_ what: String) -> ResultExpired {
        ResultExpired(message: "the \(what) of task \(snapshot.id) (\(snapshot.state.rawValue)) expired: \(expired ?? "")",
                      task: snapshot)
    }
}

/// The tasks in flight as one append-only log, `<dir>/journal`: `+ID ENV`
/// when a task is accepted, `-ID` when it ends, each a single write(2) on an
/// O_APPEND descriptor (a task per file cost an open, write, rename and
/// unlink on every task). No fsync: it covers a daemon crash, where the page
/// cache survives, not a machine crash. A starting daemon replays the log:
/// ids added and never removed were in flight. The log is rewritten with
/// only the live entries whenever it outgrows `compactBytes`.
public final class TaskJournal: Sendable {
    public let dir: String
    let path: String
    static let compactBytes = 4 << 20

    private struct State {
        var fd: Int32 = -1
        var bytes = 0
        var live: [String: String] = [:]
    }
    private let state = Mutex(State())

    init(dir: String) {
        self.dir = dir
        path = dir + "/journal"
    }

    /// Opens the log for appending (the directory must exist).
    public func open() throws {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError.current("open", path) }
        var st = stat()
        let size = fstat(fd, &st) == 0 ? Int(st.st_size) : 0
        state.withLock { $0.fd = fd; $0.bytes = size }
    }

    /// Records tasks as accepted, all in one write.
    func add(_ tasks: [(id: String, environment: String)]) {
        var text = ""
        for t in tasks { text += "+\(t.id) \(t.environment)\n" }
        state.withLock { s in
            for t in tasks { s.live[t.id] = t.environment }
            append(&s, text)
        }
    }

    /// Records tasks as ended, in one write; nothing for ids never added.
    func remove(_ ids: [String]) {
        state.withLock { s in
            var text = ""
            for id in ids where s.live.removeValue(forKey: id) != nil { text += "-\(id)\n" }
            guard !text.isEmpty else { return }
            append(&s, text)
            if s.bytes > Self.compactBytes { compact(&s) }
        }
    }

    private func append(_ s: inout State, _ text: String) {
        guard s.fd >= 0 else { return }
        var text = text
        let n = text.withUTF8 { write(s.fd, $0.baseAddress, $0.count) }
        if n > 0 { s.bytes += n }
    }

    /// Rewrites the log with the live entries only (a rename, so a crash
    /// meanwhile leaves the old log whole).
    private func compact(_ s: inout State) {
        let tmp = path + ".tmp"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        var text = ""
        for (id, env) in s.live { text += "+\(id) \(env)\n" }
        let n = text.withUTF8 { write(fd, $0.baseAddress, $0.count) }
        guard n == text.utf8.count, rename(tmp, path) == 0 else {
            close(fd)
            unlink(tmp)
            return
        }
        if s.fd >= 0 { close(s.fd) }
        s.fd = fd
        s.bytes = n
    }

    /// The tasks an earlier daemon left in flight, as (id, environment);
    /// the log is emptied. Also reads the one-file-per-task journal of
    /// earlier versions (files named after the task id).
    func recover() -> [(id: String, environment: String)] {
        var live: [String: String] = [:]
        var order: [String] = []
        if let data = FileManager.default.contents(atPath: path) {
            for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
                if line.hasPrefix("+") {
                    let parts = line.dropFirst().split(separator: " ", maxSplits: 1)
                    guard let id = parts.first else { continue }
                    if live[String(id)] == nil { order.append(String(id)) }
                    live[String(id)] = parts.count > 1 ? String(parts[1]) : "?"
                } else if line.hasPrefix("-") {
                    live.removeValue(forKey: String(line.dropFirst()))
                }
            }
        }
        var out = order.compactMap { id in live[id].map { (id: id, environment: $0) } }
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        for id in files.sorted() where id.hasPrefix("t-") && !id.hasSuffix(".tmp") {
            let data = FileManager.default.contents(atPath: dir + "/" + id) ?? Data()
            let env = (try? JSONDecoder().decode([String: String].self, from: data))?["environment"] ?? "?"
            out.append((id: id, environment: env))
            unlink(dir + "/" + id)
        }
        state.withLock { s in
            s.live = [:]
            compact(&s)
        }
        return out
    }
}
