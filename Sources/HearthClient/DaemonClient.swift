import Glibc
import HearthCore
import HearthOS
import HearthTLS

/// A small blocking HTTP/1.1 client of hearthd. The CLI makes one request
/// per run, so a plain socket keeps its start-up cheap (no event loop, no
/// threads) and lets it stream a response as it arrives. A remote daemon
/// (`HEARTH_HOST=tcp://…`) is reached through a `TLSTunnel`, whose local
/// end this client reads and writes like the Unix socket.
public struct DaemonClient: Sendable {
    public let endpoint: DaemonEndpoint
    /// The client's certificate, key and CA, for a TCP endpoint.
    public let tls: TLSFiles?
    /// The daemon's address, as messages name it.
    public var socketPath: String { endpoint.description }

    public init(socketPath: String) {
        endpoint = .unix(path: socketPath)
        tls = nil
    }

    public init(endpoint: DaemonEndpoint, tls: TLSFiles?) {
        self.endpoint = endpoint
        self.tls = tls
    }

    /// `HEARTH_HOST` (tcp://HOST:PORT or unix:///PATH, with `HEARTH_TLS_*`
    /// for TCP), else `--socket`, `HEARTH_SOCKET` or the default socket.
    public static func fromEnvironment(socket: String?, _ env: [String: String]) throws -> DaemonClient {
        if socket == nil, let host = env["HEARTH_HOST"], !host.isEmpty {
            let endpoint = try DaemonEndpoint.parse(host, what: "HEARTH_HOST")
            if case .unix = endpoint { return DaemonClient(endpoint: endpoint, tls: nil) }
            return DaemonClient(endpoint: endpoint, tls: try TLSFiles.fromEnvironment(env))
        }
        return DaemonClient(socketPath: socket ?? env["HEARTH_SOCKET"] ?? HearthDefaults.socketPath)
    }

    /// One connection: a Unix socket, or the local end of a TLS tunnel.
    private struct Connection {
        let fd: Int32
        let tunnel: TLSTunnel?
        func close() { if let tunnel { tunnel.close() } else { Glibc.close(fd) } }

        /// A connection the tunnel ended: TLS's reason, not just "closed".
        func explain(_ error: any Error) -> any Error {
            guard let reason = tunnel?.failure else { return error }
            return HearthError(.unavailable, reason)
        }
    }

    public struct Response: Sendable {
        public var status: Int
        public var headers: [(String, String)]
        public var body: [UInt8]

        public init(status: Int, headers: [(String, String)], body: [UInt8]) {
            self.status = status; self.headers = headers; self.body = body
        }

        public func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name.lowercased() }?.1
        }
    }

    /// Sends a request and reads the whole response.
    public func request(_ method: String, _ path: String, body: [UInt8]? = nil,
                        contentType: String = "application/json") throws -> Response {
        var collected: [UInt8] = []
        let head = try stream(method, path, body: body, contentType: contentType) { collected.append(contentsOf: $0) }
        return Response(status: head.status, headers: head.headers, body: collected)
    }

    /// Sends a request and hands each piece of the body to `onData` as it arrives.
    /// `headers`: more request headers (`Accept`).
    public func stream(_ method: String, _ path: String, body: [UInt8]? = nil,
                       contentType: String = "application/json", headers: [(String, String)] = [],
                       onData: ([UInt8]) throws -> Void,
                       onHead: (Int) -> Void = { _ in }) throws -> Response {
        var request = "\(method) \(path) HTTP/1.1\r\nHost: hearthd\r\nConnection: close\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        if let body {
            request += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        } else if method == "POST" || method == "PUT" {
            request += "Content-Length: 0\r\n"
        }
        request += "\r\n"
        var bytes = Array(request.utf8)
        if let body { bytes.append(contentsOf: body) }
        return try exchange { fd in
            try writeAll(fd, bytes)
            return try readResponse(fd, method: method, onData: onData, onHead: onHead)
        }
    }

    /// Sends a body of unknown length with chunked transfer coding:
    /// `produce` calls its argument with each piece. If hearthd answers
    /// before the body is done (an error), that answer is returned.
    public func upload(_ method: String, _ path: String, contentType: String,
                       produce: (_ emit: ([UInt8]) throws -> Void) throws -> Void,
                       onData: ([UInt8]) throws -> Void,
                       onHead: (Int) -> Void = { _ in }) throws -> Response {
        let head = "\(method) \(path) HTTP/1.1\r\nHost: hearthd\r\nConnection: close\r\n"
            + "Content-Type: \(contentType)\r\nTransfer-Encoding: chunked\r\n\r\n"
        return try exchange { fd in
            try writeAll(fd, Array(head.utf8))
            do {
                try produce { piece in
                    guard !piece.isEmpty else { return }
                    try writeAll(fd, Array((String(piece.count, radix: 16) + "\r\n").utf8) + piece + [13, 10])
                }
                try writeAll(fd, Array("0\r\n\r\n".utf8))
            } catch let e as SystemError where e.errno == EPIPE || e.errno == ECONNRESET {
                // hearthd stopped reading: its answer says why.
            }
            return try readResponse(fd, method: method, onData: onData, onHead: onHead)
        }
    }

    /// One request on a connection of its own: `body` writes and reads on
    /// its fd; an error there is the tunnel's TLS reason when TLS ended it.
    private func exchange(_ body: (Int32) throws -> Response) throws -> Response {
        let conn = try connect()
        defer { conn.close() }
        do { return try body(conn.fd) } catch { throw conn.explain(error) }
    }

    private func readResponse(_ fd: Int32, method: String, onData: ([UInt8]) throws -> Void,
                              onHead: (Int) -> Void) throws -> Response {
        var reader = SocketReader(fd: fd)
        let statusLine = try reader.readLine()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
            throw HearthError(.internal, "hearthd on \(socketPath) sent a malformed status line: \(statusLine)")
        }
        var headers: [(String, String)] = []
        while true {
            let line = try reader.readLine()
            if line.isEmpty { break }
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = String(line[..<colon])
            let value = String(line[line.index(after: colon)...]).trimmingSpaces()
            headers.append((name, value))
        }
        let response = Response(status: status, headers: headers, body: [])
        onHead(status)
        if method == "HEAD" || status == 204 || status == 304 { return response }
        if response.header("transfer-encoding")?.lowercased().contains("chunked") == true {
            while true {
                let sizeLine = try reader.readLine()
                let hex = sizeLine.split(separator: ";").first.map(String.init) ?? ""
                guard let size = Int(hex.trimmingSpaces(), radix: 16) else {
                    throw HearthError(.internal, "hearthd sent a malformed chunk size: \(sizeLine)")
                }
                if size == 0 {
                    // Trailers, then the blank line.
                    while try !reader.readLine().isEmpty {}
                    break
                }
                var remaining = size
                while remaining > 0 {
                    let piece = try reader.read(max: remaining)
                    if piece.isEmpty { throw HearthError(.unavailable, "hearthd closed the connection mid-response") }
                    remaining -= piece.count
                    try onData(piece)
                }
                _ = try reader.readLine()
            }
        } else if let lengthText = response.header("content-length"), let length = Int(lengthText) {
            var remaining = length
            while remaining > 0 {
                let piece = try reader.read(max: remaining)
                if piece.isEmpty { throw HearthError(.unavailable, "hearthd closed the connection mid-response") }
                remaining -= piece.count
                try onData(piece)
            }
        } else {
            while true {
                let piece = try reader.read(max: 65536)
                if piece.isEmpty { break }
                try onData(piece)
            }
        }
        return response
    }

    private func connect() throws -> Connection {
        switch endpoint {
        case .unix(let path):
            return Connection(fd: try connectUnix(path), tunnel: nil)
        case .tcp(let host, let port):
            guard let tls else {
                throw HearthError.invalid("\(endpoint) is a TCP daemon, which speaks only mutual TLS: set HEARTH_TLS_CERT, HEARTH_TLS_KEY and HEARTH_TLS_CA")
            }
            let tunnel = try TLSTunnel.open(host: host, port: port, files: tls)
            return Connection(fd: tunnel.fd, tunnel: tunnel)
        }
    }

    private func connectUnix(_ socketPath: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError.current("socket", socketPath) }
        guard UnixSocket.address(socketPath) != nil else {
            close(fd)
            throw HearthError.invalid("socket path \(socketPath) is longer than the 107 bytes a Unix socket path may have")
        }
        if UnixSocket.connect(fd, to: socketPath) != 0 {
            let err = errno
            close(fd)
            switch err {
            case ENOENT, ECONNREFUSED:
                throw HearthError(.unavailable, "hearthd is not running: cannot connect to \(socketPath) (\(ErrnoName.name(err))). Start it with `sudo hearthd` (or `scripts/demo`), or point HEARTH_SOCKET at its socket.")
            case EACCES, EPERM:
                throw HearthError(.unavailable, "permission denied connecting to \(socketPath): the socket is mode 0660; run as root or join the group that owns it (`hearth`).")
            default:
                throw SystemError("connect", socketPath, errno: err)
            }
        }
        return fd
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write to", socketPath)
            }
            offset += n
        }
    }
}

/// Buffered reads from a socket, line by line or by count.
struct SocketReader {
    let fd: Int32
    var buffer: [UInt8] = []
    var start = 0

    init(fd: Int32) { self.fd = fd }

    private mutating func fill() throws -> Bool {
        if start > 0 && start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("read from", "hearthd socket")
            }
            if n == 0 { return false }
            buffer.append(contentsOf: chunk[0..<n])
            return true
        }
    }

    mutating func readLine() throws -> String {
        while true {
            if let nl = buffer[start...].firstIndex(of: 10) {
                var end = nl
                if end > start && buffer[end - 1] == 13 { end -= 1 }
                let line = String(decoding: buffer[start..<end], as: UTF8.self)
                start = nl + 1
                return line
            }
            guard try fill() else {
                throw HearthError(.unavailable, "hearthd closed the connection before sending a complete response")
            }
        }
    }

    mutating func read(max: Int) throws -> [UInt8] {
        if start == buffer.count {
            guard try fill() else { return [] }
        }
        let end = min(buffer.count, start + max)
        let out = Array(buffer[start..<end])
        start = end
        return out
    }
}
