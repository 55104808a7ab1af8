"""Hostile task results: pickles a replica could send to run code in the
caller. Each is built by hand (opcodes, or a class whose ``__reduce__``
crafts it) and must be refused by hearth._results without running anything:
every payload would create SENTINEL, and the test asserts it did not. The
cases marked ``real`` are first loaded with the standard ``pickle.loads``
(the control) to show the payload does run code there. Then the positive
side: every safe type and the task's own classes still round-trip."""
import array
import base64
import collections
import copyreg
import dataclasses
import datetime
import decimal
import enum
import fractions
import ipaddress
import os
import pathlib
import pickle
import subprocess
import time
import typing
import uuid

import pytest

import hearth
from hearth import _protocol, _results
from hearth._actor import ActorEnvironment

P = pickle
TASK = "tasks.f"


# -- building pickles by hand ---------------------------------------------------------

def s(text):
    b = text.encode()
    return (P.SHORT_BINUNICODE + bytes([len(b)]) if len(b) < 256 else P.BINUNICODE + len(b).to_bytes(4, "little")) + b


def sg(module, name):
    """STACK_GLOBAL (protocol 4): the name may hold dots."""
    return s(module) + s(name) + P.STACK_GLOBAL


def g0(module, name):
    """GLOBAL (protocol 0-3)."""
    return P.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n"


def tup(*items):
    return P.MARK + b"".join(items) + P.TUPLE


def call(fn, *args):
    return fn + tup(*args) + P.REDUCE


def p4(body):
    return P.PROTO + b"\x04" + body + P.STOP


def integer(n):
    return P.BININT + n.to_bytes(4, "little", signed=True) if -2 ** 31 <= n < 2 ** 31 else \
        P.LONG1 + bytes([len(P.encode_long(n))]) + P.encode_long(n)


@pytest.fixture
def sentinel(tmp_path):
    path = tmp_path / "ran"
    yield str(path)


def code(path):
    return "open(%r, 'w').write('ran')" % path


def getter_chain(path, mod="fractions"):
    """The reproduced attack: names that are types (operator.attrgetter,
    itemgetter) reached through a dotted name in an allowed module, then
    UserDict.__init__.__globals__['__builtins__']['eval'](code)."""
    ag, ig = sg(mod, "operator.attrgetter"), sg(mod, "operator.itemgetter")
    glob = call(call(ag, s("__init__.__globals__")), sg("collections", "UserDict"))
    builtins_dict = call(call(ig, s("__builtins__")), glob)
    ev = call(call(ig, s("eval")), builtins_dict)
    return p4(call(ev, s(code(path))))


def dotted_globals(path, where):
    """STACK_GLOBAL of `<module> <Class>.<method>.__globals__`, then eval."""
    mod, cls = where
    ig = sg(mod, "operator.itemgetter") if mod == "fractions" else sg("fractions", "operator.itemgetter")
    # The dotted name comes first (memo 0), so it is the one refused.
    glob = sg(mod, cls + ".__globals__") + P.MEMOIZE + P.POP
    ev = call(call(ig, s("eval")), call(call(ig, s("__builtins__")), P.BINGET + b"\x00"))
    return p4(glob + call(ev, s(code(path))))


def getattr_chain(path):
    """Only builtins.getattr and fractions.Fraction (an allowed type)."""
    ga = sg("builtins", "getattr")
    glob = call(ga, call(ga, sg("fractions", "Fraction"), s("__new__")), s("__globals__"))
    bget = call(ga, call(call(ga, glob, s("get")), s("__builtins__")), s("get"))
    return p4(call(call(bget, s("eval")), s(code(path))))


def import_chain(path):
    ga = sg("builtins", "getattr")
    osmod = call(sg("builtins", "__import__"), s("os"))
    return p4(call(call(ga, osmod, s("system")), s("touch " + path)))


def methodcaller_chain(path):
    """sys from `fractions.sys` (not a type), then sys.modules['os'].system."""
    mods = call(call(sg("fractions", "operator.attrgetter"), s("modules")), sg("fractions", "sys"))
    osmod = call(call(sg("fractions", "operator.itemgetter"), s("os")), mods)
    return p4(call(call(sg("fractions", "operator.methodcaller"), s("system"), s("touch " + path)), osmod))


class EvilReduce:
    """A crafting class: its pickle is (posix.system, (cmd,))."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, ("touch " + self.path,)


class EvalReduce:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return eval, (code(self.path),)


class Hidden:
    """A plain class of the task's module whose state hides an attack."""

    def __init__(self, inner):
        self.inner = inner


def partial_chain(path):
    # functools.partial(eval, code)() : both REDUCEs are ordinary calls.
    return p4(call(call(sg("functools", "partial"), sg("builtins", "eval"), s(code(path)))))


def partial_setstate(path):
    # BUILD on a partial: its own __setstate__ swaps in eval, then call it.
    obj = call(sg("functools", "partial"), sg("builtins", "print"))
    state = tup(sg("builtins", "eval"), tup(s(code(path))), P.EMPTY_DICT, P.NONE)
    return p4(call(obj + state + P.BUILD))


def reconstructor_popen(path):
    # copyreg._reconstructor(Popen, Popen, argv): Popen.__init__(obj, argv).
    popen = sg("subprocess", "Popen")
    argv = P.MARK + s("touch") + s(path) + P.LIST
    return p4(call(sg("copyreg", "_reconstructor"), popen, popen, argv))


def ext(code_no, body_after):
    if code_no < 256:
        op = P.EXT1 + bytes([code_no])
    elif code_no < 65536:
        op = P.EXT2 + code_no.to_bytes(2, "little")
    else:
        op = P.EXT4 + code_no.to_bytes(4, "little")
    return p4(op + body_after)


# id -> (builder(path), real: the standard unpickler runs it)
HOSTILE = {
    "fractions+operator.attrgetter/itemgetter -> UserDict.__init__.__globals__ eval": (getter_chain, True),
    "dotted fractions.Fraction.__new__.__globals__": (lambda p: dotted_globals(p, ("fractions", "Fraction.__new__")),
                                                       True),
    "dotted collections.UserDict.__init__.__globals__": (
        lambda p: dotted_globals(p, ("collections", "UserDict.__init__")), True),
    "fractions.operator.methodcaller + fractions.sys": (methodcaller_chain, True),
    "builtins.getattr chain from an allowed type": (getattr_chain, True),
    "builtins.eval": (lambda p: p4(call(sg("builtins", "eval"), s(code(p)))), True),
    "builtins.exec": (lambda p: p4(call(sg("builtins", "exec"), s(code(p)))), True),
    "builtins.__import__ + getattr": (import_chain, True),
    "__builtin__.eval (protocol 0, fix_imports)": (lambda p: g0("__builtin__", "eval") + P.MARK + P.STRING +
                                                   repr(code(p)).encode() + b"\n" + P.TUPLE + P.REDUCE + P.STOP, True),
    "os.system (protocol 0 GLOBAL)": (lambda p: g0("os", "system") + P.MARK + P.STRING +
                                      repr("touch " + p).encode() + b"\n" + P.TUPLE + P.REDUCE + P.STOP, True),
    "posix.system": (lambda p: p4(call(sg("posix", "system"), s("touch " + p))), True),
    "subprocess.Popen": (lambda p: p4(call(sg("subprocess", "Popen"), P.MARK + s("touch") + s(p) + P.LIST)), True),
    "__reduce__ -> os.system": (lambda p: pickle.dumps(EvilReduce(p), 4), True),
    "__reduce__ -> eval, nested in a list": (lambda p: pickle.dumps([1, {"x": EvalReduce(p)}], 4), True),
    "__reduce__ hidden in the state of an allowed task class": (lambda p: pickle.dumps(Hidden(EvilReduce(p)), 4), True),
    "__reduce__ -> eval, protocol 2": (lambda p: pickle.dumps(EvalReduce(p), 2), True),
    "functools.partial(eval, code)()": (partial_chain, True),
    "BUILD on functools.partial (its __setstate__)": (partial_setstate, True),
    "copyreg._reconstructor(Popen, Popen, argv)": (reconstructor_popen, True),
    "copyreg.__newobj__ on subprocess.Popen": (
        lambda p: p4(call(sg("copyreg", "__newobj__"), sg("subprocess", "Popen"))), False),
    "INST os.system (protocol 0)": (lambda p: P.MARK + P.STRING + repr("touch " + p).encode() + b"\n" + P.INST +
                                    b"os\nsystem\n" + P.STOP, True),
    "OBJ os.system (protocol 1)": (lambda p: P.MARK + g0("os", "system") + P.STRING + repr("touch " + p).encode() +
                                   b"\n" + P.OBJ + P.STOP, True),
    "INST of an allowed name": (lambda p: P.MARK + P.INST + b"uuid\nUUID\n" + P.STOP, False),
    "OBJ of an allowed name": (lambda p: p4(P.MARK + sg("uuid", "UUID") + P.OBJ), False),
    "types.FunctionType": (lambda p: p4(call(sg("types", "FunctionType"), P.NONE, P.EMPTY_DICT)), False),
    "types.CodeType": (lambda p: p4(call(sg("types", "CodeType"), integer(0))), False),
    "builtins.type": (lambda p: p4(call(sg("builtins", "type"), s("X"), tup(sg("builtins", "object")),
                                        P.EMPTY_DICT)), False),
    "builtins.compile": (lambda p: p4(call(sg("builtins", "compile"), s(code(p)), s("x"), s("exec"))), False),
    "PERSID": (lambda p: P.PERSID + b"os.system\n" + P.STOP, False),
    "BINPERSID": (lambda p: p4(s("x") + P.BINPERSID), False),
    "NEXT_BUFFER": (lambda p: P.PROTO + b"\x05" + P.NEXT_BUFFER + P.STOP, False),
    "unknown opcode": (lambda p: p4(b"\xff"), False),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pickle_is_refused_and_nothing_runs(case, sentinel):
    build, real = HOSTILE[case]
    data = build(sentinel)
    if real:
        # The control: the standard unpickler runs it.
        try:
            pickle.loads(data)
        except Exception:
            pass
        wait_for(sentinel)
        os.unlink(sentinel)
    classes = _results.task_classes(Hidden, __name__, __name__)
    with pytest.raises(hearth.UnsafeResult) as err:
        _results.decode({"$pickle": base64.b64encode(data).decode()}, classes, TASK)
    msg = str(err.value)
    assert msg.startswith("the result of task tasks.f "), msg
    assert "which is not allowed: " in msg and "set HEARTH_TRUST_RESULTS=1 to trust this replica" in msg, msg
    time.sleep(0.05)  # a Popen would have started by now
    assert not os.path.exists(sentinel), "the payload ran: " + msg


def wait_for(path):
    for _ in range(100):  # a Popen child writes it asynchronously
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise AssertionError("the control did not run: the payload is not an attack")


def loads(data, hint=None):
    return _results.loads(data, _results.task_classes(hint, __name__, __name__), TASK)


def refused(data, *fragments, hint=None):
    with pytest.raises(hearth.UnsafeResult) as err:
        loads(data, hint)
    for f in fragments:
        assert f in str(err.value), str(err.value)
    return err.value


def test_the_reproduced_attack_names_the_dotted_name_and_the_rule(sentinel):
    e = refused(getter_chain(sentinel), "the result of task tasks.f names fractions.operator.",
                "(module 'fractions', name 'operator.", "which is not allowed: a dotted name is never followed")
    assert e.task == TASK and e.rule == "a dotted name is never followed"
    refused(p4(call(sg("os", "system"), s("true"))), "names os.system, which is not allowed: it is not an allowed type")
    refused(p4(sg("copyreg", "__newobj__")), "names copyreg.__newobj__, which is not allowed: names with dunders")
    refused(p4(sg("fractions", "sys")), "names fractions.sys, which is not allowed")
    refused(p4(sg("collections", "UserDict")), "names collections.UserDict")
    assert not os.path.exists(sentinel)


def test_extension_registry_codes_are_refused_even_when_cached(sentinel):
    # copyreg's registry is process-global: another library (or a previous
    # trusted load) may have registered and cached codes.
    for n in (200, 40000, 70000):
        copyreg.add_extension("posix", "system", n)
        try:
            data = ext(n, tup(s("touch " + sentinel)) + P.REDUCE)
            pickle.loads(data)  # the control; it also fills copyreg's extension cache
            wait_for(sentinel)
            os.unlink(sentinel)
            assert copyreg._extension_cache
            refused(data, "uses the pickle opcode EXT", "(the extension registry)")
            # A data-only pickle still loads while the registry is in use.
            assert loads(pickle.dumps({1: {2, 3}}, 4)) == {1: {2, 3}}
        finally:
            copyreg.remove_extension("posix", "system", n)
        assert not os.path.exists(sentinel)
    refused(ext(5, b""), "EXT1")


class Point(typing.NamedTuple):
    x: int
    y: int


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass
class Item:
    name: str
    tags: set


@dataclasses.dataclass
class Order:
    items: typing.List[Item]
    color: Color
    when: datetime.datetime
    extra: typing.Optional["Extra"] = None


@dataclasses.dataclass(frozen=True)
class Extra:
    note: str


@dataclasses.dataclass(frozen=True, slots=True)
class Slotted:
    a: int
    b: tuple


class Plain:
    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other) is Plain and other.v == self.v


class Stateful:
    """A task class with its own __setstate__ (the task's own code runs)."""

    def __init__(self, v):
        self.v = v

    def __getstate__(self):
        return {"packed": self.v}

    def __setstate__(self, state):
        self.v = state["packed"]


class Stamp(datetime.datetime):
    """A task class whose pickle is its standard base's call."""


class Ordered(collections.OrderedDict):
    pass


class CustomReduce:
    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        return CustomReduce, (self.v,)


class NotAnnotated:
    pass


def roundtrip(value, hint):
    enc = _protocol.encode_value(value)
    return _results.decode(enc, _results.task_classes(hint, __name__, __name__), TASK)


SAFE = [
    2 ** 80, -2 ** 70, float("inf"), 1 + 2j, b"\x00bytes", bytearray(b"ab"), {1, 2}, frozenset({"a"}),
    {1: "int key", (1, 2): "tuple key"}, {0: (1, (2, [3]))}, range(1, 10, 2), slice(1, 5, 2), Ellipsis,
    datetime.datetime(2024, 5, 6, 7, 8, 9, 10), datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=-3), "X")),
    datetime.date(2024, 2, 29), datetime.time(23, 59), datetime.timedelta(days=-1, microseconds=5),
    decimal.Decimal("-1.50"), decimal.Decimal("NaN"), fractions.Fraction(-7, 3), uuid.UUID(int=12345),
    collections.OrderedDict([("b", 1), ("a", 2)]), collections.deque([1, 2], maxlen=5), collections.Counter("abca"),
    collections.defaultdict(list, {"a": [1]}), collections.defaultdict(None, {"a": 1}),
    pathlib.PurePosixPath("/a/b"), pathlib.Path("/tmp/x"), pathlib.PureWindowsPath("C:/x"),
    ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("::1"), ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_interface("fe80::1/64"), array.array("d", [1.5, 2.5]), {"$pickle": {1, 2}},
    [{1, 2}, {"when": datetime.date(2020, 1, 1)}, [decimal.Decimal(1)]],
]


@pytest.mark.parametrize("value", SAFE, ids=lambda v: type(v).__name__)
def test_safe_standard_types_round_trip(value):
    got = roundtrip(value, None)
    if value != value:  # NaN
        assert got != got
        return
    assert got == value and type(got) is type(value)
    if isinstance(value, collections.defaultdict):
        assert got.default_factory is value.default_factory


def test_zoneinfo_datetimes_round_trip():
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        tz = zoneinfo.ZoneInfo("Europe/Paris")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database here")
    v = datetime.datetime(2024, 7, 1, 12, tzinfo=tz)
    got = roundtrip(v, None)
    assert got == v and got.tzinfo is tz


def test_numpy_arrays_round_trip():
    np = pytest.importorskip("numpy")
    for v in (np.arange(6).reshape(2, 3), np.array([1.5, np.nan]), np.array(["a", 1], dtype=object),
              np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])):
        got = roundtrip(v, None)
        assert type(got) is np.ndarray and got.dtype == v.dtype and got.shape == v.shape
        assert got.tolist() == v.tolist() or np.isnan(v).any()
    assert roundtrip(np.float64(2.5), None) == 2.5 and type(roundtrip(np.int32(3), None)) is np.int32


def test_numpy_guards():
    np = pytest.importorskip("numpy")
    data = pickle.dumps(np.arange(3), 4)
    mod = "numpy._core.multiarray" if b"numpy._core" in data else "numpy.core.multiarray"
    huge = p4(call(sg(mod, "_reconstruct"), sg("numpy", "ndarray"), tup(integer(10 ** 12)), P.SHORT_BINBYTES +
                   b"\x01b"))
    refused(huge, "calls numpy's _reconstruct", "it takes (ndarray type, (0,), dtype)")
    shared = p4(call(sg("numpy", "dtype"), s("f8"), P.NEWFALSE, P.NEWFALSE))
    refused(shared, "calls numpy.dtype", "a dtype is rebuilt as a copy")
    assert np.dtype("f8").str == "<f8"


def test_task_classes_round_trip_nested_in_containers():
    order = Order([Item("a", {1}), Item("b", set())], Color.GREEN, datetime.datetime(2024, 1, 1), Extra("n"))
    hint = typing.Dict[str, typing.List[typing.Optional[Order]]]
    got = roundtrip({"x": [order, None]}, hint)
    assert got == {"x": [order, None]} and got["x"][0].color is Color.GREEN
    assert roundtrip([Point(1, 2), Point(3, 4)], typing.List[Point]) == [Point(1, 2), Point(3, 4)]
    assert roundtrip({Color.RED: Level.LOW}, typing.Dict[Color, Level]) == {Color.RED: Level.LOW}
    assert roundtrip(Slotted(1, (2, {3})), Slotted) == Slotted(1, (2, {3}))
    assert roundtrip({1: (Plain(1), Plain({2}))}, typing.Dict[int, typing.Tuple[Plain, ...]]) == \
        {1: (Plain(1), Plain({2}))}
    assert roundtrip(Stateful(5), typing.Union[int, Stateful]).v == 5
    st = roundtrip(Stamp(2024, 1, 2), Stamp)
    assert type(st) is Stamp and st == datetime.datetime(2024, 1, 2)
    od = roundtrip(Ordered(a=1), Ordered)
    assert type(od) is Ordered and od == {"a": 1}
    assert roundtrip(Point, typing.Type[Point]) is Point  # a class as a value


def test_task_classes_are_exact_and_from_the_annotation():
    hint = typing.Optional[typing.Dict[str, typing.List[Order]]]
    got = _results.task_classes(hint, __name__, "app.tasks")
    assert set(got) == {("app.tasks", "Order"), ("app.tasks", "Item"), ("app.tasks", "Color"),
                        ("app.tasks", "Extra")}
    assert got[("app.tasks", "Order")] is Order
    # Not the task's module or package: datetime, typing, other packages.
    assert _results.task_classes(typing.List[datetime.datetime], __name__, "tasks") == {}
    assert _results.task_classes(subprocess.Popen, __name__, "tasks") == {}
    assert _results.task_classes(None, __name__, "tasks") == {}
    # A script run as __main__ is imported as its file's name in a replica:
    # the replica's name maps to the caller's own class.
    main_cls = type("Job", (), {"__module__": "__main__"})
    assert _results.task_classes(typing.List[main_cls], "__main__", "job")[("job", "Job")] is main_cls
    # A sibling module of the task's package; never __main__ of another.
    sib = type("Row", (), {"__module__": "app.models"})
    assert set(_results.task_classes(typing.Dict[str, sib], "app.tasks", "app.tasks")) == {("app.models", "Row")}
    assert _results.task_classes(sib, "other", "other") == {}


def test_task_class_refusals(sentinel):
    # Named, but called with arguments (its own __reduce__): refused.
    refused(pickle.dumps(CustomReduce(1), 4), "calls %s.CustomReduce while unpickling" % __name__,
            "never called with arguments", hint=CustomReduce)
    # Of the task's module but not in the annotation.
    data = p4(sg(__name__, "NotAnnotated") + P.EMPTY_TUPLE + P.NEWOBJ)
    refused(data, "names %s.NotAnnotated, which is not allowed: the task's classes load only when its return "
            "annotation names them (e.g. -> NotAnnotated or -> list[NotAnnotated])" % __name__, hint=Item)
    # No annotation: no task class loads.
    refused(pickle.dumps(Item("a", set()), 4), "names %s.Item" % __name__)


def classes_for(*hints):
    out = {}
    for h in hints:
        out.update(_results.task_classes(h, __name__, "tasks"))
    return out


def user(name):
    return sg("tasks", name)


def test_build_is_refused_on_classes_enum_members_and_dunders():
    cls = classes_for(Plain, Color, Item)
    # State set on a class (would rewrite the caller's class).
    data = p4(user("Plain") + tup(P.NONE, P.MARK + s("evil") + integer(1) + P.DICT) + P.BUILD)
    with pytest.raises(hearth.UnsafeResult, match=r"sets the state of the class %s\.Plain \(BUILD\)" % __name__):
        _results.loads(data, cls, TASK)
    assert not hasattr(Plain, "evil")
    # An enum member is shared by the whole process.
    member = call(user("Color"), integer(1))
    data = p4(member + P.MARK + s("_value_") + integer(99) + P.DICT + P.BUILD)
    with pytest.raises(hearth.UnsafeResult, match="sets the state of a Color object"):
        _results.loads(data, cls, TASK)
    assert Color.RED.value == 1
    # NEWOBJ on an enum class would hand out that member too.
    with pytest.raises(hearth.UnsafeResult, match="enum members are only looked up"):
        _results.loads(p4(user("Color") + tup(integer(1)) + P.NEWOBJ), cls, TASK)
    # A dunder key would plant __setstate__ (or __class__) on an instance.
    inst = user("Item") + P.EMPTY_TUPLE + P.NEWOBJ
    for key in ("__setstate__", "__class__", "__dict__"):
        data = p4(inst + P.MARK + s(key) + sg("builtins", "bytearray") + P.DICT + P.BUILD)
        with pytest.raises(hearth.UnsafeResult, match="dunder attributes are never set"):
            _results.loads(data, cls, TASK)
        slots = p4(inst + tup(P.NONE, P.MARK + s(key) + integer(1) + P.DICT) + P.BUILD)
        with pytest.raises(hearth.UnsafeResult, match="dunder attributes are never set"):
            _results.loads(slots, cls, TASK)
    # BUILD on a standard type that is not ours to set.
    data = p4(call(sg("datetime", "date"), integer(2020), integer(1), integer(1)) + P.EMPTY_DICT + P.BUILD)
    with pytest.raises(hearth.UnsafeResult, match=r"sets the state of a date object \(BUILD\)"):
        _results.loads(data, cls, TASK)


def test_container_opcodes_never_act_on_a_class():
    cls = classes_for(Plain)
    for body, what in ((user("Plain") + integer(1) + P.APPEND, "appends into the class"),
                       (user("Plain") + P.MARK + integer(1) + P.APPENDS, "appends into the class"),
                       (user("Plain") + s("k") + integer(1) + P.SETITEM, "sets an item into the class"),
                       (user("Plain") + P.MARK + s("k") + integer(1) + P.SETITEMS, "sets items into the class"),
                       (user("Plain") + P.MARK + integer(1) + P.ADDITEMS, "adds items into the class")):
        with pytest.raises(hearth.UnsafeResult, match=what):
            _results.loads(p4(body), cls, TASK)


def test_calls_and_creations_are_checked():
    cls = classes_for(Plain)
    cases = [
        (p4(call(sg("builtins", "bytearray"), integer(10 ** 12))),
         "calls builtins.bytearray with an int object, which is not allowed: it is rebuilt from bytes, never from "
         "a size"),
        (p4(call(sg("collections", "Counter"), call(sg("builtins", "range"), integer(10 ** 12)))),
         "calls collections.Counter with a range"),
        (p4(call(sg("fractions", "Fraction"), s("1e999999999"))), "a Fraction is rebuilt from integers"),
        (p4(sg("datetime", "date") + P.EMPTY_LIST + P.REDUCE), "arguments are a tuple"),
        (p4(sg("datetime", "datetime") + tup(integer(1)) + P.NEWOBJ), "creates datetime.datetime with __new__"),
        (p4(user("Plain") + tup() + P.EMPTY_LIST + P.NEWOBJ_EX), "arguments that are not a tuple and a dict"),
        (p4(call(s("not callable"))), "calls a str object while unpickling"),
        (p4(call(sg("builtins", "getattr"), sg("fractions", "Fraction"), s("__init__"))),
         "getattr is only allowed as getattr(zoneinfo.ZoneInfo, '_unpickle')"),
        (p4(call(sg("copyreg", "_reconstructor"), user("Plain"), sg("collections", "OrderedDict"), P.NONE)),
         "its base must be object or a builtin type the class derives from"),
        (p4(call(sg("copyreg", "_reconstructor"), sg("builtins", "bytearray"), sg("builtins", "bytearray"),
                 integer(10 ** 12))), "with an int state"),
        (p4(call(sg("copyreg", "_reconstructor"), sg("builtins", "object"), sg("builtins", "object"),
                 P.NONE, P.NONE)), "it takes (class, base, state)"),
        (p4(call(sg("array", "_array_reconstructor"), sg("builtins", "object"), s("b"), integer(0), s("x"))),
         "it takes (array type, typecode, format, bytes)"),
    ]
    for data, fragment in cases:
        with pytest.raises(hearth.UnsafeResult) as err:
            _results.loads(data, cls, TASK)
        assert fragment in str(err.value), str(err.value)


def test_guarded_functions_stay_guarded_outside_the_load():
    # A guarded function handed out as a defaultdict's factory still checks.
    data = p4(call(sg("collections", "defaultdict"), sg("copyreg", "_reconstructor")))
    d = _results.loads(data, {}, TASK)
    with pytest.raises(Exception, match="it takes"):
        d["missing"]


def test_copyreg_reconstructor_with_a_builtin_base_loads():
    # What protocols 0-1 write for a plain class (the worker writes 4, where
    # it is NEWOBJ), named as protocol 4 names it.
    state = P.MARK + s("v") + integer(3) + P.DICT
    got = _results.loads(p4(call(sg("copyreg", "_reconstructor"), user("Plain"), sg("builtins", "object"), P.NONE)
                            + state + P.BUILD), classes_for(Plain), TASK)
    assert got == Plain(3)
    got = _results.loads(p4(call(sg("copyreg", "_reconstructor"), user("Ordered"), sg("builtins", "dict"),
                                 P.MARK + s("a") + integer(1) + P.DICT)), classes_for(Ordered), TASK)
    assert type(got) is Ordered and got == {"a": 1}
    # Protocols 0-2 name copyreg and builtins by their Python 2 names.
    refused(pickle.dumps({1, 2}, 0), "names __builtin__.set")


def test_trust_results_lifts_the_restriction(monkeypatch, sentinel):
    enc = {"$pickle": base64.b64encode(pickle.dumps(EvalReduce(sentinel), 4)).decode()}
    with pytest.raises(hearth.UnsafeResult):
        _results.decode(enc, {}, TASK)
    assert not os.path.exists(sentinel)
    monkeypatch.setenv("HEARTH_TRUST_RESULTS", "1")
    _results.decode(enc, {}, TASK)  # documented: the replica is trusted with this process
    assert os.path.exists(sentinel)


def test_a_broken_pickle_is_a_clear_error():
    with pytest.raises(hearth.HearthError, match=r"the result of task tasks.f could not be unpickled: "):
        loads(b"\x80\x04\x95")
    with pytest.raises(hearth.HearthError, match="could not be unpickled"):
        loads(p4(P.MARK + P.TUPLE)[:-1])


env = ActorEnvironment(name="hostile")


@env.task
def make_order() -> typing.List[Order]:
    return []


def test_the_task_decodes_with_its_annotation(sentinel):
    order = Order([Item("a", {1})], Color.RED, datetime.datetime(2024, 1, 1))
    enc = _protocol.encode_value([order])
    assert make_order._decode(enc) == [order]
    enc = {"$pickle": base64.b64encode(pickle.dumps(EvalReduce(sentinel), 4)).decode()}
    with pytest.raises(hearth.UnsafeResult, match=r"^the result of task %s.make_order calls builtins.eval|"
                                                  r"^the result of task %s.make_order names builtins.eval"
                                                  % (__name__, __name__)):
        make_order._decode(enc)
    assert not os.path.exists(sentinel)
