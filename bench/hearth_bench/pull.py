"""Image pulls from a loopback registry: hearthd pulling a three-layer image
(`POST /v1/images/pull`, every layer fetched, verified and unpacked) beside
`skopeo copy` of the same image into an OCI layout (fetched and verified,
not unpacked), and `skopeo copy` followed by `umoci unpack` (what a runtime
needs before the image can run).

The registry is Debian's docker-registry, plain HTTP on 127.0.0.1, its
storage under the bench's work directory; hearthd is a third private daemon
(`--insecure-registry` for it, no images of its own) so that no layer is
already in its store. Rounds are interleaved, each starting at the next
tool; round 0 is a discarded warm-up (it also fills the page cache with the
registry's blobs for every tool alike)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from hearth_bench.client import APIError
from hearth_bench.daemon import Daemon

REPO = "bench/multilayer"
TAG = "1"
KEYS = ("pull-hearth", "pull-skopeo", "pull-skopeo-umoci")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: List[str], timeout: float = 600) -> None:
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}…: exit {p.returncode}: "
                           f"{(p.stderr or p.stdout).decode(errors='replace').strip()[-300:]}")


def missing_tools() -> Optional[str]:
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup installs it)"
    return None


def build_image(layout: str, out: str) -> None:
    """The default layout plus two layers made by umoci: a copy of the
    Python standard library, then a copy of /usr/lib/x86_64-linux-gnu."""
    os.makedirs(out)
    shutil.copy(os.path.join(layout, "index.json"), out)
    shutil.copy(os.path.join(layout, "oci-layout"), out)
    shutil.copytree(os.path.join(layout, "blobs"), os.path.join(out, "blobs"))
    bundle = out + "-bundle"
    _run(["umoci", "unpack", "--image", f"{out}:3.11", bundle])
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(os.path.join(rootfs, "opt", "bench"))
    shutil.copytree(os.path.join(rootfs, "usr", "lib", "python3.11"), os.path.join(rootfs, "opt", "bench", "stdlib"),
                    symlinks=True)
    _run(["umoci", "repack", "--refresh-bundle", "--image", f"{out}:step", bundle])
    shutil.copytree(os.path.join(rootfs, "usr", "lib", "x86_64-linux-gnu"), os.path.join(rootfs, "opt", "bench", "lib"),
                    symlinks=True)
    _run(["umoci", "repack", "--image", f"{out}:{TAG}", bundle])
    shutil.rmtree(bundle)


def _ratio_sentence(samples: Dict[str, List[float]]) -> str:
    h, s, u = (samples.get(k) for k in KEYS)
    if not h:
        return ""
    out = []
    if s:
        out.append(f"{statistics.median(h) / statistics.median(s):.1f}× skopeo copy")
    if u:
        out.append(f"{statistics.median(h) / statistics.median(u):.2f}× skopeo copy + umoci unpack")
    return f" Hearth's median pull: {', '.join(out)}." if out else ""


class Registry:
    def __init__(self, work: str):
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.config = os.path.join(work, "registry.yml")
        self.log = os.path.join(work, "registry.log")
        config = {"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": os.path.join(work, "storage")}},
                  "http": {"addr": self.host, "secret": "hearth-bench"}}
        with open(self.config, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", self.config], stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not listen on {self.host} within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def image_bytes(out: str) -> Tuple[int, int]:
    """(layers, compressed bytes of the layers) of the built image."""
    index = json.load(open(os.path.join(out, "index.json")))
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG)
    manifest = json.load(open(os.path.join(out, "blobs", "sha256", desc["digest"][7:])))
    return len(manifest["layers"]), sum(l["size"] for l in manifest["layers"])


def measure(bin_dir: str, repo: str, work: str, rounds: int, add: Callable[[str, float], None],
            set_recording: Callable[[bool], None], unavailable: Dict[str, str], notes: List[str],
            samples: Dict[str, List[float]]) -> None:
    """Adds samples under KEYS (a tool that fails is marked unavailable and
    its samples dropped) and a note."""
    why = missing_tools()
    daemon = Daemon(bin_dir, os.path.join(repo, "python"), os.path.join(work, "pull-daemon"),
                    cgroup_suffix="-pull")
    if why is None and not daemon.supports("--insecure-registry"):
        why = "this hearthd build cannot pull images"
    if why is not None:
        for key in KEYS:
            unavailable[key] = why
        return
    base = os.path.join(work, "pull")
    os.makedirs(base)
    registry = Registry(base)
    client = None
    try:
        image = os.path.join(base, "layout")
        build_image(os.path.join(repo, "rootfs", "out", "python-3.11"), image)
        layers, size = image_bytes(image)
        registry.start()
        ref = f"{registry.host}/{REPO}:{TAG}"
        _run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{image}:{TAG}", f"docker://{ref}"])
        daemon.extra_args += ["--insecure-registry", registry.host, "--spares", "0"]
        client = daemon.start()

        def hearth(_: int) -> None:
            t = time.perf_counter()
            status, data = client.raw("POST", "/v1/images/pull", json.dumps({"reference": ref}).encode())
            elapsed = time.perf_counter() - t
            events = [json.loads(l) for l in data.decode().splitlines() if l.strip()]
            if status != 200 or not events or events[-1].get("event") != "done":
                raise APIError(f"pull {ref}: HTTP {status}: {events[-1] if events else data[:300]!r}")
            fetched = sum(1 for e in events if e.get("event") == "layer" and e.get("state") == "done")
            if fetched != layers:
                raise RuntimeError(f"pull {ref} fetched {fetched} of {layers} layers: the store was not empty")
            add("pull-hearth", elapsed)
            # Not timed: the next round must fetch every layer again.
            status, data = client.raw("DELETE", f"/v1/images/{registry.host}/{REPO}:{TAG}")
            if status != 204:
                raise APIError(f"image rm {ref}: HTTP {status}: {data[:300]!r}")

        def skopeo(umoci: bool) -> Callable[[int], None]:
            def run(i: int) -> None:
                dest = os.path.join(base, f"copy-{'u' if umoci else 's'}-{i}")
                t = time.perf_counter()
                _run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:{TAG}"])
                if umoci:
                    _run(["umoci", "unpack", "--image", f"{dest}:{TAG}", dest + "-bundle"])
                elapsed = time.perf_counter() - t
                add("pull-skopeo-umoci" if umoci else "pull-skopeo", elapsed)
                shutil.rmtree(dest, ignore_errors=True)
                shutil.rmtree(dest + "-bundle", ignore_errors=True)
            return run

        runners: List[Tuple[str, Callable[[int], None]]] = [
            ("pull-hearth", hearth), ("pull-skopeo", skopeo(False)), ("pull-skopeo-umoci", skopeo(True))]
        for r in range(rounds + 1):
            order = runners[r % len(runners):] + runners[:r % len(runners)]
            for key, fn in order:
                if key in unavailable:
                    continue
                set_recording(r > 0)
                try:
                    fn(r)
                except Exception as e:
                    unavailable[key] = f"{type(e).__name__}: {str(e)[:300]}"
                    samples.pop(key, None)
                finally:
                    set_recording(True)
        notes.append(
            f"Image pull: a {layers}-layer image ({size / (1 << 20):.1f} MiB of gzipped layers: the default image, "
            "a copy of the Python standard library, a copy of /usr/lib/x86_64-linux-gnu, made by umoci) from "
            "docker-registry over plain HTTP on 127.0.0.1, rounds interleaved after a discarded warm-up. Hearth's "
            "figure is `POST /v1/images/pull` until `done` on a daemon whose store has none of the layers: every "
            "blob downloaded (four at a time), verified while it streams, unpacked into the layer cache with its "
            "diff ID checked, and the file system synced before each layer is renamed into place. `skopeo copy` "
            "stores the verified blobs in an OCI layout and unpacks nothing; `umoci unpack` after it is what a "
            "runtime would add before the image can run."
            + _ratio_sentence(samples))
    except Exception as e:
        for key in KEYS:
            unavailable.setdefault(key, f"{type(e).__name__}: {str(e)[:300]}")
    finally:
        if client is not None:
            client.close()
        daemon.stop()
        registry.stop()
