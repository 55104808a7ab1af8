"""flytekit's workflow language on Hearth's eager workflows: ``conditional``,
``dynamic``, ``Echo``, ``create_node`` and ``>>``, and what a workflow body
sees of its values.

Hearth runs a workflow body as plain Python: each call runs when it is made
and returns a concrete value. flytekit's constructs are built for bodies that
only *describe* a graph, so three things are needed to run them eagerly:

* Skipped branches. In ``conditional("c").if_(x > 5).then(t1()).else_().then(t2())``
  Python evaluates ``t1()`` and ``t2()`` before ``.then`` is called. While a
  branch is not taken the section puts the body in a *skipping* state (as
  flytekit's ``BranchEvalMode.BRANCH_SKIPPED`` does when it runs a workflow
  locally): every call -- tasks, map tasks, workflows, launch plans, dynamics,
  ``Echo``, ``create_node`` -- then returns a ``Skipped`` placeholder without
  contacting hearthd. The chain's value is the taken branch's.
* ``.is_true()`` / ``.is_false()`` / ``.is_none()`` on bools. Inside a workflow
  body (not a dynamic's inputs, which are concrete in Flyte too), bool task
  outputs (also each bool of a tuple of outputs) and bool workflow inputs are
  ``Bool`` proxies: ``is_true``, ``is_false``, ``is_``, ``is_none``, ``__bool__``,
  ``==``/``!=``, ``&``/``|``/``^`` (giving plain bools), ``~`` (``not``, not -2),
  ``int()``, ``hash``, ``str``/``repr``, and ``>>``. ``isinstance(b, bool)`` and
  ``b is True`` are False for a proxy. Proxies are unwrapped when passed to a
  task, workflow or Echo (also inside lists, tuples, dicts and sets), when given
  to ``if_``/``elif_``, and when the workflow returns; outside workflows values
  stay plain.
* Void calls. A call of a task (or workflow) that declares no output returns
  a ``Void`` inside a workflow body (None outside, as before), so that
  ``t1() >> t2()`` works. A call that has no output to wait for -- declared
  ``-> None``, or with no return annotation at all on a plain ``@task``, a
  workflow, a dynamic or a launch plan, which flytekit reads as no output --
  is held back until the body needs it: until the next call that returns a
  value, or the end of the body. Held calls then run in the order ``>>``
  (and ``runs_before``) asks for, else in the order they were made, so
  ``t2(); t1(); t0(); t0_ >> t1_; t1_ >> t2_`` runs t0, t1, t2 as in Flyte.
  An order that cannot be kept (``a >> b`` when ``b`` already ran and ``a``
  did not, or a cycle) raises ``WorkflowError`` naming both. Calls that
  return values run when they are made (an unannotated ``@actor.task``
  counts as returning one, as Hearth's tasks always have).

The state lives in a ``contextvars.ContextVar`` set for the duration of each
workflow body; a call made outside any body (or in another thread) sees none
of this.
"""

import contextvars
import itertools
import sys
import warnings

from hearth._errors import HearthError
from hearth._workflow import Workflow

__all__ = ["conditional", "dynamic", "DynamicTask", "Echo", "create_node", "Node", "Bool", "Void", "Skipped", "Outputs",
           "WorkflowError", "ConditionFailed", "CronSchedule", "FixedRate", "Email", "Slack", "PagerDuty",
           "WorkflowExecutionPhase"]


class WorkflowError(HearthError):
    """A workflow-language construct was used in a way Hearth cannot run:
    an unfinished conditional, a value of a branch that was not taken,
    ``a >> b`` after ``b`` ran, conflicting launch plans."""


class ConditionFailed(WorkflowError, ValueError):
    """A conditional reached ``.fail(message)`` (flytekit raises ValueError)."""

    def __init__(self, section, message):
        self.section = section
        self.message = message
        WorkflowError.__init__(self, "conditional %r failed: %s" % (section, message))


class _Flow(object):
    """One running workflow body."""

    def __init__(self, label):
        self.label = label
        self.skipping = False
        self.sections = []  # open conditional sections, innermost last
        self.held = []  # Voids of calls not run yet, in call order
        self.edges = []  # (a, b): held a runs before held b


_FLOW = contextvars.ContextVar("hearth_flow", default=None)
_SEQ = itertools.count(1)  # call order, process-wide: what `>>` checks


def current():
    return _FLOW.get()


def _in_worker():
    # Not `import hearth._worker`: in the caller that import would make
    # hearth._images.in_replica() true (it tests sys.modules).
    worker = sys.modules.get("hearth._worker")
    return worker is not None and worker.in_worker()


# -- what a body sees ----------------------------------------------------------------------

class _Ordered(object):
    """`a >> b` and `a.runs_before(b)`: eager calls already ran in call order;
    this only refuses an order that did not happen."""

    __slots__ = ()

    def runs_before(self, other):
        _order(self, other)

    def __rshift__(self, other):
        _order(self, other)
        return other

    def __rrshift__(self, other):
        _order(other, self)
        return self


def _step(x):
    """The Void behind a node of a call that has no output, else ``x``."""
    inner = x.__dict__.get("_void") if isinstance(x, Node) else None
    return inner if inner is not None else x


def _order(a, b):
    if isinstance(a, Skipped) or isinstance(b, Skipped):
        return
    if not isinstance(a, _Ordered) or not isinstance(b, _Ordered):
        return
    a, b = _step(a), _step(b)
    ha, hb = isinstance(a, Void) and a._held, isinstance(b, Void) and b._held
    if ha and hb:
        flow = _FLOW.get()
        if flow is not None and a in flow.held and b in flow.held:
            flow.edges.append((a, b))
            return
    sa, sb = getattr(a, "_seq", None), getattr(b, "_seq", None)
    if ha and not hb and sb is not None:
        raise WorkflowError(
            "`%s >> %s`: %s already ran (a call that returns a value runs when it is made) and %s has not; "
            "call %s before %s in the workflow" % (a._label, b._label, b._label, a._label, a._label, b._label))
    if sa is not None and sb is not None and sa > sb:
        raise WorkflowError(
            "`%s >> %s`: %s already ran before %s. Hearth runs a workflow's calls that return values when they "
            "are made, in the order they are written, so it cannot run %s first now; call %s before %s in the "
            "workflow" % (a._label, b._label, b._label, a._label, a._label, a._label, b._label))


def flush(flow):
    """Runs the body's held calls: those ``>>`` orders first, ties in call
    order."""
    held, edges = flow.held, flow.edges
    if not held:
        return
    flow.held, flow.edges = [], []
    before = {id(v): 0 for v in held}
    for a, b in edges:
        before[id(b)] += 1
    todo = list(held)
    while todo:
        ready = next((v for v in todo if before[id(v)] == 0), None)
        if ready is None:
            raise WorkflowError("%s: `>>` orders %s in a cycle" % (flow.label, ", ".join(v._label for v in todo)))
        todo.remove(ready)
        for a, b in edges:
            if a is ready:
                before[id(b)] -= 1
        ready._run()


class Bool(_Ordered):
    """A bool output or input inside a workflow body (see the module's doc)."""

    __slots__ = ("_value", "_seq", "_label")

    def __init__(self, value, seq=None, label="a bool"):
        self._value = bool(value)
        self._seq = seq
        self._label = label

    def is_(self, v):
        return self._value is bool(_plain(v))

    def is_true(self):
        return self._value

    def is_false(self):
        return not self._value

    def is_none(self):
        return False

    def __bool__(self):
        return self._value

    def __eq__(self, other):
        other = _plain(other)
        return NotImplemented if other is NotImplemented else self._value == other

    def __ne__(self, other):
        other = _plain(other)
        return NotImplemented if other is NotImplemented else self._value != other

    def __hash__(self):
        return hash(self._value)

    def __and__(self, other):
        other = _plain(other)
        return NotImplemented if other is NotImplemented else self._value & other

    __rand__ = __and__

    def __or__(self, other):
        other = _plain(other)
        return NotImplemented if other is NotImplemented else self._value | other

    __ror__ = __or__

    def __xor__(self, other):
        other = _plain(other)
        return NotImplemented if other is NotImplemented else self._value ^ other

    __rxor__ = __xor__

    def __invert__(self):
        return not self._value

    def __int__(self):
        return int(self._value)

    __index__ = __int__

    def __repr__(self):
        return repr(self._value)

    def __str__(self):
        return str(self._value)

    def __format__(self, spec):
        return format(self._value, spec)


def _plain(v):
    """A Bool's or bool's value, else NotImplemented (so Skipped's reflected operators get their turn)."""
    if isinstance(v, Bool):
        return v._value
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return v
    return NotImplemented


class Void(_Ordered):
    """What a call that declares no output gives inside a workflow body;
    ``_seq`` is None while the call is held (see the module's doc)."""

    __slots__ = ("_seq", "_label", "_held", "_thunk")

    def __init__(self, seq, label, thunk=None):
        self._seq = seq
        self._label = label
        self._held = thunk is not None
        self._thunk = thunk

    def _run(self):
        thunk, self._thunk = self._thunk, None
        self._held = False
        self._seq = next(_SEQ)
        thunk()

    def with_overrides(self, *args, **kwargs):
        return self

    @property
    def ref(self):
        return None

    def __bool__(self):
        raise WorkflowError("%s returns nothing: its result cannot be tested" % self._label)

    def __repr__(self):
        return "<nothing: %s returns no value>" % self._label


class Skipped(_Ordered):
    """The result of a call made while a branch is not taken: nothing ran.

    Anything done with it in the skipped branch (attributes, calls, items,
    comparisons, ``&``, ``|``) gives it back, so a branch's expression can be
    evaluated; using it as a value raises ``WorkflowError``."""

    __slots__ = ("_label", "_section")

    def __init__(self, label, section):
        self._label = label
        self._section = section

    def _why(self):
        s = self._section
        if s is None:
            return "%s was skipped" % self._label
        if not s.closed:
            return ("%s was skipped because conditional %r is not finished: a chain ends with .else_().then(...) "
                    "or .else_().fail(...)" % (self._label, s.name))
        return "%s belongs to a branch of conditional %r that was not taken, so it never ran" % (self._label, s.name)

    def _refuse(self, what):
        raise WorkflowError("%s: %s" % (what, self._why()))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __getitem__(self, key):
        return self

    def __iter__(self):
        self._refuse("cannot unpack a skipped value")

    def __bool__(self):
        self._refuse("cannot test a skipped value")

    def _same(self, *other):
        return self

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _same
    __and__ = __rand__ = __or__ = __ror__ = __xor__ = __rxor__ = _same
    __invert__ = __neg__ = _same
    __hash__ = object.__hash__

    def __repr__(self):
        return "<skipped: %s>" % self._label


def unwrap(value, where):
    """A plain value for a task's input or a workflow's output: Bools become
    bools (inside lists, tuples, dicts and sets too); Void becomes None;
    a Skipped value or an unfinished conditional is refused."""
    if isinstance(value, Bool):
        return value._value
    if isinstance(value, Void):
        return None
    if type(value) is Outputs:
        value = list(value)
    if isinstance(value, Skipped):
        value._refuse(where)
    if isinstance(value, (ConditionalSection, _Condition, _Case)):
        raise WorkflowError("%s: conditional %r is not finished: a chain ends with .else_().then(...) or "
                            ".else_().fail(...)" % (where, value._section.name))
    if isinstance(value, Node):
        raise WorkflowError("%s: got the node of %s; use its outputs (node.o0, node.outputs[...])"
                            % (where, value._label))
    t = type(value)
    if t in (list, tuple, set, frozenset) or (isinstance(value, tuple) and hasattr(value, "_fields")):
        items = [unwrap(v, where) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        if hasattr(value, "_fields"):
            return t._make(items)
        return t(items)
    if t is dict:
        out = {k: unwrap(v, where) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    return value


# -- the call hook ---------------------------------------------------------------------------

def _label(entity):
    from hearth._actor import ActorTask, MappedTask
    from hearth._workflow import LaunchPlan

    if isinstance(entity, MappedTask):
        return "map_task(%s)" % entity.task.__qualname__
    if isinstance(entity, ActorTask):
        return "task %s" % entity.__qualname__
    if isinstance(entity, DynamicTask):
        return "dynamic %s" % entity.__qualname__
    if isinstance(entity, Workflow):
        return "workflow %s" % entity.__qualname__
    if isinstance(entity, LaunchPlan):
        return "launch plan %s" % entity.name
    if isinstance(entity, Echo):
        return "Echo %s" % entity.name
    return repr(entity)


def _returns(entity):
    """The declared output type: Parameter.empty when undeclared."""
    from hearth._actor import ActorTask, MappedTask
    from hearth._workflow import LaunchPlan

    if isinstance(entity, (ActorTask, Workflow)):
        return entity.signature.returns
    if isinstance(entity, LaunchPlan):
        return entity.workflow.signature.returns
    if isinstance(entity, Echo):
        return entity.returns
    if isinstance(entity, MappedTask):
        return list
    return _empty()


def _empty():
    import inspect  # not at import: a module of tasks imports this inside replicas too

    return inspect.Parameter.empty


def _is_void(hint):
    return hint is None or hint is type(None) or hint is _empty()


def _output_names(hint):
    """flytekit's output names for a return annotation: a NamedTuple's
    fields, ``o0``, ``o1``... for a tuple, none for no output."""
    import typing

    if _is_void(hint):
        return []
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
        return list(hint._fields)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args and args[-1] is not Ellipsis and args != ((),):
        return ["o%d" % i for i in range(len(args))]
    return ["o0"]


def _skipped_result(entity, flow):
    label = _label(entity)
    section = flow.sections[-1] if flow.sections else None
    hint = _returns(entity)
    names = _output_names(hint)
    if len(names) > 1 or (isinstance(hint, type) and hasattr(hint, "_fields")):
        items = [Skipped("output %s of %s" % (n, label), section) for n in names]
        if isinstance(hint, type) and hasattr(hint, "_fields"):
            return hint._make(items)
        return tuple(items)
    return Skipped(label, section)


def _check_names(entity, args, kwargs):
    """The inputs of a skipped call are not checked by type (they may be
    skipped values) but their names are, so a typo in an untaken branch is
    still found."""
    from hearth._actor import ActorTask
    from hearth._typecheck import InputError

    if isinstance(entity, (ActorTask, Workflow)):
        sig = entity.signature
        inputs = [(n, d is not _empty()) for n, _, d in sig.inputs()]
        var_kw = sig.var_kw
    elif isinstance(entity, Echo):
        inputs = [(n, False) for n in entity.inputs]
        var_kw = False
    else:
        return
    names = [n for n, _ in inputs]
    label = _label(entity)
    if len(args) > len(names):
        raise InputError("%s takes %d inputs, got %d positional arguments" % (label, len(names), len(args)))
    given = set(names[:len(args)]) | set(kwargs)
    for k in kwargs:
        if k not in names and not var_kw:
            raise InputError("%s got an unexpected input %r (its inputs: %s)" % (label, k, ", ".join(names) or "none"))
    for n, has_default in inputs:
        if n not in given and not has_default:
            raise InputError("%s missing required input %r" % (label, n))


class Outputs(list):
    """A map task's results inside a workflow body: a list that also takes
    flytekit's ``.with_overrides(...)`` (resources, retries: not applied
    per call in Hearth; the environment's apply). A plain list again
    wherever it is passed on or returned."""

    def with_overrides(self, *args, **kwargs):
        return self


def _wrap(entity, result, seq):
    label = _label(entity)
    if type(result) is list:
        from hearth._actor import MappedTask

        if isinstance(entity, MappedTask):
            return Outputs(result)
    if result is None and _is_void(_returns(entity)):
        return Void(seq, label)
    if type(result) is bool:
        return Bool(result, seq, "the output of %s" % label)
    if isinstance(result, tuple) and any(type(v) is bool for v in result):
        items = [Bool(v, seq, "an output of %s" % label) if type(v) is bool else v for v in result]
        return type(result)._make(items) if hasattr(result, "_fields") else tuple(items)
    return result


def call(entity, args, kwargs, run):
    """Runs ``run(args, kwargs)`` for a call of ``entity``; inside a workflow
    body: nothing when a branch is skipped, inputs unwrapped, the result
    wrapped (see the module's doc)."""
    flow = _FLOW.get()
    if flow is None:
        return run(args, kwargs)
    if flow.skipping:
        _check_names(entity, args, kwargs)
        return _skipped_result(entity, flow)
    label = _label(entity)
    args = tuple(unwrap(a, "argument %d of %s" % (i + 1, label)) for i, a in enumerate(args))
    kwargs = {k: unwrap(v, "input %r of %s" % (k, label)) for k, v in kwargs.items()}
    if _holds(entity):
        if hasattr(entity, "signature"):
            entity.signature.bind(args, kwargs)  # refused now, where the call is, not when it runs
        void = Void(None, label, lambda: run(args, kwargs))
        flow.held.append(void)
        return void
    flush(flow)
    seq = next(_SEQ)
    return _wrap(entity, run(args, kwargs), seq)


def _holds(entity):
    """Whether a call of ``entity`` has no output to wait for (see the
    module's doc)."""
    from hearth._actor import ActorTask
    from hearth._workflow import LaunchPlan

    if isinstance(entity, (ActorTask, Workflow)):
        hint = entity.signature.returns
        plain = not isinstance(entity, ActorTask) or getattr(entity, "_plain", False)
    elif isinstance(entity, LaunchPlan):
        hint, plain = entity.workflow.signature.returns, True
    else:
        return False
    return hint is None or hint is type(None) or (plain and hint is _empty())


def run_body(wf, kwargs, proxy_inputs=True):
    """Runs a workflow's (or dynamic's) function with checked inputs as a
    body: its own flow state, open conditionals refused at the end, the
    output unwrapped."""
    if _in_worker():  # a workflow a task calls inside its replica: plain Python, as before
        return wf._hearth_fn(**kwargs)
    label = _label(wf)
    flow = _Flow(label)
    if proxy_inputs:
        kwargs = {k: Bool(v, None, "input %r of %s" % (k, label)) if type(v) is bool else v
                  for k, v in kwargs.items()}
    token = _FLOW.set(flow)
    try:
        result = wf._hearth_fn(**kwargs)
        flush(flow)
        if flow.sections:
            raise WorkflowError("%s: conditional %s %s not finished: a chain ends with .else_().then(...) or "
                                ".else_().fail(...)" % (label, ", ".join(repr(s.name) for s in flow.sections),
                                                        "is" if len(flow.sections) == 1 else "are"))
    finally:
        _FLOW.reset(token)
    return _declared(wf, unwrap(result, "the output of %s" % label), label)


def _declared(wf, value, label):
    """A workflow's output as its return annotation declares it (see
    ``hearth._typecheck.conform``): ``-> float`` gives a float, a tuple
    annotation a tuple, ``-> None`` nothing."""
    hint = wf.signature.returns
    if hint is _empty():
        return value
    if hint is None or hint is type(None):
        return None
    from hearth._typecheck import InputError, conform

    try:
        return conform(value, hint, "the output of %s" % label)
    except InputError as e:
        raise WorkflowError(str(e)) from None


# -- conditional -------------------------------------------------------------------------------

def _truth(expr, where):
    if isinstance(expr, Bool):
        return expr._value
    if isinstance(expr, bool):
        return expr
    if type(expr).__name__ == "bool_" and type(expr).__module__ == "numpy":
        return bool(expr)
    if isinstance(expr, Skipped):
        expr._refuse(where)
    if expr is None:
        raise WorkflowError("%s: required an expression, got None" % where)
    shown = repr(expr)
    raise WorkflowError("%s: expected a condition -- a comparison such as x > 5, several joined with & or |, or "
                        "flag.is_true() -- got %s %s" % (where, type(expr).__name__,
                                                           shown if len(shown) <= 60 else shown[:57] + "..."))


class ConditionalSection(object):
    """``conditional(name)``: ``.if_(expr).then(x)``, then any number of
    ``.elif_(expr).then(y)``, then ``.else_().then(z)`` or ``.else_().fail(msg)``."""

    def __init__(self, flow, name):
        self._section = self
        self.name = name
        self._flow = flow
        self._outer = flow.skipping  # a section inside a skipped branch skips all its branches
        self._cases = []
        self._selected = None
        self._value = None
        self.closed = False
        flow.sections.append(self)

    def if_(self, expr):
        if self._cases:
            raise WorkflowError("conditional %r: if_() was already given; continue with elif_() or else_()" % self.name)
        return self._start("if_", expr)

    def _start(self, stmt, expr, last=False):
        if self.closed:
            raise WorkflowError("conditional %r is already finished" % self.name)
        if self._cases and not self._cases[-1].ended:
            raise WorkflowError("conditional %r: %s() after %s() without .then() or .fail()"
                                % (self.name, stmt, self._cases[-1].stmt))
        case = _Case(self, stmt, last)
        self._cases.append(case)
        if self._outer or self._selected is not None:
            take = False
        else:
            take = True if last else _truth(expr, "conditional %r .%s()" % (self.name, stmt))
        if take:
            self._selected = case
        self._flow.skipping = self._outer or not take
        return case

    def _end(self, case, value, fail):
        if case.ended:
            raise WorkflowError("conditional %r: this %s() already has its .then() or .fail()" % (self.name, case.stmt))
        case.ended = True
        sections = self._flow.sections
        if not sections or sections[-1] is not self:
            inner = sections[sections.index(self) + 1:] if self in sections else []
            raise WorkflowError("conditional %r: conditional %s inside it is not finished: a chain ends with "
                                ".else_().then(...) or .else_().fail(...)"
                                % (self.name, ", ".join(repr(s.name) for s in inner) or "?"))
        if case is self._selected:
            if fail is not None:
                self._close()
                raise ConditionFailed(self.name, fail)
            self._value = value
        if case.last:
            self._close()
            if self._selected is None:  # the whole section was in a skipped branch
                return Skipped("conditional %r" % self.name, sections[-1] if sections else None)
            return self._value
        # Until a branch is taken, the next elif_'s expression runs as written.
        self._flow.skipping = self._outer or self._selected is not None
        return _Condition(self)

    def _close(self):
        self.closed = True
        self._flow.sections.pop()
        self._flow.skipping = self._outer

    def __repr__(self):
        return "conditional(%r) %s" % (self.name, "".join(c.stmt + "()" for c in self._cases))


class _Case(object):
    def __init__(self, section, stmt, last):
        self._section = section
        self.stmt = stmt
        self.last = last
        self.ended = False

    def then(self, p):
        return self._section._end(self, p, None)

    def fail(self, err):
        return self._section._end(self, None, str(err))

    def __repr__(self):
        return "%s()" % self.stmt


class _Condition(object):
    def __init__(self, section):
        self._section = section

    def elif_(self, expr):
        return self._section._start("elif_", expr)

    def else_(self):
        return self._section._start("else_", None, last=True)

    def __repr__(self):
        return repr(self._section)


def conditional(name):
    """flytekit's ``conditional``: in a workflow (or dynamic) body only."""
    flow = _FLOW.get()
    if flow is None:
        if _in_worker():
            raise WorkflowError("conditional(%r): a workflow with conditionals runs in the caller's process, not "
                                "inside a task's replica" % (name,))
        raise WorkflowError("conditional(%r) can only be used inside a @workflow or @dynamic body" % (name,))
    return ConditionalSection(flow, name)


# -- Echo, create_node ------------------------------------------------------------------------

class Echo(object):
    """flytekit's ``Echo(name, inputs={"a": float})``: a task without a
    container that returns its inputs (one: that value; several: a tuple in
    order). It runs in the caller's process; hearthd is never asked."""

    def __init__(self, name, inputs=None, **kwargs):
        import typing

        if not isinstance(name, str) or not name:
            raise TypeError("Echo: name must be a non-empty string, got %r" % (name,))
        if inputs is not None and not isinstance(inputs, dict):
            raise TypeError("Echo %s: inputs must be a dict of name to type, got %r" % (name, inputs))
        self.name = name
        self.inputs = dict(inputs or {})
        types = list(self.inputs.values())
        self.returns = None if not types else types[0] if len(types) == 1 else typing.Tuple[tuple(types)]

    def __call__(self, *args, **kwargs):
        return call(self, args, kwargs, self._echo)

    def _echo(self, args, kwargs):
        from hearth._typecheck import InputError, check_value

        names = list(self.inputs)
        if len(args) > len(names):
            raise InputError("Echo %s takes %d inputs (%s), got %d positional arguments"
                             % (self.name, len(names), ", ".join(names) or "none", len(args)))
        values = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in self.inputs:
                raise InputError("Echo %s got an unexpected input %r (its inputs: %s)"
                                 % (self.name, k, ", ".join(names) or "none"))
            if k in values:
                raise InputError("Echo %s got input %r twice" % (self.name, k))
            values[k] = v
        for n in names:
            if n not in values:
                raise InputError("Echo %s missing required input %r" % (self.name, n))
            check_value(values[n], self.inputs[n], "Echo %s input %r" % (self.name, n))
        out = [values[n] for n in names]
        return None if not out else out[0] if len(out) == 1 else tuple(out)

    def __repr__(self):
        return "<hearth Echo %s>" % self.name


class Node(_Ordered):
    """What ``create_node`` returns: the call already ran; its outputs are
    attributes (``o0``, ``o1``..., or a NamedTuple's field names) and
    ``outputs`` (a dict)."""

    def __init__(self, label, seq, outputs):
        self._label = label
        self._seq = seq
        self._outputs = outputs

    @property
    def outputs(self):
        return self._outputs

    @property
    def name(self):
        return self._label

    id = name

    def with_overrides(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        outputs = self.__dict__.get("_outputs") or {}
        if name in outputs:
            return outputs[name]
        raise AttributeError("node of %s has no output %r (its outputs: %s)"
                             % (self.__dict__.get("_label"), name, ", ".join(outputs) or "none"))

    def __repr__(self):
        return "<node of %s>" % self._label


def create_node(entity, *args, **kwargs):
    """flytekit's ``create_node(entity, **inputs)``: runs the call now and
    returns a ``Node`` (outputs as attributes, ``>>``, ``runs_before``)."""
    from hearth._actor import ActorTask, MappedTask
    from hearth._workflow import LaunchPlan

    if args:
        raise TypeError("create_node: only keyword arguments pass inputs, as in flytekit; got %d positional"
                        % len(args))
    if not isinstance(entity, (ActorTask, MappedTask, Workflow, LaunchPlan, Echo)):
        raise TypeError("create_node: expected a task, workflow, launch plan or Echo, got %r" % (entity,))
    label = _label(entity)
    flow = _FLOW.get()
    if flow is not None and flow.skipping:
        _check_names(entity, (), kwargs)
        return Skipped("the node of %s" % label, flow.sections[-1] if flow.sections else None)
    result = entity(**kwargs)
    seq = next(_SEQ)  # after the call: held calls it let run went first
    names = _output_names(_returns(entity))
    if isinstance(result, Void):
        node = Node(label, result._seq, {})
        node._void = result  # held: `>>` orders the call itself
        return node
    if not names:
        outputs = {}
    elif len(names) == 1 and not (isinstance(result, tuple) and hasattr(result, "_fields")):
        outputs = {names[0]: result}
    else:
        outputs = dict(zip(names, result))
    return Node(label, seq, outputs)


# -- dynamic -----------------------------------------------------------------------------------

class DynamicTask(Workflow):
    """flytekit's ``@dynamic`` (and union's ``@actor.dynamic``). In Flyte the
    body runs in a container and builds a sub-workflow from its concrete
    inputs; in Hearth it runs in the caller's process like a workflow body
    (its task calls go to their environments' replicas), with its inputs
    checked like a task's and kept plain (concrete, as in Flyte)."""

    def __init__(self, fn, options=None, environment=None):
        Workflow.__init__(self, fn, options)
        self.environment = environment
        ignored = sorted(k for k, v in self.options.items() if v)
        if ignored:
            warnings.warn("dynamic %s: %s not applied by Hearth (a dynamic's body runs in the caller's process)"
                          % (fn.__qualname__, ", ".join(ignored)), stacklevel=3)

    @property
    def signature(self):
        if self._sig is None:
            from hearth._typecheck import Signature

            self._sig = Signature(self._hearth_fn, "task")
        return self._sig

    def _run(self, args, kwargs):
        return run_body(self, self.signature.bind(args, kwargs), proxy_inputs=False)

    def __repr__(self):
        return "<hearth dynamic %s>" % self.name


def dynamic(_task_function=None, *, _environment=None, **options):
    """``@dynamic`` or ``@dynamic(cache=True, requests=...)``: flytekit's
    task options are accepted; those that do not apply warn once."""
    def decorate(fn):
        if not callable(fn):
            raise TypeError("dynamic: expected a function, got %r" % (fn,))
        return DynamicTask(fn, options, _environment)

    return decorate if _task_function is None else decorate(_task_function)


# -- launch plan schedules and notifications: accepted, not applied ---------------------------

class _Described(object):
    def __init__(self, *args, **kwargs):
        self._args = args
        self._kwargs = kwargs

    def __eq__(self, other):
        return type(other) is type(self) and (other._args, other._kwargs) == (self._args, self._kwargs)

    def __hash__(self):
        return hash(type(self).__name__)

    def __repr__(self):
        parts = [repr(a) for a in self._args] + ["%s=%r" % kv for kv in sorted(self._kwargs.items())]
        return "%s(%s)" % (type(self).__name__, ", ".join(parts))


class CronSchedule(_Described):
    """flytekit's ``CronSchedule(schedule=..., kickoff_time_input_arg=...)``; Hearth does not schedule."""


class FixedRate(_Described):
    """flytekit's ``FixedRate(duration, kickoff_time_input_arg=...)``; Hearth does not schedule."""


class Email(_Described):
    """flytekit's ``Email(phases, recipients_email)``; Hearth sends no notifications."""


class Slack(_Described):
    pass


class PagerDuty(_Described):
    pass


class WorkflowExecutionPhase(object):
    """The phases notifications name (flytekit's constants)."""
    UNDEFINED, QUEUED, RUNNING, SUCCEEDING, SUCCEEDED, FAILING, FAILED, ABORTED, TIMED_OUT, ABORTING = range(10)
