import CHearth
import Glibc
import HearthCore

/// A host program run to its end under a deadline: the daemon's few
/// helpers (`python3 -m compileall` for the worker package, `ldconfig -p`,
/// CDI createContainer hooks). posix_spawn rather than Foundation's
/// Process: no run-loop machinery stays resident in the daemon, the child
/// gets an empty signal mask and default handlers whatever the calling
/// thread blocks, no fd of the daemon but 0–2, and a process group of its
/// own, which the deadline kills whole. Its stdin and its output are
/// memfds, so neither side can block on a full pipe; the output's memfd has
/// a fixed size (16 MiB, or `outputLimit` if larger), past which the
/// program's writes fail. Blocking: call off the cooperative pool.
public enum HostCommand {
    public enum Ending: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
        /// Still running at the deadline; its process group was killed.
        case timedOut
        /// Its status could not be read (waitpid's errno: ECHILD where
        /// SIGCHLD is ignored and the kernel reaped it).
        case unreaped(Int32)
    }

    public struct Outcome: Sendable {
        public var ending: Ending
        /// stdout and stderr together, their last `outputLimit` bytes.
        public var output: [UInt8]
        public var succeeded: Bool { ending == .exited(0) }

        /// "exited with status 3", "was killed by signal 9", "ran past its
        /// timeout of 30 s and was killed".
        public func describe(timeout: Duration) -> String {
            switch ending {
            case .exited(let s): return "exited with status \(s)"
            case .signaled(let s): return "was killed by signal \(s)"
            case .timedOut: return "ran past its timeout of \(Self.seconds(timeout)) and was killed"
            case .unreaped(let e): return "ended with a status that could not be read (waitpid: \(String(cString: strerror(e))))"
            }
        }

        /// The last `bytes` of the output as text, trimmed; "" when empty.
        public func tail(_ bytes: Int = 2048) -> String {
            var text = String(decoding: output.suffix(bytes), as: UTF8.self)
            while let c = text.last, c.isWhitespace { text.removeLast() }
            while let c = text.first, c.isWhitespace { text.removeFirst() }
            return text
        }

        static func seconds(_ d: Duration) -> String {
            let (s, atto) = d.components
            return atto == 0 ? "\(s) s" : "\(Double(s) + Double(atto) / 1e18) s"
        }
    }

    /// Runs `path` with `argv` (argv[0] included; `[path]` when empty) and
    /// exactly `environment` ("NAME=value"), in `directory` when given,
    /// with `stdin` on fd 0 (/dev/null when nil). Throws only when it could
    /// not be started (the error names the program and the errno).
    public static func run(_ path: String, argv: [String] = [], environment: [String], directory: String? = nil,
                           stdin: [UInt8]? = nil, timeout: Duration, outputLimit: Int = 1 << 20) throws -> Outcome {
        // Bounded: a program that writes without end gets EPERM past the
        // cap instead of filling the daemon's memory (a memfd is charged to it).
        let out = hearth_memfd_capped("hearth-host-output", Int64(max(outputLimit, outputCap)))
        guard out >= 0 else { throw SystemError.current("memfd_create", "output of \(path)") }
        defer { close(out) }
        var input: Int32 = -1
        defer { if input >= 0 { close(input) } }
        if let stdin {
            input = hearth_memfd_create("hearth-host-input", 1)
            guard input >= 0 else { throw SystemError.current("memfd_create", "input of \(path)") }
            try writeAll(input, stdin, what: "input of \(path)")
            guard lseek(input, 0, SEEK_SET) == 0 else { throw SystemError.current("lseek", "input of \(path)") }
        }
        var pid: Int32 = 0
        let arena = CArena()
        defer { arena.release() }
        let rc = hearth_spawn_host(path, arena.stringArray(argv.isEmpty ? [path] : argv), arena.stringArray(environment),
                                   arena.string(directory), input, out, &pid)
        guard rc == 0 else { throw SystemError("start", path, errno: rc) }
        let ending = wait(pid, timeout: timeout)
        return Outcome(ending: ending, output: readTail(out, limit: outputLimit))
    }

    /// Waits for `pid` until `timeout`, on a pidfd (no polling; a 5 ms
    /// waitpid loop where the kernel has no pidfd_open); past it, kills its
    /// process group and reaps it.
    private static func wait(_ pid: Int32, timeout: Duration) -> Ending {
        let deadline = ContinuousClock.now + timeout
        let pidfd = hearth_pidfd_open(pid)
        defer { if pidfd >= 0 { close(pidfd) } }
        var timedOut = false
        var status: Int32 = 0
        while true {
            let left = deadline - ContinuousClock.now
            if left <= .zero { timedOut = true; break }
            if pidfd < 0 {
                let r = waitpid(pid, &status, WNOHANG)
                if r == pid { return ending(status) }
                if r < 0 && errno != EINTR { return .unreaped(errno) }
                usleep(5_000)
                continue
            }
            let (s, atto) = left.components
            let ms = Int32(min(Int64(Int32.max), s * 1000 + atto / 1_000_000_000_000_000 + 1))
            var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, ms)
            if r > 0 { break }
            if r < 0 && errno != EINTR { break }  // then a blocking reap below
        }
        if timedOut {
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
        }
        var r: Int32
        repeat { r = waitpid(pid, &status, 0) } while r < 0 && errno == EINTR
        if timedOut { return .timedOut }
        return r == pid ? ending(status) : .unreaped(errno)
    }

    /// WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (macros Swift does not import).
    private static func ending(_ status: Int32) -> Ending {
        status & 0x7F == 0 ? .exited((status >> 8) & 0xFF) : .signaled(status & 0x7F)
    }

    /// What a program may write before its writes fail (EPERM).
    static let outputCap = 16 << 20

    private static func readTail(_ fd: Int32, limit: Int) -> [UInt8] {
        // The program's fds 1 and 2 share this open file: its offset is
        // how much was written (the file itself is the cap's size).
        let written = lseek(fd, 0, SEEK_CUR)
        guard written > 0 else { return [] }
        let size = Int(written)
        let start = max(0, size - limit)
        var buf = [UInt8](repeating: 0, count: size - start)
        var got = 0
        while got < buf.count {
            let n = buf.withUnsafeMutableBytes { b -> Int in
                guard let base = b.baseAddress else { return 0 }
                return pread(fd, base + got, b.count - got, off_t(start + got))
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            got += n
        }
        return Array(buf.prefix(got))
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], what: String) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { b -> Int in
                guard let base = b.baseAddress else { return 0 }
                return write(fd, base + done, b.count - done)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("write", what)
            }
            done += n
        }
    }
}
