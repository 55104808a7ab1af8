"""Finished tasks outlive the daemon: state, timings, error, result and
logs are kept in <root>/tasks/tasks.db (SQLite, WAL) and read back after a
restart, clean or SIGKILL; `--task-retention AGE[,COUNT]` removes old
records, and a removed one answers 404 naming the rule."""
import json
import os
import pathlib
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest

from conftest import BIN, api, keeper_pid, running_daemon
from test_actors import TASKS, bundle, env, run


@pytest.fixture(scope="module")
def sd():
    yield from running_daemon("hearth-ts", extra_args=["--task-retention", "1h,6"])


def upload(hd):
    sha, raw = bundle({"tasks.py": TASKS})
    status, body = api(hd.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status in (200, 201), body
    return sha


def finished(hd, e, code, fn, **kwargs):
    status, body = run(hd, e, code, fn, **kwargs)
    assert status == 200 and body["state"] in ("succeeded", "failed"), body
    return body


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_finished_tasks_read_back_the_same_after_a_restart(sd, how):
    code = upload(sd)
    e = env(sd, f"kept-{how}")
    good = finished(sd, e, code, "noisy", tag="kept", n=3)
    bad = finished(sd, e, code, "boom", message="it broke " * 20)
    assert bad["state"] == "failed" and "Traceback" in bad["error"]["traceback"]
    before = {t["id"]: api(sd.socket, "GET", f"/v1/tasks/{t['id']}")[1] for t in (good, bad)}
    logs = api(sd.socket, "GET", f"/v1/tasks/{good['id']}/logs")[1]
    assert len(logs["entries"]) >= 2

    # Records are written after the response, a batch every few
    # milliseconds: a kill in the same instant could beat the commit.
    time.sleep(0.2)
    sd.stop(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    sd.start()
    for tid, snap in before.items():
        status, body = api(sd.socket, "GET", f"/v1/tasks/{tid}")
        assert status == 200, body
        assert body == snap, (body, snap)
    status, again = api(sd.socket, "GET", f"/v1/tasks/{good['id']}/logs")
    assert status == 200 and again == logs
    r = sd.hearth("result", good["id"])
    assert json.loads(r.stdout) == "kept"
    # A finished task cannot be cancelled; the answer is the task as it ended.
    status, body = api(sd.socket, "DELETE", f"/v1/tasks/{bad['id']}")
    assert status == 202 and body["state"] == "failed" and body["id"] == bad["id"], body
    tasks = os.path.join(sd.root, "tasks")
    assert stat.S_IMODE(os.stat(tasks).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(tasks, "tasks.db")).st_mode) == 0o600
    sd.hearth("rm", e)


def test_a_task_lost_in_a_crash_stays_reported_after_the_next_restart(sd):
    code = upload(sd)
    e = env(sd, "crashy")
    _, t = run(sd, e, code, "slow", wait=False, seconds=60)
    time.sleep(1)
    # The daemon and the keeper both die: the replica goes with them.
    sd.stop(signal.SIGKILL)
    os.kill(keeper_pid(sd), signal.SIGKILL)
    sd.start()
    sd.stop()
    sd.start()
    status, body = api(sd.socket, "GET", f"/v1/tasks/{t['id']}")
    assert status == 200 and body["state"] == "lost", body
    assert body["error"]["type"] == "TaskLost"
    sd.hearth("rm", e)


def test_retention_keeps_the_newest_count_and_names_the_rule(sd):
    code = upload(sd)
    e = env(sd, "counted")
    ids = [finished(sd, e, code, "echo", i=i)["id"] for i in range(9)]
    # The store keeps 6 (a little more until its next commit); a start prunes exactly.
    sd.stop()
    sd.start()
    for tid in ids[-6:]:
        status, body = api(sd.socket, "GET", f"/v1/tasks/{tid}")
        assert status == 200, body
    status, body = api(sd.socket, "GET", f"/v1/tasks/{ids[0]}")
    assert status == 404, body
    m = body["error"]["message"]
    assert f"task {ids[0]} not found" in m and "kept for 1h and the newest 6 (--task-retention)" in m, m
    sd.hearth("rm", e)


def test_records_older_than_the_age_are_removed():
    gen = running_daemon("hearth-tsa", extra_args=["--task-retention", "1h"])
    hd = next(gen)
    try:
        code = upload(hd)
        e = env(hd, "aged")
        old, young = (finished(hd, e, code, "echo", i=i)["id"] for i in (1, 2))
        hd.stop()
        # Age one record by two hours (no test should wait an hour, and a
        # short age would race a slow machine's cold start).
        db = sqlite3.connect(os.path.join(hd.root, "tasks", "tasks.db"))
        with db:
            assert db.execute("UPDATE tasks SET finished = finished - 7200 WHERE id = ?", (old,)).rowcount == 1
        db.close()
        hd.start()
        status, body = api(hd.socket, "GET", f"/v1/tasks/{old}")
        assert status == 404 and "kept for 1h" in body["error"]["message"], body
        assert api(hd.socket, "GET", f"/v1/tasks/{young}")[0] == 200, "kept while younger than the age"
        hd.hearth("rm", e)
    finally:
        next(gen, None)  # stops the daemon and checks for leftovers


def test_retention_zero_keeps_no_records_and_removes_old_ones(sd):
    code = upload(sd)
    e = env(sd, "forgotten")
    tid = finished(sd, e, code, "echo", i=1)["id"]
    sd.hearth("rm", e)
    sd.stop()
    db = os.path.join(sd.root, "tasks", "tasks.db")
    assert os.path.exists(db)
    args = sd.extra_args
    sd.extra_args = args + ["--task-retention", "0"]
    try:
        sd.start()
        assert not os.path.exists(db)
        status, body = api(sd.socket, "GET", f"/v1/tasks/{tid}")
        assert status == 404 and "--task-retention 0" in body["error"]["message"], body
        sd.stop()
    finally:
        sd.extra_args = args
        sd.start()


@pytest.mark.parametrize("value, says", [
    ("1h,x", '--task-retention: "x" is not a count of tasks'),
    ("soon", '--task-retention: "soon" is not a duration'),
    ("1h,2,3", '--task-retention: "1h,2,3" is not a retention'),
])
def test_a_bad_retention_is_refused_at_start(tmp_path, value, says):
    r = subprocess.run([str(BIN / "hearthd"), "--root", str(tmp_path / "root"), "--socket", str(tmp_path / "s.sock"),
                        "--task-retention", value], capture_output=True, timeout=30)
    assert r.returncode != 0
    assert says in r.stderr.decode(), r.stderr


# -- task ids from the client, waiting by id, and the SDK across a restart ----------

def test_a_client_id_makes_a_resubmission_the_same_task(sd):
    code = upload(sd)
    e = env(sd, "idempotent")
    req = {"module": "tasks", "function": "count", "bundle": code, "wait": True, "id": "job-1.a:b"}
    s1, first = api(sd.socket, "POST", f"/v1/environments/{e}/tasks", req)
    s2, again = api(sd.socket, "POST", f"/v1/environments/{e}/tasks", req)
    assert s1 == 200 and s2 == 200 and first["id"] == "job-1.a:b" and again == first, (first, again)
    # It ran once: the next task of the replica counts 2.
    assert run(sd, e, code, "count")[1]["result"] == [first["result"][0], 2]
    other = env(sd, "idempotent-other")
    status, body = api(sd.socket, "POST", f"/v1/environments/{other}/tasks", req)
    assert status == 409 and 'task id job-1.a:b is already used by a task of environment "idempotent"' in body["error"]["message"], body
    for bad in ["t-1", "", "-x", "a/b", "x" * 129, "é"]:
        status, body = api(sd.socket, "POST", f"/v1/environments/{e}/tasks", dict(req, id=bad))
        assert status == 400 and body["error"]["message"].startswith("id: "), (bad, body)
        assert "not a task id" in body["error"]["message"]
    sd.hearth("rm", e)
    sd.hearth("rm", other)


def test_a_batch_id_makes_a_resent_batch_the_same_tasks(sd):
    code = upload(sd)
    e = env(sd, "idempotent-batch")
    req = {"module": "tasks", "function": "count", "bundle": code, "inputs": [{}, {}], "id": "map-7"}
    s1, first = api(sd.socket, "POST", f"/v1/environments/{e}/batch", req)
    s2, again = api(sd.socket, "POST", f"/v1/environments/{e}/batch", req)
    assert s1 == 200 and s2 == 200 and [t["id"] for t in first] == ["map-7-0", "map-7-1"], first
    assert again == first
    # They ran once: the next task of the replica counts 3.
    assert run(sd, e, code, "count")[1]["result"][1] == 3
    assert api(sd.socket, "GET", "/v1/tasks/map-7-1")[1]["result"] == first[1]["result"]
    # Partly known ids (another batch under the same id) add nothing.
    status, body = api(sd.socket, "POST", f"/v1/environments/{e}/batch", dict(req, inputs=[{}, {}, {}]))
    assert status == 409 and "task id map-7-0 is already used" in body["error"]["message"], body
    assert api(sd.socket, "GET", "/v1/tasks/map-7-2")[0] == 404
    status, body = api(sd.socket, "POST", f"/v1/environments/{e}/batch", dict(req, id="b" * 127))
    assert status == 400 and "is over 128 characters" in body["error"]["message"], body
    status, body = api(sd.socket, "POST", f"/v1/environments/{e}/batch", dict(req, id="t-9"))
    assert status == 400 and "not a task id" in body["error"]["message"], body
    sd.hearth("rm", e)


def test_get_with_wait_answers_when_the_task_ends(sd):
    code = upload(sd)
    e = env(sd, "long-poll")
    _, t = run(sd, e, code, "slow", wait=False, seconds=1.5)
    status, body = api(sd.socket, "GET", f"/v1/tasks/{t['id']}?wait=0.1")
    assert status == 200 and body["state"] in ("queued", "running"), body
    status, body = api(sd.socket, "GET", f"/v1/tasks/{t['id']}?wait=30")
    assert status == 200 and body["state"] == "succeeded", body
    status, body = api(sd.socket, "GET", f"/v1/tasks/{t['id']}?wait=61")
    assert status == 400 and "wait:" in body["error"]["message"], body
    sd.hearth("rm", e)


SDK_SCRIPT = '''
import sys, time
from hearth import ActorEnvironment

env = ActorEnvironment(name="sdk-restart", replica_count=1, ttl_seconds=300)

@env.task
def pid() -> int:
    import os
    return os.getpid()

@env.task
def slow(seconds: float) -> int:
    import os, time
    time.sleep(seconds)
    return os.getpid()

print("READY", pid(), flush=True)
sys.stdin.readline()
try:
    print("SLOW", slow(seconds=5), flush=True)
except Exception as e:
    print("SLOW-ERROR", type(e).__name__, str(e).replace("\\n", " ")[:300], flush=True)
print("NEXT", flush=True)
sys.stdin.readline()
t0 = time.time()
print("AFTER", pid(), round(time.time() - t0, 1), flush=True)
'''


def test_the_sdk_rides_out_a_daemon_restart(sd, tmp_path):
    (tmp_path / "flows.py").write_text(SDK_SCRIPT)
    envv = dict(os.environ, HEARTH_SOCKET=sd.socket, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[2] / "python"),
                HEARTH_RECONNECT_TIMEOUT="60")
    p = subprocess.Popen([sys.executable, str(tmp_path / "flows.py")], cwd=tmp_path, env=envv, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = p.stdout.readline().split()
        assert ready and ready[0] == "READY", (ready, p.stderr.read() if p.poll() is not None else "")
        # A task in flight when hearthd is killed: its replica outlives the
        # daemon (the keeper), the call waits for the restarted daemon and
        # returns the task's real result, from the same interpreter.
        p.stdin.write("go\n"); p.stdin.flush()
        time.sleep(1.5)
        sd.stop(signal.SIGKILL)
        time.sleep(1)
        sd.start()
        slow = p.stdout.readline().split(maxsplit=2)
        assert slow[0] == "SLOW" and slow[1] == ready[1], (slow, ready)
        assert p.stdout.readline().strip() == "NEXT"
        # A call made while hearthd is down waits for it, then runs once.
        sd.stop(signal.SIGKILL)
        p.stdin.write("go\n"); p.stdin.flush()
        time.sleep(2)
        sd.start()
        after = p.stdout.readline().split()
        assert after and after[0] == "AFTER" and after[1] == ready[1], (after, ready, p.stderr.read() if p.poll() is not None else "")
        assert float(after[2]) >= 1.5, "the call waited for the daemon"
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    sd.hearth("rm", "sdk-restart")
