import XCTest

@testable import HearthSandbox

/// The masked-path list and its per-CPU expansion (moby's list).
final class MaskedPathTests: XCTestCase {
    func testCPUListsAndThermalThrottle() {
        XCTAssertEqual(ContainerPaths.cpuList("0-3\n"), [0, 1, 2, 3])
        XCTAssertEqual(ContainerPaths.cpuList("0,2-3,8"), [0, 2, 3, 8])
        XCTAssertEqual(ContainerPaths.cpuList("0"), [0])
        XCTAssertEqual(ContainerPaths.cpuList(""), [])
        XCTAssertEqual(ContainerPaths.cpuList("x,3-1,-2,5"), [5])
        let present: Set<String> = ["/sys/devices/system/cpu/cpu1/thermal_throttle"]
        XCTAssertEqual(ContainerPaths.thermalThrottle(possible: "0-2", exists: { present.contains($0) }),
                       ["/sys/devices/system/cpu/cpu1/thermal_throttle"])
    }

    func testMaskedListFollowsMoby() {
        for path in ["/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                     "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/acpi", "/proc/asound", "/proc/scsi",
                     "/proc/latency_stats", "/proc/timer_stats"] {
            XCTAssertTrue(ContainerPaths.masked.contains(path), path)
        }
        XCTAssertEqual(Set(ContainerPaths.masked).count, ContainerPaths.masked.count)
    }
}
