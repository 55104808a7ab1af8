"""The connector's own logic, without a hearthd: phases, the code
distribution in a container's args, task ids, the template's custom, what
get/delete make of hearthd's answers (a stand-in client), an unreachable
socket, the distribution's bundle and outputs published to a remote prefix.
tests/integration/test_flytekit_connector.py runs it against a real one."""
import asyncio
import datetime
import io
import re
import tarfile

import flytekit
import pytest
from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.models.core.identifier import (Identifier, NodeExecutionIdentifier, ResourceType,
                                             TaskExecutionIdentifier, WorkflowExecutionIdentifier)
from flytekit.models.core.types import BlobType
from flytekit.models.literals import Blob, BlobMetadata, Literal, LiteralMap, Primitive, Scalar
from flytekit.models.task import TaskExecutionMetadata
from flytekit.extend.backend.base_connector import ConnectorRegistry
from hearth import _protocol

import flytekitplugins.hearth as fh
from flytekitplugins.hearth import _literals, connector
from flytekitplugins.hearth.connector import HearthConnector, HearthMetadata, HearthUnreachable

TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # hearthd's rule for a client's task id


def test_the_connector_is_registered_for_hearth_actor_tasks():
    c = ConnectorRegistry.get_connector("hearth-actor")
    assert isinstance(c, HearthConnector)
    assert "hearth-actor" in ConnectorRegistry.get_connector_metadata("Hearth Connector").supported_task_types


@pytest.mark.parametrize("state, phase", [
    ("queued", TaskExecution.RUNNING), ("running", TaskExecution.RUNNING), ("succeeded", TaskExecution.SUCCEEDED),
    ("failed", TaskExecution.RETRYABLE_FAILED), ("lost", TaskExecution.RETRYABLE_FAILED),
    ("cancelled", TaskExecution.FAILED)])
def test_every_hearthd_state_has_a_phase(state, phase):
    assert connector.phase(state) == phase


def test_an_unknown_state_is_refused_by_name():
    with pytest.raises(ValueError, match="'paused' is not one of queued, running"):
        connector.phase("paused")


FAST = ["pyflyte-fast-execute", "--additional-distribution", "s3://b/fast0123.tar.gz", "--dest-dir", ".", "--",
        "pyflyte-execute", "--inputs", "{{.input}}", "--resolver", "r", "--", "task-module", "m", "task-name", "t"]


@pytest.mark.parametrize("args, url", [
    (FAST, "s3://b/fast0123.tar.gz"),
    (["pyflyte-fast-execute", "--additional-distribution=file:///tmp/fastx.tar.gz", "--"], "file:///tmp/fastx.tar.gz"),
    (["pyflyte-execute", "--dynamic-addl-distro", "gs://b/fasty.tar.gz", "--dynamic-dest-dir", "."],
     "gs://b/fasty.tar.gz"),
    # pyflyte-fast-execute repeats its distribution as --dynamic-addl-distro for a dynamic task: one, named twice.
    (FAST + ["--dynamic-addl-distro", "s3://b/fast0123.tar.gz"], "s3://b/fast0123.tar.gz"),
    (["pyflyte-execute", "--inputs", "{{.input}}", "--", "task-module", "m", "task-name", "t"], None),
    ([], None),
])
def test_the_distribution_is_read_from_the_container_args(args, url):
    assert connector.code_distribution(args) == url


@pytest.mark.parametrize("args, message", [
    (["--additional-distribution", "{{ .remote_package_path }}"], "is a placeholder, not a location"),
    (["--additional-distribution", "s3://b/x/pkl.gz"], "is a pickled task"),
    (["--additional-distribution", "s3://b/code.zip"], "s3://b/code.zip is not a fast-registration tarball"),
    (["--additional-distribution"], "--additional-distribution has no value"),
    (["--additional-distribution", "s3://b/a.tar.gz", "--dynamic-addl-distro", "s3://b/b.tar.gz"],
     "two distributions, s3://b/a.tar.gz and s3://b/b.tar.gz"),
])
def test_a_distribution_that_cannot_be_code_is_refused_by_name(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        connector.code_distribution(args)


def _execution(retry):
    task = Identifier(ResourceType.TASK, "p", "d", "mod.fn", "v1")
    node = NodeExecutionIdentifier("n0", WorkflowExecutionIdentifier("p", "d", "abc123"))
    return TaskExecutionMetadata(task_execution_id=TaskExecutionIdentifier(task, node, retry), namespace="ns",
                                 labels={}, annotations={}, k8s_service_account="sa", environment_variables={},
                                 identity=None)


def test_a_flyte_execution_has_one_task_id_and_a_retry_another():
    a, again, retry = (connector.task_id_for(_execution(0)), connector.task_id_for(_execution(0)),
                       connector.task_id_for(_execution(1)))
    assert a == again and a != retry
    for tid in (a, retry, connector.task_id_for(None)):
        assert TASK_ID.match(tid) and not tid.startswith("t-"), tid
    assert connector.task_id_for(None) != connector.task_id_for(None)


class Template(object):
    """What the connector reads of a TaskTemplate."""

    def __init__(self, custom, args=(), timeout=None):
        self.custom = custom
        self.container = type("C", (), {"args": list(args)})()
        self.metadata = type("M", (), {"timeout": timeout})()
        self.id = type("I", (), {"name": "mod.fn"})()


CUSTOM = {"environment": {"name": "e", "replica_count": 1}, "images": [], "module": "mod", "function": "fn"}


@pytest.mark.parametrize("custom, message", [
    ({}, "task mod.fn: template custom: \"environment\" must be an environment spec with a name"),
    (dict(CUSTOM, environment={"replica_count": 1}), "\"environment\" must be an environment spec"),
    (dict(CUSTOM, module=""), "'module' must be a non-empty string, got ''"),
    (dict(CUSTOM, function=None), "'function' must be a non-empty string, got None"),
    (dict(CUSTOM, images=[{"name": "x"}]), "\"images\" must be a list of {\"name\", \"spec\"} build requests"),
])
def test_a_template_without_what_the_plugin_writes_is_refused_by_field(custom, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        connector._custom(Template(custom))


# -- get and delete on hearthd's answers --------------------------------------------


class FakeClient(object):
    """hearthd's answers by path; records the requests."""

    def __init__(self, answers, path="/run/test/hearthd.sock"):
        self.answers, self.path, self.calls = answers, path, []

    def call(self, method, path, body=None, what=None, not_found=None, **kw):
        self.calls.append((method, path, body))
        answer = self.answers.get((method, path))
        if answer is None:
            if not_found is not None:
                return not_found
            raise AssertionError("unexpected %s %s" % (method, path))
        return answer


@pytest.fixture
def fake(monkeypatch):
    def install(answers):
        c = FakeClient(answers)
        monkeypatch.setattr(connector._actor, "_client_for", lambda path: c)
        return c
    return install


META = HearthMetadata(task_id="c-1", environment="e", task="mod.fn", code="distribution",
                      distribution="file:///x/fast1.tar.gz", bundle="ab" * 32)


def run(coro):
    return asyncio.run(coro)


def test_queued_and_running_are_running_with_where_it_is(fake):
    fake({("GET", "/v1/tasks/c-1"): {"id": "c-1", "state": "queued"}})
    r = run(HearthConnector().get(META))
    assert r.phase == TaskExecution.RUNNING and "queued" in r.message and "environment e" in r.message
    fake({("GET", "/v1/tasks/c-1"): {"id": "c-1", "state": "running", "replica": "e-0", "pid": 42}})
    r = run(HearthConnector().get(META))
    assert r.phase == TaskExecution.RUNNING and "replica e-0 (pid 42)" in r.message
    assert r.custom_info["replica"] == "e-0" and r.custom_info["code"] == "distribution"


def test_a_failed_task_names_its_id_and_cause(fake):
    fake({("GET", "/v1/tasks/c-1"): {"id": "c-1", "state": "failed", "replica": "e-0", "pid": 42, "error": {
        "type": "KeyError", "message": "no such key 7", "traceback": "Traceback ...\nKeyError: 'no such key 7'"}}})
    r = run(HearthConnector().get(META))
    # Retryable: the task's `retries` apply, as to any Flyte task.
    assert r.phase == TaskExecution.RETRYABLE_FAILED
    assert "task mod.fn (c-1, replica e-0, pid 42) failed: KeyError: no such key 7" in r.message, r.message
    assert "Remote traceback" in r.message and "hearthd state failed" in r.message


def test_cancelled_and_lost_fail_with_their_state(fake):
    # A replica lost mid-task is retried; a cancelled task is not.
    for state, want in (("cancelled", TaskExecution.FAILED), ("lost", TaskExecution.RETRYABLE_FAILED)):
        fake({("GET", "/v1/tasks/c-1"): {"id": "c-1", "state": state, "error": {"type": "TaskCancelled",
                                                                               "message": "cancelled by a client"}}})
        r = run(HearthConnector().get(META))
        assert r.phase == want and "c-1" in r.message and "hearthd state %s" % state in r.message


def test_a_task_hearthd_does_not_know_fails_naming_it_and_the_socket(fake):
    fake({})
    r = run(HearthConnector().get(META))
    assert r.phase == TaskExecution.FAILED
    assert "hearthd task c-1 of mod.fn (environment e) is not known to hearthd at /run/test/hearthd.sock" in r.message


def test_a_succeeded_task_gives_its_output_literals_and_files(fake, tmp_path):
    f = tmp_path / "out.txt"
    f.write_text("made in a replica")
    blob = Literal(scalar=Scalar(blob=Blob(BlobMetadata(BlobType("", BlobType.BlobDimensionality.SINGLE)), str(f))))
    sent = _literals.encode(LiteralMap({"o0": Literal(scalar=Scalar(primitive=Primitive(integer=4))), "o1": blob}))
    f.unlink()  # the replica's file: only what travelled with the literals is there
    fake({("GET", "/v1/tasks/c-1"): {"id": "c-1", "state": "succeeded", "replica": "e-0", "pid": 42,
                                     "result": _protocol.encode_value(sent)}})
    r = run(HearthConnector().get(META))
    assert r.phase == TaskExecution.SUCCEEDED, r.message
    assert r.outputs.literals["o0"].scalar.primitive.integer == 4
    assert open(r.outputs.literals["o1"].scalar.blob.uri).read() == "made in a replica"


def test_delete_cancels_and_a_task_already_gone_is_fine(fake):
    c = fake({("DELETE", "/v1/tasks/c-1"): {"id": "c-1", "state": "cancelled"}})
    run(HearthConnector().delete(META))
    assert c.calls == [("DELETE", "/v1/tasks/c-1", None)]
    c = fake({})
    run(HearthConnector().delete(META))  # 404: nothing left to cancel
    assert c.calls == [("DELETE", "/v1/tasks/c-1", None)]


def test_an_unreachable_hearthd_names_the_socket(monkeypatch, tmp_path):
    sock = str(tmp_path / "no-hearthd.sock")
    monkeypatch.setenv("HEARTH_SOCKET", sock)
    monkeypatch.delenv("HEARTH_HOST", raising=False)  # it would win over the socket
    c = HearthConnector()
    with pytest.raises(HearthUnreachable) as e:
        run(c.create(Template(CUSTOM), "/tmp/out", LiteralMap({})))
    text = str(e.value)
    assert "cannot reach hearthd at %s (HEARTH_SOCKET) for task mod.fn" % sock in text, text
    assert "there is no socket at %s" % sock in text, text
    for call in (c.get, c.delete):
        with pytest.raises(HearthUnreachable, match=re.escape("cannot reach hearthd at %s" % sock)):
            run(call(META))


def test_the_distribution_becomes_a_bundle_of_what_it_unpacks(tmp_path):
    from flytekit.tools.fast_registration import fast_package

    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "__init__.py").write_text("")
    (src / "pkg" / "tasks.py").write_text("X = 1\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    out = tmp_path / "dist"
    out.mkdir()
    tarball = fast_package(str(src), str(out))
    b = connector.distribution_bundle("file://" + str(tarball))
    names = tarfile.open(fileobj=io.BytesIO(b.data)).getnames()
    assert "pkg/tasks.py" in names and "pkg/__init__.py" in names, names
    assert not any(n.endswith(".tar.gz") or "__pycache__" in n for n in names), names
    # The same code is the same bundle (deterministic tar): uploaded once.
    assert connector.distribution_bundle("file://" + str(tarball)).sha256 == b.sha256


def test_a_distribution_that_is_not_there_is_named(tmp_path):
    url = "file://%s/fastmissing.tar.gz" % tmp_path
    with pytest.raises(RuntimeError, match=re.escape("code distribution %s (the task's --additional-distribution) "
                                                     "could not be fetched" % url)):
        connector.distribution_bundle(url)


def test_outputs_for_a_remote_prefix_are_uploaded_there(tmp_path):
    import fsspec
    from flytekit.core.context_manager import FlyteContextManager

    f = tmp_path / "result.csv"
    f.write_text("a,b\n")
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("x")
    lm = LiteralMap({
        "f": Literal(scalar=Scalar(blob=Blob(BlobMetadata(BlobType("csv", BlobType.BlobDimensionality.SINGLE)),
                                             str(f)))),
        "d": Literal(scalar=Scalar(blob=Blob(BlobMetadata(BlobType("", BlobType.BlobDimensionality.MULTIPART)),
                                             str(d)))),
        "s3": Literal(scalar=Scalar(blob=Blob(BlobMetadata(BlobType("", BlobType.BlobDimensionality.SINGLE)),
                                              "s3://elsewhere/k"))),
    })
    fa = FlyteContextManager.current_context().file_access
    out = connector.publish(lm, fa, "memory://outputs/run1/hearth/c-1")
    uris = {k: v.scalar.blob.uri for k, v in out.literals.items()}
    assert uris["s3"] == "s3://elsewhere/k"
    assert uris["f"].startswith("memory://outputs/run1/hearth/c-1/") and uris["f"].endswith("result.csv")
    mem = fsspec.filesystem("memory")
    assert mem.cat(uris["f"]) == b"a,b\n"
    assert mem.cat(uris["d"].rstrip("/") + "/sub/x") == b"x"


env = fh.ActorEnvironment(name="conn-unit", container_image=flytekit.ImageSpec(packages=["union", "six"]))


@env.task
def fn(x: int) -> int:
    return x


def test_a_serialized_task_carries_its_images_module_and_distribution():
    from collections import OrderedDict

    from flytekit.configuration import FastSerializationSettings, ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    url = "s3://bucket/fastabc.tar.gz"
    ss = SerializationSettings(ImageConfig.auto_default_image(), env={"FROM_SETTINGS": "1"},
                               fast_serialization_settings=FastSerializationSettings(
                                   enabled=True, destination_dir=".", distribution_location=url))
    # What pyflyte register does: the task's template, as propeller hands it to the connector.
    t = get_serializable(OrderedDict(), ss, fn).template
    assert t.type == "hearth-actor" and t.container.env == {"FROM_SETTINGS": "1"}
    assert connector.code_distribution(t.container.args) == url
    custom = t.custom
    from flytekit.core.tracker import extract_task_module

    # The name flytekit's resolver puts in the container's args (task-module), which the replica imports.
    assert custom["module"] == extract_task_module(fn)[1] and custom["module"].endswith("test_connector")
    assert custom["function"] == "fn"
    assert custom["environment"]["name"] == "conn-unit"
    (image,) = custom["images"]
    assert custom["environment"]["container_image"] == image["name"]
    assert "six" in image["spec"]["packages"] and "union" not in image["spec"]["packages"]
    assert any(p.startswith("flytekit==") for p in image["spec"]["packages"])


def test_the_task_request_is_the_callers(tmp_path):
    from flytekitplugins.hearth._task import task_request

    lm = LiteralMap({"x": Literal(scalar=Scalar(primitive=Primitive(integer=3)))})
    body = task_request("mod", "fn", lm, "ab" * 32, datetime.timedelta(seconds=90))
    assert body["module"] == "flytekitplugins.hearth._runtime" and body["function"] == "run"
    assert body["bundle"] == "ab" * 32 and body["timeout"] == 90.0
    kwargs = {k: _protocol.decode_value(v, unpickle=False) for k, v in body["kwargs"].items()}
    assert kwargs["module"] == "mod" and kwargs["task"] == "fn"
    assert _literals.decode(kwargs["inputs"]).literals["x"].scalar.primitive.integer == 3
    assert "bundle" not in task_request("mod", "fn", lm) and "timeout" not in task_request("mod", "fn", lm)


# -- many nodes: placement (Nodes) with stand-in daemons ---------------------------------

class NodeClient(object):
    """A node's daemon: its GET /v1/info, or unreachable."""

    def __init__(self, address, free_memory, environments=0):
        self.path = address
        self.info = {"free": {"memoryBytes": free_memory, "cpuMilli": 2000, "gpus": 0},
                     "environments": environments}
        self.up = True
        self.asked = 0

    def call(self, method, path, **kw):
        from hearth._errors import DaemonUnavailable

        self.asked += 1
        if not self.up:
            raise DaemonUnavailable("cannot connect to hearthd at %s: Connection refused" % self.path)
        assert (method, path) == ("GET", "/v1/info")
        return self.info


def cluster(monkeypatch, *nodes):
    by = {n.path: n for n in nodes}
    monkeypatch.setattr(connector._actor, "_client_for", lambda path: by[path])
    return connector.Nodes([n.path for n in nodes])


def test_an_environment_goes_to_the_node_with_most_free_memory_then_fewest_environments(monkeypatch):
    a, b, c = (NodeClient("tcp://a:1", 4 << 30, 3), NodeClient("tcp://b:1", 8 << 30, 5),
               NodeClient("tcp://c:1", 8 << 30, 1))
    nodes = cluster(monkeypatch, a, b, c)
    assert nodes.candidates("e") == ["tcp://c:1", "tcp://b:1", "tcp://a:1"]
    nodes.placed("e", "tcp://b:1")
    # Placed: it stays where its warm replicas are, without asking anyone.
    asked = a.asked + b.asked + c.asked
    assert nodes.candidates("e") == ["tcp://b:1"] and a.asked + b.asked + c.asked == asked
    assert nodes.moves == 0 and [ev[1] for ev in nodes.log] == ["placed"]


def test_a_lost_node_is_skipped_its_environments_move_and_it_is_tried_again_later(monkeypatch):
    a, b = NodeClient("tcp://a:1", 8 << 30), NodeClient("tcp://b:1", 4 << 30)
    nodes = cluster(monkeypatch, a, b)
    nodes.placed("e", "tcp://a:1")
    a.up = False
    nodes.mark_down("tcp://a:1", "connection refused")
    assert nodes.is_down("tcp://a:1")
    assert nodes.candidates("e") == ["tcp://b:1"]  # a is not even asked while it is down
    nodes.placed("e", "tcp://b:1")
    assert nodes.moves == 1 and nodes.where("e") == "tcp://b:1"
    assert [ev[1] for ev in nodes.log] == ["placed", "down", "moved"]
    # Back after RETRY_DOWN_SECONDS: asked again, and up once it answers.
    a.up = True
    monkeypatch.setattr(connector.Nodes, "RETRY_DOWN_SECONDS", 0.0)
    assert nodes.candidates("other") == ["tcp://a:1", "tcp://b:1"] and not nodes.is_down("tcp://a:1")
    assert nodes.where("e") == "tcp://b:1"  # a moved environment stays where it is now


def test_placements_under_way_count_so_creates_at_once_spread(monkeypatch):
    # Six creates at once see the same GET /v1/info; none is admitted yet.
    a, b, c = (NodeClient("tcp://a:1", 8 << 30), NodeClient("tcp://b:1", 8 << 30), NodeClient("tcp://c:1", 8 << 30))
    nodes = cluster(monkeypatch, a, b, c)
    gib = {"memoryBytes": 1 << 30}
    firsts = [nodes.candidates("e%d" % i, gib)[0] for i in range(6)]
    assert sorted(firsts) == ["tcp://a:1"] * 2 + ["tcp://b:1"] * 2 + ["tcp://c:1"] * 2, firsts
    # A second create of an environment under way goes where the first went.
    assert nodes.candidates("e0", gib) == [firsts[0]]
    nodes.placed("e0", firsts[0])
    for i in range(1, 6):
        nodes.release("e%d" % i)
    # Nothing under way any more: the stand-ins' equal answers rank by address alone.
    assert nodes.candidates("new", gib) == ["tcp://a:1", "tcp://b:1", "tcp://c:1"]
    r = connector.reservation
    assert r({"name": "x", "replica_count": 2, "limits": {"mem": "1Gi"}})["memoryBytes"] == 2 << 30
    assert r({"name": "x", "replicas": {"min": 0, "max": 3}, "requests": {"memory": "100M", "cpu": "250m"}}) \
        == {"memoryBytes": 300 * 10 ** 6, "cpuMilli": 750, "gpus": 0}
    assert r({"name": "x", "requests": {"cpu": "2", "gpu": "1"}}) == {"memoryBytes": 0, "cpuMilli": 2000, "gpus": 1}
    assert r({"name": "x"}) == {"memoryBytes": 0, "cpuMilli": 0, "gpus": 0}


def test_a_node_that_cannot_hold_the_reservation_comes_last(monkeypatch):
    # b has more free memory, but no GPU: a GPU environment goes to a first.
    a, b = NodeClient("tcp://a:1", 4 << 30), NodeClient("tcp://b:1", 16 << 30)
    a.info["free"]["gpus"] = 1
    nodes = cluster(monkeypatch, a, b)
    assert nodes.candidates("gpu-env", {"gpus": 1, "memoryBytes": 1 << 30}) == ["tcp://a:1", "tcp://b:1"]
    assert nodes.candidates("cpu-env", {"cpuMilli": 500}) == ["tcp://b:1", "tcp://a:1"]


def test_a_node_that_does_not_answer_info_is_marked_down(monkeypatch):
    a, b = NodeClient("tcp://a:1", 8 << 30), NodeClient("tcp://b:1", 4 << 30)
    a.up = False
    nodes = cluster(monkeypatch, a, b)
    assert nodes.candidates("e") == ["tcp://b:1"] and nodes.is_down("tcp://a:1")


def test_nodes_come_from_hearth_nodes_and_a_bad_address_is_named():
    n = connector.Nodes.from_environment({"HEARTH_NODES": "tcp://10.0.0.1:7443, tcp://10.0.0.2:7443,"})
    assert n.addresses == ["tcp://10.0.0.1:7443", "tcp://10.0.0.2:7443"]
    assert connector.Nodes.from_environment({"HEARTH_SOCKET": "/run/x.sock"}).addresses == ["/run/x.sock"]
    with pytest.raises(ValueError) as e:
        connector.Nodes.from_environment({"HEARTH_NODES": "tcp://10.0.0.1"})
    assert "tcp://10.0.0.1" in str(e.value)


def test_a_task_on_a_lost_node_is_retryable_and_names_the_node(monkeypatch):
    from hearth._errors import DaemonUnavailable

    class Dead(object):
        path = "tcp://a:1"

        def call(self, *a, **k):
            raise DaemonUnavailable("cannot connect to hearthd at tcp://a:1: Connection refused")

    monkeypatch.setattr(connector._actor, "_client_for", lambda path: Dead())
    nodes = connector.Nodes(["tcp://a:1", "tcp://b:1"])
    meta = HearthMetadata(task_id="c-1", environment="e", task="mod.fn", node="tcp://a:1")
    r = run(HearthConnector(nodes=nodes).get(meta))
    assert r.phase == TaskExecution.RETRYABLE_FAILED
    assert r.message.startswith("node tcp://a:1 lost: hearthd task c-1 of mod.fn (environment e)"), r.message
    assert nodes.is_down("tcp://a:1")
    # Cancelling a task of a lost node does not wait for it.
    run(HearthConnector(nodes=nodes).delete(meta))
