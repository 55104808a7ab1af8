"""Decoding task results on the caller: JSON as is, pickles restricted.

A result is made inside a replica, and a replica is not trusted with code
execution in the caller's process. ``$pickle`` values are loaded by
``RestrictedUnpickler``: the standard library's pure-Python unpickler with
its opcode table cut down and every step that could call code checked, so a
result can rebuild data and nothing else:

* Names (GLOBAL, STACK_GLOBAL) resolve through exact ``(module, name)``
  pairs, never by importing what the pickle names or following a dotted
  name: ``SAFE_NAMES`` (the safe standard types), or the task's own classes
  (``task_classes``: classes of the task's module, or of other modules of
  its top-level package, that its return annotation names, also inside
  ``list[...]``, ``dict[...]``, ``Optional[...]``, ... and in the field
  annotations of those classes).
* REDUCE (a call) calls only the standard types whose pickles are calls
  (``complex``, ``datetime``, ``Decimal``, ``OrderedDict``, ...), the task's
  enums and task classes that derive from those types, and a few guarded
  functions that check their arguments: ``copyreg._reconstructor`` with a
  builtin base, ``array``'s and numpy's rebuilders,
  ``getattr(zoneinfo.ZoneInfo, "_unpickle")``, ``getattr(E, name)`` for
  the task's enums ``E`` (how Python >= 3.11 pickles a member), which looks
  ``name`` up in ``E.__members__``, never as an attribute, and FlyteFile's
  and FlyteDirectory's rebuilders (plain names, bytes, bounded sizes: see
  ``hearth._files``). Arguments must be a tuple
  and hold no ``range`` (a constructor would expand it).
* NEWOBJ creates instances of the task's classes and ``uuid.UUID`` with
  ``cls.__new__`` (the plain object protocol): a task class whose own
  ``__reduce__`` calls it with arguments is refused.
* BUILD sets state only on instances of the task's classes (not enum
  members, which are shared), ``uuid.UUID`` and numpy arrays and dtypes;
  never on a class, and never a dunder attribute. A class's own
  ``__setstate__`` runs: that is the task's code.
* APPEND(S), SETITEM(S) and ADDITEMS never act on a class.
* INST and OBJ (protocols 0-1, which call what they name), EXT1/2/4 (the
  process-global extension registry), PERSID/BINPERSID and out-of-band
  buffers are refused outright.

A refusal raises ``hearth.UnsafeResult`` naming the task, what was refused
and the rule, before anything it names is called. ``HEARTH_TRUST_RESULTS=1``
loads results with ``pickle.loads``: anything, code included.
"""

import os
import pickle
import sys

from hearth import _protocol
from hearth._errors import HearthError, UnsafeResult

__all__ = ["RestrictedUnpickler", "SAFE_NAMES", "task_classes", "loads", "decode"]

ALLOWED = ("Results may hold JSON values, standard types (numbers, str, bytes, bytearray, list, tuple, dict, set, "
           "frozenset, range, slice, datetime, decimal.Decimal, fractions.Fraction, uuid.UUID, collections' "
           "OrderedDict, deque, Counter and defaultdict, pathlib paths, ipaddress, array, numpy arrays), "
           "FlyteFile and FlyteDirectory, and the "
           "task's own classes that its return annotation names; set HEARTH_TRUST_RESULTS=1 to trust this "
           "replica (its results may then run code in this process)")


class _Refused(Exception):
    def __init__(self, what, rule):
        Exception.__init__(self, what, rule)
        self.what, self.rule = what, rule

    def __str__(self):
        return "%s, which is not allowed: %s" % (self.what, self.rule)


class _Guarded(object):
    """A standard function a pickle may call, with its arguments checked
    whenever it is called (also later, e.g. as a defaultdict's factory)."""

    __slots__ = ("name", "fn", "check")

    def __init__(self, name, fn, check):
        self.name, self.fn, self.check = name, fn, check

    def __call__(self, *args):
        self.check(args)
        return self.fn(*args)

    def __repr__(self):
        return "<hearth guarded %s>" % self.name


# -- the table of safe names -----------------------------------------------------------
#
# (module, name) in a pickle -> (kind, where, attribute, check, build). kind:
# "value" (may only be passed around), "call" (REDUCE may call it), "new"
# (NEWOBJ may create it), "guard" (a _Guarded function). ``where``: the
# modules to import (the first that imports), fixed here, never taken from
# the pickle. ``check``: a function of the call's arguments. ``build``:
# whether BUILD may set the state of its instances ("exact" type, or
# "isinstance" for numpy, whose dtypes are subclasses).

SAFE_NAMES = {}


def _add(kind, modules, names, where=None, check=None, build=None):
    for m in modules:
        for n in names:
            SAFE_NAMES[(m, n)] = (kind, where or (m,), n, check, build)


def _bytearray_args(args):
    # bytearray(n) allocates n bytes: a few bytes of pickle, gigabytes here.
    if args and type(args[0]) not in (bytes, bytearray, str, list, tuple):
        raise _Refused("calls builtins.bytearray with %s" % _describe(args[0]),
                       "it is rebuilt from bytes, never from a size")


def _fraction_args(args):
    for a in args:
        if type(a) is int:
            continue
        if type(a) is str and a.lstrip("-").replace("/", "", 1).isdigit():
            continue
        raise _Refused("calls fractions.Fraction(%s)" % ", ".join(repr(x)[:40] for x in args),
                       "a Fraction is rebuilt from integers (or 'n/d')")


def _dtype_args(args):
    # numpy pickles a dtype as dtype(obj, align, copy=True); copy=False would
    # return numpy's shared dtype, whose state BUILD then overwrites.
    if len(args) != 3 or args[2] is not True:
        raise _Refused("calls numpy.dtype%r" % (args,), "a dtype is rebuilt as a copy (third argument True)")


_add("value", ["builtins"], ["int", "float", "bool", "str", "bytes", "list", "tuple", "dict", "object", "Ellipsis"])
_add("call", ["builtins"], ["complex", "slice", "range", "set", "frozenset"])
_add("call", ["builtins"], ["bytearray"], check=_bytearray_args)
_add("call", ["datetime"], ["date", "time", "datetime", "timedelta", "timezone"])
_add("call", ["decimal"], ["Decimal"])
_add("call", ["fractions"], ["Fraction"], check=_fraction_args)
_add("call", ["collections"], ["OrderedDict", "deque", "Counter", "defaultdict"])
_add("call", ["pathlib", "pathlib._local"], ["PurePath", "PurePosixPath", "PureWindowsPath", "Path", "PosixPath",
                                             "WindowsPath"], where=("pathlib",))
_add("call", ["ipaddress"], ["IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network", "IPv4Interface",
                             "IPv6Interface"])
_add("call", ["array"], ["array"])
_add("new", ["uuid"], ["UUID"], build="exact")
_add("value", ["zoneinfo"], ["ZoneInfo"])
_add("value", ["numpy"], ["ndarray"], build="isinstance")
_add("call", ["numpy"], ["dtype"], check=_dtype_args, build="isinstance")
_add("guard", ["copyreg"], ["_reconstructor"])
_add("guard", ["array"], ["_array_reconstructor"])
_add("guard", ["builtins"], ["getattr"])
_add("guard", ["numpy.core.multiarray", "numpy._core.multiarray"], ["_reconstruct", "scalar"],
     where=("numpy._core.multiarray", "numpy.core.multiarray"))
# FlyteFile and FlyteDirectory: their content, written into a new temporary directory (hearth._files).
_add("guard", ["hearth._files"], ["_rebuild_file", "_rebuild_dir"])

_RECONSTRUCTOR_BASES = (object, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset)
_resolved = {}


class _Missing(Exception):
    pass


def _import(where):
    import importlib

    err = None
    for m in where:
        try:
            return importlib.import_module(m)
        except ImportError as e:
            err = e
    raise _Missing(str(err))


def _guard(key, mod, name):
    """The _Guarded stand-in for a "guard" entry of SAFE_NAMES."""
    label = "%s.%s" % key
    fn = getattr(mod, name)
    if key[0] == "hearth._files":
        validate = getattr(mod, "check" + name)  # check_rebuild_file, check_rebuild_dir

        def check(args):
            try:
                validate(args)
            except mod.Refused as e:
                raise _Refused("calls %s with %s" % (label, e.what), e.rule)
        return _Guarded(label, fn, check)
    if key == ("copyreg", "_reconstructor"):
        def check(args):
            if len(args) != 3:
                raise _Refused("calls %s with %d arguments" % (label, len(args)), "it takes (class, base, state)")
            cls, base, state = args
            if not any(base is b for b in _RECONSTRUCTOR_BASES) or not isinstance(cls, type) \
                    or not issubclass(cls, base):
                raise _Refused("calls %s(%s, %s, ...)" % (label, _describe(cls), _describe(base)),
                               "its base must be object or a builtin type the class derives from")
            _check_args(label, (state,))
            if base in (bytes, bytearray) and type(state) is int:
                raise _Refused("calls %s with an int state" % label, "that would allocate that many bytes")
            _creatable(cls, "%s(%s, ...)" % (label, _describe(cls)))
        return _Guarded(label, fn, check)
    if key == ("array", "_array_reconstructor"):
        import array

        def check(args):
            if len(args) != 4 or not isinstance(args[0], type) or not issubclass(args[0], array.array) \
                    or type(args[3]) is not bytes:
                raise _Refused("calls %s%s" % (label, _short(args)), "it takes (array type, typecode, format, bytes)")
            _creatable(args[0], label)
        return _Guarded(label, fn, check)
    if key == ("builtins", "getattr"):
        # Only for the one method pickles of the standard types name this way.
        def getattr_zoneinfo(obj, attr):
            zi = sys.modules.get("zoneinfo")
            if zi is None or obj is not zi.ZoneInfo or attr != "_unpickle":
                raise _Refused("calls builtins.getattr(%s, %r)" % (_describe(obj), attr),
                               "getattr is only allowed as getattr(zoneinfo.ZoneInfo, '_unpickle')")

            def check_key(args):
                if len(args) != 2 or type(args[0]) is not str or type(args[1]) is not int:
                    raise _Refused("calls zoneinfo.ZoneInfo._unpickle%s" % _short(args), "it takes (key, int)")
            return _Guarded("zoneinfo.ZoneInfo._unpickle", zi.ZoneInfo._unpickle, check_key)

        def check(args):
            if len(args) != 2:
                raise _Refused("calls builtins.getattr%s" % _short(args),
                               "getattr is only allowed as getattr(zoneinfo.ZoneInfo, '_unpickle')")
        return _Guarded(label, getattr_zoneinfo, check)
    if name == "_reconstruct":
        def check(args):
            if len(args) != 3 or not isinstance(args[0], type) or not issubclass(args[0], mod.ndarray) \
                    or args[1] != (0,):
                raise _Refused("calls numpy's _reconstruct%s" % _short(args),
                               "it takes (ndarray type, (0,), dtype) as numpy writes it")
            _creatable(args[0], "numpy's _reconstruct(%s, ...)" % _describe(args[0]))
        return _Guarded(label, fn, check)
    if name == "scalar":
        import numpy

        def check(args):
            if not args or not isinstance(args[0], numpy.dtype) or len(args) > 2:
                raise _Refused("calls numpy's scalar%s" % _short(args), "it takes (dtype, data)")
        return _Guarded(label, fn, check)
    raise AssertionError(key)


def _resolve(key):
    """The object for a SAFE_NAMES entry: (kind, object, check, build)."""
    got = _resolved.get(key)
    if got is None:
        kind, where, name, check, build = SAFE_NAMES[key]
        mod = _import(where)
        obj = _guard(key, mod, name) if kind == "guard" else getattr(mod, name)
        got = _resolved[key] = (kind, obj, check, build)
    return got


# -- the task's own classes ------------------------------------------------------------

def task_classes(hint, caller_module, replica_module, limit=1000):
    """``{(module, qualname): class}`` for the classes of the task's module
    (``caller_module`` here, imported as ``replica_module`` in a replica)
    and of the rest of its top-level package that the return annotation
    ``hint`` names, inside generics too, and the classes their own field
    annotations name in turn. Objects are taken from the annotations, never
    imported by name."""
    import typing

    top = replica_module.split(".")[0]
    out = {}
    seen = set()
    todo = [hint]
    while todo and len(seen) < limit:
        h = todo.pop()
        if id(h) in seen or h is None or isinstance(h, (str, bytes, int, float)):
            continue
        seen.add(id(h))
        origin = typing.get_origin(h)
        if origin is not None:
            todo.append(origin)
            todo.extend(typing.get_args(h))
            continue
        if not isinstance(h, type):
            continue
        mod = getattr(h, "__module__", None)
        qual = getattr(h, "__qualname__", None)
        if type(mod) is not str or type(qual) is not str or "<locals>" in qual:
            continue
        if mod == caller_module:
            key = (replica_module, qual)
        elif mod.split(".")[0] == top and mod != "__main__":
            key = (mod, qual)
        else:
            continue
        out[key] = h
        try:
            fields = typing.get_type_hints(h)
        except Exception:  # an unresolvable forward reference: only what resolves
            fields = {k: v for k, v in getattr(h, "__annotations__", {}).items() if not isinstance(v, str)}
        todo.extend(fields.values())
    return out


# -- the unpickler ---------------------------------------------------------------------

def _describe(obj):
    if isinstance(obj, _Guarded):
        return obj.name
    if isinstance(obj, type):
        return "%s.%s" % (getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", "?"))
    n = type(obj).__name__
    return "%s %s object" % ("an" if n[:1].lower() in "aeiou" else "a", n)


def _short(args):
    return "(%s)" % ", ".join(_describe(a) if isinstance(a, type) else repr(a)[:40] for a in args)


def _check_args(label, args):
    for a in args:
        if type(a) is range:
            raise _Refused("calls %s with a range" % label, "a constructor would expand it")


def _creatable(cls, label):
    # An enum class's __new__ would return its shared members, whose state
    # BUILD could then overwrite.
    import enum

    if issubclass(cls, enum.Enum):
        raise _Refused("creates %s with %s" % (_describe(cls), label), "enum members are only looked up")


_OPCODES = {pickle.INST[0]: "INST (protocol 0-1 instance creation)",
            pickle.OBJ[0]: "OBJ (protocol 1 instance creation)",
            pickle.EXT1[0]: "EXT1 (the extension registry)", pickle.EXT2[0]: "EXT2 (the extension registry)",
            pickle.EXT4[0]: "EXT4 (the extension registry)", pickle.PERSID[0]: "PERSID (persistent ids)",
            pickle.BINPERSID[0]: "BINPERSID (persistent ids)"}
for _name in ("NEXT_BUFFER", "READONLY_BUFFER"):
    if hasattr(pickle, _name):
        _OPCODES[getattr(pickle, _name)[0]] = "%s (out-of-band buffers)" % _name


class _Dispatch(dict):
    def __missing__(self, code):
        raise _Refused("uses the pickle opcode %s" % _OPCODES.get(code, "0x%02x (unknown)" % code),
                       "the caller never loads it")


class RestrictedUnpickler(pickle._Unpickler):
    """See the module docstring. ``classes``: ``task_classes``' mapping."""

    def __init__(self, data, classes=None, task="?"):
        import io

        pickle._Unpickler.__init__(self, io.BytesIO(data))
        self.task = task
        self.classes = dict(classes or {})
        import enum

        self._user = {id(c): c for c in self.classes.values()}
        self._enums = {i for i, c in self._user.items() if issubclass(c, enum.Enum)}
        calls = {k for k, v in SAFE_NAMES.items() if v[0] == "call"}
        # A task class whose pickle is its standard base's call (a subclass
        # of datetime, OrderedDict, ...) may be called like that base.
        self._user_calls = {i for i, c in self._user.items()
                            if i in self._enums or any((getattr(b, "__module__", None), b.__qualname__) in calls
                                                       for b in c.__mro__[1:])}
        self._calls = {}    # id -> (object, check) of the standard types REDUCE may call
        self._news = set()  # ids of the standard types NEWOBJ may create
        self._build_exact = set()
        self._build_bases = ()

    def find_class(self, module, name):
        key = (module, name)
        cls = self.classes.get(key)
        if cls is not None:
            return cls
        if key not in SAFE_NAMES:
            full = "%s.%s" % key
            if "." in name:
                rule = "a dotted name is never followed"
            elif name.startswith("__") or module.startswith("__") and module != "__main__":
                rule = "names with dunders are never loaded"
            elif any(m == module for m, _ in self.classes):
                rule = "the task's classes load only when its return annotation names them (e.g. -> %s or " \
                       "-> list[%s])" % (name, name)
            else:
                rule = "it is not an allowed type"
            raise _Refused("names %s (module %r, name %r)" % (full, module, name) if "." in name else
                           "names %s" % full, rule)
        if key == ("builtins", "getattr") and self._enums:
            return self._member_lookup()
        try:
            kind, obj, check, build = _resolve(key)
        except _Missing as e:
            raise _Refused("names %s.%s" % key, "that module cannot be imported here (%s)" % e)
        if kind == "call":
            self._calls[id(obj)] = (obj, check)
        elif kind == "new":
            self._news.add(id(obj))
        if build == "exact":
            self._build_exact.add(id(obj))
        elif build == "isinstance":
            self._build_bases += (obj,)
        return obj

    def _member_lookup(self):
        """getattr as enums pickle their members (``getattr(Color, "RED")``,
        Python >= 3.11): for the task's enums, a lookup in the class's
        ``__members__`` (never an attribute, so no descriptor runs); for
        anything else, the zoneinfo rule of the shared guard."""
        zone = _resolve(("builtins", "getattr"))[1]
        enums = {i: self._user[i] for i in self._enums}

        def lookup(obj, attr):
            cls = enums.get(id(obj))
            if cls is None or cls is not obj:
                return zone(obj, attr)
            if type(attr) is not str or attr not in cls.__members__:
                raise _Refused("calls builtins.getattr(%s, %r)" % (_describe(obj), attr),
                               "an enum's members are looked up by their names")
            return cls.__members__[attr]

        def check(args):
            if len(args) != 2:
                raise _Refused("calls builtins.getattr%s" % _short(args), "getattr takes (class, member name)")
        return _Guarded("builtins.getattr", lookup, check)

    def load_reduce(self):
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if type(args) is not tuple:
            raise _Refused("calls %s with %s as its arguments" % (_describe(func), _describe(args)),
                           "arguments are a tuple")
        _check_args(_describe(func), args)
        if isinstance(func, _Guarded):
            stack[-1] = func(*args)
            return
        i = id(func)
        std = self._calls.get(i)
        if std is not None and std[0] is func:
            if std[1] is not None:
                std[1](args)
            stack[-1] = func(*args)
            return
        if i in self._user_calls and self._user[i] is func:
            stack[-1] = func(*args)
            return
        if i in self._user and self._user[i] is func:
            rule = "a task's class is rebuilt by the plain object protocol (__new__, then its state), never " \
                   "called with arguments, as a class with its own __reduce__ would be"
        else:
            rule = "only the standard types above, the task's enums and a few checked functions are called"
        raise _Refused("calls %s while unpickling" % _describe(func), rule)

    def _new(self, cls, args, kwargs, op):
        if not isinstance(cls, type) or not ((id(cls) in self._user and self._user[id(cls)] is cls)
                                             or id(cls) in self._news):
            raise _Refused("creates %s with __new__ (%s)" % (_describe(cls), op),
                           "only the task's classes and uuid.UUID are created that way")
        if type(args) is not tuple or type(kwargs) is not dict or any(type(k) is not str for k in kwargs):
            raise _Refused("creates %s with arguments that are not a tuple and a dict" % _describe(cls),
                           "%s takes a tuple (and a dict)" % op)
        _check_args(_describe(cls), args)
        _check_args(_describe(cls), tuple(kwargs.values()))
        _creatable(cls, op)
        self.append(cls.__new__(cls, *args, **kwargs))

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new(cls, args, {}, "NEWOBJ")

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new(cls, args, kwargs, "NEWOBJ_EX")

    def load_build(self):
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        t = type(inst)
        ok = not isinstance(inst, type) and not isinstance(inst, _Guarded) and (
            (id(t) in self._user and self._user[id(t)] is t and id(t) not in self._enums)
            or id(t) in self._build_exact or (self._build_bases and isinstance(inst, self._build_bases)))
        if not ok:
            what = "the class " + _describe(inst) if isinstance(inst, type) else _describe(inst)
            raise _Refused("sets the state of %s (BUILD)" % what,
                           "state is set only on new instances of the task's classes (not enum members), "
                           "uuid.UUID and numpy arrays")
        setstate = getattr(inst, "__setstate__", None)
        if setstate is not None:
            setstate(state)  # the class's own code
            return
        slots = None
        if type(state) is tuple and len(state) == 2:
            state, slots = state
        for d in (state, slots):
            if d is None:
                continue
            if type(d) is not dict:
                raise _Refused("sets the state of %s from %s" % (_describe(inst), _describe(d)),
                               "state is a dict of attributes")
            for k in d:
                if type(k) is not str or (k.startswith("__") and k.endswith("__")):
                    raise _Refused("sets the attribute %r of %s" % (k, _describe(inst)),
                                   "dunder attributes are never set")
        if state:
            inst_dict = inst.__dict__
            for k, v in state.items():
                inst_dict[sys.intern(k)] = v
        if slots:
            for k, v in slots.items():
                setattr(inst, k, v)

    def _target(self, op):
        obj = self.stack[-1]
        if isinstance(obj, (type, _Guarded)):
            raise _Refused("%s into %s" % (op, "the class " + _describe(obj) if isinstance(obj, type)
                                           else _describe(obj)), "only objects take items, never a class")
        return obj

    def load_append(self):
        value = self.stack.pop()
        self._target("appends").append(value)

    def load_appends(self):
        items = self.pop_mark()
        target = self._target("appends")
        extend = getattr(target, "extend", None)
        if extend is not None:
            extend(items)
        else:
            for item in items:
                target.append(item)

    def load_setitem(self):
        stack = self.stack
        value = stack.pop()
        key = stack.pop()
        self._target("sets an item")[key] = value

    def load_setitems(self):
        items = self.pop_mark()
        target = self._target("sets items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def load_additems(self):
        items = self.pop_mark()
        target = self._target("adds items")
        if isinstance(target, set):
            target.update(items)
        else:
            for item in items:
                target.add(item)

    dispatch = _Dispatch((k, v) for k, v in pickle._Unpickler.dispatch.items() if k not in _OPCODES)
    for _op, _fn in ((pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
                     (pickle.BUILD, load_build), (pickle.APPEND, load_append), (pickle.APPENDS, load_appends),
                     (pickle.SETITEM, load_setitem), (pickle.SETITEMS, load_setitems),
                     (pickle.ADDITEMS, load_additems)):
        dispatch[_op[0]] = _fn
    del _op, _fn

    def load(self):
        try:
            return pickle._Unpickler.load(self)
        except _Refused as e:
            raise UnsafeResult("the result of task %s %s, which is not allowed: %s. %s" % (self.task, e.what, e.rule,
                                                                                           ALLOWED),
                               task=self.task, what=e.what, rule=e.rule) from None


class _NamesSomething(Exception):
    pass


class _DataOnly(pickle.Unpickler):
    """The C unpickler, for pickles that name nothing (sets, bytes, dicts
    with int keys, ...): without a name, every object on its stack is plain
    data (no callable, no ``__setstate__``, no ``__dict__``), so no opcode
    can run code. The first name sends the pickle to RestrictedUnpickler."""

    def find_class(self, module, name):
        raise _NamesSomething()


def loads(data, classes=None, task="?"):
    """Unpickle one result value under the rules above."""
    import copyreg

    # EXT opcodes read the process-global extension cache without a name:
    # only when it is empty is the fast path free of them.
    if not copyreg._extension_cache and not copyreg._inverted_registry:
        import io

        try:
            return _DataOnly(io.BytesIO(data)).load()
        except Exception:  # a name, or a broken pickle: the restricted loader says which
            pass
    try:
        return RestrictedUnpickler(data, classes, task).load()
    except UnsafeResult:
        raise
    except Exception as e:
        raise HearthError("the result of task %s could not be unpickled: %s: %s" % (task, type(e).__name__, e)) \
            from e


def decode(value, classes, task="?"):
    """A result value; ``classes``: ``task_classes``' mapping."""
    if os.environ.get("HEARTH_TRUST_RESULTS") == "1":
        return _protocol.decode_value(value, True)
    return _protocol.decode_value(value, lambda raw: loads(raw, classes, task))
