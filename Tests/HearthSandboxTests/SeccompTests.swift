import Foundation
import HearthCore
import Synchronization
import XCTest

@testable import HearthSandbox

final class SeccompTests: XCTestCase {
    // MARK: - Parsing

    func testParsesAnOCIProfile() throws {
        let json = """
        {
          "defaultAction": "SCMP_ACT_ERRNO",
          "defaultErrnoRet": 1,
          "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
          "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
          "listenerPath": "/ignored",
          "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"name": "ptrace", "action": "SCMP_ACT_KILL_PROCESS", "comment": "legacy single name"},
            {"names": ["getpid"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            {"names": ["kill"], "action": "SCMP_ACT_LOG"}
          ]
        }
        """
        let profile = try SeccompProfile.parse(json: Data(json.utf8))
        XCTAssertEqual(profile.defaultAction, .errno)
        XCTAssertEqual(profile.defaultErrnoRet, 1)
        XCTAssertEqual(profile.architectures, [.x86_64, .x86])
        XCTAssertEqual(profile.flags, ["SECCOMP_FILTER_FLAG_TSYNC"])
        XCTAssertEqual(profile.syscalls.count, 6)
        XCTAssertEqual(profile.syscalls[0].names, ["read", "write"])
        XCTAssertEqual(profile.syscalls[1].args,
                       [SeccompProfile.Arg(index: 0, value: 2_114_060_288, valueTwo: 0, op: .maskedEqual)])
        XCTAssertEqual(profile.syscalls[2].errnoRet, 38)
        XCTAssertEqual(profile.syscalls[3].names, ["ptrace"])
        XCTAssertEqual(profile.syscalls[3].action, .killProcess)
        XCTAssertEqual(profile.syscalls[4].action, .trace)
        XCTAssertEqual(profile.syscalls[5].action, .log)

        // Encoding and decoding again gives the same profile.
        let again = try SeccompProfile.parse(json: JSONEncoder().encode(profile))
        XCTAssertEqual(again, profile)
    }

    func testDefaultsWhenFieldsAreOmitted() throws {
        let profile = try SeccompProfile.parse(json: Data(#"{"defaultAction": "SCMP_ACT_ALLOW"}"#.utf8))
        XCTAssertEqual(profile.defaultAction, .allow)
        XCTAssertNil(profile.defaultErrnoRet)
        XCTAssertEqual(profile.architectures, [])
        XCTAssertEqual(profile.syscalls, [])
    }

    func testRejectsBadInputNamingFieldAndValue() {
        func message(_ json: String) -> String {
            do {
                _ = try SeccompProfile.parse(json: Data(json.utf8))
                return "(accepted)"
            } catch let error as HearthError {
                XCTAssertEqual(error.code, .invalidArgument)
                return error.message
            } catch {
                return "(not a HearthError: \(error))"
            }
        }
        let rules = #"{"names": ["a"], "action": "SCMP_ACT_ALLOW"}, "#
        XCTAssertTrue(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": ["# + rules + rules + rules
            + #"{"names": ["x"], "action": "SCMP_ACT_FOO"}]}"#)
            .hasPrefix(#"seccomp profile: syscalls[3].action: unknown action "SCMP_ACT_FOO""#))
        XCTAssertTrue(message(#"{"defaultAction": "SCMP_ACT_NOPE"}"#)
            .hasPrefix(#"seccomp profile: defaultAction: unknown action "SCMP_ACT_NOPE""#))
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_Z80"]}"#),
                       #"seccomp profile: architectures[1]: unknown architecture "SCMP_ARCH_Z80""#)
        XCTAssertTrue(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_SIMILAR"}]}]}"#)
            .hasPrefix(#"seccomp profile: syscalls[0].args[0].op: unknown operator "SCMP_CMP_SIMILAR""#))
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#),
                       "seccomp profile: syscalls[0].args[0].index: argument index 6 is out of range 0...5")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#),
                       "seccomp profile: syscalls[0].errnoRet: only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not SCMP_ACT_ALLOW")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}"#),
                       "seccomp profile: syscalls[0].names: empty; list the syscalls")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#),
                       "seccomp profile: syscalls[0].names: missing; list the syscalls")
        XCTAssertEqual(message(#"{"syscalls": []}"#), "seccomp profile: defaultAction: missing")
        XCTAssertEqual(message(#"{"defaultAction": 3}"#), "seccomp profile: defaultAction: expected a string")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}"#),
                       "seccomp profile: defaultErrnoRet: -1 is negative; expected a non-negative integer")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1.5, "op": "SCMP_CMP_EQ"}]}]}"#),
                       "seccomp profile: syscalls[0].args[0].value: expected a non-negative integer")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW", "args": [{"value": 1, "op": "SCMP_CMP_EQ"}]}]}"#),
                       "seccomp profile: syscalls[0].args[0].index: missing")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}]}"#),
                       "seccomp profile: syscalls[0].errnoRet: expected a non-negative integer")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}"#),
                       "seccomp profile: defaultErrnoRet: 70000 is out of range 0...65535")
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}"#),
                       #"seccomp profile: flags[0]: flag "SECCOMP_FILTER_FLAG_LOG" is not supported (the filter is loaded without flags)"#)
        XCTAssertEqual(message(#"{"defaultAction": "SCMP_ACT_ERRNO", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}"#),
                       #"seccomp profile: flags[0]: unknown flag "SECCOMP_FILTER_FLAG_BOGUS""#)
        XCTAssertTrue(message(#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).contains(#"unsupported action "SCMP_ACT_NOTIFY""#))
        XCTAssertTrue(message("{not json").hasPrefix("seccomp profile: not valid JSON"))
    }

    func testLoadNamesTheFile() throws {
        let path = NSTemporaryDirectory() + "/hearth-seccomp-\(UUID().uuidString).json"
        try Data(#"{"defaultAction": "SCMP_ACT_BAD"}"#.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try SeccompProfile.load(path: path)) { error in
            XCTAssertTrue("\(error)".hasPrefix("seccomp profile \(path): defaultAction: unknown action"), "\(error)")
        }
        XCTAssertThrowsError(try SeccompProfile.load(path: path + ".missing")) { error in
            XCTAssertTrue("\(error)".hasPrefix("seccomp profile \(path).missing: cannot read"), "\(error)")
        }
    }

    // MARK: - Default profile contents

    private var allowedNames: Set<String> {
        Set(SeccompProfile.default.syscalls.filter { $0.action == .allow }.flatMap(\.names))
    }

    func testDefaultProfileShape() {
        let profile = SeccompProfile.default
        XCTAssertEqual(profile.defaultAction, .errno)
        XCTAssertEqual(profile.defaultErrnoRet, 1)
        #if arch(x86_64)
        XCTAssertEqual(profile.architectures, [.x86_64, .x86, .x32])
        #endif
        XCTAssertGreaterThan(allowedNames.count, 300)
    }

    func testDefaultProfileAllowsWhatProgramsNeed() {
        let needed = [
            "execve", "execveat", "write", "read", "chdir", "openat", "close", "mmap", "mprotect", "munmap", "brk",
            "futex", "exit_group", "rt_sigaction", "rt_sigreturn", "wait4", "pipe2", "dup3", "epoll_wait",
            "epoll_ctl", "socketpair", "connect", "sendmsg", "recvmsg", "getrandom", "prlimit64", "set_robust_list",
            "rseq", "fork", "vfork", "statx", "newfstatat", "getdents64", "ioctl", "sched_getaffinity",
            "arch_prctl", "set_tid_address", "kill", "tgkill", "prctl", "madvise", "memfd_create",
        ]
        for name in needed { XCTAssertTrue(allowedNames.contains(name), "\(name) should be allowed") }
    }

    func testDefaultProfileDeniesDangerousSyscalls() {
        let forbidden = [
            "mount", "umount", "umount2", "pivot_root", "unshare", "setns", "keyctl", "add_key", "request_key",
            "bpf", "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module",
            "delete_module", "reboot", "swapon", "swapoff", "userfaultfd", "open_by_handle_at", "acct",
            "settimeofday", "stime", "clock_settime", "clock_settime64", "syslog", "iopl", "ioperm",
            "lookup_dcookie", "quotactl", "quotactl_fd", "nfsservctl", "fsopen", "fsconfig", "fsmount", "fspick",
            "move_mount", "open_tree", "mount_setattr", "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl",
            "create_module", "get_kernel_syms", "query_module", "io_uring_setup", "io_uring_enter",
            "io_uring_register", "sethostname", "setdomainname", "fanotify_init", "kcmp", "pidfd_getfd",
        ]
        for name in forbidden {
            let rules = SeccompProfile.default.syscalls.filter { $0.names.contains(name) }
            XCTAssertTrue(rules.allSatisfy { $0.action != .allow }, "\(name) must not be allowed")
        }
        // personality and clone are allowed only under conditions.
        for name in ["personality", "clone", "socket"] {
            let rules = SeccompProfile.default.syscalls.filter { $0.names.contains(name) }
            XCTAssertFalse(rules.isEmpty, name)
            XCTAssertTrue(rules.allSatisfy { !$0.args.isEmpty }, "\(name) must be conditional")
        }
    }

    func testDefaultProfileCloneRules() {
        let clone = SeccompProfile.default.syscalls.filter { $0.names == ["clone"] }
        XCTAssertEqual(clone.count, 1)
        XCTAssertEqual(clone.first?.action, .allow)
        XCTAssertEqual(clone.first?.args, [SeccompProfile.Arg(index: 0, value: 0x7E02_0000, valueTwo: 0, op: .maskedEqual)])
        let clone3 = SeccompProfile.default.syscalls.filter { $0.names.contains("clone3") }
        XCTAssertEqual(clone3.count, 1)
        XCTAssertEqual(clone3.first?.action, .errno)
        XCTAssertEqual(clone3.first?.errnoRet, UInt32(ENOSYS))
        let personalities = SeccompProfile.default.syscalls.filter { $0.names == ["personality"] }
            .flatMap(\.args).map(\.value).sorted()
        XCTAssertEqual(personalities, [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff])
    }

    // MARK: - Compilation

    func testCompilesDefaultProfileAndCaches() throws {
        let compiler = SeccompCompiler()
        let bytes = try compiler.compile(.default)
        XCTAssertFalse(bytes.isEmpty)
        XCTAssertEqual(bytes.count % 8, 0)
        XCTAssertLessThanOrEqual(bytes.count / 8, SeccompCompiler.maxInstructions)
        let again = try compiler.compile(.default)
        XCTAssertEqual(again, bytes)
        // An equal profile built separately hits the same entry.
        let copy = try SeccompProfile.parse(json: JSONEncoder().encode(SeccompProfile.default))
        XCTAssertEqual(try compiler.compile(copy), bytes)
        // The shared compiler too.
        XCTAssertEqual(try SeccompCompiler.shared.compile(.default), bytes)
    }

    func testCompilationIsThreadSafe() throws {
        let compiler = SeccompCompiler()
        let expected = try compiler.compile(.default)
        let results = Mutex<[[UInt8]]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            let profile = i % 2 == 0 ? SeccompProfile.default
                : SeccompProfile(defaultAction: .allow, syscalls: [.init(names: ["mount"], action: .errno)])
            if let bytes = try? compiler.compile(profile) { results.withLock { $0.append(bytes) } }
        }
        let all = results.withLock { $0 }
        XCTAssertEqual(all.count, 8)
        XCTAssertEqual(all.filter { $0 == expected }.count, 4)
    }

    func testUnknownSyscallsAndDefaultActionRulesAreSkipped() throws {
        let profile = SeccompProfile(defaultAction: .errno, syscalls: [
            .init(names: ["no_such_syscall", "write"], action: .allow),
            .init(names: ["read"], action: .errno),  // same as the default: nothing to add
        ])
        let bytes = try SeccompCompiler().compile(profile)
        let filter = BPF(bytes)
        XCTAssertEqual(filter.run(nr: X86.write), Ret.allow)
        XCTAssertEqual(filter.run(nr: X86.read), Ret.errno(EPERM))
    }

    func testCompiledDefaultFilterBehaves() throws {
        #if arch(x86_64)
        let filter = BPF(try SeccompCompiler().compile(.default))
        XCTAssertEqual(filter.run(nr: X86.write), Ret.allow)
        XCTAssertEqual(filter.run(nr: X86.execve), Ret.allow)
        XCTAssertEqual(filter.run(nr: X86.chdir), Ret.allow)
        XCTAssertEqual(filter.run(nr: X86.mount), Ret.errno(EPERM))
        XCTAssertEqual(filter.run(nr: X86.unshare), Ret.errno(EPERM))
        XCTAssertEqual(filter.run(nr: X86.bpf), Ret.errno(EPERM))
        XCTAssertEqual(filter.run(nr: X86.ioUringSetup), Ret.errno(EPERM))
        XCTAssertEqual(filter.run(nr: X86.clone3), Ret.errno(ENOSYS))
        // Threads and fork: allowed; any namespace flag: EPERM.
        let threadFlags: UInt64 = 0x3d0f00  // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
        XCTAssertEqual(filter.run(nr: X86.clone, args: [threadFlags]), Ret.allow)
        XCTAssertEqual(filter.run(nr: X86.clone, args: [0x1200011]), Ret.allow)  // fork()
        for flag: UInt64 in [0x20000, 0x0200_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000] {
            XCTAssertEqual(filter.run(nr: X86.clone, args: [threadFlags | flag]), Ret.errno(EPERM), "flag \(flag)")
        }
        XCTAssertEqual(filter.run(nr: X86.personality, args: [0x8]), Ret.allow)
        XCTAssertEqual(filter.run(nr: X86.personality, args: [0x0040_0000]), Ret.errno(EPERM))  // READ_IMPLIES_EXEC
        XCTAssertEqual(filter.run(nr: X86.socket, args: [2]), Ret.allow)  // AF_INET
        XCTAssertEqual(filter.run(nr: X86.socket, args: [40]), Ret.errno(EPERM))  // AF_VSOCK
        // The 32-bit ABI is filtered too (i386 write is 4, mount 21).
        XCTAssertEqual(filter.run(nr: 4, arch: BPF.auditArchI386), Ret.allow)
        XCTAssertEqual(filter.run(nr: 21, arch: BPF.auditArchI386), Ret.errno(EPERM))
        // x32: same numbers with bit 30 set.
        XCTAssertEqual(filter.run(nr: 0x4000_0000 | X86.write), Ret.allow)
        XCTAssertEqual(filter.run(nr: 0x4000_0000 | X86.mount), Ret.errno(EPERM))
        // Architectures the filter does not know are killed.
        XCTAssertEqual(filter.run(nr: X86.write, arch: 0xC000_00B7), Ret.kill)  // aarch64
        #else
        throw XCTSkip("syscall numbers in this test are x86_64's")
        #endif
    }

    func testNativeOnlyProfileWithForeignOnlySyscallCompiles() throws {
        // socketcall exists on i386 only; with the native architecture alone
        // there is nothing to add and it must not be an error.
        let profile = SeccompProfile(defaultAction: .errno, syscalls: [.init(names: ["socketcall", "write"], action: .allow)])
        XCTAssertNoThrow(try SeccompCompiler().compile(profile))
    }
}

// MARK: - A classic-BPF interpreter, enough to run seccomp filters in tests

enum Ret: Equatable {
    case allow, kill, errno(Int32), other(UInt32)
    init(_ value: UInt32) {
        switch value & 0xffff_0000 {
        case 0x7fff_0000: self = .allow
        case 0x0005_0000: self = .errno(Int32(value & 0xffff))
        case 0x0000_0000, 0x8000_0000: self = .kill
        default: self = .other(value)
        }
    }
}

enum X86 {
    static let read: Int32 = 0, write: Int32 = 1, socket: Int32 = 41, clone: Int32 = 56, execve: Int32 = 59
    static let chdir: Int32 = 80, personality: Int32 = 135, mount: Int32 = 165, unshare: Int32 = 272
    static let bpf: Int32 = 321, ioUringSetup: Int32 = 425, clone3: Int32 = 435
}

struct BPF {
    static let auditArchX8664: UInt32 = 0xC000_003E
    static let auditArchI386: UInt32 = 0x4000_0003

    struct Insn { var code: UInt16; var jt: UInt8; var jf: UInt8; var k: UInt32 }
    let program: [Insn]

    init(_ bytes: [UInt8]) {
        var insns = [Insn]()
        var i = 0
        while i + 8 <= bytes.count {
            func u16(_ o: Int) -> UInt16 { UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8 }
            func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) | UInt32(u16(o + 2)) << 16 }
            insns.append(Insn(code: u16(i), jt: bytes[i + 2], jf: bytes[i + 3], k: u32(i + 4)))
            i += 8
        }
        program = insns
    }

    /// Runs the filter on a struct seccomp_data {nr, arch, ip, args[6]}.
    func run(nr: Int32, arch: UInt32 = auditArchX8664, args: [UInt64] = []) -> Ret {
        var data = [UInt8](repeating: 0, count: 64)
        func put32(_ o: Int, _ v: UInt32) { for b in 0..<4 { data[o + b] = UInt8((v >> (8 * UInt32(b))) & 0xff) } }
        put32(0, UInt32(bitPattern: nr))
        put32(4, arch)
        for (i, a) in args.enumerated() {
            put32(16 + 8 * i, UInt32(a & 0xffff_ffff))
            put32(20 + 8 * i, UInt32(a >> 32))
        }
        func load(_ o: UInt32) -> UInt32 {
            let o = Int(o)
            guard o + 4 <= data.count else { return 0 }
            return UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
        }
        var a: UInt32 = 0, x: UInt32 = 0
        var mem = [UInt32](repeating: 0, count: 16)
        var pc = 0
        while pc < program.count {
            let insn = program[pc]
            pc += 1
            let cls = insn.code & 0x07
            let src: UInt32 = insn.code & 0x08 != 0 ? x : insn.k
            switch cls {
            case 0x00:  // LD
                switch insn.code & 0xe0 {
                case 0x20: a = load(insn.k)  // ABS
                case 0x00: a = insn.k  // IMM
                case 0x60: a = mem[Int(insn.k) & 15]  // MEM
                case 0x80: a = 64  // LEN
                default: return .other(0xdead)
                }
            case 0x01:  // LDX
                switch insn.code & 0xe0 {
                case 0x00: x = insn.k
                case 0x60: x = mem[Int(insn.k) & 15]
                case 0x80: x = 64
                default: return .other(0xdead)
                }
            case 0x02: mem[Int(insn.k) & 15] = a  // ST
            case 0x03: mem[Int(insn.k) & 15] = x  // STX
            case 0x04:  // ALU
                switch insn.code & 0xf0 {
                case 0x00: a = a &+ src
                case 0x10: a = a &- src
                case 0x20: a = a &* src
                case 0x30: a = src == 0 ? 0 : a / src
                case 0x40: a |= src
                case 0x50: a &= src
                case 0x60: a = src >= 32 ? 0 : a << src
                case 0x70: a = src >= 32 ? 0 : a >> src
                case 0x80: a = 0 &- a
                case 0xa0: a ^= src
                default: return .other(0xdead)
                }
            case 0x05:  // JMP
                let op = insn.code & 0xf0
                if op == 0x00 { pc += Int(insn.k); continue }
                let taken: Bool
                switch op {
                case 0x10: taken = a == src
                case 0x20: taken = a > src
                case 0x30: taken = a >= src
                case 0x40: taken = a & src != 0
                default: return .other(0xdead)
                }
                pc += Int(taken ? insn.jt : insn.jf)
            case 0x06:  // RET
                return Ret(insn.code & 0x18 == 0x10 ? a : insn.k)
            case 0x07:  // MISC
                if insn.code & 0xf8 == 0x00 { x = a } else { a = x }
            default:
                return .other(0xdead)
            }
        }
        return .other(0xbad)
    }
}
