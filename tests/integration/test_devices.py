"""Host devices stay out of reach: every replica (sandbox, warm environment
replica, adopted spare) has a device allow-list in its cgroup (v1 `devices`
controller, v2 BPF_CGROUP_DEVICE program), and every writable mount but
/dev is nodev. Root in a replica keeps CAP_MKNOD, so the attack is real:
make the node, then open it."""
import glob
import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import pytest

from conftest import IMAGE, _cgroup_dirs, api, cgroup_layout, running_daemon
from test_actors import bundle
from test_spares import assert_adopted, spare_names, wait_ready

# (name, S_IFCHR/S_IFBLK, major, minor, the host's own node)
DEVICES = [
    ("kvm", stat.S_IFCHR, 10, 232, "/dev/kvm"),
    ("loop0", stat.S_IFBLK, 7, 0, "/dev/loop0"),
    ("tun", stat.S_IFCHR, 10, 200, "/dev/net/tun"),
    ("fuse", stat.S_IFCHR, 10, 229, "/dev/fuse"),
]

# devices.list of a v1 replica cgroup: deny-all, then these allows.
STANDARD_LIST = ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                 "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"]

# The same function runs in a sandbox (python3 -c) and as a task.
PROBE = textwrap.dedent('''
    import os, stat

    def attack(devices, directory):
        """mknod each device in `directory`, then open(O_RDWR): what happened."""
        out = {}
        for name, kind, major, minor in devices:
            path = os.path.join(directory, "hearth-" + name)
            try:
                os.mknod(path, kind | 0o600, os.makedev(major, minor))
            except OSError as e:
                out[name] = {"step": "mknod", "errno": e.errno, "text": str(e)}
                continue
            try:
                os.close(os.open(path, os.O_RDWR))
                out[name] = {"step": "open", "errno": 0, "text": "opened"}
            except OSError as e:
                out[name] = {"step": "open", "errno": e.errno, "text": str(e)}
            finally:
                os.unlink(path)
        return out

    def standard():
        """The standard devices still work, and a pty opens."""
        out = {}
        fd = os.open("/dev/null", os.O_RDWR)
        out["null"] = [os.write(fd, b"x"), os.read(fd, 8).decode()]
        os.close(fd)
        with open("/dev/zero", "rb") as f:
            out["zero"] = f.read(4) == bytes(4)
        fd = os.open("/dev/full", os.O_WRONLY)
        try:
            os.write(fd, b"x")
            out["full"] = 0
        except OSError as e:
            out["full"] = e.errno
        os.close(fd)
        for name in ("random", "urandom"):
            with open("/dev/" + name, "rb") as f:
                out[name] = len(f.read(16))
        m, s = os.openpty()
        os.write(m, b"hi\\n")
        out["pty"] = [os.ttyname(s), os.read(s, 3).decode()]
        os.close(m)
        os.close(s)
        return out

    def probe(devices):
        return {"dev": attack(devices, "/dev"), "tmp": attack(devices, "/tmp"), "standard": standard()}
''')


def first_disk():
    """(name, major, minor) of the first whole disk in the host's
    /proc/partitions (not a partition, loop, ram or zram device), or None."""
    for line in pathlib.Path("/proc/partitions").read_text().splitlines()[2:]:
        parts = line.split()
        if len(parts) != 4:
            continue
        major, minor, _, name = parts
        if name.startswith(("loop", "ram", "zram", "sr", "nbd")):
            continue
        if os.path.exists(f"/sys/class/block/{name}/partition"):
            continue
        return name, int(major), int(minor)
    return None


def attacked_devices():
    """The four devices, plus the host's first disk where it has one."""
    devices = [(n, k, ma, mi) for n, k, ma, mi, _ in DEVICES]
    disk = first_disk()
    if disk:
        devices.append(("disk-" + disk[0], stat.S_IFBLK, disk[1], disk[2]))
    return devices


def assert_refused(p, devices):
    """In /dev (tmpfs, devices allowed): mknod works, open is refused by
    the device cgroup with EPERM. In /tmp (the overlay root, nodev): open is
    refused by the mount with EACCES before the cgroup is asked."""
    for name, *_ in devices:
        dev, tmp = p["dev"][name], p["tmp"][name]
        assert dev["step"] == "open" and dev["errno"] == 1, (name, dev)
        assert dev["text"] == f"[Errno 1] Operation not permitted: '/dev/hearth-{name}'", (name, dev)
        assert tmp["step"] == "open" and tmp["errno"] == 13, (name, tmp)
        assert tmp["text"] == f"[Errno 13] Permission denied: '/tmp/hearth-{name}'", (name, tmp)
    s = p["standard"]
    assert s["null"] == [1, ""], s
    assert s["zero"] is True, s
    assert s["full"] == 28, s  # ENOSPC: /dev/full works as /dev/full
    assert s["random"] == 16 and s["urandom"] == 16, s
    assert s["pty"][0].startswith("/dev/pts/") and s["pty"][1] == "hi\n", s


@pytest.fixture(scope="module")
def hd():
    yield from running_daemon("hearth-dv")


@pytest.fixture(scope="module")
def code(hd):
    sha, raw = bundle({"devprobe.py": PROBE})
    status, body = api(hd.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status == 201, body
    return sha


def run_probe_task(hd, env, code):
    devices = attacked_devices()
    req = {"module": "devprobe", "function": "probe", "kwargs": {"devices": devices}, "bundle": code, "wait": True}
    status, body = api(hd.socket, "POST", f"/v1/environments/{env}/tasks", req)
    assert status == 200 and body["state"] == "succeeded", body
    return devices, body


def apply_env(hd, name):
    r = hd.hearth("apply", "-f", "-", input=f"name: {name}\nreplica_count: 1\nttl_seconds: 300\n".encode(), check=False)
    assert r.returncode == 0, r.stderr


def delete_env(hd, name):
    status, body = api(hd.socket, "DELETE", f"/v1/environments/{name}")
    assert status in (200, 202, 204), body


def test_sandbox_cannot_open_host_devices(hd):
    devices = attacked_devices()
    code = PROBE + f"\nimport json\nprint(json.dumps(probe({devices!r})))\n"
    r = hd.py(code)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    p = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert_refused(p, devices)


def test_environment_replica_cannot_open_host_devices(hd, code):
    apply_env(hd, "devices")
    try:
        devices, body = run_probe_task(hd, "devices", code)
        assert_refused(body["result"], devices)
    finally:
        delete_env(hd, "devices")


def test_v1_replica_cgroup_lists_the_allow_list(hd, code):
    """The kernel's view while the replica runs: devices.list of its v1
    devices cgroup is the standard list and nothing else."""
    if cgroup_layout() != "v1":
        pytest.skip("cgroup v1 only: v2 has no devices.list (the BPF program is checked by the attack)")
    apply_env(hd, "devlist")
    try:
        _, body = run_probe_task(hd, "devlist", code)
        roots = [d for d in _cgroup_dirs(hd.subtree) if "/devices" in d.split(hd.subtree)[0]]
        assert len(roots) == 1, roots
        listed = pathlib.Path(roots[0], body["replica"], "devices.list").read_text().splitlines()
        assert listed == STANDARD_LIST, listed
    finally:
        delete_env(hd, "devlist")


@pytest.fixture(scope="module")
def spare_hd():
    """A daemon that keeps a spare of the default image from start-up."""
    yield from running_daemon("hearth-dvs", spares=1, extra_args=["--spare-image", IMAGE])


def test_adopted_spare_cannot_open_host_devices(spare_hd):
    """A spare is built with the same allow-list, and adoption keeps it."""
    d = spare_hd
    sha, raw = bundle({"devprobe.py": PROBE})
    status, body = api(d.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status == 201, body
    ready = spare_names(wait_ready(d, timeout=120))
    if cgroup_layout() == "v1":
        # The spare, before any environment has it.
        roots = [r for r in _cgroup_dirs(d.subtree) if "/devices" in r.split(d.subtree)[0]]
        for name in ready:
            listed = pathlib.Path(roots[0], name, "devices.list").read_text().splitlines()
            assert listed == STANDARD_LIST, (name, listed)
    apply_env(d, "devspare")
    try:
        devices, body = run_probe_task(d, "devspare", sha)
        assert_adopted(body, ready)
        assert_refused(body["result"], devices)
    finally:
        delete_env(d, "devspare")


CONTROL = textwrap.dedent('''
    import json, os, subprocess, sys, tempfile
    devices = json.loads(sys.argv[1])
    d = tempfile.mkdtemp()
    # A private tmpfs: a filesystem that allows device nodes, in this
    # process's own mount namespace, so nothing shows on the host.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=700", "hearth-control", d], check=True)
    out = {}
    for name, kind, major, minor, real in devices:
        path = os.path.join(d, name)
        os.mknod(path, kind | 0o600, os.makedev(major, minor))
        def opens(p):
            try:
                os.close(os.open(p, os.O_RDWR))
                return 0
            except OSError as e:
                return e.errno
        out[name] = {"node": opens(path), "real": opens(real) if os.path.exists(real) else None}
    print(json.dumps(out))
''')


def test_host_control_same_numbers_open_outside_a_replica():
    """Without a replica's cgroup the same device numbers open: what refuses
    them inside is the replica's device cgroup, not this host."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    devices = [list(d) for d in DEVICES]
    disk = first_disk()
    if disk:
        devices.append(["disk-" + disk[0], stat.S_IFBLK, disk[1], disk[2], "/dev/" + disk[0]])
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", CONTROL,
                        json.dumps(devices)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = json.loads(r.stdout)
    opened = []
    for name, *_ in devices:
        # Where the host's own node opens (the driver exists here), a node
        # of the same numbers made anywhere devices are allowed opens too.
        if out[name]["real"] == 0:
            assert out[name]["node"] == 0, (name, out[name])
            opened.append(name)
        else:
            # No driver, or a device this host refuses to everyone (a VM's
            # own disk): the same answer either way, never the cgroup's EPERM.
            assert out[name]["node"] == out[name]["real"] or out[name]["real"] is None, (name, out[name])
    if not opened:
        pytest.skip(f"none of the attacked devices has a driver on this host: {out}")


# moby's daemon/pkg/oci/defaults.go: the fixed list, plus each possible
# CPU's thermal_throttle where the host has one.
MASKED = ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
          "/sys/devices/virtual/powercap", "/sys/firmware"]


def test_masked_paths_follow_moby(hd):
    paths = MASKED + sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/thermal_throttle"))
    on_host = [p for p in paths if os.path.exists(p)]
    assert "/proc/interrupts" in on_host and "/proc/keys" in on_host
    code = textwrap.dedent(f'''
        import json, os
        out = {{}}
        for p in {on_host!r}:
            if not os.path.exists(p):
                out[p] = "absent"
            elif os.path.isdir(p):
                entries = os.listdir(p)
                try:
                    open(os.path.join(p, "hearth-probe"), "w").close()
                    writable = True
                except OSError as e:
                    writable = e.errno
                out[p] = {{"entries": entries, "create": writable}}
            else:
                try:
                    with open(p, "rb") as f:
                        out[p] = {{"bytes": len(f.read(4096))}}
                except OSError as e:
                    out[p] = {{"errno": e.errno}}
        print(json.dumps(out))
    ''')
    r = hd.py(code)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    seen = json.loads(r.stdout.decode().strip().splitlines()[-1])
    for p in on_host:
        v = seen[p]
        if v == "absent":
            continue  # not in the replica's /proc or /sys at all: nothing to read
        if os.path.isdir(p):
            assert v == {"entries": [], "create": 30}, (p, v)  # an empty read-only tmpfs (EROFS)
        else:
            assert v == {"bytes": 0}, (p, v)  # bound to /dev/null
    # The host's /proc/interrupts is not empty: the mask is what hides it.
    assert pathlib.Path("/proc/interrupts").read_bytes()
