"""The runtimes a user would pick instead of Hearth, each running the same
task over the same root filesystem, cold: crun, runc, bwrap, and plain
python3 on the host. This module prepares the OCI bundles and builds the
command lines; the runner times them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional

# The same task the Hearth replicas run (benchmod.trivial / benchmod.numpy_task).
TRIVIAL_CODE = "import json; print(json.dumps(1 + 1))"
NUMPY_CODE = "import numpy; print(int(numpy.arange(3).sum()))"


def unpack_bundle(layout: str, tag: str, dest: str) -> str:
    """`umoci unpack` of layout:tag into dest (an OCI runtime bundle)."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", dest], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rootfs = os.path.join(dest, "rootfs")
    # Mount points the peers need (the image ships no /dev entries).
    for d in ("dev", "proc", "sys", "tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    return dest


def bundle_config(config: Dict[str, Any], argv: List[str]) -> Dict[str, Any]:
    """umoci's generated config.json, made to run argv without a terminal,
    with no resource limits (none of the peers sets any)."""
    c = json.loads(json.dumps(config))
    proc = c.setdefault("process", {})
    proc["args"] = list(argv)
    proc["terminal"] = False
    proc["cwd"] = "/"
    env = [e for e in proc.get("env", []) if not e.startswith("TERM=")]
    if not any(e.startswith("PATH=") for e in env):
        env.append("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    proc["env"] = env
    linux = c.setdefault("linux", {})
    linux.pop("resources", None)
    linux.pop("cgroupsPath", None)
    # Same namespaces as Hearth and bwrap --unshare-all (network: loopback only).
    wanted = ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    linux["namespaces"] = [{"type": t} for t in wanted]
    return c


def write_bundle_config(bundle: str, argv: List[str]) -> None:
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump(bundle_config(config, argv), f, indent=1)


def crun_argv(bundle: str, state: str, cid: str) -> List[str]:
    # crun refuses this host's hybrid cgroup layout ("cgroups in hybrid mode
    # not supported"): in a private mount namespace the cgroup2 mount at
    # /sys/fs/cgroup/unified is detached (the host's mounts are untouched), so
    # crun sees a legacy layout, and its cgroup manager is disabled. This
    # favours crun (no cgroup is created, joined or removed); the report says so.
    script = 'umount -l /sys/fs/cgroup/unified 2>/dev/null || true; exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "crun",
            "crun", "--root", state, "--cgroup-manager=disabled", "run", "--bundle", bundle, cid]


def runc_argv(bundle: str, state: str, cid: str) -> List[str]:
    return ["runc", "--root", state, "run", "--bundle", bundle, cid]


def bwrap_argv(rootfs: str, argv: List[str]) -> List[str]:
    return ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", rootfs, "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", *argv]


# The host's Debian python3, the same build as the image's (not whatever
# `python3` a PATH shim such as pyenv would pick).
HOST_PYTHON = "/usr/bin/python3"


def host_argv(argv: List[str]) -> List[str]:
    return [HOST_PYTHON if argv[0] == "python3" else argv[0], *argv[1:]]


def available(tool: str) -> Optional[str]:
    return shutil.which(tool)
