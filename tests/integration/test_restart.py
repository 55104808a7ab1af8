"""Warm replicas outlive hearthd: a keeper (`hearth-init --keeper`) holds
each environment replica's fds, so a SIGKILLed daemon's interpreters and
the tasks in them go on; the restarted daemon adopts them (same pids, no
cold start, actor_cache values intact) and the tasks in flight end with
their real results. A keeper that dies is replaced while hearthd runs; one
that dies while hearthd is down turns the tasks into a clean TaskLost and
the environment builds new replicas."""
import json
import os
import signal
import socket
import time

import pytest

from conftest import api, keeper_pid, running_daemon
from test_actors import bundle

TASKS = '''
import os, time
from hearth import actor_cache

STATE = {}

@actor_cache
def model(name):
    # Stands for an expensive load: a random token per interpreter.
    return os.urandom(8).hex()

def remember(key, value):
    STATE[key] = value
    return [os.getpid(), model("m")]

def recall(key):
    return [os.getpid(), STATE.get(key), model("m")]

def work(i, seconds):
    time.sleep(seconds)
    return {"i": i, "pid": os.getpid(), "token": model("m")}
'''


@pytest.fixture(scope="module")
def rd():
    yield from running_daemon("hearth-rs")


def upload(hd):
    sha, raw = bundle({"tasks.py": TASKS})
    status, body = api(hd.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status in (200, 201), body
    return sha


def apply(hd, name, extra=""):
    spec = f"name: {name}\nreplicas: {{min: 2, max: 2}}\nprewarm: true\nttl_seconds: 300\n{extra}"
    r = hd.hearth("apply", "-f", "-", input=spec.encode())
    assert r.returncode == 0, r.stderr


def post(hd, env, code, fn, wait=True, **kwargs):
    req = {"module": "tasks", "function": fn, "kwargs": kwargs, "bundle": code, "wait": wait}
    return api(hd.socket, "POST", f"/v1/environments/{env}/tasks", req)


def replicas(hd, env):
    st = api(hd.socket, "GET", f"/v1/environments/{env}")[1]
    return {r["name"]: r for r in st["replicas"]}


def wait_for(what, fn, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def final(hd, tid, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = api(hd.socket, "GET", f"/v1/tasks/{tid}?wait=10")
        assert status == 200, body
        if body["state"] not in ("queued", "running"):
            return body
    raise AssertionError(f"task {tid} did not end")


def ready_envs(hd, names):
    for name in names:
        wait_for(f"{name} prewarmed", lambda: len(replicas(hd, name)) == 2
                 and all(r["state"] == "ready" for r in replicas(hd, name).values()))


def warm_env(hd, name):
    """Uploads the tasks, applies `name` (two prewarmed replicas) and waits
    until both are ready: the bundle and {replica: pid}."""
    code = upload(hd)
    apply(hd, name)
    ready_envs(hd, [name])
    return code, {n: r["pid"] for n, r in replicas(hd, name).items()}


def test_sigkill_keeps_replicas_and_the_tasks_in_them(rd):
    code = upload(rd)
    envs = ["rs-a", "rs-b"]
    for e in envs:
        apply(rd, e, "concurrency: 5\n")
    ready_envs(rd, envs)
    # Every replica loads its "model" (10 tasks at once fill both of an
    # environment's replicas; pids repeat across pid namespaces, so replicas
    # are told apart by name).
    before, tokens = {}, {}
    for e in envs:
        ids = [post(rd, e, code, "work", wait=False, i=i, seconds=1)[1]["id"] for i in range(10)]
        for tid in ids:
            body = final(rd, tid)
            assert body["state"] == "succeeded", body
            tokens[body["replica"]] = body["result"]["token"]
        before[e] = {n: r["pid"] for n, r in replicas(rd, e).items()}
        assert len(before[e]) == 2
    assert len(tokens) == 4, tokens
    # 20 tasks running at once on the 4 replicas (5 each).
    ids = {}
    for e in envs:
        for i in range(10):
            status, body = post(rd, e, code, "work", wait=False, i=i, seconds=4)
            assert status in (200, 202), body
            ids[body["id"]] = (e, i)
    wait_for("20 tasks running", lambda: all(
        api(rd.socket, "GET", f"/v1/tasks/{t}")[1]["state"] == "running" for t in ids))

    t_kill = time.time()
    rd.stop(signal.SIGKILL)
    rd.start()
    t_up = time.time()
    print(f"restart: hearthd answered {t_up - t_kill:.2f} s after the kill")

    lost = 0
    for tid, (e, i) in ids.items():
        body = final(rd, tid)
        if body["state"] != "succeeded":
            lost += 1
            continue
        assert body["result"]["i"] == i
        assert body["replica"] in before[e], body
        assert body["result"]["token"] == tokens[body["replica"]], body
    assert lost == 0, f"{lost} of 20 tasks did not succeed"
    for e in envs:
        now = {n: r["pid"] for n, r in replicas(rd, e).items()}
        assert now == before[e], (now, before[e])
        for _ in range(4):
            body = post(rd, e, code, "recall", key="k")[1]
            assert body["state"] == "succeeded" and body["coldStart"] is False, body
            assert body["replica"] in before[e] and body["result"][2] == tokens[body["replica"]], body
    for e in envs:
        rd.hearth("rm", e)


def test_idle_replicas_serve_warm_right_after_a_restart(rd):
    code, _ = warm_env(rd, "rs-w")
    # Two slow tasks at once land on both replicas (concurrency 1), so
    # every replica's token is known whichever one serves after the restart.
    ids = [post(rd, "rs-w", code, "work", wait=False, i=i, seconds=1.0)[1]["id"] for i in range(2)]
    done = [final(rd, t) for t in ids]
    tokens = {b["replica"]: b["result"]["token"] for b in done}
    assert len(tokens) == 2, done
    t0 = time.time()
    rd.stop(signal.SIGKILL)
    rd.start()
    t_up = time.time()
    body = post(rd, "rs-w", code, "recall", key="w")[1]
    t_warm = time.time()
    assert body["state"] == "succeeded" and body["coldStart"] is False, body
    assert tokens[body["replica"]] == body["result"][2], (body, tokens)
    print(f"restart: hearthd answered {t_up - t0:.2f} s after the kill, the first warm task {t_warm - t0:.2f} s after it")
    rd.hearth("rm", "rs-w")


def test_a_lost_keeper_is_replaced_while_hearthd_runs(rd):
    code, pids = warm_env(rd, "rs-k")
    os.kill(keeper_pid(rd), signal.SIGKILL)
    # Tasks go on; a new keeper takes the replicas.
    body = post(rd, "rs-k", code, "remember", key="x", value="y")[1]
    assert body["state"] == "succeeded" and body["replica"] in pids, body
    wait_for("a new keeper", lambda: "a new one holds the replicas again" in open(rd.log).read())
    rd.stop(signal.SIGKILL)
    rd.start()
    assert {n: r["pid"] for n, r in wait_for("adopted", lambda: replicas(rd, "rs-k")).items()} == pids
    rd.hearth("rm", "rs-k")


def test_a_keeper_lost_while_hearthd_is_down_fails_tasks_cleanly(rd):
    code, old = warm_env(rd, "rs-d")
    status, t = post(rd, "rs-d", code, "work", wait=False, i=1, seconds=30)
    wait_for("running", lambda: api(rd.socket, "GET", f"/v1/tasks/{t['id']}")[1]["state"] == "running")
    rd.stop(signal.SIGKILL)
    os.kill(keeper_pid(rd), signal.SIGKILL)
    rd.start()
    body = final(rd, t["id"])
    assert body["state"] == "lost" and body["error"]["type"] == "TaskLost", body
    # The environment comes back with new replicas, and serves.
    body = post(rd, "rs-d", code, "recall", key="k")[1]
    assert body["state"] == "succeeded" and body["replica"] not in old, body
    rd.hearth("rm", "rs-d")


def test_a_clean_stop_removes_replicas_and_the_keeper(rd):
    code, old = warm_env(rd, "rs-c")
    rd.stop()
    # SIGTERM drains: the replicas go, and the keeper with them.
    wait_for("the keeper gone", lambda: not _keeper_alive(rd), timeout=10)
    assert rd.leftovers() == []
    rd.start()
    body = post(rd, "rs-c", code, "recall", key="k")[1]
    assert body["state"] == "succeeded" and body["replica"] not in old, body
    rd.hearth("rm", "rs-c")


def _keeper_alive(hd):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(os.path.join(hd.root, "keeper.sock"))
        finally:
            s.close()
        return True
    except OSError:
        return False
