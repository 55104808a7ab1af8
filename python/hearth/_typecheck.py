"""Values against type hints: a call's inputs before anything is sent, a
task's result in the replica and again on the caller.

``conform(value, hint, where)`` checks a value against its annotation and
returns it as the declared type, with the conversions flytekit's type
engine makes, so that what a task receives and returns is exactly what its
signature says:

* ``float``: an ``int`` (not ``bool``) becomes a ``float``; ``int`` takes
  ints only, never ``bool``; ``str``, ``bool``, ``bytes``, ``None`` exactly.
* ``list[T]``, ``dict[K, V]``, ``set[T]``, ``frozenset[T]`` and
  ``tuple[...]`` (a list of the right length becomes the tuple) conform
  their items; ``Iterator[T]``, ``Iterable[T]`` and ``Generator[T, ...]``
  take any iterable and give a list (a generator is run to its end, as
  flytekit materialises it).
* A ``NamedTuple`` class takes its instances, a plain tuple or list of its
  length (rebuilt as the named tuple), and, when it has one field, the bare
  value of that field, as flytekit lets a task return it.
* ``Optional``/``Union``/``X | Y``: the first member the value fits
  without a conversion, else the first it fits with one. ``Literal``:
  one of its values. ``Annotated[T, ...]``: ``T``.
* Other classes (dataclasses, enums, datetimes, Decimal, ...):
  ``isinstance``; ``FlyteFile`` and ``FlyteDirectory`` also take a path
  (``str`` or ``os.PathLike``) and make it one, as flytekit does; an
  ``os.PathLike`` annotation is a file too (``FlyteFile``).
* ``Any``, ``object``, type variables, protocols, ``TypedDict`` (which
  ``isinstance`` cannot check) and strings that do not resolve accept
  anything as it is.

A value that does not fit raises ``InputError`` (a ``TypeError``) naming
``where``, the declared type and the value's. Only what changes is copied.
Tasks and workflows take their inputs as keywords or, as flytekit does
since 1.13, positionally in the order of the signature.
"""

import os
import typing

__all__ = ["Signature", "InputError", "check_value", "conform", "describe", "hints_of"]

_NONE = type(None)


class InputError(TypeError):
    """Inputs that do not fit the signature; nothing was sent."""


class _Empty(object):
    """``inspect.Parameter.empty`` without importing inspect in replicas."""


def _is_empty(hint):
    return hint is _Empty or getattr(hint, "__name__", None) == "_empty" and \
        getattr(hint, "__module__", None) == "inspect"


def describe(hint):
    if hint is _NONE or hint is None:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__ if hint.__module__ == "builtins" else "%s.%s" % (hint.__module__, hint.__qualname__)
    return repr(hint).replace("typing.", "")


def _type_name(value):
    t = type(value)
    return t.__name__ if t.__module__ == "builtins" else "%s.%s" % (t.__module__, t.__qualname__)


class _Mismatch(Exception):
    pass


def _mismatch(value, hint, where):
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return _Mismatch("%s: expected %s, got %s %s" % (where, describe(hint), _type_name(value), shown))


def _is_namedtuple(hint):
    return isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")


_ITERATORS = None


def _iterator_origins():
    global _ITERATORS
    if _ITERATORS is None:
        import collections.abc as abc

        _ITERATORS = (abc.Iterator, abc.Iterable, abc.Generator, typing.Iterator, typing.Iterable,
                      typing.Generator)
    return _ITERATORS


def _items(values, hint, where, strict, fmt):
    """Conforms each item of a sequence; the same list when nothing changed."""
    out = None
    for i, v in enumerate(values):
        c = _conform(v, hint, fmt % (where, i), strict)
        if c is not v and out is None:
            out = list(values[:i])
        if out is not None:
            out.append(c)
    return values if out is None else out


def _conform(value, hint, where, strict):
    if hint is typing.Any or hint is object or _is_empty(hint):
        return value
    if hint is None or hint is _NONE:
        if value is None:
            return value
        raise _mismatch(value, hint, where)
    if hint is float:
        t = type(value)
        if t is float or isinstance(value, float):
            return value
        if not strict and isinstance(value, int) and t is not bool:
            return float(value)
        raise _mismatch(value, hint, where)
    if hint is int:
        if isinstance(value, int) and type(value) is not bool:
            return value
        raise _mismatch(value, hint, where)
    if hint is str or hint is bool or hint is bytes:
        if isinstance(value, hint):
            return value
        raise _mismatch(value, hint, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        for s in ((True, False) if not strict else (True,)):
            for a in args:
                try:
                    return _conform(value, a, where, s)
                except _Mismatch:
                    pass
        raise _mismatch(value, hint, where)
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch("%s: expected one of %r, got %r" % (where, list(args), value))
    if getattr(typing, "Annotated", None) is not None and origin is typing.Annotated:
        return _conform(value, args[0], where, strict)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise _mismatch(value, hint, where)
        return _items(value, args[0], where, strict, "%s[%d]") if args else value
    if origin is not None and origin in _iterator_origins():
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise _mismatch(value, hint, where)
        items = value if type(value) is list else list(value)
        return _items(items, args[0], where, strict, "%s[%d]") if args else items
    if origin in (set, frozenset):
        if not isinstance(value, origin):
            raise _mismatch(value, hint, where)
        if args:
            changed = False
            out = []
            for v in value:
                c = _conform(v, args[0], "%s element" % where, strict)
                changed = changed or c is not v
                out.append(c)
            if changed:
                return origin(out)
        return value
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise _mismatch(value, hint, where)
        if len(args) == 2:
            out = None
            for k, v in value.items():
                ck = _conform(k, args[0], "%s key %r" % (where, k), strict)
                cv = _conform(v, args[1], "%s[%r]" % (where, k), strict)
                if (ck is not k or cv is not v) and out is None:
                    out = {}
                    for kk, vv in value.items():
                        if kk is k:
                            break
                        out[kk] = vv
                if out is not None:
                    out[ck] = cv
            if out is not None:
                return out
        return value
    if origin is tuple:
        if type(value) is list and not strict:
            value = tuple(value)
        if not isinstance(value, tuple):
            raise _mismatch(value, hint, where)
        if len(args) == 2 and args[1] is Ellipsis:
            items = _items(value, args[0], where, strict, "%s[%d]")
        elif args == ((),):  # Tuple[()]
            items = value if not value else None
            if items is None:
                raise _Mismatch("%s: expected an empty tuple, got %d items" % (where, len(value)))
        elif args:
            if len(args) != len(value):
                raise _Mismatch("%s: expected a tuple of %d, got %d items" % (where, len(args), len(value)))
            items = value
            out = None
            for i, (v, a) in enumerate(zip(value, args)):
                c = _conform(v, a, "%s[%d]" % (where, i), strict)
                if c is not v and out is None:
                    out = list(value[:i])
                if out is not None:
                    out.append(c)
            items = value if out is None else out
        else:
            items = value
        return value if items is value else tuple(items)
    if origin is not None:
        if not isinstance(origin, type) or _isinstance(value, origin):
            return value
        raise _mismatch(value, hint, where)
    if _is_namedtuple(hint):
        return _namedtuple(value, hint, where, strict)
    if hint is os.PathLike and not strict and isinstance(value, (str, os.PathLike)):
        # flytekit reads an os.PathLike output or input as a file: its content travels.
        from hearth._files import FlyteDirectory, FlyteFile

        return value if isinstance(value, (FlyteFile, FlyteDirectory)) else FlyteFile(value)
    if isinstance(hint, type):
        if _isinstance(value, hint):
            return value
        accepts = getattr(hint, "_hearth_accepts", None)  # FlyteFile, FlyteDirectory: a path, as flytekit
        if accepts is not None and not strict and accepts(value):
            return hint(value)
        raise _mismatch(value, hint, where)
    return value


def _isinstance(value, cls):
    try:
        return isinstance(value, cls)
    except TypeError:  # TypedDict, Protocols that are not runtime_checkable: nothing to check
        return True


def _namedtuple(value, hint, where, strict):
    fields = hint._fields
    if not isinstance(value, hint):
        if isinstance(value, (tuple, list)) and len(value) == len(fields) and not strict \
                and not (len(fields) == 1 and _fits(value, _field_hints(hint).get(fields[0]))):
            value = hint(*value)
        elif len(fields) == 1 and not strict:
            value = hint(value)
        else:
            raise _mismatch(value, hint, where)
    hints = _field_hints(hint)
    out = None
    for i, (f, v) in enumerate(zip(fields, value)):
        c = _conform(v, hints.get(f, typing.Any), "%s.%s" % (where, f), strict)
        if c is not v and out is None:
            out = list(value[:i])
        if out is not None:
            out.append(c)
    return value if out is None else hint(*out)


def _fits(value, hint):
    try:
        _conform(value, hint, "", True)
        return True
    except _Mismatch:
        return False


def _field_hints(cls):
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return {k: v for k, v in getattr(cls, "__annotations__", {}).items() if not isinstance(v, str)}


def conform(value, hint, where):
    """The value as ``hint`` declares it (see the module docstring), or
    InputError naming ``where``."""
    try:
        return _conform(value, hint, where, False)
    except _Mismatch as e:
        raise InputError(str(e)) from None


def check_value(value, hint, where):
    """Raises InputError naming ``where``, the expected type and the value's."""
    conform(value, hint, where)


def hints_of(fn):
    """A function's resolved type hints; what does not resolve is left out.
    A return annotation written as a tuple of types, ``-> (int, str)``
    (flytekit's multiple outputs), is ``Tuple[int, str]``."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: what resolves
        hints = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if not isinstance(v, str)}
    returns = hints.get("return")
    if type(returns) is tuple and returns:
        hints["return"] = typing.Tuple[returns]
    return hints


class Signature(object):
    """A function's parameters and resolved hints, made once per task."""

    def __init__(self, fn, kind="task"):
        import inspect

        self.name = getattr(fn, "__name__", repr(fn))
        self.kind = kind
        self.signature = inspect.signature(fn)
        self.hints = hints_of(fn)
        self.params = [p for p in self.signature.parameters.values()
                       if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        self.var_kw = any(p.kind == p.VAR_KEYWORD for p in self.signature.parameters.values())
        self.names = [p.name for p in self.params]
        self.returns = self.hints.get("return", inspect.Parameter.empty)

    def inputs(self):
        """``[(name, hint, default or Parameter.empty)]``."""
        return [(p.name, self.hints.get(p.name, p.empty), p.default) for p in self.params]

    def bind(self, args, kwargs):
        """The inputs by name, with defaults filled in, checked and
        conformed to their hints. Positional arguments take the
        parameters in order."""
        if args:
            positional = [p for p in self.params if p.kind != p.KEYWORD_ONLY]
            if len(args) > len(positional):
                raise InputError("%s() takes %d positional input%s (%s) but %d were given"
                                 % (self.name, len(positional), "" if len(positional) == 1 else "s",
                                    ", ".join(p.name for p in positional) or "none", len(args)))
            named = dict(kwargs)
            for p, value in zip(positional, args):
                if p.name in named:
                    raise InputError("%s() got input %r twice: positionally and by keyword" % (self.name, p.name))
                named[p.name] = value
            kwargs = named
        out = {}
        for key in kwargs:
            if key not in self.names and not self.var_kw:
                known = ", ".join(self.names) if self.names else "none"
                raise InputError("%s() got an unexpected keyword argument %r (its inputs: %s)" % (self.name, key, known))
        for p in self.params:
            if p.name in kwargs:
                value = kwargs[p.name]
                hint = self.hints.get(p.name)
                if hint is not None:
                    value = conform(value, hint, "%s() input %r" % (self.name, p.name))
            elif p.default is not p.empty:
                value = p.default  # defaults are the author's business
            else:
                raise InputError("%s() missing required input %r (%s)"
                                % (self.name, p.name, describe(self.hints.get(p.name, typing.Any))))
            out[p.name] = value
        for key, value in kwargs.items():
            if key not in out:
                out[key] = value
        return out
