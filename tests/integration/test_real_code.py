"""Union and Flyte code as people write it, on the Hearth SDK with only its
import lines changed, through `python -m hearth run` against a real
hearthd: every declared type survives the round trip (floats stay floats,
tuples stay tuples, enums, Iterator outputs, NamedTuple outputs), results
are checked against the return annotation, positional inputs, the plain
`@task` in a one-shot replica, `import hearth as union`; and a property
test that random values of every supported annotation come back from a
task unchanged (`==` and `type(...) is`, all the way down)."""
import textwrap

import pytest

from conftest import running_daemon
from test_sdk import py, run, traces


@pytest.fixture(scope="module")
def rc():
    yield from running_daemon("hearth-rc")


def write(tmp_path, name, code):
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


TYPES = '''
import dataclasses
import datetime
import os
import decimal
import enum
import typing
from typing import Tuple

from hearth import workflow
from hearth.actor import ActorEnvironment

actor = ActorEnvironment(name="rc-types", replica_count=1)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


Fit = typing.NamedTuple("Fit", [("slope", float)])


@actor.task
def mean(values: typing.List[float]) -> float:
    return sum(values) / len(values)


@actor.task
def bounds(values: typing.List[float]) -> Tuple[float, float]:
    return min(values), max(values)


@actor.task
def kinds(x: float, y: float, point: Tuple[int, int]) -> str:
    return "%s %s %s" % (type(x).__name__, type(y).__name__, type(point).__name__)


@actor.task
def pick(name: str) -> Color:
    return Color(name)


@actor.task
def words(text: str) -> typing.Iterator[str]:
    for w in text.split():
        yield w


@actor.task
def fit(xs: typing.List[float], ys: typing.List[float]) -> Fit:
    return (ys[-1] - ys[0]) / (xs[-1] - xs[0])  # the bare value, as flytekit allows for one field


@actor.task
def stats(xs: typing.List[float]) -> typing.NamedTuple("Stats", [("n", int), ("total", float)]):
    return len(xs), sum(xs)


@actor.task
def when(days: int) -> Tuple[datetime.date, decimal.Decimal, bytes]:
    return datetime.date(2024, 1, 1) + datetime.timedelta(days=days), decimal.Decimal("1.10"), b"\\x00ok"


@actor.task
def scale(x: float, factor: float = 2.0) -> float:
    return x * factor


@dataclasses.dataclass
class Order:
    item: str
    qty: int


@actor.task
def split(text: str) -> (typing.Dict[str, typing.List[str]], typing.Dict[str, Order]):
    head, _, rest = text.partition(":")
    return {head: rest.split(",")}, {head: Order(item=rest, qty=len(rest))}


@actor.task
def report(n: int) -> os.PathLike:
    path = "/tmp/report.txt"
    with open(path, "w") as f:
        f.write("x" * n)
    return path  # flytekit reads an os.PathLike output as a file: its content travels


@workflow
def wf_pathlike(n: int = 5) -> int:
    with open(report(n=n)) as f:
        return len(f.read())


@actor.task
def columns(table: typing.Dict[str, typing.List[int]]) -> typing.List[str]:
    return list(table)  # e.g. a DataFrame's column order


@workflow
def wf_order() -> typing.List[str]:
    return columns(table={"zeta": [1], "alpha": [2], "mid": [3], "b": [4], "y": [5]})


@workflow
def wf_outputs(text: str = "fruit:apple,pear") -> str:
    names, orders = split(text=text)
    return "%s %s %d" % (names["fruit"][1], orders["fruit"].item, orders["fruit"].qty)


@workflow
def wf_mean() -> float:
    return mean(values=[2.0, 4.0])


@workflow
def wf_bounds() -> Tuple[float, float]:
    return bounds(values=[-1.5, 3.0, 0.5])


@workflow
def wf_kinds() -> str:
    return kinds(x=3.0, y=2, point=(1, 2))


@workflow
def wf_color(name: str = "green") -> Color:
    return pick(name=name)


@workflow
def wf_words() -> typing.List[str]:
    return words(text="to be or not")


@workflow
def wf_slope() -> float:
    return fit(xs=[0, 2], ys=[1, 5]).slope


@workflow
def wf_total() -> float:
    s = stats(xs=[1.5, 1.5])
    return s.total + s.n


@workflow
def wf_when() -> Tuple[datetime.date, decimal.Decimal, bytes]:
    return when(days=31)


@workflow
def wf_positional(x: float = 1.5) -> float:
    return scale(x, 2)
'''


@pytest.mark.parametrize("name, args, out", [
    ("wf_mean", [], "3.0\n"),
    ("wf_bounds", [], "-1.5\n3.0\n"),  # a tuple: one output per line, floats as floats
    ("wf_kinds", [], "float float tuple\n"),
    ("wf_color", [], "Color.GREEN\n"),
    ("wf_color", ["--name", "red"], "Color.RED\n"),
    ("wf_words", [], '["to", "be", "or", "not"]\n'),
    ("wf_slope", [], "2.0\n"),
    ("wf_total", [], "5.0\n"),
    ("wf_when", [], "2024-02-01\n1.10\nb'\\x00ok'\n"),
    ("wf_positional", [], "3.0\n"),
    ("wf_outputs", [], "pear apple,pear 10\n"),  # -> (A, B): flytekit's multiple outputs
    ("wf_pathlike", ["--n", "7"], "7\n"),
    ("wf_order", [], '["zeta", "alpha", "mid", "b", "y"]\n'),  # a dict's order reaches the task
])
def test_declared_types_survive_the_round_trip(rc, tmp_path, name, args, out):
    path = write(tmp_path, "types_wf.py", TYPES)
    r = run(rc, "-q", path, name, *args)
    assert (r.returncode, r.stdout) == (0, out), r.stderr


def test_a_result_that_does_not_fit_its_annotation_fails_the_task(rc, tmp_path):
    path = write(tmp_path, "bad_out.py", '''
        from hearth import workflow
        from hearth.actor import ActorEnvironment

        actor = ActorEnvironment(name="rc-bad", replica_count=1)


        @actor.task
        def seven() -> int:
            return "seven"


        @actor.task
        def sneaky() -> int:
            # Task code runs in the worker: it can switch the worker's check off,
            # so the caller checks again.
            import hearth._worker as w
            w._conform = lambda plan, value, name, fname: value
            return "seven"


        @workflow
        def wf() -> int:
            return seven()


        @workflow
        def wf_sneaky() -> int:
            return sneaky()
    ''')
    r = run(rc, path, "wf", check=False)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert "task seven" in r.stderr and "TypeError: seven() output: expected int, got str 'seven'" in r.stderr
    r = run(rc, path, "wf_sneaky", check=False)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert ("the output of task bad_out.sneaky: expected int, got str 'seven' (the replica sent a value its "
            "return annotation does not allow)") in r.stderr


def test_positional_inputs_of_tasks_and_workflows(rc, tmp_path):
    write(tmp_path, "types_wf.py", TYPES)
    r = py(rc, f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import types_wf as m
        print(m.scale(1.5), m.scale(1, 3), m.wf_positional(2), m.kinds(1, 2.5, (3, 4)))
        try:
            m.scale(1.0, factor=2.0, x=3.0)
        except TypeError as e:
            print(e)
    ''')
    assert r.stdout == "3.0 3.0 4.0 float float tuple\nscale() got input 'x' twice: positionally and by keyword\n", \
        r.stdout + r.stderr


PLAIN = '''
import os
import typing

from hearth import task, workflow
from hearth.actor import ActorEnvironment

actor = ActorEnvironment(name="rc-warm", replica_count=1)
calls = []


@task
def fresh(x: int) -> int:
    calls.append(x)
    return len(calls)


@actor.task
def warm(x: int) -> int:
    calls.append(x)
    return len(calls)


@workflow
def wf() -> typing.List[int]:
    return [fresh(x=1), fresh(x=2), warm(x=1), warm(x=2)]
'''


def test_a_plain_task_runs_in_a_fresh_replica_each_call(rc, tmp_path):
    path = write(tmp_path, "plain.py", PLAIN)
    r = run(rc, path, "wf")
    assert r.stdout == "[1, 1, 1, 2]\n"
    t = traces(r)
    assert [(x["task"], x["mode"]) for x in t] == [("fresh", "cold"), ("fresh", "cold"), ("warm", "cold"),
                                                   ("warm", "warm")], r.stderr
    assert t[0]["replica"] != t[1]["replica"] and t[0]["replica"].startswith("task-")
    assert t[2]["replica"] == t[3]["replica"]
    assert "hearth: environment task-" in r.stderr and "created" in r.stderr


UNION = '''
import os
import typing

import hearth as union

image = union.ImageSpec(registry=os.environ.get("DOCKER_REGISTRY", None), packages=["union"])

actor = union.actor.ActorEnvironment(name="rc-union", replica_count=2, ttl_seconds=60,
                                     requests=union.Resources(cpu="1", mem="200Mi"), container_image=image)


@actor.task
def square(x: int) -> int:
    return x * x


@union.task
def total(xs: typing.List[int]) -> int:
    return sum(xs)


@union.workflow
def wf(n: int = 4) -> int:
    squares = union.map_task(square)(x=list(range(n))).with_overrides(limits=union.Resources(mem="300Mi"))
    return total(xs=squares)
'''


def test_code_written_against_union_runs_with_import_hearth_as_union(rc, tmp_path):
    path = write(tmp_path, "union_wf.py", UNION)
    r = run(rc, path, "wf", "--n", "5")
    assert r.stdout == "30\n"
    assert [x["task"] for x in traces(r)] == ["square"] * 5 + ["total"], r.stderr


# -- the property: random values of every supported annotation --------------------------

ECHO = '''
import dataclasses
import datetime
import decimal
import enum
import typing
import uuid
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple, Union

from hearth.actor import ActorEnvironment

actor = ActorEnvironment(name="rc-echo", replica_count=2)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: str
    tags: List[str]


class Pair(typing.NamedTuple):
    left: int
    right: float


ANNOTATIONS = {ANNOTATIONS}
'''

ANNOTATIONS = [
    "int", "float", "str", "bool", "bytes", "datetime.datetime", "datetime.date", "datetime.timedelta",
    "decimal.Decimal", "uuid.UUID", "Color", "Point", "Pair", "List[int]", "List[float]", "Dict[str, float]",
    "Dict[int, str]", "Tuple[int, str, float]", "Tuple[float, ...]", "Set[int]", "FrozenSet[str]",
    "Optional[float]", "Union[int, str]", "List[Dict[str, Tuple[int, float]]]", "Dict[str, List[Point]]",
    "list[tuple[float, bool]]", "Optional[List[Optional[float]]]", "Any",
]

CHECK = '''
import math
import random
import sys

sys.path.insert(0, {dir!r})
import echo_mod as m
from hearth import map_task

rng = random.Random(18)


def text():
    alphabet = "ab $\\"\\\\\\n\\u00e9\\u2713\\U0001f600\\x00{{}}[]"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))


def number():
    return rng.choice([0.0, -0.0, 3.0, 1e300, 5e-324, -2.5, float("inf"), float("-inf"), float("nan"),
                       rng.uniform(-1e6, 1e6), float(rng.randrange(-10, 10))])


def value(a, depth=0):
    import typing, datetime, decimal, uuid
    o, args = typing.get_origin(a), typing.get_args(a)
    if a is type(None):
        return None
    if a is int:
        return rng.choice([0, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 70, rng.randrange(-10 ** 6, 10 ** 6)])
    if a is float:
        return number()
    if a is str:
        return text()
    if a is bool:
        return rng.random() < 0.5
    if a is bytes:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if a is datetime.datetime:
        tz = rng.choice([None, datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))])
        return datetime.datetime(rng.randrange(1, 9999), rng.randrange(1, 13), rng.randrange(1, 29),
                                 rng.randrange(24), rng.randrange(60), rng.randrange(60), rng.randrange(10 ** 6), tz)
    if a is datetime.date:
        return datetime.date(rng.randrange(1, 9999), rng.randrange(1, 13), rng.randrange(1, 29))
    if a is datetime.timedelta:
        return datetime.timedelta(days=rng.randrange(-999, 999), microseconds=rng.randrange(10 ** 6))
    if a is decimal.Decimal:
        return decimal.Decimal(rng.choice(["1.10", "-0", "1E+3", "3.14159", "NaN", "-Infinity", "0.000"]))
    if a is uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128))
    if a is m.Color:
        return rng.choice(list(m.Color))
    if a is m.Point:
        return m.Point(number(), float(rng.randrange(5)), text(), [text() for _ in range(rng.randrange(3))])
    if a is m.Pair:
        return m.Pair(rng.randrange(-5, 5), number())
    if a is typing.Any:
        kinds = [lambda: rng.randrange(-9, 9), number, text, lambda: None, lambda: (1, 2.0, "x"),
                 lambda: [3.0, (4,)], lambda: {{"k": (1.0,), "n": None}}, lambda: {{1, 2}}, lambda: b"b"]
        return rng.choice(kinds)()
    if o is typing.Union:
        return value(rng.choice(args), depth + 1)
    n = rng.randrange(4 if depth < 2 else 2)
    if o is list:
        return [value(args[0], depth + 1) for _ in range(n)]
    if o is dict:
        return {{value(args[0], depth + 1): value(args[1], depth + 1) for _ in range(n)}}
    if o is set or o is frozenset:
        return o(value(args[0], depth + 1) for _ in range(n))
    if o is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(value(args[0], depth + 1) for _ in range(n))
        return tuple(value(x, depth + 1) for x in args)
    raise AssertionError(a)


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):  # insertion order too: the daemon passes kwargs on as written
        return list(a) == list(b) and all(k in b and same(v, b[k]) and
                                        type(next(kk for kk in b if kk == k)) is type(k) for k, v in a.items())
    if isinstance(a, (set, frozenset)):
        return {{(type(x), x) for x in a}} == {{(type(x), x) for x in b}}
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


import decimal
total = 0
for i, a in enumerate(m.ANNOTATIONS):
    values = [value(a) for _ in range({per})]
    got = map_task(getattr(m, "echo_%d" % i))(x=values)
    for v, g in zip(values, got):
        if not same(v, g):
            print("MISMATCH", m.ANNOTATION_TEXT[i], repr(v), repr(g))
            sys.exit(1)
    total += len(values)
print("OK", total)
'''


def test_random_values_of_every_annotation_come_back_unchanged(rc, tmp_path):
    per = 25
    src = ECHO.replace("{ANNOTATIONS}", "[%s]\nANNOTATION_TEXT = %r\n" % (", ".join(ANNOTATIONS), ANNOTATIONS))
    for i, a in enumerate(ANNOTATIONS):
        src += f"\n\n@actor.task\ndef echo_{i}(x: {a}) -> {a}:\n    return x\n"
    (tmp_path / "echo_mod.py").write_text(src)
    r = py(rc, CHECK.format(dir=str(tmp_path), per=per), timeout=600)
    assert r.stdout.strip() == "OK %d" % (per * len(ANNOTATIONS)), r.stdout + r.stderr


# -- a Union-style project: everything at once ------------------------------------------

MODEL = '''
import functools
import pathlib
import typing

import hearth as union
from hearth import WorkflowFailurePolicy

actor = union.ActorEnvironment(name="rc-model", replica_count=2, parallelism=1, backlog_length=50)
loads = []


class Model:
    def __init__(self, weight: int):
        self.weight = weight

    def __call__(self, value: int) -> int:
        return self.weight * value


@union.task(cache=True, cache_version="v1")
def make_weights(weight: int) -> union.FlyteFile:
    path = pathlib.Path(union.current_context().working_directory) / "weights.txt"
    path.write_text(str(weight))
    return path  # a path where the annotation says FlyteFile: flytekit makes it one


@actor.cache
def load_model(path: str) -> Model:
    loads.append(path)
    with open(path) as f:
        return Model(int(f.read()))


@actor.task
def infer(value: int, weights: union.FlyteFile) -> typing.Tuple[int, int]:
    model = load_model(weights.download())
    return model(value), len(loads)


@union.workflow(failure_policy=WorkflowFailurePolicy.FAIL_IMMEDIATELY)
def run_inference(values: typing.List[int] = [1, 2, 3, 4], weight: int = 3) -> typing.List[typing.Tuple[int, int]]:
    weights = make_weights(weight=weight)
    return union.map_task(functools.partial(infer, weights=weights))(value=values)


lp = union.LaunchPlan.create("inference_by_5", run_inference, fixed_inputs={"weight": 5})
'''


def test_a_union_project_with_files_caches_and_map_task(rc, tmp_path):
    path = write(tmp_path, "model_wf.py", MODEL)
    cache = tmp_path / "cache"
    r = run(rc, path, "run_inference", HEARTH_CACHE_DIR=str(cache))
    out = [tuple(x) for x in __import__("json").loads(r.stdout)]
    assert [o[0] for o in out] == [3, 6, 9, 12], r.stdout
    # Each replica loads the model once: the weights arrive at one path per
    # content, so the actor cache keyed on it hits from the second task on.
    assert all(o[1] == 1 for o in out), out
    t = traces(r)
    assert [x["task"] for x in t] == ["make_weights"] + ["infer"] * 4, r.stderr
    again = run(rc, path, "run_inference", HEARTH_CACHE_DIR=str(cache))
    assert "hearth: task make_weights cached -> " in again.stderr and [x["task"] for x in traces(again)] == ["infer"] * 4
    by5 = run(rc, "-q", path, "lp", HEARTH_CACHE_DIR=str(cache))
    assert [tuple(x)[0] for x in __import__("json").loads(by5.stdout)] == [5, 10, 15, 20]


# -- the SDK re-applies on error codes, not text ----------------------------------------

REAPPLY = '''
import os

from hearth.actor import ActorEnvironment

actor = ActorEnvironment(name="rc-reapply", replica_count=1, environment={"FLAVOUR": os.environ.get("FLAVOUR", "mild")})


@actor.task
def flavour() -> str:
    return os.environ["FLAVOUR"]
'''


def test_the_sdk_reapplies_its_spec_on_the_codes(rc, tmp_path):
    from conftest import api

    write(tmp_path, "reapply.py", REAPPLY)
    # The codes themselves, on the raw API.
    rc.hearth("rm", "rc-reapply", check=False)
    status, body = api(rc.socket, "POST", "/v1/environments/rc-reapply/tasks", {"module": "os", "function": "getpid"})
    assert status == 404 and body["error"]["code"] == "environment_not_found", body
    status, body = api(rc.socket, "POST", "/v1/environments", {"name": "rc-reapply", "replica_count": 1})
    assert status in (200, 201), body
    status, body = api(rc.socket, "POST", "/v1/environments/rc-reapply/tasks",
                       {"module": "os", "function": "getpid", "identity": "f" * 64})
    assert status == 409 and body["error"]["code"] == "spec_changed", body
    # The SDK in a process whose spec differs from the one applied (spec_changed)
    # and after a removal (environment_not_found): both times it applies its own and runs.
    r = py(rc, f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import reapply
        from hearth import _client
        print(reapply.flavour())
        # Another client applies another spec under the same name.
        c = _client.client(None)
        c.call("POST", "/v1/environments", b'{{"name": "rc-reapply", "replica_count": 1, "environment": {{"FLAVOUR": "other"}}}}')
        print(reapply.flavour())
        c.call("DELETE", "/v1/environments/rc-reapply")
        print(reapply.flavour())
    ''', FLAVOUR="spicy")
    assert r.stdout.splitlines() == ["spicy", "spicy", "spicy"], r.stdout + r.stderr
    rc.hearth("rm", "rc-reapply", check=False)
