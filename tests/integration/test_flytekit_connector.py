"""The flytekit plugin's connector (flytekitplugins.hearth.connector), as a
Flyte cluster would use it, against a real daemon: flytekit's local
connector executor (a task mixing in AsyncConnectorExecutorMixin) and the
connector's create/get/delete through flytekit's ConnectorRegistry, on task
templates flytekit serializes with fast registration to a local file://
tarball; the `hearth-connector` gRPC service answering flytekit's metadata
call and running a task through CreateTask/GetTask.

The tasks' module lives only in the tarball: hearthd gets it as the task's
code bundle, unpacked by the connector from the distribution the
container's args name (a template without one runs the module from the
image, where it is not). flytekit runs in .venv-flyte's Python (a driver
script per case); the replicas' image is the plugin's ImageSpec build of
test_flytekit.py (flytekit from PyPI on the default image), which the
connector itself asks this module's daemon to build, once."""
import json
import os
import subprocess

import pytest

from conftest import FLYTE_VENV, api, needs_flyte_venv, running_daemon

PYTHON = FLYTE_VENV / "bin" / "python"
RUN_TIMEOUT = 900  # the first case builds the image (flytekit from PyPI)

pytestmark = needs_flyte_venv(PYTHON)


@pytest.fixture(scope="module")
def fd():
    yield from running_daemon("hearth-fkc")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The tasks' code in a directory of its own (never on hearthd's side),
    the fast-registration tarballs beside it, a HOME of its own."""
    d = tmp_path_factory.mktemp("connector")
    for sub in ("code", "dist", "home"):
        (d / sub).mkdir()
    (d / "code" / "cfmod.py").write_text(TASKS)
    (d / "driver.py").write_text(DRIVER)
    return d


def driver(fd, work, case, socket=None, ok=True):
    """Runs one case of DRIVER; what it wrote (JSON)."""
    out = work / ("%s.json" % case)
    env = dict(os.environ, HEARTH_SOCKET=socket or fd.socket, HOME=str(work / "home"), PYTHONDONTWRITEBYTECODE="1",
               COLUMNS="200")
    env.pop("PYTHONPATH", None)
    env.pop("HEARTH_HOST", None)  # the SDK's client would take it over HEARTH_SOCKET
    r = subprocess.run([str(PYTHON), str(work / "driver.py"), str(work / "code"), str(work / "dist"), str(out), case],
                       cwd=work, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-4000:], open(fd.log).read()[-2000:])
    return json.loads(out.read_text())


def replicas(fd, env):
    status, body = api(fd.socket, "GET", "/v1/environments/" + env)
    assert status == 200, body
    return body["replicas"]


def test_a_task_runs_to_succeeded_in_a_warm_replica_with_code_from_the_distribution(fd, work):
    got = driver(fd, work, "executor")
    (pid1, calls1, out1), (pid2, calls2, out2) = got["outputs"]
    assert (out1, out2) == (2, 42), got
    # One interpreter: its pid, and the module global the first task set.
    assert pid1 == pid2 and calls2 == calls1 + 1, got
    first, second = got["metas"]
    assert second["info"]["coldStart"] is False and second["info"]["pid"] == pid1, got
    reps = replicas(fd, "fk-connector")
    assert len(reps) == 1 and reps[0]["tasksRun"] == 2 and reps[0]["pid"] == pid1, reps
    # The code came as the fast-registration tarball, unpacked into a bundle hearthd holds.
    for meta in (first["meta"], second["meta"]):
        assert meta["code"] == "distribution" and meta["distribution"].startswith("file://"), meta
        assert meta["distribution"].endswith(".tar.gz") and meta["bundle"], meta
        assert api(fd.socket, "GET", "/v1/code/" + meta["bundle"])[0] == 200
    status, task = api(fd.socket, "GET", "/v1/tasks/" + first["meta"]["task_id"])
    assert status == 200 and task["module"] == "flytekitplugins.hearth._runtime", task


def test_a_task_whose_function_raises_fails_with_its_message(fd, work):
    got = driver(fd, work, "fail")
    assert got["phase"] == "RETRYABLE_FAILED", got  # the task's retries apply
    tid = got["meta"]["task_id"]
    assert "task cfmod.boom (%s, replica " % tid in got["message"], got
    # The user's exception as it was raised (not flytekit's "Error encountered while executing" rewording).
    assert "failed: KeyError: 'no such key 7'" in got["message"] and "Error encountered" not in got["message"], got
    assert api(fd.socket, "GET", "/v1/tasks/" + tid)[1]["state"] == "failed"


def test_delete_cancels_a_running_task(fd, work):
    got = driver(fd, work, "cancel")
    tid = got["meta"]["task_id"]
    assert got["phase"] == "FAILED" and tid in got["message"] and "cancelled" in got["message"], got
    assert got["seconds"] < 20, got  # the task sleeps 60 s: it was stopped, not waited for
    assert api(fd.socket, "GET", "/v1/tasks/" + tid)[1]["state"] == "cancelled"
    assert got["deleted_again"] == "ok", got  # delete is idempotent: a final task stays as it is


def test_without_a_distribution_the_module_is_the_images_and_is_not_there(fd, work):
    got = driver(fd, work, "image")
    assert got["meta"]["code"] == "image" and got["meta"]["bundle"] is None, got
    assert got["phase"] == "RETRYABLE_FAILED", got
    assert "No module named 'cfmod'" in got["message"] and got["meta"]["task_id"] in got["message"], got


def test_an_unreachable_hearthd_is_named(fd, work):
    sock = str(work / "nothing-here.sock")
    got = driver(fd, work, "unreachable", socket=sock)
    assert got["error"] == "HearthUnreachable", got
    assert "cannot reach hearthd at %s (HEARTH_SOCKET) for task cfmod.pid_plus" % sock in got["message"], got
    assert "there is no socket at %s" % sock in got["message"], got


def test_the_hearth_connector_service_answers_and_runs_a_task_over_grpc(fd, work):
    got = driver(fd, work, "serve")
    assert {"name": "Hearth Connector", "types": ["hearth-actor"]} in got["connectors"], got
    assert got["get_connector"] == ["hearth-actor"], got
    assert got["phase"] == "SUCCEEDED" and got["output"][2] == 8, got
    # The service's task went to the same warm replica as the executor's.
    assert got["output"][0] == replicas(fd, "fk-connector")[0]["pid"], got
    assert "hearth-connector: hearth-actor tasks go to hearthd at %s" % fd.socket in got["log"], got["log"]


TASKS = '''
import json
import os
import time

from flytekit import ImageSpec
from flytekitplugins.hearth import ActorEnvironment

# test_flytekit.py's image request (flytekit on the default image): one build per daemon.
actor = ActorEnvironment(name="fk-connector", replica_count=1, ttl_seconds=300,
                         container_image=ImageSpec(packages=["union"]))
bare = ActorEnvironment(name="fk-connector-bare", replica_count=1, ttl_seconds=300,
                        container_image=ImageSpec(packages=["union"]))

CALLS = 0


@actor.task
def pid_plus(x: int) -> str:
    global CALLS
    CALLS += 1
    return json.dumps([os.getpid(), CALLS, x + 1])


@actor.task
def boom(x: int) -> int:
    if x >= 0:
        raise KeyError("no such key %d" % x)
    return x


@actor.task
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@bare.task
def plain(x: int) -> int:
    return x
'''

DRIVER = r'''
"""One case against the connector: driver.py CODE DIST OUT CASE."""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict

code, dist, out, case = sys.argv[1:5]
sys.path.insert(0, code)  # the user's side imports the tasks; hearthd gets them from the tarball only

import cfmod
from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.configuration import FastSerializationSettings, ImageConfig, SerializationSettings
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.python_function_task import PythonFunctionTask
from flytekit.core.type_engine import TypeEngine
from flytekit.extend.backend.base_connector import AsyncConnectorExecutorMixin, ConnectorRegistry
from flytekit.tools.fast_registration import fast_package
from flytekit.tools.translator import get_serializable
from flytekitplugins.hearth import HearthFunctionTask

result = {}


def settings(fast=True):
    if not fast:
        return SerializationSettings(ImageConfig.auto_default_image())
    tarball = fast_package(code, dist)
    return SerializationSettings(ImageConfig.auto_default_image(), fast_serialization_settings=FastSerializationSettings(
        enabled=True, destination_dir=".", distribution_location="file://" + str(tarball)))


def template(task, fast=True):
    return get_serializable(OrderedDict(), settings(fast), task).template


def literals(task, **kwargs):
    return TypeEngine.dict_to_literal_map(FlyteContextManager.current_context(), kwargs,
                                          task.python_interface.inputs)


connector = ConnectorRegistry.get_connector("hearth-actor")
loop = asyncio.new_event_loop()


def call(method, **kwargs):
    return loop.run_until_complete(method(**kwargs))


def final(meta, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        r = call(connector.get, resource_meta=meta)
        if r.phase != TaskExecution.RUNNING:
            return r
        time.sleep(0.1)
    raise AssertionError("task %s not final after %s s" % (meta.task_id, limit))


def record(meta, r):
    result.update(meta=json.loads(meta.encode()), phase=TaskExecution.Phase.Name(r.phase), message=r.message)


if case == "executor":
    # flytekit's local connector executor: the mixin serializes the task
    # (with the context's fast-registration settings), writes its inputs,
    # and drives the connector's create and get, as its own connector tests do.
    class ConnectorTask(AsyncConnectorExecutorMixin, HearthFunctionTask):
        def dispatch_execute(self, ctx, input_literal_map):
            # flytekit's path, whose execute is the mixin's, not the plugin's direct call.
            return PythonFunctionTask.dispatch_execute(self, ctx, input_literal_map)

    t = ConnectorTask(task_config=cfmod.pid_plus.task_config, task_function=cfmod.pid_plus.task_function)
    ctx = FlyteContextManager.current_context()
    outputs, metas = [], []
    with FlyteContextManager.with_context(ctx.with_serialization_settings(settings())):
        for x in (1, 41):
            outputs.append(json.loads(t(x=x)))
            r = call(connector.get, resource_meta=t.resource_meta)
            metas.append({"meta": json.loads(t.resource_meta.encode()), "info": r.custom_info})
    result.update(outputs=outputs, metas=metas)

elif case == "fail":
    meta = call(connector.create, task_template=template(cfmod.boom), output_prefix=dist + "/out",
                inputs=literals(cfmod.boom, x=7))
    record(meta, final(meta))

elif case == "cancel":
    meta = call(connector.create, task_template=template(cfmod.nap), output_prefix=dist + "/out",
                inputs=literals(cfmod.nap, seconds=60.0))
    deadline = time.time() + 120
    # Deleted while it runs (in a replica), not while it queues.
    while call(connector.get, resource_meta=meta).custom_info["state"] != "running":
        assert time.time() < deadline, "nap never started"
        time.sleep(0.05)
    t0 = time.time()
    call(connector.delete, resource_meta=meta)
    r = final(meta, limit=60)
    result["seconds"] = time.time() - t0
    record(meta, r)
    call(connector.delete, resource_meta=meta)
    result["deleted_again"] = "ok" if call(connector.get, resource_meta=meta).phase == r.phase else "changed"

elif case == "image":
    meta = call(connector.create, task_template=template(cfmod.plain, fast=False), output_prefix=dist + "/out",
                inputs=literals(cfmod.plain, x=1))
    record(meta, final(meta))

elif case == "unreachable":
    try:
        call(connector.create, task_template=template(cfmod.pid_plus), output_prefix=dist + "/out",
             inputs=literals(cfmod.pid_plus, x=1))
        result["error"] = None
    except Exception as e:
        result.update(error=type(e).__name__, message=str(e))

elif case == "serve":
    import grpc
    from flyteidl.admin.agent_pb2 import CreateTaskRequest, GetAgentRequest, GetTaskRequest, ListAgentsRequest
    from flyteidl.admin.agent_pb2 import TaskCategory
    from flyteidl.service.agent_pb2_grpc import AgentMetadataServiceStub, AsyncAgentServiceStub

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port, metrics = free_port(), free_port()
    script = os.path.join(os.path.dirname(sys.executable), "hearth-connector")
    cmd = [script] if os.path.exists(script) else [sys.executable, "-m", "flytekitplugins.hearth._serve"]
    log = open(os.path.join(dist, "serve.log"), "w+")
    server = subprocess.Popen(cmd + ["--socket", os.environ["HEARTH_SOCKET"], "--port", str(port),
                                     "--prometheus_port", str(metrics)], stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, HEARTH_SOCKET="/nonexistent/overridden-by-socket-option"))
    try:
        channel = grpc.insecure_channel("127.0.0.1:%d" % port)
        grpc.channel_ready_future(channel).result(timeout=60)
        meta_stub, tasks = AgentMetadataServiceStub(channel), AsyncAgentServiceStub(channel)
        agents = meta_stub.ListAgents(ListAgentsRequest(), timeout=10).agents
        result["connectors"] = [{"name": a.name, "types": list(a.supported_task_types)} for a in agents]
        result["get_connector"] = list(meta_stub.GetAgent(GetAgentRequest(name="Hearth Connector"),
                                                          timeout=10).agent.supported_task_types)
        tt = template(cfmod.pid_plus)
        created = tasks.CreateTask(CreateTaskRequest(
            template=tt.to_flyte_idl(), inputs=literals(cfmod.pid_plus, x=7).to_flyte_idl(),
            output_prefix=dist + "/grpc-out"), timeout=120)
        deadline = time.time() + 120
        while True:
            res = tasks.GetTask(GetTaskRequest(task_category=TaskCategory(name="hearth-actor", version=0),
                                               resource_meta=created.resource_meta), timeout=30).resource
            if res.phase != TaskExecution.RUNNING or time.time() > deadline:
                break
            time.sleep(0.1)
        result["phase"] = TaskExecution.Phase.Name(res.phase)
        result["message"] = res.message
        result["output"] = json.loads(res.outputs.literals["o0"].scalar.primitive.string_value)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.seek(0)
        result["log"] = log.read()[-3000:]

else:
    raise SystemExit("unknown case %r" % case)

with open(out, "w") as f:
    json.dump(result, f)
'''
