"""The workflow language (hearth._flow) without a daemon: tasks run in this
process (ActorTask._remote patched), so what ran is recorded here."""
import sys
import typing
import warnings

import pytest

import hearth
from hearth import _flow
from hearth._actor import ActorEnvironment, ActorTask, map_task
from hearth._flow import (Bool, ConditionFailed, Echo, Node, Skipped, Void, WorkflowError, conditional,
                          create_node, dynamic)
from hearth._typecheck import InputError
from hearth._workflow import LaunchPlan, workflow

ran = []


@pytest.fixture(autouse=True)
def local_tasks(monkeypatch):
    def remote(self, kwargs):
        ran.append(self.__qualname__)
        return self._hearth_fn(**kwargs)

    monkeypatch.setattr(ActorTask, "_remote", remote)
    monkeypatch.setattr(hearth._actor.MappedTask, "_call",
                        lambda self, a, k: [self.task._remote(kw) for kw in self._inputs(a, k)])
    ran.clear()
    had_worker = "hearth._worker" in sys.modules
    yield
    if not had_worker:  # ActorTask.__call__ imports it; hearth._images.in_replica() would then be true
        sys.modules.pop("hearth._worker", None)


env = ActorEnvironment(name="flow-unit")


@env.task
def double(n: float) -> float:
    return 2 * n


@env.task
def square(n: float) -> float:
    return n * n


@env.task
def is_even(n: int) -> bool:
    return n % 2 == 0


@env.task
def noop() -> None:
    pass


@env.task
def want_bool(b: bool, flags: typing.List[bool] = []) -> str:
    return "%r %r" % (b, flags)


class Pair(typing.NamedTuple):
    total: int
    positive: bool


@env.task
def pair(n: int) -> Pair:
    return Pair(n * 2, n > 0)


@env.task
def two(n: int) -> typing.Tuple[int, bool]:
    return n, n > 0


@workflow
def shapes(radius: float) -> float:
    return (conditional("shapes")
            .if_((radius >= 0.1) & (radius < 1.0)).then(double(n=radius))
            .elif_((radius >= 1.0) & (radius <= 10.0)).then(square(n=radius))
            .else_().fail("The input must be within the range of 0 to 10."))


def test_if_elif_else_runs_only_the_taken_branch():
    assert shapes(radius=0.5) == 1.0 and ran == ["double"]
    ran.clear()
    assert shapes(radius=3.0) == 9.0 and ran == ["square"]
    ran.clear()
    with pytest.raises(ConditionFailed, match="conditional 'shapes' failed: The input must be within") as e:
        shapes(radius=11.0)
    assert ran == [] and isinstance(e.value, ValueError) and isinstance(e.value, hearth.HearthError)
    assert _flow.current() is None and is_even(n=1) is False  # the failed body left no skipping state behind


@workflow
def nested(radius: float) -> float:
    return (conditional("outer")
            .if_((radius >= 0.1) & (radius < 1.0))
            .then(conditional("inner")
                  .if_(radius < 0.5).then(double(n=radius))
                  .elif_((radius >= 0.5) & (radius < 0.9)).then(square(n=radius))
                  .else_().fail("0.9 is an outlier."))
            .elif_((radius >= 1.0) & (radius <= 10.0)).then(square(n=radius))
            .else_().fail("The input must be within the range of 0 to 10."))


def test_nested_conditionals():
    assert nested(radius=0.25) == 0.5 and ran == ["double"]
    ran.clear()
    assert nested(radius=0.6) == pytest.approx(0.36) and ran == ["square"]
    ran.clear()
    assert nested(radius=5.0) == 25.0 and ran == ["square"]
    ran.clear()
    with pytest.raises(ConditionFailed, match="'inner' failed: 0.9 is an outlier"):
        nested(radius=0.95)
    # A failing inner section in a branch not taken does not fail.
    ran.clear()
    with pytest.raises(ConditionFailed, match="'outer' failed"):
        nested(radius=20.0)
    assert ran == []


@workflow
def coin(n: int) -> float:
    heads = is_even(n=n)
    return conditional("coin").if_(heads.is_true()).then(double(n=1.0)).else_().then(square(n=3.0))


@workflow
def by_input(flag: bool) -> str:
    out = conditional("c").if_(flag.is_false()).then(Echo(name="e", inputs={"s": str})(s="no")) \
        .else_().then(want_bool(b=flag, flags=[flag, ~flag]))
    return out


def test_is_true_on_task_output_and_input_and_proxies_unwrapped():
    assert coin(n=2) == 2.0 and ran == ["is_even", "double"]
    ran.clear()
    assert coin(n=3) == 9.0 and ran == ["is_even", "square"]
    assert by_input(flag=False) == "no"
    # the task saw plain bools, also inside a list; ~ is `not`, not -2
    assert by_input(flag=True) == "True [True, False]"


def test_bool_proxy_only_inside_workflows():
    assert is_even(n=2) is True  # outside: plain
    seen = {}

    @workflow
    def wf(b: bool) -> bool:
        x = is_even(n=4)
        seen.update(x=x, b=b, t=two(n=-1), p=pair(n=1))
        assert x and x == True and x != False and (x & b) is True and (x | False) is True  # noqa: E712
        assert x.is_true() is True and x.is_false() is False and x.is_none() is False and int(x) == 1
        assert str(x) == "True" and f"{b}" == "True" and hash(x) == hash(True)
        return x

    assert wf(b=True) is True
    assert isinstance(seen["x"], Bool) and isinstance(seen["b"], Bool)
    assert seen["t"][0] == -1 and isinstance(seen["t"][1], Bool) and seen["t"][1].is_false()
    assert isinstance(seen["p"], Pair) and seen["p"].positive.is_true()


def test_dynamic_inputs_stay_plain_and_loop():
    got = {}

    @dynamic
    def dyn(n: int, flag: bool = True) -> typing.List[float]:
        got["flag"] = flag
        return [double(n=float(i)) for i in range(n)]

    assert dyn(n=3) == [0.0, 2.0, 4.0] and ran == ["double"] * 3
    assert got["flag"] is True
    with pytest.raises(InputError, match="expected int"):
        dyn(n="3")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d2 = dynamic(cache=True, requests="x")(lambda: None)
    assert "cache, requests not applied" in str(w[0].message)
    a = env.dynamic(lambda: noop())
    assert a.environment is env and a() is None


def test_echo():
    e = Echo(name="echo", inputs={"a": float, "b": str})
    assert e(a=1.5, b="x") == (1.5, "x") and e(2.0, "y") == (2.0, "y")
    assert Echo(name="one", inputs={"a": int})(a=3) == 3
    with pytest.raises(InputError, match="Echo echo input 'a': expected float, got str"):
        e(a="1", b="x")
    with pytest.raises(InputError, match="missing required input 'b'"):
        e(a=1.0)
    with pytest.raises(InputError, match="unexpected input 'c'"):
        e(a=1.0, b="", c=1)


def test_untaken_branch_never_calls_and_checks_names():
    @workflow
    def wf(x: int) -> int:
        return conditional("c").if_(x > 0).then(Echo(name="e", inputs={"v": int})(v=x)) \
            .else_().then(pair(n=x).total)

    assert wf(x=1) == 1 and ran == []
    assert wf(x=-1) == -2 and ran == ["pair"]
    ran.clear()

    @workflow
    def typo(x: int) -> float:
        return conditional("c").if_(x > 0).then(double(n=1.0)).else_().then(double(m=1.0))

    with pytest.raises(InputError, match="unexpected input 'm'"):
        typo(x=1)


def test_skipped_values_cannot_escape():
    @workflow
    def leak(x: int) -> float:
        out = {}
        conditional("c").if_(x > 0).then(1.0).else_().then(out.setdefault("v", double(n=1.0)))
        return double(n=out["v"])

    with pytest.raises(WorkflowError, match="input 'n' of task double: task double belongs to a branch of "
                                            "conditional 'c' that was not taken"):
        leak(x=1)
    assert ran == []


def test_unfinished_conditional_is_refused():
    @workflow
    def dangling(x: int) -> float:
        conditional("half").if_(x > 0).then(double(n=1.0))
        return square(n=2.0)

    with pytest.raises(WorkflowError, match="'half' is not finished"):
        dangling(x=1)
    assert ran == ["double"]  # square was never sent

    @workflow
    def no_else(x: int) -> float:
        return conditional("c").if_(x > 0).then(double(n=1.0))

    with pytest.raises(WorkflowError, match="conditional 'c' is not finished"):
        no_else(x=-1)


def test_conditional_misuse():
    with pytest.raises(WorkflowError, match="only be used inside a @workflow"):
        conditional("x")

    @workflow
    def bad(x: int) -> int:
        return conditional("c").if_(x).then(1).else_().then(2)

    with pytest.raises(WorkflowError, match=r"conditional 'c' .if_\(\): expected a condition .* got int 3"):
        bad(x=3)


def test_void_and_rshift_in_call_order():
    seen = {}

    @workflow
    def chain() -> None:
        a = noop()
        b = noop()
        seen.update(a=a, b=b)
        a >> b
        a.runs_before(b)
        n1 = create_node(noop)
        n2 = create_node(pair, n=3)
        n1 >> n2
        seen["n2"] = n2
        7 >> b  # a plain value on the left: nothing to check
        return b

    assert chain() is None and noop() is None
    assert isinstance(seen["a"], Void) and isinstance(seen["n2"], Node)
    assert seen["n2"].total == 6 and seen["n2"].positive.is_true() and set(seen["n2"].outputs) == {"total", "positive"}

    order = []

    @workflow
    def reordered() -> None:
        second = noop()
        order.append("called")
        first = create_node(noop)
        assert first._void._held and second._held  # nothing ran yet
        first >> second

    reordered()
    assert order == ["called"]

    @workflow
    def backwards() -> None:
        value = create_node(pair, n=1)  # returns a value: runs now
        held = noop()
        held >> value

    with pytest.raises(WorkflowError, match=r"`task noop >> task pair`: task pair already ran \(a call that returns "
                                            r"a value runs when it is made\) and task noop has not"):
        backwards()

    @workflow
    def cycle() -> None:
        a = noop()
        b = noop()
        a >> b
        b >> a

    with pytest.raises(WorkflowError, match=r"`>>` orders task noop, task noop in a cycle"):
        cycle()

    @workflow
    def nodes() -> float:
        n = create_node(double, n=2.0)
        m = create_node(two, n=1)
        return n.o0 + m.o0 + int(m.outputs["o1"])

    assert nodes() == 6.0


def test_map_task_and_workflow_and_launch_plan_are_skipped_too():
    @workflow
    def sub(n: int) -> bool:
        return is_even(n=n)

    lp = LaunchPlan.create("flow-unit-lp", sub, fixed_inputs={"n": 2})

    @workflow
    def wf(x: int) -> typing.List[float]:
        a = conditional("c").if_(x > 0).then(map_task(double)(n=[1.0, 2.0])).else_().then([0.0])
        b = conditional("d").if_(x > 0).then(0).else_().then(sub(n=1))
        c = conditional("e").if_(x < 0).then(lp()).else_().then(Echo(name="t", inputs={"b": bool})(b=True))
        assert c.is_true() and b == 0
        return a

    assert wf(x=1) == [2.0, 4.0] and ran == ["double", "double"]


def test_launch_plan_create_rules():
    @workflow
    def wf(a: int, b: int = 1) -> int:
        return a + b

    lp = LaunchPlan.create("flow-unit-create", wf, default_inputs={"a": 3}, fixed_inputs={"b": 10})
    assert lp() == 13 and lp(a=1) == 11
    assert LaunchPlan.CACHE["flow-unit-create"] is lp
    with pytest.raises(WorkflowError, match="two launch plans are named 'flow-unit-create'.*different fixed_inputs"):
        LaunchPlan.create("flow-unit-create", wf, default_inputs={"a": 3}, fixed_inputs={"b": 11})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        LaunchPlan._warned.clear()
        s = LaunchPlan.create("flow-unit-sched", wf, fixed_inputs={"a": 1},
                              schedule=hearth.CronSchedule(schedule="*/5 * * * *"),
                              notifications=[hearth.Email(phases=[hearth.WorkflowExecutionPhase.FAILED],
                                                          recipients_email=["a@b.c"])])
        LaunchPlan.create("flow-unit-sched2", wf, schedule=hearth.FixedRate(duration=None))
    assert [str(x.message) for x in w] == [
        "LaunchPlan flow-unit-sched: schedule and notifications not applied by Hearth: it runs a launch plan only "
        "when it is called"]
    assert s(b=2) == 3
    with pytest.raises(ValueError, match="only a named launch plan"):
        LaunchPlan.get_or_create(wf, fixed_inputs={"a": 1})


def test_unwrap_keeps_containers_and_refuses_placeholders():
    b = Bool(True)
    assert _flow.unwrap([b, (b, 1), {"k": {b}}], "x") == [True, (True, 1), {"k": {True}}]
    keep = [1, 2]
    assert _flow.unwrap(keep, "x") is keep
    assert _flow.unwrap(Pair(1, b), "x") == Pair(1, True) and type(_flow.unwrap(Pair(1, b), "x")) is Pair
    with pytest.raises(WorkflowError, match="where: cannot|where: .*was skipped"):
        _flow.unwrap(Skipped("task t", None), "where")
    s = Skipped("task t", None)
    assert (s > 3) is s and s.is_true() is s and s.o0 is s and (s & True) is s and (Bool(True) & s) is s
    with pytest.raises(WorkflowError, match="cannot test a skipped value"):
        bool(s)
