import CHearth
import Foundation
import Glibc
import HearthCore
import HearthOS
import Synchronization

/// The daemon's side of the replica keeper (`hearth-init --keeper`): a
/// small static process, started by the first hearthd on a state root, that
/// holds a duplicate of every environment replica's fds (its pidfd, the
/// task channel's daemon ends, its output pipes) with a record of what the
/// replica is. When hearthd dies, the worker's fd 3 stays open through the
/// keeper, so the interpreter and the task in it go on; the next hearthd
/// connects, lists what is kept, and adopts it.
///
/// The keeper answers only `L` (list); `P` (put) and `D` (drop) are one
/// datagram each and answered by nothing, so a replica's start pays one
/// sendmsg. Messages are SOCK_SEQPACKET: one record is one datagram.
public final class ReplicaKeeper: Sendable {
    /// What a previous daemon left with the keeper.
    public struct Kept: Sendable {
        public let name: String
        public let record: [UInt8]
        /// In the order they were put (the first is the pidfd).
        public let fds: [Int32]
    }

    public let socketPath: String
    private let binary: String
    /// The connection, and the keeper's pid when this daemon started it
    /// (it is then our child and its exit is ours to reap).
    private struct State {
        var fd: Int32 = -1
        var pid: Int32?
        var lost = false
    }
    private let state = Mutex(State())
    private let lostHandler = Mutex<(@Sendable () -> Void)?>(nil)

    /// The largest record the keeper takes (its receive buffer is 256 KiB).
    public static let maxMessage = 200 << 10
    /// Names the keeper takes: 1…200 bytes, no newline, NUL or slash.
    public static func validName(_ name: String) -> Bool {
        let b = Array(name.utf8)
        return !b.isEmpty && b.count <= 200 && !b.contains(10) && !b.contains(0) && !b.contains(47)
    }

    private init(socketPath: String, binary: String) {
        self.socketPath = socketPath
        self.binary = binary
    }

    /// Connects to the keeper a previous hearthd left on `stateRoot` and
    /// lists what it holds, or starts a keeper when there is none (nothing
    /// kept then). `binary` is the static hearth-init.
    public static func open(stateRoot: String, binary: String) throws -> (ReplicaKeeper, [Kept]) {
        let keeper = ReplicaKeeper(socketPath: stateRoot + "/keeper.sock", binary: binary)
        if let fd = keeper.connectExisting() {
            keeper.state.withLock { $0.fd = fd }
            do {
                let kept = try keeper.list(fd)
                keeper.watchConnection(fd)
                return (keeper, kept)
            } catch {
                // A keeper that cannot list is no use: start a new one (the
                // old one's replicas are cleaned up as stale).
                keeper.state.withLock { $0.fd = -1 }
                close(fd)
            }
        }
        try keeper.start()
        return (keeper, [])
    }

    /// Called once if the keeper goes away while this daemon runs (it was
    /// killed): the daemon starts another and puts its replicas again.
    public func onLost(_ handler: @escaping @Sendable () -> Void) {
        lostHandler.withLock { $0 = handler }
    }

    /// Hands the keeper a replica's record and duplicates of `fds`. false
    /// when the keeper is unreachable (the replica then dies with this
    /// daemon, as before keepers).
    @discardableResult
    public func put(name: String, record: [UInt8], fds: [Int32]) -> Bool {
        guard Self.validName(name), record.count <= Self.maxMessage, !fds.isEmpty, fds.count <= 8 else { return false }
        var msg: [UInt8] = [UInt8(ascii: "P")]
        msg += Array(name.utf8)
        msg.append(10)
        msg += record
        return send(msg, fds: fds)
    }

    /// The replica is going: the keeper closes its copies (its fd 3 among
    /// them, so the worker sees the channel close).
    public func drop(name: String) {
        guard Self.validName(name) else { return }
        _ = send([UInt8(ascii: "D")] + Array(name.utf8), fds: [])
    }

    /// A clean shutdown: the keeper closes everything and exits.
    public func quit() {
        _ = send([UInt8(ascii: "Q")], fds: [])
        let (fd, pid): (Int32, Int32?) = state.withLock { s in
            defer { s.fd = -1; s.lost = true }
            return (s.fd, s.pid)
        }
        if fd >= 0 {
            ReplicaEvents.unwatch(fd)
            // Its end closes as it exits (bounded: 2 s): a stopped daemon
            // leaves no keeper behind.
            var tv = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var byte: UInt8 = 0
            while recv(fd, &byte, 1, 0) > 0 {}
            close(fd)
        }
        // Our child: reaped here, briefly (it exits at once on Q).
        if let pid {
            var status: Int32 = 0
            for _ in 0..<200 {
                if waitpid(pid, &status, WNOHANG) != 0 { break }
                usleep(10_000)
            }
        }
    }

    /// Starts a keeper after the last one was lost; false when it cannot.
    public func restart() throws {
        try start()
    }

    // MARK: plumbing

    private func send(_ msg: [UInt8], fds: [Int32]) -> Bool {
        state.withLock { s in
            guard s.fd >= 0, !s.lost else { return false }
            let n = msg.withUnsafeBytes { buf in
                fds.withUnsafeBufferPointer { hearth_send_fds(s.fd, buf.baseAddress, buf.count, $0.baseAddress, Int32(fds.count)) }
            }
            return n == msg.count
        }
    }

    private func connectExisting() -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var ok = false
        defer { if !ok { close(fd) } }
        guard UnixSocket.connect(fd, to: socketPath) == 0 else { return nil }
        ok = true
        return fd
    }

    /// Lists what the keeper holds (bounded: a keeper that stops answering
    /// is given up on after 10 s).
    private func list(_ fd: Int32) throws -> [Kept] {
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        defer {
            var none = timeval(tv_sec: 0, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
        }
        guard send([UInt8(ascii: "L")], fds: []) else { throw SystemError.current("send to the keeper", socketPath) }
        var out: [Kept] = []
        var buf = [UInt8](repeating: 0, count: 256 << 10)
        var fds = [Int32](repeating: -1, count: 16)
        while true {
            var nfds: Int32 = 0
            let n = buf.withUnsafeMutableBytes { b in
                fds.withUnsafeMutableBufferPointer { hearth_recv_fds(fd, b.baseAddress, b.count, $0.baseAddress, 16, &nfds) }
            }
            if n < 0 {
                let e = SystemError.current("read from the keeper", socketPath)
                for k in out { for f in k.fds { close(f) } }
                throw e
            }
            if n == 0 {
                for k in out { for f in k.fds { close(f) } }
                throw HearthError(.unavailable, "the keeper at \(socketPath) closed the connection while listing")
            }
            let got = Array(fds[0..<Int(nfds)])
            let body = buf[0..<n]
            if body.first == UInt8(ascii: "E") {
                for f in got { close(f) }
                return out
            }
            guard body.first == UInt8(ascii: "R"), let nl = body.firstIndex(of: 10), !got.isEmpty else {
                for f in got { close(f) }
                continue
            }
            let name = String(decoding: body[1..<nl], as: UTF8.self)
            out.append(Kept(name: name, record: Array(body[(nl + 1)...]), fds: got))
        }
    }

    /// Binds a fresh socket, starts the keeper with it, connects.
    private func start() throws {
        unlink(socketPath)
        let listener = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw SystemError.current("socket", socketPath) }
        defer { close(listener) }
        guard UnixSocket.address(socketPath) != nil else {
            throw HearthError.invalid("keeper socket path \(socketPath) is too long for a Unix socket (108 bytes)")
        }
        let old = umask(0o077)
        let rc = UnixSocket.bind(listener, to: socketPath)
        umask(old)
        guard rc == 0 else { throw SystemError.current("bind", socketPath) }
        guard listen(listener, 4) == 0 else { throw SystemError.current("listen", socketPath) }
        var pid: Int32 = 0
        let err = hearth_spawn_keeper(binary, listener, 2, &pid)
        guard err == 0 else { throw SystemError("start the replica keeper", binary, errno: err) }
        // Connected before the keeper runs: the listen backlog holds it.
        guard let fd = connectExisting() else {
            kill(pid, SIGKILL)
            throw SystemError.current("connect", socketPath)
        }
        state.withLock { s in
            s.fd = fd
            s.pid = pid
            s.lost = false
        }
        watchConnection(fd)
    }

    /// The keeper never writes unasked: the connection turning readable
    /// outside `list` means it closed (the keeper died).
    private func watchConnection(_ fd: Int32) {
        do {
            try ReplicaEvents.watch(fd) { [weak self] _ in
                self?.connectionLost(fd)
                return .remove
            }
        } catch {
            // Unwatched, a lost keeper is found by the next failed put.
        }
    }

    private func connectionLost(_ fd: Int32) {
        let (mine, pid): (Bool, Int32?) = state.withLock { s in
            guard s.fd == fd, !s.lost else { return (false, nil) }
            s.lost = true
            s.fd = -1
            defer { s.pid = nil }
            return (true, s.pid)
        }
        guard mine else { return }
        close(fd)
        if let pid {
            // Our child, dying: reaped off the event thread.
            Blocking.queue.async {
                var status: Int32 = 0
                _ = waitpid(pid, &status, 0)
            }
        }
        if let handler = lostHandler.withLock({ $0 }) { handler() }
    }
}
