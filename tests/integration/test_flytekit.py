"""The flytekit plugin (python/flytekitplugins-hearth) under the real
`pyflyte run`, against a real daemon: the seed's four examples with only
ActorEnvironment's import changed (examples/flytekit/), their tasks in one
warm replica; dataclass inputs, FlyteFile and FlyteDirectory across the
channel, map_task over an actor task, flytekit's local cache (a cached call
never reaches hearthd), retries and a task's own exception.

pyflyte comes from the virtualenv scripts/setup makes (.venv-flyte:
flytekit 1.16 from PyPI, the SDK and the plugin installed from this tree);
the replicas' image is the ImageSpec build the plugin asks for (flytekit
from PyPI on the default image), made once by this module's daemon."""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import FLYTE_VENV, REPO, api, needs_flyte_venv, running_daemon

PYFLYTE = FLYTE_VENV / "bin" / "pyflyte"
EXAMPLES = REPO / "examples" / "flytekit"
SEED = REPO.parent / "shared" / "seed" / "actors.md"
RUN_TIMEOUT = 900  # the first run builds the image (flytekit from PyPI)

pytestmark = needs_flyte_venv(PYFLYTE)


@pytest.fixture(scope="module")
def fd():
    yield from running_daemon("hearth-fk")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The examples and this module's flows in a code directory of their
    own, a HOME of their own (flytekit's local cache lives there)."""
    d = tmp_path_factory.mktemp("flows")
    (d / "code").mkdir()
    (d / "home").mkdir()
    for f in EXAMPLES.glob("*.py"):
        shutil.copy(f, d / "code" / f.name)
    (d / "code" / "features.py").write_text(FEATURES)
    return d


def pyflyte(fd, work, *args, ok=True):
    env = dict(os.environ, HEARTH_SOCKET=fd.socket, HOME=str(work / "home"), PYTHONDONTWRITEBYTECODE="1",
               COLUMNS="200")
    env.pop("PYTHONPATH", None)
    r = subprocess.run([str(PYFLYTE), "run", *args], cwd=work / "code",
                       env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if ok:
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:], open(fd.log).read()[-2000:])
    return r


def result(r):
    """What pyflyte printed after the execution: the workflow's outputs."""
    lines = r.stdout.strip().splitlines()
    i = lines.index("Running Execution on local.")
    return "\n".join(lines[i + 1:])


def replicas(fd, env):
    status, body = api(fd.socket, "GET", "/v1/environments/" + env)
    assert status == 200, body
    return body["replicas"]


def test_the_examples_are_the_seeds_with_only_the_import_changed():
    if not SEED.exists():
        pytest.skip("the seed (%s) is not beside this checkout" % SEED)
    seed = SEED.read_text()
    for f in sorted(EXAMPLES.glob("*.py")):
        mine = f.read_text().replace("from flytekitplugins.hearth import ActorEnvironment",
                                     "from union.actor import ActorEnvironment")
        assert mine.strip() in seed, f.name


@pytest.mark.parametrize("example, args, printed, tasks", [
    ("hello_world.py", ["wf"], "", 1),
    ("plus_one.py", ["wf", "--input", "3"], "7", 4),
    ("multiple_tasks.py", ["my_parent_wf", "--name", "joe"], "HELLO HELLO hello joe", 3),
    # get_and_set sets RUN_KEY_EX; check_set reads it in the same interpreter.
    ("pod_template.py", ["wf"], "DefaultNamedTupleOutput(o0='compile_time', o1='run_time')", 2),
])
def test_a_seed_example_runs_under_pyflyte_in_one_warm_replica(fd, work, example, args, printed, tasks):
    if _applied(fd, "my-actor"):
        assert api(fd.socket, "DELETE", "/v1/environments/my-actor")[0] == 204
    r = pyflyte(fd, work, example, *args)
    assert result(r) == printed, r.stdout
    print("$ pyflyte run %s %s\n%s" % (example, " ".join(args), r.stdout.strip()))
    # Every task of the run went to one replica (one pid): hearthd counted them there.
    reps = replicas(fd, "my-actor")
    assert len(reps) == 1 and reps[0]["tasksRun"] == tasks, reps


def test_a_second_workflow_run_finds_the_replica_warm(fd, work):
    first = pyflyte(fd, work, "features.py", "pid_wf")
    again = pyflyte(fd, work, "features.py", "pid_wf")
    a, b = json.loads(result(first)), json.loads(result(again))
    # The same interpreter: its pid, and the module global the first run set.
    assert a[0] == b[0] and b[1] == a[1] + 1, (a, b)


def test_dataclass_files_directories_and_map_task(fd, work):
    r = pyflyte(fd, work, "features.py", "wf", "--p", '{"x": 3, "y": 1.5, "label": "pt"}', "--text", "ab")
    out = result(r)
    m = re.fullmatch(r"DefaultNamedTupleOutput\(o0=Point\(x=6, y=3\.0, label='PT:(\d+)'\), "
                     r"o1='ababab\|out-(\d+)\.txt', o2=3, o3=\[1, 4, 9, 16\]\)", out)
    assert m and m.group(1) == m.group(2), out
    reps = replicas(fd, "fk-features")
    assert len(reps) == 1, reps


def test_a_cached_call_does_not_reach_hearthd(fd, work):
    before = sum(x["tasksRun"] for x in replicas(fd, "fk-features")) if _applied(fd, "fk-features") else 0
    first = pyflyte(fd, work, "features.py", "cache_wf", "--x", "5")
    mid = sum(x["tasksRun"] for x in replicas(fd, "fk-features"))
    again = pyflyte(fd, work, "features.py", "cache_wf", "--x", "5")
    after = sum(x["tasksRun"] for x in replicas(fd, "fk-features"))
    assert result(first) == result(again), (first.stdout, again.stdout)
    assert mid == before + 1 and after == mid, (before, mid, after)
    other = pyflyte(fd, work, "features.py", "cache_wf", "--x", "6")
    assert result(other) != result(first)
    assert sum(x["tasksRun"] for x in replicas(fd, "fk-features")) == after + 1


def _applied(fd, env):
    return api(fd.socket, "GET", "/v1/environments/" + env)[0] == 200


def test_retries_run_a_failing_task_again_in_the_replica(fd, work):
    r = pyflyte(fd, work, "features.py", "flaky", "--x", "7")
    assert result(r) == "7", r.stdout


def test_a_task_exception_is_the_users_own_with_the_task_named(fd, work):
    r = pyflyte(fd, work, "features.py", "boom", "--x", "7", ok=False)
    text = r.stdout + r.stderr
    assert r.returncode != 0
    assert "KeyError" in text and "no such key 7" in text, text[-3000:]
    assert "task features.boom" in text and "replica" in text, text[-3000:]


FEATURES = '''
import json
import os
import typing
from dataclasses import dataclass
from typing import List

from flytekit import ImageSpec, map_task, workflow
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from flytekitplugins.hearth import ActorEnvironment

actor = ActorEnvironment(name="fk-features", replica_count=1, ttl_seconds=300,
                         container_image=ImageSpec(packages=["union"]))

CALLS = 0


@dataclass
class Point:
    x: int
    y: float
    label: str


@actor.task
def pid() -> str:
    global CALLS
    CALLS += 1
    return json.dumps([os.getpid(), CALLS])


@workflow
def pid_wf() -> str:
    return pid()


@actor.task
def norm(p: Point) -> Point:
    return Point(x=p.x * 2, y=p.y * 2, label=p.label.upper() + ":" + str(os.getpid()))


@actor.task
def write(text: str) -> FlyteFile:
    path = "/tmp/out-%d.txt" % os.getpid()
    with open(path, "w") as f:
        f.write(text * 3)
    return FlyteFile(path)


@actor.task
def read(f: FlyteFile) -> str:
    with open(f) as fh:
        return fh.read() + "|" + os.path.basename(f.path)


@actor.task
def tree(n: int) -> FlyteDirectory:
    d = "/tmp/tree-%d" % os.getpid()
    os.makedirs(d + "/sub", exist_ok=True)
    for i in range(n):
        with open("%s/sub/f%d" % (d, i), "w") as fh:
            fh.write(str(i))
    return FlyteDirectory(d)


@actor.task
def count(d: FlyteDirectory) -> int:
    return len(os.listdir(os.path.join(d.path, "sub")))


@actor.task
def square(x: int) -> int:
    return x * x


@workflow
def wf(p: Point, text: str = "ab", n: int = 3) -> typing.Tuple[Point, str, int, List[int]]:
    q = norm(p=p)
    s = read(f=write(text=text))
    c = count(d=tree(n=n))
    return q, s, c, map_task(square)(x=[1, 2, 3, 4])


@actor.task(cache=True, cache_version="1")
def cached(x: int) -> str:
    global CALLS
    CALLS += 1
    return "%d:%d" % (x, CALLS)


@workflow
def cache_wf(x: int = 1) -> str:
    return cached(x=x)


FLAKY = {"n": 0}


@actor.task(retries=2)
def flaky(x: int) -> int:
    FLAKY["n"] += 1
    if FLAKY["n"] % 3:
        raise ValueError("flaky, attempt %d" % FLAKY["n"])
    return x


@actor.task
def boom(x: int) -> int:
    if x >= 0:
        raise KeyError("no such key %d" % x)
    return x
'''
