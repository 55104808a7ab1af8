"""Unit tests of the task cache's keys, options and store (hearth._taskcache); the
calls through a real daemon are in tests/integration/test_cache.py."""
import collections
import dataclasses
import datetime
import decimal
import enum
import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap
import uuid

import pytest

import hearth
from hearth import _taskcache
from hearth._actor import ActorEnvironment
from hearth._taskcache import Uncacheable, cache_key, canonical

PY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def key(**inputs):
    return cache_key("m.t", "v1", inputs)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: dict = dataclasses.field(default_factory=dict)


Pair = collections.namedtuple("Pair", "a b")


class Keyed:
    def __init__(self, path, digest):
        self.path, self.digest = path, digest

    def __hearth_cache_key__(self):
        return self.digest


# -- equal inputs, equal keys ----------------------------------------------------------

def test_dict_order_does_not_change_the_key():
    assert key(d={"a": 1, "b": [1, {"x": 1, "y": 2}]}) == key(d={"b": [1, {"y": 2, "x": 1}], "a": 1})


def test_set_order_does_not_change_the_key():
    words = ["w%d" % i for i in range(50)]
    assert key(s=set(words)) == key(s=set(reversed(words)))
    assert key(s=frozenset({1, 2, 3})) == key(s=frozenset({3, 2, 1}))


def test_keys_are_the_same_in_processes_with_other_hash_seeds():
    code = textwrap.dedent("""
        import datetime, sys
        from hearth._taskcache import cache_key
        print(cache_key("wf.t", "v", {"s": {"alpha", "beta", "gamma", "delta", "eps"}, "f": frozenset({"x", "y", "z"}),
                        "d": {"k%d" % i: {str(i)} for i in range(20)}, "when": datetime.date(2024, 1, 2)}))
    """)
    out = set()
    for seed in ("1", "2", "3", "12345"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=PY_DIR))
        out.add(r.stdout.strip())
    assert len(out) == 1, out
    here = cache_key("wf.t", "v", {"s": {"alpha", "beta", "gamma", "delta", "eps"}, "f": frozenset({"x", "y", "z"}),
                                   "d": {"k%d" % i: {str(i)} for i in range(20)}, "when": datetime.date(2024, 1, 2)})
    assert out == {here}


def test_the_key_is_fixed_for_a_fixed_input():
    # The format is part of the contract: a changed canonical form would
    # silently orphan every stored entry, so changing it means FORMAT += 1.
    import hashlib

    text = '["hearth-task-cache",1,"wf.plus_one","1.0",{"input":["int","3"],"s":["set",[["str","a"],["str","b"]]]}]'
    assert cache_key("wf.plus_one", "1.0", {"input": 3, "s": {"b", "a"}}) == hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize("a, b", [
    (1, 1.0), (1, True), (0, False), (0.0, -0.0), ([1, 2], (1, 2)), ("1", 1), (b"a", "a"), (b"a", bytearray(b"a")),
    ({1, 2}, frozenset({1, 2})), ({"a": 1}, {"a": 1.0}), (None, "None"), (Color.RED, "red"), (Level.LOW, 1),
    (Pair(1, 2), (1, 2)), (datetime.datetime(2024, 1, 1), datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)),
    (decimal.Decimal("1.0"), decimal.Decimal("1.00")), (pathlib.PurePosixPath("a"), "a"), ([[1]], [[[1]]]),
    ({"a": 1}, [["a", 1]]), ({1: "a"}, {"1": "a"}),
])
def test_different_inputs_give_different_keys(a, b):
    assert key(x=a) != key(x=b)


def test_floats_by_repr_nan_included():
    assert key(x=float("nan")) == key(x=float("nan"))
    assert key(x=0.1 + 0.2) != key(x=0.3)
    assert key(x=float("inf")) != key(x=float("-inf"))


def test_the_name_version_and_each_input_are_in_the_key():
    base = cache_key("m.t", "v1", {"a": 1, "b": 2})
    assert cache_key("m.u", "v1", {"a": 1, "b": 2}) != base
    assert cache_key("m.t", "v2", {"a": 1, "b": 2}) != base
    assert cache_key("m.t", "v1", {"a": 1, "b": 3}) != base
    assert cache_key("m.t", "v1", {"a": 1, "c": 2}) != base
    assert cache_key("m.t", "v1", {"a": 1, "b": 3}, ignored=("b",)) == cache_key("m.t", "v1", {"a": 1, "b": 4},
                                                                                   ignored=("b",))


def test_structured_values():
    assert canonical(Point(1.0, 2.0, {"b": 1, "a": 2})) == canonical(Point(1.0, 2.0, {"a": 2, "b": 1}))
    assert key(p=Point(1.0, 2.0)) != key(p=Point(1.0, 3.0))
    assert key(t=datetime.timedelta(days=1)) == key(t=datetime.timedelta(hours=24))
    assert key(u=uuid.UUID(int=5)) == key(u=uuid.UUID(int=5))
    zi = pytest.importorskip("zoneinfo")
    try:
        z = zi.ZoneInfo("Europe/Paris")
    except zi.ZoneInfoNotFoundError:
        pytest.skip("no time zone data")
    assert key(t=datetime.datetime(2024, 6, 1, tzinfo=z)) == key(t=datetime.datetime(2024, 6, 1, tzinfo=z))
    # The same offset in another zone: the task may well tell them apart.
    assert key(t=datetime.datetime(2024, 6, 1, tzinfo=z)) != \
        key(t=datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2))))


def test_a_class_gives_its_own_key():
    assert key(f=Keyed("/a", "sha:1")) == key(f=Keyed("/b", "sha:1"))
    assert key(f=Keyed("/a", "sha:1")) != key(f=Keyed("/a", "sha:2"))


def test_numpy_arrays_by_content():
    np = pytest.importorskip("numpy")
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert key(a=a) == key(a=a.copy())
    assert key(a=a) != key(a=a.reshape(3, 2))
    assert key(a=a) != key(a=a.astype(np.int64))
    assert key(a=np.float64(1.5)) != key(a=1.5)
    with pytest.raises(Uncacheable, match="numpy array of Python objects"):
        key(a=np.array([object()]))


class Opaque:
    pass


class MyStr(str):
    pass


class MyTz(datetime.tzinfo):
    def utcoffset(self, dt):
        return datetime.timedelta(0)


@pytest.mark.parametrize("value, message", [
    (Opaque(), "input 'x': a test_taskcache.Opaque has no canonical form"),
    ([1, {"k": Opaque()}], r"input 'x'\[1\]\['k'\]: a test_taskcache.Opaque"),
    (MyStr("a"), "MyStr has no canonical form"),
    (len, "builtin_function_or_method"),
    (datetime.datetime(2024, 1, 1, tzinfo=MyTz()), "a time zone test_taskcache.MyTz"),
])
def test_values_without_a_canonical_form(value, message):
    with pytest.raises(Uncacheable, match=message):
        key(x=value)


def test_deep_and_self_referencing_values_are_refused_not_overflowed():
    loop = []
    loop.append(loop)
    with pytest.raises(Uncacheable, match="nested more than"):
        key(x=loop)


# -- options -------------------------------------------------------------------------------

env = ActorEnvironment(name="cache-unit")


def plus(x: int, y: int = 0) -> int:
    return x + y


def test_cache_options_are_taken_and_not_warned(recwarn):
    t = env.task(cache=True, cache_version="1.0", cache_serialize=True, cache_ignore_input_vars=("y",))(plus)
    assert (t._cache.version, t._cache.serialize, t._cache.ignored) == ("1.0", True, ("y",))
    assert not [w for w in recwarn if "not applied" in str(w.message)]
    t = env.task(cache=hearth.Cache(version="2", serialize=True, ignored_inputs="y"))(plus)
    assert (t._cache.version, t._cache.serialize, t._cache.ignored) == ("2", True, ("y",))
    assert env.task(plus)._cache is None
    assert env.task(cache=False, cache_version="")(plus)._cache is None
    assert env.task(cache=None)(plus)._cache is None


def test_without_a_version_the_source_is_the_version(tmp_path):
    t = env.task(cache=True)(plus)
    assert t._cache.version.startswith("src-")
    assert env.task(cache=hearth.Cache(salt="x"))(plus)._cache.version not in (t._cache.version, None)
    assert env.task(cache=hearth.Cache())(plus)._cache.version == t._cache.version


def test_editing_the_function_changes_its_version(tmp_path):
    versions = []
    for n, body in enumerate(("return x + 1", "return x + 2")):
        (tmp_path / ("mod%d.py" % n)).write_text(textwrap.dedent("""
            from hearth import ActorEnvironment
            env = ActorEnvironment(name="e")
            @env.task(cache=True)
            def t(x: int) -> int:
                %s
        """) % body)
        sys.path.insert(0, str(tmp_path))
        try:
            mod = __import__("mod%d" % n)
        finally:
            sys.path.remove(str(tmp_path))
        versions.append(mod.t._cache.version)
    assert versions[0] != versions[1]


class Policy:
    def get_version(self, salt, params):
        return "p-%s-%s" % (salt, params.func.__name__)


def test_cache_policies_as_flytekit_calls_them():
    v = env.task(cache=hearth.Cache(policies=Policy(), salt="s"))(plus)._cache.version
    import hashlib

    assert v == hashlib.sha256(b"p-s-plus").hexdigest()


@pytest.mark.parametrize("options, error, message", [
    (dict(cache=True, cache_ignore_input_vars=("z", "w")), ValueError,
     r"names 'z', 'w', which are not an input of the task \(its inputs: x, y\)"),
    (dict(cache=hearth.Cache(ignored_inputs="z")), ValueError, "names 'z', which is not an input"),
    (dict(cache="yes"), TypeError, r"cache must be True, False or a hearth.Cache\(...\), got 'yes'"),
    (dict(cache=True, cache_version=1), TypeError, "cache_version must be a str, got 1"),
    (dict(cache=True, cache_serialize="yes"), TypeError, "cache_serialize must be True or False"),
    (dict(cache=hearth.Cache(version="1"), cache_version="2"), ValueError,
     "cache_version cannot be combined with cache=Cache"),
    (dict(cache=True, cache_ignore_input_vars=[1]), TypeError, "must be an input name or a tuple of them"),
])
def test_bad_cache_options(options, error, message):
    with pytest.raises(error, match=message):
        env.task(**options)(plus)


@pytest.mark.parametrize("options, message", [
    (dict(cache_version="1"), r"task plus: cache_version='1' has no effect without cache=True"),
    (dict(cache_serialize=True), "cache_serialize=True has no effect without cache=True"),
    (dict(cache=False, cache_ignore_input_vars=("y",)), "cache_ignore_input_vars"),
])
def test_cache_options_without_cache_warn_as_flytekit_accepts_them(options, message):
    with pytest.warns(UserWarning, match=message):
        t = env.task(**options)(plus)
    assert t._cache is None


def test_cache_rejects_bad_fields():
    with pytest.raises(TypeError, match="Cache: serialize must be True or False"):
        hearth.Cache(serialize=1)
    with pytest.raises(TypeError, match="get_version"):
        hearth.Cache(policies=[object()])


def test_a_task_with_kwargs_may_ignore_any_name():
    def kw(x: int, **rest) -> int:
        return x

    kw.__qualname__ = "kw"  # as if at module level
    assert env.task(cache=True, cache_ignore_input_vars="anything")(kw)._cache.ignored == ("anything",)


# -- the store ---------------------------------------------------------------------------

def test_directory_from_the_environment(monkeypatch, tmp_path):
    assert _taskcache.cache_dir({"HEARTH_CACHE_DIR": str(tmp_path)}) == str(tmp_path)
    assert _taskcache.cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/hearth/tasks"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _taskcache.cache_dir({}) == str(tmp_path / ".cache" / "hearth" / "tasks")


def test_entries_are_private_and_replaced_whole(monkeypatch, tmp_path):
    d = tmp_path / "c"
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(d))
    assert _taskcache._ready_dir() == str(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    k = "ab" * 32
    _taskcache._write(str(d), k, {"format": 1, "key": k, "result": [1, {"$pickle": "AA=="}]})
    _taskcache._write(str(d), k, {"format": 1, "key": k, "result": 2})
    f = d / (k + ".json")
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert _taskcache._read(str(f), k)["result"] == 2
    assert sorted(os.listdir(d)) == [k + ".json"]  # no temporary file left
    assert _taskcache._read(str(d / "missing.json"), "missing") is None


def test_a_shared_directory_is_made_private(monkeypatch, tmp_path):
    d = tmp_path / "c"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(d))
    assert _taskcache._ready_dir() == str(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not JSON"),
    (b'{"format": 1, "key": "other", "result": 1}', "it holds the key 'other'"),
    (b'{"format": 99, "result": 1}', "not a hearth task cache entry"),
    (b"[1]", "not a hearth task cache entry"),
    (b"\xff\xfe", "not JSON"),
])
def test_unreadable_entries(tmp_path, content, message):
    f = tmp_path / "k.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        _taskcache._read(str(f), "k")


def test_an_entry_that_is_a_symlink_is_unreadable(tmp_path):
    (tmp_path / "target").write_text('{"format": 1, "key": "k", "result": 1}')
    os.symlink(tmp_path / "target", tmp_path / "k.json")
    with pytest.raises(ValueError):
        _taskcache._read(str(tmp_path / "k.json"), "k")


def test_an_oversized_entry_is_unreadable_without_reading_it_all(monkeypatch, tmp_path):
    monkeypatch.setenv("HEARTH_MAX_FRAME", "4096")
    f = tmp_path / "k.json"
    f.write_bytes(b'{"format": 1, "key": "k", "result": "' + b"x" * 100000 + b'"}')
    with pytest.raises(ValueError, match="larger than"):
        _taskcache._read(str(f), "k")


def test_trace_line_of_a_hit():
    from hearth import _actor, _runner

    fields = dict.fromkeys(_actor.TaskRun._fields)
    fields.update(task="plus_one", state="cached", result_repr="4")
    assert _runner._trace_line(_actor.TaskRun(**fields)) == "hearth: task plus_one cached -> 4"


def test_cli_lists_and_clears(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path))
    for i, task in enumerate(("wf.a", "wf.a", "wf.b")):
        k = ("%02d" % i) * 32
        _taskcache._write(str(tmp_path), k, {"format": 1, "key": k, "task": task, "version": "v", "created": 0,
                                             "result": i})
    (tmp_path / ("ff" * 32 + ".json")).write_text("junk")
    assert _taskcache.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[3] for line in out if "unreadable" not in line) == ["wf.a", "wf.a", "wf.b"]
    assert [line for line in out if "unreadable" in line] == ["ffffffffffffffff  unreadable (not JSON: Expecting "
                                                              "value: line 1 column 1 (char 0))"]
    assert _taskcache.main(["clear", "--task", "a"]) == 0
    assert "removed 2 cached results" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["020202020202020202020202020202020202020202020202020202020202020" "2.json",
                                            "ff" * 32 + ".json"]
    assert _taskcache.main(["clear"]) == 0
    assert "removed 2 cached results" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
