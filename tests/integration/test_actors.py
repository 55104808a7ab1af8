"""Environments, warm replicas and task injection, against a real daemon."""
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import textwrap
import threading
import time

import pytest

from conftest import BIN, api, running_daemon

TASKS = textwrap.dedent('''
    import os, sys, time

    CALLS = 0

    def pid():
        return os.getpid()

    def count():
        global CALLS
        CALLS += 1
        return [os.getpid(), CALLS]

    def set_env(key, value):
        os.environ[key] = value
        return os.getpid()

    def get_env(key):
        return os.environ.get(key)

    def echo(**kw):
        return kw

    def boom(message):
        raise ValueError(message)

    def exit3():
        os._exit(3)

    def sigkill():
        os.kill(os.getpid(), 9)

    def slow(seconds, tag=""):
        print("start", tag, flush=True)
        t0 = time.time()
        time.sleep(seconds)
        print("end", tag, flush=True)
        return {"pid": os.getpid(), "t0": t0, "t1": time.time()}

    def tagged(tag, seconds):
        time.sleep(seconds)
        return tag

    def hog(mb):
        b = bytearray(mb << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        return len(b)

    def garbage():
        os.write(4, b"\\x00\\x00\\x00\\x05hello")
        time.sleep(5)

    def read_secret(key):
        try:
            return open("/etc/secrets/" + key).read()
        except OSError as e:
            return "missing: " + type(e).__name__

    def noisy(tag, n):
        for i in range(n):
            print(tag, i, flush=True)
            print(tag, "err", i, file=sys.stderr, flush=True)
            time.sleep(0.01)
        return tag
''')


def bundle(files):
    """A code bundle uploaded once: returns its sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return hashlib.sha256(raw).hexdigest(), raw


def upload_code(d, files):
    """Uploads a bundle of `files` to daemon `d`; returns its sha256."""
    sha, raw = bundle(files)
    status, body = api(d.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status == 201, body
    return sha


@pytest.fixture(scope="module")
def hd():
    yield from running_daemon("hearth-ac")


@pytest.fixture(scope="module")
def code(hd):
    sha, raw = bundle({"tasks.py": TASKS})
    status, body = api(hd.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status == 201, body
    return sha


def apply(hd, text):
    r = hd.hearth("apply", "-f", "-", input=text.encode(), check=False)
    return r


def env(hd, name, extra=""):
    base = "" if "replica_count" in extra else "replica_count: 1\n"
    r = apply(hd, f"name: {name}\n{base}ttl_seconds: 300\n{extra}")
    assert r.returncode == 0, r.stderr
    return name


def run(hd, envname, code, fn, timeout=None, wait=True, **kwargs):
    req = {"module": "tasks", "function": fn, "kwargs": kwargs, "bundle": code, "wait": wait}
    if timeout:
        req["timeout"] = timeout
    status, body = api(hd.socket, "POST", f"/v1/environments/{envname}/tasks", req)
    return status, body


def ok(hd, envname, code, fn, **kwargs):
    status, body = run(hd, envname, code, fn, **kwargs)
    assert status == 200 and body["state"] == "succeeded", body
    return body["result"]


def test_hundred_tasks_one_interpreter(hd, code):
    e = env(hd, "same-pid")
    first = run(hd, e, code, "set_env", key="RUN_KEY_EX", value="run_time")[1]
    seen = [run(hd, e, code, "count")[1] for _ in range(99)]
    # One interpreter: one replica, one pid, and a module global that counts 1..99.
    assert {s["replica"] for s in seen} == {first["replica"]}
    assert {s["result"][0] for s in seen} == {first["result"]}
    assert [s["result"][1] for s in seen] == list(range(1, 100))
    assert ok(hd, e, code, "get_env", key="RUN_KEY_EX") == "run_time"
    st = json.loads(hd.hearth("status", e, "--json").stdout)
    assert len(st["replicas"]) == 1 and st["replicas"][0]["tasksRun"] >= 101


def test_values_round_trip_and_cli_run(hd, code, tmp_path):
    e = env(hd, "values")
    value = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
    assert ok(hd, e, code, "echo", x=value) == {"x": value}
    (tmp_path / "mod.py").write_text("def f(n):\n    return n * 2\n")
    r = hd.hearth("run", e, "mod:f", "--arg", "n=21", "--code", str(tmp_path))
    assert r.stdout.strip() == b"42"


def test_two_replicas_overlap(hd, code):
    e = env(hd, "pair", "replica_count: 2")
    ok(hd, e, code, "pid")  # warm one
    s1, t1 = run(hd, e, code, "slow", wait=False, seconds=1.5)
    s2, t2 = run(hd, e, code, "slow", wait=False, seconds=1.5)
    assert s1 == 202 and s2 == 202
    results = []
    for t in (t1, t2):
        deadline = time.time() + 60
        while True:
            _, snap = api(hd.socket, "GET", f"/v1/tasks/{t['id']}")
            if snap["state"] not in ("queued", "running"):
                break
            assert time.time() < deadline
            time.sleep(0.1)
        assert snap["state"] == "succeeded", snap
        results.append(snap["result"])
    a, b = results
    # pids are per pid namespace (both may be 2): the replicas tell them apart.
    assert a["t0"] < b["t1"] and b["t0"] < a["t1"], "the two tasks did not overlap"
    _, s1 = api(hd.socket, "GET", f"/v1/tasks/{t1['id']}")
    _, s2 = api(hd.socket, "GET", f"/v1/tasks/{t2['id']}")
    assert s1["replica"] != s2["replica"]


def test_ttl_tears_down_and_next_task_cold_starts(hd, code):
    e = "short-ttl"
    assert apply(hd, "name: short-ttl\nreplica_count: 1\nttl_seconds: 1\n").returncode == 0
    _, t1 = run(hd, e, code, "pid")
    time.sleep(2.5)
    st = json.loads(hd.hearth("status", e, "--json").stdout)
    assert st["replicas"] == [], st
    _, t2 = run(hd, e, code, "pid")
    assert t1["replica"] != t2["replica"] and t2["coldStart"] is True


def test_raising_task_keeps_replica_warm(hd, code):
    e = env(hd, "raises")
    before = ok(hd, e, code, "pid")
    status, body = run(hd, e, code, "boom", message="bad input")
    assert status == 200 and body["state"] == "failed"
    assert body["error"]["type"] == "ValueError" and body["error"]["message"] == "bad input"
    assert "Traceback" in body["error"]["traceback"] and "boom" in body["error"]["traceback"]
    assert ok(hd, e, code, "pid") == before


@pytest.mark.parametrize("fn,expect", [("exit3", "exited with code 3"), ("sigkill", "signal 9")])
def test_worker_death_is_replica_lost(hd, code, fn, expect):
    e = env(hd, "dies-" + fn)
    first = run(hd, e, code, "pid")[1]["replica"]
    status, body = run(hd, e, code, fn)
    assert body["state"] == "failed" and body["error"]["type"] == "ReplicaLost", body
    assert expect in body["error"]["message"]
    again = run(hd, e, code, "pid")[1]
    assert again["state"] == "succeeded" and again["replica"] != first


def test_memory_limit_is_oomkilled(hd, code):
    e = env(hd, "small", "limits:\n  mem: 64Mi\n")
    status, body = run(hd, e, code, "hog", mb=256)
    assert body["state"] == "failed" and body["error"]["type"] == "OOMKilled", body
    assert "64Mi" in body["error"]["message"]
    assert ok(hd, e, code, "hog", mb=8) == 8 << 20


def test_timeout_kills_and_replaces(hd, code):
    e = env(hd, "timeouts", "timeout: 1\n")
    first = run(hd, e, code, "pid")[1]["replica"]
    t = time.time()
    status, body = run(hd, e, code, "slow", seconds=30)
    assert body["state"] == "failed" and body["error"]["type"] == "Timeout", body
    assert time.time() - t < 15
    assert run(hd, e, code, "pid")[1]["replica"] != first


def test_cancel_queued_and_running(hd, code):
    e = env(hd, "cancels")
    ok(hd, e, code, "pid")
    _, running = run(hd, e, code, "slow", wait=False, seconds=30)
    _, queued = run(hd, e, code, "pid", wait=False)
    time.sleep(0.5)
    status, body = api(hd.socket, "DELETE", f"/v1/tasks/{queued['id']}")
    assert status == 202
    _, snap = api(hd.socket, "GET", f"/v1/tasks/{queued['id']}")
    assert snap["state"] == "cancelled"
    api(hd.socket, "DELETE", f"/v1/tasks/{running['id']}")
    deadline = time.time() + 20
    while time.time() < deadline:
        _, snap = api(hd.socket, "GET", f"/v1/tasks/{running['id']}")
        if snap["state"] != "running":
            break
        time.sleep(0.1)
    assert snap["state"] == "cancelled", snap
    assert ok(hd, e, code, "get_env", key="NOPE") is None


def test_garbage_on_fd4_fails_that_task_only(hd, code):
    e = env(hd, "garbage")
    other = env(hd, "bystander")
    status, body = run(hd, e, code, "garbage")
    assert body["state"] == "failed" and body["error"]["type"] == "ProtocolError", body
    assert "malformed" in body["error"]["message"]
    assert ok(hd, other, code, "get_env", key="HOME") == "/root"
    assert ok(hd, e, code, "get_env", key="HOME") == "/root"


def test_queue_full_bad_spec_unknown_env(hd, code):
    e = env(hd, "tiny-queue", "max_queue: 1\n")
    ok(hd, e, code, "pid")
    _, busy = run(hd, e, code, "slow", wait=False, seconds=3)
    time.sleep(0.3)
    s1, _ = run(hd, e, code, "pid", wait=False)
    s2, body = run(hd, e, code, "pid", wait=False)
    assert s1 == 202 and s2 == 429, body
    assert "queue is full" in body["error"]["message"]
    r = apply(hd, "name: bad\nreplica_count: 0\n")
    assert r.returncode != 0 and b"replica_count" in r.stderr
    status, body = api(hd.socket, "POST", "/v1/environments", b"name: Bad_Name\n")
    assert status == 400 and "name" in body["error"]["message"]
    status, body = run(hd, "no-such-env", code, "pid")
    assert status == 404


def test_a_full_queue_refuses_with_the_reason_and_loses_no_accepted_task(hd, code):
    """Eight clients submit 25 tasks each (wait: false) to two replicas
    behind a queue of 4: submissions past it get 429 `queue_full` naming
    max_queue, the client backs off and resubmits, and every accepted task
    ends `succeeded` with its own result. Bounded: 200 tasks, 120 s."""
    e = env(hd, "soak-queue", "replica_count: 2\nmax_queue: 4\n")
    ok(hd, e, code, "pid")
    deadline = time.monotonic() + 120
    accepted, refusals, problems = {}, [], []
    lock = threading.Lock()

    def client(k):
        for i in range(25):
            tag = f"c{k}-{i}"
            while True:
                if time.monotonic() > deadline:
                    problems.append(f"{tag}: not accepted before the deadline")
                    return
                status, body = run(hd, e, code, "tagged", wait=False, tag=tag, seconds=0.01)
                if status == 202:
                    with lock:
                        accepted[body["id"]] = tag
                    break
                if status != 429:
                    problems.append(f"{tag}: HTTP {status}: {body}")
                    return
                with lock:
                    refusals.append(body)
                time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    assert len(accepted) == 200
    # The queue really filled, and every refusal says why.
    assert refusals, "no submission was refused: the queue never filled"
    for body in refusals:
        err = body["error"]
        assert err["code"] == "queue_full", body
        assert "the queue is full" in err["message"] and "max_queue 4" in err["message"], body
    # Every accepted task finishes with its own result.
    pending = dict(accepted)
    while pending and time.monotonic() < deadline:
        for tid, tag in list(pending.items()):
            status, snap = api(hd.socket, "GET", f"/v1/tasks/{tid}")
            assert status == 200, snap
            if snap["state"] in ("succeeded", "failed", "cancelled", "lost"):
                assert snap["state"] == "succeeded" and snap["result"] == tag, snap
                del pending[tid]
        time.sleep(0.05)
    assert not pending, f"{len(pending)} accepted tasks did not finish: {sorted(pending)[:5]}"
    status, st = api(hd.socket, "GET", f"/v1/environments/{e}")
    assert status == 200 and st.get("queued", 0) == 0, st


def test_changed_spec_rolls_same_spec_does_not(hd, code):
    e = env(hd, "rolling", "environment:\n  A: '1'\n")
    r1 = run(hd, e, code, "pid")[1]["replica"]
    r = apply(hd, "name: rolling\nreplica_count: 1\nttl_seconds: 300\nenvironment:\n  A: '1'\n")
    assert b"unchanged" in r.stdout
    assert run(hd, e, code, "pid")[1]["replica"] == r1
    r = apply(hd, "name: rolling\nreplica_count: 1\nttl_seconds: 300\nenvironment:\n  A: '2'\n")
    assert b"replaced" in r.stdout
    snap = run(hd, e, code, "get_env", key="A")[1]
    assert snap["result"] == "2" and snap["replica"] != r1


def test_secrets_only_where_requested(hd, code):
    hd.hearth("secret", "set", "api-token", input=b"s3cr3t")
    assert b"api-token" in hd.hearth("secret", "ls").stdout
    a = env(hd, "with-secret", "secret_requests: [api-token]\n")
    b = env(hd, "without-secret")
    assert ok(hd, a, code, "read_secret", key="api-token") == "s3cr3t"
    assert ok(hd, b, code, "read_secret", key="api-token").startswith("missing")
    r = apply(hd, "name: needs-missing\nsecret_requests: [nope]\n")
    assert r.returncode != 0 and b"nope" in r.stderr


def test_logs_land_on_the_right_task(hd, code):
    e = env(hd, "loggers", "replica_count: 2")
    _, a = run(hd, e, code, "noisy", wait=False, tag="AAA", n=20)
    _, b = run(hd, e, code, "noisy", wait=False, tag="BBB", n=20)
    for t in (a, b):
        deadline = time.time() + 60
        while api(hd.socket, "GET", f"/v1/tasks/{t['id']}")[1]["state"] in ("queued", "running"):
            assert time.time() < deadline
            time.sleep(0.1)
    la = hd.hearth("logs", a["id"]).stdout.decode()
    lb = hd.hearth("logs", b["id"]).stdout.decode()
    assert la.count("AAA") == 20 and "BBB" not in la
    assert lb.count("BBB") == 20 and "AAA" not in lb


def test_batch_keeps_input_order(hd, code):
    e = env(hd, "mapper", "replica_count: 2")
    inputs = [{"x": i} for i in range(50)]
    status, body = api(hd.socket, "POST", f"/v1/environments/{e}/batch",
                       {"module": "tasks", "function": "echo", "inputs": inputs, "bundle": code})
    assert status == 200
    assert [t["result"]["x"] for t in body] == list(range(50))


def test_daemon_sigkill_mid_task_then_restart(hd, code):
    e = env(hd, "survivor")
    first = run(hd, e, code, "pid")[1]
    _, t = run(hd, e, code, "slow", wait=False, seconds=4)
    time.sleep(1)
    hd.stop(signal.SIGKILL)
    hd.start()
    st = json.loads(hd.hearth("status", e, "--json").stdout)
    assert st["name"] == e
    # The replica outlived the daemon (the keeper): the task ends with its
    # real result, from the same interpreter.
    _, snap = api(hd.socket, "GET", f"/v1/tasks/{t['id']}?wait=30")
    assert snap["state"] == "succeeded" and snap["result"]["pid"] == first["result"], snap
    assert snap["replica"] == first["replica"], snap
    assert ok(hd, e, code, "get_env", key="HOME") == "/root"
    for name in json.loads(hd.hearth("ls", "--json").stdout):
        hd.hearth("rm", name["name"])
    assert hd.leftovers() == []


def test_max_tasks_per_replica_recycles(hd, code):
    e = env(hd, "recycle", "max_tasks_per_replica: 2\n")
    reps = [run(hd, e, code, "pid")[1]["replica"] for _ in range(5)]
    assert reps[0] == reps[1] and reps[2] == reps[3] and reps[1] != reps[2] and reps[3] != reps[4], reps


def test_crashing_start_backs_off_and_reports(hd, code):
    e = env(hd, "broken", "environment:\n  PYTHONHOME: /nonexistent\n")
    t = time.time()
    status, body = run(hd, e, code, "pid")
    assert body["state"] == "failed" and body["error"]["type"] == "ReplicaStartFailed", body
    assert "before it was ready" in body["error"]["message"]
    st = json.loads(hd.hearth("status", e, "--json").stdout)
    assert st["lastError"] and "before it was ready" in st["lastError"]
    # Another task right away waits for the backoff instead of a tight loop.
    status, body = run(hd, e, code, "pid")
    assert body["state"] == "failed"
    log = open(hd.log).read()
    attempts = log.count(f"environment {e}: replica failed to start")
    assert 2 <= attempts <= 4, attempts
    hd.hearth("rm", e)


def test_new_bundle_reloads_user_code_keeps_cache(hd):
    v1 = "from hearth import actor_cache\nimport os\n@actor_cache\ndef loaded(n):\n    return os.urandom(8).hex()\n" \
         "def version():\n    return [1, loaded(1)]\n"
    v2 = v1.replace("[1, loaded(1)]", "[2, loaded(1)]")
    shas = []
    for src in (v1, v2):
        sha, raw = bundle({"reload_mod.py": src})
        assert api(hd.socket, "PUT", f"/v1/code/{sha}", raw)[0] == 201
        shas.append(sha)
    e = env(hd, "reloads")
    def call(sha):
        st, body = api(hd.socket, "POST", f"/v1/environments/{e}/tasks",
                       {"module": "reload_mod", "function": "version", "bundle": sha, "wait": True})
        assert body["state"] == "succeeded", body
        return body
    a, b = call(shas[0]), call(shas[1])
    assert a["result"][0] == 1 and b["result"][0] == 2
    assert a["result"][1] == b["result"][1], "actor_cache value did not survive the new bundle"
    assert a["replica"] == b["replica"] and b["coldStart"] is False


def test_admission_refuses_what_the_machine_cannot_give(hd):
    r = apply(hd, "name: huge\nreplica_count: 64\nlimits:\n  mem: 1Ti\n")
    assert r.returncode != 0
    msg = r.stderr.decode()
    assert "replica_count 64" in msg and "exceeds" in msg, msg


def test_metrics_in_prometheus_format(hd, code):
    e = env(hd, "measured")
    ok(hd, e, code, "pid")
    ok(hd, e, code, "pid")
    run(hd, e, code, "boom", message="x")
    status, text = api(hd.socket, "GET", "/metrics")
    assert status == 200
    text = text.decode() if isinstance(text, bytes) else str(text)
    for needle in ('hearth_tasks_total{outcome="succeeded"}', 'hearth_tasks_total{outcome="failed"}',
                   "hearth_cold_start_seconds_bucket", "hearth_warm_dispatch_seconds_bucket",
                   'hearth_replicas{state="ready"}', "hearth_queue_depth"):
        assert needle in text, needle
