"""Default memory limit, ephemeral storage and the scratch filesystem,
against a real daemon.

A replica whose spec sets no memory limit gets `hearthd --default-memory`
(environments, sandboxes and the spares waiting for one), read back from the
kernel here; admission counts spares at that limit. `ephemeral_storage` is
enforced: a replica that writes more than its limit to its writable layer is
evicted and its task fails with `EphemeralStorageExceeded`. With `--scratch
DIR`, writable layers live on DIR, so a replica that fills its disk fills
DIR and never the state root.

Environment names here start with `lim-`, never `spare-`: conftest tells
spares by that prefix.
"""
import errno
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time

import pytest

from conftest import BIN, IMAGE, LAYOUT, TMP, Daemon, _cgroup_dirs, api, cgroup_layout, is_spare, running_daemon
from test_actors import TASKS, bundle, env, ok, run
from test_spares import assert_adopted, assert_built, settle, spare_names, wait_ready

LIMIT_TASKS = TASKS + textwrap.dedent('''

    def fill(mb, path="/var/tmp/fill", hold=20):
        """Writes `mb` MiB with dd, then waits (bounded) to be evicted."""
        import subprocess
        r = subprocess.run(["dd", "if=/dev/zero", "of=" + path, "bs=1M", "count=%d" % mb, "conv=fsync"],
                           capture_output=True, text=True)
        time.sleep(hold)
        return [r.returncode, r.stderr[-300:]]

    def fill_disk(path="/var/tmp/fill", most_mb=256):
        """Writes 1 MiB chunks until the disk says no (at most `most_mb`)."""
        written = 0
        with open(path, "wb") as f:
            for _ in range(most_mb):
                try:
                    f.write(b"x" * (1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as e:
                    return [written, e.errno, os.strerror(e.errno)]
                written += 1 << 20
        return [written, 0, ""]

    def remove(path):
        os.unlink(path)
        return True
''')

MI = 1 << 20
# The spare daemon's default memory limit: distinct from every limit a spec sets here.
DEFAULT = 256 * MI


def memory_files():
    """The file holding a cgroup's memory limit, and its swap companion."""
    if cgroup_layout() == "v2":
        return "memory.max", "memory.swap.max"
    return "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"


def memory_limit(d, name):
    """The memory limit the kernel holds for replica `name`: (limit, swap
    limit or None where the kernel has no swap accounting)."""
    limit_file, swap_file = memory_files()
    dirs = [os.path.join(top, name) for top in _cgroup_dirs(d.subtree)
            if os.path.exists(os.path.join(top, name, limit_file))]
    assert len(dirs) == 1, f"replica {name}: no single cgroup with {limit_file} under {_cgroup_dirs(d.subtree)}"
    with open(os.path.join(dirs[0], limit_file)) as f:
        limit = f.read().strip()
    swap = None
    if os.path.exists(os.path.join(dirs[0], swap_file)):
        with open(os.path.join(dirs[0], swap_file)) as f:
            swap = f.read().strip()
    return limit, swap


def assert_memory_limit(d, name, want):
    limit, swap = memory_limit(d, name)
    assert limit == str(want), f"replica {name}: memory limit {limit} in the kernel, expected {want}"
    # No swap on top: v2 swap.max 0, v1 memsw equal to the limit.
    assert swap in (None, "0" if cgroup_layout() == "v2" else str(want)), f"replica {name}: swap limit {swap}"


def put_code(d):
    sha, raw = bundle({"tasks.py": LIMIT_TASKS})
    status, body = api(d.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status == 201, body
    return sha


def log_tail(d, n=3000):
    with open(d.log, errors="replace") as f:
        return f.read()[-n:]


# --- daemons -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spd():
    """Spares kept for the default image from its import on, default memory 256Mi."""
    yield from running_daemon("hearth-lim", spares=1,
                              extra_args=["--spare-image", IMAGE, "--default-memory", str(DEFAULT)])


@pytest.fixture
def sd(spd):
    yield spd
    settle(spd)


@pytest.fixture(scope="module")
def code(spd):
    return put_code(spd)


@pytest.fixture(scope="module")
def small():
    """No spares, default memory 64Mi."""
    yield from running_daemon("hearth-lim64", extra_args=["--default-memory", "64Mi"])


# --- default memory ------------------------------------------------------------------------------

def test_a_waiting_spare_has_the_default_memory_limit(sd):
    names = spare_names(wait_ready(sd))
    assert names and all(is_spare(n) for n in names), names
    for name in names:
        assert_memory_limit(sd, name, DEFAULT)


def test_a_sandbox_without_memory_gets_the_default(sd):
    env_ = dict(os.environ, HEARTH_SOCKET=sd.socket)
    p = subprocess.Popen([str(BIN / "hearth"), "sandbox", "--", "sleep", "5"], env=env_,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        found = []
        while not found and time.time() < deadline:
            found = [n for top in _cgroup_dirs(sd.subtree) for n in os.listdir(top) if n.startswith("sbx-")]
            time.sleep(0.05)
        assert found, "no sandbox cgroup appeared"
        assert_memory_limit(sd, found[0], DEFAULT)
    finally:
        p.kill()
        p.communicate(timeout=60)


@pytest.mark.parametrize("how", ["adopted", "built"])
def test_an_environment_without_limits_gets_the_default(sd, code, how):
    # PYTHONHASHSEED is read at interpreter start: such a spec never adopts a spare.
    extra = "" if how == "adopted" else "environment: {PYTHONHASHSEED: '0'}\n"
    ready = spare_names(wait_ready(sd))
    env(sd, f"lim-default-{how}", extra)
    status, snap = run(sd, f"lim-default-{how}", code, "pid")
    assert status == 200, snap
    if how == "adopted":
        assert_adopted(snap, ready)
    else:
        assert_built(snap)
    assert_memory_limit(sd, snap["replica"], DEFAULT)


@pytest.mark.parametrize("mem", [512 * MI, 128 * MI], ids=["larger", "smaller"])
def test_an_adopted_spare_takes_a_larger_or_smaller_limit(sd, code, mem):
    """The spare waits at the default; adoption writes the environment's
    limit whichever way it goes (v1 keeps memsw ≥ limit at every write)."""
    ready = spare_names(wait_ready(sd))
    for name in ready:
        assert_memory_limit(sd, name, DEFAULT)
    e = f"lim-adopt-{mem // MI}"
    env(sd, e, f"limits: {{mem: {mem // MI}Mi}}\n")
    status, snap = run(sd, e, code, "pid")
    assert status == 200, snap
    assert_adopted(snap, ready)
    assert_memory_limit(sd, snap["replica"], mem)
    # The limit holds: within it is fine, past it is an OOM kill naming it.
    assert ok(sd, e, code, "hog", mb=32) == 32 * MI
    status, body = run(sd, e, code, "hog", mb=mem // MI + 64)
    assert body["state"] == "failed" and body["error"]["type"] == "OOMKilled", body
    assert f"limit {mem // MI}Mi" in body["error"]["message"], body


def test_a_sandbox_without_memory_is_oomkilled_at_the_default(small):
    r = small.py("b = bytearray(256 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')")
    stderr = r.stderr.decode(errors="replace")
    assert r.returncode == 137, (r.returncode, stderr)
    assert b"survived" not in r.stdout
    assert "killed: out of memory, limit 64Mi" in stderr, stderr
    # Control: what fits the default runs.
    r = small.py("b = bytearray(16 * 1024 * 1024)\nprint('ok')")
    assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr


# --- admission -----------------------------------------------------------------------------------

def capacity_mi(d):
    """The memory this machine can give, in MiB (rounded as the daemon
    prints it: within 0.01 of its unit)."""
    r = d.hearth("apply", "-f", "-", input=b"name: lim-huge\nreplica_count: 64\nlimits: {mem: 1Ti}\n", check=False)
    msg = r.stderr.decode()
    m = re.search(r"exceeds the ([0-9.]+)(Gi|Mi|Ti) this machine can give", msg)
    assert r.returncode != 0 and m, msg
    return float(m.group(1)) * {"Mi": 1, "Gi": 1024, "Ti": 1 << 20}[m.group(2)]


def test_admission_counts_spares(sd):
    wait_ready(sd)
    cap = capacity_mi(sd)
    # Fits the machine alone (by 128Mi, far more than the rounding of
    # `cap`), but not beside the 256Mi spare.
    mem = int(cap - 128)
    r = sd.hearth("apply", "-f", "-", input=f"name: lim-big\nreplica_count: 1\nlimits: {{mem: {mem}Mi}}\n".encode(), check=False)
    msg = r.stderr.decode()
    assert r.returncode != 0, r.stdout
    assert f'environment "lim-big": replica_count 1 × memory limit' in msg, msg
    assert "plus 1 spare replica × 256Mi = 256Mi, exceeds the" in msg, msg
    assert "hearthd --spares 0" in msg, msg
    # With room for the spare it is admitted.
    mem = int(cap - 384)
    r = sd.hearth("apply", "-f", "-", input=f"name: lim-big\nreplica_count: 1\nlimits: {{mem: {mem}Mi}}\n".encode(), check=False)
    assert r.returncode == 0, r.stderr
    sd.hearth("rm", "lim-big")


def test_admission_counts_the_default_for_environments_without_memory(sd):
    wait_ready(sd)
    cap = capacity_mi(sd)
    # Leaves about 128Mi beside the spare: less than the 256Mi default.
    big = f"name: lim-most\nreplica_count: 1\nlimits: {{mem: {int(cap - 384)}Mi}}\n"
    assert sd.hearth("apply", "-f", "-", input=big.encode(), check=False).returncode == 0
    r = sd.hearth("apply", "-f", "-", input=b"name: lim-plain\nreplica_count: 1\n", check=False)
    msg = r.stderr.decode()
    assert r.returncode != 0, r.stdout
    assert 'environment "lim-plain": replica_count 1 × default memory limit 256Mi = 256Mi, plus ' in msg, msg
    assert "already admitted, plus 1 spare replica × 256Mi = 256Mi, exceeds the" in msg, msg
    sd.hearth("rm", "lim-most")
    # With the room back, the same spec is admitted.
    assert sd.hearth("apply", "-f", "-", input=b"name: lim-plain\nreplica_count: 1\n", check=False).returncode == 0


# --- ephemeral storage ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["built", "adopted"])
def test_ephemeral_storage_over_the_limit_evicts_the_replica(sd, code, how):
    extra = "limits: {ephemeral_storage: 50Mi}\n"
    if how == "built":
        extra += "environment: {PYTHONHASHSEED: '0'}\n"
    e = f"lim-eph-{how}"
    env(sd, e, extra)
    first = run(sd, e, code, "pid")[1]
    assert first["state"] == "succeeded", first
    (assert_adopted if how == "adopted" else assert_built)(first)
    victim = first["replica"]
    status, body = run(sd, e, code, "fill", mb=100)
    assert body["state"] == "failed", body
    err = body["error"]
    assert err["type"] == "EphemeralStorageExceeded", body
    assert re.search(rf"replica {re.escape(victim)} wrote [0-9.]+Mi to its writable layer, "
                     r"over the ephemeral_storage limit 50Mi; it was evicted", err["message"]), err
    used = float(re.search(r"wrote ([0-9.]+)Mi", err["message"]).group(1))
    assert 50 < used <= 110, err
    # Replaced: the next task runs, on another replica.
    after = run(sd, e, code, "pid")[1]
    assert after["state"] == "succeeded" and after["replica"] != victim, after
    # Under the limit is fine on the new replica.
    status, body = run(sd, e, code, "fill", mb=10, hold=0)
    assert body["state"] == "succeeded" and body["result"][0] == 0, body


def test_sandbox_ephemeral_storage(small):
    r = small.sandbox("sh", "-c", "dd if=/dev/zero of=/var/tmp/fill bs=1M count=64 conv=fsync 2>/dev/null; "
                      "sleep 20; echo survived", opts=("--memory", "256Mi", "--ephemeral-storage", "20Mi"))
    stderr = r.stderr.decode(errors="replace")
    assert r.returncode == 137, (r.returncode, stderr)
    assert b"survived" not in r.stdout
    assert re.search(r"killed: replica sbx-\S+ wrote [0-9.]+Mi to its writable layer, over the "
                     r"ephemeral_storage limit 20Mi; it was evicted", stderr), stderr
    # Control: without the limit the same write goes through.
    r = small.sandbox("sh", "-c", "dd if=/dev/zero of=/var/tmp/fill bs=1M count=64 conv=fsync 2>/dev/null; echo done",
                      opts=("--memory", "256Mi"))
    assert r.returncode == 0 and r.stdout == b"done\n", r.stderr


# --- scratch -------------------------------------------------------------------------------------

def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True)


def unmount(path):
    for _ in range(50):
        if subprocess.run(["umount", path], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", path], check=False)


@pytest.fixture(scope="module")
def scratch_daemon():
    """A daemon whose state root is a tmpfs of its own (so its free space
    moves only with what the daemon writes) and whose scratch is a 64Mi
    tmpfs; both unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    base = tempfile.mkdtemp(prefix="hearth-scr-", dir=TMP)
    root, scratch = os.path.join(base, "root"), os.path.join(base, "scratch")
    mounted = []
    try:
        mount_tmpfs(root, "1G")
        mounted.append(root)
        mount_tmpfs(scratch, "64M")
        mounted.append(scratch)
        # What a crashed predecessor would have left on the scratch.
        os.makedirs(os.path.join(scratch, "lim-stale-1", "upper"))
        with open(os.path.join(scratch, "lim-stale-1", "upper", "junk"), "wb") as f:
            f.write(b"x" * 4096)
        d = Daemon(root=os.path.join(root, "state"), socket=os.path.join(base, "hearthd.sock"),
                   subtree=f"hearth-scr-{os.getpid()}", log=os.path.join(base, "hearthd.log"),
                   extra_args=["--scratch", scratch])
        d.start()
        try:
            d.hearth("image", "import", str(LAYOUT), "--name", IMAGE, timeout=600)
            d.scratch = scratch
            yield d
        finally:
            d.stop()
        problems = d.leftovers()
        problems += [f"left on the scratch: {n}" for n in os.listdir(scratch)]
        problems += d.release_cgroup()  # the v2 VM suite's service cgroup
        assert not problems, "\n".join(problems) + "\n" + log_tail(d)
    finally:
        for m in reversed(mounted):
            unmount(m)
        shutil.rmtree(base, ignore_errors=True)


def test_scratch_takes_the_writable_layers_and_a_full_disk(scratch_daemon):
    d = scratch_daemon
    assert os.listdir(d.scratch) == [], "stale cleanup at start did not empty the scratch"
    assert os.stat(d.scratch).st_mode & 0o777 == 0o700
    sha = put_code(d)
    env(d, "lim-fill", "limits: {mem: 512Mi}\n")
    first = run(d, "lim-fill", sha, "pid")[1]
    assert first["state"] == "succeeded", first
    name = first["replica"]
    # The writable layer is on the scratch; the state root holds only the mount point.
    assert os.path.isdir(os.path.join(d.scratch, name, "upper")), os.listdir(d.scratch)
    assert not os.path.exists(os.path.join(d.root, "replicas", name, "upper"))
    before = free_bytes(d.root)
    status, body = run(d, "lim-fill", sha, "fill_disk")
    assert body["state"] == "succeeded", body
    written, code, text = body["result"]
    assert code == errno.ENOSPC, body
    assert 32 * MI <= written <= 64 * MI, body
    assert free_bytes(d.scratch) < 2 * MI, "the scratch should be full"
    assert abs(free_bytes(d.root) - before) <= 2 * MI, \
        f"the state root's free space moved by {(before - free_bytes(d.root)) / MI:.1f}Mi"
    # The daemon still serves: a secret, an apply, a task on the warm replica.
    d.hearth("secret", "set", "lim-token", input=b"t0ken")
    assert b"lim-token" in d.hearth("secret", "ls").stdout
    env(d, "lim-other")
    again = run(d, "lim-fill", sha, "pid")[1]
    assert again["state"] == "succeeded" and again["replica"] == name, again
    # The disk full was the replica's alone: free it, and a new replica starts.
    assert ok(d, "lim-fill", sha, "remove", path="/var/tmp/fill") is True
    other = run(d, "lim-other", sha, "pid")[1]
    assert other["state"] == "succeeded", other
    assert os.path.isdir(os.path.join(d.scratch, other["replica"], "upper"))
    # Teardown takes the writable layers off the scratch.
    d.hearth("rm", "lim-fill")
    d.hearth("rm", "lim-other")
    d.hearth("secret", "rm", "lim-token")
    deadline = time.time() + 20
    while os.listdir(d.scratch) and time.time() < deadline:
        time.sleep(0.05)
    assert os.listdir(d.scratch) == [], os.listdir(d.scratch)
