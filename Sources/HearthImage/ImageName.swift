import HearthCore

/// Image names as `[host[:port]/]path[:tag]`; a name without a tag means
/// `:latest`. Names are kept as given, except that Docker's default
/// registry is written in its familiar form: `docker.io/library/python:3.11`,
/// `docker.io/python:3.11`, `library/python:3.11` and `python:3.11` are one
/// name, `python:3.11`, as `docker` shows them. A digest reference
/// (`name@sha256:…`) names an image pulled by digest (see `normalize(_:allowDigest:)`).
public enum ImageName {
    /// The registry a name without a host refers to (reference parsing
    /// only: the store never contacts it by itself).
    public static let defaultRegistry = "docker.io"
    /// The namespace of Docker's official images on the default registry.
    public static let officialNamespace = "library"

    /// Validates `text` and returns it with a tag (`python` → `python:latest`)
    /// in its familiar form. With `allowDigest`, `name[:tag]@sha256:<hex>`
    /// is accepted too and becomes `name@sha256:<hex>`: the digest fixes the
    /// content, so the tag is dropped (as `docker pull` does).
    public static func normalize(_ text: String, allowDigest: Bool = false) throws -> String {
        let rule = "expected [HOST[:PORT]/]NAME[:TAG] such as hearth/python:3.11 (lowercase name; tag of letters, digits, '_', '.', '-')"
            + (allowDigest ? ", or NAME@sha256:<64 hex digits>" : "")
        guard !text.isEmpty, text.utf8.count <= 255 + 72 else {
            throw HearthError.invalid("image name \"\(text)\" is empty or too long; \(rule)")
        }
        var named = Substring(text)
        var digest: Substring?
        if let at = text.firstIndex(of: "@") {
            guard allowDigest else {
                throw HearthError.invalid("image name \"\(text)\" is a digest reference; a name here is \(rule.dropFirst("expected ".count))")
            }
            digest = text[text.index(after: at)...]
            named = text[..<at]
            guard let d = digest, d.hasPrefix("sha256:"), isSHA256Hex(d.dropFirst("sha256:".count)) else {
                throw HearthError.invalid("image reference \"\(text)\" has an invalid digest; \(rule)")
            }
        }
        guard !named.isEmpty, named.utf8.count <= 255 else {
            throw HearthError.invalid("image name \"\(text)\" is empty or too long; \(rule)")
        }
        let (repository, tag) = split(String(named))
        guard isValidRepository(repository) else {
            throw HearthError.invalid("image name \"\(text)\" is not valid; \(rule)")
        }
        if let tag, !isValidTag(tag) {
            throw HearthError.invalid("image name \"\(text)\" has an invalid tag; \(rule)")
        }
        let short = familiar(repository)
        if let digest { return "\(short)@\(digest)" }
        return "\(short):\(tag ?? "latest")"
    }

    /// `docker.io/library/x` and `docker.io/x` → `x`; `docker.io/a/b` →
    /// `a/b`; `library/x` → `x`; every other repository unchanged.
    static func familiar(_ repository: String) -> String {
        var parts = repository.split(separator: "/", omittingEmptySubsequences: false)
        if parts.count > 1 && parts[0] == defaultRegistry[...] { parts.removeFirst() }
        if parts.count == 2 && parts[0] == officialNamespace[...] { parts.removeFirst() }
        return parts.joined(separator: "/")
    }

    /// `name@sha256:…` → (`name`, `sha256:…`), for a normalized digest name.
    public static func splitDigest(_ name: String) -> (repository: String, digest: String)? {
        guard let at = name.firstIndex(of: "@") else { return nil }
        return (String(name[..<at]), String(name[name.index(after: at)...]))
    }

    /// The repository of a stored name (`a/b:tag`, `a/b@sha256:…` → `a/b`).
    public static func repository(of name: String) -> String {
        splitDigest(name)?.repository ?? split(name).repository
    }

    static func isSHA256Hex(_ s: Substring) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// `host:5000/a/b:tag` → (`host:5000/a/b`, `tag`): the tag is after the
    /// last colon that follows the last slash.
    public static func split(_ text: String) -> (repository: String, tag: String?) {
        let lastSlash = text.lastIndex(of: "/")
        if let colon = text.lastIndex(of: ":"), lastSlash.map({ colon > $0 }) ?? true {
            return (String(text[..<colon]), String(text[text.index(after: colon)...]))
        }
        return (text, nil)
    }

    public static func isValidTag(_ tag: String) -> Bool {
        guard let first = tag.utf8.first, tag.utf8.count <= 128 else { return false }
        func word(_ c: UInt8) -> Bool {
            (0x30...0x39).contains(c) || (0x41...0x5a).contains(c) || (0x61...0x7a).contains(c) || c == UInt8(ascii: "_")
        }
        return word(first) && tag.utf8.allSatisfy { word($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }
    }

    /// Path components of lowercase letters, digits and separators; the
    /// first may be a registry host with a port (and uppercase letters).
    public static func isValidRepository(_ repository: String) -> Bool {
        let parts = repository.split(separator: "/", omittingEmptySubsequences: false)
        guard !parts.isEmpty else { return false }
        for (i, part) in parts.enumerated() {
            guard let first = part.utf8.first, let last = part.utf8.last else { return false }
            let isHost = i == 0 && parts.count > 1 && isHostComponent(part)
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

    /// Docker's rule for the first component of a reference: a registry
    /// host when it has a `.` or a `:`, is `localhost`, or has an
    /// uppercase letter (repository paths are lowercase).
    public static func isHostComponent(_ part: Substring) -> Bool {
        part.contains(".") || part.contains(":") || part == "localhost" || part.contains { $0.isUppercase }
    }

    /// A name found in image metadata, if it is a usable full name. OCI's
    /// `ref.name` may hold just a tag (umoci, Docker); a bare word without
    /// `/` or `:` is taken as such a tag, not as a name.
    static func fromAnnotation(_ value: String) -> String? {
        guard value.contains("/") || value.contains(":") else { return nil }
        return try? normalize(value)
    }
}
