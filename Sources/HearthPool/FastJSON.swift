import HearthCore

/// JSON for the warm path, by hand: Foundation's JSONEncoder/JSONDecoder cost
/// tens of microseconds per small message, and `JSONValue`'s Decodable
/// conformance tries each type in turn (a thrown error per miss). Every task
/// crosses JSON four times (request, run frame, result frame, response).
public enum FastJSON {
    public struct ParseError: Error, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "\(reason) at byte \(offset)" }
    }

    /// Parses one JSON document (surrounding whitespace allowed).
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(ParseError) -> JSONValue {
        var p = Parser(bytes: bytes.bindMemory(to: UInt8.self))
        p.skipSpace()
        let v = try p.value(depth: 0)
        p.skipSpace()
        if p.pos != p.bytes.count { throw ParseError(offset: p.pos, reason: "trailing characters") }
        return v
    }

    public static func parse(_ bytes: [UInt8]) throws(ParseError) -> JSONValue {
        do {
            return try bytes.withUnsafeBytes { raw in try parse(raw) }
        } catch let e as ParseError {
            throw e
        } catch {
            throw ParseError(offset: 0, reason: "\(error)")
        }
    }

    /// A JSON object whose `rawKey` member is validated but not built: its
    /// bytes are returned as they are. A task's result crosses the daemon
    /// this way (frame in, response out), so it costs its size in memory,
    /// not the many times that a tree of small values would.
    static func parseObject(_ bytes: [UInt8], rawKey: String) throws(ParseError) -> (object: [String: JSONValue], raw: [UInt8]?) {
        do {
            return try bytes.withUnsafeBytes { buf in try parseObject(buf, rawKey: rawKey) }
        } catch let e as ParseError {
            throw e
        } catch {
            throw ParseError(offset: 0, reason: "\(error)")
        }
    }

    static func parseObject(_ buf: UnsafeRawBufferPointer, rawKey: String) throws(ParseError) -> (object: [String: JSONValue], raw: [UInt8]?) {
        var p = Parser(bytes: buf.bindMemory(to: UInt8.self))
        var out: [String: JSONValue] = [:]
        var raw: [UInt8]?
        p.skipSpace()
        guard p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: "{") else { throw p.fail("expected an object") }
        p.pos += 1
        p.skipSpace()
        if p.pos < p.bytes.count && p.bytes[p.pos] == UInt8(ascii: "}") {
            p.pos += 1
        } else {
            members: while true {
                p.skipSpace()
                guard p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: "\"") else { throw p.fail("expected a key") }
                let key = try p.string()
                p.skipSpace()
                guard p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: ":") else { throw p.fail("expected ':'") }
                p.pos += 1
                p.skipSpace()
                if key == rawKey {
                    let start = p.pos
                    try p.skipValue(depth: 1)
                    raw = Array(UnsafeBufferPointer(rebasing: p.bytes[start..<p.pos]))
                } else {
                    out[key] = try p.value(depth: 1)
                }
                p.skipSpace()
                guard p.pos < p.bytes.count else { throw p.fail("unexpected end of input") }
                if p.bytes[p.pos] == UInt8(ascii: ",") { p.pos += 1; continue }
                if p.bytes[p.pos] == UInt8(ascii: "}") { p.pos += 1; break members }
                throw p.fail("expected ',' or '}'")
            }
        }
        p.skipSpace()
        if p.pos != p.bytes.count { throw p.fail("trailing characters") }
        return (out, raw)
    }

    /// A request object whose `rawKey` member is kept as its bytes (see
    /// `parseObject`): a task's kwargs cross the daemon unparsed, so the
    /// worker reads exactly what the client wrote (key order, number text).
    public static func parseRequest(_ buf: UnsafeRawBufferPointer, rawKey: String) throws(ParseError)
        -> (object: [String: JSONValue], raw: [UInt8]?) {
        try parseObject(buf, rawKey: rawKey)
    }

    /// The elements of a JSON array (its bytes as `parseRequest` returns
    /// them), each validated and kept as its bytes.
    public static func rawElements(_ bytes: [UInt8]) throws(ParseError) -> [[UInt8]] {
        do {
            return try bytes.withUnsafeBytes { raw throws(ParseError) -> [[UInt8]] in
                var p = Parser(bytes: raw.bindMemory(to: UInt8.self))
                var out: [[UInt8]] = []
                p.skipSpace()
                guard p.pos < p.bytes.count, p.bytes[p.pos] == UInt8(ascii: "[") else { throw p.fail("expected an array") }
                p.pos += 1
                p.skipSpace()
                if p.pos < p.bytes.count && p.bytes[p.pos] == UInt8(ascii: "]") {
                    p.pos += 1
                } else {
                    while true {
                        p.skipSpace()
                        let start = p.pos
                        try p.skipValue(depth: 1)
                        out.append(Array(UnsafeBufferPointer(rebasing: p.bytes[start..<p.pos])))
                        p.skipSpace()
                        guard p.pos < p.bytes.count else { throw p.fail("unexpected end of input") }
                        if p.bytes[p.pos] == UInt8(ascii: ",") { p.pos += 1; continue }
                        if p.bytes[p.pos] == UInt8(ascii: "]") { p.pos += 1; break }
                        throw p.fail("expected ',' or ']'")
                    }
                }
                p.skipSpace()
                if p.pos != p.bytes.count { throw p.fail("trailing characters") }
                return out
            }
        } catch let e as ParseError {
            throw e
        } catch {
            throw ParseError(offset: 0, reason: "\(error)")
        }
    }

    /// Whether validated JSON bytes hold an object (they start with `{`).
    public static func isObject(_ raw: [UInt8]) -> Bool { raw.first == UInt8(ascii: "{") }

    /// Whether validated JSON bytes are `null`.
    public static func isNull(_ raw: [UInt8]) -> Bool { raw == Array("null".utf8) }

    /// Nesting deeper than this is refused rather than risking the stack.
    static let maxDepth = 512

    struct Parser {
        let bytes: UnsafeBufferPointer<UInt8>
        var pos = 0

        mutating func skipSpace() {
            while pos < bytes.count {
                switch bytes[pos] {
                case 0x20, 0x0a, 0x0d, 0x09: pos += 1
                default: return
                }
            }
        }

        func fail(_ reason: String) -> ParseError { ParseError(offset: pos, reason: reason) }

        mutating func value(depth: Int) throws(ParseError) -> JSONValue {
            guard depth < FastJSON.maxDepth else { throw fail("nesting deeper than \(FastJSON.maxDepth)") }
            guard pos < bytes.count else { throw fail("unexpected end of input") }
            switch bytes[pos] {
            case UInt8(ascii: "{"):
                pos += 1
                var out: [String: JSONValue] = [:]
                skipSpace()
                if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(out) }
                while true {
                    skipSpace()
                    guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw fail("expected a key") }
                    let key = try string()
                    skipSpace()
                    guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                    pos += 1
                    skipSpace()
                    out[key] = try value(depth: depth + 1)
                    skipSpace()
                    guard pos < bytes.count else { throw fail("unexpected end of input") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(out) }
                    throw fail("expected ',' or '}'")
                }
            case UInt8(ascii: "["):
                pos += 1
                var out: [JSONValue] = []
                skipSpace()
                if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(out) }
                while true {
                    skipSpace()
                    out.append(try value(depth: depth + 1))
                    skipSpace()
                    guard pos < bytes.count else { throw fail("unexpected end of input") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(out) }
                    throw fail("expected ',' or ']'")
                }
            case UInt8(ascii: "\""):
                return .string(try string())
            case UInt8(ascii: "t"):
                try literal("true"); return .bool(true)
            case UInt8(ascii: "f"):
                try literal("false"); return .bool(false)
            case UInt8(ascii: "n"):
                try literal("null"); return .null
            default:
                return try number()
            }
        }

        /// Checks one value by `value`'s rules without building it (strings
        /// are still decoded, one at a time, to check their escapes and UTF-8).
        mutating func skipValue(depth: Int) throws(ParseError) {
            guard depth < FastJSON.maxDepth else { throw fail("nesting deeper than \(FastJSON.maxDepth)") }
            guard pos < bytes.count else { throw fail("unexpected end of input") }
            switch bytes[pos] {
            case UInt8(ascii: "{"):
                pos += 1
                skipSpace()
                if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") { pos += 1; return }
                while true {
                    skipSpace()
                    guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw fail("expected a key") }
                    _ = try string()
                    skipSpace()
                    guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                    pos += 1
                    skipSpace()
                    try skipValue(depth: depth + 1)
                    skipSpace()
                    guard pos < bytes.count else { throw fail("unexpected end of input") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "}") { pos += 1; return }
                    throw fail("expected ',' or '}'")
                }
            case UInt8(ascii: "["):
                pos += 1
                skipSpace()
                if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") { pos += 1; return }
                while true {
                    skipSpace()
                    try skipValue(depth: depth + 1)
                    skipSpace()
                    guard pos < bytes.count else { throw fail("unexpected end of input") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "]") { pos += 1; return }
                    throw fail("expected ',' or ']'")
                }
            case UInt8(ascii: "\""): _ = try string()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            default: _ = try number()
            }
        }

        mutating func literal(_ word: StaticString) throws(ParseError) {
            let n = word.utf8CodeUnitCount
            guard pos + n <= bytes.count else { throw fail("unexpected end of input") }
            let w = word.utf8Start
            for i in 0..<n where bytes[pos + i] != w[i] { throw fail("invalid literal") }
            pos += n
        }

        mutating func number() throws(ParseError) -> JSONValue {
            let start = pos
            var integral = true
            if pos < bytes.count && bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            let digitsStart = pos
            while pos < bytes.count, bytes[pos] >= 0x30 && bytes[pos] <= 0x39 { pos += 1 }
            let intDigits = pos - digitsStart
            guard intDigits > 0 else { throw fail("invalid value") }
            if intDigits > 1 && bytes[digitsStart] == 0x30 { throw fail("leading zero in a number") }
            if pos < bytes.count && bytes[pos] == UInt8(ascii: ".") {
                integral = false
                pos += 1
                let f = pos
                while pos < bytes.count, bytes[pos] >= 0x30 && bytes[pos] <= 0x39 { pos += 1 }
                guard pos > f else { throw fail("invalid number") }
            }
            if pos < bytes.count && (bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E")) {
                integral = false
                pos += 1
                if pos < bytes.count && (bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-")) { pos += 1 }
                let e = pos
                while pos < bytes.count, bytes[pos] >= 0x30 && bytes[pos] <= 0x39 { pos += 1 }
                guard pos > e else { throw fail("invalid number") }
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
            if integral, let i = Int64(text) { return .int(i) }
            guard let d = Double(text), d.isFinite else { throw fail("number out of range") }
            return .double(d)
        }

        /// At the opening quote; returns the decoded string.
        mutating func string() throws(ParseError) -> String {
            pos += 1
            let start = pos
            // Fast path: no escapes.
            while pos < bytes.count {
                let b = bytes[pos]
                if b == UInt8(ascii: "\"") {
                    let s = try utf8(start, pos)
                    pos += 1
                    return s
                }
                if b == UInt8(ascii: "\\") { break }
                if b < 0x20 { throw fail("control character in a string") }
                pos += 1
            }
            var out = Array(UnsafeBufferPointer(rebasing: bytes[start..<pos]))
            while pos < bytes.count {
                let b = bytes[pos]
                if b == UInt8(ascii: "\"") {
                    pos += 1
                    guard let s = String(validating: out, as: UTF8.self) else { throw fail("invalid UTF-8 in a string") }
                    return s
                }
                if b < 0x20 { throw fail("control character in a string") }
                if b != UInt8(ascii: "\\") { out.append(b); pos += 1; continue }
                pos += 1
                guard pos < bytes.count else { break }
                let e = bytes[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5c)
                case UInt8(ascii: "/"): out.append(0x2f)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0c)
                case UInt8(ascii: "n"): out.append(0x0a)
                case UInt8(ascii: "r"): out.append(0x0d)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        // A high surrogate must be followed by a low one.
                        guard pos + 1 < bytes.count, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") else {
                            throw fail("unpaired surrogate")
                        }
                        pos += 2
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw fail("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar < 0xE000 {
                        throw fail("unpaired surrogate")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                    out.append(contentsOf: UTF8.encode(u).map { Array($0) } ?? [])
                default:
                    throw fail("invalid escape")
                }
            }
            throw fail("unterminated string")
        }

        mutating func hex4() throws(ParseError) -> UInt32 {
            guard pos + 4 <= bytes.count else { throw fail("invalid \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[pos]
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: throw fail("invalid \\u escape")
                }
                v = v << 4 | d
                pos += 1
            }
            return v
        }

        func utf8(_ from: Int, _ to: Int) throws(ParseError) -> String {
            let slice = UnsafeBufferPointer(rebasing: bytes[from..<to])
            // ASCII needs no validation.
            if !slice.contains(where: { $0 >= 0x80 }) { return String(decoding: slice, as: UTF8.self) }
            guard let s = String(validating: slice, as: UTF8.self) else { throw fail("invalid UTF-8 in a string") }
            return s
        }
    }
}

/// Appends JSON to a byte array; the output matches what JSONEncoder gives
/// for the same values, except that object keys come in the writer's order.
public struct JSONWriter {
    public var bytes: [UInt8] = []

    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    @inline(__always) mutating func byte(_ b: UInt8) { bytes.append(b) }
    @inline(__always) mutating func raw(_ s: StaticString) {
        bytes.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    public mutating func string(_ s: String) {
        byte(0x22)
        var s = s
        s.withUTF8 { u in
            var run = 0
            for (i, b) in u.enumerated() {
                if b >= 0x20 && b != 0x22 && b != 0x5c { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: u[run..<i]))
                run = i + 1
                switch b {
                case 0x22: raw("\\\"")
                case 0x5c: raw("\\\\")
                case 0x0a: raw("\\n")
                case 0x0d: raw("\\r")
                case 0x09: raw("\\t")
                case 0x08: raw("\\b")
                case 0x0c: raw("\\f")
                default:
                    raw("\\u00")
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    byte(hex[Int(b >> 4)]); byte(hex[Int(b & 15)])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: u[run..<u.count]))
        }
        byte(0x22)
    }

    public mutating func int(_ i: Int64) { bytes.append(contentsOf: String(i).utf8) }

    public mutating func double(_ d: Double) {
        // JSON has no NaN or infinity; JSONEncoder refuses them, a snapshot cannot.
        guard d.isFinite else { raw("null"); return }
        // `description` is the shortest text that reads back as the same
        // double, and keeps ".0" on integral values (unlike JSONEncoder): a
        // task's float argument 3.0 must reach the worker as a float, not 3.
        bytes.append(contentsOf: d.description.utf8)
    }

    public mutating func bool(_ b: Bool) { if b { raw("true") } else { raw("false") } }

    public mutating func value(_ v: JSONValue) {
        switch v {
        case .null: raw("null")
        case .bool(let b): bool(b)
        case .int(let i): int(i)
        case .double(let d): double(d)
        case .string(let s): string(s)
        case .array(let a):
            byte(0x5b)
            for (i, e) in a.enumerated() {
                if i > 0 { byte(0x2c) }
                value(e)
            }
            byte(0x5d)
        case .object(let o):
            byte(0x7b)
            var first = true
            for (k, e) in o {
                if !first { byte(0x2c) }
                first = false
                string(k)
                byte(0x3a)
                value(e)
            }
            byte(0x7d)
        }
    }

    /// `"key":` with a comma before it unless it opens the object.
    public mutating func key(_ k: StaticString, first: Bool = false) {
        if !first { byte(0x2c) }
        byte(0x22)
        raw(k)
        raw("\":")
    }
}

extension TaskSnapshot {
    /// The snapshot as JSON, the fields JSONEncoder would write (nil ones
    /// left out); `rawResult`: the result as JSON bytes, in place of `result`.
    public func writeJSON(_ w: inout JSONWriter, rawResult: [UInt8]? = nil) {
        w.byte(0x7b)
        w.key("id", first: true); w.string(id)
        w.key("environment"); w.string(environment)
        w.key("module"); w.string(module)
        w.key("function"); w.string(function)
        w.key("state"); w.string(state.rawValue)
        if let rawResult {
            w.key("result"); w.bytes += rawResult
        } else if let result {
            w.key("result"); w.value(result)
        }
        if let error { w.key("error"); error.writeJSON(&w) }
        if let replica { w.key("replica"); w.string(replica) }
        if let pid { w.key("pid"); w.int(Int64(pid)) }
        if let queuedMicros { w.key("queuedMicros"); w.int(queuedMicros) }
        if let runMicros { w.key("runMicros"); w.int(runMicros) }
        if let workerMicros { w.key("workerMicros"); w.int(workerMicros) }
        if let coldStart { w.key("coldStart"); w.bool(coldStart) }
        if let coldPhases {
            w.key("coldPhases")
            w.byte(0x7b)
            for (i, (k, v)) in coldPhases.sorted(by: { $0.key < $1.key }).enumerated() {
                if i > 0 { w.byte(0x2c) }
                w.string(k); w.byte(0x3a); w.int(v)
            }
            w.byte(0x7d)
        }
        w.byte(0x7d)
    }

    public var jsonBytes: [UInt8] {
        var w = JSONWriter(capacity: 320)
        writeJSON(&w)
        return w.bytes
    }
}

extension TaskError {
    public func writeJSON(_ w: inout JSONWriter) {
        w.byte(0x7b)
        w.key("type", first: true); w.string(type)
        if let module { w.key("module"); w.string(module) }
        w.key("message"); w.string(message)
        if let traceback { w.key("traceback"); w.string(traceback) }
        w.byte(0x7d)
    }

    /// From a worker's result frame: `type` and `message` required.
    init?(json: JSONValue) {
        guard case .object(let o) = json, let type = o["type"]?.stringValue, let message = o["message"]?.stringValue else {
            return nil
        }
        self.init(type: type, module: o["module"]?.stringValue, message: message, traceback: o["traceback"]?.stringValue)
    }
}
