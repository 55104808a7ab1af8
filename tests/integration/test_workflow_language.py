"""flytekit's workflow language on a real hearthd, through `python -m hearth
run`: conditional (elif, .fail, nested, is_true on a task output and on a
workflow input), Echo, dynamic and @actor.dynamic, `>>` and create_node,
LaunchPlan.create. The workflows are flytesnacks' and flyte-conformance's
with their import lines changed."""
import json
import random

import pytest

from conftest import api, running_daemon
from test_sdk import run, traces


@pytest.fixture(scope="module")
def wfl():
    yield from running_daemon("hearth-wfl")


PROJECT = '''
import random
import typing

from hearth import (ActorEnvironment, CronSchedule, Echo, LaunchPlan, conditional, create_node, dynamic,
                    workflow)

actor = ActorEnvironment(name="wfl", replica_count=1, ttl_seconds=300)
never = ActorEnvironment(name="wfl-never", replica_count=1, ttl_seconds=60)


@actor.task
def calculate_circle_circumference(radius: float) -> float:
    return 2 * 3.14 * radius


@actor.task
def calculate_circle_area(radius: float) -> float:
    return 3.14 * radius * radius


@workflow
def shape_properties_with_multiple_branches(radius: float) -> float:
    return (
        conditional("shape_properties_with_multiple_branches")
        .if_((radius >= 0.1) & (radius < 1.0))
        .then(calculate_circle_circumference(radius=radius))
        .elif_((radius >= 1.0) & (radius <= 10.0))
        .then(calculate_circle_area(radius=radius))
        .else_()
        .fail("The input must be within the range of 0 to 10.")
    )


@workflow
def nested_conditions(radius: float) -> float:
    return (
        conditional("nested_conditions")
        .if_((radius >= 0.1) & (radius < 1.0))
        .then(
            conditional("inner_nested_conditions")
            .if_(radius < 0.5)
            .then(calculate_circle_circumference(radius=radius))
            .elif_((radius >= 0.5) & (radius < 0.9))
            .then(calculate_circle_area(radius=radius))
            .else_()
            .fail("0.9 is an outlier.")
        )
        .elif_((radius >= 1.0) & (radius <= 10.0))
        .then(calculate_circle_area(radius=radius))
        .else_()
        .fail("The input must be within the range of 0 to 10.")
    )


@actor.task
def coin_toss(seed: int) -> bool:
    r = random.Random(seed)
    if r.random() < 0.5:
        return True
    return False


@actor.task
def failed() -> int:
    return -1


@actor.task
def success() -> int:
    return 0


@workflow
def boolean_wf(seed: int = 5) -> int:
    result = coin_toss(seed=seed)
    return conditional("coin_toss").if_(result.is_true()).then(success()).else_().then(failed())


@workflow
def boolean_input_wf(boolean_input: bool) -> int:
    return conditional("boolean_input_conditional").if_(boolean_input.is_true()).then(success()).else_().then(failed())


@workflow
def heads_or_fail(seed: int) -> int:
    heads = coin_toss(seed=seed)
    return conditional("heads_or_fail").if_(heads.is_true()).then(success()).else_().fail("The coin landed tails.")


echo = Echo(name="echo", inputs={"radius": float})


@workflow
def area_or_echo(radius: float, seed: int = 5) -> float:
    is_heads = coin_toss(seed=seed)
    return (conditional("area_or_echo").if_(is_heads.is_true()).then(calculate_circle_area(radius=radius))
            .else_().then(echo(radius=radius)))


@never.task
def expensive(x: float) -> float:
    return x + 0.25


@workflow
def guarded(x: float) -> float:
    return conditional("guard").if_(x < 100.0).then(echo(radius=x)).else_().then(expensive(x=x))


@actor.task
def plus_one(input: int) -> int:
    return input + 1


@actor.dynamic
def d1():
    plus_one(input=1)
    plus_one(input=1)


@workflow
def actor_wf(input: int = 0) -> int:
    d1()
    a = plus_one(input=input)
    b = plus_one(input=a)
    c = plus_one(input=b)
    return plus_one(input=c)


@dynamic
def count_up(n: int) -> typing.List[int]:
    return [plus_one(input=i) for i in range(n)]


@actor.task
def t0() -> None:
    print("Running t0")


@actor.task
def t1() -> None:
    print("Running t1")


@actor.task
def t2() -> None:
    print("Running t2")


@workflow
def chain_tasks_wf():
    t0_promise = t0()
    t1_promise = t1()
    t2_promise = t2()
    t0_promise >> t1_promise
    t1_promise >> t2_promise


@workflow
def chain_reordered_wf():
    # Calls written in one order, chained in another: the chain wins, as in Flyte.
    t2_promise = t2()
    t1_promise = t1()
    t0_promise = t0()
    t0_promise >> t1_promise
    t1_promise >> t2_promise


@workflow
def chain_backwards_wf() -> int:
    n = create_node(plus_one, input=1)  # returns a value: runs when it is made
    d = t1()
    d >> n
    return n.o0


@workflow
def nodes_wf() -> int:
    n0 = create_node(t0)
    n1 = create_node(plus_one, input=41)
    n0 >> n1
    return n1.o0


@actor.task
def add(a: int, b: int) -> int:
    return a + b


@workflow
def add_wf(a: int, b: int = 1) -> int:
    return add(a=a, b=b)


add_ten = LaunchPlan.create("add_ten", add_wf, default_inputs={"a": 1}, fixed_inputs={"b": 10},
                            schedule=CronSchedule(schedule="0 * * * *"))
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("wflang")
    (d / "wflang.py").write_text(PROJECT)
    return d / "wflang.py"


def tasks(r):
    return [(t["task"], t["result"]) for t in traces(r)]


def test_elif_and_fail(wfl, project):
    r = run(wfl, project, "shape_properties_with_multiple_branches", "--radius", "0.5")
    assert (r.stdout, tasks(r)) == (json.dumps(2 * 3.14 * 0.5) + "\n",
                                    [("calculate_circle_circumference", repr(2 * 3.14 * 0.5))])
    r = run(wfl, project, "shape_properties_with_multiple_branches", "--radius", "3.0")
    assert (r.stdout, tasks(r)) == (json.dumps(3.14 * 3.0 * 3.0) + "\n", [("calculate_circle_area", repr(3.14 * 3.0 * 3.0))])
    r = run(wfl, project, "shape_properties_with_multiple_branches", "--radius", "11", check=False)
    assert (r.returncode, r.stdout, tasks(r)) == (1, "", [])
    assert r.stderr.strip().endswith("python -m hearth run: conditional 'shape_properties_with_multiple_branches' "
                                     "failed: The input must be within the range of 0 to 10."), r.stderr


def test_nested_conditions(wfl, project):
    r = run(wfl, project, "nested_conditions", "--radius", "0.7")
    assert (r.stdout, tasks(r)) == (json.dumps(3.14 * 0.7 * 0.7) + "\n",
                                    [("calculate_circle_area", repr(3.14 * 0.7 * 0.7))])
    r = run(wfl, project, "nested_conditions", "--radius", "0.95", check=False)
    assert (r.returncode, r.stdout, tasks(r)) == (1, "", [])
    assert "conditional 'inner_nested_conditions' failed: 0.9 is an outlier." in r.stderr


@pytest.mark.parametrize("seed", [1, 5])
def test_is_true_on_a_bool_task_output(wfl, project, seed):
    heads = random.Random(seed).random() < 0.5
    assert heads == (seed == 1)
    r = run(wfl, project, "boolean_wf", "--seed", seed)
    assert r.stdout == ("0\n" if heads else "-1\n")
    assert tasks(r) == [("coin_toss", repr(heads)), ("success", "0") if heads else ("failed", "-1")]


@pytest.mark.parametrize("flag, out, task", [("true", "0", "success"), ("false", "-1", "failed")])
def test_is_true_on_a_bool_workflow_input(wfl, project, flag, out, task):
    r = run(wfl, project, "boolean_input_wf", "--boolean-input", flag)
    assert (r.stdout, tasks(r)) == (out + "\n", [(task, out)])


def test_coin_toss_with_fail(wfl, project):
    r = run(wfl, project, "heads_or_fail", "--seed", "1")
    assert (r.returncode, r.stdout) == (0, "0\n")
    r = run(wfl, project, "heads_or_fail", "--seed", "0", check=False)
    assert (r.returncode, r.stdout, tasks(r)) == (1, "", [("coin_toss", "False")])
    assert r.stderr.strip().endswith("python -m hearth run: conditional 'heads_or_fail' failed: The coin landed tails.")


def test_echo_in_the_else_branch(wfl, project):
    r = run(wfl, project, "area_or_echo", "--radius", "2.5", "--seed", "0")
    assert (r.stdout, tasks(r)) == ("2.5\n", [("coin_toss", "False")])
    r = run(wfl, project, "area_or_echo", "--radius", "2.0", "--seed", "1")
    assert (r.stdout, tasks(r)) == (json.dumps(3.14 * 2.0 * 2.0) + "\n",
                                    [("coin_toss", "True"), ("calculate_circle_area", repr(3.14 * 2.0 * 2.0))])


def test_a_task_in_an_untaken_branch_never_reaches_the_daemon(wfl, project):
    r = run(wfl, project, "guarded", "--x", "1.5")
    assert (r.stdout, tasks(r)) == ("1.5\n", [])
    status, _ = api(wfl.socket, "GET", "/v1/environments/wfl-never")
    assert status == 404, "the untaken branch's environment was applied"
    r = run(wfl, project, "guarded", "--x", "200")
    assert (r.stdout, tasks(r)) == ("200.25\n", [("expensive", "200.25")])
    status, body = api(wfl.socket, "GET", "/v1/environments/wfl-never")
    assert status == 200 and sum(rep["tasksRun"] for rep in body["replicas"]) == 1, body


def test_actor_dynamic_in_a_workflow(wfl, project):
    r = run(wfl, project, "actor_wf", "--input", "0")
    assert r.stdout == "4\n"
    assert tasks(r) == [("plus_one", "2"), ("plus_one", "2"), ("plus_one", "1"), ("plus_one", "2"),
                        ("plus_one", "3"), ("plus_one", "4")]


def test_dynamic_loops_over_a_concrete_int(wfl, project):
    r = run(wfl, project, "count_up", "--n", "3")
    assert (r.stdout, tasks(r)) == ("[1, 2, 3]\n", [("plus_one", "1"), ("plus_one", "2"), ("plus_one", "3")])
    r = run(wfl, project, "count_up", "--n", "x", check=False)
    assert r.returncode == 2 and "--n: 'x' is not a valid int" in r.stderr


def test_chaining_void_tasks_and_nodes(wfl, project):
    r = run(wfl, project, "chain_tasks_wf")
    assert (r.stdout, tasks(r)) == ("", [("t0", "None"), ("t1", "None"), ("t2", "None")])
    r = run(wfl, project, "chain_reordered_wf")
    assert (r.stdout, tasks(r)) == ("", [("t0", "None"), ("t1", "None"), ("t2", "None")])
    r = run(wfl, project, "nodes_wf")
    assert (r.stdout, tasks(r)) == ("42\n", [("t0", "None"), ("plus_one", "42")])


def test_chaining_against_the_call_order_is_refused(wfl, project):
    r = run(wfl, project, "chain_backwards_wf", check=False)
    assert (r.returncode, r.stdout, tasks(r)) == (1, "", [("plus_one", "2")])
    assert r.stderr.strip().endswith(
        "python -m hearth run: `task t1 >> task plus_one`: task plus_one already ran (a call that returns a value "
        "runs when it is made) and task t1 has not; call task t1 before task plus_one in the workflow"), r.stderr


def test_launch_plan_create_with_fixed_inputs(wfl, project):
    r = run(wfl, project, "add_ten", "--a", "5")
    assert (r.stdout, tasks(r)) == ("15\n", [("add", "15")])
    assert "LaunchPlan add_ten: schedule not applied by Hearth" in r.stderr
    r = run(wfl, project, "add_ten")
    assert r.stdout == "11\n"
    r = run(wfl, project, "add_ten", "--b", "3", check=False)
    assert r.returncode == 2 and "unrecognized arguments: --b 3" in r.stderr
