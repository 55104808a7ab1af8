/// JSON written one way only, so that a hash of it is the same in every
/// client: object keys sorted by code point, no whitespace, and strings
/// escaped as Python's `json.dumps(ensure_ascii=True, sort_keys=True,
/// separators=(",", ":"))` escapes them (`\"`, `\\`, `\n`, `\r`, `\t`, `\b`,
/// `\f`; every other character outside space…`~` as `\uXXXX` in lowercase
/// hex, astral characters as a surrogate pair). An SDK replicates a hash
/// with that one call.
public enum CanonicalJSON {
    public static func encode(_ value: JSONValue) -> String {
        var out = ""
        write(value, into: &out)
        return out
    }

    private static func write(_ value: JSONValue, into out: inout String) {
        switch value {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += d.isFinite ? String(d) : "null"
        case .string(let s): writeString(s, into: &out)
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                write(item, into: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            // Python sorts str keys by code point; Swift's String `<` does not.
            let keys = members.keys.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
            for (i, key) in keys.enumerated() {
                if i > 0 { out += "," }
                writeString(key, into: &out)
                out += ":"
                if let member = members[key] { write(member, into: &out) }
            }
            out += "}"
        }
    }

    private static func writeString(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value >= 0x20 && scalar.value <= 0x7e {
                    out.unicodeScalars.append(scalar)
                } else if scalar.value <= 0xffff {
                    out += unicodeEscape(scalar.value)
                } else {
                    let v = scalar.value - 0x10000
                    out += unicodeEscape(0xd800 + (v >> 10)) + unicodeEscape(0xdc00 + (v & 0x3ff))
                }
            }
        }
        out += "\""
    }

    private static func unicodeEscape(_ v: UInt32) -> String {
        let hex = String(v, radix: 16)
        return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    }
}
