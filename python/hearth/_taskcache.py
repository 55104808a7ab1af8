"""The task cache: ``cache=True`` on a task, kept on the caller's side.

As flytekit's local cache: a call of a cached task with inputs seen before
returns the stored result and never reaches hearthd (no apply, no bundle, no
task). Options, on ``@env.task(...)`` and ``@task(...)``::

    cache=True                       # or hearth.Cache(version=..., serialize=..., ignored_inputs=..., salt=...)
    cache_version="1.0"              # flytekit's older spelling of Cache(version=...)
    cache_serialize=True             # identical concurrent calls on this machine run once
    cache_ignore_input_vars=("x",)   # inputs left out of the key

The key is the SHA-256 of the task's name (``module.qualname``), its version
(``cache_version``, or else the SHA-256 of the function's source text, its
decorators included, and the salt: editing the function is a miss) and its
inputs, defaults filled in, minus the ignored ones, in the canonical form of
``canonical``. Only successful results are stored, in their wire form (the
``result`` of the daemon's task snapshot); a hit is decoded exactly as a fresh
result (``hearth._results.decode`` with the task's classes), because what is
stored came from a replica.

Store: ``$HEARTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/hearth/tasks``, else
``~/.cache/hearth/tasks`` (directory 0700, owned by the user, else the cache
is off with a warning); one file ``<key>.json`` per entry (0600, written to a
temporary file and renamed); lock files for ``cache_serialize`` under
``locks/``. An unreadable entry is a miss (with a warning) and is replaced
by the next result. ``python -m hearth cache list`` and ``python -m hearth
cache clear [--task NAME]`` (``main``).
"""

import errno
import os
import sys
import time
import warnings

# json and hashlib load on first use: replicas import task modules too, and
# there only the options are checked.

__all__ = ["Cache", "Uncacheable", "canonical", "cache_key", "cache_dir", "configure", "TaskCache", "main"]

FORMAT = 1
OPTIONS = ("cache_version", "cache_serialize", "cache_ignore_input_vars")
_MAX_DEPTH = 200


class Cache(object):
    """flytekit's ``Cache`` (>= 1.15): ``version`` (None: a hash of the
    function's source and ``salt``), ``serialize``, ``ignored_inputs`` (a
    name or a tuple of names), ``salt``; ``policies``: objects with
    flytekit's ``get_version(salt, params)`` (``params.func`` is the task's
    function), whose versions are hashed together instead of the source."""

    def __init__(self, version=None, serialize=False, ignored_inputs=(), salt="", policies=None):
        if version is not None and not isinstance(version, str):
            raise TypeError("Cache: version must be a str or None, got %r" % (version,))
        if not isinstance(serialize, bool):
            raise TypeError("Cache: serialize must be True or False, got %r" % (serialize,))
        if not isinstance(salt, str):
            raise TypeError("Cache: salt must be a str, got %r" % (salt,))
        self.version = version
        self.serialize = serialize
        self.ignored_inputs = ignored_inputs
        self.salt = salt
        if policies is not None and not isinstance(policies, (list, tuple)):
            policies = [policies]
        for p in policies or ():
            if not callable(getattr(p, "get_version", None)):
                raise TypeError("Cache: a policy must have get_version(salt, params), got %r" % (p,))
        self.policies = policies
        self._ignored = _names(ignored_inputs, "Cache: ignored_inputs")

    def get_ignored_inputs(self):
        return self._ignored

    def __repr__(self):
        return "Cache(version=%r, serialize=%r, ignored_inputs=%r, salt=%r)" % (
            self.version, self.serialize, self._ignored, self.salt)


class _VersionParameters(object):
    # What flytekit hands a cache policy.
    def __init__(self, func, container_image=None):
        self.func = func
        self.container_image = container_image
        self.pod_template = None
        self.pod_template_name = None


def _names(value, where):
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(n, str) for n in value):
        raise TypeError("%s must be an input name or a tuple of them, got %r" % (where, value))
    return tuple(value)


# -- configuration -----------------------------------------------------------------------


def _input_names(fn):
    """The function's parameter names, and whether it takes **kwargs, read
    off its code object (no inspect: replicas import task modules too)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None, True
    n = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:n])
    return names, bool(code.co_flags & 0x08)  # CO_VARKEYWORDS


def _in_worker():
    from hearth import _worker

    return _worker.in_worker()


def configure(task_name, fn, cache, options, container_image=None):
    """The TaskCache of a task, or None when caching is off. Takes the
    cache options out of ``options`` (the decorator's other keywords).
    Raises TypeError/ValueError naming the task and the rule."""
    label = "task %s" % getattr(fn, "__qualname__", task_name)
    version = options.pop("cache_version", None)
    serialize = options.pop("cache_serialize", None)
    ignored = options.pop("cache_ignore_input_vars", None)
    if version == "":
        version = None  # flytekit's default: not given
    salt, policies = "", None
    if isinstance(cache, Cache):
        given = [n for n, v in (("cache_version", version), ("cache_serialize", serialize),
                                ("cache_ignore_input_vars", ignored)) if v is not None]
        if given:
            raise ValueError("%s: %s cannot be combined with cache=Cache(...); set them in the Cache "
                             "(Cache(version=..., serialize=..., ignored_inputs=...)), as flytekit requires"
                             % (label, ", ".join(given)))
        version, serialize, ignored = cache.version, cache.serialize, cache.get_ignored_inputs()
        salt, policies = cache.salt, cache.policies
    elif cache is not True and cache is not False and cache is not None:
        raise TypeError("%s: cache must be True, False or a hearth.Cache(...), got %r" % (label, cache))
    elif not cache:
        for n, v in (("cache_version", version), ("cache_serialize", serialize), ("cache_ignore_input_vars", ignored)):
            if v is not None and v is not False and v != ():
                # flytekit accepts these with caching off (code toggles cache=False and keeps its
                # version): say so once, do not refuse the task.
                import warnings

                warnings.warn("%s: %s=%r has no effect without cache=True" % (label, n, v), stacklevel=4)
        return None
    if version is not None and not isinstance(version, str):
        raise TypeError("%s: cache_version must be a str, got %r" % (label, version))
    if serialize is None:
        serialize = False
    if not isinstance(serialize, bool):
        raise TypeError("%s: cache_serialize must be True or False, got %r" % (label, serialize))
    ignored = _names(ignored or (), "%s: cache_ignore_input_vars" % label)
    names, var_kw = _input_names(fn)
    if not var_kw:
        unknown = [n for n in ignored if n not in names]
        if unknown:
            raise ValueError("%s: cache_ignore_input_vars names %s, which %s not an input of the task (its inputs: %s)"
                             % (label, ", ".join(repr(n) for n in unknown), "is" if len(unknown) == 1 else "are",
                                ", ".join(names) or "none"))
    tc = TaskCache(task_name, version, serialize, ignored)
    if version is None and not _in_worker():
        # Now, while the file is the one that was just imported.
        tc.version = _source_version(fn, salt, policies, container_image, label)
    return tc


def _source_version(fn, salt, policies, container_image, label):
    import hashlib

    if policies:
        params = _VersionParameters(fn, container_image)
        try:
            text = "".join(p.get_version(salt, params) for p in policies)
        except Exception as e:
            raise ValueError("%s: the cache policy %r failed (%s: %s); set cache_version=... instead"
                             % (label, p, type(e).__name__, e))
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    import inspect

    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError) as e:
        raise ValueError("%s: cache=True without cache_version needs the function's source to version the cache, "
                         "and it is not available (%s); set cache_version=\"...\"" % (label, e))
    h = hashlib.sha256(b"hearth-task-source\0")
    h.update(salt.encode("utf-8", "surrogatepass") + b"\0")
    h.update(source.encode("utf-8", "surrogatepass"))
    return "src-" + h.hexdigest()


# -- the canonical form of inputs --------------------------------------------------------


class Uncacheable(Exception):
    """An input with no canonical form; the call runs without the cache."""


def _cls(t):
    return "%s.%s" % (t.__module__, t.__qualname__)


def _sort(items):
    # Order by the canonical JSON of each item: independent of hash seeds
    # (sets of str) and of insertion order (dicts).
    import json

    return sorted(items, key=lambda x: json.dumps(x, sort_keys=True, ensure_ascii=True))


def canonical(value, where="input", _depth=0):
    """A JSON-able form of ``value`` that is equal for equal values, in any
    process: typed (``1``, ``1.0`` and ``True`` differ), dicts and sets in a
    fixed order (so ``{"a": 1, "b": 2}`` and ``{"b": 2, "a": 1}`` are one key,
    as in flytekit, whose maps are unordered). Understood: None, bool, int,
    float (by repr: NaN, -0.0 and inf included), complex, str, bytes,
    bytearray, list, tuple, dict, set, frozenset, enums, NamedTuples,
    dataclasses (their fields), datetime's types (a tzinfo only as
    ``datetime.timezone`` or ``zoneinfo.ZoneInfo``), Decimal, Fraction,
    UUID, pathlib paths, numpy arrays (not of objects) and scalars, and any
    object whose class defines ``__hearth_cache_key__()`` (returning such a
    value). Anything else raises Uncacheable: instances of other classes
    (their pickles can differ for equal values, and equality is theirs to
    define), subclasses of the builtin types, functions, open files."""
    if _depth > _MAX_DEPTH:
        raise Uncacheable("%s is nested more than %d levels deep" % (where, _MAX_DEPTH))
    t = type(value)
    d = _depth + 1
    if value is None:
        return None
    if t is bool:
        return ["bool", value]
    if t is int:
        return ["int", str(value)]
    if t is float:
        return ["float", repr(value)]
    if t is str:
        return ["str", value]
    if t is bytes or t is bytearray:
        return [t.__name__, value.hex()]
    if t is complex:
        return ["complex", repr(value)]
    if t is list or t is tuple:
        return [t.__name__, [canonical(v, "%s[%d]" % (where, i), d) for i, v in enumerate(value)]]
    if t is dict:
        return ["dict", _sort([[canonical(k, "%s key" % where, d), canonical(v, "%s[%r]" % (where, k), d)]
                               for k, v in value.items()])]
    if t is set or t is frozenset:
        return [t.__name__, _sort([canonical(v, "%s element" % where, d) for v in value])]
    hook = getattr(t, "__hearth_cache_key__", None)
    if hook is not None:
        return ["key", _cls(t), canonical(value.__hearth_cache_key__(), "%s (%s key)" % (where, t.__name__), d)]
    import enum

    if isinstance(value, enum.Enum):
        return ["enum", _cls(t), canonical(value.value, where, d)]
    if isinstance(value, tuple) and hasattr(t, "_fields") and t.__new__ is not tuple.__new__:
        return ["namedtuple", _cls(t), [canonical(v, "%s.%s" % (where, f), d) for f, v in zip(t._fields, value)]]
    if hasattr(t, "__dataclass_fields__") and not isinstance(value, type):
        import dataclasses

        return ["dataclass", _cls(t), [[f.name, canonical(getattr(value, f.name), "%s.%s" % (where, f.name), d)]
                                       for f in dataclasses.fields(value)]]
    mod = t.__module__
    if mod == "datetime":
        import datetime

        if t is datetime.datetime or t is datetime.time:
            return [t.__name__, value.replace(tzinfo=None).isoformat(), _tz(value.tzinfo, where), value.fold]
        if t is datetime.date:
            return ["date", value.isoformat()]
        if t is datetime.timedelta:
            return ["timedelta", value.days, value.seconds, value.microseconds]
        if t is datetime.timezone:
            return _tz(value, where)
    if (mod, t.__name__) in (("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID")):
        return [t.__name__, str(value)]
    if mod in ("pathlib", "pathlib._local") and t.__name__ in ("PurePath", "PurePosixPath", "PureWindowsPath",
                                                              "Path", "PosixPath", "WindowsPath"):
        return [t.__name__, str(value)]
    np = sys.modules.get("numpy")
    if np is not None:
        if t is np.ndarray:
            if value.dtype.hasobject:
                raise Uncacheable("%s: a numpy array of Python objects has no canonical form" % where)
            import hashlib

            data = np.ascontiguousarray(value)
            return ["ndarray", value.dtype.str, list(value.shape), hashlib.sha256(data.tobytes()).hexdigest()]
        if isinstance(value, np.generic) and not value.dtype.hasobject:
            return ["numpy", value.dtype.str, value.tobytes().hex()]
    raise Uncacheable("%s: a %s has no canonical form for the cache key" % (where, _cls(t)))


def _tz(tz, where):
    if tz is None:
        return None
    import datetime

    if type(tz) is datetime.timezone:
        off = tz.utcoffset(None)
        return ["timezone", off.days, off.seconds, off.microseconds, tz.tzname(None)]
    if _cls(type(tz)) == "zoneinfo.ZoneInfo" and tz.key is not None:
        return ["zoneinfo", tz.key]
    raise Uncacheable("%s: a time zone %s has no canonical form for the cache key" % (where, _cls(type(tz))))


def cache_key(task_name, version, inputs, ignored=()):
    """The hex SHA-256 key of a call; raises Uncacheable."""
    import hashlib
    import json

    canon = {k: canonical(v, "input %r" % k) for k, v in inputs.items() if k not in ignored}
    text = json.dumps(["hearth-task-cache", FORMAT, task_name, version, canon], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# -- the store ---------------------------------------------------------------------------


def cache_dir(environ=None):
    env = os.environ if environ is None else environ
    d = env.get("HEARTH_CACHE_DIR")
    if not d:
        base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "hearth", "tasks")
    return os.path.abspath(d)


_warned = set()


def _warn(text):
    if text in _warned:
        return
    _warned.add(text)
    # Point at the first frame outside the hearth package: the user's call.
    here = os.path.dirname(os.path.abspath(__file__))
    level, f = 2, sys._getframe(1)
    while f is not None and os.path.dirname(os.path.abspath(f.f_code.co_filename)) == here:
        level, f = level + 1, f.f_back
    warnings.warn(text, stacklevel=level)


def _ready_dir(create=True):
    """The cache directory, created 0700; None (with a warning) when it
    cannot be used or is not private to this user."""
    d = cache_dir()
    try:
        if create:
            os.makedirs(d, mode=0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        if not create and e.errno == errno.ENOENT:
            return None
        _warn("hearth: the task cache %s cannot be used (%s); running tasks without it" % (d, e))
        return None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        _warn("hearth: the task cache %s is not a directory owned by this user (uid %d); running tasks without it"
              % (d, os.geteuid()))
        return None
    if st.st_mode & 0o077:
        try:
            os.chmod(d, 0o700)  # ours: make it private rather than refuse
        except OSError as e:
            _warn("hearth: the task cache %s is open to other users and cannot be made private (%s); running "
                  "tasks without it" % (d, e))
            return None
    return d


def _max_entry():
    from hearth import _protocol

    # A result arrived in one response of at most a frame; base64 and JSON add a third.
    return 2 * _protocol.max_frame_size() + 65536


def _read(path, key):
    """The entry dict; None when absent; raises ValueError saying why it is unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(str(e))
    import stat

    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        limit = _max_entry()
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError("larger than %d bytes" % limit)
    import json

    try:
        entry = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError("not JSON: %s" % e)
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or "result" not in entry:
        raise ValueError("not a hearth task cache entry of format %d" % FORMAT)
    if key is not None and entry.get("key") != key:
        raise ValueError("it holds the key %r" % (entry.get("key"),))
    return entry


def _write(d, key, entry):
    import json
    import tempfile

    data = json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    fd, tmp = tempfile.mkstemp(prefix=".%s." % key[:16], suffix=".tmp", dir=d)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(d, key + ".json"))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class _Lock(object):
    """flock on ``locks/<key>.lock``: one holder per key across processes."""

    def __init__(self, d, key):
        self.path = os.path.join(d, "locks", key + ".lock")
        self.fd = None

    def __enter__(self):
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) |
                              getattr(os, "O_CLOEXEC", 0), 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as e:
            _warn("hearth: cannot lock %s (%s); identical calls may run more than once" % (self.path, e))
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


# -- calls -------------------------------------------------------------------------------


class TaskCache(object):
    """A task's cache settings; ``call`` and ``lookup``/``store`` for map_task."""

    def __init__(self, task_name, version, serialize=False, ignored=()):
        self.task_name = task_name
        self.version = version
        self.serialize = serialize
        self.ignored = tuple(ignored)

    def __repr__(self):
        return "TaskCache(%r, version=%r, serialize=%r, ignored=%r)" % (
            self.task_name, self.version, self.serialize, self.ignored)

    def key(self, task, inputs):
        """The key, or None (warned once per task and reason) when an input
        has no canonical form: that call runs without the cache."""
        try:
            return cache_key(self.task_name, self.version, inputs, self.ignored)
        except Uncacheable as e:
            _warn("hearth: task %s is not cached for this call: %s" % (task.__qualname__, e))
            return None

    def lookup(self, task, key, d):
        """(True, value) for a hit; (False, None) for a miss. A hit is
        decoded as a fresh result: UnsafeResult when it names what results
        may not hold."""
        path = os.path.join(d, key + ".json")
        try:
            entry = _read(path, key)
            if entry is None:
                return False, None
            return True, task._decode(entry["result"])
        except ValueError as e:  # binascii.Error included: a broken $pickle
            problem = str(e)
        except Exception as e:
            from hearth._errors import UnsafeResult

            if isinstance(e, UnsafeResult):
                e.args = ("%s (this result came from the task cache entry %s; remove it with "
                          "`python -m hearth cache clear --task %s`)" % (e, path, self.task_name),)
                raise
            problem = "%s: %s" % (type(e).__name__, e)
        _warn("hearth: task %s: the cache entry %s is unreadable (%s); running the task and replacing it"
              % (task.__qualname__, path, problem))
        return False, None

    def store(self, task, key, d, snap):
        entry = {"format": FORMAT, "key": key, "task": self.task_name, "version": self.version,
                 "created": time.time(), "task_id": snap.get("id"), "result": snap.get("result")}
        try:
            _write(d, key, entry)
        except (OSError, ValueError, TypeError) as e:
            _warn("hearth: task %s: could not write its cache entry in %s (%s)" % (task.__qualname__, d, e))

    def call(self, task, inputs):
        """Runs ``task`` on ``inputs`` (bound) through the cache."""
        key = self.key(task, inputs)
        d = _ready_dir() if key is not None else None
        if d is None:
            return task._remote(inputs)
        t0 = time.perf_counter()
        hit, value = self.lookup(task, key, d)
        if hit:
            record_hit(task, value, t0)
            return value
        if not self.serialize:
            return self._run(task, inputs, key, d)
        with _Lock(d, key):
            # Whoever held the lock may have stored the result meanwhile.
            t0 = time.perf_counter()
            hit, value = self.lookup(task, key, d)
            if hit:
                record_hit(task, value, t0)
                return value
            return self._run(task, inputs, key, d)

    def _run(self, task, inputs, key, d):
        keep = []
        value = task._remote(inputs, keep)
        self.store(task, key, d, keep[-1])
        return value

    def lookup_many(self, task, inputs, record=True):
        """For map_task: (directory or None, keys (None: uncached), {index: value} of the hits)."""
        keys = [self.key(task, kw) for kw in inputs]
        d = _ready_dir() if any(k is not None for k in keys) else None
        hits = {}
        if d is None:
            return None, keys, hits
        for i, key in enumerate(keys):
            if key is None:
                continue
            t0 = time.perf_counter()
            hit, value = self.lookup(task, key, d)
            if hit:
                hits[i] = value
                if record:
                    record_hit(task, value, t0)
        return d, keys, hits


def record_hit(task, value, t0):
    from hearth import _actor

    shown = repr(value)
    fields = dict.fromkeys(_actor.TaskRun._fields)
    fields.update(task=task.__qualname__, environment=task.environment.name, cold=False, state="cached",
                  result_repr=shown if len(shown) <= 200 else shown[:197] + "...",
                  total_us=int((time.perf_counter() - t0) * 1e6), spare=False)
    _actor.runs.append(_actor.TaskRun(**fields))


# -- python -m hearth cache ---------------------------------------------------------------


def _entries(d):
    """[(path, entry or None, problem)] for every entry file."""
    out = []
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return out
    for n in names:
        if not n.endswith(".json") or n.startswith("."):
            continue
        path = os.path.join(d, n)
        try:
            out.append((path, _read(path, n[:-5]), None))
        except ValueError as e:
            out.append((path, None, str(e)))
    return out


def _matches(task_name, pattern):
    return task_name == pattern or task_name.endswith("." + pattern)


def main(argv, prog="python -m hearth cache"):
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description="The task cache of cache=True tasks, in %s "
                                     "(HEARTH_CACHE_DIR)." % cache_dir())
    sub = parser.add_subparsers(dest="command", metavar="{list,clear}")
    sub.required = True
    sub.add_parser("list", help="list the cached results")
    clear = sub.add_parser("clear", help="remove cached results")
    clear.add_argument("--task", metavar="NAME", help="only those of this task (module.name, or its name)")
    args = parser.parse_args(argv)
    d = cache_dir()
    entries = [e for e in _entries(d) if e[1] is not None or args.command == "list" or not args.task]
    if args.command == "list":
        for path, entry, problem in entries:
            if entry is None:
                print("%s  unreadable (%s)" % (os.path.basename(path)[:16], problem))
                continue
            created = entry.get("created")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) \
                if isinstance(created, (int, float)) else "?"
            print("%s  %s  %s  version=%s  %d bytes" % (
                str(entry.get("key"))[:16], when, entry.get("task"), str(entry.get("version"))[:20],
                os.path.getsize(path)))
        return 0
    removed = 0
    for path, entry, _ in entries:
        if args.task and not _matches(str(entry.get("task")), args.task):
            continue
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    if not args.task:
        import shutil

        for n in os.listdir(d) if os.path.isdir(d) else ():
            if n.startswith(".") and n.endswith(".tmp"):  # a write cut short
                try:
                    os.unlink(os.path.join(d, n))
                except OSError:
                    pass
        shutil.rmtree(os.path.join(d, "locks"), ignore_errors=True)
    sys.stderr.write("hearth: removed %d cached result%s from %s\n" % (removed, "" if removed == 1 else "s", d))
    return 0
