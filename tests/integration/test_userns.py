"""User namespaces (opt-in): root in the replica is an unprivileged host
uid from a range of the replica's own, seen from the host; the image layers
are idmapped mounts (nothing chowned on disk); the seed's examples run with
`hearthd --userns`; and what root inside tries against the host fails."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from conftest import BIN, REPO, api, running_daemon
from test_actors import apply, bundle

FIRST_BASE = 0x70000000
RANGE = 65536
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="module")
def un():
    """A daemon whose replicas run in user namespaces by default."""
    yield from running_daemon("hearth-un", extra_args=["--userns"])


def host_status(pid):
    st = dict(l.split(":", 1) for l in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l)
    return {k: st[k].split() for k in ("Uid", "Gid", "CapEff")}


def replica_pids(d, name_prefix):
    """Host pids of the processes in the cgroup of a replica of `d` named name_prefix…"""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cg = pathlib.Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if f"/{d.subtree}/{name_prefix}" in cg:
            out.append(int(pid))
    return out


PROBE = textwrap.dedent('''
    import json, os, stat
    res = {"uid": os.getuid(), "gid": os.getgid(),
           "uid_map": open("/proc/self/uid_map").read().split(),
           "passwd_owner": os.stat("/etc/passwd").st_uid, "root_owner": os.stat("/").st_uid}
    # Root inside owns the image's files: it can change them (copy-up).
    open("/etc/motd", "a").write("written by root in a user namespace\\n")
    open("/marker", "w").write("x")
    res["wrote"] = True
    # Device nodes cannot be made at all in a user namespace (not even in a
    # directory root inside owns).
    try:
        os.mknod("/tmp/kvm-again", 0o600 | stat.S_IFCHR, os.makedev(10, 232))
        res["mknod"] = "made"
    except OSError as e:
        res["mknod"] = e.errno
    print(json.dumps(res), flush=True)
    import time; time.sleep(float(os.environ.get("HOLD", "0")))
''')


def test_sandbox_root_is_an_unprivileged_host_uid(un):
    p = subprocess.Popen([str(BIN / "hearth"), "sandbox", "--env", "HOLD=30", "--", "python3", "-c", PROBE],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, HEARTH_SOCKET=un.socket))
    try:
        line = p.stdout.readline()
        res = json.loads(line)
        assert res["uid"] == 0 and res["gid"] == 0
        inside, base, count = map(int, res["uid_map"])
        assert inside == 0 and count == RANGE and base >= FIRST_BASE, res
        # The image's files belong to root inside (idmapped layers) ...
        assert res["passwd_owner"] == 0 and res["root_owner"] == 0 and res["wrote"]
        assert res["mknod"] == 1, res  # EPERM
        # ... and from the host every process of the replica is that uid.
        pids = replica_pids(un, "sbx-")
        assert pids
        for pid in pids:
            st = host_status(pid)
            assert st["Uid"] == [str(base)] * 4 and st["Gid"] == [str(base)] * 4, st
        # What root inside wrote is owned by its host uid; the layer is untouched.
        uppers = list(pathlib.Path(un.root, "replicas").glob("sbx-*/upper"))
        assert len(uppers) == 1
        assert (uppers[0] / "marker").stat().st_uid == base
        assert (uppers[0] / "etc" / "motd").stat().st_uid == base
    finally:
        p.kill()
        p.wait()
    for layer in pathlib.Path(un.root, "layers").iterdir():
        for f in ("etc/passwd", "etc/motd", "usr/bin/python3.11"):
            if (layer / f).exists():
                assert (layer / f).stat().st_uid == 0, f"{layer / f} was chowned"
                assert b"user namespace" not in (layer / f).read_bytes()[:4096]


def test_two_replicas_get_different_ranges(un):
    code = "print(open('/proc/self/uid_map').read().split()[1])"
    a = un.py(code)
    b = un.py(code)
    assert a.returncode == 0 and b.returncode == 0
    # Ranges rotate: a replica never reuses the range of the one before it.
    assert a.stdout != b.stdout


def test_opt_out_runs_as_host_root(un):
    r = un.py("print(open('/proc/self/uid_map').read().split())", opts=("--no-userns",))
    assert r.returncode == 0
    assert r.stdout.split() == [b"['0',", b"'0',", b"'4294967295']"], r.stdout


TASKS = textwrap.dedent('''
    import os
    def ids():
        return {"uid": os.getuid(), "map": open("/proc/self/uid_map").read().split(),
                "secret": open("/etc/secrets/un-token").read()}
''')


def test_environment_replica_and_secret(un):
    sha, raw = bundle({"untasks.py": TASKS})
    assert api(un.socket, "PUT", f"/v1/code/{sha}", raw)[0] in (200, 201)
    un.hearth("secret", "set", "un-token", input=b"shifted")
    r = apply(un, "name: un-env\nreplica_count: 1\nsecret_requests: [un-token]\n")
    assert r.returncode == 0, r.stderr
    status, body = api(un.socket, "POST", "/v1/environments/un-env/tasks",
                       {"module": "untasks", "function": "ids", "kwargs": {}, "bundle": sha, "wait": True})
    assert status == 200 and body["state"] == "succeeded", body
    res = body["result"]
    assert res["uid"] == 0 and int(res["map"][1]) >= FIRST_BASE and res["secret"] == "shifted"
    # A spec may opt out on a daemon whose default is on.
    r = apply(un, "name: un-env-off\nreplica_count: 1\nuser_namespace: false\nsecret_requests: [un-token]\n")
    assert r.returncode == 0, r.stderr
    status, body = api(un.socket, "POST", "/v1/environments/un-env-off/tasks",
                       {"module": "untasks", "function": "ids", "kwargs": {}, "bundle": sha, "wait": True})
    assert body["result"]["map"] == ["0", "0", "4294967295"], body
    for e in ("un-env", "un-env-off"):
        un.hearth("rm", e)


def test_bad_user_namespace_value_is_refused(un):
    r = apply(un, "name: un-bad\nuser_namespace: yes please\n")
    assert r.returncode != 0 and b"user_namespace: expected true or false" in r.stderr, r.stderr


def sdk_env(d):
    env = dict(os.environ, HEARTH_SOCKET=d.socket, PYTHONPATH=str(REPO / "python"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@pytest.mark.parametrize("example,args,expect", [
    ("hello_world.py", ["wf"], ""),
    ("plus_one.py", ["wf", "--input", "0"], "4"),
    ("multiple_tasks.py", ["my_parent_wf", "--name", "Ada"], "HELLO HELLO hello Ada"),
    ("pod_template.py", ["wf"], "compile_time\nrun_time"),
])
def test_seed_examples_run_in_user_namespaces(un, example, args, expect):
    if example == "pod_template.py":
        pytest.importorskip("kubernetes", reason="scripts/setup installs kubernetes from PyPI")
    r = subprocess.run([sys.executable, "-m", "hearth", "run", str(EXAMPLES / example), *args],
                       capture_output=True, text=True, env=sdk_env(un), timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expect, r.stdout
