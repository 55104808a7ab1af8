"""An SVG bar chart of medians on a log scale, with min–max whiskers: warm
Hearth, cold Hearth and the peers, grouped by workload. Pure: returns text."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple
from xml.sax.saxutils import escape

from hearth_bench.stats import format_seconds

COLORS = {"warm": "#2e7d32", "hearth": "#ef6c00", "peer": "#78909c"}
LEGEND = [("warm", "Hearth, warm task"), ("hearth", "Hearth, cold"), ("peer", "peers, cold")]


def _log_ticks(lo: float, hi: float) -> List[float]:
    """Decades (1 µs, 10 µs, … 10 s) covering lo..hi."""
    a = math.floor(math.log10(lo))
    b = math.ceil(math.log10(hi))
    return [10.0 ** e for e in range(a, b + 1)]


def render(groups: List[Tuple[str, List[Dict[str, Any]]]], title: str, subtitle: str = "",
           width: int = 860) -> str:
    """groups: [(group title, [bar])], bar = {label, kind: warm|hearth|peer,
    stats: {median, min, max, n}}; bars without samples are skipped."""
    bars: List[Tuple[str, Dict[str, Any]]] = []
    for gtitle, items in groups:
        items = [b for b in items if b.get("stats") and b["stats"].get("n", 0) > 0 and b["stats"]["median"] > 0]
        if items:
            bars.append((gtitle, {}))
            bars.extend(("", b) for b in items)
    values = [v for _, b in bars if b for v in (b["stats"]["min"], b["stats"]["max"], b["stats"]["median"]) if v > 0]
    if not values:
        values = [1e-4, 1.0]
    ticks = _log_ticks(min(values), max(values))
    lo, hi = math.log10(ticks[0]), math.log10(ticks[-1])
    if hi <= lo:
        hi = lo + 1
    label_w, right_pad, top, row_h = 250, 90, 64, 22
    plot_w = width - label_w - right_pad
    height = top + row_h * len(bars) + 60

    def x(v: float) -> float:
        return label_w + plot_w * (math.log10(max(v, ticks[0])) - lo) / (hi - lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2:.0f}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>']
    if subtitle:
        out.append(f'<text x="{width / 2:.0f}" y="40" text-anchor="middle" fill="#555">{escape(subtitle)}</text>')
    bottom = top + row_h * len(bars)
    for t in ticks:
        tx = x(t)
        out.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#555">{escape(format_seconds(t))}</text>')
    y = top
    for gtitle, b in bars:
        if not b:
            out.append(f'<text x="8" y="{y + 15}" font-weight="bold">{escape(gtitle)}</text>')
            y += row_h
            continue
        s = b["stats"]
        color = COLORS.get(b.get("kind", "peer"), COLORS["peer"])
        x0, xm = label_w, x(s["median"])
        out.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(b["label"])}</text>')
        out.append(f'<rect x="{x0}" y="{y + 4}" width="{max(xm - x0, 1):.1f}" height="{row_h - 8}" fill="{color}">'
                   f'<title>{escape(b["label"])}: median {escape(format_seconds(s["median"]))}, '
                   f'{escape(format_seconds(s["min"]))} – {escape(format_seconds(s["max"]))}, {s["n"]} runs</title></rect>')
        cy = y + row_h / 2
        out.append(f'<line x1="{x(s["min"]):.1f}" y1="{cy}" x2="{x(s["max"]):.1f}" y2="{cy}" stroke="#222"/>')
        for v in (s["min"], s["max"]):
            out.append(f'<line x1="{x(v):.1f}" y1="{cy - 4}" x2="{x(v):.1f}" y2="{cy + 4}" stroke="#222"/>')
        out.append(f'<text x="{max(xm, x(s["max"])) + 6:.1f}" y="{y + 15}" fill="#222">{escape(format_seconds(s["median"]))}</text>')
        y += row_h
    lx = label_w
    for kind, text in LEGEND:
        out.append(f'<rect x="{lx}" y="{bottom + 30}" width="12" height="12" fill="{COLORS[kind]}"/>')
        out.append(f'<text x="{lx + 16}" y="{bottom + 40}">{escape(text)}</text>')
        lx += 30 + 7 * len(text)
    out.append(f'<text x="{width - 8}" y="{bottom + 40}" text-anchor="end" fill="#555">median; whiskers min – max; log scale</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
