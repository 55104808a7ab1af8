import Foundation
import Glibc
import HearthCore
import XCTest

@testable import HearthSandbox

/// Runs the subset of eBPF the device filter emits, the way the kernel
/// would run a BPF_PROG_TYPE_CGROUP_DEVICE program, so that the generated
/// code is checked as code, not as a byte string. Any other opcode, a
/// jump out of the program or a runaway loop fails the test.
private func interpret(_ program: [BPFInstruction], type: UInt32, access: UInt32, major: UInt32, minor: UInt32,
                       file: StaticString = #filePath, line: UInt = #line) -> UInt64? {
    let ctx: [UInt32] = [access << 16 | type, major, minor]
    var r = [UInt64](repeating: 0, count: 11)
    var pc = 0
    var steps = 0
    // r1 points at the context: loads through it read ctx[off / 4].
    let ctxReg: UInt8 = 1
    var r1IsCtx = true
    while pc >= 0 && pc < program.count && steps < 10_000 {
        steps += 1
        let i = program[pc]
        let dst = Int(i.dst), src = Int(i.src), imm = UInt64(bitPattern: Int64(i.imm))
        switch i.code {
        case BPFInstruction.ldxMemW:
            guard i.src == ctxReg, r1IsCtx, i.off >= 0, i.off % 4 == 0, Int(i.off) / 4 < ctx.count else {
                XCTFail("load not from the context at \(pc): \(i)", file: file, line: line)
                return nil
            }
            r[dst] = UInt64(ctx[Int(i.off) / 4])
        case BPFInstruction.andImm: r[dst] &= imm
        case BPFInstruction.rshImm: r[dst] >>= imm
        case BPFInstruction.movImm: r[dst] = imm
        case BPFInstruction.movReg: r[dst] = r[src]
        case BPFInstruction.jneImm: if r[dst] != imm { pc += Int(i.off) }
        case BPFInstruction.jneReg: if r[dst] != r[src] { pc += Int(i.off) }
        case BPFInstruction.exit: return r[0]
        default:
            XCTFail("unexpected opcode at \(pc): \(i)", file: file, line: line)
            return nil
        }
        if dst == Int(ctxReg) && i.code != BPFInstruction.jneImm && i.code != BPFInstruction.jneReg
            && i.code != BPFInstruction.exit { r1IsCtx = false }
        pc += 1
    }
    XCTFail("the program ran off its end or looped (pc \(pc), \(steps) steps)", file: file, line: line)
    return nil
}

final class DeviceRuleTests: XCTestCase {
    func testV1TextOfTheStandardList() {
        XCTAssertEqual(DeviceRule.standard.map(\.description), [
            "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
            "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm",
        ])
        XCTAssertEqual(try DeviceRule(.block, major: 8, minor: nil, access: [.read]).description, "b 8:* r")
    }

    func testRulesRefuseWhatLinuxCannotEncode() {
        XCTAssertThrowsError(try DeviceRule(.char, major: 4096, minor: 0)) {
            XCTAssertEqual("\($0)", "device rule: major 4096 is over 4095")
        }
        XCTAssertThrowsError(try DeviceRule(.char, major: 1, minor: 1 << 20))
        XCTAssertThrowsError(try DeviceRule(.char, major: 1, minor: 3, access: []))
        XCTAssertNoThrow(try DeviceRule(.char, major: 4095, minor: (1 << 20) - 1))
    }
}

final class DeviceFilterTests: XCTestCase {
    typealias Case = (kind: DeviceRule.Kind, major: UInt32, minor: UInt32, access: DeviceRule.Access, allowed: Bool)
    let c = DeviceRule.Kind.char, b = DeviceRule.Kind.block
    let rw: DeviceRule.Access = [.read, .write]

    /// The attacks and the standard devices, against the standard list.
    var table: [Case] {
        [
            (c, 1, 3, rw, true), (c, 1, 5, [.read], true), (c, 1, 7, [.write], true), (c, 1, 8, rw, true),
            (c, 1, 9, rw, true), (c, 5, 0, rw, true), (c, 5, 2, rw, true), (c, 136, 0, rw, true),
            (c, 136, 4095, rw, true), (c, 1, 3, [.mknod], true),
            // mknod of anything is allowed (c *:* m, b *:* m); opening is not.
            (c, 10, 232, [.mknod], true), (b, 7, 0, [.mknod], true), (b, 254, 0, [.mknod], true),
            (c, 10, 232, rw, false), (c, 10, 232, [.read], false),   // /dev/kvm
            (b, 7, 0, rw, false),                                     // /dev/loop0
            (c, 10, 200, rw, false),                                  // /dev/net/tun
            (c, 10, 229, rw, false),                                  // /dev/fuse
            (b, 8, 0, rw, false), (b, 254, 0, [.read], false),        // disks
            (c, 195, 0, rw, false), (c, 195, 255, rw, false),         // /dev/nvidia0, nvidiactl
            (c, 1, 1, rw, false), (c, 1, 11, [.write], false),        // /dev/mem, /dev/kmsg
            (c, 4, 0, rw, false), (c, 5, 1, rw, false),               // tty0, console
            (c, 137, 0, rw, false), (b, 1, 3, rw, false),             // near misses of major and type
            (c, 1, 3, [.read, .write, .mknod], true),
        ]
    }

    func testStandardListInterpreted() {
        let program = DeviceFilter.program(DeviceRule.standard)
        for t in table {
            let type: UInt32 = t.kind == .block ? 1 : 2
            let got = interpret(program, type: type, access: t.access.rawValue, major: t.major, minor: t.minor)
            XCTAssertEqual(got, t.allowed ? 1 : 0, "\(t.kind) \(t.major):\(t.minor) access \(t.access.rawValue)")
            // The Swift model of the rules agrees with the program.
            XCTAssertEqual(DeviceRule.allowed(by: DeviceRule.standard, t.kind, major: t.major, minor: t.minor,
                                              access: t.access), t.allowed)
        }
    }

    func testGrantedDevicesAndPartialAccess() throws {
        // What a GPU grant will look like: read-write on one major, any minor,
        // and a read-only block device.
        let rules = DeviceRule.standard + [try DeviceRule(.char, major: 195, minor: nil, access: rw),
                                           try DeviceRule(.block, major: 8, minor: 16, access: [.read])]
        let program = DeviceFilter.program(rules)
        let cases: [Case] = [
            (c, 195, 0, rw, true), (c, 195, 255, [.read], true), (c, 195, 0, [.read, .write, .mknod], false),
            (b, 8, 16, [.read], true), (b, 8, 16, rw, false), (b, 8, 17, [.read], false), (c, 8, 16, [.read], false),
            (c, 10, 232, rw, false),
        ]
        for t in cases {
            let got = interpret(program, type: t.kind == .block ? 1 : 2, access: t.access.rawValue,
                                major: t.major, minor: t.minor)
            XCTAssertEqual(got, t.allowed ? 1 : 0, "\(t.kind) \(t.major):\(t.minor) access \(t.access.rawValue)")
            XCTAssertEqual(DeviceRule.allowed(by: rules, t.kind, major: t.major, minor: t.minor, access: t.access),
                           t.allowed)
        }
    }

    func testEmptyListDeniesEverything() {
        let program = DeviceFilter.program([])
        XCTAssertEqual(program.count, 8)
        XCTAssertEqual(interpret(program, type: 2, access: 2, major: 1, minor: 3), 0)
    }

    func testBytesDecodeBackAndEveryJumpStaysInside() throws {
        let program = DeviceFilter.program(DeviceRule.standard)
        let bytes = DeviceFilter.bytes(DeviceRule.standard)
        XCTAssertEqual(bytes.count, program.count * 8)
        XCTAssertEqual(BPFInstruction.decode(bytes), program)
        XCTAssertNil(BPFInstruction.decode([1, 2, 3]))
        // struct bpf_insn layout: dst in the low nibble, little-endian offset and immediate.
        XCTAssertEqual(BPFInstruction(BPFInstruction.jneImm, dst: 4, off: 3, imm: 232).bytes, [0x55, 0x04, 3, 0, 232, 0, 0, 0])
        XCTAssertEqual(BPFInstruction(BPFInstruction.movReg, dst: 1, src: 3).bytes, [0xbf, 0x31, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(BPFInstruction(BPFInstruction.andImm, dst: 2, imm: -1).bytes, [0x57, 0x02, 0, 0, 255, 255, 255, 255])
        for (pc, i) in program.enumerated() where i.code == BPFInstruction.jneImm || i.code == BPFInstruction.jneReg {
            let target = pc + 1 + Int(i.off)
            XCTAssertTrue(i.off > 0 && target < program.count, "jump at \(pc) lands at \(target)")
        }
        XCTAssertEqual(program.last?.code, BPFInstruction.exit)
    }

    /// The kernel's verifier accepts the program (root only).
    func testKernelLoadsTheProgramAndExplainsARefusal() throws {
        guard getuid() == 0 else { throw XCTSkip("loading BPF programs needs root") }
        let fd = try DeviceFilterLoader.load(DeviceRule.standard)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC)
        close(fd)
        // No exit: the verifier refuses it, and says why.
        let bad = BPFInstruction(BPFInstruction.movImm, dst: 0, imm: 1).bytes
        XCTAssertThrowsError(try DeviceFilterLoader.load(code: bad, what: "a test program")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix("load BPF program (bpf BPF_PROG_LOAD BPF_PROG_TYPE_CGROUP_DEVICE) a test program (1 instructions); verifier log: "), text)
            XCTAssertEqual((error as? SystemError)?.errno, EINVAL, text)
        }
    }
}
