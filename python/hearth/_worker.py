"""Hearth worker: the program each replica's long-lived interpreter runs.

Standard library only; any CPython >= 3.8.

Invocation
----------
The daemon mounts the directory that holds the ``hearth`` package read-only at
``/.hearth/worker`` and runs, as a child of hearth-init, either

    python3 -X utf8 /.hearth/worker/hearth/_worker.py          (preferred)
    PYTHONPATH=/.hearth/worker python3 -X utf8 -m hearth._worker

Both behave the same: the worker removes the entry Python put first on
``sys.path`` (the script's own directory, or the working directory for
``-m``), makes sure ``/.hearth/worker`` (the directory above this package) is
on ``sys.path`` so that user code's ``import hearth`` finds this very package,
and runs ``hearth._worker.main()``. The script form also works with ``-I``,
``-P``, ``-s``, ``-E`` (but ``-I``/``-E`` make Python ignore PYTHON* variables
of the environment spec, such as PYTHONPATH); the ``-m`` form needs
PYTHONPATH, so not ``-I``/``-E``. ``-u`` is not needed: stdout and stderr are
made line-buffered and are flushed after every task.

File descriptors: fd 3 is read (daemon -> worker), fd 4 is written
(worker -> daemon); fd 1 and fd 2 are the task log pipes, fd 0 should be
/dev/null. The worker marks fds 3 and 4 close-on-exec at once, so processes a
task starts (subprocess, os.system, os.exec*, posix_spawn) never inherit them.
A plain ``os.fork()`` (multiprocessing's "fork" start method) still copies
them until that child execs or exits, so the daemon should learn of the
worker's death from its exit (pidfd / waitpid), not from EOF on fd 4 alone.
If fd 3 or 4 is not open it writes a line to stderr and exits 2.

Before ``ready``: ``HEARTH_REQUIRE_PACKAGES`` (space-separated requirements,
from the environment's ``packages``) are checked against the image
(``hearth._packages``); if any is missing the worker writes one line per
problem to stderr and exits 3, which the daemon reports as the replica's
start failure. Then ``hearth._k8s_compat`` makes ``kubernetes.client.models``
importable when the image lacks the real package, so that modules written
for pod templates import inside replicas. Then the modules of
``HEARTH_PRELOAD`` (space-separated, from the environment's ``preload``) are
imported, in order, so that the first task finds them in ``sys.modules``;
one that fails to import ends the worker with status 3 and one line naming
the module and the error, the replica's start failure.

Environment read by the worker: ``HEARTH_MAX_FRAME`` (bytes; the frame size
limit, default 64 MiB; see ``hearth._protocol``). Everything else in the
environment is the tasks'.

Frames
------
Each message is a frame: a 4-byte big-endian unsigned length N, then N bytes
of UTF-8 JSON holding one object with a ``"type"``. The worker enforces
N <= limit on what it reads and what it writes. Values inside messages are
encoded as ``hearth._protocol`` describes (JSON as is; everything else as
``{"$pickle": base64}``; single-``$``-key dicts escaped as ``{"$dict": ...}``).

Messages
--------
worker -> daemon, once, before anything else:

    {"type":"ready","pid":<os.getpid()>,"python":"3.11.2",
     "implementation":"cpython","protocol":1}

daemon -> worker:

    {"type":"run","id":"t-...","module":"pkg.mod","function":"f",
     "kwargs":{...encoded values...},
     "bundle":{"version":"<sha256 hex>","path":"/.hearth/code/<sha256>"} | null,
     "env":{"K":"V", "UNSET_ME":null},     (optional)
     "timeout":null}                        (optional, ignored: the daemon enforces it)

  ``id`` is a string (an integer is accepted too) and is echoed back;
  ``module`` and ``function`` are non-empty strings (``function`` may be a
  dotted path such as ``"Class.method"``); ``kwargs`` is an object (absent or
  null means {}); ``env``, when present, is applied to ``os.environ`` before
  anything else of the task (a null value removes the variable) and stays.

worker -> daemon, exactly one per run, after the task's stdout/stderr have
been flushed to fd 1/2 (so log bytes that arrive before the result frame
belong to the task):

    {"type":"result","id":<id>,"ok":true,"value":<encoded>,"duration_us":N}
    {"type":"result","id":<id>,"ok":false,
     "error":{"type":"ValueError","module":"builtins","message":"...",
              "traceback":"Traceback (most recent call last):\\n ..."},
     "duration_us":N}

  ``error.type`` is the exception class's ``__qualname__``, ``module`` its
  ``__module__``, ``message`` is ``str(exc)``, ``traceback`` the formatted
  traceback (chained exceptions included) without the worker's own frames.
  Decoding the kwargs (unpickling) is part of the task: a failure there is
  an error result too. Once the result frame is built the exception's
  tracebacks are cleared, so the failed task's frames (and what their
  locals held) are freed at once, even when they form a reference cycle.
  Any BaseException counts: SystemExit from ``sys.exit()`` and
  KeyboardInterrupt (the daemon cancelling the task with SIGINT) are error
  results and the worker keeps serving. Errors the worker itself reports:
  ``ResultTooLarge`` (module ``hearth``; the result frame would exceed the
  limit; traceback ""), and the original exception type with the message
  prefixed by ``"result could not be encoded: "`` when pickling the result
  fails. Error messages and tracebacks too long for a frame are truncated.
  ``duration_us`` is the time from decoding the arguments to encoding the
  result (module import included).

    {"type":"adopt","env":{"K":"V",...},"packages":["numpy>=1.24",...],"image":"name"}
        -> {"type":"adopted","ok":true}
         | {"type":"adopted","ok":false,"message":"image ... does not provide ..."}

  Sent at most once, before any ``run``, to a pre-started spare when an
  environment takes it: ``env`` is applied like a run's, ``packages`` are
  checked as ``HEARTH_REQUIRE_PACKAGES`` is at start-up. On ``ok: false``
  the daemon tears the replica down.

    {"type":"ping","id":<any>}   ->   {"type":"pong","id":<same>,"running":[<id>,...]}

  ``running``: the tasks whose result is not written yet (always empty
  when tasks run one at a time: the ping is read after the task before
  it). hearthd pings only a replica it adopts after a restart (id
  ``"adopt"``): results written before the pong end the tasks the previous
  daemon sent; the ids in ``running`` are still to come. hearthd learns of
  a worker's death from its exit. To hearthd any frame that answers
  nothing it asked -- a pong it did not ask for, a second ready, a result
  for another id, anything while idle -- is a protocol violation: the
  replica is killed and its task fails with ProtocolError.
    {"type":"shutdown"}          ->   exit 0

  Messages are handled one at a time, in order: a ping sent while a task runs
  is answered after that task's result.

Fatal conditions: a frame longer than the limit, a body that is not a UTF-8
JSON object, an unknown ``type``, a ``run`` with missing or ill-typed fields,
or end of input inside a frame -> the worker writes

    {"type":"error","message":"..."}

e.g. ``"frame of N bytes exceeds the limit of M bytes (HEARTH_MAX_FRAME)"``,
and exits with status 2 (the channel can't be resynchronised). End of input
on fd 3 at a frame boundary, and ``shutdown``, -> exit 0 (after flushing
stdout/stderr and running atexit handlers; running non-daemon threads do not
hold the exit up). fd 4 closed by the daemon (EPIPE) -> exit 0.

Signals: SIGINT while a task runs raises KeyboardInterrupt inside the task;
SIGINT while idle is ignored. SIGTERM -> flush stdout/stderr, exit 0 at once
(even mid-task; no atexit handlers). A task that calls ``os._exit`` or is
killed ends the worker (the daemon reports ReplicaLost). After every task the
worker puts back its SIGINT/SIGTERM handlers, ``sys.stdout``/``sys.stderr``
(recreated if the task closed them) and fds 1/2 (if the task closed or
redirected them).

Running a task
--------------
1. ``env`` applied. 2. Bundle: ``bundle.path`` is put at the front of
``sys.path``. When the bundle (version or path) differs from the previous
task's -- null counts as a bundle too -- the worker removes from
``sys.modules`` every module whose ``__file__`` is under the previous bundle
path (and namespace packages whose ``__path__`` lies wholly under it), removes
the previous path from ``sys.path`` and ``sys.path_importer_cache``, adds the
new one and calls ``importlib.invalidate_caches()``. Modules from anywhere
else (stdlib, site-packages, PYTHONPATH, this ``hearth`` package),
``os.environ`` and ``actor_cache`` values survive. 3. The module is imported
(if not already in ``sys.modules``), the function looked up, then unwrapped:
an object with a callable ``_hearth_fn`` attribute is replaced by it; an
object that is not a plain function, method or class and has a callable
``__wrapped__`` or ``fn`` is replaced by that (repeatedly), so a task object
made by the SDK's ``@actor.task`` runs in-process. Decorators that return
plain functions (``actor_cache``, ``functools.wraps``) are not unwrapped.
4. The kwargs are conformed to the function's annotations and its result to
its return annotation (``hearth._typecheck.conform``: an ``int`` for a
``float`` becomes a float, a list for a tuple a tuple, a one-field
``NamedTuple`` wraps a bare value, ...); a value that does not fit fails the
task with a ``TypeError`` naming the input or the output, the declared type
and the value's. Functions whose annotations are all ``int``, ``float``,
``str``, ``bool``, ``bytes`` or ``None`` are checked here without importing
``typing`` (a cold task would pay for it). 5. Called with the kwargs; if it
returns a coroutine, it is run with ``asyncio.run``; a generator is run to
its end into a list (it cannot travel; flytekit materialises ``Iterator``
outputs the same way).

For the SDK: ``hearth._worker.in_worker()`` is True inside a replica's worker
and ``hearth._worker.current_task_id`` is the id of the running task (None
between tasks).
"""

import os
import sys

if __name__ == "__main__":
    # Bootstrap (script or -m): fix sys.path, then run the package's copy of
    # this module so there is one ``hearth._worker`` whichever way we started.
    def _bootstrap_path():
        here = os.path.dirname(os.path.realpath(__file__))
        root = os.path.dirname(here)
        safe = getattr(sys.flags, "safe_path", False) or sys.flags.isolated
        if sys.path and not safe:
            first = sys.path[0]
            try:
                real = os.path.realpath(first or os.curdir)
            except OSError:
                real = None
            if real in (here, os.path.realpath(os.curdir)):
                del sys.path[0]
        roots = []
        for p in sys.path:
            try:
                roots.append(os.path.realpath(p or os.curdir))
            except OSError:
                pass
        if root not in roots:
            sys.path.insert(0, root)

    _bootstrap_path()
    del _bootstrap_path
    from hearth import _worker as _pkg_worker

    _pkg_worker._exit(_pkg_worker.main())

import time

# The C modules: `signal` would import enum (and wrap every answer in one),
# `types` is a module of its own; the worker's start-up is part of every
# cold task, so it imports neither.
try:
    import _signal as signal
except ImportError:  # pragma: no cover
    import signal


from hearth import _protocol

__all__ = ["main", "in_worker", "current_task_id", "task_id"]

IN_FD = 3
OUT_FD = 4

_active = False
_armed = False  # SIGINT raises KeyboardInterrupt only while True
_THIS_FILE = os.path.normcase(os.path.abspath(__file__))
if _THIS_FILE.endswith((".pyc", ".pyo")):
    _THIS_FILE = _THIS_FILE[:-1]


def in_worker():
    """True when this interpreter is a Hearth replica's worker."""
    return _active


# The running task's id. A context variable rather than a global: with
# ``concurrency`` > 1 several tasks run at once (asyncio tasks copy the
# context, threads get a copy from the worker), each seeing its own.
import contextvars as _contextvars  # noqa: E402  (a C module: cheap)

_task_var = _contextvars.ContextVar("hearth_task_id", default=None)


def task_id():
    """The id of the task running in this context (None between tasks)."""
    return _task_var.get()


def __getattr__(name):
    # ``hearth._worker.current_task_id``, as before it was per task.
    if name == "current_task_id":
        return _task_var.get()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


class _Fatal(Exception):
    """Protocol violation: send an error frame, exit 2."""


# -- signals --------------------------------------------------------------------

def _on_sigint(signum, frame):
    if _armed:
        raise KeyboardInterrupt


def _on_sigterm(signum, frame):
    _flush_std()
    os._exit(0)


_getsignal = signal.getsignal
_SIGINT = int(signal.SIGINT)
_SIGTERM = int(signal.SIGTERM)


def _restore_signals():
    if _getsignal(_SIGINT) is not _on_sigint:
        signal.signal(_SIGINT, _on_sigint)
    if _getsignal(_SIGTERM) is not _on_sigterm:
        signal.signal(_SIGTERM, _on_sigterm)


# -- stdout / stderr --------------------------------------------------------------

def _flush_std():
    for s in (sys.stdout, sys.stderr):
        try:
            if s is not None:
                s.flush()
        except BaseException:
            pass


class _Stdio(object):
    """Keeps fd 1/2 and sys.stdout/sys.stderr as they were at start."""

    def __init__(self):
        self.saved = []  # (fd, private dup, (st_dev, st_ino))
        for fd in (1, 2):
            try:
                st = os.fstat(fd)
                self.saved.append((fd, os.dup(fd), (st.st_dev, st.st_ino)))
            except OSError:
                pass
        self.out = sys.stdout
        self.err = sys.stderr
        for s in (self.out, self.err):
            try:
                s.reconfigure(line_buffering=True)
            except Exception:
                pass

    @staticmethod
    def _reopen(fd, old):
        enc = getattr(old, "encoding", None) or "utf-8"
        errors = getattr(old, "errors", None) or "strict"
        return open(fd, "w", buffering=1, encoding=enc, errors=errors, closefd=False)

    def restore(self):
        for fd, dup, ident in self.saved:
            try:
                st = os.fstat(fd)
                same = (st.st_dev, st.st_ino) == ident
            except OSError:
                same = False
            if not same:
                try:
                    os.dup2(dup, fd)
                except OSError:
                    pass
        out, err = sys.stdout, sys.stderr
        for cur in (out, err):
            if cur is not self.out and cur is not self.err and cur is not None:
                try:
                    cur.flush()
                except BaseException:
                    pass
        if self.out is not None:
            self.out = self._usable(self.out, 1)
            if out is not self.out:
                sys.stdout = self.out
        if self.err is not None:
            self.err = self._usable(self.err, 2)
            if err is not self.err:
                sys.stderr = self.err

    def _usable(self, stream, fd):
        """``stream`` flushed, or a fresh line-buffered writer on ``fd``."""
        try:
            if not stream.closed:
                stream.flush()
                return stream
        except BaseException:
            pass
        try:
            return self._reopen(fd, stream)
        except BaseException:
            return stream


# -- bundles -------------------------------------------------------------------------

_bundle_key = None
_bundle_path = None


def _under(path, prefix):
    try:
        return os.path.abspath(path).startswith(prefix)
    except Exception:
        return False


def _unload_bundle(path):
    """Drop modules that came from ``path``; returns their names."""
    prefix = os.path.join(os.path.abspath(path), "")
    dropped = []
    for name, mod in list(sys.modules.items()):
        if name == "hearth" or name.startswith("hearth."):
            continue
        try:
            f = getattr(mod, "__file__", None)
            if isinstance(f, str):
                hit = _under(f, prefix)
            elif f is None:
                paths = getattr(mod, "__path__", None)
                paths = list(paths) if paths is not None else []
                hit = bool(paths) and all(isinstance(p, str) and _under(p, prefix) for p in paths)
            else:
                hit = False
        except Exception:
            hit = False
        if hit:
            sys.modules.pop(name, None)
            dropped.append(name)
    stripped = os.path.abspath(path)
    sys.path[:] = [p for p in sys.path if not (p == path or (p and os.path.abspath(p) == stripped))]
    sys.path_importer_cache.pop(path, None)
    sys.path_importer_cache.pop(stripped, None)
    return dropped


def _switch_bundle(bundle):
    global _bundle_key, _bundle_path
    if bundle is None:
        key = path = None
    else:
        path = bundle["path"]
        key = (bundle["version"], path)
    if key == _bundle_key:
        if path is not None and path not in sys.path:
            sys.path.insert(0, path)
        return
    if _bundle_path is not None:
        _unload_bundle(_bundle_path)
    if path is not None:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    import importlib

    importlib.invalidate_caches()
    _bundle_key = key
    _bundle_path = path


# -- running ---------------------------------------------------------------------------

def _function():
    pass


class _Probe(object):
    def method(self):
        pass


async def _coroutine():
    pass


_c = _coroutine()
_CoroutineType = type(_c)
_c.close()
del _c
# types.FunctionType, BuiltinFunctionType and MethodType, without importing types.
_PLAIN = (type(_function), type(len), type(_Probe().method), type)


def _unwrap(obj):
    for _ in range(32):
        inner = getattr(obj, "_hearth_fn", None)
        if inner is None or not callable(inner):
            if isinstance(obj, _PLAIN):
                return obj
            inner = getattr(obj, "__wrapped__", None)
            if inner is None or not callable(inner):
                inner = getattr(obj, "fn", None)
                if inner is None or not callable(inner):
                    return obj
        if inner is obj:
            return obj
        obj = inner
    return obj


def _resolve(module, function):
    mod = sys.modules.get(module)
    if mod is None:
        __import__(module)
        mod = sys.modules[module]
    obj = mod
    for part in function.split("."):
        obj = getattr(obj, part)
    return _unwrap(obj)


def _generator():
    yield


_GeneratorType = type(_generator())
_PLAIN_HINTS = {int: "int", float: "float", str: "str", bool: "bool", bytes: "bytes", None: "None",
                type(None): "None"}
_typing_plans = {}  # id(fn) -> (fn, plan): the hints a function's values are conformed to


def _plan(fn):
    """None (nothing to check), ("plain", annotations) or ("full", hints)."""
    got = _typing_plans.get(id(fn))
    if got is not None and got[0] is fn:
        return got[1]
    ann = getattr(fn, "__annotations__", None)
    if not ann or type(ann) is not dict:
        plan = None
    else:
        try:
            plain = all(h in _PLAIN_HINTS for h in ann.values())
        except TypeError:  # an unhashable annotation
            plain = False
        if plain:
            plan = ("plain", dict(ann))
        else:
            from hearth import _typecheck

            plan = ("full", _typecheck.hints_of(fn))
    if len(_typing_plans) > 4096:  # functions of old bundle versions
        _typing_plans.clear()
    _typing_plans[id(fn)] = (fn, plan)
    return plan


def _where(fname, name):
    return "%s() output" % fname if name == "return" else "%s() input %r" % (fname, name)


def _plain_conform(value, hint, fname, name):
    if hint is float and type(value) is int:
        return float(value)
    if hint is None or hint is type(None):
        ok = value is None
    elif hint is int or hint is float:
        ok = isinstance(value, hint) and type(value) is not bool
    else:
        ok = isinstance(value, hint)
    if ok:
        return value
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    t = type(value)
    raise TypeError("%s: expected %s, got %s %s" % (
        _where(fname, name), _PLAIN_HINTS[hint], t.__name__ if t.__module__ == "builtins" else "%s.%s" % (t.__module__, t.__qualname__),
        shown))


def _conform(plan, value, name, fname):
    """``value`` of input ``name`` ("return": the output) of the function
    called ``fname``, as its annotation declares it."""
    hint = plan[1].get(name, _conform)
    if hint is _conform:
        return value
    if plan[0] == "plain":
        return _plain_conform(value, hint, fname, name)
    from hearth import _typecheck

    try:
        return _typecheck.conform(value, hint, _where(fname, name))
    except _typecheck.InputError as e:
        raise TypeError(str(e)) from None


def _prepare(module, function, raw_kwargs):
    """The function to call, its conformed kwargs, its plan and name."""
    kwargs = _protocol.decode_value(raw_kwargs) if raw_kwargs else {}
    fn = _resolve(module, function)
    plan = _plan(fn)
    name = getattr(fn, "__name__", function)
    if plan is not None:
        for k, v in kwargs.items():
            kwargs[k] = _conform(plan, v, k, name)
    return fn, kwargs, plan, name


def _output(plan, name, value):
    if type(value) is _GeneratorType:
        value = list(value)
    if plan is not None:
        if plan[1].get("return", 0) in (None, type(None)):
            value = None  # -> None: what the body returns is not an output (as in flytekit)
        else:
            value = _conform(plan, value, "return", name)
    return value


def _invoke(module, function, raw_kwargs):
    """Runs the task; (True, value) or (False, exception)."""
    global _armed
    try:
        _armed = True
        fn, kwargs, plan, name = _prepare(module, function, raw_kwargs)
        value = fn(**kwargs)
        if type(value) is _CoroutineType:
            import asyncio

            value = asyncio.run(value)
        value = _output(plan, name, value)
        _armed = False
        return True, value
    except BaseException as e:
        _armed = False
        return False, e
    finally:
        _armed = False


def _safe_text(s):
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")


def _describe(e):
    t = type(e)
    try:
        message = str(e)
    except BaseException:
        message = "<unprintable %s object>" % t.__name__
    try:
        import traceback

        tb = e.__traceback__
        while tb is not None and os.path.normcase(tb.tb_frame.f_code.co_filename) == _THIS_FILE:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(t, e, tb))
    except BaseException:
        text = "%s: %s\n" % (t.__name__, message)
    return {
        "type": _safe_text(getattr(t, "__qualname__", t.__name__)),
        "module": _safe_text(str(getattr(t, "__module__", "builtins"))),
        "message": _safe_text(message),
        "traceback": _safe_text(text),
    }


def _error_body(tid, error, duration_us, limit):
    res = {"type": "result", "id": tid, "ok": False, "error": error, "duration_us": duration_us}
    body = _protocol.dumps_message(res)
    if len(body) <= limit:
        return body
    keep = max(64, limit // 16)
    mark = "\n[... truncated by hearth: the error did not fit in a frame ...]\n"
    for field, tail in (("traceback", True), ("message", False)):
        s = error.get(field) or ""
        if len(s) > keep:
            error[field] = (mark + s[-keep:]) if tail else (s[:keep] + mark)
    body = _protocol.dumps_message(res)
    if len(body) <= limit:
        return body
    error.update(type=error["type"][:200], module=error["module"][:200], message="(error too large to report)",
                 traceback="")
    return _protocol.dumps_message(res)


def _result_body(tid, ok, value, t0, limit):
    if ok:
        try:
            enc = _protocol.encode_value(value)
        except BaseException as e:
            err = _describe(e)
            err["message"] = "result could not be encoded: " + err["message"]
            return _error_body(tid, err, (time.perf_counter_ns() - t0) // 1000, limit)
        dur = (time.perf_counter_ns() - t0) // 1000
        res = {"type": "result", "id": tid, "ok": True, "value": enc, "duration_us": dur}
        try:
            body = _protocol.dumps_message(res)
        except UnicodeEncodeError:
            # Strings UTF-8 can't hold (lone surrogates): send the value pickled.
            try:
                res["value"] = _protocol.pickle_value(value)
                body = _protocol.dumps_message(res)
            except BaseException as e:
                err = _describe(e)
                err["message"] = "result could not be encoded: " + err["message"]
                return _error_body(tid, err, dur, limit)
        if len(body) <= limit:
            return body
        err = {
            "type": "ResultTooLarge",
            "module": "hearth",
            "message": "result of %d bytes exceeds the limit of %d bytes (HEARTH_MAX_FRAME)" % (len(body), limit),
            "traceback": "",
        }
        return _error_body(tid, err, dur, limit)
    return _error_body(tid, _describe(value), (time.perf_counter_ns() - t0) // 1000, limit)


def _check_run(msg):
    tid = msg.get("id")
    if type(tid) is not str and type(tid) is not int:
        raise _Fatal('run message: "id" must be a string')
    for field in ("module", "function"):
        v = msg.get(field)
        if type(v) is not str or not v:
            raise _Fatal('run message %s: "%s" must be a non-empty string' % (tid, field))
    kwargs = msg.get("kwargs")
    if kwargs is not None and type(kwargs) is not dict:
        raise _Fatal('run message %s: "kwargs" must be an object' % (tid,))
    env = msg.get("env")
    if env is not None:
        if type(env) is not dict:
            raise _Fatal('run message %s: "env" must be an object' % (tid,))
        for k, v in env.items():
            if not k or "=" in k or "\0" in k or (v is not None and (type(v) is not str or "\0" in v)):
                raise _Fatal('run message %s: bad "env" entry %r' % (tid, k))
    bundle = msg.get("bundle")
    if bundle is not None:
        if (type(bundle) is not dict or type(bundle.get("version")) is not str
                or type(bundle.get("path")) is not str or not bundle["path"]):
            raise _Fatal('run message %s: "bundle" must be null or {"version": str, "path": str}' % (tid,))
    return tid


def _apply_env(env):
    environ = os.environ
    for k, v in env.items():
        if v is None:
            environ.pop(k, None)
        else:
            environ[k] = v


def _adopt(msg):
    env = msg.get("env")
    if env is not None:
        if type(env) is not dict or not all(type(k) is str and type(v) is str for k, v in env.items()):
            raise _Fatal('adopt message: "env" must be an object of strings')
        _apply_env(env)
    required = msg.get("packages") or []
    if type(required) is not list or not all(type(r) is str for r in required):
        raise _Fatal('adopt message: "packages" must be a list of strings')
    problems = []
    if required:
        from hearth import _packages

        problems = _packages.missing(required, msg.get("image") or os.environ.get("HEARTH_IMAGE"))
    if problems:
        return _protocol.dumps_message({"type": "adopted", "ok": False,
                                        "message": "\n".join("hearth: " + p for p in problems)})
    return _protocol.dumps_message({"type": "adopted", "ok": True})


def _run(msg, limit, stdio):
    global _armed
    tid = _check_run(msg)
    t0 = time.perf_counter_ns()
    token = _task_var.set(tid)
    try:
        env = msg.get("env")
        if env:
            _apply_env(env)
        _switch_bundle(msg.get("bundle"))
        ok, value = _invoke(msg["module"], msg["function"], msg.get("kwargs"))
    except KeyboardInterrupt as e:
        # SIGINT landed in the few bytecodes around the call.
        _armed = False
        ok, value = False, e
    finally:
        _task_var.reset(token)
    stdio.restore()
    _restore_signals()
    body = _result_body(tid, ok, value, t0, limit)
    files = sys.modules.get("hearth._files")
    if files is not None:  # the task's input files are released now that its result is encoded
        files.task_done()
    if not ok:
        _drop_frames(value)
    return body


def _drop_frames(e):
    # A failed task's frames (and what their locals hold: a model, a GPU
    # tensor) would live as long as the exception; let them go now.
    seen = 0
    while e is not None and seen < 64:
        try:
            e.__traceback__ = None
        except Exception:
            pass
        e = e.__cause__ or e.__context__
        seen += 1


# -- several tasks at once (concurrency > 1) ---------------------------------------------

def _preload(modules):
    """Imports ``modules`` in order (the environment's ``preload``); None,
    or a line naming the first that failed and why."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as e:  # SystemExit or KeyboardInterrupt from a module's top level too
            return "preload %s: %s: %s" % (name, type(e).__name__, e)
    return None


def _concurrency():
    """Tasks this replica runs at once (``HEARTH_CONCURRENCY``, set by the
    daemon at start or by ``adopt``)."""
    try:
        return max(1, int(os.environ.get("HEARTH_CONCURRENCY", "1")))
    except ValueError:
        return 1


class _TaskStream(object):
    """sys.stdout/sys.stderr while several tasks run: what a task writes
    goes to the daemon as ``log`` frames under its id, line by line, so
    each task's output stays its own; writes outside any task (a thread
    the task left behind) go to the real stream."""

    def __init__(self, server, stream, real):
        self._server = server
        self._stream = stream
        self._real = real
        self.encoding = getattr(real, "encoding", None) or "utf-8"
        self.errors = getattr(real, "errors", None) or "strict"

    def write(self, text):
        tid = _task_var.get()
        if tid is None:
            return self._real.write(text)
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        self._server.output(tid, self._stream, text)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        tid = _task_var.get()
        if tid is not None:
            self._server.flush_output(tid, self._stream)
        else:
            self._real.flush()

    def fileno(self):
        return self._real.fileno()

    def isatty(self):
        return False

    def writable(self):
        return True

    @property
    def closed(self):
        return False


class _Concurrent(object):
    """Serves the channel with up to ``k`` tasks in flight: ``async def``
    tasks on one asyncio loop (this thread), plain functions on a pool of
    ``k`` threads. Frames are read on a thread of their own and handled on
    the loop in order; a ``cancel`` cancels an asyncio task or raises
    KeyboardInterrupt in a task's thread. Frames to the daemon are written
    under one lock (a task's log lines always before its result)."""

    _LOG_CHUNK = 16 << 10

    def __init__(self, reader, limit, k):
        import asyncio
        import concurrent.futures
        import threading

        self._asyncio = asyncio
        self.reader = reader
        self.limit = limit
        self.k = k
        self.loop = asyncio.new_event_loop()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=k, thread_name_prefix="hearth-task")
        self.lock = threading.Lock()
        # Held while a thread's task ends and while a cancel targets a
        # thread: the KeyboardInterrupt lands in the task, never in the pool.
        self.handles = threading.Lock()
        self.running = {}  # tid -> asyncio.Task, or the thread ident once its thread runs it
        self.cancel_early = set()  # thread tasks cancelled before their thread took them
        self.pending = {}  # (tid, stream) -> text not yet sent (no newline yet)
        # Tasks whose result is not written yet (under self.lock, as results
        # are): what a pong lists, so none is both answered and "running".
        self.owed = set()
        self.exit_code = None

    # output ------------------------------------------------------------------------

    def _log_frame(self, tid, stream, text):
        body = _protocol.dumps_message({"type": "log", "id": tid, "stream": stream, "data": _safe_text(text)})
        _protocol.write_frame(OUT_FD, body)

    def output(self, tid, stream, text):
        with self.lock:
            key = (tid, stream)
            buf = self.pending.get(key, "") + text
            cut = buf.rfind("\n") + 1
            if cut == 0 and len(buf) < self._LOG_CHUNK:
                self.pending[key] = buf
                return
            if cut == 0:
                cut = len(buf)
            self.pending[key] = buf[cut:]
            try:
                self._log_frame(tid, stream, buf[:cut])
            except BrokenPipeError:
                _exit(0, run_atexit=False)

    def flush_output(self, tid, stream):
        with self.lock:
            buf = self.pending.pop((tid, stream), "")
            if buf:
                try:
                    self._log_frame(tid, stream, buf)
                except BrokenPipeError:
                    _exit(0, run_atexit=False)

    def _finish(self, tid, body):
        """The task's last output, then its result, as one write sequence."""
        with self.lock:
            for stream in ("stdout", "stderr"):
                buf = self.pending.pop((tid, stream), "")
                if buf:
                    self._log_frame(tid, stream, buf)
            _protocol.write_frame(OUT_FD, body)
            self.owed.discard(tid)

    # tasks ---------------------------------------------------------------------------

    def _start(self, msg):
        tid = _check_run(msg)
        if tid in self.running:
            raise _Fatal("run message %s: that task is already running" % (tid,))
        if len(self.running) >= self.k:
            raise _Fatal("run message %s: %d tasks are already running, the replica's concurrency"
                         % (tid, len(self.running)))
        t0 = time.perf_counter_ns()
        with self.lock:
            self.owed.add(tid)
        env = msg.get("env")
        if env:
            _apply_env(env)
        _switch_bundle(msg.get("bundle"))
        ctx = _contextvars.copy_context()
        ctx.run(_task_var.set, tid)
        try:
            fn, kwargs, plan, name = ctx.run(_prepare, msg["module"], msg["function"], msg.get("kwargs"))
        except BaseException as e:
            self._done(tid, t0, False, e)
            return
        if _is_async(fn):
            task = self.loop.create_task(self._run_async(fn, kwargs, plan, name), context=ctx)
            # The callback, not the coroutine, reports: a task cancelled
            # before its first step never runs its coroutine at all.
            task.add_done_callback(lambda t, tid=tid, t0=t0: self._async_done(tid, t0, t))
            self.running[tid] = task
        else:
            self.running[tid] = None
            fut = self.loop.run_in_executor(self.pool, ctx.run, self._run_sync, tid, fn, kwargs, plan, name)
            fut.add_done_callback(lambda f, tid=tid, t0=t0: self._thread_done(tid, t0, f))

    async def _run_async(self, fn, kwargs, plan, name):
        try:
            return True, _output(plan, name, await fn(**kwargs))
        except BaseException as e:
            return False, e

    def _async_done(self, tid, t0, task):
        if task.cancelled():
            ok, value = False, self._asyncio.CancelledError()
        else:
            ok, value = task.result()
        self._done(tid, t0, ok, value)

    def _run_sync(self, tid, fn, kwargs, plan, name):
        import threading

        with self.handles:
            if tid in self.cancel_early:
                return False, KeyboardInterrupt()
            self.running[tid] = threading.get_ident()
        try:
            value = fn(**kwargs)
            if type(value) is _CoroutineType:
                value = self._asyncio.run(value)
            return True, _output(plan, name, value)
        except BaseException as e:
            return False, e
        finally:
            with self.handles:
                self.running[tid] = None

    def _thread_done(self, tid, t0, fut):
        try:
            ok, value = fut.result()
        except BaseException as e:  # KeyboardInterrupt landed between the try and the call
            ok, value = False, e
        self._done(tid, t0, ok, value)

    def _done(self, tid, t0, ok, value):
        self.running.pop(tid, None)
        self.cancel_early.discard(tid)
        body = _result_body(tid, ok, value, t0, self.limit)
        if not ok:
            _drop_frames(value)
        try:
            self._finish(tid, body)
        except BrokenPipeError:
            _exit(0, run_atexit=False)

    def _cancel(self, msg):
        tid = msg.get("id")
        if tid not in self.running:
            return  # finished (its result may be on its way): nothing to do
        handle = self.running.get(tid)
        if handle is None or isinstance(handle, int):
            import ctypes

            with self.handles:
                handle = self.running.get(tid)
                if handle is None:
                    # Not on its thread yet (or just off it): it stops as it starts.
                    self.cancel_early.add(tid)
                else:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(handle),
                                                               ctypes.py_object(KeyboardInterrupt))
        else:
            handle.cancel()

    # channel ---------------------------------------------------------------------------

    def _frame(self, body):
        if self.exit_code is not None:
            return
        try:
            if body is None:
                return self._stop(0)
            msg = _protocol.loads_message(body)
            kind = msg.get("type")
            if kind == "run":
                self._start(msg)
            elif kind == "cancel":
                self._cancel(msg)
            elif kind == "ping":
                with self.lock:
                    _protocol.write_frame(OUT_FD, _protocol.dumps_message(
                        {"type": "pong", "id": msg.get("id"), "running": sorted(self.owed)}))
            elif kind == "shutdown":
                self._stop(0)
            elif type(kind) is str:
                self._fatal("unknown message type %r" % (kind,))
            else:
                self._fatal('malformed frame: no "type"')
        except (_protocol.ProtocolError, _Fatal) as e:
            self._fatal(str(e))
        except BrokenPipeError:
            self._stop(0)

    def _fatal(self, message):
        with self.lock:
            self._stop(_fatal(message))

    def _stop(self, code):
        if self.exit_code is None:
            self.exit_code = code
            self.loop.stop()

    def _read(self):
        try:
            while True:
                body = self.reader.read_body()
                self.loop.call_soon_threadsafe(self._frame, body)
                if body is None:
                    return
        except (_protocol.ProtocolError, OSError) as e:
            message = str(e) if isinstance(e, _protocol.ProtocolError) else "channel error: %s" % (e,)
            self.loop.call_soon_threadsafe(self._fatal, message)
        except RuntimeError:
            pass  # the loop closed: the worker is exiting

    def serve(self, stdio):
        import threading

        sys.stdout = _TaskStream(self, "stdout", stdio.out)
        sys.stderr = _TaskStream(self, "stderr", stdio.err)
        self._asyncio.set_event_loop(self.loop)
        threading.Thread(target=self._read, name="hearth-channel", daemon=True).start()
        self.loop.run_forever()
        return self.exit_code if self.exit_code is not None else 0


def _is_async(fn):
    code = getattr(fn, "__code__", None)
    # CO_COROUTINE; a callable object's __call__ or a bound method: look through.
    if code is None:
        code = getattr(getattr(fn, "__call__", None), "__code__", None)
    return code is not None and bool(code.co_flags & 0x0080)


# -- channel -----------------------------------------------------------------------------

def _send(body):
    try:
        _protocol.write_frame(OUT_FD, body)
    except BrokenPipeError:
        _exit(0, run_atexit=False)


def _fatal(message):
    try:
        _protocol.write_frame(OUT_FD, {"type": "error", "message": _safe_text(message)})
    except OSError:
        pass
    return 2


def _exit(code, run_atexit=True):
    _flush_std()
    if run_atexit:
        try:
            import atexit

            atexit._run_exitfuncs()
        except BaseException:
            pass
        _flush_std()
    os._exit(code)


def _python_version():
    v = sys.version_info
    s = "%d.%d.%d" % (v[0], v[1], v[2])
    if v[3] != "final":
        s += {"alpha": "a", "beta": "b", "candidate": "rc"}.get(v[3], v[3]) + str(v[4])
    return s


def main():
    """Serve the channel on fds 3/4 until EOF, shutdown or a fatal error.

    Returns the exit status (the callers pass it to ``_exit``).
    """
    global _active
    for fd in (IN_FD, OUT_FD):
        try:
            os.fstat(fd)
        except OSError:
            sys.stderr.write("hearth worker: fd %d is not open; fd 3 (daemon -> worker) and fd 4 "
                             "(worker -> daemon) must be the task channel\n" % fd)
            return 2
    os.set_inheritable(IN_FD, False)
    os.set_inheritable(OUT_FD, False)
    required = os.environ.get("HEARTH_REQUIRE_PACKAGES", "").split()
    if required:
        from hearth import _packages

        problems = _packages.missing(required, os.environ.get("HEARTH_IMAGE"))
        if problems:
            # Before `ready`: the daemon reports this output as the reason
            # the replica could not start, and fails the waiting tasks.
            for line in problems:
                sys.stderr.write("hearth: %s\n" % line)
            sys.stderr.flush()
            return 3
    from hearth import _k8s_compat

    _k8s_compat.install()
    failed = _preload(os.environ.get("HEARTH_PRELOAD", "").split())
    if failed:
        sys.stderr.write("hearth: %s\n" % failed)
        sys.stderr.flush()
        return 3
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigterm)
    limit = _protocol.max_frame_size()
    stdio = _Stdio()
    reader = _protocol.FrameReader(IN_FD, limit)
    loads = _protocol.loads_message
    _active = True
    k = _concurrency()
    _send(_protocol.dumps_message({
        "type": "ready",
        "pid": os.getpid(),
        "python": _python_version(),
        "implementation": sys.implementation.name,
        "protocol": _protocol.PROTOCOL_VERSION,
    }))
    try:
        if k > 1:
            return _Concurrent(reader, limit, k).serve(stdio)
        while True:
            body = reader.read_body()
            if body is None:
                return 0
            msg = loads(body)
            kind = msg.get("type")
            if kind == "run":
                _send(_run(msg, limit, stdio))
            elif kind == "adopt":
                _send(_adopt(msg))
                if _concurrency() > 1:
                    return _Concurrent(reader, limit, _concurrency()).serve(stdio)
            elif kind == "ping":
                # One task at a time: the one before this ping has answered.
                _send(_protocol.dumps_message({"type": "pong", "id": msg.get("id"), "running": []}))
            elif kind == "shutdown":
                return 0
            elif type(kind) is str:
                return _fatal("unknown message type %r" % (kind,))
            else:
                return _fatal('malformed frame: no "type"')
    except (_protocol.ProtocolError, _Fatal) as e:
        return _fatal(str(e))
    except OSError as e:
        return _fatal("channel error: %s" % (e,))
    finally:
        _active = False
