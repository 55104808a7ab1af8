import Foundation
import HearthCore

/// The task channel's framing: a 4-byte big-endian length, then that many
/// bytes of UTF-8 JSON. Both ends enforce a maximum frame size.
public enum Frames {
    public static let defaultMaxBytes = 64 << 20

    public static func encode<T: Encodable>(_ message: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        let body = try encoder.encode(message)
        var out = [UInt8]()
        out.reserveCapacity(4 + body.count)
        let n = UInt32(body.count)
        out += [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)]
        out += body
        return out
    }
}

/// Accumulates bytes from the worker and cuts them into frames, one at a
/// time: the reader stops at the first frame that breaks the protocol, so
/// the rest of a flood is never copied or parsed.
struct FrameReader {
    let maxBytes: Int
    private var buffer: [UInt8] = []
    private var start = 0

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    enum Failure: Error, CustomStringConvertible {
        case tooLarge(Int, Int)
        var description: String {
            switch self {
            case .tooLarge(let n, let max): return "frame of \(n) bytes exceeds the limit of \(max) bytes"
            }
        }
    }

    /// Appends bytes read from the channel.
    mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && (start == buffer.count || start > 1 << 16) {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// Bytes read and not yet taken as a frame (part of one).
    var buffered: Int { buffer.count - start }

    /// The length the next frame's header announces, once its 4 bytes are in.
    var announced: Int? {
        guard buffer.count - start >= 4 else { return nil }
        return Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
    }

    /// The next complete frame body, or nil until more bytes arrive.
    mutating func next() throws -> [UInt8]? {
        guard buffer.count - start >= 4 else { return nil }
        let n = Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
        if n > maxBytes { throw Failure.tooLarge(n, maxBytes) }
        guard buffer.count - start - 4 >= n else { return nil }
        let frame = Array(buffer[(start + 4)..<(start + 4 + n)])
        start += 4 + n
        return frame
    }
}

/// Daemon → worker.
struct RunMessage {
    var id: String
    var module: String
    var function: String
    /// The task's kwargs as the client wrote them: a validated JSON object.
    var kwargs: [UInt8]
    var bundle: Bundle?
    var env: [String: String]?

    struct Bundle {
        var version: String
        var path: String
    }

    /// The length-prefixed frame, written by hand (see FastJSON).
    func frame() -> [UInt8] {
        var w = Frames.writer()
        w.raw("{\"type\":\"run\"")
        w.key("id"); w.string(id)
        w.key("module"); w.string(module)
        w.key("function"); w.string(function)
        w.key("kwargs"); w.bytes += kwargs
        if let bundle {
            w.key("bundle")
            w.raw("{\"version\":"); w.string(bundle.version)
            w.key("path"); w.string(bundle.path)
            w.byte(0x7d)
        }
        if let env {
            w.key("env")
            w.value(.object(env.mapValues { .string($0) }))
        }
        w.byte(0x7d)
        return Frames.finish(&w)
    }
}

extension Frames {
    /// A writer whose first 4 bytes are kept for the length prefix.
    static func writer(capacity: Int = 256) -> JSONWriter {
        var w = JSONWriter(capacity: capacity)
        w.bytes += [0, 0, 0, 0]
        return w
    }

    /// Fills in the length prefix of a `writer()`'s frame.
    static func finish(_ w: inout JSONWriter) -> [UInt8] {
        let n = UInt32(w.bytes.count - 4)
        w.bytes[0] = UInt8(n >> 24); w.bytes[1] = UInt8((n >> 16) & 0xff)
        w.bytes[2] = UInt8((n >> 8) & 0xff); w.bytes[3] = UInt8(n & 0xff)
        return w.bytes
    }
}

struct ControlMessage: Encodable {
    var type: String
    var id: String?
}

/// Worker → daemon: `ready`, `adopted`, `result`, `log` (a task's output
/// when the replica runs several at once), `pong`, `error`.
struct WorkerMessage: Sendable {
    var type: String
    var id: String?
    var pid: Int32?
    var python: String?
    var ok: Bool?
    /// A result's value as the worker wrote it (validated JSON, not built).
    var value: [UInt8]?
    var error: TaskError?
    var message: String?
    var duration_us: Int64?
    /// A `log` frame's stream (`stdout` or `stderr`) and text.
    var stream: String?
    var data: String?
    /// A `pong`'s tasks the worker still owes a result (adoption's ping).
    var running: [String]?
    /// The frame's size: what a result costs the result budget.
    var frameBytes = 0

    /// From a frame's body; nil when it is not a JSON object with a string `type`.
    init?(frame: [UInt8]) {
        guard let (o, raw) = try? FastJSON.parseObject(frame, rawKey: "value"), let type = o["type"]?.stringValue else {
            return nil
        }
        self.type = type
        frameBytes = frame.count
        value = raw
        id = o["id"]?.stringValue
        if case .int(let p)? = o["pid"], let p32 = Int32(exactly: p) { pid = p32 }
        python = o["python"]?.stringValue
        if case .bool(let b)? = o["ok"] { ok = b }
        error = o["error"].flatMap { TaskError(json: $0) }
        message = o["message"]?.stringValue
        if case .int(let d)? = o["duration_us"] { duration_us = d }
        stream = o["stream"]?.stringValue
        data = o["data"]?.stringValue
        if case .array(let items)? = o["running"] { running = items.compactMap(\.stringValue) }
    }
}
