"""Runs every measurement against a private hearthd and the peers, and
returns the results dictionary (written as JSON, rendered as Markdown/SVG)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from hearth_bench import burst, floor, peers, pull, spares
from hearth_bench.client import APIError, Client, LeanClient, histogram, histogram_delta, parse_prometheus
from hearth_bench.daemon import Daemon, pids_in_cgroup_subtree, rss_bytes
from hearth_bench.stats import format_seconds, histogram_quantile, summarize

IMAGE = "hearth/python:3.11"
# The two ways a new environment gets its first replica; the goals and the
# chart pick between them by key (hearth-spare*, hearth-cold*).
SPARE_LABEL = "Hearth: new environment → first task, pre-started spare adopted"
PRELOAD_LABEL = "Hearth: new environment with `preload: [numpy]` → first task, spare adopted (numpy imported by the spare)"
SCRATCH_LABEL = "Hearth: new environment → first task result, replica built from scratch (spares off)"
USERNS_LABEL = "Hearth: the same, replica in a user namespace (`user_namespace: true`, idmapped layers)"
SPARE_PHASE_LABEL = "spare adoption: limits written, env sent, packages checked"
NUMPY_IMAGE = "hearth/python-numpy:3.11"
# A small ImageSpec: one package from PyPI and one command (two steps).
BUILD_SPEC = {"name": "bench-build", "packages": ["six"], "commands": ["echo built > /opt/bench"]}

# The user code every Hearth task runs; the peers run the same lines as
# `python3 -c` (peers.TRIVIAL_CODE, peers.NUMPY_CODE).
BENCHMOD = b'''import json


def trivial():
    return json.dumps(1 + 1)


def numpy_task():
    import numpy
    return int(numpy.arange(3).sum())


def inc(x):
    return x + 1


def sleep(seconds):
    import time
    time.sleep(seconds)


async def io_wait(seconds):
    import asyncio
    await asyncio.sleep(seconds)
'''


@dataclass
class Sizes:
    warm: int            # warm round trips per path (raw API, SDK)
    block: int           # alternate paths every this many tasks
    cold_rounds: int     # interleaved rounds of cold starts (after one warm-up round)
    numpy_rounds: int
    numpy_warm: int
    throughput: int      # tasks per batch
    memory_replicas: int
    builds: int          # rounds of image builds (uncached, then cached), after one warm-up round
    pull_rounds: int = 7  # image pulls per tool (after one warm-up round)

    @staticmethod
    def for_mode(quick: bool) -> "Sizes":
        if quick:
            return Sizes(warm=400, block=50, cold_rounds=4, numpy_rounds=3, numpy_warm=200, throughput=2000,
                         memory_replicas=8, builds=2, pull_rounds=1)
        return Sizes(warm=4000, block=100, cold_rounds=20, numpy_rounds=12, numpy_warm=1000, throughput=10000,
                     memory_replicas=8, builds=5)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def env_yaml(name: str, replicas: int = 1, image: Optional[str] = None, max_queue: int = 20000,
             user_namespace: bool = False, preload: Optional[List[str]] = None) -> str:
    lines = [f"name: {name}", f"replica_count: {replicas}", "ttl_seconds: 600", f"max_queue: {max_queue}"]
    if image:
        lines.append(f"container_image: {image}")
    if user_namespace:
        lines.append("user_namespace: true")
    if preload:
        lines.append(f"preload: [{', '.join(preload)}]")
    return "\n".join(lines) + "\n"


def machine_info(version: Dict[str, Any]) -> Dict[str, Any]:
    info: Dict[str, Any] = {"kernel": platform.release(), "cpus": os.cpu_count(), "hostname": platform.node()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    info["cgroup_layout"] = version.get("cgroup") or "?"
    # Other work on the machine skews every figure: say how busy it was.
    try:
        info["load_average"] = os.getloadavg()[0]
    except OSError:
        pass
    info["hearthd_version"] = version.get("version")
    return info


def timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


class Runner:
    def __init__(self, bin_dir: str, repo: str, work: str, quick: bool):
        self.bin_dir = bin_dir
        self.repo = repo
        self.work = work
        self.quick = quick
        self.sizes = Sizes.for_mode(quick)
        self.daemon = Daemon(bin_dir, os.path.join(repo, "python"), work)
        self.client: Optional[Client] = None
        # The second daemon, spares on, alive only around the cold rounds.
        self.spare_daemon: Optional[Daemon] = None
        self.spare_client: Optional[Client] = None
        self.spare_bundle = ""
        self.spare_wait = spares.WAIT_SECONDS
        self.spare_runs: Dict[str, spares.Runs] = {}
        self.spare_timeouts = 0     # waits timed out in a row
        self.spare_status: Optional[Dict[str, Any]] = None
        self.samples: Dict[str, List[float]] = {}
        self.unavailable: Dict[str, str] = {}
        self.notes: List[str] = []
        self.bundle = ""
        self.cid = 0
        self.sandbox_names: Dict[str, List[str]] = {}
        # False during warm-up rounds: their samples are discarded.
        self.recording = True

    def set_recording(self, on: bool) -> None:
        self.recording = on

    def add(self, key: str, seconds: float) -> None:
        if self.recording:
            self.samples.setdefault(key, []).append(seconds)

    @property
    def api(self) -> Client:
        if self.client is None:
            raise RuntimeError("the daemon is not started")
        return self.client

    # MARK: the run

    def run(self) -> Dict[str, Any]:
        started = time.monotonic()
        results: Dict[str, Any] = {"mode": "quick" if self.quick else "full",
                                   "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        # Spares off: every figure from this daemon (warm, cold from scratch and
        # its phases, numpy, throughput, memory) means what it meant before spares.
        has_spares = self.daemon.supports("--spares")
        if has_spares:
            self.daemon.extra_args += ["--spares", "0"]
        self.client = self.daemon.start()
        try:
            results["machine"] = machine_info(self.api.version())
            log("importing images")
            layouts = {IMAGE: os.path.join(self.repo, "rootfs/out/python-3.11"),
                       NUMPY_IMAGE: os.path.join(self.repo, "rootfs/out/python-numpy-3.11")}
            self.daemon.import_image(self.api, layouts[IMAGE], IMAGE)
            have_numpy = os.path.exists(os.path.join(layouts[NUMPY_IMAGE], "index.json"))
            if have_numpy:
                self.daemon.import_image(self.api, layouts[NUMPY_IMAGE], NUMPY_IMAGE)
            else:
                self.notes.append("numpy: no image at rootfs/out/python-numpy-3.11 (scripts/setup builds it); skipped.")
            self.bundle = self.api.upload_code({"benchmod.py": BENCHMOD})
            time.sleep(0.5)
            idle_rss = rss_bytes(self.daemon.pid)

            log("warm round trips")
            hist = self.warm()
            log("cold starts beside the peers")
            bundles = self.prepare_peers(layouts, have_numpy)
            try:
                if has_spares:
                    self.start_spare_daemon(layouts, have_numpy)
                else:
                    for key in ("hearth-spare", "hearth-spare-numpy", "hearth-spare-preload-numpy"):
                        self.unavailable[key] = "this hearthd build has no --spares option"
                self.cold("trivial", IMAGE, bundles.get(IMAGE), peers.TRIVIAL_CODE, "benchmod", "trivial",
                          self.sizes.cold_rounds, suffix="")
                if have_numpy:
                    log("numpy: cold")
                    self.cold("numpy", NUMPY_IMAGE, bundles.get(NUMPY_IMAGE), peers.NUMPY_CODE, "benchmod",
                              "numpy_task", self.sizes.numpy_rounds, suffix="-numpy")
            finally:
                self.stop_spare_daemon()
            if have_numpy:
                log("numpy: warm")
                self.warm_numpy()
            log("throughput")
            results["throughput"] = [self.throughput(2), self.throughput(1)]
            log("task records: on against off")
            results["persistence"] = self.persistence()
            log("burst: scaling against fixed replica counts")
            try:
                results["burst"] = burst.burst(self.api, self.bundle, 200, 3.0 if self.quick else 10.0, log)
                log("concurrency inside a replica")
                results["concurrency"] = burst.concurrency(self.api, self.bundle, 400)
            except APIError as e:  # a hearthd from before scaling refuses the spec
                self.notes.append(f"burst and concurrency rows: this hearthd refused the spec ({e}).")
            log("memory")
            results["memory"] = self.memory(idle_rss)
            log("image builds")
            self.image_builds()
            log("image pull beside skopeo")
            pull.measure(self.bin_dir, self.repo, self.work, self.sizes.pull_rounds, self.add, self.set_recording,
                         self.unavailable, self.notes, self.samples)
            results["timings"] = self.timings()
            results["phases"] = self.phases()
            results["dispatch_histogram"] = hist
            results["notes"] = self.notes + self.standing_notes(hist) + spares.notes(
                {k: r.as_dict() for k, r in self.spare_runs.items()}, self.spare_wait)
            if self.spare_runs:
                results["spares"] = {"runs": {k: r.as_dict() for k, r in self.spare_runs.items()},
                                     "wait_seconds": self.spare_wait, "last_status": self.spare_status}
            results["elapsed_seconds"] = round(time.monotonic() - started, 1)
            return results
        finally:
            self.api.close()
            self.daemon.stop()

    # MARK: warm

    def warm(self) -> Dict[str, Any]:
        api, s = self.api, self.sizes
        api.apply(env_yaml("bench-warm"))
        for _ in range(50):
            api.task("bench-warm", "benchmod", "trivial", self.bundle)
        sdk_call = self.sdk_setup()
        fresh = Client(self.daemon.socket)
        lean = LeanClient(self.daemon.socket)
        lean_body = json.dumps({"module": "benchmod", "function": "trivial", "kwargs": {}, "bundle": self.bundle,
                                "wait": True}).encode()
        # The floor (four process crossings, nothing else), in blocks between
        # Hearth's own, so both see the same machine at the same time.
        try:
            peer: Optional[floor.Floor] = floor.Floor()
            self.notes.append(
                "Floor: this process as the client, a relay process reading a Unix socket and writing a pipe, and a "
                f"Python echo process, {peer.describe()}, so every hop crosses CPUs; its samples are taken in "
                "blocks between Hearth's warm samples. It is what four process crossings cost here with no work "
                "in between: the least a warm round trip through hearthd can take.")
        except Exception as e:
            peer = None
            self.unavailable["warm-floor"] = f"{type(e).__name__}: {str(e)[:300]}"
        before = histogram(parse_prometheus(api.metrics()), "hearth_warm_dispatch_seconds")
        done = 0
        while done < s.warm:
            n = min(s.block, s.warm - done)
            if peer is not None:
                for t in peer.samples(n):
                    self.add("warm-floor", t)
            for _ in range(n):
                t, snap = timed(lambda: api.task("bench-warm", "benchmod", "trivial", self.bundle))
                self.add("warm-api", t)
                if snap.get("runMicros") is not None:
                    self.add("warm-dispatch", snap["runMicros"] / 1e6)
                if snap.get("queuedMicros") is not None:
                    self.add("warm-queued", snap["queuedMicros"] / 1e6)
            if sdk_call is not None:
                for _ in range(n):
                    t, value = timed(sdk_call)
                    if value != "2":
                        raise RuntimeError(f"SDK task returned {value!r}, expected '2'")
                    self.add("warm-sdk", t)
            # The same minimal client through Hummingbird's router (a query
            # string sends the request past TaskFastPath): what the fast path saves.
            for _ in range(n):
                t, _ = timed(lambda: lean.task("bench-warm", lean_body))
                self.add("warm-api-lean", t)
                t, _ = timed(lambda: lean.task("bench-warm", lean_body, query="?via=router"))
                self.add("warm-api-router", t)
            # A new connection per request, as a one-shot client (the CLI) makes.
            for _ in range(max(1, n // 10)):
                t, _ = timed(lambda: (fresh.task("bench-warm", "benchmod", "trivial", self.bundle), fresh.close()))
                self.add("warm-api-fresh", t)
            done += n
        lean.close()
        if peer is not None:
            peer.close()
        after = histogram(parse_prometheus(api.metrics()), "hearth_warm_dispatch_seconds")
        delta = histogram_delta(after, before)
        api.delete_env("bench-warm")
        return {"count": delta[-1][1] if delta else 0,
                "p50": histogram_quantile(0.5, delta), "p99": histogram_quantile(0.99, delta)}

    def sdk_setup(self) -> Optional[Callable[[], Any]]:
        """The SDK's call path, when `from hearth import ActorEnvironment` works."""
        from hearth_bench import sdk
        try:
            call = sdk.setup(self.daemon.socket)
            for _ in range(20):
                call()
            return call
        except sdk.Unavailable as e:
            self.unavailable["warm-sdk"] = str(e)
        except Exception as e:  # the SDK is young: report, do not fail the run
            self.unavailable["warm-sdk"] = f"{type(e).__name__}: {e}"
        return None

    def warm_numpy(self) -> None:
        api = self.api
        api.apply(env_yaml("bench-numpy", image=NUMPY_IMAGE))
        for _ in range(20):
            api.task("bench-numpy", "benchmod", "numpy_task", self.bundle)
        for _ in range(self.sizes.numpy_warm):
            t, _ = timed(lambda: api.task("bench-numpy", "benchmod", "numpy_task", self.bundle))
            self.add("warm-numpy", t)
        api.delete_env("bench-numpy")

    # MARK: the spare daemon

    def start_spare_daemon(self, layouts: Dict[str, str], have_numpy: bool) -> None:
        """A second private daemon with `--spares 1`: own root, socket and
        cgroup, the same images and code bundle. A failure to start makes the
        spare rows unavailable; the rest of the run goes on."""
        log("starting a second hearthd with --spares 1")
        d = Daemon(self.bin_dir, os.path.join(self.repo, "python"), os.path.join(self.work, "spares"),
                   extra_args=["--spares", "1"], cgroup_suffix="-spares")
        self.spare_daemon = d
        try:
            self.spare_client = d.start()
            d.import_image(self.spare_client, layouts[IMAGE], IMAGE)
            if have_numpy:
                d.import_image(self.spare_client, layouts[NUMPY_IMAGE], NUMPY_IMAGE)
            self.spare_bundle = self.spare_client.upload_code({"benchmod.py": BENCHMOD})
            d.spares(self.spare_client)  # a build without /v1/spares fails here, not in every round
        except Exception as e:
            log(f"the spare daemon did not start: {e}")
            for key in ("hearth-spare", "hearth-spare-numpy", "hearth-spare-preload-numpy"):
                self.unavailable[key] = f"the --spares 1 daemon: {type(e).__name__}: {str(e)[:300]}"
            self.stop_spare_daemon()

    def stop_spare_daemon(self) -> None:
        if self.spare_client is not None:
            try:
                self.spare_status = self.spare_daemon.spares(self.spare_client) if self.spare_daemon else None
            except Exception:
                pass
            self.spare_client.close()
            self.spare_client = None
        if self.spare_daemon is not None:
            self.spare_daemon.stop()
            self.spare_daemon = None

    def spares_now(self) -> Dict[str, Any]:
        if self.spare_client is None:
            raise RuntimeError("the spare daemon is not running")
        return self.spare_client.call("GET", "/v1/spares")

    def wait_spare(self, image: str, key: str, why: str, preload: Optional[List[str]] = None) -> bool:
        """Waits for a ready spare for image (of the key that preloads
        `preload`); False (logged) on timeout. After GIVE_UP_AFTER timeouts
        in a row it stops waiting: the daemon is not refilling, and the
        bench must not stall on it."""
        if self.spare_timeouts >= spares.GIVE_UP_AFTER:
            return False
        if spares.wait_ready(self.spares_now, image, self.spare_wait, preload=preload):
            self.spare_timeouts = 0
            return True
        self.spare_timeouts += 1
        log(f"{key}: no ready spare for {image} within {self.spare_wait:.0f} s {why}; "
            f"`GET /v1/spares`: {json.dumps(self.spares_now())[:300]}")
        if self.spare_timeouts >= spares.GIVE_UP_AFTER:
            log(f"{key}: {self.spare_timeouts} waits in a row timed out: the remaining spare runs are skipped")
        return False

    # MARK: cold and the peers

    def prepare_peers(self, layouts: Dict[str, str], have_numpy: bool) -> Dict[str, str]:
        bundles = {}
        for image, code in ((IMAGE, peers.TRIVIAL_CODE), (NUMPY_IMAGE, peers.NUMPY_CODE)):
            if image == NUMPY_IMAGE and not have_numpy:
                continue
            dest = os.path.join(self.work, "bundle-" + image.split("/")[1].replace(":", "-"))
            peers.unpack_bundle(layouts[image], "3.11", dest)
            peers.write_bundle_config(dest, ["python3", "-c", code])
            bundles[image] = dest
        os.makedirs(os.path.join(self.work, "crun-state"), exist_ok=True)
        os.makedirs(os.path.join(self.work, "runc-state"), exist_ok=True)
        return bundles

    def cold(self, workload: str, image: str, bundle: Optional[str], code: str, module: str, function: str,
             rounds: int, suffix: str) -> None:
        argv = ["python3", "-c", code]
        runners: List[Tuple[str, Callable[[int], None]]] = [
            ("hearth-cold" + suffix, lambda i: self.hearth_cold(image, module, function, i, suffix)),
        ]
        if workload == "trivial":
            # The same from-scratch start in a user namespace, interleaved
            # with it: the difference is what user namespaces cost.
            if self.daemon.supports("--userns"):
                runners.append(("hearth-userns", lambda i: self.hearth_cold(image, module, function, i, "",
                                                                            userns=True)))
            else:
                self.unavailable["hearth-userns"] = "this hearthd build has no user namespaces"
        if self.spare_client is not None:
            self.spare_timeouts = 0
            runners.append(("hearth-spare" + suffix, lambda i: self.hearth_spare(image, module, function, i, suffix)))
            if workload == "numpy":
                # The same, the environment preloading numpy: its spares
                # import it before one is adopted.
                runners.append(("hearth-spare-preload" + suffix,
                                lambda i: self.hearth_spare(image, module, function, i, "-preload" + suffix,
                                                            preload=["numpy"])))
        runners.append(("hearth-sandbox" + suffix, lambda i: self.hearth_sandbox(image, argv, suffix)))
        if bundle:
            rootfs = os.path.join(bundle, "rootfs")
            for tool, make in (("crun", lambda: peers.crun_argv(bundle, os.path.join(self.work, "crun-state"), self.next_cid())),
                               ("runc", lambda: peers.runc_argv(bundle, os.path.join(self.work, "runc-state"), self.next_cid())),
                               ("bwrap", lambda: peers.bwrap_argv(rootfs, argv))):
                if peers.available(tool):
                    runners.append((tool + suffix, self.peer_runner(tool + suffix, make)))
                else:
                    self.unavailable[tool + suffix] = f"{tool} is not installed"
        if workload == "numpy" and subprocess.run([peers.HOST_PYTHON, "-c", "import numpy"], capture_output=True).returncode != 0:
            self.unavailable["host" + suffix] = "numpy is not installed on the host"
        else:
            runners.append(("host" + suffix, self.peer_runner("host" + suffix, lambda: peers.host_argv(argv))))
        # Round 0 warms caches and is discarded; each round after starts at
        # the next runtime, so no runtime always follows the same one.
        for r in range(rounds + 1):
            order = runners[r % len(runners):] + runners[:r % len(runners)]
            for key, fn in order:
                if key in self.unavailable:
                    continue
                self.recording = r > 0
                try:
                    fn(r)
                except Exception as e:
                    self.unavailable[key] = f"{type(e).__name__}: {str(e)[:300]}"
                    for k in [k for k in self.samples if k == key or k.startswith(key + ":")]:
                        del self.samples[k]
                finally:
                    self.recording = True
        # A spare row with no adopted run says why instead of vanishing.
        runs = self.spare_runs.get("hearth-spare" + suffix)
        if runs and not self.samples.get("hearth-spare" + suffix) and "hearth-spare" + suffix not in self.unavailable:
            self.unavailable["hearth-spare" + suffix] = (
                f"no run adopted a spare ({runs.not_adopted} built from scratch, {runs.skipped} skipped: "
                f"no ready spare within {self.spare_wait:.0f} s)")

    def next_cid(self) -> str:
        self.cid += 1
        return f"hearth-bench-{os.getpid()}-{self.cid}"

    def peer_runner(self, key: str, make: Callable[[], List[str]]) -> Callable[[int], None]:
        def run(_: int) -> None:
            argv = make()
            t, p = timed(lambda: subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120))
            if p.returncode != 0 or p.stdout.strip() not in (b"2", b"3"):
                raise RuntimeError(f"{' '.join(argv[:6])}…: exit {p.returncode}: "
                                   f"{(p.stderr or p.stdout).decode(errors='replace').strip()[-300:]}")
            self.add(key, t)
        return run

    def hearth_cold(self, image: str, module: str, function: str, i: int, suffix: str, userns: bool = False) -> None:
        name = f"bench-{'userns' if userns else 'cold'}{suffix}-{i}"
        t0, t1, t2, snap = self.first_task(self.api, name, image, module, function, self.bundle, userns=userns)
        if spares.adopted(snap):
            # This daemon runs with --spares 0: an adoption here would mix the two rows.
            raise RuntimeError(f"the first task of {name} adopted a spare on the spares-off daemon: {snap}")
        self.add_cold(("hearth-userns" if userns else "hearth-cold") + suffix, t0, t1, t2, snap)

    def hearth_spare(self, image: str, module: str, function: str, i: int, suffix: str,
                     preload: Optional[List[str]] = None) -> None:
        """New environment → first task on the spares-on daemon. The warm-up
        round (not recorded) builds from scratch and teaches the daemon the
        key; every later run waits for a ready spare first, and for the
        refill afterwards, so the background build overlaps no measurement."""
        key = "hearth-spare" + suffix
        runs = self.spare_runs.setdefault(key, spares.Runs())
        if self.recording and not self.wait_spare(image, key, f"before run {i}", preload):
            runs.skipped += 1
            log(f"{key}: run {i} skipped")
            return
        name = f"bench-spare{suffix}-{i}"
        t0, t1, t2, snap = self.first_task(self.spare_client, name, image, module, function, self.spare_bundle,
                                           preload=preload)
        if self.recording:
            if spares.adopted(snap):
                runs.adopted += 1
                self.add_cold(key, t0, t1, t2, snap)
            else:
                # Built from scratch although a spare was ready: not what the row measures.
                runs.not_adopted += 1
                log(f"{key}: run {i} did not adopt a spare (coldPhases {sorted(snap.get('coldPhases') or {})}); "
                    f"left out of the row")
        if not self.wait_spare(image, key, f"after run {i} (the refill)", preload) and self.recording:
            runs.late_refill += 1

    def first_task(self, api: Any, name: str, image: str, module: str, function: str,
                   bundle: str, userns: bool = False,
                   preload: Optional[List[str]] = None) -> Tuple[float, float, float, Dict[str, Any]]:
        """Applies a new environment, runs its first task and deletes it:
        (before apply, after apply, after the result, the task's snapshot)."""
        t0 = time.perf_counter()
        api.apply(env_yaml(name, image=image, user_namespace=userns, preload=preload))
        t1 = time.perf_counter()
        snap = api.task(name, module, function, bundle)
        t2 = time.perf_counter()
        api.delete_env(name)
        if not snap.get("coldStart"):
            raise RuntimeError(f"the first task of {name} did not report a cold start: {snap}")
        return t0, t1, t2, snap

    def add_cold(self, key: str, t0: float, t1: float, t2: float, snap: Dict[str, Any]) -> None:
        self.add(key, t2 - t0)
        self.add(key + ":apply", t1 - t0)
        self.add(key + ":task", t2 - t1)
        if snap.get("queuedMicros") is not None:
            self.add(key + ":queued", snap["queuedMicros"] / 1e6)
        if snap.get("runMicros") is not None:
            self.add(key + ":run", snap["runMicros"] / 1e6)
        if snap.get("workerMicros") is not None:
            self.add(key + ":worker", snap["workerMicros"] / 1e6)
        for phase, micros in (snap.get("coldPhases") or {}).items():
            self.add(f"{key}:phase:{phase}", micros / 1e6)

    def hearth_sandbox(self, image: str, argv: List[str], suffix: str) -> None:
        key = "hearth-sandbox" + suffix
        c = Client(self.daemon.socket)
        try:
            t, (code, out, started) = timed(lambda: c.sandbox(argv, image))
        finally:
            c.close()
        if code != 0 or out.strip() not in (b"2", b"3"):
            raise RuntimeError(f"hearth sandbox {argv}: exit {code}, output {out[:200]!r}")
        self.add(key, t)
        name = started.get("replica")
        if started.get("startMicros") is not None:
            self.add(key + ":exec", started["startMicros"] / 1e6)
            self.add(key + ":after-exec", t - started["startMicros"] / 1e6)
        if name and self.recording:
            self.sandbox_names.setdefault(key, []).append(name)

    # MARK: throughput and memory

    def throughput(self, replicas: int) -> Dict[str, Any]:
        api = self.api
        name = f"bench-map{replicas}"
        api.apply(env_yaml(name, replicas=replicas))
        n = self.sizes.throughput
        inputs = [{"x": i} for i in range(n)]
        api.batch(name, "benchmod", "inc", self.bundle, inputs[:max(200, 50 * replicas)])
        t, res = timed(lambda: api.batch(name, "benchmod", "inc", self.bundle, inputs))
        bad = [r for r in res if r.get("state") != "succeeded"]
        if bad or [r.get("result") for r in res] != [i + 1 for i in range(n)]:
            raise RuntimeError(f"batch on {name}: {len(bad)} tasks failed, first: {bad[:1]}")
        api.delete_env(name)
        return {"replicas": replicas, "tasks": n, "seconds": t, "tasks_per_second": n / t}

    def persistence(self) -> Optional[Dict[str, Any]]:
        """What writing finished tasks to the task store costs: two fresh
        private daemons alike but for `--task-retention` (the default, and
        0), warm round trips in alternating blocks and the map form on each
        in turn, so both see the same machine and the same history."""
        if not self.daemon.supports("--task-retention"):
            for key in ("persist-on", "persist-off"):
                self.unavailable[key] = "this hearthd build has no --task-retention option"
            return None
        daemons = {
            "persist-on": Daemon(self.bin_dir, os.path.join(self.repo, "python"), os.path.join(self.work, "records"),
                                 extra_args=["--spares", "0"], cgroup_suffix="-records"),
            "persist-off": Daemon(self.bin_dir, os.path.join(self.repo, "python"), os.path.join(self.work, "no-records"),
                                  extra_args=["--spares", "0", "--task-retention", "0"], cgroup_suffix="-norecords"),
        }
        sides: List[Tuple[str, Client, str]] = []
        try:
            for key, d in daemons.items():
                api = d.start()
                sides.append((key, api, ""))
                d.import_image(api, os.path.join(self.repo, "rootfs/out/python-3.11"), IMAGE)
                sides[-1] = (key, api, api.upload_code({"benchmod.py": BENCHMOD}))
            for _, api, bundle in sides:
                api.apply(env_yaml("bench-persist"))
                for _ in range(50):
                    api.task("bench-persist", "benchmod", "trivial", bundle)
            n, block = self.sizes.warm // 2, self.sizes.block
            for _ in range(max(1, n // block)):
                for key, api, bundle in sides:
                    for _ in range(block):
                        t, _ = timed(lambda: api.task("bench-persist", "benchmod", "trivial", bundle))
                        self.add(key, t)
            maps: Dict[str, List[float]] = {key: [] for key in daemons}
            inputs = [{"x": i} for i in range(self.sizes.throughput)]
            for _ in range(3 if self.quick else 5):
                for key, api, bundle in sides:
                    t, res = timed(lambda: api.batch("bench-persist", "benchmod", "inc", bundle, inputs))
                    if any(r.get("state") != "succeeded" for r in res):
                        raise RuntimeError(f"batch on the {key} daemon: a task failed")
                    maps[key].append(len(inputs) / t)
            out: Dict[str, Any] = {key: {"map_tasks_per_second": sorted(v)[len(v) // 2],
                                         "rss": rss_bytes(daemons[key].pid)} for key, v in maps.items()}
            on_m, off_m = (summarize(self.samples[k]).get("median") if self.samples.get(k) else None
                           for k in ("persist-on", "persist-off"))
            if on_m and off_m:
                out["warm_ratio"] = on_m / off_m
            out["map_ratio"] = out["persist-on"]["map_tasks_per_second"] / out["persist-off"]["map_tasks_per_second"]
            self.notes.append(
                "Task records: two fresh private daemons alike but for `--task-retention` (the default, records "
                "written; and 0, none), warm round trips (minimal API client, `wait: true`) in alternating blocks: "
                f"median {format_seconds(on_m)} against {format_seconds(off_m)} "
                f"({out.get('warm_ratio', float('nan')):.2f}×); the map form ({len(inputs):,} tasks, 1 replica, "
                f"median of runs): {out['persist-on']['map_tasks_per_second']:,.0f} against "
                f"{out['persist-off']['map_tasks_per_second']:,.0f} tasks/s ({out['map_ratio']:.2f}×).")
            return out
        except Exception as e:
            for key in daemons:
                self.samples.pop(key, None)
                self.unavailable[key] = f"{type(e).__name__}: {str(e)[:300]}"
            return None
        finally:
            for _, api, _ in sides:
                api.close()
            for d in daemons.values():
                d.stop()

    def memory(self, idle_rss: Optional[int]) -> List[Dict[str, Any]]:
        api, n = self.api, self.sizes.memory_replicas
        name = "bench-mem"
        # The daemon's growth per replica is measured from here, not from
        # the idle figure taken before every other workload: the tasks run
        # since (results kept within the result budget, the heap's high
        # water) are not the replicas' doing.
        time.sleep(0.3)
        before_rss = rss_bytes(self.daemon.pid)
        api.apply(env_yaml(name, replicas=n))
        # n concurrent sleeping tasks make the pool start n replicas.
        api.batch(name, "benchmod", "sleep", self.bundle, [{"seconds": 0.5}] * n)
        deadline = time.monotonic() + 30
        groups: Dict[str, List[int]] = {}
        while time.monotonic() < deadline:
            groups = {k: v for k, v in pids_in_cgroup_subtree(self.daemon.cgroup_name).items()
                      if k.startswith(name + "-")}
            if len(groups) >= n and all(len(v) >= 2 for v in groups.values()):
                break
            time.sleep(0.1)
        time.sleep(0.3)
        busy_rss = rss_bytes(self.daemon.pid)
        workers, inits = [], []
        for pids in groups.values():
            # hearth-init is the lowest pid of the replica; the worker its child.
            pids = sorted(pids)
            rs = [rss_bytes(p) for p in pids]
            inits.append(rs[0] or 0)
            workers.extend(r or 0 for r in rs[1:])
        bare = bare_interpreter_rss()
        api.delete_env(name)
        rows = [{"key": "hearthd-idle", "label": "hearthd RSS, idle (images imported, no replica)", "bytes": idle_rss}]
        rows.append({"key": "hearthd-before", "label": "hearthd RSS after the other workloads, before the replicas below",
                     "bytes": before_rss})
        rows.append({"key": "hearthd-8", "label": f"hearthd RSS with {len(groups)} warm replicas", "bytes": busy_rss})
        if groups and workers and before_rss is not None and busy_rss is not None:
            per_daemon = (busy_rss - before_rss) / len(groups)
            worker = sum(workers) / len(workers)
            init = sum(inits) / len(inits)
            rows += [
                {"key": "worker", "label": "worker interpreter RSS (python3 + hearth worker), mean", "bytes": worker},
                {"key": "bare", "label": "bare python3 interpreter RSS with the task module's imports (json; host, same Debian python3)",
                 "bytes": bare},
                {"key": "init", "label": "hearth-init RSS, mean", "bytes": init},
                {"key": "daemon-per-replica", "label": "hearthd growth per replica", "bytes": per_daemon},
                {"key": "overhead", "label": "per-replica overhead beyond the interpreter (init + worker − bare + daemon share)",
                 "bytes": init + (worker - (bare or 0)) + per_daemon},
            ]
        return rows

    # MARK: image builds

    def image_builds(self) -> None:
        """A small ImageSpec built with every step run (its image removed
        first, which takes its layers and so its cache entries), then again
        with every step cached; one discarded warm-up round, then
        `sizes.builds` rounds. Needs PyPI and uv in the default image; a
        failure makes both rows unavailable, the rest of the run stands."""
        api = self.api
        name = None
        try:
            for r in range(self.sizes.builds + 1):
                self.recording = r > 0
                if name:
                    api.delete_image(name)
                t, events = timed(lambda: api.build_image(BUILD_SPEC))
                done = events[-1]
                name = done["image"]["name"]
                ran = [e for e in events if e.get("event") == "step_done" and not e.get("cached")]
                if done.get("cached") or len(ran) != 2:
                    raise RuntimeError(f"the uncached build ran {len(ran)} of 2 steps: {events}")
                self.add("build-uncached", t)
                t, events = timed(lambda: api.build_image(BUILD_SPEC))
                if not events[-1].get("cached"):
                    raise RuntimeError(f"the second build of the same spec ran steps: {events}")
                self.add("build-cached", t)
        except Exception as e:
            for key in ("build-uncached", "build-cached"):
                self.unavailable[key] = f"{type(e).__name__}: {str(e)[:300]}"
                self.samples.pop(key, None)
        finally:
            self.recording = True
            if name:
                api.delete_image(name)

    # MARK: results

    LABELS = {
        "warm-floor": ("warm", "floor: four process crossings alone (Python client → relay → Python echo → back; "
                               "Unix socket in, pipes out; client and echo on one CPU, relay on another)"),
        "warm-sdk": ("warm", "SDK call (`@env.task`), ready replica"),
        "warm-api": ("warm", "raw API, kept-alive connection, `wait: true`"),
        "warm-api-lean": ("warm", "raw API, kept-alive, minimal HTTP/1.1 client (no http.client)"),
        "warm-api-router": ("warm", "raw API, kept-alive, minimal client, through the router (`?via=router`)"),
        "warm-api-fresh": ("warm", "raw API, new connection per task"),
        "persist-on": ("warm", "raw API, kept-alive, a fresh daemon writing task records (the default); alternating with the next row"),
        "persist-off": ("warm", "raw API, kept-alive, a fresh daemon with `--task-retention 0` (no records)"),
        "warm-queued": ("warm", "daemon: request in → run frame out (task queuedMicros)"),
        "warm-dispatch": ("warm", "daemon dispatch: run frame out → result in (task runMicros)"),
        "hearth-spare": ("cold", SPARE_LABEL),
        "hearth-cold": ("cold", SCRATCH_LABEL),
        "hearth-userns": ("cold", USERNS_LABEL),
        "hearth-sandbox": ("cold", "Hearth: one-shot sandbox (`POST /v1/sandboxes`)"),
        "crun": ("cold", "crun run (cgroups disabled, private mount ns)"),
        "runc": ("cold", "runc run"),
        "bwrap": ("cold", "bwrap --unshare-all"),
        "host": ("cold", "/usr/bin/python3 on the host, no isolation"),
        "warm-numpy": ("numpy", "Hearth: warm task (numpy already imported)"),
        "hearth-spare-numpy": ("numpy", SPARE_LABEL),
        "hearth-spare-preload-numpy": ("numpy", PRELOAD_LABEL),
        "hearth-cold-numpy": ("numpy", SCRATCH_LABEL),
        "hearth-sandbox-numpy": ("numpy", "Hearth: one-shot sandbox"),
        "crun-numpy": ("numpy", "crun run (cgroups disabled, private mount ns)"),
        "runc-numpy": ("numpy", "runc run"),
        "bwrap-numpy": ("numpy", "bwrap --unshare-all"),
        "host-numpy": ("numpy", "/usr/bin/python3 on the host, no isolation"),
        "build-uncached": ("build", "every step run (uv from PyPI, one command; layers written and installed)"),
        "build-cached": ("build", "the same spec again: every step cached, nothing run"),
        "pull-hearth": ("pull", "Hearth: `hearth image pull` (fetch, verify, unpack every layer)"),
        "pull-skopeo": ("pull", "`skopeo copy` to an OCI layout (fetch, verify)"),
        "pull-skopeo-umoci": ("pull", "`skopeo copy` + `umoci unpack` (fetch, verify, unpack)"),
    }

    def timings(self) -> List[Dict[str, Any]]:
        out = []
        for key, (group, label) in self.LABELS.items():
            if key in self.unavailable:
                out.append({"key": key, "group": group, "label": label, "unavailable": self.unavailable[key]})
            elif self.samples.get(key):
                out.append({"key": key, "group": group, "label": label, "stats": summarize(self.samples[key]),
                            "samples": [round(v, 7) for v in self.samples[key]]})
        return out

    PHASES = [
        ("dirs", "replica directories, /etc files in the upper dir"),
        ("userns", "user namespace made, /etc files chowned into its range (user_namespace: true only)"),
        ("cgroup", "cgroup created, limits written; v1: the mkdir waits out the cgroup join's warm-up (started at apply)"),
        ("devices", "device allow-list: v1 devices.deny/allow writes, v2 BPF program attached"),
        ("plan", "spawn plan: seccomp BPF (cached), mount list, fds"),
        ("spawn", "clone3 → execve (one figure: no per-step marks)"),
        ("clone", "clone3 with the namespaces"),
        ("mounts", "signals, setsid, overlay, /proc, /dev, /sys, binds"),
        ("pivot_root", "pivot_root, masked and read-only paths; v1: the cgroup join (started with the mounts)"),
        ("caps_seccomp", "hostname, loopback, fds, rlimits, capabilities, seccomp"),
        ("execve", "execve of hearth-init, seen by the daemon"),
        ("worker_ready", "interpreter start + worker imports → `ready` frame"),
    ]

    def phases(self) -> List[Dict[str, Any]]:
        return phase_rows(self.samples, self.sandbox_names.get("hearth-sandbox", []), self.daemon.sandbox_phases())

    def standing_notes(self, hist: Dict[str, Any]) -> List[str]:
        notes = [
            "Cold runs are interleaved: every round runs each runtime once, starting at a different one; "
            "the first round is a discarded warm-up. Peers run `python3 -c` with the same lines as the Hearth task "
            "over an `umoci unpack` of the same image Hearth imported.",
            "crun refuses this machine's hybrid cgroup layout (\"cgroups in hybrid mode not supported\"), so it runs "
            "with `--cgroup-manager=disabled` inside a private mount namespace (`unshare --mount`) where the cgroup2 "
            "mount at /sys/fs/cgroup/unified is detached: it creates, joins and removes no cgroup, which favours it. "
            "runc runs with its default cgroupfs manager.",
            "Hearth's cold figure built from scratch includes the environment apply, building the replica (overlay, "
            "cgroup, namespaces, seccomp), starting the interpreter and the worker, importing the task module and the "
            "result's trip back; with a spare adopted, building and starting are replaced by the adoption.",
            "On cgroup v1 (this machine) the replica's move into its cgroups waits for an RCU grace period "
            "(`cgroup_threadgroup_rwsem`: the first `cgroup.procs` write after a quiet spell). hearthd starts that "
            "wait ahead, when the environment is applied and when the replica build starts, so what is left of it "
            "shows in the cgroup phase (the new cgroup's mkdir waits behind it) and the join after the clone "
            "(pivot_root phase) passes at once. cgroup v2 places the child with `CLONE_INTO_CGROUP` and has no "
            "such wait. The directories phase varies with the file system: ext4 "
            "skips recently deleted inodes when it allocates new ones, which a run that makes and removes many "
            "replica directories makes slower.",
        ]
        from hearth_bench.stats import format_seconds
        cold, userns = self.samples.get("hearth-cold"), self.samples.get("hearth-userns")
        if cold and userns:
            a, b = statistics.median(cold), statistics.median(userns)
            made = self.samples.get("hearth-userns:phase:userns")
            notes.append(f"User namespaces on the cold start (same daemon, interleaved, from scratch): "
                         f"{format_seconds(b)} against {format_seconds(a)} without, {format_seconds(b - a)} "
                         f"({(b / a - 1) * 100:+.0f}%): a user namespace made per replica"
                         + (f" (the `userns` phase, median {format_seconds(statistics.median(made))})" if made else "")
                         + " and one idmapped mount per image layer (in the mounts phase).")
        dev = self.samples.get("hearth-cold:phase:devices")
        if dev and cold:
            d = statistics.median(dev)
            notes.append(f"The device allow-list on the cold start: the `devices` phase, median {format_seconds(d)} "
                         f"({d / statistics.median(cold) * 100:.1f}% of the from-scratch cold start).")
        if self.samples.get("build-uncached"):
            notes.append("Image builds: the uncached build removes the image first (its layers go, and with them "
                         "its cache entries), then runs both steps in build replicas (uv fetching `six` from PyPI, "
                         "so the figure includes the index's latency), writes each upper directory as a layer and "
                         "installs it; the cached build of the same spec runs nothing and records the image.")
        if hist.get("count"):
            notes.append(f"`hearth_warm_dispatch_seconds` from /metrics over the warm phase ({hist['count']:.0f} tasks, "
                         f"bucket-interpolated): p50 {format_seconds(hist['p50'])}, p99 {format_seconds(hist['p99'])}.")
        return notes


def phase_rows(samples: Dict[str, List[float]], sandbox_names: List[str],
               logged: Dict[str, Dict[str, int]]) -> List[Dict[str, Any]]:
    """The "where a cold start goes" rows: the from-scratch cold start (spares
    off) phase by phase, the spare adoption that replaces them when a spare is
    adopted, then the one-shot sandbox (its phases from the daemon's log)."""
    rows = []
    order = [name for name, _ in Runner.PHASES]
    labels = dict(Runner.PHASES)

    def add(key: str, label: str, values: List[float]) -> None:
        if values:
            rows.append({"key": key, "label": label, "stats": summarize(values)})

    add("hearth-cold:apply", "new environment: `POST /v1/environments`", samples.get("hearth-cold:apply", []))
    cold = sorted((k.split(":", 2)[2] for k in samples if k.startswith("hearth-cold:phase:")),
                  key=lambda p: order.index(p) if p in order else 99)
    for phase in cold:
        add("hearth-cold:phase:" + phase, "replica: " + labels.get(phase, phase), samples["hearth-cold:phase:" + phase])
    if not cold:
        add("hearth-cold:queued", "replica start → worker ready (task queuedMicros; no phases reported)",
            samples.get("hearth-cold:queued", []))
    add("hearth-cold:run", "first task: run frame out → result in (runMicros)", samples.get("hearth-cold:run", []))
    add("hearth-cold:worker", "…of which the call inside the worker (import benchmod, call)",
        samples.get("hearth-cold:worker", []))
    # Only adopted runs are recorded under hearth-spare, so this is every measured adoption.
    add("hearth-spare:phase:" + spares.ADOPT_PHASE, SPARE_PHASE_LABEL,
        samples.get("hearth-spare:phase:" + spares.ADOPT_PHASE, []))
    per_phase: Dict[str, List[float]] = {}
    for name in sandbox_names:
        for phase, micros in logged.get(name, {}).items():
            per_phase.setdefault(phase, []).append(micros / 1e6)
    add("sandbox:request", "sandbox: request in → hearth-init exec'd", per_phase.get("request to exec", []))
    add("sandbox:after-exec", "sandbox: exec → `python3 -c …` done → last frame out",
        samples.get("hearth-sandbox:after-exec", []))
    return rows


def bare_interpreter_rss() -> Optional[int]:
    # With what the measured replicas' task module imports (benchmod: json),
    # so that the difference to a worker is the worker's own, not the task's.
    p = subprocess.Popen([peers.HOST_PYTHON, "-c", "import json, sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)
        return rss_bytes(p.pid)
    finally:
        p.kill()
        p.wait()
