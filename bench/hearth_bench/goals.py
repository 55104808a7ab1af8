"""The issue's goals, checked against measured results. Goals guide the
work; they are not test assertions."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from hearth_bench.stats import format_bytes, format_seconds


def _timing(results: Dict[str, Any], key: str) -> Optional[Dict[str, float]]:
    for t in results.get("timings", []):
        if t["key"] == key and t.get("stats", {}).get("n"):
            return t["stats"]
    return None


def _goal(goal: str, target: str, measured: Optional[str], met: Optional[bool]) -> Dict[str, Any]:
    return {"goal": goal, "target": target, "measured": measured, "met": met}


def evaluate(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    goals: List[Dict[str, Any]] = []

    sdk = _timing(results, "warm-sdk")
    goals.append(_goal("warm round trip through the SDK, p50", "≤ 300 µs",
                       format_seconds(sdk["median"]) if sdk else None,
                       sdk["median"] <= 300e-6 if sdk else None))
    api = _timing(results, "warm-api")
    goals.append(_goal("(warm round trip through the raw API, p50)", "≤ 300 µs",
                       format_seconds(api["median"]) if api else None,
                       api["median"] <= 300e-6 if api else None))
    disp = _timing(results, "warm-dispatch")
    goals.append(_goal("daemon dispatch, p50", "≤ 100 µs",
                       format_seconds(disp["median"]) if disp else None,
                       disp["median"] <= 100e-6 if disp else None))

    cold = _timing(results, "hearth-cold")
    for key, limit, label in (("bwrap", 1.0, "bwrap"), ("crun", 0.8, "crun")):
        peer = _timing(results, key)
        if cold and peer:
            r = cold["median"] / peer["median"]
            goals.append(_goal(f"cold first task / {label}, same task and rootfs", f"≤ {limit:.1f}",
                               f"{r:.2f} ({format_seconds(cold['median'])} vs {format_seconds(peer['median'])})",
                               r <= limit))
        else:
            goals.append(_goal(f"cold first task / {label}, same task and rootfs", f"≤ {limit:.1f}", None, None))

    warm_trivial = _timing(results, "warm-trivial") or api
    if cold and warm_trivial:
        r = cold["median"] / warm_trivial["median"]
        goals.append(_goal("cold / warm, trivial task", "≥ 100×", f"{r:,.0f}×", r >= 100))
    else:
        goals.append(_goal("cold / warm, trivial task", "≥ 100×", None, None))
    ncold, nwarm = _timing(results, "hearth-cold-numpy"), _timing(results, "warm-numpy")
    if ncold and nwarm:
        r = ncold["median"] / nwarm["median"]
        goals.append(_goal("cold / warm, numpy import", "≥ 500×", f"{r:,.0f}×", r >= 500))
    else:
        goals.append(_goal("cold / warm, numpy import", "≥ 500×", None, None))

    tp = {r["replicas"]: r for r in results.get("throughput", [])}
    two = tp.get(2)
    goals.append(_goal("map form, replica_count 2", "≥ 5,000 tasks/s",
                       f"{two['tasks_per_second']:,.0f} tasks/s" if two else None,
                       two["tasks_per_second"] >= 5000 if two else None))

    idle = next((m for m in results.get("memory", []) if m["key"] == "hearthd-idle"), None)
    goals.append(_goal("hearthd idle RSS", "≤ 30 MiB", format_bytes(idle["bytes"]) if idle else None,
                       idle["bytes"] <= 30 << 20 if idle else None))
    return goals
