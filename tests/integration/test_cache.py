"""cache=True on tasks against a real hearthd, through `python -m hearth run`:
a hit is answered on the caller's side and never reaches the daemon; what
changes the key; failures are not cached; unreadable and tampered entries;
map_task per element; cache_serialize across processes; the cache CLI."""
import base64
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, api, running_daemon

HIT = re.compile(r"^hearth: task (\S+) cached -> (.*)$", re.M)
RAN = re.compile(r"^hearth: task (\S+) \S+ replica=\S+ pid=\S+ \S+ [0-9.]+ ms -> (.*)$", re.M)


@pytest.fixture(scope="module")
def sdk():
    yield from running_daemon("hearth-cache")


@pytest.fixture
def proj(tmp_path):
    """(project directory, cache directory): apart, so the cache never goes into the task's bundle."""
    p = tmp_path / "proj"
    p.mkdir()
    return p, tmp_path / "cache"


def run(d, cache_dir, *args, socket=None, check=True, timeout=180):
    # No .pyc: the tests rewrite a file within the second, and a .pyc is checked by mtime in seconds and size.
    env = dict(os.environ, HEARTH_SOCKET=socket or d.socket, PYTHONPATH=str(REPO / "python"),
               HEARTH_CACHE_DIR=str(cache_dir), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-m", "hearth", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"hearth {args} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    return r


def hits(r):
    return HIT.findall(r.stderr)


def ran(r):
    return RAN.findall(r.stderr)


def tasks_run(d, env):
    status, body = api(d.socket, "GET", "/v1/environments/" + env)
    assert status == 200, body
    return sum(rep["tasksRun"] for rep in body["replicas"])


def entries(cache_dir):
    return sorted(n for n in os.listdir(cache_dir) if n.endswith(".json")) if cache_dir.exists() else []


PLUS = '''
from hearth import ActorEnvironment, workflow

actor = ActorEnvironment(name="{env}", replica_count=1)


@actor.task(cache=True, cache_version="{version}")
def plus_one(input: int) -> int:
    return input + {step}


@workflow
def wf(input: int = 0) -> int:
    return plus_one(input=plus_one(input=input))
'''


def test_a_second_run_is_answered_from_the_cache_without_the_daemon(sdk, proj, tmp_path):
    p, cache = proj
    (p / "plus.py").write_text(PLUS.format(env="cache-plus", version="1.0", step=1))
    first = run(sdk, cache, "run", p / "plus.py", "wf", "--input", "1")
    assert first.stdout == "3\n"
    assert ran(first) == [("plus_one", "2"), ("plus_one", "3")] and hits(first) == []
    count = tasks_run(sdk, "cache-plus")
    assert len(entries(cache)) == 2
    assert oct(os.stat(cache).st_mode & 0o777) == "0o700"
    assert {oct(os.stat(cache / n).st_mode & 0o777) for n in entries(cache)} == {"0o600"}

    # No daemon at all: only the cache can answer, and it does.
    second = run(sdk, cache, "run", p / "plus.py", "wf", "--input", "1", socket=str(tmp_path / "no-daemon.sock"))
    assert second.returncode == 0 and second.stdout == first.stdout
    assert hits(second) == [("plus_one", "2"), ("plus_one", "3")] and ran(second) == []
    third = run(sdk, cache, "run", p / "plus.py", "wf", "--input", "1")
    assert third.stdout == "3\n" and ran(third) == []
    assert tasks_run(sdk, "cache-plus") == count, "a cached call reached the daemon"

    # A new input is a miss; plus_one(input=3) came from the first run.
    fourth = run(sdk, cache, "run", p / "plus.py", "wf", "--input", "2")
    assert fourth.stdout == "4\n"
    assert ran(fourth) == [("plus_one", "4")] and hits(fourth) == [("plus_one", "3")]
    assert tasks_run(sdk, "cache-plus") == count + 1


def test_a_new_cache_version_or_an_edited_function_is_a_miss(sdk, proj):
    p, cache = proj
    (p / "plus.py").write_text(PLUS.format(env="cache-version", version="1.0", step=1))
    assert ran(run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")) == [("plus_one", "6")]
    assert hits(run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")) == [("plus_one", "6")]
    # The same version with other code: the version says it is the same task (as in flytekit).
    (p / "plus.py").write_text(PLUS.format(env="cache-version", version="1.0", step=10))
    assert hits(run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")) == [("plus_one", "6")]
    (p / "plus.py").write_text(PLUS.format(env="cache-version", version="2.0", step=10))
    r = run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")
    assert r.stdout == "15\n" and ran(r) == [("plus_one", "15")]

    # No cache_version: the function's source is the version.
    src = PLUS.format(env="cache-version", version="", step=1).replace(', cache_version=""', "")
    assert 'cache=True)' in src
    (p / "plus.py").write_text(src)
    assert ran(run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")) == [("plus_one", "6")]
    assert hits(run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")) == [("plus_one", "6")]
    (p / "plus.py").write_text(src + "\n\nOTHER = 1\n")  # elsewhere in the file: still a hit
    assert hits(run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")) == [("plus_one", "6")]
    (p / "plus.py").write_text(src.replace("input + 1", "input + 2"))
    r = run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "5")
    assert r.stdout == "7\n" and ran(r) == [("plus_one", "7")] and hits(r) == []


IGNORED = '''
from hearth import ActorEnvironment, Cache

actor = ActorEnvironment(name="cache-ignored", replica_count=1)


@actor.task(cache=Cache(version="1", ignored_inputs=("note",)))
def double(x: int, note: str = "") -> str:
    return "%d (%s)" % (2 * x, note)
'''


def test_an_ignored_input_is_a_hit(sdk, proj):
    p, cache = proj
    (p / "ign.py").write_text(IGNORED)
    first = run(sdk, cache, "run", p / "ign.py", "double", "--x", "4", "--note", "first")
    assert first.stdout == "8 (first)\n" and len(ran(first)) == 1
    second = run(sdk, cache, "run", p / "ign.py", "double", "--x", "4", "--note", "second")
    assert second.stdout == "8 (first)\n" and hits(second) == [("double", "'8 (first)'")]
    third = run(sdk, cache, "run", p / "ign.py", "double", "--x", "5", "--note", "second")
    assert third.stdout == "10 (second)\n" and len(ran(third)) == 1


FAILS = '''
from hearth import ActorEnvironment

actor = ActorEnvironment(name="cache-fails", replica_count=1)


@actor.task(cache=True, cache_version="1")
def check(x: int) -> int:
    if x < 0:
        raise ValueError("x must be >= 0, got %d" % x)
    return x
'''


def test_a_failing_task_is_not_cached(sdk, proj):
    p, cache = proj
    (p / "fails.py").write_text(FAILS)
    for _ in range(2):
        r = run(sdk, cache, "run", p / "fails.py", "check", "--x", "-1", check=False)
        assert r.returncode == 1 and "ValueError: x must be >= 0, got -1" in r.stderr, r.stderr
        assert hits(r) == []
    assert entries(cache) == []
    assert tasks_run(sdk, "cache-fails") == 2


def test_a_corrupt_entry_is_a_miss_with_a_warning_and_is_replaced(sdk, proj):
    p, cache = proj
    (p / "plus.py").write_text(PLUS.format(env="cache-corrupt", version="1", step=1))
    run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "1")
    [name] = entries(cache)
    (cache / name).write_text('{"format": 1, "key": "trunc')
    r = run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "1")
    assert r.stdout == "2\n" and ran(r) == [("plus_one", "2")]
    assert r.stderr.count("is unreadable") == 1
    assert f"hearth: task plus_one: the cache entry {cache / name} is unreadable (not JSON: " in r.stderr
    assert "running the task and replacing it" in r.stderr
    r = run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "1")
    assert hits(r) == [("plus_one", "2")] and "unreadable" not in r.stderr


class _Hostile:
    def __reduce__(self):
        return (os.system, ("touch %s" % os.environ.get("HEARTH_TEST_MARKER", "/nonexistent/marker"),))


def test_a_tampered_entry_with_a_hostile_pickle_is_refused_not_run(sdk, proj, tmp_path, monkeypatch):
    p, cache = proj
    (p / "plus.py").write_text(PLUS.format(env="cache-tampered", version="1", step=1))
    run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "1")
    [name] = entries(cache)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("HEARTH_TEST_MARKER", str(marker))
    entry = json.loads((cache / name).read_text())
    entry["result"] = {"$pickle": base64.b64encode(pickle.dumps(_Hostile(), protocol=4)).decode()}
    (cache / name).write_text(json.dumps(entry))
    r = run(sdk, cache, "run", p / "plus.py", "plus_one", "--input", "1", check=False)
    assert r.returncode == 1, r.stderr
    assert "posix.system" in r.stderr and "not allowed" in r.stderr, r.stderr
    assert f"this result came from the task cache entry {cache / name}" in r.stderr
    assert "python -m hearth cache clear --task plus.plus_one" in r.stderr
    assert not marker.exists(), "the tampered entry ran code"
    assert r.stdout == "" and ran(r) == []


MAPPED = '''
from typing import List

from hearth import ActorEnvironment, map_task, workflow

actor = ActorEnvironment(name="cache-map", replica_count=2)


@actor.task(cache=True, cache_version="1")
def square(x: int) -> int:
    return x * x


@workflow
def wf(xs: List[int]) -> List[int]:
    return map_task(square)(x=xs)
'''


def test_map_task_sends_only_the_misses(sdk, proj):
    p, cache = proj
    (p / "mapped.py").write_text(MAPPED)
    first = run(sdk, cache, "run", p / "mapped.py", "wf", "--xs", "[1, 2, 3]")
    assert first.stdout == "[1, 4, 9]\n" and sorted(ran(first)) == [("square", "1"), ("square", "4"), ("square", "9")]
    count = tasks_run(sdk, "cache-map")
    second = run(sdk, cache, "run", p / "mapped.py", "wf", "--xs", "[3, 4, 1, 5]")
    assert second.stdout == "[9, 16, 1, 25]\n"
    assert sorted(hits(second)) == [("square", "1"), ("square", "9")]
    assert sorted(ran(second)) == [("square", "16"), ("square", "25")]
    assert tasks_run(sdk, "cache-map") == count + 2
    third = run(sdk, cache, "run", p / "mapped.py", "wf", "--xs", "[5, 4]", socket="/nonexistent/hearthd.sock")
    assert third.stdout == "[25, 16]\n" and len(hits(third)) == 2


SERIAL = '''
import time

from hearth import ActorEnvironment

actor = ActorEnvironment(name="cache-serial", replica_count=2)


@actor.task(cache=True, cache_version="1", cache_serialize=True)
def slow(x: int) -> int:
    time.sleep(1.5)
    return x + 100
'''


def test_cache_serialize_runs_concurrent_identical_calls_once(sdk, proj):
    p, cache = proj
    (p / "serial.py").write_text(SERIAL)
    env = dict(os.environ, HEARTH_SOCKET=sdk.socket, PYTHONPATH=str(REPO / "python"), HEARTH_CACHE_DIR=str(cache),
               PYTHONDONTWRITEBYTECODE="1")
    procs = [subprocess.Popen([sys.executable, "-m", "hearth", "run", str(p / "serial.py"), "slow", "--x", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outs = [proc.communicate(timeout=180) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outs
    assert [o for o, _ in outs] == ["101\n"] * 3
    runs = [len(RAN.findall(e)) for _, e in outs]
    cached = [len(HIT.findall(e)) for _, e in outs]
    assert sorted(runs) == [0, 0, 1] and sorted(cached) == [0, 1, 1], outs
    assert tasks_run(sdk, "cache-serial") == 1


def test_cache_cli_lists_and_clears(sdk, proj):
    p, cache = proj
    (p / "plus.py").write_text(PLUS.format(env="cache-cli", version="3", step=1))
    (p / "ign.py").write_text(IGNORED)
    run(sdk, cache, "run", p / "plus.py", "wf", "--input", "0")
    run(sdk, cache, "run", p / "ign.py", "double", "--x", "1")
    listed = run(sdk, cache, "cache", "list").stdout.splitlines()
    assert sorted(line.split()[3] for line in listed) == ["ign.double", "plus.plus_one", "plus.plus_one"], listed
    assert all("version=3" in line for line in listed if "plus.plus_one" in line)
    r = run(sdk, cache, "cache", "clear", "--task", "plus_one")
    assert f"hearth: removed 2 cached results from {cache}" in r.stderr
    assert [line.split()[3] for line in run(sdk, cache, "cache", "list").stdout.splitlines()] == ["ign.double"]
    again = run(sdk, cache, "run", p / "plus.py", "wf", "--input", "0")
    assert again.stdout == "2\n" and len(ran(again)) == 2
    r = run(sdk, cache, "cache", "clear")
    assert "removed 3 cached results" in r.stderr and entries(cache) == []
    bad = run(sdk, cache, "cache", "drop", check=False)
    assert bad.returncode == 2 and "invalid choice: 'drop'" in bad.stderr


OPAQUE = '''
from hearth import ActorEnvironment, workflow

actor = ActorEnvironment(name="cache-opaque", replica_count=1)


class Settings:
    def __init__(self, factor):
        self.factor = factor


@actor.task(cache=True, cache_version="1")
def scale(x: int, settings: Settings) -> int:
    return x * settings.factor


@workflow
def wf(x: int = 1) -> int:
    return scale(x=x, settings=Settings(3))
'''


def test_an_input_without_a_canonical_form_runs_uncached_with_a_warning(sdk, proj):
    p, cache = proj
    (p / "opaque.py").write_text(OPAQUE)
    for _ in range(2):
        r = run(sdk, cache, "run", p / "opaque.py", "wf", "--x", "2")
        assert r.stdout == "6\n" and ran(r) == [("scale", "6")] and hits(r) == []
        assert ("opaque.py:19: UserWarning: hearth: task scale is not cached for this call: input 'settings': "
                "a opaque.Settings has no canonical form for the cache key") in r.stderr, r.stderr
    assert entries(cache) == []
