import CHearth
import Foundation
import Glibc
import HearthCore
import Synchronization

/// One eBPF instruction (`struct bpf_insn`: opcode, dst/src registers in one
/// byte, 16-bit offset, 32-bit immediate).
public struct BPFInstruction: Sendable, Equatable, CustomStringConvertible {
    public var code: UInt8
    public var dst: UInt8
    public var src: UInt8
    public var off: Int16
    public var imm: Int32

    // The opcodes the device filter uses (linux/bpf.h, linux/bpf_common.h).
    public static let ldxMemW: UInt8 = 0x61    // BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
    public static let andImm: UInt8 = 0x57     // BPF_ALU64 | BPF_AND | BPF_K
    public static let rshImm: UInt8 = 0x77     // BPF_ALU64 | BPF_RSH | BPF_K
    public static let movImm: UInt8 = 0xb7     // BPF_ALU64 | BPF_MOV | BPF_K
    public static let movReg: UInt8 = 0xbf     // BPF_ALU64 | BPF_MOV | BPF_X
    public static let jneImm: UInt8 = 0x55     // BPF_JMP | BPF_JNE | BPF_K: if dst != imm, pc += off
    public static let jneReg: UInt8 = 0x5d     // BPF_JMP | BPF_JNE | BPF_X: if dst != src, pc += off
    public static let exit: UInt8 = 0x95       // BPF_JMP | BPF_EXIT: return r0

    public init(_ code: UInt8, dst: UInt8 = 0, src: UInt8 = 0, off: Int16 = 0, imm: Int32 = 0) {
        self.code = code; self.dst = dst; self.src = src; self.off = off; self.imm = imm
    }

    /// The 8 bytes of `struct bpf_insn` (little-endian host).
    public var bytes: [UInt8] {
        let o = UInt16(bitPattern: off), i = UInt32(bitPattern: imm)
        return [code, (src << 4) | (dst & 0x0f), UInt8(o & 0xff), UInt8(o >> 8),
                UInt8(i & 0xff), UInt8((i >> 8) & 0xff), UInt8((i >> 16) & 0xff), UInt8(i >> 24)]
    }

    /// Decodes `struct bpf_insn`s; nil when the length is not a multiple of 8.
    public static func decode(_ bytes: [UInt8]) -> [BPFInstruction]? {
        guard bytes.count % 8 == 0 else { return nil }
        return stride(from: 0, to: bytes.count, by: 8).map { at in
            let off = UInt16(bytes[at + 2]) | UInt16(bytes[at + 3]) << 8
            let imm = UInt32(bytes[at + 4]) | UInt32(bytes[at + 5]) << 8 | UInt32(bytes[at + 6]) << 16
                | UInt32(bytes[at + 7]) << 24
            return BPFInstruction(bytes[at], dst: bytes[at + 1] & 0x0f, src: bytes[at + 1] >> 4,
                                  off: Int16(bitPattern: off), imm: Int32(bitPattern: imm))
        }
    }

    public var description: String { "code 0x\(String(code, radix: 16)) dst r\(dst) src r\(src) off \(off) imm \(imm)" }
}

/// A BPF_PROG_TYPE_CGROUP_DEVICE program for a device allow-list: the
/// cgroup v2 replacement for the v1 `devices` controller. Generated here as
/// plain data; `DeviceFilterLoader` loads and attaches it.
///
/// The kernel calls it with `struct bpf_cgroup_dev_ctx { u32 access_type;
/// u32 major; u32 minor; }` (access_type: device type in the low 16 bits,
/// access bits in the high 16) and allows the operation when it returns 1.
/// Layout: load the four values into r2..r5, then one block per rule that
/// jumps to the next block on the first mismatch and returns 1 at its end;
/// after the last block, return 0 (deny).
public enum DeviceFilter {
    /// BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR.
    static func typeCode(_ kind: DeviceRule.Kind) -> Int32 { kind == .block ? 1 : 2 }

    public static func program(_ rules: [DeviceRule]) -> [BPFInstruction] {
        typealias I = BPFInstruction
        var insns: [I] = [
            I(I.ldxMemW, dst: 2, src: 1, off: 0), I(I.andImm, dst: 2, imm: 0xffff),  // r2 = type
            I(I.ldxMemW, dst: 3, src: 1, off: 0), I(I.rshImm, dst: 3, imm: 16),      // r3 = access
            I(I.ldxMemW, dst: 4, src: 1, off: 4),                                     // r4 = major
            I(I.ldxMemW, dst: 5, src: 1, off: 8),                                     // r5 = minor
        ]
        for rule in rules {
            // Jumps are written with the block's length, known at its end.
            var block: [I] = [I(I.jneImm, dst: 2, imm: typeCode(rule.kind))]
            if rule.access != .all {
                // Every bit asked for must be in the rule: (r3 & access) == r3.
                block += [I(I.movReg, dst: 1, src: 3), I(I.andImm, dst: 1, imm: Int32(rule.access.rawValue)),
                          I(I.jneReg, dst: 1, src: 3)]
            }
            if let major = rule.major { block.append(I(I.jneImm, dst: 4, imm: Int32(major))) }
            if let minor = rule.minor { block.append(I(I.jneImm, dst: 5, imm: Int32(minor))) }
            block += [I(I.movImm, dst: 0, imm: 1), I(I.exit)]
            // A jump at index i of the block lands after it: pc + 1 + off = count.
            for i in block.indices where block[i].code == I.jneImm || block[i].code == I.jneReg {
                block[i].off = Int16(block.count - i - 1)
            }
            insns += block
        }
        insns += [I(I.movImm, dst: 0, imm: 0), I(I.exit)]
        return insns
    }

    public static func bytes(_ rules: [DeviceRule]) -> [UInt8] { program(rules).flatMap(\.bytes) }
}

/// Loads device filters into the kernel (once per distinct rule list; the
/// daemon keeps the program fds for its lifetime) and attaches them to
/// replica cgroups. A program attached to a cgroup lives as long as the
/// cgroup: removing the cgroup detaches it, so teardown needs nothing more.
public final class DeviceFilterLoader: Sendable {
    public static let shared = DeviceFilterLoader()
    /// Distinct lists come from specs; past this many, start over (the
    /// attached programs stay alive through their cgroups).
    static let cacheLimit = 64

    private let cache = Mutex<[[DeviceRule]: Int32]>([:])

    public init() {}

    /// Attaches the program for `rules` to the cgroup directory `path`
    /// (BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI: programs of parent cgroups
    /// still run, and all must allow). Loads it first if this list is new.
    public func attach(_ rules: [DeviceRule], toCgroup path: String) throws {
        // Under the cache lock, so that a cache reset cannot close the fd meanwhile.
        try cache.withLock { cache in
            let prog = try Self.loaded(rules, cache: &cache)
            let dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard dir >= 0 else { throw SystemError.current("open cgroup", path) }
            defer { close(dir) }
            if hearth_bpf_attach_device_filter(dir, prog) != 0 {
                throw SystemError.current("attach device filter (bpf BPF_PROG_ATTACH BPF_CGROUP_DEVICE) to cgroup", path)
            }
        }
    }

    /// How many device programs are attached to the cgroup directory itself
    /// (BPF_PROG_QUERY), for tests and inspection.
    public static func attachedCount(cgroup path: String) throws -> Int {
        let dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dir >= 0 else { throw SystemError.current("open cgroup", path) }
        defer { close(dir) }
        let n = hearth_bpf_count_device_filters(dir)
        guard n >= 0 else { throw SystemError.current("query device filters (bpf BPF_PROG_QUERY) of cgroup", path) }
        return Int(n)
    }

    /// Loads the program for `rules` unless the cache has it; the cache owns the fd.
    private static func loaded(_ rules: [DeviceRule], cache: inout [[DeviceRule]: Int32]) throws -> Int32 {
        if let fd = cache[rules] { return fd }
        let fd = try load(rules)
        if cache.count >= cacheLimit {
            for old in cache.values { close(old) }
            cache.removeAll()
        }
        cache[rules] = fd
        return fd
    }

    /// BPF_PROG_LOAD; on failure the error carries the verifier's log.
    static func load(_ rules: [DeviceRule]) throws -> Int32 {
        try load(code: DeviceFilter.bytes(rules), what: "device filter of \(rules.count) rules")
    }

    static func load(code: [UInt8], what: String) throws -> Int32 {
        var log = [CChar](repeating: 0, count: 16 << 10)
        let (fd, err) = code.withUnsafeBufferPointer { insns in
            log.withUnsafeMutableBufferPointer { buf in
                let fd = hearth_bpf_load_device_filter(insns.baseAddress, UInt32(insns.count / 8), buf.baseAddress,
                                                       UInt32(buf.count))
                return (fd, errno)
            }
        }
        guard fd >= 0 else {
            let text = String(decoding: log.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let detail = "\(what) (\(code.count / 8) instructions)" + (text.isEmpty ? "" : "; verifier log: \(text)")
            throw SystemError("load BPF program (bpf BPF_PROG_LOAD BPF_PROG_TYPE_CGROUP_DEVICE)", detail, errno: err)
        }
        return fd
    }
}
