"""Pre-started spare replicas (`hearthd --spares N`): reading `GET /v1/spares`,
waiting for a spare to be ready, telling an adopted first task from one whose
replica was built from scratch, and the report's notes about them. Pure but
for the clock and sleep passed in, so it is unit-tested with fakes."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

# How long the bench waits for a ready spare before it skips a run: a replica
# builds in tens of milliseconds, so 10 s means something is wrong, not slow.
WAIT_SECONDS = 10.0
# After this many waits in a row time out, the daemon is not refilling: the
# remaining runs are skipped without waiting, so the bench cannot stall.
GIVE_UP_AFTER = 3

# The phase key an adopted replica's first task reports (alone) in coldPhases.
ADOPT_PHASE = "spare_adopt"


def ready(status: Optional[Mapping[str, Any]], image: str, network: Optional[str] = None,
          preload: Optional[List[str]] = None) -> bool:
    """Whether `GET /v1/spares` shows at least one ready spare for image
    (and network, when given) whose key preloads exactly `preload` (none
    by default: a preloaded spare is not what a plain environment adopts)."""
    if not status or not status.get("enabled", True):
        return False
    for key in status.get("keys") or []:
        if key.get("image") != image or (key.get("preload") or None) != (preload or None):
            continue
        if network is not None and key.get("network") != network:
            continue
        if (key.get("ready") or 0) >= 1:
            return True
    return False


def wait_ready(status_fn: Callable[[], Mapping[str, Any]], image: str, timeout: float = WAIT_SECONDS,
               poll: float = 0.01, network: Optional[str] = None,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
               preload: Optional[List[str]] = None) -> bool:
    """Polls status_fn until a spare for image is ready: True, or False once
    timeout seconds have passed. Asks at least once, even with timeout 0.
    Errors from status_fn (an HTTP error: a daemon without spares) propagate."""
    deadline = clock() + timeout
    while True:
        if ready(status_fn(), image, network, preload):
            return True
        if clock() >= deadline:
            return False
        sleep(poll)


def adopted(snap: Mapping[str, Any]) -> bool:
    """Whether a first task ran on an adopted spare: its coldPhases carry
    spare_adopt (a replica built from scratch reports the build phases)."""
    return ADOPT_PHASE in (snap.get("coldPhases") or {})


@dataclass
class Runs:
    """What became of one workload's spare-daemon runs (warm-up excluded)."""
    adopted: int = 0        # measured: the first task adopted a spare
    not_adopted: int = 0    # measured, but built from scratch: left out of the row
    skipped: int = 0        # not measured: no ready spare within the wait
    late_refill: int = 0    # measured, but the refill was not ready within the wait afterwards

    def as_dict(self) -> Dict[str, int]:
        return asdict(self)


WORKLOADS = {"hearth-spare": "trivial task", "hearth-spare-numpy": "`import numpy`",
             "hearth-spare-preload-numpy": "`import numpy`, environment with `preload: [numpy]`"}


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def notes(runs: Mapping[str, Mapping[str, int]], wait: float = WAIT_SECONDS) -> List[str]:
    """The report's notes: what a spare is and how the bench measures it, then
    one line per workload saying how many runs adopted a spare, how many did
    not (left out of the row) and how many were skipped. Nothing when the
    spare daemon never ran."""
    if not runs:
        return []
    out = [
        "Spares (hearthd's default, `--spares 1`): once an environment has started a replica, the daemon keeps one "
        "pre-started replica per key (image, network, seccomp, capabilities): a fully built replica (overlay, cgroup, "
        "namespaces, seccomp) whose interpreter and worker are already started, in no environment. A new environment "
        "with that key adopts it for its first replica: the daemon writes the environment's limits to the spare's "
        "cgroup and sends the worker the environment's variables, and the worker checks the packages (the "
        "\"spare adoption\" phase); a replacement spare is then built in the background. The \"pre-started spare "
        "adopted\" rows come from a second private daemon run with `--spares 1`, alive only for the cold rounds; "
        "its first environment (the discarded warm-up round) teaches it the key. Before each of its runs, and before "
        "the next runtime runs after it, the bench waits until `GET /v1/spares` shows the refill ready, so a refill "
        f"never overlaps another measurement (a run with no ready spare within {wait:.0f} s is skipped). The \"replica "
        "built from scratch (spares off)\" rows, the `replica:` phases under \"Where a cold start goes\", and the "
        "warm, throughput and memory figures come from the main daemon, run with `--spares 0`: the from-scratch figure is "
        "what an environment whose key the daemon has not seen yet (or `--spares 0`) costs. Each key's spare holds "
        "one idle replica's memory (hearth-init + worker, see Memory).",
    ]
    for key, name in WORKLOADS.items():
        r = runs.get(key)
        if r is None:
            continue
        parts = [f"{_runs(r.get('adopted', 0))} adopted a spare (checked: `{ADOPT_PHASE}` in the first task's "
                 f"`coldPhases`)"]
        if r.get("not_adopted"):
            parts.append(f"{_runs(r['not_adopted'])} built a replica from scratch instead (no `{ADOPT_PHASE}`), "
                         f"left out of the row")
        else:
            parts.append("none built its replica from scratch")
        if r.get("skipped"):
            parts.append(f"{_runs(r['skipped'])} skipped: no ready spare within {wait:.0f} s")
        if r.get("late_refill"):
            parts.append(f"after {_runs(r['late_refill'])} the refill was not ready within {wait:.0f} s, "
                         f"so the next runtime's run may have overlapped it")
        out.append(f"Spare-adopted row, {name}: " + "; ".join(parts) + ".")
    return out
