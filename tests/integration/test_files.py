"""FlyteFile and FlyteDirectory against a real hearthd, through `python -m
hearth run`: a CSV written here counted in a replica, a file and a directory
written in a replica read here, a file passed from one task to the next,
the size cap in both directions, and forged results (a replica naming the
rebuild functions with '../x', an absolute path, too much content, too
many entries) refused with nothing written."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, running_daemon

TASKS = '''
import csv
import os
import typing

from hearth import ActorEnvironment, FlyteDirectory, FlyteFile, current_context, workflow
from hearth import _files

actor = ActorEnvironment(name="files-actor", replica_count=1, ttl_seconds=300)
small = ActorEnvironment(name="files-small", replica_count=1, ttl_seconds=300,
                         environment={"HEARTH_FILE_LIMIT": "1000"})


@actor.task
def count_rows(csv_file: FlyteFile) -> int:
    with open(csv_file, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


@workflow
def rows_wf(csv_file: FlyteFile["csv"]) -> int:
    return count_rows(csv_file=csv_file)


@actor.task
def write_report(n: int) -> FlyteFile:
    path = os.path.join(current_context().working_directory, "report.txt")
    with open(path, "w") as f:
        for i in range(n):
            f.write("line %d\\n" % i)
    return FlyteFile(path=path)


@workflow
def report_wf(n: int) -> str:
    report = write_report(n=n)
    with report.open("r") as f:  # the caller's own copy
        return f.read()


@actor.task
def shout(f: FlyteFile) -> FlyteFile["txt"]:
    out = FlyteFile.new_remote_file("loud.txt")
    with f.open("r") as r, out.open("w") as w:
        w.write(r.read().upper())
    return out.path  # a path where the annotation says FlyteFile, as flytekit takes it


@workflow
def loud_wf(n: int) -> str:
    loud = shout(f=write_report(n=n))
    return "%s %s: %s" % (type(loud).__name__, os.path.basename(loud.path), open(loud).read())


@actor.task
def make_dir(names: typing.List[str]) -> FlyteDirectory:
    d = FlyteDirectory.new("out")
    for n in names:
        with open(os.path.join(d.path, n + ".txt"), "w") as f:
            f.write(n.upper())
    with d.new_dir("sub").new_file("deep.txt").open("w") as f:
        f.write("deep")
    return d


@actor.task
def summarize(d: FlyteDirectory) -> typing.List[str]:
    return ["%s=%s" % (rel, open(os.path.join(base, rel)).read()) for base, rel in d.crawl()]


@workflow
def dir_wf(names: typing.List[str]) -> typing.List[str]:
    return summarize(d=make_dir(names=names))


@workflow
def dir_back_wf(names: typing.List[str]) -> typing.List[str]:
    d = make_dir(names=names)
    return sorted(os.path.relpath(os.path.join(w, x), d.path) for w, _, fs in os.walk(d) for x in fs)


@small.task
def big_output(n: int) -> FlyteFile:
    path = os.path.join(current_context().working_directory, "big.bin")
    with open(path, "wb") as f:
        f.write(b"x" * n)
    return FlyteFile(path)


@actor.task
def peek(f: FlyteFile) -> str:
    return "%s %s" % (f.path, os.path.exists(f.path))


@actor.task
def exists(path: str) -> bool:
    return os.path.exists(path)


@workflow
def reuse_wf(csv_file: FlyteFile) -> str:
    first, during = peek(f=csv_file).split(" ")
    second, _ = peek(f=csv_file).split(" ")
    return "during=%s after=%s same=%s" % (during, exists(path=first), first == second)


def _skip_the_workers_check():
    # Task code runs in the worker and can switch off its result check: the
    # caller must refuse what a replica sends on its own.
    import hearth._worker as w
    w._conform = lambda plan, value, name, fname: value


class Forge(object):
    """Pickles as a call of a rebuild function with any arguments: what a
    hostile replica can send."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@actor.task
def forged_file(name: str, size: int) -> FlyteFile:
    _skip_the_workers_check()
    return Forge(_files._rebuild_file, ("", name, b"p" * size))


@actor.task
def forged_dir(path: str, count: int) -> FlyteDirectory:
    _skip_the_workers_check()
    return Forge(_files._rebuild_dir, ("", "d", tuple((path + str(i), b"p") for i in range(count))))
'''


@pytest.fixture(scope="module")
def daemon():
    yield from running_daemon("hearth-files")


@pytest.fixture(scope="module")
def project(daemon, tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    (d / "file_tasks.py").write_text(TASKS)
    yield d
    for env in ("files-actor", "files-small"):
        daemon.hearth("rm", env, check=False)


@pytest.fixture
def tmpdir_env(tmp_path):
    """The caller's TMPDIR: where received copies go, so a test sees all it wrote."""
    t = tmp_path / "callertmp"
    t.mkdir()
    return t


def run(d, proj, tmp, *args, **extra):
    env = dict(os.environ, HEARTH_SOCKET=d.socket, PYTHONPATH=str(REPO / "python"), TMPDIR=str(tmp))
    for k in ("HEARTH_TRUST_RESULTS", "HEARTH_FILE_LIMIT"):
        env.pop(k, None)
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "hearth", "run", "--quiet", str(proj / "file_tasks.py"),
                           *map(str, args)], capture_output=True, text=True, env=env, timeout=180)


def test_a_csv_written_here_is_counted_in_a_replica(daemon, project, tmp_path, tmpdir_env):
    data = tmp_path / "people.csv"
    data.write_text("name,age\nada,36\ngrace,45\nalan,41\n")
    r = run(daemon, project, tmpdir_env, "rows_wf", "--csv-file", data)
    assert (r.returncode, r.stdout, r.stderr) == (0, "3\n", "")
    # A task takes the path too; a missing file is a usage error, nothing sent.
    r = run(daemon, project, tmpdir_env, "count_rows", "--csv_file", tmp_path / "missing.csv")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "python -m hearth run: error: --csv-file: %s: no such file\n" % (tmp_path / "missing.csv")


def test_a_replica_keeps_one_copy_of_an_input_by_content(daemon, project, tmp_path, tmpdir_env):
    # The same file sent twice has one path in the replica (an actor_cache keyed on it hits),
    # kept after the task within HEARTH_INPUT_CACHE.
    data = tmp_path / "people.csv"
    data.write_text("name\nada\n")
    r = run(daemon, project, tmpdir_env, "reuse_wf", "--csv-file", data)
    assert (r.returncode, r.stdout, r.stderr) == (0, "during=True after=True same=True\n", "")


def test_a_file_written_in_a_replica_is_read_here(daemon, project, tmpdir_env):
    r = run(daemon, project, tmpdir_env, "report_wf", "--n", "3")
    assert (r.returncode, r.stdout, r.stderr) == (0, "line 0\nline 1\nline 2\n\n", "")
    # Its copy is in a private directory of the caller's TMPDIR, under its name.
    (d,) = os.listdir(tmpdir_env)
    assert d.startswith("hearth-file-") and os.listdir(tmpdir_env / d) == ["report.txt"]


def test_a_file_goes_from_one_task_to_the_next(daemon, project, tmpdir_env):
    r = run(daemon, project, tmpdir_env, "loud_wf", "--n", "2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "FlyteFile loud.txt: LINE 0\nLINE 1\n\n", "")


def test_directories_travel_both_ways(daemon, project, tmp_path, tmpdir_env):
    r = run(daemon, project, tmpdir_env, "dir_wf", "--names", '["b", "a"]')
    assert (r.returncode, r.stdout, r.stderr) == (0, '["a.txt=A", "b.txt=B", "sub/deep.txt=deep"]\n', "")
    r = run(daemon, project, tmpdir_env, "dir_back_wf", "--names", '["c"]')
    assert (r.returncode, r.stdout, r.stderr) == (0, '["c.txt", "sub/deep.txt"]\n', "")
    # A directory of this machine, given on the command line.
    d = tmp_path / "mine"
    (d / "x").mkdir(parents=True)
    (d / "one.txt").write_text("1")
    (d / "x" / "two.txt").write_text("2")
    r = run(daemon, project, tmpdir_env, "summarize", "--d", d)
    assert (r.returncode, r.stdout, r.stderr) == (0, '["one.txt=1", "x/two.txt=2"]\n', "")
    os.symlink("/etc/passwd", d / "x" / "link")
    r = run(daemon, project, tmpdir_env, "summarize", "--d", d)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("python -m hearth run: FlyteDirectory %s holds a symbolic link, x/link; Hearth sends regular "
                        "files and directories only and follows no links: copy what it points to instead\n" % d)


LIMIT = ("over the limit of 1000 bytes (0.0 MiB) for a file or directory sent to or from a task; set "
         "HEARTH_FILE_LIMIT to raise it (the 64 MiB task channel carries about 47 MiB of content, base64 adds a "
         "third) or send less")


def test_an_input_over_the_limit_is_refused_before_anything_is_sent(daemon, project, tmp_path, tmpdir_env):
    data = tmp_path / "big.csv"
    data.write_text("n\n" + "1\n" * 1000)
    r = run(daemon, project, tmpdir_env, "rows_wf", "--csv-file", data, HEARTH_FILE_LIMIT="1000")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "python -m hearth run: FlyteFile %s holds 2002 bytes (0.0 MiB), %s\n" % (data, LIMIT)
    r = run(daemon, project, tmpdir_env, "rows_wf", "--csv-file", data)  # under the default 16 MiB
    assert (r.returncode, r.stdout) == (0, "1000\n"), r.stderr


def test_a_result_over_the_limit_fails_the_task_or_is_refused_here(daemon, project, tmpdir_env):
    # The replica's limit (its environment's HEARTH_FILE_LIMIT=1000).
    r = run(daemon, project, tmpdir_env, "big_output", "--n", "1001")
    assert (r.returncode, r.stdout) == (1, "")
    first = r.stderr.splitlines()[0]
    assert first.startswith("python -m hearth run: task big_output (c-"), first  # the SDK names its tasks (docs/sdk.md)
    assert "failed: hearth._files.FileTransferError: result could not be encoded: FlyteFile /" in first, first
    assert first.endswith("/big.bin holds 1001 bytes (0.0 MiB), " + LIMIT), first
    # The caller's limit, on what a replica sends.
    r = run(daemon, project, tmpdir_env, "report_wf", "--n", "200", HEARTH_FILE_LIMIT="1000")
    assert (r.returncode, r.stdout) == (1, "")
    assert ("the result of task file_tasks.write_report calls hearth._files._rebuild_file with 1690 bytes (0.0 MiB) "
            "of content for 'report.txt', which is not allowed: a file holds at most 1000 bytes (0.0 MiB) "
            "(HEARTH_FILE_LIMIT).") in r.stderr
    assert os.listdir(tmpdir_env) == []


@pytest.mark.parametrize("task,args,what,rule", [
    ("forged_file", ["--name", "../escape", "--size", "5"], "the file name '../escape'",
     "a name is one plain path component"),
    ("forged_file", ["--name", "{abs}", "--size", "5"], "the file name '{abs}'", "a name is one plain path component"),
    ("forged_file", ["--name", "..", "--size", "5"], "the file name '..'",
     "a name is one plain path component: not empty, not '.' or '..'"),
    ("forged_file", ["--name", "x", "--size", "2000"], "2000 bytes (0.0 MiB) of content for 'x'",
     "a file holds at most 1000 bytes"),
    ("forged_dir", ["--path", "../../escape", "--count", "1"], "the path '../../escape0' (the component '..')",
     "a path inside a directory is normalized and relative"),
    ("forged_dir", ["--path", "{abs}", "--count", "1"], "the path '{abs}0'",
     "a path inside a directory is relative, never absolute"),
    ("forged_dir", ["--path", "f", "--count", "10001"], "10001 entries", "a directory holds at most 10000 entries"),
])
def test_forged_results_are_refused_and_nothing_is_written(daemon, project, tmp_path, tmpdir_env, task, args,
                                                           what, rule):
    target = str(tmp_path / "abs-target")
    args = [a.replace("{abs}", target) for a in args]
    what = what.replace("{abs}", target)
    r = run(daemon, project, tmpdir_env, task, *args, HEARTH_FILE_LIMIT="1000")
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    expected = "python -m hearth run: the result of task file_tasks.%s calls hearth._files._rebuild_%s with %s, " \
               "which is not allowed: %s" % (task, task.split("_")[1], what, rule)
    assert r.stderr.startswith(expected), r.stderr
    assert "set HEARTH_TRUST_RESULTS=1 to trust this replica" in r.stderr
    assert os.listdir(tmpdir_env) == []
    assert not os.path.exists(target) and not os.path.exists(target + "0")
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape0").exists()
