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
}
