/// Durations as flags take them: `90s`, `30m`, `1h`, `1h30m`, or a plain
/// number of seconds.
public enum DurationText {
    public static func parse(_ text: String, field: String) throws -> Duration {
        let rule = "use a positive duration such as 90s, 30m, 1h or 1h30m (or seconds)"
        let s = text.trimmingSpaces()
        if let seconds = Int64(s), seconds > 0 { return .seconds(seconds) }
        var total: Int64 = 0
        var number: Int64?
        for c in s {
            if let digit = c.wholeNumberValue, c.isASCII {
                let (m, o1) = (number ?? 0).multipliedReportingOverflow(by: 10)
                let (v, o2) = m.addingReportingOverflow(Int64(digit))
                guard !o1, !o2 else { throw HearthError.invalid("\(field): \"\(text)\" is too long; \(rule)") }
                number = v
                continue
            }
            let unit: Int64
            switch c {
            case "h": unit = 3600
            case "m": unit = 60
            case "s": unit = 1
            default: throw HearthError.invalid("\(field): \"\(text)\" is not a duration; \(rule)")
            }
            guard let n = number else { throw HearthError.invalid("\(field): \"\(text)\" is not a duration; \(rule)") }
            let (v, o1) = n.multipliedReportingOverflow(by: unit)
            let (t, o2) = total.addingReportingOverflow(v)
            guard !o1, !o2 else { throw HearthError.invalid("\(field): \"\(text)\" is too long; \(rule)") }
            total = t
            number = nil
        }
        guard number == nil, total > 0 else { throw HearthError.invalid("\(field): \"\(text)\" is not a duration; \(rule)") }
        return .seconds(total)
    }

    /// A whole-second duration as `parse` takes it: `1h30m`, `24h`, `90s`.
    public static func format(_ d: Duration) -> String {
        var left = max(0, d.components.seconds)
        if left == 0 { return "0s" }
        var out = ""
        for (unit, name) in [(Int64(3600), "h"), (60, "m"), (1, "s")] where left >= unit {
            out += "\(left / unit)\(name)"
            left %= unit
        }
        return out
    }
}

/// `hearthd --task-retention AGE[,COUNT]`: how long finished tasks' records
/// are kept on disk, and at most how many; `0`: none are kept.
public struct TaskRetention: Sendable, Equatable {
    public var maxAge: Duration
    public var maxCount: Int
    public static let `default` = TaskRetention(maxAge: .seconds(86400), maxCount: 100_000)
    public static let off = TaskRetention(maxAge: .zero, maxCount: 0)
    public var isOff: Bool { maxCount == 0 || maxAge <= .zero }

    public init(maxAge: Duration, maxCount: Int) { self.maxAge = maxAge; self.maxCount = maxCount }

    public static func parse(_ text: String, field: String = "--task-retention") throws -> TaskRetention {
        let s = text.trimmingSpaces()
        if s == "0" { return .off }
        let parts = s.split(separator: ",", omittingEmptySubsequences: false)
        let rule = "give AGE[,COUNT] such as 24h or 24h,100000 (0: keep no records)"
        guard parts.count <= 2, let agePart = parts.first else {
            throw HearthError.invalid("\(field): \"\(text)\" is not a retention; \(rule)")
        }
        let age = try DurationText.parse(String(agePart), field: field)
        var count = TaskRetention.default.maxCount
        if parts.count == 2 {
            guard let n = Int(String(parts[1]).trimmingSpaces()), n > 0, n <= 100_000_000 else {
                throw HearthError.invalid("\(field): \"\(parts[1])\" is not a count of tasks; \(rule), COUNT from 1 to 100000000")
            }
            count = n
        }
        return TaskRetention(maxAge: age, maxCount: count)
    }
}
