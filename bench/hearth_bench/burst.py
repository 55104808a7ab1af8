"""Bursts: what scaling between min and max buys against fixed replica
counts, and what concurrency inside a replica buys for I/O-bound tasks.

A burst of `n` tasks of 50 ms goes in as one batch. For each environment
the run records the time to drain it, the replicas it started and the
replica-seconds it held from the burst until `idle` seconds after it
drained (what it costs: a fixed count keeps its replicas idle, a scaling
one lets the extra ones go after its ttl). The replica count is sampled
from the environment's status every 50 ms.
"""
import threading
import time
from typing import Any, Callable, Dict, List

from hearth_bench.client import Client

TASK_SECONDS = 0.05

# (key, label, spec lines): fixed counts as users run them (a TTL of
# minutes), and a scaling environment whose replicas beyond min go after 2 s.
BURST_ENVS = [
    ("fixed-1", "replica_count: 1", ["replica_count: 1", "ttl_seconds: 300"]),
    ("fixed-8", "replica_count: 8", ["replica_count: 8", "ttl_seconds: 300"]),
    ("scaling-1-8", "replicas: {min: 1, max: 8}", ["replicas: {min: 1, max: 8}", "ttl_seconds: 2", "scaledown_ttl: 300"]),
]


class Sampler:
    """Replica counts of one environment over time, on a thread."""

    def __init__(self, status: Callable[[], Dict[str, Any]], period: float = 0.05):
        self.status = status
        self.period = period
        self.samples: List[tuple] = []  # (monotonic, replicas running or starting)
        self.decisions: List[Dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                st = self.status()
            except Exception:
                st = None
            if st is not None:
                sc = st.get("scaling") or {}
                n = sc.get("current", len(st.get("replicas", []))) + sc.get("starting", 0)
                self.samples.append((time.monotonic(), n))
                d = sc.get("lastDecision")
                if d and d != last:
                    self.decisions.append(d)
                    last = d
            self._stop.wait(self.period)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def replica_seconds(self, t0: float, t1: float) -> float:
        total = 0.0
        pts = [(t, n) for t, n in self.samples if t0 <= t <= t1]
        for (ta, na), (tb, _) in zip(pts, pts[1:]):
            total += na * (tb - ta)
        return total

    def settled_after(self, t: float, peak: int) -> Any:
        """Seconds after `t` until the count first fell below `peak` and
        stayed there to the end of the samples; None when it never fell."""
        after = [(ts, n) for ts, n in self.samples if ts >= t]
        if not after or after[-1][1] >= peak:
            return None
        for i in range(len(after)):
            if all(n < peak for _, n in after[i:]) and after[i][1] == after[-1][1]:
                return after[i][0] - t
        return None

    def peak(self) -> int:
        return max((n for _, n in self.samples), default=0)


def burst(api: Any, bundle: str, n: int, idle: float, log: Callable[[str], None]) -> List[Dict[str, Any]]:
    rows = []
    for key, label, spec in BURST_ENVS:
        name = f"bench-burst-{key}"
        api.apply("\n".join([f"name: {name}", "max_queue: 20000"] + spec) + "\n")
        # One task first: every environment starts from one warm replica.
        api.batch(name, "benchmod", "sleep", bundle, [{"seconds": 0}])
        # Its own connection: the batch holds the other one.
        watcher = Client(api.path)
        with Sampler(lambda: watcher.env_status(name)) as s:
            t0, wall0 = time.monotonic(), time.time()
            res = api.batch(name, "benchmod", "sleep", bundle, [{"seconds": TASK_SECONDS}] * n)
            t1 = time.monotonic()
            bad = [r for r in res if r.get("state") != "succeeded"]
            if bad:
                raise RuntimeError(f"burst on {name}: {len(bad)} tasks failed, first: {bad[:1]}")
            time.sleep(idle)
            t2 = time.monotonic()
        watcher.close()
        # Decisions the burst caused (not the warm-up task's start).
        during = [d for d in s.decisions if d.get("at", 0) >= wall0]
        ups = [d for d in during if d.get("direction") == "up"]
        downs = [d for d in during if d.get("direction") == "down"]
        rows.append({"key": key, "label": label, "tasks": n, "drain_seconds": t1 - t0,
                     "replica_seconds": s.replica_seconds(t0, t2), "window_seconds": t2 - t0, "peak": s.peak(),
                     "end": s.samples[-1][1] if s.samples else None,
                     "shrunk_after": s.settled_after(t1, s.peak()),
                     "scale_ups": len(ups), "scale_downs": len(downs),
                     "last_down": downs[-1]["reason"] if downs else None})
        log(f"burst {label}: {n} tasks drained in {t1 - t0:.2f} s, peak {s.peak()} replicas, "
            f"{s.replica_seconds(t0, t2):.1f} replica-s over {t2 - t0:.1f} s")
        api.delete_env(name)
    return rows


def concurrency(api: Any, bundle: str, n: int) -> List[Dict[str, Any]]:
    """tasks/s for an I/O-bound async task (a 50 ms asyncio.sleep) on one
    replica, one task at a time against 16 at once."""
    rows = []
    for k, tasks in ((1, max(20, n // 8)), (16, n)):
        name = f"bench-conc-{k}"
        api.apply(f"name: {name}\nreplica_count: 1\nconcurrency: {k}\nttl_seconds: 300\nmax_queue: 20000\n")
        api.batch(name, "benchmod", "io_wait", bundle, [{"seconds": 0}])
        t0 = time.monotonic()
        res = api.batch(name, "benchmod", "io_wait", bundle, [{"seconds": TASK_SECONDS}] * tasks)
        t = time.monotonic() - t0
        bad = [r for r in res if r.get("state") != "succeeded"]
        if bad:
            raise RuntimeError(f"concurrency on {name}: {len(bad)} tasks failed, first: {bad[:1]}")
        rows.append({"concurrency": k, "tasks": tasks, "seconds": t, "tasks_per_second": tasks / t})
        api.delete_env(name)
    return rows
