import Foundation
import Glibc
import HearthCore
import HearthOS
import Testing

/// Real programs (/bin/sh, cat) run through HostCommand.
@Suite struct HostCommandTests {
    private let env = ["PATH=/usr/bin:/bin"]

    private func sh(_ script: String, stdin: [UInt8]? = nil, directory: String? = nil,
                    environment: [String]? = nil, timeout: Duration = .seconds(30),
                    outputLimit: Int = 1 << 20) throws -> HostCommand.Outcome {
        try HostCommand.run("/bin/sh", argv: ["sh", "-c", script], environment: environment ?? env,
                            directory: directory, stdin: stdin, timeout: timeout, outputLimit: outputLimit)
    }

    @Test func statusSignalAndOutput() throws {
        let ok = try sh("echo out; echo err >&2")
        #expect(ok.ending == .exited(0) && ok.succeeded)
        #expect(String(decoding: ok.output, as: UTF8.self) == "out\nerr\n")
        let three = try sh("echo boom; exit 3")
        #expect(three.ending == .exited(3) && !three.succeeded)
        #expect(three.describe(timeout: .seconds(1)) == "exited with status 3")
        #expect(three.tail() == "boom")
        let killed = try sh("kill -9 $$")
        #expect(killed.ending == .signaled(9))
        #expect(killed.describe(timeout: .seconds(1)) == "was killed by signal 9")
    }

    @Test func aTimeoutKillsTheProgramAndWhatItStarted() throws {
        let marker = FileManager.default.temporaryDirectory.path + "/hostcommand-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(marker) }
        // A grandchild that would write the marker after the deadline.
        let t0 = ContinuousClock.now
        let o = try sh("(sleep 2; touch \(marker)) & sleep 30", timeout: .milliseconds(300))
        #expect(o.ending == .timedOut)
        #expect(o.describe(timeout: .milliseconds(300)) == "ran past its timeout of 0.3 s and was killed")
        #expect(ContinuousClock.now - t0 < .seconds(10))
        usleep(2_500_000)
        #expect(access(marker, F_OK) != 0, "the process group outlived the timeout")
    }

    @Test func stdinOfAnySizeArgvEnvironmentAndDirectory() throws {
        // 4 MiB: more than a pipe holds, which a pipe-fed stdin would block on.
        let big = [UInt8]((0..<(4 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let echoed = try HostCommand.run("/bin/cat", argv: ["cat"], environment: env, stdin: big,
                                         timeout: .seconds(30), outputLimit: 8 << 20)
        #expect(echoed.succeeded && echoed.output == big)
        let tailOnly = try HostCommand.run("/bin/cat", argv: ["cat"], environment: env, stdin: big,
                                           timeout: .seconds(30), outputLimit: 1000)
        #expect(tailOnly.output == Array(big.suffix(1000)))
        let args = try sh("printf '%s|' \"$0\" \"$1\"; printf '%s|' \"$A\" \"$HOME\"; pwd",
                          directory: "/tmp", environment: ["PATH=/usr/bin:/bin", "A=1"])
        #expect(String(decoding: args.output, as: UTF8.self) == "sh||1||/tmp\n")
        let none = try sh("cat; echo end")  // no stdin: /dev/null
        #expect(String(decoding: none.output, as: UTF8.self) == "end\n")
    }

    @Test func outputPastTheCapFailsTheWritesNotTheDaemon() throws {
        // 64 MiB of zeros into a 16 MiB output: dd's writes fail (EPERM) at
        // the cap, it ends, and the output holds exactly the cap.
        let o = try sh("dd if=/dev/zero bs=1M count=64; exit 0", outputLimit: 16 << 20)
        #expect(o.ending == .exited(0))
        #expect(o.output.count == 16 << 20 && o.output.allSatisfy { $0 == 0 })
        let full = try sh("head -c 20000000 /dev/zero", outputLimit: 32 << 20)
        #expect(full.output.count == 20_000_000, "a larger outputLimit raises the cap")
    }

    @Test func theProgramGetsNoOtherFdAndAnEmptySignalMask() throws {
        // An fd of ours without close-on-exec, and SIGTERM blocked in this thread.
        let fd = open("/dev/null", O_RDONLY)
        #expect(fd >= 3)
        defer { close(fd) }
        var block = sigset_t(), old = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &block, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let fds = try sh("ls /proc/self/fd")
        #expect(Set(String(decoding: fds.output, as: UTF8.self).split(separator: "\n")) == ["0", "1", "2", "3"],
                "fd 3 is ls's own directory")
        let term = try sh("kill -TERM $$; sleep 5")
        #expect(term.ending == .signaled(SIGTERM))
    }

    @Test func aProgramThatCannotStartIsNamed() {
        #expect(throws: SystemError.self) {
            try HostCommand.run("/nonexistent/tool", environment: env, timeout: .seconds(1))
        }
        do {
            _ = try HostCommand.run("/nonexistent/tool", environment: env, timeout: .seconds(1))
        } catch {
            #expect("\(error)".contains("/nonexistent/tool") && "\(error)".contains("ENOENT"))
        }
    }
}
