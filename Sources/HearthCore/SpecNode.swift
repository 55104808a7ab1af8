#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Yams

/// A YAML or JSON value as read, before it becomes a typed spec. YAML and
/// JSON both end up here so that one reader gives both the same rules and
/// the same messages.
struct SpecNode: Sendable {
    enum Value: Sendable {
        case null
        case bool(Bool)
        case int(Int64)
        case double(Double)
        case string(String)
        case sequence([SpecNode])
        /// In source order (JSON: sorted by key, since JSONDecoder loses the order).
        case mapping([(key: String, value: SpecNode)])
    }

    var value: Value
    /// A scalar's text as written (YAML) or rendered (JSON), so that a
    /// quantity written `0.5` or an env value written `3.10` keeps its spelling.
    var text: String

    init(_ value: Value, text: String = "") {
        self.value = value
        self.text = text
    }

    var isNull: Bool { if case .null = value { return true } else { return false } }

    /// How a message names what was found: `a string ("x")`, `a list`.
    var kindDescription: String {
        switch value {
        case .null: return "null"
        case .bool: return "a boolean (\(text))"
        case .int, .double: return "a number (\(text))"
        case .string(let s): return "a string (\"\(s)\")"
        case .sequence: return "a list"
        case .mapping: return "a mapping"
        }
    }
}

// MARK: JSON

extension SpecNode: Decodable {
    private struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { return nil }
    }

    /// Reads any value a Decoder holds; used for JSON and for decoding a
    /// spec through `Decodable`.
    init(from decoder: any Decoder) throws {
        if let object = try? decoder.container(keyedBy: AnyKey.self) {
            var pairs: [(key: String, value: SpecNode)] = []
            for key in object.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) {
                pairs.append((key.stringValue, try object.decode(SpecNode.self, forKey: key)))
            }
            self.init(.mapping(pairs))
            return
        }
        if var array = try? decoder.unkeyedContainer() {
            var items: [SpecNode] = []
            while !array.isAtEnd { items.append(try array.decode(SpecNode.self)) }
            self.init(.sequence(items))
            return
        }
        let scalar = try decoder.singleValueContainer()
        if scalar.decodeNil() {
            self.init(.null, text: "null")
        } else if let b = try? scalar.decode(Bool.self) {
            self.init(.bool(b), text: b ? "true" : "false")
        } else if let i = try? scalar.decode(Int64.self) {
            self.init(.int(i), text: String(i))
        } else if let d = try? scalar.decode(Double.self) {
            self.init(.double(d), text: Self.render(d))
        } else {
            let s = try scalar.decode(String.self)
            self.init(.string(s), text: s)
        }
    }

    /// `2.0` → "2", `0.5` → "0.5": what a person would have written.
    static func render(_ d: Double) -> String {
        if d.isFinite, d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
        return String(d)
    }

    static func parseJSON(_ text: String) throws -> SpecNode {
        try JSONDecoder().decode(SpecNode.self, from: Data(text.utf8))
    }
}

// MARK: YAML

extension SpecNode {
    /// Aliases can make a small file expand into a huge tree; past this
    /// many values the spec is refused rather than expanded.
    static let maxValues = 100_000

    /// Every document of a YAML stream, in order; empty documents are skipped.
    static func yamlDocuments(_ text: String) throws -> [Yams.Node] {
        // Composed nodes keep their tags as written (untagged = implicit);
        // `resolve` then applies YAML 1.2's core schema, so `no` and `on`
        // stay strings rather than becoming booleans as YAML 1.1 has them.
        var documents: [Yams.Node] = []
        var stream = try Yams.compose_all(yaml: text, .basic)
        while let node = stream.next() { documents.append(node) }
        if let error = stream.error { throw error }
        return documents.filter { node in
            if case .scalar(let s) = node, s.style == .plain, s.string.isEmpty { return false }
            return true
        }
    }

    /// Converts a YAML node; `path` names it in errors.
    init(yaml node: Yams.Node, path: String) throws {
        var budget = Self.maxValues
        try self.init(yaml: node, path: path, budget: &budget)
    }

    private init(yaml node: Yams.Node, path: String, budget: inout Int) throws {
        budget -= 1
        guard budget >= 0 else {
            throw SpecReader.error(path, "too many values (more than \(Self.maxValues) once aliases are expanded)")
        }
        switch node {
        case .scalar(let scalar):
            self = try Self.scalar(scalar, path: path)
        case .sequence(let sequence):
            var items: [SpecNode] = []
            for (i, item) in sequence.enumerated() {
                items.append(try SpecNode(yaml: item, path: "\(path)[\(i)]", budget: &budget))
            }
            self.init(.sequence(items))
        case .mapping(let mapping):
            var pairs: [(key: String, value: SpecNode)] = []
            var seen = Set<String>()
            for (keyNode, valueNode) in mapping {
                guard case .scalar(let keyScalar) = keyNode else {
                    throw SpecReader.error(path, "mapping keys must be strings, found a \(keyNode.isMapping ? "mapping" : "list") as a key")
                }
                let key = keyScalar.string
                if key == "<<" && keyScalar.style == .plain {
                    throw SpecReader.error(path, "merge keys (<<) are not supported; write the fields out")
                }
                guard seen.insert(key).inserted else {
                    throw SpecReader.error(SpecReader.join(path, key), "duplicate key")
                }
                pairs.append((key, try SpecNode(yaml: valueNode, path: SpecReader.join(path, key), budget: &budget)))
            }
            self.init(.mapping(pairs))
        }
    }

    private static func scalar(_ scalar: Yams.Node.Scalar, path: String) throws -> SpecNode {
        let text = scalar.string
        // Tag.name is internal to Yams; its description is the same string.
        let tag = Yams.Tag.Name(rawValue: scalar.tag.description)
        switch tag {
        case .implicit:
            // Untagged: quoted and block scalars are strings, plain ones are resolved.
            return scalar.style == .plain ? resolve(plain: text) : SpecNode(.string(text), text: text)
        case .str, .nonSpecific:
            return SpecNode(.string(text), text: text)
        case .null:
            return SpecNode(.null, text: text)
        case .bool:
            if case .bool = resolve(plain: text).value { return resolve(plain: text) }
        case .int:
            if case .int = resolve(plain: text).value { return resolve(plain: text) }
        case .float:
            let node = resolve(plain: text)
            switch node.value {
            case .int(let i): return SpecNode(.double(Double(i)), text: text)
            case .double: return node
            default: break
            }
        default:
            throw SpecReader.error(path, "the YAML tag \(tag.rawValue) is not supported")
        }
        throw SpecReader.error(path, "\"\(text)\" does not match its tag \(tag.rawValue)")
    }

    /// YAML 1.2 core schema for an untagged plain scalar.
    static func resolve(plain text: String) -> SpecNode {
        switch text {
        case "", "~", "null", "Null", "NULL": return SpecNode(.null, text: text)
        case "true", "True", "TRUE": return SpecNode(.bool(true), text: text)
        case "false", "False", "FALSE": return SpecNode(.bool(false), text: text)
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return SpecNode(.double(.infinity), text: text)
        case "-.inf", "-.Inf", "-.INF": return SpecNode(.double(-.infinity), text: text)
        case ".nan", ".NaN", ".NAN": return SpecNode(.double(.nan), text: text)
        default: break
        }
        let bytes = Array(text.utf8)
        func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
        var body = bytes[...]
        var negative = false
        if let first = body.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") {
            negative = first == UInt8(ascii: "-")
            body = body.dropFirst()
        }
        if !body.isEmpty, body.allSatisfy(isDigit) {
            if let i = Int64(text.hasPrefix("+") ? String(text.dropFirst()) : text) { return SpecNode(.int(i), text: text) }
            // Too large for Int64: keep it as a number so range checks can name it.
            if let d = Double(text) { return SpecNode(.double(d), text: text) }
        }
        if !negative, bytes.count > 2, bytes[0] == UInt8(ascii: "0") {
            let digits = String(decoding: bytes[2...], as: UTF8.self)
            if bytes[1] == UInt8(ascii: "o"), let i = Int64(digits, radix: 8) { return SpecNode(.int(i), text: text) }
            if bytes[1] == UInt8(ascii: "x"), let i = Int64(digits, radix: 16) { return SpecNode(.int(i), text: text) }
        }
        if isCoreFloat(body), let d = Double(text) { return SpecNode(.double(d), text: text) }
        return SpecNode(.string(text), text: text)
    }

    /// `[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?` or `\.[0-9]+(...)?`, sign already removed.
    private static func isCoreFloat(_ s: ArraySlice<UInt8>) -> Bool {
        var i = s.startIndex
        func digits() -> Int {
            let start = i
            while i < s.endIndex, s[i] >= 0x30, s[i] <= 0x39 { i += 1 }
            return i - start
        }
        var mantissa = digits()
        if i < s.endIndex, s[i] == UInt8(ascii: ".") { i += 1; mantissa += digits() }
        guard mantissa > 0 else { return false }
        if i < s.endIndex, s[i] == UInt8(ascii: "e") || s[i] == UInt8(ascii: "E") {
            i += 1
            if i < s.endIndex, s[i] == UInt8(ascii: "+") || s[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { return false }
        }
        return i == s.endIndex
    }
}

private extension Yams.Node {
    var isMapping: Bool { if case .mapping = self { return true } else { return false } }
}
