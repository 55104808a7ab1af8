import HearthCore
import HearthImage

/// An image reference as Docker reads one: `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`.
///
/// The first path component is a registry host when it has a `.` or a
/// `:`, is `localhost`, or has an uppercase letter; otherwise the
/// registry is `docker.io` and a one-component path is in `library/`:
/// `python:3.11-slim` is `docker.io/library/python:3.11-slim`. No tag and no
/// digest means `:latest`. With both a tag and a digest, the digest decides
/// what is fetched (the tag is only checked for syntax).
public struct ImageReference: Sendable, Equatable, CustomStringConvertible {
    /// `host[:port]`, or `docker.io`.
    public var registry: String
    /// The repository path on that registry (`library/python`).
    public var repository: String
    public var tag: String?
    /// `sha256:<64 lowercase hex>`.
    public var digest: String?

    public init(registry: String, repository: String, tag: String?, digest: String?) {
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.digest = digest
    }

    static let rule = "expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST] such as python:3.11-slim or 127.0.0.1:5000/team/app:1.0@sha256:<64 hex digits>"

    public static func parse(_ text: String) throws -> ImageReference {
        func invalid(_ why: String) -> HearthError {
            HearthError.invalid("image reference \"\(text)\": \(why); \(rule)")
        }
        guard !text.isEmpty else { throw invalid("empty") }
        guard text.utf8.count <= 255 + 72 else { throw invalid("longer than 255 characters before the digest") }
        guard !text.contains("://") else { throw invalid("a reference has no scheme (the registry decides http or https)") }
        var rest = Substring(text)
        var digest: String?
        if let at = text.firstIndex(of: "@") {
            let d = text[text.index(after: at)...]
            guard d.hasPrefix("sha256:") else { throw invalid("digest \"\(d)\" is not sha256:<hex> (only sha256 is supported)") }
            guard RegistryDocument.isDigest(String(d)) else { throw invalid("digest \"\(d)\" is not 64 lowercase hex digits after sha256:") }
            digest = String(d)
            rest = text[..<at]
        }
        guard !rest.isEmpty else { throw invalid("no repository before the digest") }
        let (name, tag) = ImageName.split(String(rest))
        if let tag {
            guard ImageName.isValidTag(tag) else { throw invalid("tag \"\(tag)\" is not valid (letters, digits, '_', '.', '-'; at most 128)") }
        }
        guard name.utf8.count <= 255 else { throw invalid("the name is longer than 255 characters") }
        var components = name.split(separator: "/", omittingEmptySubsequences: false)
        var registry = ImageName.defaultRegistry
        if components.count > 1, ImageName.isHostComponent(components[0]) {
            registry = String(components.removeFirst())
            try checkHost(registry, invalid: invalid)
        }
        if registry == ImageName.defaultRegistry && components.count == 1 {
            components.insert(Substring(ImageName.officialNamespace), at: 0)
        }
        let repository = components.joined(separator: "/")
        guard components.allSatisfy(isPathComponent) else {
            throw invalid("repository \"\(repository)\" is not valid (lowercase letters, digits and '.', '_', '-' between them, components separated by '/')")
        }
        return ImageReference(registry: registry, repository: repository, tag: digest == nil ? (tag ?? "latest") : tag,
                              digest: digest)
    }

    /// Docker's path component: runs of lowercase letters and digits
    /// joined by one separator each, `.`, `_`, `__` or any number of `-`.
    static func isPathComponent(_ part: Substring) -> Bool {
        func alnum(_ c: UInt8) -> Bool { (0x61...0x7a).contains(c) || (0x30...0x39).contains(c) }
        let bytes = Array(part.utf8)
        guard let first = bytes.first, let last = bytes.last, alnum(first), alnum(last) else { return false }
        var i = 0
        while i < bytes.count {
            if alnum(bytes[i]) { i += 1; continue }
            var j = i
            while j < bytes.count && !alnum(bytes[j]) { j += 1 }
            let separator = bytes[i..<j]
            let ok = separator.elementsEqual([UInt8(ascii: ".")]) || separator.elementsEqual([UInt8(ascii: "_")])
                || separator.elementsEqual([UInt8(ascii: "_"), UInt8(ascii: "_")])
                || separator.allSatisfy { $0 == UInt8(ascii: "-") }
            guard ok else { return false }
            i = j
        }
        return true
    }

    /// `host`, `host:port`: letters, digits, `.` and `-`, an optional port
    /// of 1–5 digits. (IPv6 literals are not supported.)
    static func checkHost(_ host: String, invalid: (String) -> HearthError) throws {
        let parts = host.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, let name = parts.first, !name.isEmpty,
              name.utf8.allSatisfy({ c in
                  (0x30...0x39).contains(c) || (0x41...0x5a).contains(c) || (0x61...0x7a).contains(c)
                      || c == UInt8(ascii: ".") || c == UInt8(ascii: "-")
              }),
              name.first != "-", name.first != ".", name.last != "-", name.last != "."
        else { throw invalid("registry host \"\(host)\" is not a host name or IPv4 address with an optional port") }
        if parts.count == 2 {
            guard let port = Int(parts[1]), (1...65535).contains(port), parts[1].utf8.count <= 5 else {
                throw invalid("registry port \"\(parts[1])\" is not a number from 1 to 65535")
            }
        }
    }

    /// What the manifest is fetched by: the digest, else the tag.
    public var manifestReference: String { digest ?? tag ?? "latest" }

    /// The full form: `docker.io/library/python:3.11-slim`,
    /// `127.0.0.1:5000/app@sha256:…`.
    public var description: String {
        var s = "\(registry)/\(repository)"
        if let tag { s += ":\(tag)" }
        if let digest { s += "@\(digest)" }
        return s
    }

    /// The name the image is stored under: the familiar form of the name
    /// with its tag (`python:3.11-slim`), or `NAME@sha256:…` for a digest
    /// reference (the tag, if any, is dropped: the digest fixes the content).
    public var storeName: String {
        let base = "\(registry)/\(repository)"
        if let digest { return (try? ImageName.normalize("\(base)@\(digest)", allowDigest: true)) ?? "\(base)@\(digest)" }
        let full = "\(base):\(tag ?? "latest")"
        return (try? ImageName.normalize(full)) ?? full
    }

    /// The token scope for pulling from this repository.
    public var pullScope: String { "repository:\(repository):pull" }
}
