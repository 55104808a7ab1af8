import HearthCore

/// Image names as `[host[:port]/]path[:tag]`; a name without a tag means
/// `:latest`. Digest references (`name@sha256:…`) are not names.
public enum ImageName {
    /// Validates `text` and returns it with a tag (`python` → `python:latest`).
    public static func normalize(_ text: String) throws -> String {
        let rule = "expected [HOST[:PORT]/]NAME[:TAG] such as hearth/python:3.11 (lowercase name; tag of letters, digits, '_', '.', '-')"
        guard !text.isEmpty, text.utf8.count <= 255 else {
            throw HearthError.invalid("image name \"\(text)\" is empty or too long; \(rule)")
        }
        let (repository, tag) = split(text)
        guard isValidRepository(repository) else {
            throw HearthError.invalid("image name \"\(text)\" is not valid; \(rule)")
        }
        if let tag {
            guard isValidTag(tag) else { throw HearthError.invalid("image name \"\(text)\" has an invalid tag; \(rule)") }
            return text
        }
        return text + ":latest"
    }

    /// `host:5000/a/b:tag` → (`host:5000/a/b`, `tag`): the tag is after the
    /// last colon that follows the last slash.
    static func split(_ text: String) -> (repository: String, tag: String?) {
        let lastSlash = text.lastIndex(of: "/")
        if let colon = text.lastIndex(of: ":"), lastSlash.map({ colon > $0 }) ?? true {
            return (String(text[..<colon]), String(text[text.index(after: colon)...]))
        }
        return (text, nil)
    }

    static func isValidTag(_ tag: String) -> Bool {
        guard let first = tag.utf8.first, tag.utf8.count <= 128 else { return false }
        func word(_ c: UInt8) -> Bool {
            (0x30...0x39).contains(c) || (0x41...0x5a).contains(c) || (0x61...0x7a).contains(c) || c == UInt8(ascii: "_")
        }
        return word(first) && tag.utf8.allSatisfy { word($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
    }

    /// Path components of lowercase letters, digits and separators; the
    /// first may be a registry host with a port (and uppercase letters).
    static func isValidRepository(_ repository: String) -> Bool {
        let parts = repository.split(separator: "/", omittingEmptySubsequences: false)
        guard !parts.isEmpty else { return false }
        for (i, part) in parts.enumerated() {
            guard let first = part.utf8.first, let last = part.utf8.last else { return false }
            let isHost = i == 0 && parts.count > 1 && (part.contains(".") || part.contains(":") || part == "localhost")
            for c in part.utf8 {
                let lower = (0x61...0x7a).contains(c) || (0x30...0x39).contains(c)
                let separator = c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
                let hostOnly = (0x41...0x5a).contains(c) || c == UInt8(ascii: ":")
                guard lower || separator || (isHost && hostOnly) else { return false }
            }
            func alnum(_ c: UInt8) -> Bool { (0x61...0x7a).contains(c) || (0x30...0x39).contains(c) || (isHost && (0x41...0x5a).contains(c)) }
            guard alnum(first), alnum(last) else { return false }
        }
        return true
    }

    /// A name found in image metadata, if it is a usable full name. OCI's
    /// `ref.name` may hold just a tag (umoci, Docker); a bare word without
    /// `/` or `:` is taken as such a tag, not as a name.
    static func fromAnnotation(_ value: String) -> String? {
        guard value.contains("/") || value.contains(":") else { return nil }
        return try? normalize(value)
    }
}
