"""A private hearthd for the benchmark: its own state root, socket and
cgroup subtree, so it never touches a daemon someone else runs; stopped and
removed afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

from hearth_bench.client import APIError, Client


class Daemon:
    def __init__(self, bin_dir: str, worker_dir: str, work: str, log_level: str = "debug",
                 extra_args: Sequence[str] = (), cgroup_suffix: str = ""):
        self.bin_dir = bin_dir
        self.worker_dir = worker_dir
        self.root = os.path.join(work, "root")
        self.socket = os.path.join(work, "hearthd.sock")
        self.log_path = os.path.join(work, "hearthd.log")
        # A second daemon (spares on) needs its own subtree beside the first.
        self.cgroup_name = f"hearth-bench-{os.getpid()}{cgroup_suffix}"
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self._help: Optional[str] = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("hearthd is not running")
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> Client:
        os.makedirs(self.root, exist_ok=True)
        argv = [os.path.join(self.bin_dir, "hearthd"), "--root", self.root, "--socket", self.socket,
                "--init", os.path.join(self.bin_dir, "hearth-init"), "--worker-dir", self.worker_dir,
                "--cgroup-name", self.cgroup_name, "--log-level", self.log_level, *self.extra_args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        client = Client(self.socket)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hearthd exited with {self.proc.returncode}; its log:\n{self.log_tail()}")
            try:
                client.version()
                return client
            except (OSError, APIError):
                client.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"hearthd did not answer on {self.socket} within {timeout} s:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def supports(self, option: str) -> bool:
        """Whether this hearthd build knows option (from `hearthd --help`): a
        build older than an option is benchmarked without it, not refused."""
        if self._help is None:
            try:
                p = subprocess.run([os.path.join(self.bin_dir, "hearthd"), "--help"], capture_output=True, timeout=20)
                self._help = (p.stdout + p.stderr).decode(errors="replace")
            except (OSError, subprocess.TimeoutExpired):
                self._help = ""
        return re.search(re.escape(option) + r"\b", self._help) is not None

    def spares(self, client: Client) -> Any:
        """`GET /v1/spares`: {enabled, perKey, keys: [{image, network, ready,
        starting, replicas}], adopted}."""
        return client.call("GET", "/v1/spares")

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def import_image(self, client: Client, layout: str, name: str) -> None:
        status, data = client.raw("POST", "/v1/images/import", json.dumps({"path": layout, "name": name}).encode())
        if status != 200:
            raise APIError(f"image import {layout}: HTTP {status}: {data[:300]!r}")
        events = [json.loads(l) for l in data.decode().splitlines() if l.strip()]
        if not events or events[-1].get("event") != "done":
            raise APIError(f"image import {layout}: {events[-1] if events else 'no events'}")

    def sandbox_phases(self) -> Dict[str, Dict[str, int]]:
        """{replica name: {phase: µs}} from the daemon's debug log lines
        `sandbox NAME started in N µs: dirs N µs, cgroup N µs, …`."""
        out: Dict[str, Dict[str, int]] = {}
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    m = re.search(r"sandbox (\S+) started in (\d+) µs: (.*)", line)
                    if not m:
                        continue
                    phases = {k: int(v) for k, v in re.findall(r"([\w-]+) (\d+) µs", m.group(3))}
                    phases["request to exec"] = int(m.group(2))
                    out[m.group(1)] = phases
        except OSError:
            pass
        return out


def rss_bytes(pid: int) -> Optional[int]:
    """VmRSS of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pss_bytes(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pids_in_cgroup_subtree(fragment: str) -> Dict[str, List[int]]:
    """{replica cgroup name: [pids]} for processes whose memory cgroup path
    contains /fragment/ (cgroup v1 memory line, or the v2 line)."""
    out: Dict[str, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            controllers, path = parts[1], parts[2]
            if ("memory" in controllers.split(",") or controllers == "") and f"/{fragment}/" in path:
                replica = path.split(f"/{fragment}/", 1)[1].split("/", 1)[0]
                out.setdefault(replica, []).append(int(entry))
                break
    return out
