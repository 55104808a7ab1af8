/// Where a client reaches hearthd: its Unix socket on this machine, or a
/// TCP address of a remote daemon, which is served only with mutual TLS
/// (`hearthd --listen tcp://ADDR:PORT`). `HEARTH_HOST` takes either form;
/// `HEARTH_SOCKET` names a socket path.
public enum DaemonEndpoint: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)

    /// `tcp://HOST:PORT`, `tcp://[IPv6]:PORT` or `unix:///PATH`.
    /// `what` names the setting in errors (`HEARTH_HOST`, `--listen`).
    public static func parse(_ text: String, what: String) throws -> DaemonEndpoint {
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/") else {
                throw HearthError.invalid("\(what) \(text.debugDescription): a unix:// address takes an absolute path (unix:///run/hearth/hearthd.sock)")
            }
            return .unix(path: path)
        }
        guard text.hasPrefix("tcp://") else {
            throw HearthError.invalid("\(what) \(text.debugDescription): expected tcp://HOST:PORT or unix:///PATH")
        }
        var rest = Substring(text.dropFirst("tcp://".count))
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        let host: Substring
        let portText: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]"), rest[rest.index(after: close)...].hasPrefix(":") else {
                throw HearthError.invalid("\(what) \(text.debugDescription): an IPv6 address is written [ADDR]:PORT")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            portText = rest[rest.index(close, offsetBy: 2)...]
        } else {
            guard let colon = rest.lastIndex(of: ":") else {
                throw HearthError.invalid("\(what) \(text.debugDescription): the port is missing (tcp://HOST:PORT)")
            }
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        }
        guard !host.isEmpty, !host.contains("/"), !host.contains("@") else {
            throw HearthError.invalid("\(what) \(text.debugDescription): the host is missing or malformed (tcp://HOST:PORT)")
        }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw HearthError.invalid("\(what) \(text.debugDescription): port \(String(portText).debugDescription) is not a number from 1 to 65535")
        }
        return .tcp(host: String(host), port: port)
    }

    public var description: String {
        switch self {
        case .unix(let path): return path
        case .tcp(let host, let port): return host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        }
    }
}
