"""Hearth on many machines, simulated on one (docs/multi-node.md): three
hearthd daemons (separate state roots, TCP on 127.0.0.1 with mutual TLS)
behind one Flyte connector (``HEARTH_NODES``, one client certificate).

A driver under .venv-flyte plays flytepropeller: six ActorEnvironments
(sim-0 … sim-5, one ImageSpec, which the connector has each node build the
first time an environment lands there), rounds of six tasks at once, each
task create → get until final, a RETRYABLE_FAILED task created again as a
new attempt (another task execution id), at most three attempts. While the
third round's tasks run, the test kills the node holding the most
environments as a machine dies: hearthd, its keeper and every replica
process, SIGKILL. Its environments are placed again on the survivors, the
tasks that were in flight there end retried to SUCCEEDED, later tasks run
warm in the new replicas, and the survivors end with nothing left behind.
The killed node is then started again on its root and port (a node that
comes back), which cleans up what the dead one left.

Figures (tasks, moves, retries, time to recover) are printed (run with -s)
and written to $HEARTH_TEST_TMPDIR/hearth-multinode.json."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import FLYTE_VENV, TMP, api, certs, free_port, keeper_pid, needs_flyte_venv, running_daemon

PYTHON = FLYTE_VENV / "bin" / "python"
ENVS = 6
ROUNDS = 5
KILL_ROUND = 3  # rounds 1-2 before the kill (cold, then warm), 4-5 after it
TASK_SECONDS = 1.5
KILL_ROUND_SECONDS = 6.0  # long enough that the tasks are still running when the kill lands
RUN_TIMEOUT = 900  # the first round builds the image on every node (flytekit from PyPI)
FIGURES = os.path.join(TMP, "hearth-multinode.json")
T0 = time.time()

pytestmark = needs_flyte_venv(PYTHON)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    certs("ca", str(d / "ca"))
    # One server certificate for 127.0.0.1 serves the three nodes (same address, other ports).
    certs("server", str(d / "node"), "--ca", str(d / "ca"), "--host", "127.0.0.1")
    certs("client", str(d / "connector"), "--ca", str(d / "ca"), "--name", "flyte-connector")
    return d


def _node(pki, prefix):
    port = free_port()
    args = ["--listen", f"tcp://127.0.0.1:{port}", "--tls-cert", pki / "node" / "server.pem",
            "--tls-key", pki / "node" / "server-key.pem", "--tls-ca", pki / "node" / "ca.pem"]
    for d in running_daemon(prefix, extra_args=args):
        d.address = f"tcp://127.0.0.1:{port}"
        d.port = port
        yield d


@pytest.fixture(scope="module")
def node_a(pki):
    yield from _node(pki, "hearth-mn-a")


@pytest.fixture(scope="module")
def node_b(pki):
    yield from _node(pki, "hearth-mn-b")


@pytest.fixture(scope="module")
def node_c(pki):
    yield from _node(pki, "hearth-mn-c")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("multinode")
    for sub in ("code", "dist", "home"):
        (d / sub).mkdir()
    (d / "code" / "simmod.py").write_text(TASKS)
    (d / "driver.py").write_text(DRIVER)
    return d


def environments(node):
    """{environment name: number of replicas} on a node, asked over its Unix socket."""
    status, body = api(node.socket, "GET", "/v1/environments")
    assert status == 200, body
    return {e["name"]: len(e["replicas"]) for e in body if e["name"].startswith("sim-")}


def node_processes(node):
    """Pids of a node's replicas: their root under its state root, or their cgroup under its subtree."""
    pids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            root = os.readlink(f"/proc/{pid}/root")
            cg = open(f"/proc/{pid}/cgroup").read()
        except OSError:
            continue
        if root.startswith(node.root + "/") or f"/{node.subtree}/" in cg:
            pids.add(int(pid))
    return pids


def kill_machine(node):
    """SIGKILL of everything the node runs, as when its machine dies:
    hearthd, its keeper (which would otherwise keep the replicas for a
    restart) and every replica process. Returns the time of the kill."""
    keeper = keeper_pid(node)
    replicas = node_processes(node)
    assert replicas, "the node to kill runs no replica"
    t_kill = time.time()
    os.kill(node.proc.pid, signal.SIGKILL)
    os.kill(keeper, signal.SIGKILL)
    deadline = time.time() + 20
    while replicas:
        for pid in replicas:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.time() < deadline, f"replicas of the killed node still run: {sorted(replicas)}"
        time.sleep(0.05)
        replicas = node_processes(node)
    node.proc.wait(10)
    return t_kill


def refused(node):
    try:
        socket.create_connection(("127.0.0.1", node.port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


def driver_log_all(log):
    log.seek(0)
    return log.read()


def wait_file(path, proc, what, timeout):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the driver exited {proc.returncode} before {what}")
        assert time.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def test_a_node_dies_its_environments_move_and_every_task_completes(node_a, node_b, node_c, pki, work):
    nodes = [node_a, node_b, node_c]
    env = dict(os.environ, HOME=str(work / "home"), PYTHONDONTWRITEBYTECODE="1", COLUMNS="200",
               HEARTH_NODES=",".join(n.address for n in nodes),
               HEARTH_TLS_CERT=str(pki / "connector" / "cert.pem"), HEARTH_TLS_KEY=str(pki / "connector" / "key.pem"),
               HEARTH_TLS_CA=str(pki / "connector" / "ca.pem"),
               # A node that refuses connections this long is lost (the SDK's default waits 60 s for a restart).
               HEARTH_RECONNECT_TIMEOUT="2")
    for k in ("PYTHONPATH", "HEARTH_HOST", "HEARTH_SOCKET"):
        env.pop(k, None)
    out = work / "result.json"
    inflight, killed = work / "inflight.json", work / "killed.json"
    log = open(work / "driver.log", "w+")
    driver = subprocess.Popen([str(PYTHON), str(work / "driver.py"), str(work / "code"), str(work / "dist"), str(work)],
                              cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    victim, restarted = None, False

    def driver_log():
        log.seek(0)
        return log.read()[-6000:]

    try:
        # The driver says when the kill round's six tasks all run.
        wait_file(inflight, driver, "the kill round's tasks to run", RUN_TIMEOUT)
        before = {n.address: environments(n) for n in nodes}
        assert sorted(len(e) for e in before.values()) == [2, 2, 2], before  # spread by capacity
        victim = max(nodes, key=lambda n: len(before[n.address]))
        t_kill = kill_machine(victim)
        assert refused(victim), "the killed node still answers"
        killed.write_text(json.dumps({"address": victim.address, "time": t_kill}))
        try:
            driver.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
            raise AssertionError("the driver did not finish:\n" + driver_log())
        assert driver.returncode == 0, driver_log()
        got = json.loads(out.read_text())
        survivors = [n for n in nodes if n is not victim]
        after = {n.address: environments(n) for n in survivors}

        lost = sorted(before[victim.address])
        attempts = got["attempts"]
        tasks = {(a["env"], a["round"]) for a in attempts}
        assert len(tasks) == ENVS * ROUNDS, tasks
        final = {}
        for a in attempts:
            final[(a["env"], a["round"])] = a  # attempts are recorded in order: the last is the task's end
        failed = {k: a for k, a in final.items() if a["phase"] != "SUCCEEDED"}
        assert not failed, failed
        retried = [a for a in attempts if a["phase"] != "SUCCEEDED"]
        # Exactly the kill round's tasks on the lost node were retried, each once, and only those.
        assert sorted((a["env"], a["round"], a["attempt"]) for a in retried) == \
            [(e, KILL_ROUND, 1) for e in lost], retried
        for a in retried:
            assert a["phase"] == "RETRYABLE_FAILED" and a["seen_running"], a
            assert a["message"].startswith("node %s lost: hearthd task %s" % (victim.address, a["task_id"])), a
            assert a["node"] == victim.address, a
        # The retry is a new task execution: another hearthd task id.
        for e in lost:
            ids = [a["task_id"] for a in attempts if (a["env"], a["round"]) == (e, KILL_ROUND)]
            assert len(ids) == 2 and ids[0] != ids[1], ids

        # The lost node's environments were placed again, one on each survivor, and nothing else moved.
        assert got["moves"] == len(lost), got["log"]
        moved = {ev[2]: ev[3] for ev in got["log"] if ev[1] == "moved"}
        assert sorted(moved) == lost and set(moved.values()) == {n.address for n in survivors}, got["log"]
        assert [ev[3] for ev in got["log"] if ev[1] == "down"] == [victim.address], got["log"]
        # What the survivors hold: their own environments and one moved one each, one replica apiece.
        for n in survivors:
            want = sorted(list(before[n.address]) + [e for e, a in moved.items() if a == n.address])
            assert sorted(after[n.address]) == want, after
            assert set(after[n.address].values()) == {1}, after
        # Every task after a node's first ran warm: the same replica, its module global counting on.
        for e in ["sim-%d" % i for i in range(ENVS)]:
            runs = [final[(e, r)] for r in range(1, ROUNDS + 1)]
            assert all(r["output"][0] == e for r in runs), runs
            # A moved environment starts again cold on its new node: its warm state was the dead node's.
            spans = [(runs[:KILL_ROUND - 1], victim.address), (runs[KILL_ROUND - 1:], moved[e])] if e in lost \
                else [(runs, next(a for a, es in before.items() if e in es))]
            for here, node in spans:
                assert all(r["node"] == node for r in here), here
                assert here[0]["info"]["coldStart"] is True, here[0]
                assert all(r["info"]["coldStart"] is False for r in here[1:]), here
                assert len({r["info"]["replica"] for r in here}) == 1, here
                assert len({r["output"][1] for r in here}) == 1, here  # os.getpid() in the replica
                assert [r["output"][3] for r in here] == list(range(1, len(here) + 1)), here  # CALLS

        # One build per node: the six environments share one ImageSpec, and
        # the moved ones found it already built on the survivors.
        builds = driver_log_all(log).count("hearth: building image ")
        assert builds == len(nodes), driver_log_all(log)

        recovered = min(a["t_end"] for a in attempts if a["env"] in lost and a["phase"] == "SUCCEEDED"
                        and a["node"] != victim.address)
        figures = {
            "tasks": len(tasks), "attempts": len(attempts), "retries": len(retried), "moves": got["moves"],
            "time_to_recover_s": round(recovered - t_kill, 2),
            # Its parts: the connector gave up on the node (HEARTH_RECONNECT_TIMEOUT), placed the
            # environments again, then a cold start and the task itself (KILL_ROUND_SECONDS).
            "node_down_after_s": round(next(ev[0] for ev in got["log"] if ev[1] == "down") - t_kill, 2),
            "placed_again_after_s": round(max(ev[0] for ev in got["log"] if ev[1] == "moved") - t_kill, 2),
            "image_builds": builds,
            "killed": victim.address,
            "environments_before": {a: sorted(e) for a, e in before.items()},
            "environments_after": {a: sorted(e) for a, e in after.items()},
            "first_round_s": round(got["round_seconds"][0], 1), "round_seconds": [round(s, 1) for s in got["round_seconds"]],
        }

        # The killed node comes back on its root and port: it cleans up what
        # the dead one left; it is empty of replicas once its environments go.
        victim.start()
        restarted = True
        for n in nodes:
            for e in environments(n):
                status, body = api(n.socket, "DELETE", "/v1/environments/" + e)
                assert status == 204, body
        for n in nodes:
            deadline = time.time() + 30
            while n.leftovers() and time.time() < deadline:
                time.sleep(0.2)
            assert n.leftovers() == [], (n.address, n.leftovers())
        figures["module_s_so_far"] = round(time.time() - T0, 1)
        with open(FIGURES, "w") as f:
            json.dump(figures, f, indent=1)
        print("\nmulti-node simulation: " + json.dumps(figures, indent=1))
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        if victim is not None and not restarted:
            victim.start()  # its teardown stops it and checks what the dead one left
        log.close()


TASKS = '''
import json
import os
import socket
import time

from flytekit import ImageSpec
from flytekitplugins.hearth import ActorEnvironment
from flytekit import Resources

# One image for all six: each node builds it once, for the first environment placed there.
IMAGE = ImageSpec(packages=["union"])
CALLS = 0


def _work(env, seconds):
    global CALLS
    CALLS += 1
    time.sleep(seconds)
    return json.dumps([env, os.getpid(), socket.gethostname(), CALLS])


ENVS = []
TASKS = []
for _i in range(%(envs)d):
    # Equal requests: placement by free memory (then fewest environments) spreads them evenly.
    ENVS.append(ActorEnvironment(name="sim-%%d" %% _i, replica_count=1, ttl_seconds=600, container_image=IMAGE,
                                 requests=Resources(cpu="100m"), limits=Resources(mem="1Gi")))
''' % {"envs": ENVS} + "".join('''

@ENVS[%(i)d].task
def sim_%(i)d(seconds: float) -> str:
    return _work("sim-%(i)d", seconds)


TASKS.append(sim_%(i)d)
''' % {"i": i} for i in range(ENVS))

DRIVER = r'''
"""flytepropeller's part: driver.py CODE DIST WORK (HEARTH_NODES etc. in the environment)."""
import asyncio
import json
import os
import sys
import threading
import time
from collections import OrderedDict

code, dist, work = sys.argv[1:4]
sys.path.insert(0, code)

import simmod
from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.configuration import FastSerializationSettings, ImageConfig, SerializationSettings
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.extend.backend.base_connector import ConnectorRegistry
from flytekit.models.core.identifier import (Identifier, NodeExecutionIdentifier, ResourceType,
                                             TaskExecutionIdentifier, WorkflowExecutionIdentifier)
from flytekit.models.task import TaskExecutionMetadata
from flytekit.tools.fast_registration import fast_package
from flytekit.tools.translator import get_serializable

ROUNDS, KILL_ROUND = %(rounds)d, %(kill_round)d
SECONDS, KILL_SECONDS = %(seconds)r, %(kill_seconds)r
ATTEMPTS = 3

tarball = fast_package(code, dist)
settings = SerializationSettings(ImageConfig.auto_default_image(), fast_serialization_settings=FastSerializationSettings(
    enabled=True, destination_dir=".", distribution_location="file://" + str(tarball)))
templates = [get_serializable(OrderedDict(), settings, t).template for t in simmod.TASKS]
connector = ConnectorRegistry.get_connector("hearth-actor")
assert len(connector.nodes.addresses) == 3, connector.nodes.addresses
attempts = []
lock = threading.Lock()


def execution(env, rnd, attempt):
    """What propeller hands the connector: a task execution id, another for each retry."""
    task = Identifier(ResourceType.TASK, "sim", "development", "simmod.sim_%%d" %% env, "v1")
    node = NodeExecutionIdentifier("n%%d" %% env, WorkflowExecutionIdentifier("sim", "development", "round-%%d" %% rnd))
    return TaskExecutionMetadata(TaskExecutionIdentifier(task, node, attempt - 1), "default", {}, {}, "default", {}, None)


def run(env, rnd, seconds, running):
    try:
        attempt_all(env, rnd, seconds, running)
    except Exception as e:  # recorded, so the test names it instead of missing a task
        with lock:
            attempts.append({"env": "sim-%%d" %% env, "round": rnd, "attempt": 0, "task_id": None, "node": None,
                             "phase": "EXCEPTION", "message": repr(e), "seen_running": False, "t_end": time.time(),
                             "info": {}, "output": None})
        running.set()


def attempt_all(env, rnd, seconds, running):
    loop = asyncio.new_event_loop()
    try:
        attempt_loop(loop, env, rnd, seconds, running)
    finally:
        loop.close()


def attempt_loop(loop, env, rnd, seconds, running):
    task = simmod.TASKS[env]
    inputs = TypeEngine.dict_to_literal_map(FlyteContextManager.current_context(), {"seconds": seconds},
                                            task.python_interface.inputs)
    for attempt in range(1, ATTEMPTS + 1):
        meta = loop.run_until_complete(connector.create(
            task_template=templates[env], output_prefix=dist + "/out", inputs=inputs,
            task_execution_metadata=execution(env, rnd, attempt)))
        seen, deadline = False, time.time() + 600
        while True:
            r = loop.run_until_complete(connector.get(resource_meta=meta))
            if r.phase != TaskExecution.RUNNING:
                break
            if (r.custom_info or {}).get("state") == "running" and not seen:
                seen = True
                running.set()
            assert time.time() < deadline, "task %%s did not end" %% meta.task_id
            time.sleep(0.1)
        rec = {"env": "sim-%%d" %% env, "round": rnd, "attempt": attempt, "task_id": meta.task_id, "node": meta.node,
               "phase": TaskExecution.Phase.Name(r.phase), "message": r.message, "seen_running": seen,
               "t_end": time.time(), "info": dict(r.custom_info or {}), "output": None}
        if r.phase == TaskExecution.SUCCEEDED:
            rec["output"] = json.loads(r.outputs.literals["o0"].scalar.primitive.string_value)
        with lock:
            attempts.append(rec)
        if r.phase != TaskExecution.RETRYABLE_FAILED:
            return


round_seconds = []
for rnd in range(1, ROUNDS + 1):
    seconds = KILL_SECONDS if rnd == KILL_ROUND else SECONDS
    t0 = time.time()
    running = [threading.Event() for _ in simmod.TASKS]
    threads = [threading.Thread(target=run, args=(i, rnd, seconds, running[i])) for i in range(len(simmod.TASKS))]
    for t in threads:
        t.start()
    if rnd == KILL_ROUND:
        for ev in running:
            assert ev.wait(120), "the kill round's tasks did not all start"
        with open(os.path.join(work, "inflight.json"), "w") as f:
            json.dump({"time": time.time()}, f)
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(work, "killed.json")):
            assert time.time() < deadline, "no kill came"
            time.sleep(0.05)
    for t in threads:
        t.join(900)
        assert not t.is_alive(), "a task of round %%d never ended" %% rnd
    round_seconds.append(time.time() - t0)
    print("round %%d: %%.1f s" %% (rnd, round_seconds[-1]), flush=True)

with open(os.path.join(work, "result.json"), "w") as f:
    json.dump({"attempts": attempts, "moves": connector.nodes.moves, "log": connector.nodes.log,
               "round_seconds": round_seconds}, f)
''' % {"rounds": ROUNDS, "kill_round": KILL_ROUND, "seconds": TASK_SECONDS, "kill_seconds": KILL_ROUND_SECONDS}
