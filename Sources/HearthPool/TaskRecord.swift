import Foundation
import Glibc
import HearthCore
import Synchronization

/// One task from submission to its final state. Thread-safe.
public final class TaskRecord: Sendable {
    public let id: String
    public let environment: String
    public let module: String
    public let function: String
    let kwargs: JSONValue
    let bundle: String?
    let timeout: Duration?
    let submitted = ContinuousClock.now

    struct State {
        var state: TaskState = .queued
        var result: JSONValue?
        var error: TaskError?
        var replica: String?
        var pid: Int32?
        var started: ContinuousClock.Instant?
        var finished: ContinuousClock.Instant?
        var workerMicros: Int64?
        var coldStart: Bool?
        var coldPhases: [String: Int64]?
        var logs = LogBuffer(limit: 1 << 20)
        var waiters: [CheckedContinuation<TaskSnapshot, Never>] = []
    }
    let state = Mutex(State())

    init(id: String, environment: String, module: String, function: String, kwargs: JSONValue, bundle: String?,
         timeout: Duration?) {
        self.id = id; self.environment = environment; self.module = module; self.function = function
        self.kwargs = kwargs; self.bundle = bundle; self.timeout = timeout
    }

    public var snapshot: TaskSnapshot { state.withLock { snapshot(of: $0) } }

    private func snapshot(of s: State) -> TaskSnapshot {
        func micros(_ d: Duration) -> Int64 {
            let (sec, atto) = d.components
            return sec * 1_000_000 + atto / 1_000_000_000_000
        }
        return TaskSnapshot(
            id: id, environment: environment, module: module, function: function, state: s.state,
            result: s.result, error: s.error, replica: s.replica, pid: s.pid,
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
    func finish(_ final: TaskState, result: JSONValue? = nil, error: TaskError? = nil, workerMicros: Int64? = nil) -> Bool {
        let (waiters, snap): ([CheckedContinuation<TaskSnapshot, Never>], TaskSnapshot?) = state.withLock {
            guard !$0.state.isFinal else { return ([], nil) }
            $0.state = final
            $0.result = result
            $0.error = error
            $0.workerMicros = workerMicros
            $0.finished = .now
            let w = $0.waiters
            $0.waiters = []
            return (w, snapshot(of: $0))
        }
        guard let snap else { return false }
        PoolMetrics.tasks(final).increment()
        for w in waiters { w.resume(returning: snap) }
        return true
    }

    public var isFinal: Bool { state.withLock { $0.state.isFinal } }
    public var currentState: TaskState { state.withLock { $0.state } }

    /// Suspends until the task reaches a final state.
    public func wait() async -> TaskSnapshot {
        await withCheckedContinuation { cont in
            let snap: TaskSnapshot? = state.withLock {
                if $0.state.isFinal { return snapshot(of: $0) }
                $0.waiters.append(cont)
                return nil
            }
            if let snap { cont.resume(returning: snap) }
        }
    }

    func appendLog(_ stream: LogBuffer.Stream, _ bytes: [UInt8]) {
        state.withLock { $0.logs.append(stream, bytes) }
    }

    public func logs() -> [LogBuffer.Entry] { state.withLock { $0.logs.entries } }
    public var logsTruncated: Bool { state.withLock { $0.logs.dropped > 0 } }
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
    private var size = 0
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

    /// One file per task in flight, so a daemon crash cannot lose a task silently.
    public let journalDir: String

    public init(journalDir: String, keepFinished: Int = 10_000) {
        self.journalDir = journalDir
        self.keepFinished = keepFinished
    }

    func newID() -> String {
        "t-\(prefix)-\(counter.wrappingAdd(1, ordering: .relaxed).newValue)"
    }

    func add(_ t: TaskRecord) { state.withLock { $0.tasks[t.id] = t } }

    public func get(_ id: String) -> TaskRecord? { state.withLock { $0.tasks[id] } }

    /// Remembers a finished task for later GETs; evicts the oldest beyond the bound.
    func retire(_ t: TaskRecord) {
        unlink(journalDir + "/" + t.id)
        state.withLock {
            $0.finishedOrder.append(t.id)
            if $0.finishedOrder.count > keepFinished {
                let drop = $0.finishedOrder.count - keepFinished
                for id in $0.finishedOrder.prefix(drop) { $0.tasks.removeValue(forKey: id) }
                $0.finishedOrder.removeFirst(drop)
            }
        }
    }
}
