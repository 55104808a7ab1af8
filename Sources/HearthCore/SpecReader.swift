/// Typed access to one mapping of a `SpecNode` tree. Every error names the
/// field by its full path (`pod_template.pod_spec.containers[0].image`) and
/// says what was expected and what was found.
struct SpecReader {
    let path: String
    private let pairs: [(key: String, value: SpecNode)]

    /// Fails unless `node` is a mapping.
    init(_ node: SpecNode, path: String, what: String = "a mapping") throws {
        guard case .mapping(let pairs) = node.value else {
            throw Self.error(path, "expected \(what), got \(node.kindDescription)")
        }
        self.path = path
        self.pairs = pairs
    }

    static func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    static func error(_ path: String, _ rule: String) -> HearthError {
        HearthError.invalid(path.isEmpty ? rule : "\(path): \(rule)")
    }

    func path(_ key: String) -> String { Self.join(path, key) }

    var keys: [String] { pairs.map(\.key) }

    /// Whether `key` was given at all (null included), where a null must be
    /// told apart from an absent field.
    func has(_ key: String) -> Bool { pairs.contains { $0.key == key } }

    /// Refuses the first key not in `known`, suggesting the nearest known
    /// key when it looks like a typo.
    func rejectUnknown(_ known: [String]) throws {
        for key in keys where !known.contains(key) {
            let near = known.filter { Self.editDistance($0, key) <= 2 }.sorted { Self.editDistance($0, key) < Self.editDistance($1, key) }
            if let suggestion = near.first {
                throw Self.error(path(key), "unknown field (did you mean \(suggestion)?)")
            }
            throw Self.error(path(key), "unknown field; expected one of \(known.joined(separator: ", "))")
        }
    }

    /// The value under `key`; nil when absent or null (null means "not set",
    /// as an SDK serialising `None` writes it).
    func node(_ key: String) -> SpecNode? {
        guard let node = pairs.first(where: { $0.key == key })?.value, !node.isNull else { return nil }
        return node
    }

    /// The one of `keys` that is present (aliases such as `mem`/`memory`),
    /// refusing both at once.
    func node(anyOf keys: [String]) throws -> (key: String, node: SpecNode)? {
        let present = keys.compactMap { key in node(key).map { (key, $0) } }
        if present.count > 1 {
            throw Self.error(path(present[1].0), "\(present[0].0) and \(present[1].0) are the same field; give one of them")
        }
        return present.first
    }

    func string(_ key: String) throws -> String? {
        guard let node = node(key) else { return nil }
        return try Self.string(node, path: path(key))
    }

    func requiredString(_ key: String) throws -> String {
        guard let value = try string(key) else { throw Self.error(path(key), "missing; this field is required") }
        return value
    }

    func int(_ key: String) throws -> Int? {
        guard let node = node(key) else { return nil }
        return try Self.int(node, path: path(key))
    }

    /// true or false; nothing else (not "yes", not 1) is a boolean here.
    func bool(_ key: String) throws -> Bool? {
        guard let node = node(key) else { return nil }
        guard case .bool(let b) = node.value else {
            throw Self.error(path(key), "expected true or false, got \(node.kindDescription)")
        }
        return b
    }

    /// `{KEY: value}` with string values; numbers and booleans are taken as
    /// written (`PORT: 8080` gives "8080"), as a YAML author expects.
    func stringMap(_ key: String) throws -> [String: String] {
        guard let node = node(key) else { return [:] }
        let map = try SpecReader(node, path: path(key), what: "a mapping of names to strings")
        var result: [String: String] = [:]
        for (name, value) in map.pairs {
            result[name] = try Self.scalarText(value, path: "\(map.path)[\"\(name)\"]")
        }
        return result
    }

    /// A list under `key`, each item handed to `read` with its path.
    func list<T>(_ key: String, _ read: (SpecNode, String) throws -> T) throws -> [T] {
        guard let node = node(key) else { return [] }
        guard case .sequence(let items) = node.value else {
            throw Self.error(path(key), "expected a list, got \(node.kindDescription)")
        }
        return try items.enumerated().map { try read($1, "\(path(key))[\($0)]") }
    }

    // MARK: Scalars

    static func string(_ node: SpecNode, path: String) throws -> String {
        guard case .string(let s) = node.value else {
            throw error(path, "expected a string, got \(node.kindDescription)")
        }
        return s
    }

    static func scalarText(_ node: SpecNode, path: String) throws -> String {
        switch node.value {
        case .string(let s): return s
        case .int, .double, .bool: return node.text
        default: throw error(path, "expected a string, got \(node.kindDescription)")
        }
    }

    /// Whole numbers; `30.0` (a float from Python) counts as 30.
    static func int(_ node: SpecNode, path: String) throws -> Int {
        switch node.value {
        case .int(let i):
            guard let v = Int(exactly: i) else { throw error(path, "\(node.text) is out of range") }
            return v
        case .double(let d) where d.isFinite && d == d.rounded():
            guard let v = Int(exactly: d) else { throw error(path, "\(node.text) is out of range") }
            return v
        default:
            throw error(path, "expected a whole number, got \(node.kindDescription)")
        }
    }

    /// A quantity given as a string or a number, kept as text (`0.5`, `"300Mi"`).
    static func quantityText(_ node: SpecNode, path: String) throws -> String {
        switch node.value {
        case .string(let s): return s
        case .int, .double: return node.text
        default: throw error(path, "expected a quantity (a string such as \"500m\" or \"1Gi\", or a number), got \(node.kindDescription)")
        }
    }

    /// Levenshtein distance, for "did you mean" on short field names.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
