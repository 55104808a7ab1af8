/// A Duration in the units logs, snapshots and metrics use.
extension Duration {
    public var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }

    public var milliseconds: Double { seconds * 1000 }

    /// Whole nanoseconds, truncated; saturating (a timeout of years is still one).
    public var nanoseconds: Int64 {
        let (s, overflow) = components.seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return components.seconds < 0 ? .min : .max }
        let (n, overflow2) = s.addingReportingOverflow(components.attoseconds / 1_000_000_000)
        return overflow2 ? .max : n
    }

    /// Whole microseconds, truncated.
    public var microseconds: Int64 { components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000 }
}

/// Retry delays that grow, so that something failing over and over (a
/// replica that cannot start, a spare that keeps dying) never spins:
/// 0.5 s, 1 s, 2 s, … up to a minute.
public enum Backoff {
    public static func delay(afterFailures failures: Int, first: Double = 0.5, cap: Double = 60) -> Duration {
        let exponent = Double(max(0, min(failures - 1, 30)))
        let seconds = min(cap, first * pow2(exponent))
        return .milliseconds(Int64(seconds * 1000))
    }

    private static func pow2(_ n: Double) -> Double {
        var v = 1.0
        for _ in 0..<Int(n) { v *= 2 }
        return v
    }
}
