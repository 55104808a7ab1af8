"""The Markdown report, from the results dictionary the runner builds (and
writes as JSON). Pure: no I/O, so it is unit-tested on made-up results."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from hearth_bench.stats import format_bytes, format_seconds


def _cell(s: Optional[Dict[str, float]], key: str) -> str:
    if not s or s.get("n", 0) == 0:
        return "–"
    return format_seconds(s.get(key))


def _range(s: Optional[Dict[str, float]]) -> str:
    if not s or s.get("n", 0) == 0:
        return "–"
    return f"{format_seconds(s['min'])} – {format_seconds(s['max'])}"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(headers: List[str], rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_escape(c) for c in r) + " |")
    return "\n".join(out)


def machine_line(m: Dict[str, Any]) -> str:
    parts = [m.get("cpu_model") or "?", f"{m.get('cpus', '?')} CPUs", format_bytes(m.get("memory_bytes")) + " RAM",
             f"kernel {m.get('kernel', '?')}", m.get("os") or "?", f"cgroups {m.get('cgroup_layout', '?')}"]
    if m.get("load_average") is not None:
        parts.append(f"load average {m['load_average']:.1f} at the start")
    return ", ".join(str(p) for p in parts)


def timings_table(timings: List[Dict[str, Any]], baseline: Optional[str] = None) -> str:
    base = next((t for t in timings if t["key"] == baseline), None) if baseline else None
    headers = ["what", "median", "p99", "min – max", "runs"]
    if base:
        headers.append(f"vs {base['label']}")
    rows = []
    for t in timings:
        s = t.get("stats")
        if t.get("unavailable"):
            row = [t["label"], f"not available: {t['unavailable']}", "–", "–", "0"]
            rows.append(row + (["–"] if base else []))
            continue
        row = [t["label"], _cell(s, "median"), _cell(s, "p99"), _range(s), str(s.get("n", 0) if s else 0)]
        if base:
            bs = base.get("stats")
            if t["key"].startswith("warm"):
                row.append("–")
            elif s and bs and s.get("n") and bs.get("n") and bs.get("median"):
                row.append(f"{s['median'] / bs['median']:.2f}×")
            else:
                row.append("–")
        rows.append(row)
    return table(headers, rows)


def goals_table(goals: List[Dict[str, Any]]) -> str:
    rows = []
    for g in goals:
        met = g.get("met")
        mark = "✅ met" if met is True else ("❌ missed" if met is False else "– not measured")
        rows.append([g["goal"], g["target"], g.get("measured") or "–", mark])
    return table(["goal", "target", "measured", ""], rows)


def render(results: Dict[str, Any], chart_name: Optional[str] = "bench.svg") -> str:
    """The whole report: machine, goals, then one section per measurement."""
    m = results.get("machine", {})
    lines: List[str] = []
    lines.append(f"# Hearth benchmark ({results.get('mode', 'full')} run, {results.get('date', '?')})")
    lines.append("")
    lines.append(f"Machine: {machine_line(m)}.")
    lines.append("")
    if chart_name:
        lines.append(f"![cold vs warm vs peers, log scale]({chart_name})")
        lines.append("")
    if results.get("goals"):
        lines.append("## Goals")
        lines.append("")
        lines.append(goals_table(results["goals"]))
        lines.append("")
    timings = results.get("timings", [])
    sections = [
        ("warm", "Warm task (ready replica, trivial task)", None),
        ("cold", "Cold first task beside the peers (same rootfs, same task, cold each run)", "bwrap"),
        ("numpy", "Realistic imports: `import numpy` (python3-numpy from Debian)", "bwrap-numpy"),
        ("build", "Image build of a small ImageSpec (`packages: [six]`, one command; `POST /v1/images/build`)", None),
        ("pull", "Image pull: a three-layer image from a registry on 127.0.0.1", "pull-skopeo"),
    ]
    for group, title, baseline in sections:
        rows = [t for t in timings if t.get("group") == group]
        if not rows:
            continue
        lines.append(f"## {title}")
        lines.append("")
        lines.append(timings_table(rows, baseline if any(t["key"] == baseline for t in rows) else None))
        lines.append("")
    phases = results.get("phases")
    if phases:
        lines.append("## Where a cold start goes")
        lines.append("")
        lines.append(table(["phase", "median", "p99", "min – max", "runs"],
                           [[p["label"], _cell(p["stats"], "median"), _cell(p["stats"], "p99"), _range(p["stats"]),
                             str(p["stats"].get("n", 0))] for p in phases]))
        lines.append("")
    tp = results.get("throughput")
    if tp:
        lines.append("## Throughput (batch form, trivial task)")
        lines.append("")
        lines.append(table(["replica_count", "tasks", "seconds", "tasks/s"],
                           [[str(r["replicas"]), str(r["tasks"]), f"{r['seconds']:.2f}", f"{r['tasks_per_second']:,.0f}"]
                            for r in tp]))
        lines.append("")
    bu = results.get("burst")
    if bu:
        lines.append(f"## Burst: {bu[0]['tasks']} tasks of 50 ms at once")
        lines.append("")
        lines.append("Replica-seconds: replicas held from the burst until a few seconds after it drained "
                     "(what each costs); the fixed counts keep theirs for their TTL, the scaling one lets "
                     "those beyond min go after its ttl.")
        lines.append("")
        lines.append(table(["environment", "drain (s)", "tasks/s", "peak replicas", "replicas at the end",
                            "back down after the drain", "replica-seconds", "scale decisions (up / down)"],
                           [[f"`{r['label']}`", f"{r['drain_seconds']:.2f}", f"{r['tasks'] / r['drain_seconds']:,.0f}",
                             str(r["peak"]), str(r["end"]),
                             "-" if r.get("shrunk_after") is None else f"{r['shrunk_after']:.1f} s",
                             f"{r['replica_seconds']:.1f} over {r['window_seconds']:.1f} s",
                             f"{r['scale_ups']} / {r['scale_downs']}"] for r in bu]))
        lines.append("")
    cc = results.get("concurrency")
    if cc:
        lines.append("## Concurrency inside one replica (async task, 50 ms `asyncio.sleep`)")
        lines.append("")
        lines.append(table(["concurrency", "tasks", "seconds", "tasks/s"],
                           [[str(r["concurrency"]), str(r["tasks"]), f"{r['seconds']:.2f}",
                             f"{r['tasks_per_second']:,.0f}"] for r in cc]))
        lines.append("")
    mem = results.get("memory")
    if mem:
        lines.append("## Memory")
        lines.append("")
        lines.append(table(["what", "value"], [[r["label"], format_bytes(r["bytes"])] for r in mem]))
        lines.append("")
    notes = results.get("notes")
    if notes:
        lines.append("## Notes")
        lines.append("")
        for n in notes:
            lines.append(f"- {n}")
        lines.append("")
    return "\n".join(lines)


def readme_block(results: Dict[str, Any], chart_path: str) -> str:
    """The README's excerpt: where and when, the chart, the goals and the
    cold/warm table."""
    m = results.get("machine", {})
    lines = [f"Latest {results.get('mode', 'full')} run: {results.get('date', '?')}, {machine_line(m)}.", "",
             f"![cold vs warm vs peers, log scale]({chart_path})", ""]
    if results.get("goals"):
        lines += [goals_table(results["goals"]), ""]
    rows = [t for t in results.get("timings", []) if t.get("group") in ("warm", "cold")
            and t["key"] in ("warm-sdk", "warm-api", "warm-dispatch", "hearth-spare", "hearth-cold", "hearth-userns",
                             "hearth-sandbox",
                             "crun", "runc", "bwrap", "host")]
    if rows:
        lines += [timings_table(rows, "bwrap" if any(t["key"] == "bwrap" for t in rows) else None), ""]
    return "\n".join(lines)


def replace_block(text: str, block: str, begin: str = "<!-- bench:begin -->", end: str = "<!-- bench:end -->") -> str:
    """text with what lies between the markers replaced by block; ValueError
    when the markers are missing or out of order."""
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {begin} … {end} not found in order")
    return text[:i + len(begin)] + "\n" + block.rstrip("\n") + "\n" + text[j:]
