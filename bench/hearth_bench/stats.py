"""Summaries of timing samples: median, p99, min, max and the count."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest
    ranks, as numpy's default does. Raises ValueError on no samples."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    s = sorted(samples)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(samples: Iterable[float]) -> Dict[str, float]:
    """{n, median, p99, min, max, mean} of the samples; {"n": 0} for none."""
    s = sorted(samples)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "median": percentile(s, 50),
        "p99": percentile(s, 99),
        "min": s[0],
        "max": s[-1],
        "mean": sum(s) / len(s),
    }


def ratio(a: Optional[Dict[str, float]], b: Optional[Dict[str, float]], key: str = "median") -> Optional[float]:
    """a[key] / b[key], or None where either is missing or b is zero."""
    if not a or not b or a.get("n", 0) == 0 or b.get("n", 0) == 0:
        return None
    if not b.get(key):
        return None
    return a[key] / b[key]


def histogram_quantile(q: float, buckets: List[tuple]) -> Optional[float]:
    """Prometheus' histogram_quantile: q in 0..1 over cumulative buckets
    [(upper bound, count)], sorted by bound, the last one +Inf. Linear
    interpolation inside the bucket; None when the histogram is empty.
    A quantile in the +Inf bucket returns the highest finite bound."""
    if not buckets:
        return None
    buckets = sorted(buckets, key=lambda b: b[0])
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def format_seconds(seconds: Optional[float]) -> str:
    """A duration with a unit that keeps three significant digits or so:
    "87 µs", "1.25 ms", "312 ms", "2.41 s"; "–" for None."""
    if seconds is None:
        return "–"
    if seconds < 0:
        return "-" + format_seconds(-seconds)
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 10e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def format_bytes(n: Optional[float]) -> str:
    if n is None:
        return "–"
    if abs(n) < 1024:
        return f"{n:.0f} B"
    if abs(n) < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    if abs(n) < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.2f} GiB"
