import Foundation
import Glibc
import HearthCore
import XCTest

@testable import HearthSandbox

/// Pure tests of the limits mapping and of layout discovery.
final class CgroupLimitsTests: XCTestCase {
    func testSharesAndWeight() {
        XCTAssertEqual(CgroupLimits.shares(milli: 1000), 1024)
        XCTAssertEqual(CgroupLimits.shares(milli: 500), 512)
        XCTAssertEqual(CgroupLimits.shares(milli: 250), 256)
        XCTAssertEqual(CgroupLimits.shares(milli: 1), 2)  // kernel minimum
        XCTAssertEqual(CgroupLimits.shares(milli: 1_000_000), 262_144)  // kernel maximum

        let table: [(UInt64, UInt64)] = [
            (0, 1), (2, 1), (3, 2), (128, 21), (512, 59), (1024, 100), (2048, 174), (4096, 303),
            (262_144, 10_000), (1_000_000, 10_000),
        ]
        for (shares, weight) in table {
            XCTAssertEqual(CgroupLimits.cpuWeight(shares: shares), weight, "shares \(shares)")
        }
    }

    func testRequestAloneBecomesTheLimit() {
        let limits = CgroupLimits(cpuRequestMilli: 500, memoryRequest: 64 << 20)
        XCTAssertEqual(limits.cpuLimitMilli, 500)
        XCTAssertEqual(limits.cpuRequestMilli, 500)
        XCTAssertEqual(limits.memoryLimit, 64 << 20)
        XCTAssertEqual(limits.memoryRequest, 64 << 20)
        XCTAssertEqual(limits.pidsMax, 4096)

        let limitOnly = CgroupLimits(cpuLimitMilli: 2000, memoryLimit: 1 << 30)
        XCTAssertNil(limitOnly.cpuRequestMilli)
        XCTAssertNil(limitOnly.memoryRequest)
    }

    func testV1Files() {
        let limits = CgroupLimits(cpuLimitMilli: 1500, cpuRequestMilli: 500, memoryLimit: 256 << 20,
                                  memoryRequest: 128 << 20, pidsMax: 100)
        XCTAssertEqual(limits.v1Files(), [
            CgroupFileValue("cpu.cfs_period_us", "100000"),
            CgroupFileValue("cpu.cfs_quota_us", "150000"),
            CgroupFileValue("cpu.shares", "512"),
            CgroupFileValue("memory.limit_in_bytes", "268435456"),
            CgroupFileValue("memory.memsw.limit_in_bytes", "268435456", optional: true),
            CgroupFileValue("memory.soft_limit_in_bytes", "134217728"),
            CgroupFileValue("pids.max", "100"),
        ])
        XCTAssertEqual(CgroupLimits().v1Files(), [CgroupFileValue("pids.max", "4096")])
        XCTAssertEqual(CgroupLimits(pidsMax: 0).v1Files(), [CgroupFileValue("pids.max", "max")])
        XCTAssertEqual(limits.v1Files().map(\.controller), ["cpu", "cpu", "cpu", "memory", "memory", "memory", "pids"])
    }

    func testV1MemswGoesFirstWhenTheLimitRises() {
        let limits = CgroupLimits(memoryLimit: 256 << 20)
        XCTAssertEqual(limits.v1Files(raisingMemory: true), [
            CgroupFileValue("memory.memsw.limit_in_bytes", "268435456", optional: true),
            CgroupFileValue("memory.limit_in_bytes", "268435456"),
            CgroupFileValue("pids.max", "4096"),
        ])
        XCTAssertEqual(limits.v1Files().prefix(2).map(\.file), ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"])
    }

    func testV2Files() {
        let limits = CgroupLimits(cpuLimitMilli: 1500, cpuRequestMilli: 1000, memoryLimit: 256 << 20,
                                  memoryRequest: 128 << 20, pidsMax: 100)
        XCTAssertEqual(limits.v2Files(), [
            CgroupFileValue("cpu.max", "150000 100000"),
            CgroupFileValue("cpu.weight", "100"),
            CgroupFileValue("memory.max", "268435456"),
            CgroupFileValue("memory.swap.max", "0", optional: true),
            CgroupFileValue("memory.oom.group", "1"),
            CgroupFileValue("memory.low", "134217728"),
            CgroupFileValue("pids.max", "100"),
        ])
        XCTAssertEqual(CgroupLimits().v2Files(), [CgroupFileValue("pids.max", "4096")])
        // Quotas below the kernel's 1 ms minimum are raised to it.
        XCTAssertEqual(CgroupLimits(cpuLimitMilli: 5).v2Files().first, CgroupFileValue("cpu.max", "1000 100000"))
        XCTAssertEqual(CgroupLimits(cpuLimitMilli: 5).files(for: .v1)[1], CgroupFileValue("cpu.cfs_quota_us", "1000"))
    }
}

final class CgroupDiscoveryTests: XCTestCase {
    /// This project's build machines: hybrid, v1 cpu/memory/pids, an empty
    /// cgroup2 at /sys/fs/cgroup/unified, memory cgroup nested.
    let hybridMountinfo = """
    31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
    33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
    36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
    39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
    """
    let hybridCgroup = """
    9:name=systemd:/
    8:pids:/
    5:devices:/
    4:memory:/process_api/abc
    2:cpuacct:/
    1:cpu:/
    0::/
    """

    func testHybridHostIsV1() throws {
        let layout = try CgroupDiscovery.layout(mountinfo: hybridMountinfo, procCgroup: hybridCgroup)
        XCTAssertEqual(layout.version, .v1)
        XCTAssertEqual(layout.hierarchies.map(\.controllers), [["cpu"], ["memory"], ["pids"], ["devices"], ["cpuacct"]])
        XCTAssertEqual(layout.hierarchies.map(\.directory), [
            "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory/process_api/abc", "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/devices", "/sys/fs/cgroup/cpuacct",
        ])
    }

    /// A v1 host without the devices controller: hearthd refuses to start
    /// rather than run replicas that could open any node they make.
    func testV1WithoutDevicesFailsClosed() {
        let mountinfo = hybridMountinfo.split(separator: "\n").filter { !$0.contains("devices") }.joined(separator: "\n")
        XCTAssertThrowsError(try CgroupDiscovery.layout(mountinfo: mountinfo, procCgroup: hybridCgroup)) { error in
            XCTAssertEqual((error as? HearthError)?.code, .unavailable)
            XCTAssertEqual("\(error)", "cgroup v1: no devices hierarchy is mounted (see /proc/self/mountinfo); "
                + "hearthd needs the devices controller to keep replicas off host devices "
                + "(mount it, e.g. mount -t cgroup -o devices cgroup /sys/fs/cgroup/devices, or boot with cgroup v2)")
        }
        let noLine = hybridCgroup.split(separator: "\n").filter { !$0.contains("devices") }.joined(separator: "\n")
        XCTAssertThrowsError(try CgroupDiscovery.layout(mountinfo: hybridMountinfo, procCgroup: noLine)) { error in
            XCTAssertTrue("\(error)".hasPrefix("cgroup v1: /proc/self/cgroup has no line for the devices controller; hearthd needs"),
                          "\(error)")
        }
        // A pure v2 host needs no devices hierarchy (a BPF program does the job).
        XCTAssertNoThrow(try CgroupDiscovery.layout(
            mountinfo: "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", procCgroup: "0::/x\n"))
    }

    func testCoMountedCpuCpuacct() throws {
        let mountinfo = """
        25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
        26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
        27 24 0:24 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
        28 24 0:25 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
        """
        let cgroup = "3:cpu,cpuacct:/docker/x\n2:memory:/docker/x\n1:pids:/docker/x\n4:devices:/docker/x\n"
        let layout = try CgroupDiscovery.layout(mountinfo: mountinfo, procCgroup: cgroup)
        XCTAssertEqual(layout.version, .v1)
        XCTAssertEqual(layout.hierarchies.map(\.controllers), [["cpu", "cpuacct"], ["memory"], ["pids"], ["devices"]])
        XCTAssertEqual(layout.hierarchies[0].directory, "/sys/fs/cgroup/cpu,cpuacct/docker/x")
    }

    func testV1MissingControllerIsNamed() {
        let mountinfo = "26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            + "25 24 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        XCTAssertThrowsError(try CgroupDiscovery.layout(mountinfo: mountinfo, procCgroup: "2:memory:/\n1:cpu:/\n3:pids:/\n")) {
            XCTAssertTrue("\($0)".contains("no pids hierarchy is mounted"), "\($0)")
        }
    }

    func testPureV2Host() throws {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
        let layout = try CgroupDiscovery.layout(mountinfo: mountinfo, procCgroup: "0::/system.slice/hearthd.service\n")
        XCTAssertEqual(layout.version, .v2)
        XCTAssertEqual(layout.hierarchies.map(\.directory), ["/sys/fs/cgroup/system.slice/hearthd.service"])
    }

    func testV2InsideACgroupNamespaceAndBindMountedSubtree() throws {
        let ns = try CgroupDiscovery.layout(
            mountinfo: "700 690 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", procCgroup: "0::/\n")
        XCTAssertEqual(ns.hierarchies.first?.directory, "/sys/fs/cgroup")
        // A mount of a sub-hierarchy: paths are relative to its root.
        let bind = try CgroupDiscovery.layout(
            mountinfo: "700 690 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            procCgroup: "0::/kubepods/pod1/ctr\n")
        XCTAssertEqual(bind.hierarchies.first?.directory, "/sys/fs/cgroup/ctr")
    }

    func testMountinfoEscapesAndDeletedCgroups() {
        XCTAssertEqual(CgroupDiscovery.unescape(#"/mnt/with\040space"#), "/mnt/with space")
        XCTAssertEqual(CgroupDiscovery.unescape(#"/a\134b"#), #"/a\b"#)
        XCTAssertEqual(CgroupDiscovery.parseProcCgroup("0::/gone (deleted)\n").v2, "/gone")
        XCTAssertTrue(CgroupDiscovery.isPrefix("/", of: "/x"))
        XCTAssertTrue(CgroupDiscovery.isPrefix("/a", of: "/a/b"))
        XCTAssertFalse(CgroupDiscovery.isPrefix("/a", of: "/ab"))
    }

    func testV2DaemonAlreadyInItsLeafUsesTheParent() throws {
        let layout = CgroupLayout(version: .v2, hierarchies: [
            CgroupHierarchy(controllers: [], mountPoint: "/sys/fs/cgroup", mountRoot: "/",
                            cgroupPath: "/system.slice/hearthd.service/hearth-daemon",
                            directory: "/sys/fs/cgroup/system.slice/hearthd.service/hearth-daemon"),
        ])
        let manager = try CgroupManager(subtree: "hearth", layout: layout)
        XCTAssertEqual(manager.subtreePaths, ["/sys/fs/cgroup/system.slice/hearthd.service/hearth"])
        XCTAssertEqual(try CgroupManager(subtree: "other", layout: layout).subtreePaths,
                       ["/sys/fs/cgroup/system.slice/hearthd.service/hearth-daemon/other"])
        XCTAssertThrowsError(try CgroupManager(subtree: "../x", layout: layout))
    }

    func testNamesAreValidated() {
        XCTAssertNoThrow(try CgroupManager.validate(component: "env-1.replica_2", field: "x"))
        for bad in ["", ".", "..", "a b", "a/b", String(repeating: "x", count: 129), "ünicode"] {
            XCTAssertThrowsError(try CgroupManager.validate(component: bad, field: "cgroup name"), bad)
        }
    }
}

/// Opens two allowed devices and /dev/kmsg (c 1:11, not on the list).
let deviceScript = """
    (exec 3<>/dev/null) && echo null-ok
    (exec 3</dev/zero) && echo zero-ok
    (exec 3>/dev/kmsg) 2>/dev/null && echo kmsg-opened || echo kmsg-refused
    """

/// Runs `sh -c script` placed in `replica` (nil: not placed) before it
/// starts; returns its stdout. Bounded: a hung script is killed after 10 s.
func runPlaced(in replica: ReplicaCgroup?, _ script: String) throws -> String {
    let process = Foundation.Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", "read _; " + script]
    let stdin = Foundation.Pipe(), stdout = Foundation.Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = FileHandle.nullDevice
    try process.run()
    do {
        if let replica { try replica.add(pid: process.processIdentifier) }
    } catch {
        process.terminate()
        throw error
    }
    stdin.fileHandleForWriting.write(Data("go\n".utf8))
    let deadline = Date().addingTimeInterval(10)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    return String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
}

/// Real cgroups on this machine. Root only; on a cgroup v2 host only with
/// HEARTH_CGROUP_V2_TESTS=1, because prepare() there moves the test process
/// (and its cgroup's other processes) into a leaf, as it does for hearthd.
final class CgroupRootTests: XCTestCase {
    var manager: CgroupManager!

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("cgroup tests need root") }
        let subtree = "hearth-test-" + UUID().uuidString.prefix(8).lowercased()
        let m = try CgroupManager(subtree: subtree)
        if m.version == .v2 && ProcessInfo.processInfo.environment["HEARTH_CGROUP_V2_TESTS"] != "1" {
            throw XCTSkip("cgroup v2 host: set HEARTH_CGROUP_V2_TESTS=1 to let the test move itself into a leaf")
        }
        try m.prepare()
        manager = m
    }

    override func tearDownWithError() throws {
        try manager?.removeSubtree()
        if let manager {
            for dir in manager.subtreePaths { XCTAssertFalse(FileManager.default.fileExists(atPath: dir), dir) }
        }
    }

    private func value(_ dir: String?, _ file: String) -> String? {
        guard let dir else { return nil }
        return CgroupFiles.readIfPresent(dir + "/" + file)?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts `/bin/sh -c script`, held on a read of stdin until `release`.
    private func startHeld(_ script: String) throws -> (Foundation.Process, Foundation.Pipe) {
        let process = Foundation.Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "read _; " + script]
        let stdin = Foundation.Pipe()
        process.standardInput = stdin
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return (process, stdin)
    }

    private func release(_ pipe: Foundation.Pipe) { pipe.fileHandleForWriting.write(Data("go\n".utf8)) }

    /// Waits for exit with a bound, so a failure cannot hang the suite.
    private func waitExit(_ process: Foundation.Process, timeout: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        return !process.isRunning
    }

    func testReplicaLimitsPlacementKillAndRemove() throws {
        let limits = CgroupLimits(cpuLimitMilli: 500, cpuRequestMilli: 250, memoryLimit: 64 << 20,
                                  memoryRequest: 32 << 20, pidsMax: 64)
        let replica = try manager.create(name: "r1", limits: limits)
        XCTAssertEqual(replica.paths.count, manager.subtreePaths.count)

        if manager.version == .v1 {
            let cpu = replica.directory(for: "cpu"), memory = replica.directory(for: "memory")
            XCTAssertEqual(value(cpu, "cpu.cfs_period_us"), "100000")
            XCTAssertEqual(value(cpu, "cpu.cfs_quota_us"), "50000")
            XCTAssertEqual(value(cpu, "cpu.shares"), "256")
            XCTAssertEqual(value(memory, "memory.limit_in_bytes"), "67108864")
            if let memsw = value(memory, "memory.memsw.limit_in_bytes") { XCTAssertEqual(memsw, "67108864") }
            XCTAssertEqual(value(memory, "memory.soft_limit_in_bytes"), "33554432")
            XCTAssertEqual(value(replica.directory(for: "pids"), "pids.max"), "64")
        } else {
            let leaf = replica.paths.first
            XCTAssertEqual(value(leaf, "cpu.max"), "50000 100000")
            XCTAssertEqual(value(leaf, "cpu.weight"), "\(CgroupLimits.cpuWeight(shares: 256))")
            XCTAssertEqual(value(leaf, "memory.max"), "67108864")
            XCTAssertEqual(value(leaf, "memory.low"), "33554432")
            XCTAssertEqual(value(leaf, "memory.oom.group"), "1")
            if let swap = value(leaf, "memory.swap.max") { XCTAssertEqual(swap, "0") }
            XCTAssertEqual(value(leaf, "pids.max"), "64")
        }

        // Place a process the way the spawn path does: through the fds.
        let (process, stdin) = try startHeld("exec sleep 1000")
        let handle = try replica.openForSpawn()
        if manager.version == .v1 {
            XCTAssertEqual(handle.cgroupFD, -1)
            XCTAssertEqual(handle.procsFDs.count, replica.paths.count)
            for (fd, dir) in zip(handle.procsFDs, replica.paths) {
                try CgroupFiles.write(fd: fd, "\(process.processIdentifier)", path: dir + "/cgroup.procs")
            }
        } else {
            XCTAssertGreaterThanOrEqual(handle.cgroupFD, 0)
            XCTAssertEqual(handle.procsFDs, [])
            try replica.add(pid: process.processIdentifier)
        }
        handle.close()
        handle.close()  // idempotent
        release(stdin)
        usleep(50_000)
        XCTAssertEqual(replica.pids(), [process.processIdentifier])
        let own = try String(contentsOfFile: "/proc/\(process.processIdentifier)/cgroup", encoding: .utf8)
        XCTAssertTrue(own.contains(manager.subtree + "/r1"), own)

        let usage = replica.usage()
        XCTAssertGreaterThan(usage.memoryBytes, 0)
        XCTAssertFalse(replica.oomKilled())

        // The same name again is a conflict, and leaves the first intact.
        XCTAssertThrowsError(try manager.create(name: "r1", limits: limits)) {
            XCTAssertEqual(($0 as? HearthError)?.code, .conflict, "\($0)")
        }
        XCTAssertEqual(replica.pids(), [process.processIdentifier])

        replica.killAll()
        XCTAssertEqual(replica.pids(), [])
        XCTAssertTrue(waitExit(process))
        XCTAssertEqual(process.terminationReason, Foundation.Process.TerminationReason.uncaughtSignal)
        XCTAssertEqual(process.terminationStatus, SIGKILL)

        try replica.remove()
        for dir in replica.paths { XCTAssertFalse(FileManager.default.fileExists(atPath: dir), dir) }
        try replica.remove()  // already gone: fine
    }

    /// An adopted spare's limit may go up or down from its default; on v1
    /// memsw must stay ≥ the limit at every write.
    func testApplyRaisesAndCutsTheMemoryLimit() throws {
        let replica = try manager.create(name: "r-adopt", limits: CgroupLimits(memoryLimit: 64 << 20))
        defer { replica.killAll(); try? replica.remove() }
        let (limitFile, swapFile) = manager.version == .v1
            ? ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") : ("memory.max", "memory.swap.max")
        let dir = replica.directory(for: "memory")
        for bytes: Int64 in [256 << 20, 32 << 20, 128 << 20] {
            try manager.apply(CgroupLimits(memoryLimit: bytes), to: replica)
            XCTAssertEqual(value(dir, limitFile), "\(bytes)")
            if let swap = value(dir, swapFile) { XCTAssertEqual(swap, manager.version == .v1 ? "\(bytes)" : "0") }
        }
    }

    /// A process placed in a replica cgroup opens the standard devices and
    /// nothing else: v1 through the devices controller (devices.list reads
    /// the allow-list back), v2 through the attached BPF program.
    func testDevicesAllowListIsEnforced() throws {
        let replica = try manager.create(name: "dev", limits: CgroupLimits())
        defer { replica.killAll(); try? replica.remove() }
        if manager.version == .v1 {
            XCTAssertEqual(value(replica.directory(for: "devices"), "devices.list")?.split(separator: "\n").map(String.init),
                           DeviceRule.standard.map(\.description))
        } else {
            XCTAssertEqual(try DeviceFilterLoader.attachedCount(cgroup: replica.paths[0]), 1)
        }
        XCTAssertEqual(try runPlaced(in: replica, deviceScript), "null-ok\nzero-ok\nkmsg-refused\n")
        // The control: outside the replica cgroup the same device opens.
        XCTAssertEqual(try runPlaced(in: nil, deviceScript), "null-ok\nzero-ok\nkmsg-opened\n")
    }

    func testOOMKillIsDetected() throws {
        let replica = try manager.create(name: "oom", limits: CgroupLimits(memoryLimit: 32 << 20))
        defer { replica.killAll(); try? replica.remove() }
        // dd's 256 MiB buffer is filled from /dev/zero: far over the limit.
        let (process, stdin) = try startHeld("exec dd if=/dev/zero of=/dev/null bs=256M count=1")
        try replica.add(pid: process.processIdentifier)
        release(stdin)
        XCTAssertTrue(waitExit(process))
        XCTAssertEqual(process.terminationReason, Foundation.Process.TerminationReason.uncaughtSignal)
        XCTAssertEqual(process.terminationStatus, SIGKILL)
        XCTAssertTrue(replica.oomKilled())
        XCTAssertNotNil(replica.usage().memoryPeak)
    }

    func testWriteErrorNamesFileValueAndErrno() throws {
        let replica = try manager.create(name: "err", limits: CgroupLimits())
        defer { try? replica.remove() }
        let dir = replica.directory(for: "pids") ?? ""
        XCTAssertThrowsError(try CgroupFiles.write(dir + "/pids.max", "lots")) { error in
            XCTAssertEqual("\(error)", "write cgroup \(dir)/pids.max (\"lots\"): EINVAL (Invalid argument)")
        }
    }

    func testCreateRollsBackWhenTheKernelRefusesALimit() throws {
        // v1 refuses a child CFS quota above its parent's; v2 has no such rule.
        guard manager.version == .v1 else { throw XCTSkip("cgroup v1 only: v2 has no parent-quota rule to trip") }
        guard let cpuRoot = manager.subtreePaths.first(where: { $0.contains("/cpu") }) else { return }
        try CgroupFiles.write(cpuRoot + "/cpu.cfs_quota_us", "100000")
        defer { try? CgroupFiles.write(cpuRoot + "/cpu.cfs_quota_us", "-1") }
        XCTAssertThrowsError(try manager.create(name: "big", limits: CgroupLimits(cpuLimitMilli: 2000))) { error in
            XCTAssertEqual("\(error)", "write cgroup \(cpuRoot)/big/cpu.cfs_quota_us (\"200000\"): EINVAL (Invalid argument)")
        }
        for root in manager.subtreePaths { XCTAssertEqual(CgroupFiles.childDirectories(root), [], root) }
        // Same name, acceptable limits: fine.
        try manager.create(name: "big", limits: CgroupLimits(cpuLimitMilli: 1000)).remove()
    }

    func testNestedNamesAndCleanupStale() throws {
        let a = try manager.create(name: "env/a", limits: CgroupLimits(pidsMax: 16))
        let b = try manager.create(name: "b", limits: CgroupLimits())
        let (sleeper, stdin) = try startHeld("exec sleep 1000")
        try a.add(pid: sleeper.processIdentifier)
        release(stdin)
        let (other, stdin2) = try startHeld("exec sleep 1000")
        try b.add(pid: other.processIdentifier)
        release(stdin2)

        // A new manager (a restarted daemon) sweeps what the old one left.
        let successor = try CgroupManager(subtree: manager.subtree)
        try successor.cleanupStale()
        XCTAssertTrue(waitExit(sleeper))
        XCTAssertTrue(waitExit(other))
        for root in successor.subtreePaths {
            XCTAssertTrue(FileManager.default.fileExists(atPath: root), root)
            XCTAssertEqual(CgroupFiles.childDirectories(root), [], root)
        }
        // Idempotent, and prepare() after it works.
        try successor.cleanupStale()
        try successor.prepare()
    }

    func testJoinWarmUpMovesNothing() throws {
        let before = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
        for _ in 0..<3 { manager.prewarmJoin() }  // one runs, the others find it under way
        let deadline = Date().addingTimeInterval(10)
        while manager.isWarmingUp && Date() < deadline { usleep(5_000) }
        XCTAssertFalse(manager.isWarmingUp, "the warm-up write did not finish within 10 s")
        XCTAssertEqual(try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8), before)
        // A placement right after it lands where it should.
        let a = try manager.create(name: "warm", limits: CgroupLimits())
        defer { try? a.remove() }
        manager.prewarmJoin()
        let (sleeper, stdin) = try startHeld("exec sleep 1000")
        try a.add(pid: sleeper.processIdentifier)
        for dir in manager.subtreePaths {
            XCTAssertEqual(value(dir + "/warm", "cgroup.procs"), "\(sleeper.processIdentifier)", dir)
        }
        release(stdin)
        a.killAll()
        XCTAssertTrue(waitExit(sleeper))
        while manager.isWarmingUp && Date() < deadline { usleep(5_000) }
    }

    func testRemovePrunesEmptyParents() throws {
        let a = try manager.create(name: "env/a", limits: CgroupLimits())
        let b = try manager.create(name: "env/b", limits: CgroupLimits())
        try a.remove()
        for root in manager.subtreePaths { XCTAssertEqual(CgroupFiles.childDirectories(root), ["env"]) }
        try b.remove()
        for root in manager.subtreePaths { XCTAssertEqual(CgroupFiles.childDirectories(root), []) }
    }
}

/// The daemon's side of cgroup v2 delegation, on a pure cgroup v2 host (the
/// VM suite, scripts/vm-test): prepare() moves the process and everything
/// else in its cgroup into the `<subtree>-daemon` leaf, enables cpu, memory
/// and pids down to the replicas, and a restart in place finds the same
/// subtree. Root only, with HEARTH_CGROUP_V2_TESTS=1 (it moves the test
/// process, as CgroupRootTests does).
final class CgroupV2Tests: XCTestCase {
    private func words(_ path: String) -> Set<String> {
        Set((CgroupFiles.readIfPresent(path) ?? "").split(whereSeparator: { $0 == " " || $0.isNewline }).map(String.init))
    }

    private func value(_ path: String) -> String? {
        CgroupFiles.readIfPresent(path)?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testPrepareMovesTheCgroupIntoTheDaemonLeafAndEnablesControllers() throws {
        guard getuid() == 0 else { throw XCTSkip("cgroup tests need root") }
        let subtree = "hearth-v2-" + UUID().uuidString.prefix(8).lowercased()
        let manager = try CgroupManager(subtree: subtree)
        guard manager.version == .v2 else { throw XCTSkip("cgroup v2 only: v1 has no leaf to move into") }
        guard ProcessInfo.processInfo.environment["HEARTH_CGROUP_V2_TESTS"] == "1" else {
            throw XCTSkip("cgroup v2 host: set HEARTH_CGROUP_V2_TESTS=1 to let the test move itself into a leaf")
        }
        guard let base = manager.hierarchies.first?.directory, CgroupFiles.exists(base + "/cgroup.type") else {
            throw XCTSkip("cgroup v2: this process is in the root cgroup, which needs no leaf")
        }
        // Another process of this cgroup (a child starts in its parent's):
        // it must move too, or base could not enable controllers.
        let sibling = Foundation.Process()
        sibling.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sibling.arguments = ["1000"]
        try sibling.run()
        defer { sibling.terminate(); sibling.waitUntilExit() }
        XCTAssertTrue(CgroupFiles.procs(base).contains(sibling.processIdentifier))

        try manager.prepare()
        defer { try? manager.removeSubtree() }
        let leaf = base + "/" + subtree + "-daemon"
        let root = base + "/" + subtree
        XCTAssertEqual(CgroupFiles.procs(base), [], "no process may stay in a cgroup that enables controllers")
        XCTAssertTrue(CgroupFiles.procs(leaf).contains(getpid()))
        XCTAssertTrue(CgroupFiles.procs(leaf).contains(sibling.processIdentifier))
        let own = try CgroupFiles.read("/proc/self/cgroup")
        XCTAssertTrue(own.hasSuffix("/" + subtree + "-daemon\n"), own)
        for dir in [base, root] {
            XCTAssertTrue(words(dir + "/cgroup.subtree_control").isSuperset(of: ["cpu", "memory", "pids"]), dir)
        }

        // A daemon restarted in place starts in the leaf: same subtree.
        let again = try CgroupManager(subtree: subtree)
        XCTAssertEqual(again.subtreePaths, [root])
        try again.prepare()
        XCTAssertEqual(Set(CgroupFiles.childDirectories(base)).intersection([subtree, subtree + "-daemon"]).count, 2)

        // A nested replica: controllers on in its parent, every v2 file set.
        let replica = try again.create(name: "env/r", limits: CgroupLimits(
            cpuLimitMilli: 250, cpuRequestMilli: 250, memoryLimit: 32 << 20, memoryRequest: 16 << 20, pidsMax: 8))
        XCTAssertTrue(words(root + "/env/cgroup.subtree_control").isSuperset(of: ["cpu", "memory", "pids"]))
        let dir = root + "/env/r"
        XCTAssertEqual(replica.paths, [dir])
        XCTAssertEqual(value(dir + "/cpu.max"), "25000 100000")
        XCTAssertEqual(value(dir + "/cpu.weight"), "\(CgroupLimits.cpuWeight(shares: 256))")
        XCTAssertEqual(value(dir + "/memory.max"), "33554432")
        XCTAssertEqual(value(dir + "/memory.low"), "16777216")
        XCTAssertEqual(value(dir + "/memory.oom.group"), "1")
        if CgroupFiles.exists(dir + "/memory.swap.max") { XCTAssertEqual(value(dir + "/memory.swap.max"), "0") }
        XCTAssertEqual(value(dir + "/pids.max"), "8")
        try replica.remove()
        XCTAssertEqual(CgroupFiles.childDirectories(root), [], "the empty parent is pruned")
    }
}

/// The v2 code paths that need no controllers, on a hybrid host's
/// controller-less cgroup2 hierarchy (this project's build machines):
/// the missing-controller error, rollback, placement, cgroup.kill, usage
/// and removal. Root only; skipped where there is no such hierarchy.
final class CgroupV2OnHybridTests: XCTestCase {
    var layout: CgroupLayout!
    var root: String!

    override func setUpWithError() throws {
        guard getuid() == 0 else { throw XCTSkip("cgroup tests need root") }
        let mountinfo = try CgroupFiles.read("/proc/self/mountinfo")
        let own = try CgroupFiles.read("/proc/self/cgroup")
        guard try CgroupDiscovery.layout(mountinfo: mountinfo, procCgroup: own).version == .v1,
              let path = CgroupDiscovery.parseProcCgroup(own).v2,
              let mount = CgroupDiscovery.parseMountinfo(mountinfo).first(where: { $0.isV2 && CgroupDiscovery.isPrefix($0.root, of: path) })
        else { throw XCTSkip("hybrid hosts only: needs cgroup v1 controllers beside a controller-less cgroup2 mount") }
        let directory = CgroupDiscovery.join(mount.mountPoint, below: mount.root, path)
        layout = CgroupLayout(version: .v2, hierarchies: [
            CgroupHierarchy(controllers: [], mountPoint: mount.mountPoint, mountRoot: mount.root,
                            cgroupPath: path, directory: directory),
        ])
        root = directory + "/hearth-test-" + UUID().uuidString.prefix(8).lowercased()
    }

    override func tearDown() {
        if let root, FileManager.default.fileExists(atPath: root) {
            CgroupTeardown.killV2(root)
            try? CgroupTeardown.removeDescendants(of: root)
            _ = Glibc.rmdir(root)
        }
    }

    func testMissingControllerIsNamed() throws {
        let available = try CgroupFiles.read(layout.hierarchies[0].directory + "/cgroup.controllers")
        guard !available.contains("pids") else { throw XCTSkip("this cgroup2 hierarchy has controllers") }
        let manager = try CgroupManager(subtree: (root as NSString).lastPathComponent, layout: layout)
        XCTAssertThrowsError(try manager.prepare()) { error in
            XCTAssertEqual((error as? HearthError)?.code, .unavailable)
            XCTAssertTrue("\(error)".hasPrefix(#"cgroup v2: controller "cpu" is not available in \#(self.layout.hierarchies[0].directory)/cgroup.controllers"#), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: root))
    }

    func testCreateRollsBackWhenALimitFileIsMissing() throws {
        let manager = try CgroupManager(subtree: (root as NSString).lastPathComponent, layout: layout)
        try CgroupFiles.mkdir(root)
        XCTAssertThrowsError(try manager.create(name: "r", limits: CgroupLimits())) { error in
            XCTAssertEqual("\(error)", "write cgroup \(self.root!)/r/pids.max (\"4096\"): ENOENT (No such file or directory)")
        }
        XCTAssertEqual(CgroupFiles.childDirectories(root), [])
        // A nested name fails earlier, enabling controllers in the parent;
        // the parent made for it goes too.
        XCTAssertThrowsError(try manager.create(name: "env/r", limits: CgroupLimits())) { error in
            XCTAssertEqual("\(error)", "write cgroup \(self.root!)/env/cgroup.subtree_control (\"+cpu\"): ENOENT (No such file or directory)")
        }
        XCTAssertEqual(CgroupFiles.childDirectories(root), [])
    }

    /// The cgroup v2 device filter, for real, on this host's unified
    /// hierarchy: the kernel runs BPF_CGROUP_DEVICE programs of a process's
    /// v2 cgroup on hybrid hosts too.
    func testDeviceFilterIsEnforced() throws {
        try CgroupFiles.mkdir(root)
        try CgroupFiles.mkdir(root + "/r")
        let replica = ReplicaCgroup(name: "r", version: .v2, paths: [root + "/r"], controllers: [[]], subtreeRoots: [root])
        let manager = try CgroupManager(subtree: (root as NSString).lastPathComponent, layout: layout)
        try manager.restrictDevices(replica, to: DeviceRule.standard)
        XCTAssertEqual(try DeviceFilterLoader.attachedCount(cgroup: root + "/r"), 1)
        XCTAssertEqual(try DeviceFilterLoader.attachedCount(cgroup: root), 0)
        XCTAssertEqual(try runPlaced(in: replica, deviceScript), "null-ok\nzero-ok\nkmsg-refused\n")
        XCTAssertEqual(try runPlaced(in: nil, deviceScript), "null-ok\nzero-ok\nkmsg-opened\n")
        // The attach error names the operation, the cgroup and the errno.
        XCTAssertThrowsError(try DeviceFilterLoader.shared.attach(DeviceRule.standard, toCgroup: root + "/gone")) {
            XCTAssertEqual("\($0)", "open cgroup \(self.root!)/gone: ENOENT (No such file or directory)")
        }
        try replica.remove()  // the program goes with the cgroup
    }

    func testPlacementKillUsageAndRemove() throws {
        try CgroupFiles.mkdir(root)
        try CgroupFiles.mkdir(root + "/r")
        let replica = ReplicaCgroup(name: "r", version: .v2, paths: [root + "/r"], controllers: [[]], subtreeRoots: [root])
        let handle = try replica.openForSpawn()
        XCTAssertGreaterThanOrEqual(handle.cgroupFD, 0)
        XCTAssertEqual(fcntl(handle.cgroupFD, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC)
        handle.close()

        let process = Foundation.Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "read _; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 1000"]
        let stdin = Foundation.Pipe()
        process.standardInput = stdin
        try process.run()
        try replica.add(pid: process.processIdentifier)
        stdin.fileHandleForWriting.write(Data("go\n".utf8))
        XCTAssertEqual(replica.pids(), [process.processIdentifier])
        usleep(200_000)
        XCTAssertGreaterThan(replica.usage().cpuNanos, 0)
        XCTAssertFalse(replica.oomKilled())  // no memory.events without the controller

        replica.killAll()  // cgroup.kill
        XCTAssertEqual(replica.pids(), [])
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        XCTAssertEqual(process.terminationReason, Foundation.Process.TerminationReason.uncaughtSignal)
        XCTAssertEqual(process.terminationStatus, SIGKILL)
        try replica.remove()
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/r"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: root))  // the subtree root is not pruned
    }
}
