import CHearth
import CSeccomp
import Foundation
import Glibc
import HearthCore
import Synchronization

/// Compiles seccomp profiles to classic BPF with libseccomp, in the daemon,
/// so that the spawn path's child only has to load raw bytes (no library
/// calls between clone and execve). Nothing is loaded into the daemon.
///
/// Results are cached per profile: the cache is keyed by the profile value
/// itself (hashed, then compared for equality, so two profiles can never
/// share an entry by collision); the default profile is compiled once.
/// Safe to call from any thread; compilation is serialised, which costs
/// nothing in practice (a few milliseconds per distinct profile).
public final class SeccompCompiler: Sendable {
    public static let shared = SeccompCompiler()

    /// The kernel refuses filters longer than BPF_MAXINSNS.
    public static let maxInstructions = 4096
    /// Beyond this many distinct profiles the cache starts over; profiles
    /// come from environment specs, so this is never reached in practice.
    static let cacheLimit = 64

    private let cache = Mutex<[SeccompProfile: [UInt8]]>([:])

    public init() {}

    /// The filter as raw `struct sock_filter` bytes (8 per instruction), to
    /// load with seccomp(SECCOMP_SET_MODE_FILTER) after PR_SET_NO_NEW_PRIVS.
    public func compile(_ profile: SeccompProfile) throws -> [UInt8] {
        try cache.withLock { cache in
            if let bytes = cache[profile] { return bytes }
            let bytes = try Self.build(profile)
            if cache.count >= Self.cacheLimit { cache.removeAll() }
            cache[profile] = bytes
            return bytes
        }
    }

    // MARK: - libseccomp

    /// libseccomp action values (the SCMP_ACT_* macros; the ones taking an
    /// argument are function-like macros Swift cannot import).
    static func actionValue(_ action: SeccompProfile.Action, errnoRet: UInt32?) -> UInt32 {
        let data = (errnoRet ?? UInt32(EPERM)) & 0xffff
        switch action {
        case .allow: return 0x7fff_0000
        case .errno: return 0x0005_0000 | data
        case .kill, .killThread: return 0x0000_0000
        case .killProcess: return 0x8000_0000
        case .trap: return 0x0003_0000
        case .trace: return 0x7ff0_0000 | data
        case .log: return 0x7ffc_0000
        }
    }

    static func build(_ profile: SeccompProfile) throws -> [UInt8] {
        let defaultAction = actionValue(profile.defaultAction, errnoRet: profile.defaultErrnoRet)
        guard let ctx = seccomp_init(defaultAction) else {
            throw HearthError(.internal, "seccomp: seccomp_init(\(profile.defaultAction.rawValue)) failed")
        }
        defer { seccomp_release(ctx) }

        // The spawn path sets no_new_privs itself, right before loading.
        try check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0), "set SCMP_FLTATR_CTL_NNP")
        // A binary search over syscall numbers instead of a linear chain:
        // every syscall of the replica pays for the filter. Best effort;
        // older libseccomp lacks the attribute and then the filter is linear.
        _ = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)

        for (i, arch) in profile.architectures.enumerated() {
            let token = seccomp_arch_resolve_name(arch.libseccompName)
            guard token != 0 else {
                throw HearthError.invalid("seccomp profile: architectures[\(i)]: \"\(arch.rawValue)\" is unknown to libseccomp")
            }
            let rc = seccomp_arch_add(ctx, token)
            if rc != 0 && rc != -EEXIST { try check(rc, "architectures[\(i)]: add \(arch.rawValue)", code: .invalidArgument) }
        }

        for (i, rule) in profile.syscalls.enumerated() {
            let action = actionValue(rule.action, errnoRet: rule.errnoRet)
            // libseccomp refuses rules that repeat the default action; they
            // change nothing, so skip them as runc does.
            if action == defaultAction { continue }
            for name in rule.names {
                let number = seccomp_syscall_resolve_name(name)
                // Unknown to this libseccomp (or no such syscall): skipped,
                // as Docker does, so one profile works everywhere.
                if number == __NR_SCMP_ERROR { continue }
                try add(ctx, action: action, syscall: number, args: rule.args,
                        what: "syscalls[\(i)] (\(name), \(rule.action.rawValue))")
            }
        }

        let bytes = try export(ctx)
        guard !bytes.isEmpty, bytes.count % 8 == 0 else {
            throw HearthError(.internal, "seccomp: libseccomp exported \(bytes.count) bytes, not whole BPF instructions")
        }
        guard bytes.count / 8 <= maxInstructions else {
            throw HearthError.invalid(
                "seccomp profile: compiles to \(bytes.count / 8) BPF instructions; the kernel accepts at most \(maxInstructions)")
        }
        return bytes
    }

    /// Adds one rule. Conditions on distinct arguments are ANDed in one
    /// rule; several conditions on the same argument become separate rules
    /// (ORed): that is how runc reads such profiles, and libseccomp cannot
    /// AND two comparisons of one argument.
    private static func add(_ ctx: scmp_filter_ctx, action: UInt32, syscall: Int32,
                            args: [SeccompProfile.Arg], what: String) throws {
        let comparisons = args.map { arg in
            scmp_arg_cmp(arg: arg.index, op: compare(arg.op), datum_a: arg.value, datum_b: arg.valueTwo)
        }
        let indices = args.map(\.index)
        let groups: [[scmp_arg_cmp]] = Set(indices).count == indices.count ? [comparisons] : comparisons.map { [$0] }
        for group in groups {
            let rc = group.withUnsafeBufferPointer { buf in
                seccomp_rule_add_array(ctx, action, syscall, UInt32(buf.count), buf.baseAddress)
            }
            // A syscall that exists on none of the filter's architectures
            // (e.g. socketcall on a native-only x86_64 filter) is skipped.
            if rc == -EDOM || rc == -EFAULT { continue }
            try check(rc, "\(what): add rule", code: .invalidArgument)
        }
    }

    private static func compare(_ op: SeccompProfile.Operator) -> scmp_compare {
        switch op {
        case .notEqual: return SCMP_CMP_NE
        case .lessThan: return SCMP_CMP_LT
        case .lessOrEqual: return SCMP_CMP_LE
        case .equal: return SCMP_CMP_EQ
        case .greaterOrEqual: return SCMP_CMP_GE
        case .greaterThan: return SCMP_CMP_GT
        case .maskedEqual: return SCMP_CMP_MASKED_EQ
        }
    }

    /// libseccomp 2.5.4 can only export to an fd (no
    /// seccomp_export_bpf_mem), so export into a memfd and read it back.
    private static func export(_ ctx: scmp_filter_ctx) throws -> [UInt8] {
        let fd = hearth_memfd_create("hearth-seccomp", 1 /* MFD_CLOEXEC */)
        guard fd >= 0 else { throw SystemError.current("seccomp: memfd_create", "") }
        defer { close(fd) }
        try check(seccomp_export_bpf(ctx, fd), "export BPF")
        guard lseek(fd, 0, SEEK_SET) == 0 else { throw SystemError.current("seccomp: lseek", "memfd") }
        var bytes = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw SystemError.current("seccomp: read", "memfd") }
            if n == 0 { return bytes }
            bytes.append(contentsOf: buffer[0..<n])
        }
    }

    /// libseccomp returns -errno. Rules are the profile's fault; the rest
    /// (attributes, export) is Hearth's.
    private static func check(_ rc: Int32, _ what: String, code: HearthError.Code = .internal) throws {
        guard rc < 0 else { return }
        throw HearthError(code, "seccomp: \(what): \(ErrnoName.name(-rc)) (\(String(cString: strerror(-rc))))")
    }
}
