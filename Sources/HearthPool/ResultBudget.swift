import Foundation
import Glibc
import HearthCore
import HearthSandbox
import HearthTaskStore
import Logging
import Synchronization
import HearthOS

/// How many bytes of finished tasks' payloads (result, full error, logs)
/// the daemon keeps, and where. `hearthd --result-budget` and
/// `--result-disk-budget`.
public struct ResultBudget: Sendable {
    /// Payload bytes kept in memory; past it the oldest are spilled to disk.
    public var memory: Int
    /// Payload bytes kept on disk, under `dir`; past it the oldest are dropped.
    /// 0: nothing is spilled, the oldest are dropped from memory.
    public var disk: Int
    /// `<root>/results`: one file per spilled task.
    public var dir: String

    public static let defaultMemory = 256 << 20
    public static let defaultDisk = 1 << 30

    public init(memory: Int = ResultBudget.defaultMemory, disk: Int = ResultBudget.defaultDisk, dir: String) {
        self.memory = memory; self.disk = disk; self.dir = dir
    }

    /// How an expired task's message names the limits.
    public var rule: String {
        let mem = Quantity.formatMemory(Int64(memory)), dsk = Quantity.formatMemory(Int64(disk))
        return "finished tasks' results and logs are kept within --result-budget \(mem) in memory and --result-disk-budget \(dsk) on disk, the oldest dropped first; fetch results sooner or raise those flags"
    }
}

/// The retention policy, as pure bookkeeping: which finished task's payload
/// is in memory, being written to disk, or on disk, and what to spill or
/// drop when a budget is exceeded. Oldest (first admitted) goes first.
///
/// Memory holds at most `memoryBudget` of payloads not being spilled, plus
/// the spills in flight (at most another `memoryBudget`, or one payload
/// larger than that), so the daemon keeps at most about twice the budget
/// even when the disk is slow. A payload larger than the disk budget is
/// dropped rather than spilled.
struct RetentionLedger {
    enum Place: Equatable { case memory, spilling, disk }
    enum Action: Equatable {
        /// Write the payload to disk, then report `spillDone`.
        case spill(String)
        /// The payload is gone; `fromDisk`: remove its file.
        case drop(String, fromDisk: Bool)
    }

    let memoryBudget: Int
    let diskBudget: Int
    private(set) var memoryBytes = 0
    private(set) var spillingBytes = 0
    /// On disk, plus the spills in flight (reserved when they start).
    private(set) var diskBytes = 0
    private var entries: [String: (bytes: Int, place: Place)] = [:]
    /// Oldest first; ids whose entry left that place are skipped when met.
    private var inMemory = FIFO()
    private var onDisk = FIFO()

    init(memoryBudget: Int, diskBudget: Int) {
        self.memoryBudget = max(0, memoryBudget)
        self.diskBudget = max(0, diskBudget)
    }

    var count: Int { entries.count }
    func place(of id: String) -> Place? { entries[id]?.place }

    /// A task finished with a payload of `bytes`.
    mutating func add(_ id: String, bytes: Int) -> [Action] {
        if entries[id] != nil { _ = remove(id) }
        entries[id] = (max(0, bytes), .memory)
        memoryBytes += max(0, bytes)
        inMemory.push(id)
        return rebalance()
    }

    /// The spill of `id` ended; `ok`: its file is complete. Returns false
    /// when the entry left meanwhile (the caller removes the file).
    mutating func spillDone(_ id: String, ok: Bool) -> (kept: Bool, actions: [Action]) {
        guard let e = entries[id], e.place == .spilling else { return (false, []) }
        spillingBytes -= e.bytes
        memoryBytes -= e.bytes
        if ok {
            entries[id] = (e.bytes, .disk)
            onDisk.push(id)
            return (true, rebalance())
        }
        entries.removeValue(forKey: id)
        diskBytes -= e.bytes
        return (false, [.drop(id, fromDisk: false)] + rebalance())
    }

    /// Forgets a task (the registry evicted it); its old place.
    mutating func remove(_ id: String) -> Place? {
        guard let e = entries.removeValue(forKey: id) else { return nil }
        switch e.place {
        case .memory: memoryBytes -= e.bytes
        case .spilling:
            memoryBytes -= e.bytes
            spillingBytes -= e.bytes
            diskBytes -= e.bytes
        case .disk: diskBytes -= e.bytes
        }
        return e.place
    }

    private mutating func rebalance() -> [Action] {
        var out: [Action] = []
        while memoryBytes - spillingBytes > memoryBudget, let id = pop(&inMemory, .memory) {
            let b = entries[id]?.bytes ?? 0
            // A bounded backlog of spills: past it, memory is freed by dropping.
            let backlogRoom = spillingBytes == 0 || spillingBytes + b <= memoryBudget
            if b <= diskBudget && backlogRoom {
                while diskBytes + b > diskBudget, let old = pop(&onDisk, .disk) {
                    diskBytes -= entries.removeValue(forKey: old)?.bytes ?? 0
                    out.append(.drop(old, fromDisk: true))
                }
                if diskBytes + b <= diskBudget {
                    entries[id] = (b, .spilling)
                    spillingBytes += b
                    diskBytes += b
                    out.append(.spill(id))
                    continue
                }
            }
            entries.removeValue(forKey: id)
            memoryBytes -= b
            out.append(.drop(id, fromDisk: false))
        }
        return out
    }

    /// The oldest id still at `place`, taken off its queue.
    private func pop(_ q: inout FIFO, _ place: Place) -> String? {
        while let id = q.pop() {
            if entries[id]?.place == place { return id }
        }
        return nil
    }

    struct FIFO {
        private var items: [String] = []
        private var head = 0
        mutating func push(_ s: String) { items.append(s) }
        mutating func pop() -> String? {
            guard head < items.count else { return nil }
            let s = items[head]
            head += 1
            if head == items.count {
                items.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 1024 && head * 2 > items.count {
                items.removeFirst(head)
                head = 0
            }
            return s
        }
    }
}

/// A spilled payload's file: `HRS1`, then the result's JSON and the error's
/// JSON (each a u64 length, 0 for none), the log bytes dropped (u64), the
/// log entries (u64 count; each a stream byte, a u64 length, the bytes).
/// Integers are big-endian.
enum SpillCodec {
    static let magic: [UInt8] = Array("HRS1".utf8)

    static func encode(_ p: TaskPayload) -> [UInt8] {
        var out = magic
        // Sized once: a 2 MiB result must not grow through a 4 MiB buffer.
        out.reserveCapacity(64 + (p.result?.count ?? 0) + (p.error.map { $0.message.utf8.count + ($0.traceback?.utf8.count ?? 0) } ?? 0)
                            + p.logs.reduce(0) { $0 + 9 + $1.bytes.count })
        func u64(_ v: Int) { for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: UInt64(v) >> UInt64(s))) } }
        let r = p.result ?? []
        u64(r.count); out += r
        var e = JSONWriter(capacity: 64)
        if let error = p.error { error.writeJSON(&e) }
        u64(e.bytes.count); out += e.bytes
        u64(p.logsDropped)
        u64(p.logs.count)
        for entry in p.logs {
            out.append(entry.stream == .stdout ? 1 : 2)
            u64(entry.bytes.count)
            out += entry.bytes
        }
        return out
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String { "not a spilled result (truncated or corrupt)" }
    }

    static func decode(_ b: [UInt8]) throws -> TaskPayload {
        var i = 0
        func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, b.count - i >= n else { throw Malformed() }
            defer { i += n }
            return b[i..<(i + n)]
        }
        func u64() throws -> Int {
            var v: UInt64 = 0
            for x in try take(8) { v = v << 8 | UInt64(x) }
            guard v <= UInt64(Int.max) else { throw Malformed() }
            return Int(v)
        }
        guard Array(try take(4)) == magic else { throw Malformed() }
        var p = TaskPayload()
        let rn = try u64()
        // The daemon's own file (0600 in a 0700 directory): the JSON was validated when the result arrived.
        if rn > 0 { p.result = Array(try take(rn)) }
        let en = try u64()
        if en > 0 {
            guard let e = TaskError(json: try FastJSON.parse(Array(try take(en)))) else { throw Malformed() }
            p.error = e
        }
        p.logsDropped = try u64()
        let n = try u64()
        guard n <= b.count else { throw Malformed() }
        for _ in 0..<n {
            let s = try take(1).first
            let len = try u64()
            p.logs.append(LogBuffer.Entry(stream: s == 2 ? .stderr : .stdout, bytes: Array(try take(len))))
        }
        guard i == b.count else { throw Malformed() }
        return p
    }
}

/// What a finished task keeps beyond its state and timing: the part the
/// budget counts, and spills or drops.
struct TaskPayload: Sendable {
    /// JSON bytes.
    var result: [UInt8]?
    var error: TaskError?
    var logs: [LogBuffer.Entry] = []
    var logsDropped = 0
}

/// Keeps finished tasks' payloads within a `ResultBudget`: admits each
/// task as it is retired, writes spills on the blocking queue, and drops
/// the oldest when over budget.
///
/// With a task store, the store is the disk tier: every finished task is
/// written there anyway, so a payload over the memory budget is only
/// released (the store has it, within its own payload budget); spill
/// files are used when records are not kept (`--task-retention 0`).
final class ResultStore: Sendable {
    let budget: ResultBudget
    let store: TaskStore?
    private let logger: Logger?
    private struct State {
        var ledger: RetentionLedger
        var records: [String: TaskRecord] = [:]
    }
    private let state: Mutex<State>

    init(budget: ResultBudget, store: TaskStore? = nil, logger: Logger?) {
        self.budget = budget
        self.store = store
        self.logger = logger
        state = Mutex(State(ledger: RetentionLedger(memoryBudget: budget.memory, diskBudget: store == nil ? budget.disk : 0)))
    }

    /// Makes `<dir>` (0700) and removes what an earlier daemon spilled:
    /// finished tasks are not kept across restarts, so those files belong
    /// to nobody.
    func prepare() throws {
        try FS.makeDirectory(budget.dir, mode: 0o700)
        guard chmod(budget.dir, 0o700) == 0 else { throw SystemError.current("chmod", budget.dir) }
        try removeFiles()
    }

    /// Every spill file (at start, and when the daemon stops: results are
    /// not left on disk after it).
    func removeFiles() throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: budget.dir)) ?? []
        for n in names where unlink(budget.dir + "/" + n) != 0 && errno != ENOENT {
            throw SystemError.current("unlink", budget.dir + "/" + n)
        }
    }

    func path(for id: String) -> String { budget.dir + "/" + id }

    /// A finished task enters the budget.
    func admit(_ t: TaskRecord) {
        let bytes = t.payloadBytes
        let actions = state.withLock { s in
            s.records[t.id] = t
            return s.ledger.add(t.id, bytes: bytes)
        }
        perform(actions)
    }

    /// The registry forgot the task: its file goes too.
    func forget(_ id: String) {
        let place = state.withLock { s -> RetentionLedger.Place? in
            s.records.removeValue(forKey: id)
            return s.ledger.remove(id)
        }
        if place == .disk { unlink(path(for: id)) }
        // A spill in flight removes its own file when it finds the entry gone.
    }

    /// Bytes in memory, being spilled, and on disk (for tests and status).
    var usage: (memory: Int, spilling: Int, disk: Int) {
        state.withLock { ($0.ledger.memoryBytes, $0.ledger.spillingBytes, $0.ledger.diskBytes) }
    }

    private func perform(_ actions: [RetentionLedger.Action]) {
        for a in actions {
            switch a {
            case .drop(let id, let fromDisk):
                let t = state.withLock { $0.records.removeValue(forKey: id) }
                if let store, !fromDisk { t?.markArchived(store) } else { t?.expire(budget.rule) }
                if fromDisk { unlink(path(for: id)) }
            case .spill(let id):
                guard let t = state.withLock({ $0.records[id] }) else { continue }
                Blocking.queue.async { [self] in spill(t) }
            }
        }
    }

    /// On the blocking queue: writes the payload, then frees it in memory.
    private func spill(_ t: TaskRecord) {
        let file = path(for: t.id)
        var ok = false
        if let payload = t.payloadInMemory {
            do {
                try Self.write(SpillCodec.encode(payload), to: file)
                ok = true
            } catch {
                logger?.warning("result of task \(t.id) could not be spilled (\(error)); it is dropped")
            }
        }
        // The record points at the file before the ledger counts it there,
        // so the ledger's drop of it (now or later) always finds it on disk.
        if ok { t.markSpilled(file) }
        let (kept, more) = state.withLock { s -> (Bool, [RetentionLedger.Action]) in
            let r = s.ledger.spillDone(t.id, ok: ok)
            if !r.kept { s.records.removeValue(forKey: t.id) }
            return r
        }
        if !kept {
            if ok { unlink(file) }
            t.expire(budget.rule)
        }
        perform(more)
    }

    /// Written to a temporary name and renamed: a reader never sees half a file.
    static func write(_ bytes: [UInt8], to path: String) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw SystemError.current("open", tmp) }
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                let e = SystemError.current("write", tmp)
                close(fd)
                unlink(tmp)
                throw e
            }
            off += n
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            let e = SystemError.current("rename", tmp)
            unlink(tmp)
            throw e
        }
    }

    /// A spilled payload, read back (blocking).
    static func read(_ path: String) throws -> TaskPayload {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw SystemError.current("open", path) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError.current("fstat", path) }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { buf in buf.baseAddress.map { Glibc.read(fd, $0 + off, buf.count - off) } ?? 0 }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw SystemError.current("read", path) }
            if n == 0 { break }
            off += n
        }
        return try SpillCodec.decode(Array(bytes[0..<off]))
    }
}
