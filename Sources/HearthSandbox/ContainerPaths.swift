import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import Synchronization

/// The masked and read-only paths Docker applies (moby's
/// daemon/pkg/oci/defaults.go, checked December 2026).
enum ContainerPaths {
    /// Masked: a file reads as /dev/null, a directory as an empty
    /// read-only tmpfs. /proc/interrupts and each CPU's thermal_throttle
    /// leak host activity and let a replica wear the host's CPUs
    /// (GHSA-6fw5-f8r9-fgfm); powercap leaks energy counters (GHSA-jq35-85cj-fj4p).
    static let maskedFixed = [
        "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
        "/sys/devices/virtual/powercap", "/sys/firmware",
    ]

    /// The fixed list plus `/sys/devices/system/cpu/cpu<N>/thermal_throttle`
    /// for every possible CPU where the host has one (expanded here, as
    /// moby does, because the plan holds plain paths). Computed once: CPUs
    /// that can appear are in `possible` already.
    static let masked: [String] = maskedFixed + thermalThrottle(
        possible: (try? String(contentsOfFile: "/sys/devices/system/cpu/possible", encoding: .utf8)) ?? "",
        exists: { access($0, F_OK) == 0 })

    static func thermalThrottle(possible: String, exists: (String) -> Bool) -> [String] {
        cpuList(possible).map { "/sys/devices/system/cpu/cpu\($0)/thermal_throttle" }.filter(exists)
    }

    /// A kernel CPU list (`0-3,8,10-11`); malformed parts are skipped, and
    /// a range is bounded so a corrupt file cannot make a huge list.
    static func cpuList(_ text: String) -> [Int] {
        var cpus = [Int]()
        for part in text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            let bounds = part.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false).map { Int($0) }
            guard let first = bounds.first ?? nil, first >= 0 else { continue }
            let last = bounds.count == 2 ? (bounds[1] ?? -1) : first
            guard last >= first, last - first < 65536 else { continue }
            cpus += Array(first...last)
        }
        return cpus
    }

    static let readOnly = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    /// Where hearth-init (and later the worker) is mounted read-only.
    static let runtimeMount = "/.hearth"
    static let runtimeMountPoints = ["worker", "code"]
}
