import CSQLite
import Foundation

/// An SQLite failure: what was done, on which database, SQLite's message and code.
public struct StoreError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let path: String
    public let code: Int32
    public let message: String
    public var description: String { "\(operation) \(path): \(message) (sqlite error \(code))" }

    /// The file is not a database, or a damaged one.
    var isCorrupt: Bool { code & 0xff == SQLITE_CORRUPT || code & 0xff == SQLITE_NOTADB }
}

/// One SQLite connection (SQLite's own locking off: the owner serializes use).
final class SQLiteConnection {
    let db: OpaquePointer
    let path: String

    init(path: String) throws {
        var p: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW
            | SQLITE_OPEN_EXRESCODE
        let rc = sqlite3_open_v2(path, &p, flags, nil)
        guard rc == SQLITE_OK, let p else {
            let message = p.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let p { sqlite3_close_v2(p) }
            throw StoreError(operation: "open", path: path, code: rc, message: message)
        }
        db = p
        self.path = path
    }

    deinit { sqlite3_close_v2(db) }

    /// Rows the last statement changed.
    var changes: Int64 { sqlite3_changes64(db) }

    func error(_ operation: String, _ rc: Int32) -> StoreError {
        StoreError(operation: operation, path: path, code: rc, message: String(cString: sqlite3_errmsg(db)))
    }

    func exec(_ sql: String) throws {
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &err)
        guard rc == SQLITE_OK else {
            let message = err.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(db))
            sqlite3_free(err)
            throw StoreError(operation: sql.split(separator: " ").prefix(2).joined(separator: " "), path: path,
                             code: rc, message: message)
        }
    }

    func prepare(_ sql: String) throws -> Statement {
        var s: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &s, nil)
        guard rc == SQLITE_OK, let s else { throw error("prepare \"\(sql)\"", rc) }
        return Statement(s, self, sql)
    }

    /// The first column of the first row of `sql`, as an integer (0 for none).
    func integer(_ sql: String) throws -> Int64 {
        let s = try prepare(sql)
        return try s.step() ? s.int64(0) : 0
    }
}

/// A prepared statement; reset before every use.
final class Statement {
    let s: OpaquePointer
    unowned let conn: SQLiteConnection
    let sql: String

    init(_ s: OpaquePointer, _ conn: SQLiteConnection, _ sql: String) {
        self.s = s; self.conn = conn; self.sql = sql
    }

    deinit { sqlite3_finalize(s) }

    @discardableResult
    func reset() -> Statement {
        sqlite3_reset(s)
        sqlite3_clear_bindings(s)
        return self
    }

    func bind(_ i: Int32, _ v: String) {
        var v = v
        v.withUTF8 { b in
            b.withMemoryRebound(to: CChar.self) { _ = hearth_sqlite3_bind_text_copy(s, i, $0.baseAddress, Int32(b.count)) }
        }
    }

    func bind(_ i: Int32, _ v: String?) {
        if let v { bind(i, v) } else { sqlite3_bind_null(s, i) }
    }

    func bind(_ i: Int32, _ v: [UInt8]?) {
        guard let v else { sqlite3_bind_null(s, i); return }
        // A NULL pointer would bind SQL NULL: an empty blob is a zero blob.
        if v.isEmpty { sqlite3_bind_zeroblob(s, i, 0); return }
        v.withUnsafeBytes { _ = hearth_sqlite3_bind_blob_copy(s, i, $0.baseAddress, Int32(clamping: $0.count)) }
    }

    /// Binds `v` without a copy and runs `body` (which steps the
    /// statement) while the bytes are alive; unbound after.
    func withBorrowed<T>(_ i: Int32, _ v: [UInt8]?, _ body: () throws -> T) rethrows -> T {
        guard let v, !v.isEmpty else {
            bind(i, v)
            return try body()
        }
        return try v.withUnsafeBytes { b in
            _ = hearth_sqlite3_bind_blob_static(s, i, b.baseAddress, Int32(clamping: b.count))
            defer { sqlite3_reset(s); sqlite3_bind_null(s, i) }
            return try body()
        }
    }

    func bind(_ i: Int32, _ v: Int64) { sqlite3_bind_int64(s, i, v) }
    func bind(_ i: Int32, _ v: Double) { sqlite3_bind_double(s, i, v) }

    /// true: a row is ready; false: done.
    func step() throws -> Bool {
        let rc = sqlite3_step(s)
        if rc == SQLITE_ROW { return true }
        if rc == SQLITE_DONE { return false }
        throw conn.error("step \"\(sql)\"", rc)
    }

    /// Runs a statement that returns no rows.
    func run() throws {
        while try step() {}
    }

    func isNull(_ i: Int32) -> Bool { sqlite3_column_type(s, i) == SQLITE_NULL }
    func int64(_ i: Int32) -> Int64 { sqlite3_column_int64(s, i) }
    func double(_ i: Int32) -> Double { sqlite3_column_double(s, i) }

    func text(_ i: Int32) -> String {
        guard let p = sqlite3_column_text(s, i) else { return "" }
        let n = Int(sqlite3_column_bytes(s, i))
        return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
    }

    func blob(_ i: Int32) -> [UInt8]? {
        if isNull(i) { return nil }
        let n = Int(sqlite3_column_bytes(s, i))
        guard n > 0, let p = sqlite3_column_blob(s, i) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}
