import Glibc
import HearthCore
import XCTest

@testable import HearthSandbox

/// The namespace of a replica with network egress, as the daemon makes it
/// (root only): a namespace other than the daemon's, its listener bound to
/// 127.0.0.1:3128 inside it and accepting connections made there, and the
/// daemon's threads left where they were. The spawn path's join is tested
/// in tests/c (egress_netns, egress_netns_userns) and end to end in
/// tests/integration/test_egress.py.
final class EgressNamespaceTests: XCTestCase {
    private func inode(_ path: String) -> ino_t {
        var st = stat()
        return stat(path, &st) == 0 ? st.st_ino : 0
    }

    func testListenerInAFreshNamespace() throws {
        try XCTSkipUnless(geteuid() == 0, "needs root (unshare CLONE_NEWNET)")
        let own = inode("/proc/self/ns/net"), ownThread = inode("/proc/thread-self/ns/net")
        let (ns, listener) = try EgressNamespace.open(backlog: 4)
        defer { close(ns); close(listener) }
        XCTAssertEqual(inode("/proc/self/ns/net"), own)
        XCTAssertEqual(inode("/proc/thread-self/ns/net"), ownThread, "the calling thread changed namespace")
        var st = stat()
        XCTAssertEqual(fstat(ns, &st), 0)
        XCTAssertNotEqual(st.st_ino, own)
        XCTAssertEqual(fcntl(ns, F_GETFD), FD_CLOEXEC)
        XCTAssertEqual(fcntl(listener, F_GETFD), FD_CLOEXEC)

        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) }
        }
        XCTAssertEqual(rc, 0)
        XCTAssertEqual(UInt16(bigEndian: addr.sin_port), EgressNamespace.port)
        XCTAssertEqual(UInt32(bigEndian: addr.sin_addr.s_addr), 0x7f00_0001)

        // Nothing listens at 127.0.0.1:3128 in the daemon's own namespace
        // (unless something on this host does): a connect here never
        // reaches the replica's listener, whose accept queue stays empty.
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(probe) }
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&p, 1, 100), 0, "a connection from the host's namespace reached the listener")
    }

    func testEnvironmentPointsAtTheProxy() {
        XCTAssertTrue(EgressNamespace.environment.contains("HTTPS_PROXY=http://127.0.0.1:3128"))
        XCTAssertTrue(EgressNamespace.environment.contains("http_proxy=http://127.0.0.1:3128"))
        XCTAssertTrue(EgressNamespace.environment.contains("NO_PROXY=localhost,127.0.0.1"))
    }
}
