/// Kubernetes-style resource quantities: cpu `2`, `0.5`, `500m`; memory
/// `300Mi`, `1Gi`, `512M`, `1e9`, plain bytes.
public enum Quantity {
    /// CPU in millicores: `2` → 2000, `0.5` → 500, `500m` → 500.
    public static func parseCPU(_ text: String, field: String = "cpu") throws -> Int64 {
        let s = text.trimmingSpaces()
        guard !s.isEmpty else { throw HearthError.invalid("\(field): empty quantity; expected cores such as 2, 0.5 or 500m") }
        if s.hasSuffix("m") {
            let digits = String(s.dropLast())
            guard let v = Int64(digits), v > 0, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else {
                throw HearthError.invalid("\(field): \"\(text)\" is not a CPU quantity; millicores must be a positive whole number such as 500m")
            }
            return v
        }
        guard let d = parseDecimal(s), d > 0 else {
            throw HearthError.invalid("\(field): \"\(text)\" is not a CPU quantity; expected a positive number of cores such as 2, 0.5 or 500m")
        }
        let milli = d * 1000
        guard milli >= 1, milli < 1e12 else {
            throw HearthError.invalid("\(field): \"\(text)\" is out of range; the smallest CPU quantity is 1m")
        }
        return Int64(milli.rounded())
    }

    private static let binary: [(String, Int64)] = [
        ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("Pi", 1 << 50), ("Ei", 1 << 60),
    ]
    private static let decimal: [(String, Int64)] = [
        ("k", 1_000), ("K", 1_000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000), ("E", 1_000_000_000_000_000_000),
    ]

    /// Memory in bytes: `300Mi` → 314572800, `1G` → 1000000000.
    public static func parseMemory(_ text: String, field: String = "memory") throws -> Int64 {
        let s = text.trimmingSpaces()
        let rule = "expected bytes with an optional suffix Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000), such as 300Mi or 1G"
        guard !s.isEmpty else { throw HearthError.invalid("\(field): empty quantity; \(rule)") }
        var number = Substring(s)
        var multiplier: Int64 = 1
        if let (suffix, m) = binary.first(where: { s.hasSuffix($0.0) }) {
            number = s.dropLast(suffix.count); multiplier = m
        } else if let (suffix, m) = decimal.first(where: { s.hasSuffix($0.0) }) {
            number = s.dropLast(suffix.count); multiplier = m
        }
        guard let d = parseDecimal(String(number)), d > 0 else {
            throw HearthError.invalid("\(field): \"\(text)\" is not a memory quantity; \(rule)")
        }
        let bytes = d * Double(multiplier)
        guard bytes >= 1, bytes < 9.2e18 else {
            throw HearthError.invalid("\(field): \"\(text)\" is out of range")
        }
        return Int64(bytes.rounded(.up))
    }

    /// Renders bytes the way a user wrote them where exact: 67108864 → "64Mi".
    public static func formatMemory(_ bytes: Int64) -> String {
        for (suffix, m) in binary.reversed() where bytes >= m && bytes % m == 0 {
            return "\(bytes / m)\(suffix)"
        }
        return "\(bytes)"
    }

    /// Renders millicores: 500 → "500m", 2000 → "2".
    public static func formatCPU(_ milli: Int64) -> String {
        milli % 1000 == 0 ? "\(milli / 1000)" : "\(milli)m"
    }

    /// Strict decimal: digits, one optional point, optional exponent (`1e3`).
    static func parseDecimal(_ s: String) -> Double? {
        var sawDigit = false, sawPoint = false, sawExp = false, prevExp = false
        for c in s {
            if c.isASCII && c.isNumber { sawDigit = true; prevExp = false; continue }
            if c == "." && !sawPoint && !sawExp { sawPoint = true; continue }
            if (c == "e" || c == "E") && sawDigit && !sawExp { sawExp = true; prevExp = true; continue }
            if (c == "+" || c == "-") && prevExp { prevExp = false; continue }
            return nil
        }
        guard sawDigit, !prevExp else { return nil }
        return Double(s)
    }
}

extension String {
    /// Drops leading and trailing spaces and tabs (no Foundation needed).
    public func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
