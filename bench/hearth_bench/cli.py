"""scripts/bench: argument parsing, the private work directory, output files."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List, Tuple

from hearth_bench import chart, goals, report
from hearth_bench.runner import Runner, log

CHART_ROWS = {
    "trivial task: `json.dumps(1 + 1)`": [
        ("warm-sdk", "warm"), ("warm-api", "warm"), ("hearth-spare", "hearth"), ("hearth-cold", "hearth"),
        ("hearth-sandbox", "hearth"),
        ("crun", "peer"), ("runc", "peer"), ("bwrap", "peer"), ("host", "peer")],
    "with `import numpy`": [
        ("warm-numpy", "warm"), ("hearth-spare-preload-numpy", "hearth"), ("hearth-spare-numpy", "hearth"),
        ("hearth-cold-numpy", "hearth"),
        ("hearth-sandbox-numpy", "hearth"),
        ("crun-numpy", "peer"), ("runc-numpy", "peer"), ("bwrap-numpy", "peer"), ("host-numpy", "peer")],
}
SHORT = {"warm-sdk": "Hearth warm, SDK", "warm-api": "Hearth warm, API", "warm-numpy": "Hearth warm",
         "hearth-spare": "Hearth cold, spare adopted", "hearth-cold": "Hearth cold, from scratch",
         "hearth-spare-preload": "Hearth cold, preloaded spare",
         "hearth-sandbox": "Hearth sandbox",
         "crun": "crun (no cgroups)", "runc": "runc", "bwrap": "bwrap", "host": "host python3"}


def chart_groups(results: Dict[str, Any]) -> List[Tuple[str, List[Dict[str, Any]]]]:
    by_key = {t["key"]: t for t in results.get("timings", [])}
    groups = []
    for title, rows in CHART_ROWS.items():
        bars = []
        for key, kind in rows:
            t = by_key.get(key)
            if t and t.get("stats"):
                base = key.replace("-numpy", "") if key != "warm-numpy" else key
                bars.append({"label": SHORT.get(base, t["label"]), "kind": kind, "stats": t["stats"]})
        groups.append((title, bars))
    return groups


def write_outputs(results: Dict[str, Any], out: str, chart_name: str = "bench.svg", md_name: str = "bench.md",
                  json_name: str = "results.json") -> str:
    os.makedirs(out, exist_ok=True)
    m = results.get("machine", {})
    subtitle = f"{m.get('cpus', '?')} CPUs, kernel {m.get('kernel', '?')}, {results.get('date', '')}"
    svg = chart.render(chart_groups(results), "Hearth: cold vs warm vs peers", subtitle)
    md = report.render(results, chart_name)
    with open(os.path.join(out, json_name), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, chart_name), "w") as f:
        f.write(svg)
    with open(os.path.join(out, md_name), "w") as f:
        f.write(md)
    return md


def main(argv: List[str] = sys.argv[1:]) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer runs: under two minutes, for CI smoke runs")
    ap.add_argument("--out", default=None, help="output directory (default: bench-out/ in the repository)")
    ap.add_argument("--publish", action="store_true",
                    help="also write docs/bench/latest.{md,svg,json}, which the README shows")
    ap.add_argument("--keep-work", action="store_true", help="keep the private daemon's directory (debugging)")
    args = ap.parse_args(argv)
    repo = os.environ.get("HEARTH_REPO") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    bin_dir = os.environ.get("HEARTH_BIN") or os.path.join(repo, ".build", "release")
    out = os.path.abspath(args.out or os.path.join(repo, "bench-out"))
    if os.geteuid() != 0:
        print("scripts/bench must run as root (hearthd, crun, runc and bwrap need it)", file=sys.stderr)
        return 1
    for exe in ("hearthd", "hearth-init"):
        if not os.access(os.path.join(bin_dir, exe), os.X_OK):
            print(f"scripts/bench: {bin_dir}/{exe} is missing: run scripts/setup, or set HEARTH_BIN", file=sys.stderr)
            return 1
    work = tempfile.mkdtemp(prefix="hearth-bench.", dir="/var/tmp")
    try:
        # Private copies: a rebuild of .build/release during the run must not change what is measured.
        own_bin = os.path.join(work, "bin")
        os.makedirs(own_bin)
        for exe in ("hearthd", "hearth-init"):
            shutil.copy2(os.path.join(bin_dir, exe), own_bin)
        runner = Runner(own_bin, repo, work, args.quick)
        results = runner.run()
    finally:
        if args.keep_work:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["goals"] = goals.evaluate(results)
    md = write_outputs(results, out)
    if args.publish:
        docs = os.path.join(repo, "docs", "bench")
        write_outputs(results, docs, "latest.svg", "latest.md", "latest.json")
        readme = os.path.join(repo, "README.md")
        with open(readme) as f:
            text = f.read()
        with open(readme, "w") as f:
            f.write(report.replace_block(text, report.readme_block(results, "docs/bench/latest.svg")))
    print(md)
    log(f"wrote {out}/results.json, bench.md, bench.svg ({results.get('elapsed_seconds')} s)")
    return 0
