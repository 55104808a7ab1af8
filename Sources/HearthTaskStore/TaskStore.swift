import Dispatch
import Foundation
import CHearth
import CSQLite
import Glibc
import HearthCore
import Logging
import Synchronization

/// Finished tasks on disk, so a task's state, result and logs outlive the
/// daemon: one SQLite database in WAL mode (a committed batch survives a
/// crash of the process). Rows are opaque bytes to the store: the task's
/// snapshot and its payload (result, full error, logs), as HearthPool
/// encodes them.
///
/// Writes are asynchronous and batched: `enqueue` only queues a closure
/// that makes the row, and one thread of the store's own makes the rows
/// and commits whatever has gathered in one transaction, so the task's
/// response never waits for the disk. Reads see queued rows too.
///
/// Retention: rows older than `maxAge` and beyond the newest `maxCount` are
/// deleted; payloads beyond `payloadBudget` bytes lose their payload
/// (oldest first) and keep the rule that dropped it.
public final class TaskStore: Sendable {
    public struct Retention: Sendable, Equatable {
        public var maxAge: Duration
        public var maxCount: Int
        /// Payload bytes kept; past it the oldest payloads are dropped.
        public var payloadBudget: Int
        /// The text an expired payload's error gives for its rule.
        public var payloadRule: String

        public init(maxAge: Duration = .seconds(86400), maxCount: Int = 100_000, payloadBudget: Int = 1 << 30,
                    payloadRule: String = "results and logs on disk are kept within the payload budget") {
            self.maxAge = maxAge; self.maxCount = maxCount; self.payloadBudget = payloadBudget
            self.payloadRule = payloadRule
        }

        /// What a removed record's message gives for the rule.
        public var recordRule: String {
            "finished tasks are kept for \(DurationText.format(maxAge)) and the newest \(maxCount) (--task-retention)"
        }
    }

    public struct Row: Sendable, Equatable {
        public var id: String
        public var environment: String
        /// When the task finished, in seconds since the epoch.
        public var finished: Double
        public var snapshot: [UInt8]
        public var payload: [UInt8]?
        /// Why the payload is gone, when retention dropped it.
        public var expired: String?

        public init(id: String, environment: String, finished: Double, snapshot: [UInt8], payload: [UInt8]?,
                    expired: String? = nil) {
            self.id = id; self.environment = environment; self.finished = finished; self.snapshot = snapshot
            self.payload = payload; self.expired = expired
        }
    }

    public let path: String
    public let retention: Retention
    private let logger: Logger?

    private struct Queue {
        var makers: [(id: String, make: @Sendable () -> Row)] = []
        var stopping = false
    }
    private let queue = Mutex(Queue())
    private let committed = Mutex<(@Sendable ([String]) -> Void)?>(nil)
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = DispatchSemaphore(value: 0)

    private final class Database {
        let conn: SQLiteConnection
        let insert, select, oldestPayloads, dropPayload, firstYoung, countBefore, deleteBefore, seqAtOffset: Statement
        var rows: Int64
        var payloadBytes: Int64
        /// No row below this seq holds a payload: the budget's scan starts here.
        var payloadFloor: Int64 = 0
        var lastAgePrune = ContinuousClock.now

        init(_ conn: SQLiteConnection) throws {
            self.conn = conn
            // A duplicate id (never made by one daemon: ids carry a random
            // prefix per start) keeps the first row.
            insert = try conn.prepare("""
                INSERT INTO tasks(id, environment, finished, payload_bytes, expired, snapshot, payload)
                VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING
                """)
            select = try conn.prepare(
                "SELECT id, environment, finished, snapshot, payload, expired FROM tasks WHERE id = ?1")
            oldestPayloads = try conn.prepare(
                "SELECT seq, payload_bytes FROM tasks WHERE seq >= ?1 AND payload_bytes > 0 ORDER BY seq LIMIT 256")
            dropPayload = try conn.prepare(
                "UPDATE tasks SET payload = NULL, payload_bytes = 0, expired = ?2 WHERE seq = ?1")
            // Rows are in finishing order (seq): the first row young enough
            // bounds the old ones, found by scanning only those.
            firstYoung = try conn.prepare("SELECT seq FROM tasks WHERE finished >= ?1 ORDER BY seq LIMIT 1")
            countBefore = try conn.prepare("SELECT COUNT(*), COALESCE(SUM(payload_bytes), 0) FROM tasks WHERE seq < ?1")
            deleteBefore = try conn.prepare("DELETE FROM tasks WHERE seq < ?1")
            seqAtOffset = try conn.prepare("SELECT seq FROM tasks ORDER BY seq LIMIT 1 OFFSET ?1")
            rows = try conn.integer("SELECT COUNT(*) FROM tasks")
            payloadBytes = try conn.integer("SELECT COALESCE(SUM(payload_bytes), 0) FROM tasks")
        }
    }
    private let db: Mutex<Database?>

    /// Opens (or creates) the database at `path` (its directory must
    /// exist), applies retention once, and starts the writer thread. A
    /// file that is not a readable database is moved aside to
    /// `path.corrupt-<time>` and a new one started.
    public init(path: String, retention: Retention, logger: Logger? = nil) throws {
        self.path = path
        self.retention = retention
        self.logger = logger
        let database: Database
        do {
            database = try Self.open(path)
        } catch let e as StoreError where e.isCorrupt {
            let aside = "\(path).corrupt-\(Int(Date().timeIntervalSince1970))"
            logger?.error("task store \(path) is unreadable (\(e)); moved to \(aside), starting an empty one")
            for suffix in ["-wal", "-shm"] { unlink(path + suffix) }
            guard rename(path, aside) == 0 else { throw SystemError.current("rename", path) }
            database = try Self.open(path)
        }
        db = Mutex(database)
        try db.withLock { d in
            guard let d else { return }
            try prune(d, force: true)
        }
        let thread = Thread { [self] in run() }
        thread.name = "hearth-task-store"
        thread.start()
    }

    static let schemaVersion: Int64 = 1

    private static func open(_ path: String) throws -> Database {
        let conn = try SQLiteConnection(path: path)
        guard chmod(path, 0o600) == 0 else { throw SystemError.current("chmod", path) }
        // WAL: a commit is one append, readers never block the writer, and a
        // killed process loses nothing committed. NORMAL: no fsync per
        // commit (a power loss may lose the last batches, never corrupt).
        // Another schema (a newer or older hearthd's) is not read as this one.
        let version = try conn.integer("PRAGMA user_version")
        guard version == 0 || version == schemaVersion else {
            throw StoreError(operation: "open", path: path, code: SQLITE_NOTADB,
                             message: "the task store's schema is version \(version); this hearthd reads version \(schemaVersion)")
        }
        try conn.exec("PRAGMA journal_mode = WAL")
        try conn.exec("PRAGMA synchronous = NORMAL")
        // Rows are read back by key, rarely: a small page cache (512 KiB,
        // not 2 MiB) is resident memory the daemon does not need.
        try conn.exec("PRAGMA cache_size = -512")
        try conn.exec("""
            CREATE TABLE IF NOT EXISTS tasks (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                environment TEXT NOT NULL,
                finished REAL NOT NULL,
                payload_bytes INTEGER NOT NULL DEFAULT 0,
                expired TEXT,
                snapshot BLOB NOT NULL,
                payload BLOB
            );
            PRAGMA user_version = \(schemaVersion);
            """)
        return try Database(conn)
    }

    /// Queues a task's row; `make` runs later on the store's thread (or on
    /// a reader's, for a row still queued).
    public func enqueue(_ id: String, _ make: @escaping @Sendable () -> Row) {
        let first = queue.withLock { q -> Bool in
            guard !q.stopping else { return false }
            q.makers.append((id, make))
            return q.makers.count == 1
        }
        // One wake-up per batch, not per task.
        if first { wake.signal() }
    }

    /// The row of task `id`, queued or committed; nil when there is none
    /// (never stored, or removed by retention). Blocking.
    public func row(_ id: String) throws -> Row? {
        let queued = queue.withLock { q in q.makers.last(where: { $0.id == id })?.make }
        if let queued { return queued() }
        return try db.withLock { d -> Row? in
            guard let d else { return nil }
            let s = d.select.reset()
            s.bind(1, id)
            guard try s.step() else { return nil }
            return Row(id: s.text(0), environment: s.text(1), finished: s.double(2), snapshot: s.blob(3) ?? [],
                       payload: s.blob(4), expired: s.isNull(5) ? nil : s.text(5))
        }
    }

    /// Runs `observer` with the ids of every batch once it is committed
    /// (or failed: then logged, and the rows are not coming).
    public func onCommit(_ observer: @escaping @Sendable ([String]) -> Void) {
        committed.withLock { $0 = observer }
    }

    /// Commits everything queued before the call (blocking).
    public func flush() {
        db.withLock { d in
            guard let d else { return }
            commit(d, take())
        }
    }

    /// Commits what is queued, stops the thread and closes the database.
    public func close() {
        let was = queue.withLock { q -> Bool in
            defer { q.stopping = true }
            return q.stopping
        }
        guard !was else { return }
        wake.signal()
        stopped.wait()
        db.withLock { d in
            if let d { commit(d, take()) }
            d = nil
        }
    }

    /// Rows in the database and payload bytes they hold (tests, status).
    public var usage: (rows: Int, payloadBytes: Int) {
        flush()
        return db.withLock { d in (Int(d?.rows ?? 0), Int(d?.payloadBytes ?? 0)) }
    }

    /// Applies retention now (tests; the thread does so every minute).
    public func pruneNow() throws {
        try db.withLock { d in
            guard let d else { return }
            try prune(d, force: true)
        }
    }

    // MARK: the writer thread

    private func take() -> [(id: String, make: @Sendable () -> Row)] {
        queue.withLock { q in
            defer { q.makers.removeAll(keepingCapacity: true) }
            return q.makers
        }
    }

    private func run() {
        while true {
            let woken = wake.wait(timeout: .now() + .seconds(60)) == .success
            let stopping = queue.withLock { $0.stopping }
            // A short gathering pause turns a burst of tasks into one commit.
            if woken && !stopping { usleep(2000) }
            db.withLock { d in
                guard let d else { return }
                commit(d, take())
                do { try prune(d, force: false) } catch { logger?.warning("task store: retention: \(error)") }
            }
            if stopping { stopped.signal(); return }
        }
    }

    private func commit(_ d: Database, _ batch: [(id: String, make: @Sendable () -> Row)]) {
        guard !batch.isEmpty else { return }
        defer { committed.withLock { $0 }?(batch.map(\.id)) }
        do {
            try d.conn.exec("BEGIN IMMEDIATE")
            var payloadBytes = 0
            for (_, make) in batch {
                var row = make()
                payloadBytes += row.payload?.count ?? 0
                if let p = row.payload, p.count > retention.payloadBudget {
                    row.payload = nil
                    row.expired = retention.payloadRule
                }
                let s = d.insert.reset()
                s.bind(1, row.id)
                s.bind(2, row.environment)
                s.bind(3, row.finished)
                s.bind(4, Int64(row.payload?.count ?? 0))
                s.bind(5, row.expired)
                s.bind(6, row.snapshot)
                try s.withBorrowed(7, row.payload) { try s.run() }
                if d.conn.changes > 0 {
                    d.rows += 1
                    d.payloadBytes += Int64(row.payload?.count ?? 0)
                }
            }
            try dropPayloads(d)
            try d.conn.exec("COMMIT")
            // Large payloads passed through this thread's malloc arena
            // (encoded, then paged into the WAL): hand the freed pages back
            // rather than keep the largest batch resident for good.
            if payloadBytes >= 1 << 20 { _ = hearth_malloc_trim() }
        } catch {
            try? d.conn.exec("ROLLBACK")
            logger?.error("task store: \(batch.count) finished task(s) not stored: \(error)")
            // The counters may be off now: read them again.
            d.rows = (try? d.conn.integer("SELECT COUNT(*) FROM tasks")) ?? d.rows
            d.payloadBytes = (try? d.conn.integer("SELECT COALESCE(SUM(payload_bytes), 0) FROM tasks")) ?? d.payloadBytes
        }
    }

    /// The oldest payloads go until the rest fit the budget.
    private func dropPayloads(_ d: Database) throws {
        while d.payloadBytes > Int64(retention.payloadBudget) {
            var victims: [(Int64, Int64)] = []
            let s = d.oldestPayloads.reset()
            s.bind(1, d.payloadFloor)
            while try s.step() { victims.append((s.int64(0), s.int64(1))) }
            guard !victims.isEmpty else { d.payloadBytes = 0; return }
            for (seq, bytes) in victims {
                guard d.payloadBytes > Int64(retention.payloadBudget) else { return }
                let u = d.dropPayload.reset()
                u.bind(1, seq)
                u.bind(2, retention.payloadRule)
                try u.run()
                d.payloadBytes -= bytes
                d.payloadFloor = seq + 1
            }
        }
    }

    /// Rows past the count at every commit (a burst must not grow the
    /// table for an hour), rows past the age once a minute.
    private func prune(_ d: Database, force: Bool) throws {
        var cut: Int64?
        // A little slack so a steady stream deletes in chunks, not per task.
        let slack = Int64(max(1, min(1000, retention.maxCount / 20)))
        if d.rows > Int64(retention.maxCount) + (force ? 0 : slack) {
            let s = d.seqAtOffset.reset()
            s.bind(1, d.rows - Int64(retention.maxCount))
            if try s.step() { cut = s.int64(0) }
        }
        let now = ContinuousClock.now
        if force || now - d.lastAgePrune >= .seconds(60) {
            d.lastAgePrune = now
            let s = d.firstYoung.reset()
            s.bind(1, Date().timeIntervalSince1970 - Double(retention.maxAge.components.seconds))
            // None young: every row is old.
            let young = try s.step() ? s.int64(0) : Int64.max
            cut = max(cut ?? 0, young)
        }
        guard let cut else { return }
        // What goes, counted over those rows only (not the whole table).
        let gone = d.countBefore.reset()
        gone.bind(1, cut)
        guard try gone.step(), gone.int64(0) > 0 else { return }
        let (n, bytes) = (gone.int64(0), gone.int64(1))
        let s = d.deleteBefore.reset()
        s.bind(1, cut)
        try s.run()
        d.rows -= n
        d.payloadBytes -= bytes
    }
}
