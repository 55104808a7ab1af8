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

/// Accumulates bytes from the worker and cuts them into frames.
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

    /// Appends bytes; returns every complete frame body.
    mutating func feed(_ bytes: ArraySlice<UInt8>) throws -> [[UInt8]] {
        buffer.append(contentsOf: bytes)
        var frames: [[UInt8]] = []
        while buffer.count - start >= 4 {
            let n = Int(buffer[start]) << 24 | Int(buffer[start + 1]) << 16 | Int(buffer[start + 2]) << 8 | Int(buffer[start + 3])
            if n > maxBytes { throw Failure.tooLarge(n, maxBytes) }
            guard buffer.count - start - 4 >= n else { break }
            frames.append(Array(buffer[(start + 4)..<(start + 4 + n)]))
            start += 4 + n
        }
        if start > 0 && (start == buffer.count || start > 1 << 16) {
            buffer.removeFirst(start)
            start = 0
        }
        return frames
    }
}

/// Daemon → worker.
struct RunMessage: Encodable {
    var type = "run"
    var id: String
    var module: String
    var function: String
    var kwargs: JSONValue
    var bundle: Bundle?
    var env: [String: String]?

    struct Bundle: Encodable {
        var version: String
        var path: String
    }
}

struct ControlMessage: Encodable {
    var type: String
    var id: String?
}

/// Worker → daemon: `ready`, `result`, `pong`, `error`.
struct WorkerMessage: Decodable, Sendable {
    var type: String
    var id: String?
    var pid: Int32?
    var python: String?
    var ok: Bool?
    var value: JSONValue?
    var error: TaskError?
    var message: String?
    var duration_us: Int64?
}

