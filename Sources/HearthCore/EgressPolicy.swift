#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 address.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(UInt32)
    /// 16 bytes, network order.
    case v6([UInt8])

    /// A literal (`203.0.113.80`, `2001:db8::1`, `::ffff:127.0.0.1`); nil
    /// for anything else, zone ids (`fe80::1%eth0`) included.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        self = .v6(withUnsafeBytes(of: &v6) { Array($0) })
    }

    /// From a raw 4- or 16-byte address (getaddrinfo's), network order.
    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4: self = .v4(bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        case 16: self = .v6(bytes)
        default: return nil
        }
    }

    /// Network order.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let a): return [UInt8(a >> 24), UInt8(a >> 16 & 0xff), UInt8(a >> 8 & 0xff), UInt8(a & 0xff)]
        case .v6(let b): return b
        }
    }

    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address
    /// the kernel connects to; everything else is itself.
    public var unmapped: IPAddress {
        guard case .v6(let b) = self, b.count == 16, b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xff, b[11] == 0xff
        else { return self }
        return IPAddress(bytes: Array(b[12..<16])) ?? self
    }

    public var isV4: Bool { if case .v4 = self { return true } else { return false } }

    public var description: String {
        switch self {
        case .v4:
            let b = bytes
            return "\(b[0]).\(b[1]).\(b[2]).\(b[3])"
        case .v6(var b):
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            guard b.count == 16, inet_ntop(AF_INET6, &b, &buf, socklen_t(buf.count)) != nil else { return "?" }
            return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// `host:port` with IPv6 in brackets.
    public func withPort(_ port: UInt16) -> String {
        isV4 ? "\(self):\(port)" : "[\(self)]:\(port)"
    }
}

/// An address block, `10.0.0.0/8` or `fc00::/7`.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var prefix: Int

    public init(_ address: IPAddress, _ prefix: Int) {
        self.address = address
        self.prefix = max(0, min(prefix, address.isV4 ? 32 : 128))
    }

    /// `A/N` or a bare address (one host). Nil when malformed or when bits
    /// below the prefix are set (`10.1.2.3/8` is more likely a typo than a
    /// way to write 10.0.0.0/8).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        let width = address.isV4 ? 32 : 128
        var prefix = width
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].allSatisfy(\.isASCII), parts[1].allSatisfy(\.isNumber),
                  let n = Int(parts[1]), n <= width else { return nil }
            prefix = n
        }
        self.init(address, prefix)
        guard CIDR(masking: address, prefix).address == address else { return nil }
    }

    /// The block of `prefix` bits that holds `address`.
    public init(masking address: IPAddress, _ prefix: Int) {
        let width = address.isV4 ? 32 : 128
        let p = max(0, min(prefix, width))
        var b = address.bytes
        for i in b.indices {
            let keep = max(0, min(8, p - i * 8))
            b[i] &= keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
        }
        self.address = IPAddress(bytes: b) ?? address
        self.prefix = p
    }

    /// Whether `other` lies in this block (an IPv4 block holds IPv4 addresses only).
    public func contains(_ other: IPAddress) -> Bool {
        guard other.isV4 == address.isV4 else { return false }
        return CIDR(masking: other, prefix).address == address
    }

    public var description: String { "\(address)/\(prefix)" }
}

/// The host's own addresses and the networks its interfaces are on (the
/// LAN): read by the daemon, an input here so the policy stays pure.
public struct HostNetworks: Sendable, Equatable {
    public var addresses: Set<IPAddress>
    public var networks: [CIDR]
    public init(addresses: Set<IPAddress> = [], networks: [CIDR] = []) {
        self.addresses = addresses; self.networks = networks
    }
}

/// Where a replica with network `egress` may connect through the daemon's
/// proxy: public addresses on ports 80 and 443, and what `hearthd
/// --egress-allow CIDR[:PORT]` adds. Pure logic; the proxy resolves names,
/// checks every address here and connects to the checked address.
public struct EgressPolicy: Sendable, Equatable {
    /// An operator's widening: a block, on one port or (nil) on the default ports.
    public struct Rule: Sendable, Equatable, CustomStringConvertible {
        public var block: CIDR
        public var port: UInt16?
        public init(block: CIDR, port: UInt16? = nil) { self.block = block; self.port = port }
        public var description: String {
            guard let port else { return block.description }
            return block.address.isV4 ? "\(block):\(port)" : "[\(block)]:\(port)"
        }
    }

    public enum Decision: Sendable, Equatable {
        case allow
        /// Why, e.g. `loopback address`.
        case refuse(String)
    }

    public static let defaultPorts: [UInt16] = [80, 443]
    public static let flag = "--egress-allow"
    /// The end of every refusal: what the rule is and how to widen it.
    public static let rule = "replicas with network egress reach public addresses on ports 80 and 443 only (hearthd --egress-allow CIDR[:PORT])"

    public var allow: [Rule]

    public init(allow: [Rule] = []) { self.allow = allow }

    /// `CIDR[:PORT]` as `--egress-allow` takes it: `10.1.2.0/24`,
    /// `10.1.2.3:3141`, `[fd00::/8]:443`, `fd00::/8` (IPv6 with a port needs
    /// the brackets). Without a port the block is reachable on ports 80 and 443.
    public static func parseRule(_ text: String) throws -> Rule {
        func bad(_ why: String) -> HearthError {
            HearthError.invalid("\(flag): \"\(text)\" \(why); expected CIDR[:PORT], e.g. 10.1.2.0/24, 10.1.2.3:3141 or [fd00::/8]:443")
        }
        var blockText = text, portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw bad("has no closing ]") }
            blockText = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw bad("has text after ] that is not :PORT") }
                portText = rest.dropFirst()
            }
        } else if text.filter({ $0 == ":" }).count == 1 {
            // IPv4 with a port; IPv6 has two colons or more.
            let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            blockText = String(parts[0])
            portText = parts[1]
        }
        let pieces = blockText.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(pieces[0])) else { throw bad("is not an address or address block") }
        let width = address.isV4 ? 32 : 128
        var prefix = width
        if pieces.count == 2 {
            guard !pieces[1].isEmpty, pieces[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let n = Int(pieces[1]), n <= width else {
                throw bad("has prefix length \"\(pieces[1])\", not a number from 0 to \(width)")
            }
            prefix = n
        }
        let block = CIDR(masking: address, prefix)
        guard block.address == address else { throw bad("has bits set below its prefix (did you mean \(block)?)") }
        var port: UInt16?
        if let portText {
            guard !portText.isEmpty, portText.allSatisfy({ $0.isASCII && $0.isNumber }), let p = UInt16(portText), p > 0 else {
                throw bad("has port \"\(portText)\", not a number from 1 to 65535")
            }
            port = p
        }
        return Rule(block: block, port: port)
    }

    /// Whether a connection to `port` could be allowed at all: checked
    /// before a name is resolved, so a refused port costs no DNS query.
    public func portMayBeAllowed(_ port: UInt16) -> Bool {
        Self.defaultPorts.contains(port) || allow.contains { $0.port == port }
    }

    /// The decision for one address (already resolved) and port.
    public func check(_ address: IPAddress, port: UInt16, host: HostNetworks = HostNetworks()) -> Decision {
        let a = address.unmapped
        let mapped = a != address
        for r in allow where r.block.contains(a) && (r.port.map { $0 == port } ?? Self.defaultPorts.contains(port)) {
            return .allow
        }
        if let why = Self.category(a) { return .refuse(mapped ? why + " (IPv4-mapped)" : why) }
        if host.addresses.contains(a) { return .refuse("an address of this host") }
        if let net = host.networks.first(where: { $0.contains(a) }) {
            return .refuse("on \(net), a network of this host's interfaces (the LAN)")
        }
        guard Self.defaultPorts.contains(port) else { return .refuse("port \(port) is not allowed") }
        return .allow
    }

    /// The address blocks no replica reaches unless an operator allows
    /// them: what is not public, and forms that embed such an IPv4 address.
    public static func category(_ address: IPAddress) -> String? {
        let a = address.unmapped
        for (block, why) in blocked where block.contains(a) {
            if why.isEmpty, case .v6(let b) = a, let inner = IPAddress(bytes: Array(b[12..<16])) {
                // NAT64 (64:ff9b::/96): a translator would connect to the IPv4 inside.
                return category(inner).map { $0 + " (NAT64 form)" }
            }
            return why
        }
        return nil
    }

    private static let blocked: [(CIDR, String)] = [
        ("0.0.0.0/8", "unspecified address (0.0.0.0/8)"),
        ("127.0.0.0/8", "loopback address"),
        ("169.254.0.0/16", "link-local address (169.254.0.0/16, where cloud metadata answers)"),
        ("10.0.0.0/8", "private address (RFC 1918)"),
        ("172.16.0.0/12", "private address (RFC 1918)"),
        ("192.168.0.0/16", "private address (RFC 1918)"),
        ("100.64.0.0/10", "shared address (CGNAT, 100.64.0.0/10)"),
        ("224.0.0.0/4", "multicast address"),
        ("255.255.255.255/32", "broadcast address"),
        ("240.0.0.0/4", "reserved address (240.0.0.0/4)"),
        ("::/128", "unspecified address"),
        ("::1/128", "loopback address"),
        ("fe80::/10", "link-local address (fe80::/10)"),
        ("fec0::/10", "site-local address (fec0::/10)"),
        ("fc00::/7", "unique-local address (fc00::/7)"),
        ("ff00::/8", "multicast address"),
        ("64:ff9b::/96", ""),
        ("::/96", "IPv4-compatible address (::/96)"),
    ].compactMap { text, why in CIDR(text).map { ($0, why) } }

    /// The 403 body line: `hearth egress: 127.0.0.1:8080 refused: loopback
    /// address; replicas with network egress reach …`.
    public static func refusal(_ destination: String, _ why: String) -> String {
        "hearth egress: \(destination) refused: \(why); \(rule)"
    }
}
