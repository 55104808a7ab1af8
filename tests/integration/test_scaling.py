"""Scaling between `replicas.min` and `replicas.max`, `scaledown_ttl` and
`prewarm`, against a real daemon: replicas are started for a burst (never
more than the queue needs or max allows), idle ones go back down to min
after `ttl_seconds`, and everything goes once nothing has run for
`scaledown_ttl`. Checks count replicas and overlaps, never wall-clock time.
"""
import json
import os
import textwrap
import time

import pytest

from conftest import api, running_daemon
from test_actors import TASKS, ok, run, upload_code


@pytest.fixture(scope="module")
def hd():
    yield from running_daemon("hearth-sc")


@pytest.fixture(scope="module")
def code(hd):
    return upload_code(hd, {"tasks.py": TASKS})


def apply(hd, text):
    r = hd.hearth("apply", "-f", "-", input=text.encode(), check=False)
    assert r.returncode == 0, r.stderr
    return r


def status(hd, name):
    _, body = api(hd.socket, "GET", f"/v1/environments/{name}")
    return body


def wait_for(what, check, limit=60):
    """Polls `check` (bounded): outcomes of timers in the daemon."""
    deadline = time.time() + limit
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, f"{what}: not within {limit} s"
        time.sleep(0.1)


def finished(hd, task_ids):
    snaps = []
    for tid in task_ids:
        def done(tid=tid):
            _, snap = api(hd.socket, "GET", f"/v1/tasks/{tid}")
            return snap if snap["state"] not in ("queued", "running") else None
        snaps.append(wait_for(f"task {tid}", done, limit=120))
    return snaps


def most_at_once(intervals):
    """The largest number of [t0, t1) intervals that overlap at one instant."""
    events = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def test_burst_scales_up_to_max_then_idle_replicas_go_down_to_min(hd, code):
    e = "sc-burst"
    apply(hd, f"name: {e}\nreplicas: {{min: 1, max: 4}}\nttl_seconds: 2\nscaledown_ttl: 3600\n")
    ids = []
    for i in range(8):
        s, body = run(hd, e, code, "slow", wait=False, seconds=1.0, tag=str(i))
        assert s == 202, body
        ids.append(body["id"])
    snaps = finished(hd, ids)
    assert all(s["state"] == "succeeded" for s in snaps), snaps
    replicas = {s["replica"] for s in snaps}
    assert len(replicas) == 4, f"8 tasks waiting, max 4: expected 4 replicas, got {replicas}"
    assert most_at_once([(s["result"]["t0"], s["result"]["t1"]) for s in snaps]) == 4
    up = status(hd, e)["scaling"]["lastDecision"]
    assert up["direction"] == "up" and up["to"] <= 4, up
    # Idle past ttl_seconds: back to min, and no lower (scaledown_ttl is an hour).
    st = wait_for("down to min", lambda: (lambda s: s if len(s["replicas"]) == 1 else None)(status(hd, e)))
    sc = st["scaling"]
    assert (sc["min"], sc["max"], sc["current"]) == (1, 4, 1), sc
    assert sc["lastDecision"]["direction"] == "down" and "idle for ttl" in sc["lastDecision"]["reason"], sc
    time.sleep(2.5)
    assert len(status(hd, e)["replicas"]) == 1, "min stays while scaledown_ttl has not passed"
    # The one kept is warm.
    s, snap = run(hd, e, code, "pid")
    assert snap["state"] == "succeeded" and snap["coldStart"] is False, snap
    # What the operator sees.
    out = hd.hearth("status", e).stdout.decode()
    assert "scaling: min 1  max 4  current 1" in out, out
    assert "last scale: down" in out, out
    _, metrics = api(hd.socket, "GET", "/metrics")
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert 'hearth_scale_events_total{direction="up"}' in text, text[-3000:]
    assert 'hearth_scale_events_total{direction="down"}' in text, text[-3000:]


def test_min_zero_scales_to_zero_and_the_next_task_is_a_cold_start(hd, code):
    e = "sc-zero"
    apply(hd, f"name: {e}\nreplicas: [0, 2]\nttl_seconds: 1\n")
    _, first = run(hd, e, code, "pid")
    assert first["state"] == "succeeded" and first["coldStart"] is True, first
    wait_for("scale to zero", lambda: status(hd, e)["replicas"] == [])
    _, second = run(hd, e, code, "pid")
    assert second["coldStart"] is True and second["replica"] != first["replica"], second


def test_a_fixed_count_stays_until_nothing_ran_for_scaledown_ttl(hd, code):
    e = "sc-fixed"
    apply(hd, f"name: {e}\nreplica_count: 2\nttl_seconds: 1\nscaledown_ttl: 6\n")
    ids = [run(hd, e, code, "slow", wait=False, seconds=0.5)[1]["id"] for _ in range(2)]
    finished(hd, ids)
    time.sleep(2)
    assert len(status(hd, e)["replicas"]) == 2, "replica_count is min: ttl alone does not take them"
    st = wait_for("scaledown", lambda: (lambda s: s if s["replicas"] == [] else None)(status(hd, e)))
    assert "scaledown_ttl" in st["scaling"]["lastDecision"]["reason"], st


def test_prewarm_has_ready_replicas_before_the_first_task(hd, code):
    e = "sc-prewarm"
    apply(hd, f"name: {e}\nreplicas: {{min: 2, max: 3}}\nprewarm: true\n")
    st = wait_for("prewarmed", lambda: (lambda s: s if len(s["replicas"]) == 2
                                        and all(r["state"] == "ready" for r in s["replicas"]) else None)(status(hd, e)))
    assert st["queued"] == 0 and st["scaling"]["prewarm"] is True
    assert "prewarm" in st["scaling"]["lastDecision"]["reason"], st
    _, snap = run(hd, e, code, "pid")
    assert snap["state"] == "succeeded" and snap["coldStart"] is False, snap


def test_admission_reserves_max_and_refuses_one_that_does_not_fit(hd):
    r = hd.hearth("apply", "-f", "-", input=b"name: sc-huge\nreplicas: {min: 0, max: 64}\nlimits: {mem: 1Ti}\n",
                  check=False)
    msg = r.stderr.decode()
    assert r.returncode != 0, r.stdout
    assert 'environment "sc-huge": replicas.max 64 × memory limit 1Ti = 64Ti' in msg, msg
    assert "this machine can give" in msg, msg


def test_bad_scaling_specs_are_refused_naming_the_field(hd):
    for text, expected in [
        ("replicas: {min: 3, max: 2}", "replicas.min: 3 is more than replicas.max (2)"),
        ("replicas: [0, 4]\nreplica_count: 2", "replica_count: 2 disagrees with replicas.max (4)"),
        ("concurrency: 0", "concurrency: 0 is out of range"),
        ("scaledown_ttl: forever", "scaledown_ttl: \"forever\" is not a duration"),
    ]:
        r = hd.hearth("apply", "-f", "-", input=f"name: sc-bad\n{text}\n".encode(), check=False)
        assert r.returncode != 0 and expected in r.stderr.decode(), (text, r.stderr)
    _, body = api(hd.socket, "GET", "/v1/environments/sc-bad")
    assert body["error"]["code"] == "environment_not_found", body


# -- several tasks at once in one replica (concurrency) ------------------------------------

ASYNC_TASKS = textwrap.dedent('''
    import asyncio, os, sys, time

    async def nap(tag, seconds):
        print("start", tag)
        await asyncio.sleep(seconds)
        print("end", tag, file=sys.stderr)
        return {"tag": tag, "pid": os.getpid(), "t0": time.time() - seconds, "t1": time.time()}

    def block(tag, seconds):
        print("thread", tag)
        time.sleep(seconds)
        return {"tag": tag, "pid": os.getpid()}

    async def forever(tag):
        await asyncio.sleep(3600)

    def die():
        os._exit(7)
''')


@pytest.fixture(scope="module")
def async_code(hd):
    return upload_code(hd, {"atasks.py": ASYNC_TASKS})


def arun(hd, envname, sha, fn, wait=False, timeout=None, **kwargs):
    req = {"module": "atasks", "function": fn, "kwargs": kwargs, "bundle": sha, "wait": wait}
    if timeout:
        req["timeout"] = timeout
    return api(hd.socket, "POST", f"/v1/environments/{envname}/tasks", req)


def test_concurrency_runs_tasks_at_once_in_one_replica_each_with_its_own_log(hd, async_code):
    e = "sc-conc"
    apply(hd, f"name: {e}\nreplica_count: 1\nconcurrency: 8\n")
    ids = [arun(hd, e, async_code, "nap", tag=f"T{i}", seconds=1.0)[1]["id"] for i in range(8)]
    snaps = finished(hd, ids)
    assert all(s["state"] == "succeeded" for s in snaps), snaps
    assert len({s["replica"] for s in snaps}) == 1, "one replica runs all 8"
    assert most_at_once([(s["result"]["t0"], s["result"]["t1"]) for s in snaps]) == 8
    for i, tid in enumerate(ids):
        r = hd.hearth("logs", tid)
        text = r.stdout.decode() + r.stderr.decode()
        assert f"start T{i}" in text and f"end T{i}" in text, text
        others = [f"T{j}\n" for j in range(8) if j != i]
        assert not any(o in text for o in others), f"task {i}'s log holds another task's output: {text!r}"
    # Plain functions run on the replica's threads, also at once.
    ids = [arun(hd, e, async_code, "block", tag=f"B{i}", seconds=0.5)[1]["id"] for i in range(4)]
    snaps = finished(hd, ids)
    assert all(s["state"] == "succeeded" for s in snaps), snaps
    st = status(hd, e)
    assert len(st["replicas"]) == 1 and st["scaling"]["concurrency"] == 8


def test_a_crash_fails_every_task_in_flight_as_replica_lost(hd, async_code):
    e = "sc-crash"
    apply(hd, f"name: {e}\nreplica_count: 1\nconcurrency: 8\n")
    ids = [arun(hd, e, async_code, "nap", tag=f"C{i}", seconds=30)[1]["id"] for i in range(7)]
    wait_for("7 running", lambda: (lambda s: s if s["replicas"] and s["replicas"][0].get("running") == 7 else None)(status(hd, e)))
    crash = arun(hd, e, async_code, "die")[1]["id"]
    snaps = finished(hd, ids + [crash])
    assert all(s["state"] == "failed" and s["error"]["type"] == "ReplicaLost" for s in snaps), \
        [(s["state"], s.get("error")) for s in snaps]
    assert all("exited with code 7" in s["error"]["message"] for s in snaps), snaps[0]["error"]


def test_timeout_and_cancel_stop_one_task_and_the_replica_goes_on(hd, async_code):
    e = "sc-stop"
    apply(hd, f"name: {e}\nreplica_count: 1\nconcurrency: 4\n")
    slow = arun(hd, e, async_code, "forever", tag="t", timeout=1)[1]["id"]
    stuck = arun(hd, e, async_code, "forever", tag="c")[1]["id"]
    fine = arun(hd, e, async_code, "nap", tag="ok", seconds=2)[1]["id"]
    wait_for("running", lambda: api(hd.socket, "GET", f"/v1/tasks/{stuck}")[1]["state"] == "running")
    s, _ = api(hd.socket, "DELETE", f"/v1/tasks/{stuck}")
    assert s == 202, s
    a, b, c = finished(hd, [slow, stuck, fine])
    assert a["state"] == "failed" and a["error"]["type"] == "Timeout", a
    assert "the replica's other tasks go on" in a["error"]["message"], a
    assert b["state"] == "cancelled", b
    assert c["state"] == "succeeded", c
    # Still the same interpreter.
    d = finished(hd, [arun(hd, e, async_code, "nap", tag="after", seconds=0)[1]["id"]])[0]
    assert d["state"] == "succeeded" and d["replica"] == c["replica"] and d["coldStart"] is False, d


def test_sdk_awaits_async_tasks_at_once(hd, tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    (tmp_path / "awaited.py").write_text(textwrap.dedent('''
        import asyncio, json, time
        from hearth import ActorEnvironment

        env = ActorEnvironment(name="sc-sdk-async", replicas=(1, 2), concurrency=8, ttl_seconds=60)

        @env.task
        async def nap(i: int) -> list:
            t0 = time.time()
            await asyncio.sleep(1)
            return [i * i, t0, time.time()]

        async def main():
            await nap(i=0)   # applies the environment and starts a replica
            return await asyncio.gather(*(nap(i=i) for i in range(16)))

        if __name__ == "__main__":
            print(json.dumps(asyncio.run(main())))
    '''))
    env = dict(os.environ, HEARTH_SOCKET=hd.socket, PYTHONPATH=str(REPO / "python"))
    r = subprocess.run([sys.executable, "awaited.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                       env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [v for v, _, _ in out] == [i * i for i in range(16)]
    # 16 awaited at once from one thread: at least a replica's 8 ran together.
    assert most_at_once([(t0, t1) for _, t0, t1 in out]) >= 8, out
