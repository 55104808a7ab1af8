/// The head of one request to the egress proxy: `CONNECT host:port` (HTTPS
/// and anything else tunnelled) or an absolute-form `GET http://host/…`
/// (plain HTTP, as apt sends it). Pure parsing; the proxy (HearthEgress)
/// decides where it may go.
public struct EgressRequest: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A tunnel: after `200 Connection established` bytes flow both ways.
        case connect
        /// An absolute-form request, forwarded as received.
        case http
    }

    public var kind: Kind
    public var method: String
    /// A name (lowercased) or an IP literal (without brackets).
    public var host: String
    public var port: UInt16
    /// Bytes of body after the head (Content-Length; 0 without one).
    public var bodyLength: Int

    /// `host:port`, IPv6 in brackets: how messages name the destination.
    public var destination: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// A refusal to parse: the HTTP status and a one-line reason.
    public struct Failure: Error, Sendable, Equatable {
        public var status: Int
        public var reason: String
        public init(_ status: Int, _ reason: String) { self.status = status; self.reason = reason }
    }

    /// Where the head in `bytes` ends (just past the blank line), or nil
    /// when it has not all arrived. Bare LF line ends are accepted too.
    public static func headEnd(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var i = 0
        let n = bytes.count
        while i < n {
            if bytes[i] == 10 {
                // "\n\n" or "\n\r\n"
                if i + 1 < n && bytes[i + 1] == 10 { return i + 2 }
                if i + 2 < n && bytes[i + 1] == 13 && bytes[i + 2] == 10 { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    static let hint = "the egress proxy takes CONNECT host:port (HTTPS_PROXY) or absolute-form http:// requests (HTTP_PROXY)"

    /// Parses a complete head (through its blank line).
    public static func parse(_ head: some Collection<UInt8>) throws(Failure) -> EgressRequest {
        var lines = Array(head).split(separator: 10, omittingEmptySubsequences: false).map { line -> ArraySlice<UInt8> in
            line.last == 13 ? line.dropLast() : line
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        guard let first = lines.first, let requestLine = String(validating: first, as: UTF8.self) else {
            throw Failure(400, "the request line is not UTF-8 text")
        }
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw Failure(400, "malformed request line; \(hint)")
        }
        let method = String(parts[0]), target = String(parts[1]), version = parts[2]
        guard method.utf8.allSatisfy({ isToken($0) }) else { throw Failure(400, "malformed method") }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            throw Failure(505, "\(version.prefix(16)) is not supported; HTTP/1.0 and HTTP/1.1 are")
        }

        var contentLength: Int?
        var hostHeader: String?
        for line in lines.dropFirst() {
            guard let text = String(validating: line, as: UTF8.self) else { throw Failure(400, "a header is not UTF-8 text") }
            guard let first = text.utf8.first, first != 32, first != 9 else {
                throw Failure(400, "folded or empty header lines are not accepted")
            }
            guard let colon = text.firstIndex(of: ":"), text[..<colon].utf8.allSatisfy({ isToken($0) }),
                  colon != text.startIndex else {
                throw Failure(400, "malformed header line")
            }
            let name = text[..<colon].lowercased()
            let value = text[text.index(after: colon)...].trimmingSpaces
            switch name {
            case "transfer-encoding":
                throw Failure(501, "Transfer-Encoding in a request is not supported by the egress proxy")
            case "content-length":
                guard !value.isEmpty, value.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }), value.utf8.count <= 15,
                      let n = Int(value), contentLength == nil || contentLength == n else {
                    throw Failure(400, "invalid Content-Length")
                }
                contentLength = n
            case "host":
                guard hostHeader == nil else { throw Failure(400, "more than one Host header") }
                hostHeader = value.lowercased()
            default: break
            }
        }

        if method == "CONNECT" {
            let (host, port) = try authority(target, defaultPort: nil)
            return EgressRequest(kind: .connect, method: method, host: host, port: port, bodyLength: 0)
        }
        let lower = target.lowercased()
        if lower.hasPrefix("https://") {
            throw Failure(400, "https:// must be tunnelled with CONNECT (set HTTPS_PROXY)")
        }
        guard lower.hasPrefix("http://") else { throw Failure(400, "\(hint), not \(method) \(target.prefix(64))") }
        let rest = target.dropFirst("http://".count)
        let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let auth = String(rest[..<end])
        let (host, port) = try authority(auth, defaultPort: 80)
        // The origin server sees the head as received: its Host must name
        // the same place the request-target does.
        if let hostHeader {
            let (hh, hp) = try authority(hostHeader, defaultPort: 80)
            guard hh == host, hp == port else {
                throw Failure(400, "Host \(hostHeader.prefix(64)) does not match the request target's \(auth.lowercased().prefix(64))")
            }
        }
        return EgressRequest(kind: .http, method: method, host: host, port: port, bodyLength: contentLength ?? 0)
    }

    /// `host:port` or `[v6]:port`; the port is required without a default.
    static func authority(_ text: String, defaultPort: UInt16?) throws(Failure) -> (String, UInt16) {
        guard !text.contains("@") else { throw Failure(400, "credentials in the request target are not accepted") }
        var host: Substring, portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw Failure(400, "malformed IPv6 literal in \(text.prefix(64))") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw Failure(400, "malformed authority \(text.prefix(64))") }
                portText = after.dropFirst()
            }
            guard host.contains(":"), IPAddress(String(host)) != nil else {
                throw Failure(400, "malformed IPv6 literal in \(text.prefix(64))")
            }
        } else {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { throw Failure(400, "an IPv6 address needs brackets: \(text.prefix(64))") }
            host = parts[0]
            portText = parts.count == 2 ? parts[1] : nil
        }
        guard !host.isEmpty, host.utf8.count <= 253,
              host.utf8.allSatisfy({ isHostByte($0) }) else {
            throw Failure(400, "\"\(host.prefix(64))\" is not a host name or address")
        }
        let port: UInt16
        if let portText {
            guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  let p = UInt16(portText), p > 0 else {
                throw Failure(400, "\"\(portText.prefix(16))\" is not a port")
            }
            port = p
        } else if let defaultPort {
            port = defaultPort
        } else {
            throw Failure(400, "CONNECT needs host:port, got \(text.prefix(64))")
        }
        return (host.lowercased(), port)
    }

    /// RFC 9110 tchar.
    static func isToken(_ b: UInt8) -> Bool {
        switch b {
        case 48...57, 65...90, 97...122: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }

    /// Letters, digits, `-`, `.`, `_` (names) and `:` (IPv6 literals).
    static func isHostByte(_ b: UInt8) -> Bool {
        switch b {
        case 48...57, 65...90, 97...122, UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"):
            return true
        default: return false
        }
    }
}

extension StringProtocol {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
