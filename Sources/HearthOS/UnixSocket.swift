import Glibc

/// Unix-domain socket addresses: sockaddr_un's fixed `sun_path` array is
/// awkward from Swift, and the daemon, the keeper and the CLI all need it.
public enum UnixSocket {
    /// `path` as a sockaddr_un; nil when it does not fit (`sun_path` holds
    /// 107 bytes and a NUL).
    public static func address(_ path: String) -> sockaddr_un? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        return addr
    }

    /// connect(2) of `fd` to `path`: 0, or -1 with errno (ENAMETOOLONG
    /// when the path does not fit).
    public static func connect(_ fd: Int32, to path: String) -> Int32 {
        withAddress(path) { Glibc.connect(fd, $0, $1) }
    }

    /// bind(2) of `fd` to `path`: 0, or -1 with errno (ENAMETOOLONG when
    /// the path does not fit).
    public static func bind(_ fd: Int32, to path: String) -> Int32 {
        withAddress(path) { Glibc.bind(fd, $0, $1) }
    }

    private static func withAddress(_ path: String, _ call: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        guard var addr = address(path) else {
            errno = ENAMETOOLONG
            return -1
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}
