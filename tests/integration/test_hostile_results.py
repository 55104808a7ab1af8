"""A replica attacks its caller through a task result, for real.

Tasks running in a replica of a real hearthd make their `{"$pickle": ...}`
result hostile: one replaces the worker's encoder for its own result with
the reproduced attack (names that are types, reached through a dotted name
in an allowed module: fractions + operator.attrgetter/itemgetter ->
collections.UserDict.__init__.__globals__ -> eval), one returns an
annotated task class whose state holds an object whose __reduce__ is eval.
Each payload would create a file on the host when unpickled. The caller
(the SDK in its own process, and `python -m hearth run`) must refuse with
hearth.UnsafeResult naming what and why, the file must not exist, and a
normal result from the same replica must still load. The control sets
HEARTH_TRUST_RESULTS=1: then the same bytes do run code in the caller,
which shows they are a real attack and come from the replica."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, running_daemon

TASKS = '''
import base64, dataclasses, pickle, typing
from hearth import ActorEnvironment

env = ActorEnvironment(name="hostile-results", replica_count=1, ttl_seconds=300)


def _s(text):
    b = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b


def _name(module, name):
    return _s(module) + _s(name) + pickle.STACK_GLOBAL


def _call(fn, *args):
    return fn + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def _attack(path):
    ag, ig = _name("fractions", "operator.attrgetter"), _name("fractions", "operator.itemgetter")
    glob = _call(_call(ag, _s("__init__.__globals__")), _name("collections", "UserDict"))
    ev = _call(_call(ig, _s("eval")), _call(_call(ig, _s("__builtins__")), glob))
    code = "open(%r, 'w').write('ran in pid ' + str(__import__('os').getpid()))" % path
    return pickle.PROTO + b"\\x04" + _call(ev, _s(code)) + pickle.STOP


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return eval, ("open(%r, 'w').write('ran')" % self.path,)


@dataclasses.dataclass
class Box:
    inner: typing.Any


@env.task
def dotted(path: str) -> Box:
    # The worker encodes the result with hearth._protocol.encode_value:
    # replace it for this one result.
    from hearth import _protocol

    real = _protocol.encode_value

    def once(value):
        _protocol.encode_value = real
        return {"$pickle": base64.b64encode(_attack(path)).decode()}

    _protocol.encode_value = once
    return Box(None)


@env.task
def reduce_chain(path: str) -> Box:
    return Box([1, {"deep": Evil(path)}])


@env.task
def normal(n: int) -> Box:
    return Box({n, n + 1})
'''

DOTTED = ("the result of task hostile_tasks.dotted names fractions.operator.itemgetter (module 'fractions', name "
          "'operator.itemgetter'), which is not allowed: a dotted name is never followed.")
REDUCE = ("the result of task hostile_tasks.reduce_chain names builtins.eval, which is not allowed: it is not an "
          "allowed type.")
TRUST = "set HEARTH_TRUST_RESULTS=1 to trust this replica"


@pytest.fixture(scope="module")
def daemon():
    yield from running_daemon("hearth-hostile")


@pytest.fixture(scope="module")
def project(daemon, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    (d / "hostile_tasks.py").write_text(TASKS)
    yield d
    daemon.hearth("rm", "hostile-results", check=False)


def env_for(d, **extra):
    env = dict(os.environ, HEARTH_SOCKET=d.socket, PYTHONPATH=str(REPO / "python"))
    env.pop("HEARTH_TRUST_RESULTS", None)
    env.update(extra)
    return env


def run(d, proj, *args, **extra):
    return subprocess.run([sys.executable, "-m", "hearth", "run", str(proj / "hostile_tasks.py"), *args],
                          capture_output=True, text=True, env=env_for(d, **extra), timeout=180)


@pytest.mark.parametrize("task,expected", [("dotted", DOTTED), ("reduce_chain", REDUCE)])
def test_sdk_refuses_a_hostile_result_in_its_own_process(daemon, project, tmp_path, task, expected):
    sentinel = tmp_path / "sentinel"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import hearth, hostile_tasks
        try:
            hostile_tasks.{task}(path={str(sentinel)!r})
        except hearth.UnsafeResult as e:
            print("REFUSED", e)
        else:
            print("LOADED")
        # The same replica, the same caller: a normal result still loads.
        print("NORMAL", sorted(hostile_tasks.normal(n=4).inner))
    """)], capture_output=True, text=True, env=env_for(daemon), cwd=project, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "REFUSED " + expected in r.stdout and TRUST in r.stdout, r.stdout
    assert "NORMAL [4, 5]" in r.stdout, r.stdout
    assert not sentinel.exists(), sentinel.read_text()


@pytest.mark.parametrize("task,expected", [("dotted", DOTTED), ("reduce_chain", REDUCE)])
def test_hearth_run_refuses_a_hostile_result(daemon, project, tmp_path, task, expected):
    sentinel = tmp_path / "sentinel"
    r = run(daemon, project, task, "--path", str(sentinel))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"python -m hearth run: {expected}" in r.stderr and TRUST in r.stderr, r.stderr
    assert not sentinel.exists(), sentinel.read_text()
    ok = run(daemon, project, "normal", "--n", "7")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == 'Box(inner={8, 7})', ok.stdout  # not JSON: printed as Python prints it


def test_control_the_same_bytes_run_code_when_results_are_trusted(daemon, project, tmp_path):
    # Without the defence (HEARTH_TRUST_RESULTS=1 loads with pickle.loads),
    # the replica's result runs code in the caller's process on the host.
    sentinel = tmp_path / "sentinel"
    # (What the payload leaves is no Box, which the return annotation check
    # then refuses: by then its code has run.)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, hearth, hostile_tasks
        print("CALLER", os.getpid(), flush=True)
        try:
            hostile_tasks.dotted(path={str(sentinel)!r})
        except hearth.ResultTypeError as e:
            print("REFUSED AFTERWARDS", e)
    """)], capture_output=True, text=True, env=env_for(daemon, HEARTH_TRUST_RESULTS="1"), cwd=project, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "REFUSED AFTERWARDS the output of task hostile_tasks.dotted: expected hostile_tasks.Box" in r.stdout
    caller = r.stdout.split("CALLER ")[1].split()[0]
    assert sentinel.read_text() == f"ran in pid {caller}", "the payload did not run in the caller"
