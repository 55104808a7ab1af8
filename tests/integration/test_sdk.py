"""The Python SDK against a real hearthd: the seed's examples through
`python -m hearth run`, code edits without a cold start, rolling, type
checks before anything is sent, secrets, errors, map_task, pip install."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, running_daemon

EXAMPLES = REPO / "examples"
TRACE = re.compile(r"^hearth: task (\S+) (\S+) replica=(\S+) pid=(\S+) (cold\(spare\)|cold|warm) ([0-9.]+) ms -> (.*)$", re.M)


@pytest.fixture(scope="module")
def sdk():
    yield from running_daemon("hearth-sdk")


def env_for(d, **extra):
    env = dict(os.environ, HEARTH_SOCKET=d.socket, PYTHONPATH=str(REPO / "python"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra)
    return env


def run(d, *args, check=True, cwd=None, timeout=180, **extra):
    r = subprocess.run([sys.executable, "-m", "hearth", "run", *map(str, args)], capture_output=True, text=True,
                       env=env_for(d, **extra), cwd=cwd, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"hearth run {args} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def traces(r):
    return [dict(zip(("task", "id", "replica", "pid", "mode", "ms", "result"), m.groups()))
            for m in TRACE.finditer(r.stderr)]


def py(d, code, check=True, timeout=180, cwd=None, **extra):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=env_for(d, **extra), timeout=timeout, cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(f"exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


# -- the seed's examples ------------------------------------------------------------

def test_examples_differ_from_the_seed_only_in_imports():
    seed = (REPO.parent / "shared" / "seed" / "actors.md")
    if not seed.exists():
        pytest.skip(f"{seed} is not on this machine")
    text = seed.read_text()
    for name in ("hello_world.py", "plus_one.py", "multiple_tasks.py", "pod_template.py"):
        ours = (EXAMPLES / name).read_text()
        back = ours.replace("from hearth import ActorEnvironment", "from union.actor import ActorEnvironment") \
                   .replace("from hearth import", "from flytekit import")
        assert back.strip() in text, f"examples/{name} differs from the seed beyond its imports"


def test_hello_world(sdk):
    r = run(sdk, EXAMPLES / "hello_world.py", "wf")
    t = traces(r)
    assert [(x["task"], x["result"]) for x in t] == [("say_hello", "'hello'")], r.stderr
    assert r.stdout == ""  # wf returns nothing


def test_plus_one_runs_every_task_in_one_replica(sdk):
    r = run(sdk, EXAMPLES / "plus_one.py", "wf", "--input", "0")
    assert r.stdout.strip() == "4"
    t = traces(r)
    assert [x["result"] for x in t] == ["1", "2", "3", "4"]
    assert len({(x["replica"], x["pid"]) for x in t}) == 1, t
    assert [x["mode"] for x in t][1:] == ["warm"] * 3


def test_multiple_tasks_with_subworkflow_and_launch_plan(sdk):
    r = run(sdk, EXAMPLES / "multiple_tasks.py", "my_parent_wf", "--name", "Ada")
    assert r.stdout.strip() == "HELLO HELLO hello Ada"
    t = traces(r)
    assert [x["task"] for x in t] == ["say_hello", "scream_hello", "scream_hello"]
    assert len({(x["replica"], x["pid"]) for x in t}) == 1, t
    status = json.loads(subprocess.run([sys.executable, "-c", "import json,hearth._client as c; "
                                        "print(json.dumps(c.client().call('GET','/v1/environments/my-actor')))"],
                                       capture_output=True, text=True, env=env_for(sdk), check=True).stdout)
    assert status["replicaCount"] == 1


def test_pod_template_with_real_kubernetes_objects(sdk):
    pytest.importorskip("kubernetes", reason="scripts/setup installs kubernetes from PyPI")
    r = run(sdk, EXAMPLES / "pod_template.py", "wf")
    assert r.stdout.split() == ["compile_time", "run_time"]
    t = traces(r)
    assert len({x["replica"] for x in t}) == 1


def test_hearth_run_console_script(sdk, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A copy: building in place would leave build/ and *.egg-info in the repository.
    src = tmp_path / "src"
    shutil.copytree(REPO / "python", src, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True,
                         text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = dict(os.environ, HEARTH_SOCKET=sdk.socket)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([str(venv / "bin" / "hearth-run"), str(EXAMPLES / "plus_one.py"), "wf", "--input", "10"],
                       capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "14"


# -- code edits, rolling, actor_cache ---------------------------------------------------

PROJECT = '''
import os, time
from hearth import ActorEnvironment, actor_cache, workflow

actor = ActorEnvironment(name="sdk-edit", replica_count=int(os.environ.get("REPLICAS", "1")), ttl_seconds=300,
                         environment={"FLAVOUR": os.environ.get("FLAVOUR", "plain")})

@actor_cache
def model():
    return {"loaded_at": time.time(), "pid": os.getpid()}

@actor.task
def which() -> dict:
    return {"version": VERSION, "model": model(), "flavour": os.environ["FLAVOUR"],
            "replica": os.environ["HEARTH_REPLICA"]}

VERSION = 1
'''


def test_edit_takes_effect_without_cold_start_and_actor_cache_survives(sdk, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "edit_me.py").write_text(PROJECT)
    first = run(sdk, "--json", proj / "edit_me.py", "which")
    one = json.loads(first.stdout)
    assert one["version"] == 1
    (proj / "edit_me.py").write_text(PROJECT.replace("VERSION = 1", "VERSION = 2"))
    second = run(sdk, "--json", proj / "edit_me.py", "which")
    two = json.loads(second.stdout)
    assert two["version"] == 2, "the edit did not reach the replica"
    assert traces(second)[0]["mode"] == "warm", second.stderr
    assert two["replica"] == one["replica"]
    assert two["model"] == one["model"], "actor_cache was lost across the code change"


def test_changing_env_var_or_replica_count_rolls_the_environment(sdk, tmp_path):
    proj = tmp_path / "roll"
    proj.mkdir()
    (proj / "roll_me.py").write_text(PROJECT.replace("sdk-edit", "sdk-roll"))
    a = json.loads(run(sdk, "--json", proj / "roll_me.py", "which").stdout)
    same = run(sdk, "--json", proj / "roll_me.py", "which")
    assert "environment sdk-roll" not in same.stderr  # unchanged: not reported
    assert json.loads(same.stdout)["replica"] == a["replica"]
    changed = run(sdk, "--json", proj / "roll_me.py", "which", FLAVOUR="spicy")
    assert "environment sdk-roll replaced" in changed.stderr
    b = json.loads(changed.stdout)
    assert b["flavour"] == "spicy" and b["replica"] != a["replica"]
    assert traces(changed)[0]["mode"] == "cold"
    more = run(sdk, "--json", proj / "roll_me.py", "which", FLAVOUR="spicy", REPLICAS="2")
    assert "environment sdk-roll replaced" in more.stderr
    assert json.loads(more.stdout)["replica"] != b["replica"]


# -- refused before anything is sent ---------------------------------------------------

TYPED = '''
from hearth import ActorEnvironment, workflow
actor = ActorEnvironment(name="sdk-typed")

@actor.task
def add(a: int, b: float = 1.5, tags: list[str] = []) -> float:
    return a + b
'''


@pytest.mark.parametrize("call, message", [
    ("add(1, 2, ['x'], 4)", "add() takes 3 positional inputs (a, b, tags) but 4 were given"),
    ("add('1', 2)", "input 'a': expected int, got str '1'"),
    ("add(1, a=2)", "got input 'a' twice"),
    ("add(a='1')", "expected int, got str"),
    ("add(a=True)", "expected int, got bool"),
    ("add(a=1, c=3)", "unexpected keyword argument 'c'"),
    ("add()", "missing required input 'a'"),
    ("add(a=1, tags=['x', 2])", "tags'[1]: expected str, got int"),
])
def test_bad_arguments_are_refused_before_the_daemon(tmp_path, call, message):
    (tmp_path / "typed.py").write_text(TYPED)
    code = f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        from typed import add
        from hearth import InputError
        try:
            {call}
        except InputError as e:
            print("REFUSED", e)
    """
    # No daemon at this socket: a refusal proves nothing was sent.
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env=dict(os.environ, HEARTH_SOCKET=str(tmp_path / "nothing.sock"),
                                PYTHONPATH=str(REPO / "python")), timeout=60)
    assert "REFUSED" in r.stdout, r.stdout + r.stderr
    assert message in r.stdout, r.stdout


def test_runner_refuses_a_bad_input(tmp_path):
    (tmp_path / "typed.py").write_text(TYPED)
    r = subprocess.run([sys.executable, "-m", "hearth", "run", str(tmp_path / "typed.py"), "add", "--a", "one"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, HEARTH_SOCKET=str(tmp_path / "nothing.sock"),
                                PYTHONPATH=str(REPO / "python")))
    assert r.returncode == 2
    assert "--a: 'one' is not a valid int" in r.stderr


# -- secrets, errors, timeouts, packages, map_task -------------------------------------------

FEATURES = '''
import os, time
from hearth import ActorEnvironment, ImageSpec, Secret, current_context, map_task

actor = ActorEnvironment(name="sdk-features", replica_count=2, ttl_seconds=120,
                         secret_requests=[Secret(key="sdk-token")])

@actor.task
def read_secret() -> str:
    return current_context().secrets.get(key="sdk-token")

@actor.task
def fail(message: str) -> int:
    raise KeyError(message)

@actor.task(timeout=1)
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"

@actor.task
def square(x: int) -> int:
    return x * x

@actor.task
def where() -> str:
    return os.environ["HEARTH_REPLICA"]

@actor.task
def task_id() -> str:
    from hearth import _worker
    return _worker.current_task_id

@actor.task
def outer() -> list:
    # A task called inside a replica is a plain in-process call.
    from hearth import _worker
    return [_worker.current_task_id, task_id(), square(x=7)]

needs = ActorEnvironment(name="sdk-needs", container_image=ImageSpec(packages=["union", "no-such-package-xyz"]))

@needs.task
def nothing() -> int:
    return 1
'''


@pytest.fixture(scope="module")
def features(sdk, tmp_path_factory):
    sdk.hearth("secret", "set", "sdk-token", input=b"s3cr3t-value")
    d = tmp_path_factory.mktemp("features")
    (d / "features.py").write_text(FEATURES)
    yield d
    sdk.hearth("rm", "sdk-features", check=False)
    sdk.hearth("rm", "sdk-needs", check=False)


def test_secret_through_current_context(sdk, features):
    r = py(sdk, "from features import read_secret; print(read_secret())", cwd=features)
    assert r.stdout.strip() == "s3cr3t-value"


def test_remote_exception_keeps_type_message_and_traceback(sdk, features):
    r = py(sdk, """
        from features import fail
        from hearth import TaskFailed
        try:
            fail(message="nope")
        except KeyError as e:
            assert isinstance(e, TaskFailed), type(e).__mro__
            print("TYPE", type(e).__name__, e.remote_type)
            print(str(e))
    """, cwd=features)
    assert "TYPE KeyError KeyError" in r.stdout
    assert "KeyError: 'nope'" in r.stdout
    assert 'raise KeyError(message)' in r.stdout  # the remote traceback


def test_timeout_raises_task_timeout(sdk, features):
    r = py(sdk, """
        from features import sleepy
        from hearth import TaskTimeout
        try:
            sleepy(seconds=10)
        except TaskTimeout as e:
            print("TIMEOUT", isinstance(e, TimeoutError), e)
        print(sleepy(seconds=0))
    """, cwd=features)
    assert "TIMEOUT True" in r.stdout, r.stdout
    assert r.stdout.strip().endswith("woke")


def test_misspelled_image_package_fails_the_build_naming_it(sdk, features):
    # ImageSpec(packages=[...]) is built on first use; a package PyPI does
    # not have fails the build's install step, and no task runs.
    r = py(sdk, """
        from features import nothing
        from hearth import ImageBuildFailed
        try:
            nothing()
        except ImageBuildFailed as e:
            print("FAILED", e)
    """, cwd=features)
    assert "FAILED" in r.stdout, r.stdout + r.stderr
    assert "no-such-package-xyz" in r.stdout and "exit status" in r.stdout, r.stdout


def test_map_task_spreads_over_replicas_in_order(sdk, features):
    r = py(sdk, """
        import json
        from features import square, where
        from hearth import map_task
        print(json.dumps(map_task(square)(x=list(range(300)))))
    """, cwd=features)
    assert json.loads(r.stdout) == [x * x for x in range(300)]


def test_daemon_not_running_names_the_socket(tmp_path):
    (tmp_path / "typed.py").write_text(TYPED)
    sock = tmp_path / "nothing.sock"
    r = subprocess.run([sys.executable, "-m", "hearth", "run", str(tmp_path / "typed.py"), "add", "--a", "1"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, HEARTH_SOCKET=str(sock), PYTHONPATH=str(REPO / "python")))
    assert r.returncode == 1
    assert f"hearthd is not running: there is no socket at {sock}" in r.stderr
    assert "sudo hearthd" in r.stderr


def test_environment_refused_gives_the_daemons_reason(sdk, tmp_path):
    (tmp_path / "refused.py").write_text(textwrap.dedent('''
        from hearth import ActorEnvironment
        bad = ActorEnvironment(name="sdk-refused", replica_count=1000)
        @bad.task
        def t() -> int:
            return 1
    '''))
    r = run(sdk, tmp_path / "refused.py", "t", check=False)
    assert r.returncode == 1
    assert "environment sdk-refused refused" in r.stderr and "replica_count" in r.stderr, r.stderr


def test_a_task_called_inside_a_replica_runs_in_process(sdk, features):
    r = py(sdk, """
        import json
        from features import outer
        print(json.dumps(outer()))
    """, cwd=features)
    mine, inner, sq = json.loads(r.stdout)
    assert inner == mine and sq == 49


def test_permission_denied_on_the_socket_says_how_to_get_access(sdk):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that an unprivileged user can run")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from hearth._client import Client\n"
            "from hearth import SocketPermissionError\n"
            "try:\n    Client(%r).call('GET', '/v1/version')\n"
            "except SocketPermissionError as e:\n    print('DENIED', e)\n") % (str(REPO / "python"), sdk.socket)
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, user="nobody", group="nogroup",
                       cwd="/", timeout=60)
    assert "DENIED permission denied on " + sdk.socket in r.stdout, r.stdout + r.stderr
    assert "group hearth" in r.stdout


CLASH = """
import os
from hearth import ActorEnvironment

a = ActorEnvironment(name="sdk-clash", environment={"WHO": "a"})
b = ActorEnvironment(name="sdk-clash", environment={"WHO": "b"})

def _who() -> str:
    return os.environ["WHO"]

who_a = a.task(_who)
who_b = b.task(_who)
"""


def test_a_task_never_runs_on_a_spec_another_client_applied(sdk, tmp_path):
    (tmp_path / "clash.py").write_text(CLASH)
    r = py(sdk, """
        from clash import who_a, who_b
        print(who_a(), who_b(), who_a(), who_b())
    """, cwd=tmp_path)
    assert r.stdout.split() == ["a", "b", "a", "b"]
