import Glibc
import HearthCore

/// Blocking lookups for the proxy, run on its thread pool (never on the
/// event loop): names to addresses, and the host's own addresses and networks.
enum Resolver {
    struct Failure: Error {
        var message: String
    }

    /// At most this many addresses of a name are checked and tried.
    static let maxAddresses = 16

    /// The addresses of `host` for TCP, in getaddrinfo's order (RFC 6724:
    /// a family the host cannot reach sorts last), without duplicates. No
    /// AI_ADDRCONFIG: it would hide a family's addresses from the check; an
    /// address the host cannot reach fails its connect and the next is tried.
    static func resolve(_ host: String) throws(Failure) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &res)
        guard rc == 0 else {
            let why = rc == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(rc))
            throw Failure(message: "cannot resolve \(host): \(why)")
        }
        defer { freeaddrinfo(res) }
        var out: [IPAddress] = []
        var p = res
        while let ai = p?.pointee, out.count < maxAddresses {
            if let a = address(ai.ai_addr), !out.contains(a) { out.append(a) }
            p = ai.ai_next
        }
        guard !out.isEmpty else { throw Failure(message: "cannot resolve \(host): no IPv4 or IPv6 address") }
        return out
    }

    /// The host's interface addresses and the networks they are on.
    static func hostNetworks() -> HostNetworks {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return HostNetworks() }
        defer { freeifaddrs(list) }
        var out = HostNetworks()
        var p = list
        while let ifa = p?.pointee {
            p = ifa.ifa_next
            guard let a = address(ifa.ifa_addr) else { continue }
            out.addresses.insert(a)
            if let mask = address(ifa.ifa_netmask), mask.isV4 == a.isV4 {
                let bits = mask.bytes.reduce(0) { $0 + $1.nonzeroBitCount }
                // A point-to-point /32 or /128 is the address itself.
                if bits < (a.isV4 ? 32 : 128) {
                    let net = CIDR(masking: a, bits)
                    if !out.networks.contains(net) { out.networks.append(net) }
                }
            }
        }
        return out
    }

    static func address(_ sa: UnsafeMutablePointer<sockaddr>?) -> IPAddress? {
        guard let sa else { return nil }
        switch Int32(sa.pointee.sa_family) {
        case AF_INET:
            return sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                IPAddress.v4(UInt32(bigEndian: $0.pointee.sin_addr.s_addr))
            }
        case AF_INET6:
            return sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                var a = $0.pointee.sin6_addr
                return IPAddress.v6(withUnsafeBytes(of: &a) { Array($0) })
            }
        default:
            return nil
        }
    }
}
