"""Checking a call's keyword arguments against the function's type hints.

As flytekit does, before anything is sent: tasks and workflows take keyword
arguments only; unknown and missing ones are refused; each value must match
its annotation. Understood: ``int`` (not ``bool``), ``float`` (``int`` too),
``str``, ``bool``, ``bytes``, ``None``, ``Any``, ``list[T]``/``List[T]``,
``dict[K, V]``, ``tuple[...]``, ``set[T]``, ``Optional``/``Union``/``X | Y``,
``Literal``, and classes (``isinstance``: dataclasses, enums, datetimes, ...).
Anything else (type variables, protocols, strings that do not resolve) is
accepted as is.
"""

import inspect
import typing

__all__ = ["Signature", "InputError", "check_value", "describe"]

_NONE = type(None)


class InputError(TypeError):
    """Inputs that do not fit the signature; nothing was sent."""


def describe(hint):
    if hint is _NONE or hint is None:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__ if hint.__module__ == "builtins" else "%s.%s" % (hint.__module__, hint.__qualname__)
    return repr(hint).replace("typing.", "")


def _type_name(value):
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else "%s.%s" % (t.__module__, t.__qualname__)


def check_value(value, hint, where):
    """Raises TypeError naming ``where``, the expected type and the value's."""
    problem = _problem(value, hint, where)
    if problem is not None:
        raise InputError(problem)


def _mismatch(value, hint, where):
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return "%s: expected %s, got %s %s" % (where, describe(hint), _type_name(value), shown)


def _problem(value, hint, where):
    if hint is typing.Any or hint is inspect.Parameter.empty or hint is object:
        return None
    if hint is None or hint is _NONE:
        return None if value is None else _mismatch(value, hint, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        for a in args:
            if _problem(value, a, where) is None:
                return None
        return _mismatch(value, hint, where)
    if origin is typing.Literal:
        return None if value in args else "%s: expected one of %r, got %r" % (where, list(args), value)
    if origin is typing.Annotated if hasattr(typing, "Annotated") else False:
        return _problem(value, args[0], where)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            return _mismatch(value, hint, where)
        if args:
            for i, v in enumerate(value):
                p = _problem(v, args[0], "%s[%d]" % (where, i))
                if p:
                    return p
        return None
    if origin in (set, frozenset):
        if not isinstance(value, origin):
            return _mismatch(value, hint, where)
        if args:
            for v in value:
                p = _problem(v, args[0], "%s element" % where)
                if p:
                    return p
        return None
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            return _mismatch(value, hint, where)
        if len(args) == 2:
            for k, v in value.items():
                p = _problem(k, args[0], "%s key %r" % (where, k)) or _problem(v, args[1], "%s[%r]" % (where, k))
                if p:
                    return p
        return None
    if origin is tuple:
        if not isinstance(value, tuple):
            return _mismatch(value, hint, where)
        if len(args) == 2 and args[1] is Ellipsis:
            for i, v in enumerate(value):
                p = _problem(v, args[0], "%s[%d]" % (where, i))
                if p:
                    return p
        elif args:
            if len(args) != len(value):
                return "%s: expected a tuple of %d, got %d items" % (where, len(args), len(value))
            for i, (v, a) in enumerate(zip(value, args)):
                p = _problem(v, a, "%s[%d]" % (where, i))
                if p:
                    return p
        return None
    if origin is not None:
        return None if not isinstance(origin, type) or isinstance(value, origin) else _mismatch(value, hint, where)
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else _mismatch(value, hint, where)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else _mismatch(value, hint, where)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return None
        accepts = getattr(hint, "_hearth_accepts", None)  # FlyteFile, FlyteDirectory: a path, as flytekit
        return None if accepts is not None and accepts(value) else _mismatch(value, hint, where)
    return None


class Signature(object):
    """A function's parameters and resolved hints, made once per task."""

    def __init__(self, fn, kind="task"):
        self.name = getattr(fn, "__name__", repr(fn))
        self.kind = kind
        self.signature = inspect.signature(fn)
        try:
            self.hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable forward references: check what resolves
            self.hints = {}
            for k, v in getattr(fn, "__annotations__", {}).items():
                if not isinstance(v, str):
                    self.hints[k] = v
        self.params = [p for p in self.signature.parameters.values()
                       if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        self.var_kw = any(p.kind == p.VAR_KEYWORD for p in self.signature.parameters.values())
        self.names = [p.name for p in self.params]
        self.returns = self.hints.get("return", inspect.Parameter.empty)

    def inputs(self):
        """``[(name, hint, default or Parameter.empty)]``."""
        return [(p.name, self.hints.get(p.name, inspect.Parameter.empty), p.default) for p in self.params]

    def bind(self, args, kwargs):
        """The keyword arguments with defaults filled in, checked."""
        if args:
            shown = ", ".join("%s=..." % n for n in self.names[:len(args)]) or "..."
            raise InputError("%s() takes keyword arguments only, as Flyte %ss do: call %s(%s)"
                            % (self.name, self.kind, self.name, shown))
        out = {}
        for key in kwargs:
            if key not in self.names and not self.var_kw:
                known = ", ".join(self.names) if self.names else "none"
                raise InputError("%s() got an unexpected keyword argument %r (its inputs: %s)" % (self.name, key, known))
        for p in self.params:
            if p.name in kwargs:
                value = kwargs[p.name]
            elif p.default is not p.empty:
                value = p.default
            else:
                raise InputError("%s() missing required input %r (%s)"
                                % (self.name, p.name, describe(self.hints.get(p.name, typing.Any))))
            hint = self.hints.get(p.name)
            if hint is not None and p.name in kwargs:  # defaults are the author's business
                check_value(value, hint, "%s() input %r" % (self.name, p.name))
            out[p.name] = value
        for key, value in kwargs.items():
            if key not in out:
                out[key] = value
        return out
