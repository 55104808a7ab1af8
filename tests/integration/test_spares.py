"""Pre-started spare replicas (`hearthd --spares N`), against a real daemon.

An eligible environment's first replica arms its key (image, network,
seccomp, capabilities); from then on the daemon keeps a ready spare for that
key, and the next eligible environment that needs a replica adopts it: its
cgroup limits and env are applied, its packages checked, and its first task
reports `coldPhases == {"spare_adopt": µs}`. These tests check that an
adopted replica is what a fresh one would be (limits in the kernel, env,
isolation), that ineligible specs never adopt, and that spares go away at
adoption failure, TTL, image removal, key eviction and daemon stop.

Environment names here start with `sp-`, never `spare-`: conftest tells
spares by that prefix.
"""
import json
import os
import pathlib
import signal
import subprocess
import textwrap
import time

import pytest

from conftest import BIN, IMAGE, LAYOUT, _cgroup_dirs, api, cgroup_layout, is_spare, running_daemon
from test_actors import TASKS, bundle, env, ok, run
from test_sandbox import DOCKER_DEFAULT_CAPS, SYSCALL_PROBE, _by_file, _read

# test_actors' task module plus what these tests need.
SPARE_TASKS = TASKS + textwrap.dedent('''

    def environ(keys):
        return {k: os.environ.get(k) for k in keys}

    def whoami():
        import socket
        return {"hostname": socket.gethostname(), "HEARTH_REPLICA": os.environ.get("HEARTH_REPLICA"),
                "HEARTH_ENVIRONMENT": os.environ.get("HEARTH_ENVIRONMENT")}

    def script(src):
        """Runs one of test_sandbox's probe scripts (it prints one JSON
        line) in the worker and returns what it printed."""
        import contextlib, io
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(src, "<probe>", "exec"), {"__name__": "__probe__"})
        return out.getvalue()

    def hostile():
        """What a task that wants out of its replica tries first."""
        import socket
        def write(path, data):
            try:
                with open(path, "w") as fh:
                    fh.write(data)
                return 0
            except OSError as e:
                return e.errno
        res = {"proc_sys_hostname": write("/proc/sys/kernel/hostname", "pwned")}
        # Raise its own limits, or leave its cgroup: v2 and v1 spellings.
        res["cgroup"] = {p: write(p, "max") for p in (
            "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/cgroup.procs",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/pids/pids.max",
            "/sys/fs/cgroup/memory/cgroup.procs")}
        try:
            os.mkdir("/sys/fs/cgroup/escape")
            res["cgroup_mkdir"] = 0
        except OSError as e:
            res["cgroup_mkdir"] = e.errno
        try:
            socket.sethostname("pwned")
            res["sethostname"] = 0
        except OSError as e:
            res["sethostname"] = e.errno
        res["hostname"] = socket.gethostname()
        res["exe1"] = os.readlink("/proc/1/exe")
        st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
        res["status"] = {k: st[k].strip() for k in ("CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}
        return res

    def loaded(names):
        # Imported before this task began (neither the worker nor this module imports these).
        return {n: n in sys.modules for n in names}
''')

# The image that test_image_removal_takes_its_spares removes: the default
# image's layout under another name, so the session's image stays.
COPY = "sp-copy:1"
# --spare-ttl of the short-lived daemon.
SHORT_TTL = 3


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spare_daemon():
    """This module's daemon, one spare per key; at stop nothing may be left."""
    yield from running_daemon("hearth-sp", spares=1)


def put_code(d):
    sha, raw = bundle({"tasks.py": SPARE_TASKS})
    status, body = api(d.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status == 201, body
    return sha


@pytest.fixture(scope="module")
def code(spare_daemon):
    return put_code(spare_daemon)


@pytest.fixture
def sd(spare_daemon):
    """The module's daemon; after the test its environments are removed and
    nothing but listed spares may remain."""
    yield spare_daemon
    settle(spare_daemon)


@pytest.fixture
def short():
    """A daemon of its own whose spares expire after SHORT_TTL seconds."""
    yield from running_daemon("hearth-spt", spares=1, extra_args=["--spare-ttl", str(SHORT_TTL)])


PRE = "sp-pre:1"


@pytest.fixture
def pre():
    """A daemon told to keep spares of PRE (not imported yet), with a short TTL."""
    yield from running_daemon("hearth-spi", spares=1,
                              extra_args=["--spare-ttl", str(SHORT_TTL), "--spare-image", PRE])


# --- helpers -------------------------------------------------------------------------------------

def log_tail(d, n=3000):
    return pathlib.Path(d.log).read_text(errors="replace")[-n:]


def spares(d):
    """GET /v1/spares."""
    status, body = api(d.socket, "GET", "/v1/spares")
    assert status == 200 and isinstance(body, dict), f"GET /v1/spares: {status} {body!r}"
    return body


def keys_of(body, image=IMAGE, network="none"):
    return [k for k in body.get("keys", []) if k.get("image") == image and k.get("network") == network]


def ready_count(body, image=IMAGE):
    return sum(k.get("ready", 0) for k in keys_of(body, image))


def has_spares(body, image):
    """Whether /v1/spares shows any spare (ready, starting or named) of `image`."""
    return any(k.get("ready") or k.get("starting") or k.get("replicas") for k in keys_of(body, image))


def spare_names(body, image=None):
    """Names /v1/spares lists (for one image, or all)."""
    keys = body.get("keys", []) if image is None else keys_of(body, image)
    return {n for k in keys for n in k.get("replicas", [])}


def wait_ready(d, image=IMAGE, exclude=(), timeout=60):
    """Polls /v1/spares until the key of `image` (network none) has a ready
    spare not in `exclude`; returns the body."""
    deadline = time.time() + timeout
    while True:
        body = spares(d)
        if ready_count(body, image) >= 1 and spare_names(body, image) - set(exclude):
            return body
        if time.time() > deadline:
            raise AssertionError(f"no ready spare for {image} (other than {sorted(exclude)}) within {timeout} s; "
                                 f"/v1/spares: {body}\nhearthd log:\n{log_tail(d)}")
        time.sleep(0.05)


def prime(d, code, image=IMAGE):
    """A ready spare for `image`: when its key is not armed, an eligible
    environment runs one task (which arms it) and is removed again.
    Returns the /v1/spares body."""
    body = spares(d)
    if not keys_of(body, image):
        seed = "sp-seed-" + "".join(c if c.isalnum() else "-" for c in image).strip("-")[:40]
        env(d, seed, "" if image == IMAGE else f"container_image: {image}\n")
        ok(d, seed, code, "pid")
        d.hearth("rm", seed)
    return wait_ready(d, image)


def replica_dirs(d, name):
    """Host paths of replica `name`: its replica directory and cgroup leaves."""
    paths = [p for p in [os.path.join(d.root, "replicas", name)] if os.path.exists(p)]
    return paths + [os.path.join(top, name) for top in _cgroup_dirs(d.subtree) if os.path.isdir(os.path.join(top, name))]


def wait_gone(d, names, timeout=20):
    deadline = time.time() + timeout
    while True:
        left = [p for n in names for p in replica_dirs(d, n)]
        if not left:
            return
        if time.time() > deadline:
            raise AssertionError(f"replicas {sorted(names)} still exist after {timeout} s: {left}\n"
                                 f"/v1/spares: {spares(d)}\nhearthd log:\n{log_tail(d)}")
        time.sleep(0.05)


def stray_spares(d):
    """`spare-…` replicas on disk (directory or cgroup) that /v1/spares does
    not list: an adopted replica that outlived its environment, or a spare
    the pool lost track of."""
    on_disk = set()
    rdir = pathlib.Path(d.root, "replicas")
    if rdir.exists():
        # A replica's companions (`<name>.code`, `<name>.secrets`) are its own.
        on_disk |= {p.name.split(".")[0] for p in rdir.iterdir() if is_spare(p.name)}
    for top in _cgroup_dirs(d.subtree):
        on_disk |= {n for n in os.listdir(top) if is_spare(n) and os.path.isdir(os.path.join(top, n))}
    listed = spare_names(spares(d))
    return [f"spare replica not listed by /v1/spares: {n}" for n in sorted(on_disk - listed)]


def settle(d, timeout=20):
    """Removes every environment, then waits until nothing but the spares
    /v1/spares lists is left."""
    for e in json.loads(d.hearth("ls", "--json").stdout):
        d.hearth("rm", e["name"], check=False)
    deadline = time.time() + timeout
    while True:
        problems = d.leftovers(ignore_spares=True) + stray_spares(d)
        if not problems:
            return
        if time.time() > deadline:
            raise AssertionError("left after the test:\n" + "\n".join(problems)
                                 + f"\n/v1/spares: {spares(d)}\nhearthd log:\n{log_tail(d)}")
        time.sleep(0.1)


def phases(snap):
    return snap.get("coldPhases") or {}


def assert_adopted(snap, names=None):
    """`snap` is the first task of a replica adopted from a spare (one of `names`)."""
    assert snap.get("state") == "succeeded", snap
    p = phases(snap)
    assert snap.get("coldStart") is True and set(p) == {"spare_adopt"}, \
        f"expected the first task to run on an adopted spare (coldPhases == {{'spare_adopt': µs}}): {snap}"
    assert isinstance(p["spare_adopt"], int) and p["spare_adopt"] >= 0, snap
    assert is_spare(snap["replica"]), f"an adopted replica keeps its spare's name: {snap}"
    if names is not None:
        assert snap["replica"] in names, f"adopted {snap['replica']}, not one of the ready spares {sorted(names)}"


def assert_built(snap):
    """`snap` is the first task of a replica built from scratch."""
    assert snap.get("state") == "succeeded", snap
    p = phases(snap)
    assert snap.get("coldStart") is True and "spare_adopt" not in p and "worker_ready" in p, \
        f"expected a replica built from scratch (the usual coldPhases, no spare_adopt): {snap}"
    assert not is_spare(snap["replica"]), f"a replica built from scratch is named after its environment: {snap}"


def first_task(d, code, name, extra="", fn="whoami", **kwargs):
    """Applies environment `name` and runs its first task; returns the snapshot."""
    env(d, name, extra)
    status, snap = run(d, name, code, fn, **kwargs)
    assert status == 200, snap
    return snap


def limit_files():
    """The cgroup files an environment's limits and requests set (DESIGN.md's table)."""
    if cgroup_layout() == "v2":
        return ["cpu.max", "cpu.weight", "memory.max", "memory.low", "memory.oom.group", "pids.max"]
    return ["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares", "memory.limit_in_bytes",
            "memory.soft_limit_in_bytes", "pids.max"]


def cgroup_values(d, name, files):
    dirs = [os.path.join(top, name) for top in _cgroup_dirs(d.subtree) if os.path.isdir(os.path.join(top, name))]
    assert dirs, f"replica {name} has no cgroup under {_cgroup_dirs(d.subtree)}"
    values = {f: _read(_by_file(dirs, f)) for f in files}
    # Swap: absent without swap accounting.
    for f in ("memory.swap.max", "memory.memsw.limit_in_bytes"):
        hits = [os.path.join(x, f) for x in dirs if os.path.exists(os.path.join(x, f))]
        if hits:
            values[f] = _read(hits[0])
    return values


# --- tests ---------------------------------------------------------------------------------------

def test_second_environment_adopts_a_spare(sd, code):
    before = prime(sd, code)
    assert before.get("enabled") is True and before.get("perKey") == 1, before
    assert isinstance(before.get("adopted"), int), before
    for k in before["keys"]:
        assert {"image", "network", "ready", "starting", "replicas"} <= set(k), before
        assert k["ready"] + k["starting"] <= before["perKey"], f"more spares than --spares 1 per key: {before}"
        assert all(is_spare(n) for n in k["replicas"]), before
    ready = spare_names(before, IMAGE)
    # The CLI's table names the image and its ready spare.
    table = sd.hearth("spares").stdout.decode()
    assert IMAGE in table and any(n in table for n in ready), table
    status, metrics = api(sd.socket, "GET", "/metrics")
    metrics = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert status == 200 and 'hearth_spares{state="ready"} 1' in metrics, metrics[-2000:]
    assert "hearth_spare_adoptions " in metrics, metrics[-2000:]
    snap = first_task(sd, code, "sp-adopt")
    assert_adopted(snap, ready)
    name = snap["replica"]
    me = snap["result"]
    assert me == {"hostname": name, "HEARTH_REPLICA": name, "HEARTH_ENVIRONMENT": "sp-adopt"}, me
    # It is the environment's now: warm tasks go to it.
    again = run(sd, "sp-adopt", code, "whoami")[1]
    assert again["state"] == "succeeded" and again["replica"] == name and again["coldStart"] is False, again
    # A replacement is built in the background; the adopted one is not a spare any more.
    after = wait_ready(sd, exclude={name})
    assert name not in spare_names(after), f"{name} was adopted but /v1/spares still lists it: {after}"
    assert after["adopted"] == before["adopted"] + 1, f"adopted count: before {before}, after {after}"
    # Used once: when its environment goes, so does the replica; it never returns to the pool.
    sd.hearth("rm", "sp-adopt")
    wait_gone(sd, [name])
    assert name not in spare_names(spares(sd))


def test_adopted_replica_gets_the_environment_limits(sd, code):
    spec = "requests: {cpu: 500m, mem: 32Mi}\nlimits: {cpu: 750m, mem: 96Mi}\n"
    ready = spare_names(prime(sd, code), IMAGE)
    snap = first_task(sd, code, "sp-limits", spec, fn="pid")
    assert_adopted(snap, ready)
    adopted = cgroup_values(sd, snap["replica"], limit_files())
    if cgroup_layout() == "v2":
        want = {"cpu.max": "75000 100000", "cpu.weight": "59", "memory.max": str(96 << 20),
                "memory.low": str(32 << 20), "memory.oom.group": "1", "pids.max": "4096"}
        swap = {"memory.swap.max": "0"}
    else:
        want = {"cpu.cfs_quota_us": "75000", "cpu.cfs_period_us": "100000", "cpu.shares": "512",
                "memory.limit_in_bytes": str(96 << 20), "memory.soft_limit_in_bytes": str(32 << 20), "pids.max": "4096"}
        swap = {"memory.memsw.limit_in_bytes": str(96 << 20)}
    want.update({f: v for f, v in swap.items() if f in adopted})
    assert adopted == want, f"adopted replica {snap['replica']}: cgroup files {adopted}, expected {want}"
    # The same spec built from scratch (PYTHONHASHSEED makes it ineligible) lands on the same values.
    fresh = first_task(sd, code, "sp-limits-fresh", spec + "environment: {PYTHONHASHSEED: '0'}\n", fn="pid")
    assert_built(fresh)
    assert cgroup_values(sd, fresh["replica"], limit_files()) == adopted, \
        f"adopted {adopted} != fresh {cgroup_values(sd, fresh['replica'], limit_files())}"


def test_adopted_replica_is_oomkilled_at_its_limit(sd, code):
    # 64Mi is the smallest eligible memory limit.
    ready = spare_names(prime(sd, code), IMAGE)
    snap = first_task(sd, code, "sp-small", "limits:\n  mem: 64Mi\n", fn="pid")
    assert_adopted(snap, ready)
    status, body = run(sd, "sp-small", code, "hog", mb=256)
    assert body["state"] == "failed" and body["error"]["type"] == "OOMKilled", body
    assert body["replica"] == snap["replica"], body
    assert "64Mi" in body["error"]["message"], body
    assert ok(sd, "sp-small", code, "hog", mb=8) == 8 << 20


def test_adopted_replica_gets_the_environment_env_and_nothing_else(sd, code):
    keys = ["SP_ONLY_A", "SP_SHARED", "SP_SET_AT_RUNTIME", "HEARTH_ENVIRONMENT", "HEARTH_IMAGE",
            "HEARTH_REQUIRE_PACKAGES", "HEARTH_REPLICA"]
    ready = spare_names(prime(sd, code), IMAGE)
    a = first_task(sd, code, "sp-env-a", "environment: {SP_ONLY_A: only-a, SP_SHARED: from-a}\n",
                   fn="environ", keys=keys)
    assert_adopted(a, ready)
    seen = a["result"]
    assert seen["SP_ONLY_A"] == "only-a" and seen["SP_SHARED"] == "from-a", seen
    assert seen["HEARTH_ENVIRONMENT"] == "sp-env-a" and seen["HEARTH_IMAGE"] == IMAGE, seen
    assert seen["HEARTH_REPLICA"] == a["replica"] and seen["HEARTH_REQUIRE_PACKAGES"] in (None, ""), seen
    ok(sd, "sp-env-a", code, "set_env", key="SP_SET_AT_RUNTIME", value="a-was-here")
    # The next environment adopts the replacement spare: nothing of A's there.
    ready = spare_names(wait_ready(sd, exclude={a["replica"]}), IMAGE)
    b = first_task(sd, code, "sp-env-b", "environment: {SP_SHARED: from-b}\npackages: [union, flytekitplugins-pod]\n",
                   fn="environ", keys=keys)
    assert_adopted(b, ready - {a["replica"]})
    seen = b["result"]
    # The daemon keeps packages in the effective spec's (sorted) order.
    assert sorted((seen.get("HEARTH_REQUIRE_PACKAGES") or "").split()) == ["flytekitplugins-pod", "union"], seen
    seen = dict(seen, HEARTH_REQUIRE_PACKAGES="checked above")
    assert seen == {"SP_ONLY_A": None, "SP_SHARED": "from-b", "SP_SET_AT_RUNTIME": None,
                    "HEARTH_ENVIRONMENT": "sp-env-b", "HEARTH_IMAGE": IMAGE,
                    "HEARTH_REQUIRE_PACKAGES": "checked above", "HEARTH_REPLICA": b["replica"]}, seen
    # And A still sees its own.
    assert ok(sd, "sp-env-a", code, "environ", keys=keys)["SP_SET_AT_RUNTIME"] == "a-was-here"


# Each spec is ineligible for one reason; its first task must build a
# replica from scratch although a spare of its key is ready.
INELIGIBLE = [
    ("secret", "secret_requests: [sp-token]\n", "read_secret", {"key": "sp-token"}, "sp-s3cr3t"),
    ("pythonhashseed", "environment: {PYTHONHASHSEED: '123'}\n", "get_env", {"key": "PYTHONHASHSEED"}, "123"),
    ("home", "environment: {HOME: /tmp}\n", "get_env", {"key": "HOME"}, "/tmp"),
    ("ld-prefix", "environment: {LD_BIND_NOW: '1'}\n", "get_env", {"key": "LD_BIND_NOW"}, "1"),
    ("lc-prefix", "environment: {LC_ALL: C.UTF-8}\n", "get_env", {"key": "LC_ALL"}, "C.UTF-8"),
    ("hearth-prefix", "environment: {HEARTH_CUSTOM: x}\n", "get_env", {"key": "HEARTH_CUSTOM"}, "x"),
    ("small-memory", "limits: {mem: 48Mi}\n", "get_env", {"key": "HEARTH_ENVIRONMENT"}, "sp-inel-small-memory"),
]


@pytest.mark.parametrize("reason,extra,fn,kwargs,expect", INELIGIBLE, ids=[c[0] for c in INELIGIBLE])
def test_ineligible_environment_never_adopts(sd, code, reason, extra, fn, kwargs, expect):
    if reason == "secret":
        sd.hearth("secret", "set", "sp-token", input=b"sp-s3cr3t")
    before = prime(sd, code)
    name = f"sp-inel-{reason}"
    snap = first_task(sd, code, name, extra, fn=fn, **kwargs)
    assert snap["state"] == "succeeded" and snap["result"] == expect, snap
    assert_built(snap)
    after = spares(sd)
    assert spare_names(after) == spare_names(before) and after["adopted"] == before["adopted"], \
        f"{reason}: the ready spare was touched; before {before}, after {after}"


def test_missing_package_fails_adoption_and_spare_recovers(sd, code):
    before = prime(sd, code)
    ready = spare_names(before, IMAGE)
    env(sd, "sp-nopkg", "packages: [no-such-package-xyz]\n")
    status, body = run(sd, "sp-nopkg", code, "pid")
    assert body["state"] == "failed" and body["error"]["type"] == "ReplicaStartFailed", body
    msg = body["error"]["message"]
    assert "does not provide the Python package 'no-such-package-xyz'" in msg and IMAGE in msg, body
    st = json.loads(sd.hearth("status", "sp-nopkg", "--json").stdout)
    assert st["lastError"] and "no-such-package-xyz" in st["lastError"], st
    sd.hearth("rm", "sp-nopkg")
    # The spare it took is torn down, never handed back; a new one is built.
    wait_gone(sd, ready)
    after = wait_ready(sd, exclude=ready)
    assert not spare_names(after) & ready, f"the spare that failed adoption is listed again: {after}"


def test_isolation_holds_in_an_adopted_replica(sd, code):
    ready = spare_names(prime(sd, code), IMAGE)
    snap = first_task(sd, code, "sp-hostile", "limits: {mem: 96Mi}\n", fn="hostile")
    assert_adopted(snap, ready)
    p = snap["result"]
    assert p["proc_sys_hostname"] in (30, 13), p            # EROFS (or EACCES)
    assert all(e != 0 for e in p["cgroup"].values()), f"a cgroup file was writable from inside: {p}"
    assert p["cgroup_mkdir"] != 0, p
    assert p["sethostname"] == 1, p                        # EPERM: no CAP_SYS_ADMIN
    assert p["hostname"] == snap["replica"], p
    assert p["exe1"] == "/.hearth/hearth-init", p
    st = p["status"]
    assert int(st["CapEff"], 16) == DOCKER_DEFAULT_CAPS and int(st["CapBnd"], 16) == DOCKER_DEFAULT_CAPS, st
    assert int(st["CapAmb"], 16) == 0 and st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
    out = ok(sd, "sp-hostile", code, "script", src=SYSCALL_PROBE)
    for name, (rc, e) in json.loads(out.strip().splitlines()[-1]).items():
        assert rc == -1 and e == 1, f"{name}: rc={rc} errno={e} in adopted replica {snap['replica']}, expected EPERM"
    # The kernel still holds the environment's limits.
    files = ["memory.max", "pids.max"] if cgroup_layout() == "v2" else ["memory.limit_in_bytes", "pids.max"]
    values = cgroup_values(sd, snap["replica"], files)
    assert values[files[0]] == str(96 << 20) and values["pids.max"] == "4096", values


def test_image_removal_takes_its_spares(sd, code):
    sd.hearth("image", "import", str(LAYOUT), "--name", COPY)
    try:
        snap = first_task(sd, code, "sp-img", f"container_image: {COPY}\n")
        assert_built(snap)   # the first replica of a new key is built
        body = wait_ready(sd, COPY)
        names = spare_names(body, COPY)
        assert names, body
        status, resp = api(sd.socket, "DELETE", f"/v1/images/{COPY}")
        # The environment on it holds the image (its replica named); spares never do.
        assert status == 409, resp
        msg = resp["error"]["message"]
        assert "environment sp-img" in msg and snap["replica"] in msg and not any(n in msg for n in names), resp
        sd.hearth("rm", "sp-img")
        status, resp = api(sd.socket, "DELETE", f"/v1/images/{COPY}")
        assert status == 204, f"DELETE /v1/images/{COPY}: {status} {resp}; /v1/spares: {spares(sd)}"
        # Torn down before the image went: nothing of them right after the 204.
        left = [p for n in names for p in replica_dirs(sd, n)]
        after = spares(sd)
        assert not left, f"spares of {COPY} outlived its removal: {left}; /v1/spares: {after}"
        assert not has_spares(after, COPY), f"/v1/spares still has spares of the removed {COPY}: {after}"
        images = {i["name"] for i in json.loads(sd.hearth("image", "ls", "--json").stdout)}
        assert COPY not in images and IMAGE in images, images
        # None is built again for the image that is gone.
        for _ in range(10):
            time.sleep(0.1)
            body = spares(sd)
            assert not has_spares(body, COPY), f"a spare of the removed {COPY} was built again: {body}"
    finally:
        sd.hearth("rm", "sp-img", check=False)
        sd.hearth("image", "rm", COPY, check=False)


def test_reimport_under_the_same_name_retires_its_spares(sd, code):
    # Another image's content under the same name: the old layers may be
    # collected, so spares built on them go; the name's next key is the new id.
    other = LAYOUT.parent / "python-numpy-3.11"
    if not (other / "index.json").exists():
        pytest.skip(f"{other} is missing (scripts/setup builds it for the benchmark)")
    name = "sp-reimport:1"
    sd.hearth("image", "import", str(LAYOUT), "--name", name)
    try:
        ok(sd, env(sd, "sp-re-a", f"container_image: {name}\n"), code, "pid")
        old = spare_names(wait_ready(sd, name), name)
        assert old, spares(sd)
        sd.hearth("rm", "sp-re-a")
        sd.hearth("image", "import", str(other), "--name", name)
        deadline = time.time() + 30
        while any(replica_dirs(sd, n) for n in old) or spare_names(spares(sd), name) & old:
            assert time.time() < deadline, \
                f"spares {sorted(old)} of the old {name} outlived its re-import: {spares(sd)}\n{log_tail(sd)}"
            time.sleep(0.05)
        # The new content's first environment builds, then arms the new key.
        snap = first_task(sd, code, "sp-re-b", f"container_image: {name}\n")
        assert_built(snap)
        assert spare_names(wait_ready(sd, name), name).isdisjoint(old)
    finally:
        sd.hearth("rm", "sp-re-a", check=False)
        sd.hearth("rm", "sp-re-b", check=False)
        sd.hearth("image", "rm", name, check=False)


def test_at_most_four_keys_least_recently_used_dropped(sd, code):
    images = [f"sp-lru-{i}:1" for i in range(1, 6)]
    names = {}
    try:
        for i, img in enumerate(images, 1):
            sd.hearth("image", "import", str(LAYOUT), "--name", img)
            ok(sd, env(sd, f"sp-lru-{i}", f"container_image: {img}\n"), code, "pid")
            names[img] = spare_names(wait_ready(sd, img), img)
        # Armed in order 1…5: the key of sp-lru-1 (and of any image armed before) is dropped.
        deadline = time.time() + 20
        while True:
            body = spares(sd)
            keys = {k["image"] for k in body["keys"]}
            if keys == set(images[1:]):
                break
            assert time.time() < deadline, f"expected the keys of {images[1:]} only: {body}"
            time.sleep(0.05)
        wait_gone(sd, names[images[0]])
    finally:
        for i in range(1, 6):
            sd.hearth("rm", f"sp-lru-{i}", check=False)
        for img in images:
            # Retried while the environment's replica is still going away.
            deadline = time.time() + 10
            while time.time() < deadline:
                r = sd.hearth("image", "rm", img, check=False)
                if r.returncode == 0 or b"not found" in r.stderr:
                    break
                time.sleep(0.1)


def test_spare_image_is_kept_from_its_import_on(pre):
    d = pre
    sha = put_code(d)
    assert not has_spares(spares(d), PRE), spares(d)
    d.hearth("image", "import", str(LAYOUT), "--name", PRE)
    # No environment has used it: its spare starts with the import, pinned.
    body = wait_ready(d, PRE)
    assert [k.get("pinned") for k in keys_of(body, PRE)] == [True], body
    assert "--spare-image" in d.hearth("spares").stdout.decode()
    names = spare_names(body, PRE)
    snap = first_task(d, sha, "sp-pre-env", f"container_image: {PRE}\n")
    assert_adopted(snap, names)
    d.hearth("rm", "sp-pre-env")
    # A pinned key outlives the spare TTL: its replacement is still there after it.
    time.sleep(SHORT_TTL + 1.5)
    assert spare_names(wait_ready(d, PRE, exclude={snap["replica"]}), PRE), spares(d)
    # A name that is not an image name stops the daemon at start, saying why.
    r = subprocess.run([str(BIN / "hearthd"), "--root", d.root + "-bad", "--socket", d.socket + "-bad",
                        "--spare-image", "Not An Image"], capture_output=True, timeout=60)
    assert r.returncode != 0 and b"Not An Image" in r.stderr, r


def test_spares_expire_after_the_spare_ttl(short):
    d = short
    sha = put_code(d)
    # The first replica on a fresh daemon is built, and arms the key.
    assert_built(first_task(d, sha, "sp-ttl-seed", fn="pid"))
    names = spare_names(wait_ready(d), IMAGE)
    d.hearth("rm", "sp-ttl-seed")
    # Unused for SHORT_TTL seconds: gone while the daemon runs, spares included.
    deadline = time.time() + SHORT_TTL + 30
    while d.leftovers():
        assert time.time() < deadline, \
            f"still there {SHORT_TTL} s + 30 s after the spare TTL: {d.leftovers()}; /v1/spares: {spares(d)}"
        time.sleep(0.1)
    body = spares(d)
    assert ready_count(body) == 0 and not spare_names(body) & names, body
    assert all(k["starting"] == 0 for k in keys_of(body)), body
    time.sleep(1)
    assert d.leftovers() == [], f"an expired spare came back: /v1/spares: {spares(d)}"
    # Without a spare the next environment builds its replica, and that arms the key again.
    snap = first_task(d, sha, "sp-ttl-next", fn="pid")
    assert_built(snap)
    wait_ready(d, exclude=names)
    d.hearth("rm", "sp-ttl-next")


def test_daemon_stop_removes_spares_and_restart_arms_saved_keys(sd, code):
    ready = spare_names(prime(sd, code), IMAGE)
    snap = first_task(sd, code, "sp-stop")
    assert_adopted(snap, ready)
    wait_ready(sd, exclude={snap["replica"]})
    rc = sd.stop()
    try:
        problems = sd.leftovers()
        tail = log_tail(sd)
    finally:
        sd.start()
    assert rc in (0, -signal.SIGTERM), f"hearthd exited {rc}:\n{tail}"
    assert problems == [], "left after SIGTERM with a ready spare and an adopted replica:\n" \
        + "\n".join(problems) + f"\nhearthd log:\n{tail}"
    # sp-stop's spec was saved: the restarted daemon knows its key at once,
    # and the environment's first task after the restart adopts a spare.
    names = spare_names(wait_ready(sd), IMAGE)
    status, snap = run(sd, "sp-stop", code, "whoami")
    assert status == 200, snap
    assert_adopted(snap, names)


PRELOAD = ["email.mime.text", "xml.dom.minidom"]


def wait_preloaded(d, modules, timeout=60):
    """Polls /v1/spares until a key of the default image with `preload ==
    modules` has a ready spare; returns its names."""
    deadline = time.time() + timeout
    while True:
        body = spares(d)
        for k in keys_of(body):
            if k.get("preload") == modules and k.get("ready", 0) >= 1:
                return set(k["replicas"])
        if time.time() > deadline:
            raise AssertionError(f"no ready spare preloading {modules} within {timeout} s: {body}\n{log_tail(d)}")
        time.sleep(0.05)


def test_preload_imports_before_the_first_task_built_or_adopted(sd, code):
    """`preload`: a replica built from scratch and a spare of the same key
    have imported the modules before their first task; the key's spares
    preload them, and an environment without preload never adopts one."""
    names = PRELOAD + ["wave"]
    extra = "preload: [email.mime.text, xml.dom.minidom, email.mime.text]\n"
    built = first_task(sd, code, "sp-pre-a", extra, fn="loaded", names=names)
    assert_built(built)
    assert built["result"] == {"email.mime.text": True, "xml.dom.minidom": True, "wave": False}, built
    ready = wait_preloaded(sd, PRELOAD)
    adopted = first_task(sd, code, "sp-pre-b", extra, fn="loaded", names=names)
    assert_adopted(adopted, ready)
    assert adopted["result"] == built["result"], adopted
    plain = first_task(sd, code, "sp-pre-c", "", fn="loaded", names=names)
    assert plain["replica"] not in wait_preloaded(sd, PRELOAD) | ready, plain
    assert plain["result"] == {n: False for n in names}, plain
    for e in ("sp-pre-a", "sp-pre-b", "sp-pre-c"):
        sd.hearth("rm", e)


def test_preload_of_a_missing_module_fails_the_start_naming_it(sd, code):
    env(sd, "sp-pre-missing", "preload: [json, no_such_module_here]\n")
    status, snap = run(sd, "sp-pre-missing", code, "pid")
    assert snap.get("state") != "succeeded", snap
    assert "preload no_such_module_here: ModuleNotFoundError: No module named 'no_such_module_here'" \
        in json.dumps(snap), snap
    sd.hearth("rm", "sp-pre-missing")
    r = sd.hearth("apply", "-f", "-", input=b"name: sp-pre-bad\npreload: [numpy-2]\n", check=False)
    assert r.returncode != 0 and b'preload[0]: "numpy-2" is not a module name' in r.stderr, r.stderr
