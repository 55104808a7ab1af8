"""`hearthd --upgrade` (and SIGUSR2): the running daemon hands its warm
replicas to the binary now at its path by exec(2) in place, under a steady
stream of tasks, and no task fails: new requests get 503 `upgrading` (the
SDK sends them again), queued tasks reach replicas first, the tasks running
then finish in their replicas and reach their callers through the new
binary, and the same interpreters serve on."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import BIN, TMP, api, running_daemon
from test_actors import bundle

REPO = pathlib.Path(__file__).resolve().parents[2]

STREAM = '''
import json, sys, threading
from hearth import ActorEnvironment, map_task

env = ActorEnvironment(name="up-stream", replica_count=2, ttl_seconds=300)

@env.task
def work(i: int, seconds: float) -> list:
    import os, time
    time.sleep(seconds)
    return [i, os.getpid()]

lock = threading.Lock()
stop = threading.Event()
seen = {"ok": 0, "maps": 0, "failed": 0, "errors": [], "pids": set()}

def note(error=None, pid=None, maps=0):
    with lock:
        if error is None:
            seen["ok"] += 1
            seen["maps"] += maps
            if pid is not None:
                seen["pids"].add(pid)
        else:
            seen["failed"] += 1
            seen["errors"].append(error)

def client(k):
    i = 0
    while not stop.is_set():
        i += 1
        n = k * 1000000 + i
        try:
            got = work(i=n, seconds=0.5 if i % 7 == 0 else 0.01)
            assert got[0] == n, got
            note(pid=got[1])
        except Exception as e:
            note("%s: %s" % (type(e).__name__, str(e)[:400]))

def mapper():
    i = 0
    while not stop.is_set():
        i += 1
        xs = list(range(i * 100, i * 100 + 6))
        try:
            got = map_task(work)(i=xs, seconds=[0.05] * len(xs))
            assert [g[0] for g in got] == xs, got
            note(maps=1)
        except Exception as e:
            note("map: %s: %s" % (type(e).__name__, str(e)[:400]))

print("READY", work(i=0, seconds=0)[1], flush=True)
threads = [threading.Thread(target=client, args=(k,)) for k in range(4)] + [threading.Thread(target=mapper)]
for t in threads:
    t.start()
sys.stdin.readline()
stop.set()
for t in threads:
    t.join()
seen["pids"] = sorted(seen["pids"])
print(json.dumps(seen), flush=True)
'''


@pytest.fixture(scope="module")
def ud():
    # A hearthd of its own whose file the tests replace, as a package
    # upgrade does (a new inode at the same path).
    bindir = tempfile.mkdtemp(prefix="hearth-up-bin-", dir=TMP)
    shutil.copy2(BIN / "hearthd", os.path.join(bindir, "hearthd"))
    yield from running_daemon("hearth-up", binary=os.path.join(bindir, "hearthd"))
    shutil.rmtree(bindir, ignore_errors=True)


def replace_binary(hd):
    """Installs the same build again at the daemon's path (install(1)'s way:
    a new file renamed over the old one, which the running process keeps)."""
    tmp = hd.binary + ".new"
    shutil.copy2(BIN / "hearthd", tmp)
    os.rename(tmp, hd.binary)
    return os.stat(hd.binary).st_ino


def exe_inode(pid):
    return os.stat(f"/proc/{pid}/exe").st_ino


def upgrade(hd):
    return subprocess.run([hd.binary, "--upgrade", "--socket", hd.socket], capture_output=True, text=True,
                          timeout=180)


def replica_pids(hd, env):
    st = api(hd.socket, "GET", f"/v1/environments/{env}")[1]
    return {r["name"]: r["pid"] for r in st["replicas"]}


def nap_env(hd, name, seconds):
    """An environment of one prewarmed replica and a task request that
    sleeps `seconds` there and returns the worker's pid."""
    sha, raw = bundle({"slow.py": "import os, time\ndef nap(s):\n    time.sleep(s)\n    return os.getpid()\n"})
    assert api(hd.socket, "PUT", f"/v1/code/{sha}", raw)[0] in (200, 201)
    spec = f"name: {name}\nreplicas: {{min: 1, max: 1}}\nprewarm: true\nttl_seconds: 300\n"
    assert hd.hearth("apply", "-f", "-", input=spec.encode()).returncode == 0
    return {"module": "slow", "function": "nap", "kwargs": {"s": seconds}, "bundle": sha}


def test_an_upgrade_under_a_steady_stream_fails_no_task(ud, tmp_path):
    (tmp_path / "flows.py").write_text(STREAM)
    envv = dict(os.environ, HEARTH_SOCKET=ud.socket, PYTHONPATH=str(REPO / "python"), HEARTH_RECONNECT_TIMEOUT="60")
    p = subprocess.Popen([sys.executable, str(tmp_path / "flows.py")], cwd=tmp_path, env=envv, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = p.stdout.readline().split()
        assert ready and ready[0] == "READY", (ready, p.stderr.read() if p.poll() is not None else "")
        deadline = time.time() + 60
        while len(replica_pids(ud, "up-stream")) < 2 and time.time() < deadline:
            time.sleep(0.1)
        before = replica_pids(ud, "up-stream")
        assert len(before) == 2, before
        version = api(ud.socket, "GET", "/v1/version")[1]
        time.sleep(2)  # the stream runs on both replicas
        new_inode = replace_binary(ud)
        assert exe_inode(ud.proc.pid) != new_inode
        r = upgrade(ud)
        assert r.returncode == 0, (r.stdout, r.stderr, open(ud.log).read()[-3000:])
        assert "now runs" in r.stdout, r.stdout
        print(r.stdout.strip())
        # The same process runs the new file; it started anew.
        assert exe_inode(ud.proc.pid) == new_inode
        after = api(ud.socket, "GET", "/v1/version")[1]
        assert after["pid"] == version["pid"] == ud.proc.pid
        assert after["started"] > version["started"]
        time.sleep(2)  # the stream goes on through the new binary
        p.stdin.write("stop\n")
        p.stdin.flush()
        out = p.stdout.readline()
        assert p.wait(60) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    seen = json.loads(out)
    print(f"stream: {seen['ok']} calls ({seen['maps']} map_tasks of 6), {seen['failed']} failed")
    assert seen["failed"] == 0, seen["errors"]
    assert seen["ok"] > 50 and seen["maps"] > 3, seen
    # The warm interpreters served on: the same two replicas, no new one.
    assert replica_pids(ud, "up-stream") == before
    assert set(seen["pids"]) == set(before.values()), (seen["pids"], before)
    log = open(ud.log).read()
    assert "upgrade: exec" in log and "adopted replica" in log and "serving again" in log, log[-3000:]
    print([line for line in log.splitlines() if "serving again" in line][-1])
    ud.hearth("rm", "up-stream")


def test_sigusr2_upgrades_and_tasks_in_flight_finish(ud):
    req = nap_env(ud, "up-sig", 3)
    status, t = api(ud.socket, "POST", "/v1/environments/up-sig/tasks", req)
    assert status == 202, t
    deadline = time.time() + 60
    while api(ud.socket, "GET", f"/v1/tasks/{t['id']}")[1]["state"] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    started = api(ud.socket, "GET", "/v1/version")[1]["started"]
    new_inode = replace_binary(ud)
    os.kill(ud.proc.pid, signal.SIGUSR2)
    deadline = time.time() + 60
    while True:
        try:
            if api(ud.socket, "GET", "/v1/version")[1]["started"] != started:
                break
        except OSError:
            pass
        assert time.time() < deadline, open(ud.log).read()[-3000:]
        time.sleep(0.05)
    assert exe_inode(ud.proc.pid) == new_inode
    # The task running at the exec ends with its real result.
    body = api(ud.socket, "GET", f"/v1/tasks/{t['id']}?wait=30")[1]
    assert body["state"] == "succeeded", body
    assert body["result"] == list(replica_pids(ud, "up-sig").values())[0], body
    ud.hearth("rm", "up-sig")


def test_an_upgrade_that_cannot_finish_is_refused_and_work_goes_on(ud):
    # A binary that does not run: refused before anything stops.
    saved = ud.binary + ".saved"
    os.rename(ud.binary, saved)
    try:
        with open(ud.binary, "w") as f:
            f.write("#!/bin/sh\nexit 3\n")
        os.chmod(ud.binary, 0o755)
        r = subprocess.run([saved, "--upgrade", "--socket", ud.socket], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "--version exited with status 3" in r.stderr, (r.stdout, r.stderr)
    finally:
        os.rename(saved, ud.binary)
    # The daemon did not stop, and takes changes and tasks again.
    status, body = api(ud.socket, "GET", "/v1/version")
    assert status == 200 and body["pid"] == ud.proc.pid
    spec = "name: up-after\nreplicas: {min: 1, max: 1}\nttl_seconds: 300\n"
    r = ud.hearth("apply", "-f", "-", input=spec.encode(), check=False)
    assert r.returncode == 0, r.stderr
    ud.hearth("rm", "up-after")


@pytest.fixture(scope="module")
def quick():
    yield from running_daemon("hearth-upq", extra_args=["--upgrade-timeout", "4s"])


def test_an_upgrade_with_tasks_still_queued_at_its_timeout_is_refused(quick):
    req = nap_env(quick, "up-q", 6)
    ids = [api(quick.socket, "POST", "/v1/environments/up-q/tasks", req)[1]["id"] for _ in range(3)]
    deadline = time.time() + 60
    while api(quick.socket, "GET", f"/v1/tasks/{ids[0]}")[1]["state"] != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    up = subprocess.Popen([quick.binary, "--upgrade", "--socket", quick.socket], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while "new tasks and changes wait" not in open(quick.log).read():
        assert time.time() < deadline and up.poll() is None, up.communicate()
        time.sleep(0.02)
    # While it waits: tasks and changes are refused untouched (503
    # `upgrading`, which clients send again), reads are answered.
    status, body = api(quick.socket, "POST", "/v1/environments/up-q/tasks", req)
    assert status == 503 and body["error"]["code"] == "upgrading", body
    status, body = api(quick.socket, "DELETE", "/v1/environments/up-q")
    assert status == 503 and body["error"]["code"] == "upgrading", body
    assert api(quick.socket, "GET", "/v1/environments/up-q")[0] == 200
    out, err = up.communicate(timeout=60)
    assert up.returncode == 1, (out, err)
    assert "upgrade refused: after 4 s" in err and "task(s) queued in environment up-q" in err, err
    # Nothing was lost and work goes on with the old binary.
    for t in ids:
        body = api(quick.socket, "GET", f"/v1/tasks/{t}?wait=30")[1]
        while body["state"] in ("queued", "running"):
            body = api(quick.socket, "GET", f"/v1/tasks/{t}?wait=30")[1]
        assert body["state"] == "succeeded", body
    status, body = api(quick.socket, "POST", "/v1/environments/up-q/tasks", dict(req, kwargs={"s": 0}, wait=True))
    assert status == 200 and body["state"] == "succeeded", body
    quick.hearth("rm", "up-q")
