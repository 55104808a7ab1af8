import Foundation

/// Which cgroup interface the host offers for cpu, memory and pids.
public enum CgroupVersion: String, Sendable, Equatable, CustomStringConvertible {
    case v1, v2
    public var description: String { rawValue }
}

/// One value for one cgroup control file. `optional` files are skipped when
/// the kernel does not offer them (swap accounting off, for instance).
public struct CgroupFileValue: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var value: String
    public var optional: Bool

    public init(_ file: String, _ value: String, optional: Bool = false) {
        self.file = file
        self.value = value
        self.optional = optional
    }

    /// The v1 hierarchy a file belongs to: the part before the first dot
    /// (`cpu`, `memory`, `pids`).
    public var controller: String { String(file.prefix(while: { $0 != "." })) }

    public var description: String { "\(file)=\(value)\(optional ? " (if present)" : "")" }
}

/// A replica's resource limits, in the units of the environment spec, and
/// their mapping to cgroup files (DESIGN.md, "Cgroups").
public struct CgroupLimits: Sendable, Equatable {
    public static let defaultPidsMax: Int64 = 4096
    /// cpu.max / cpu.cfs_period_us.
    public static let cpuPeriod: Int64 = 100_000
    /// The kernel refuses CFS quotas below 1 ms.
    public static let minCPUQuota: Int64 = 1_000

    public let cpuLimitMilli: Int64?
    public let cpuRequestMilli: Int64?
    public let memoryLimit: Int64?
    public let memoryRequest: Int64?
    /// Zero or less: no limit ("max").
    public let pidsMax: Int64

    /// A request given without a limit becomes the limit too (Flyte's
    /// rule): `requests.cpu: 2` alone caps the replica at 2 CPUs. A limit
    /// without a request leaves the request unset (kernel defaults for
    /// weight and memory protection). Values are not range-checked here;
    /// the spec parser refuses non-positive quantities.
    public init(cpuLimitMilli: Int64? = nil, cpuRequestMilli: Int64? = nil, memoryLimit: Int64? = nil,
                memoryRequest: Int64? = nil, pidsMax: Int64 = CgroupLimits.defaultPidsMax) {
        self.cpuLimitMilli = cpuLimitMilli ?? cpuRequestMilli
        self.cpuRequestMilli = cpuRequestMilli
        self.memoryLimit = memoryLimit ?? memoryRequest
        self.memoryRequest = memoryRequest
        self.pidsMax = pidsMax
    }

    /// CFS quota in microseconds per `cpuPeriod` (1000m = one full period).
    public static func cpuQuota(milli: Int64) -> Int64 {
        max(milli.multipliedReportingOverflow(by: 100).overflow ? Int64.max : milli * 100, minCPUQuota)
    }

    /// cgroup v1 `cpu.shares` for a CPU request: 1024 per CPU, within the
    /// kernel's range 2...262144.
    public static func shares(milli: Int64) -> UInt64 {
        let raw = milli.multipliedReportingOverflow(by: 1024).overflow ? Int64.max : milli * 1024 / 1000
        return UInt64(min(max(raw, 2), 262_144))
    }

    /// cgroup v2 `cpu.weight` for v1 shares, with the quadratic mapping (in
    /// log2 space) that crun and runc use, so that the v1 minimum, default
    /// and maximum land on the v2 ones: 2 → 1, 1024 → 100, 262144 → 10000.
    /// Rounded up as they do (512 → 59), so a spec gets the same weight here
    /// as under those runtimes.
    public static func cpuWeight(shares: UInt64) -> UInt64 {
        if shares <= 2 { return 1 }
        if shares >= 262_144 { return 10_000 }
        let l = log2(Double(shares))
        let exponent = (l * l + 125 * l) / 612.0 - 7.0 / 34.0
        return UInt64(min(max(ceil(pow(10.0, exponent)), 1), 10_000))
    }

    /// Files to write in each v1 hierarchy, in order. The period goes before
    /// the quota; the kernel keeps memory.memsw.limit_in_bytes ≥
    /// memory.limit_in_bytes at every step, so memsw goes after the limit
    /// when it comes down (a new cgroup: from unlimited) and before it when
    /// `raisingMemory` (an adopted spare given a limit above its default).
    public func v1Files(raisingMemory: Bool = false) -> [CgroupFileValue] {
        var files = [CgroupFileValue]()
        if let cpu = cpuLimitMilli {
            files.append(CgroupFileValue("cpu.cfs_period_us", "\(Self.cpuPeriod)"))
            files.append(CgroupFileValue("cpu.cfs_quota_us", "\(Self.cpuQuota(milli: cpu))"))
        }
        if let request = cpuRequestMilli {
            files.append(CgroupFileValue("cpu.shares", "\(Self.shares(milli: request))"))
        }
        if let memory = memoryLimit {
            let limit = CgroupFileValue("memory.limit_in_bytes", "\(memory)")
            // Equal to the memory limit: no swap on top of it.
            let memsw = CgroupFileValue("memory.memsw.limit_in_bytes", "\(memory)", optional: true)
            files += raisingMemory ? [memsw, limit] : [limit, memsw]
        }
        if let request = memoryRequest {
            files.append(CgroupFileValue("memory.soft_limit_in_bytes", "\(request)"))
        }
        files.append(CgroupFileValue("pids.max", pidsMax > 0 ? "\(pidsMax)" : "max"))
        return files
    }

    /// Files to write in the v2 leaf, in order.
    public func v2Files() -> [CgroupFileValue] {
        var files = [CgroupFileValue]()
        if let cpu = cpuLimitMilli {
            files.append(CgroupFileValue("cpu.max", "\(Self.cpuQuota(milli: cpu)) \(Self.cpuPeriod)"))
        }
        if let request = cpuRequestMilli {
            files.append(CgroupFileValue("cpu.weight", "\(Self.cpuWeight(shares: Self.shares(milli: request)))"))
        }
        if let memory = memoryLimit {
            files.append(CgroupFileValue("memory.max", "\(memory)"))
            // Absent without swap support; there is nothing to limit then.
            files.append(CgroupFileValue("memory.swap.max", "0", optional: true))
            // An OOM kill takes the whole replica down rather than leaving
            // hearth-init without its worker.
            files.append(CgroupFileValue("memory.oom.group", "1"))
        }
        if let request = memoryRequest {
            files.append(CgroupFileValue("memory.low", "\(request)"))
        }
        files.append(CgroupFileValue("pids.max", pidsMax > 0 ? "\(pidsMax)" : "max"))
        return files
    }

    public func files(for version: CgroupVersion, raisingMemory: Bool = false) -> [CgroupFileValue] {
        version == .v1 ? v1Files(raisingMemory: raisingMemory) : v2Files()
    }
}
