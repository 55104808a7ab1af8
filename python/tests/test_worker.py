"""Tests of the replica worker (hearth._worker), driven over real pipes.

The worker runs as a subprocess with the task channel on fds 3 (in) and 4
(out), stdout/stderr on pipes and stdin on /dev/null, exactly as hearthd
starts it. The wire side of these tests is written independently of
hearth._protocol (struct + json), so the frame format is checked, not assumed.

Interpreters: the worker runs under this interpreter; set HEARTH_TEST_PYTHONS
to an os.pathsep-separated list of other python3 executables to run every
worker test under each of them too (e.g. a CPython 3.8).
"""

import base64
import datetime
import decimal
import fcntl
import json
import math
import os
import pickle
import select
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

PY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PY_DIR not in sys.path:
    sys.path.insert(0, PY_DIR)

from hearth import _cache, _protocol, actor_cache  # noqa: E402
from hearth._protocol import decode_value, encode_value  # noqa: E402

WORKER = os.path.join(PY_DIR, "hearth", "_worker.py")
START = os.path.join(PY_DIR, "hearth", "_start.py")  # what hearthd runs
V1 = "a" * 64
V2 = "b" * 64


def _pythons():
    extra = [p for p in os.environ.get("HEARTH_TEST_PYTHONS", "").split(os.pathsep) if p]
    return [sys.executable] + extra


@pytest.fixture(params=_pythons(), ids=lambda p: os.path.basename(p) if p == sys.executable else p)
def python(request):
    if not shutil.which(request.param) and not os.path.exists(request.param):
        pytest.skip("no interpreter %s" % request.param)
    return request.param


# -- a worker on pipes ------------------------------------------------------------

class Worker(object):
    def __init__(self, python, env=None, mode="script", cwd=None, max_frame=None):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HEARTH_"))}
        full_env.pop("PYTHONPATH", None)
        if env:
            full_env.update(env)
        if max_frame is not None:
            full_env["HEARTH_MAX_FRAME"] = str(max_frame)
        if mode == "script":
            argv = [python, "-X", "utf8", WORKER]
        elif mode == "start":
            argv = [python, "-X", "utf8", START]
        else:
            argv = [python, "-X", "utf8", "-m", "hearth._worker"]
            full_env["PYTHONPATH"] = os.pathsep.join(
                [PY_DIR] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
            )
        to_r, to_w = os.pipe()  # daemon -> worker
        from_r, from_w = os.pipe()  # worker -> daemon

        def child_fds():
            # Move the child ends above 9 first (close-on-exec copies), so
            # dup2 onto 3/4 never collides with them and clears CLOEXEC.
            a = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 10)
            b = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=child_fds,
            env=full_env,
            cwd=cwd,
        )
        os.close(to_r)
        os.close(from_w)
        self.w = to_w
        self.r = from_r
        self.buf = b""
        self.out = b""
        self.err = b""
        for fd in (self.proc.stdout.fileno(), self.proc.stderr.fileno()):
            os.set_blocking(fd, False)
        self.ready = self.recv()

    @property
    def pid(self):
        return self.proc.pid

    # wire
    def send_raw(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.w, view)
            view = view[n:]

    def send(self, msg):
        body = json.dumps(msg, separators=(",", ":")).encode("utf-8")
        self.send_raw(struct.pack(">I", len(body)) + body)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame from the worker in time; stderr: %r" % self.drain()[1])
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    return False
                self.buf += chunk
        return True

    def recv(self, timeout=30.0):
        """Next message, or None at EOF."""
        deadline = time.monotonic() + timeout
        if not self._fill(4, deadline):
            assert self.buf == b"", "EOF inside a header"
            return None
        (n,) = struct.unpack(">I", self.buf[:4])
        assert self._fill(4 + n, deadline), "EOF inside a frame"
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        msg = json.loads(body.decode("utf-8"))
        assert isinstance(msg, dict) and "type" in msg
        return msg

    def run(self, module, function, kwargs=None, bundle=None, env=None, tid=None, raw=False, **extra):
        tid = tid or "t-%d" % time.monotonic_ns()
        msg = {"type": "run", "id": tid, "module": module, "function": function,
               "kwargs": kwargs if raw else encode_value(kwargs or {}), "bundle": bundle, "timeout": None}
        if env is not None:
            msg["env"] = env
        msg.update(extra)
        self.send(msg)
        res = self.recv()
        assert res is not None, "worker died: rc=%r stderr=%r" % (self.proc.wait(5), self.drain()[1])
        assert res["type"] == "result" and res["id"] == tid, res
        assert isinstance(res["duration_us"], int) and res["duration_us"] >= 0
        return res

    def call(self, module, function, bundle=None, **kwargs):
        res = self.run(module, function, kwargs, bundle=bundle)
        assert res["ok"], res["error"]["traceback"]
        return decode_value(res["value"])

    def drain(self):
        for fd, attr in ((self.proc.stdout.fileno(), "out"), (self.proc.stderr.fileno(), "err")):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                setattr(self, attr, getattr(self, attr) + chunk)
        out, err = self.out, self.err
        self.out = self.err = b""
        return out, err

    def wait(self, timeout=20):
        return self.proc.wait(timeout)

    def close(self):
        for fd in (self.w, self.r):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


# -- the bundle ---------------------------------------------------------------------

TASKS = r'''
import asyncio
import decimal
import io
import json
import os
import signal
import subprocess
import sys
import time

import thirdparty
from hearth import actor_cache
from app.models import CustomError, Point

VERSION = "v1"
calls = []


def add(a, b):
    return a + b


def version():
    return VERSION


def echo(x):
    return x


def echo_kwargs(**kw):
    return kw


def boom(msg):
    def inner():
        raise ValueError(msg)
    inner()


def fail_custom():
    raise CustomError("custom " + VERSION)


def chained():
    try:
        {}["missing"]
    except KeyError as e:
        raise RuntimeError("wrapped") from e


def getpid():
    return os.getpid()


def set_env(key, value):
    os.environ[key] = value


def get_env(key):
    return os.environ.get(key)


def big(n):
    return "x" * n


def big_error(n):
    raise ValueError("y" * n)


@actor_cache
def expensive(n):
    calls.append(n)
    return {"square": n * n, "version": VERSION}


def cached(n):
    return expensive(n)


def cache_calls():
    return len(calls)


def ids():
    return {"decimal": id(decimal), "json": id(json), "thirdparty": id(thirdparty),
            "tp_state": list(thirdparty.state), "context": id(decimal.getcontext())}


def tp_append(x):
    thirdparty.state.append(x)
    return list(thirdparty.state)


def where():
    import app.models
    import hearth
    from hearth import _worker
    return {"tasks": __file__, "models": app.models.__file__, "hearth": hearth.__file__,
            "sys_path": list(sys.path), "cwd": os.getcwd(), "in_worker": _worker.in_worker(),
            "task_id": _worker.current_task_id, "main": sys.modules["__main__"].__name__}


def say(out, err):
    print(out)
    print(err, file=sys.stderr)
    sys.stdout.write("no newline")
    return "said"


def sleep(seconds, marker):
    print(marker, flush=True)
    time.sleep(seconds)
    return "slept"


def catch_and_sleep(seconds):
    time.sleep(seconds)
    return "done"


def fds():
    own = {fd: os.readlink("/proc/self/fd/%d" % fd) for fd in (3, 4)}
    ls = subprocess.run(["ls", "-l", "/proc/self/fd"], close_fds=False,
                        stdout=subprocess.PIPE, universal_newlines=True).stdout
    probe = ("import os\n"
             "for fd in (3, 4):\n"
             "    try:\n"
             "        print(fd, os.readlink('/proc/self/fd/%d' % fd))\n"
             "    except OSError:\n"
             "        pass\n")
    py = subprocess.run([sys.executable, "-c", probe], close_fds=False,
                        stdout=subprocess.PIPE, universal_newlines=True).stdout
    path = os.path.join(os.environ["PROBE_DIR"], "system.txt")
    os.system("ls -l /proc/self/fd > %s" % path)
    with open(path) as f:
        system = f.read()
    return {"own": own, "ls": ls, "py": py, "system": system}


def close_stdout():
    sys.stdout.close()
    sys.stderr.close()
    return 1


def replace_stdout():
    sys.stdout = io.StringIO()
    sys.stderr = io.StringIO()
    print("swallowed")
    return 1


def close_fd1():
    os.close(1)
    return 1


def redirect_fd1(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    os.dup2(fd, 1)
    os.close(fd)
    return 1


def hello(text="hello after"):
    print(text)
    print(text, file=sys.stderr)
    os.system("echo child-" + text)
    return 1


def sysexit():
    sys.exit(3)


def die(code):
    os._exit(code)


def make_point(x, y):
    return Point(x, y)


def point_sum(p):
    return p.x + p.y


async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b


def ignore_signals():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 1


def surrogate():
    return "bad\udcff"


def unpicklable():
    return lambda: 1


def unicode():
    return "h\u00e9llo \u2713"


class Held(object):
    pass


held = []


def fail_holding():
    import gc
    import weakref
    gc.disable()  # only refcounting may free it
    obj = Held()
    held.append(weakref.ref(obj))
    try:
        raise ValueError("held")
    except ValueError as err:
        keep = err  # frame -> exception -> traceback -> frame: a cycle
        raise keep


def held_alive():
    import gc
    alive = held[-1]() is not None
    gc.enable()
    return alive


class FakeTask(object):
    """What the SDK's @actor.task makes: calling it would go to the daemon."""

    def __init__(self, fn):
        self._hearth_fn = fn

    def __call__(self, **kwargs):
        raise RuntimeError("called the daemon from inside the replica")


class FnTask(object):
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, **kwargs):
        raise RuntimeError("called the daemon from inside the replica")


class WrappedTask(object):
    def __init__(self, fn):
        self.__wrapped__ = fn

    def __call__(self, **kwargs):
        raise RuntimeError("called the daemon from inside the replica")


hearth_task = FakeTask(add)
fn_task = FnTask(add)
wrapped_task = WrappedTask(add)
cached_task = FakeTask(cached)


class Holder(object):
    @staticmethod
    def add(a, b):
        return a + b
'''

MODELS = r'''
import dataclasses


class CustomError(Exception):
    pass


@dataclasses.dataclass
class Point:
    x: int
    y: int
'''


@pytest.fixture
def env_dirs(tmp_path):
    """(code root, thirdparty site dir, probe dir)"""
    code = tmp_path / "code"
    site = tmp_path / "site"
    probe = tmp_path / "probe"
    for d in (code, site, probe):
        d.mkdir()
    (site / "thirdparty.py").write_text("state = []\n\ndef hello():\n    return 'third ' + str(len(state))\n")
    return code, site, probe


def write_bundle(code, version, tasks_src=TASKS, models_src=MODELS):
    root = code / version
    (root / "app").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "tasks.py").write_text(tasks_src)
    (root / "app" / "models.py").write_text(models_src)
    return {"version": version, "path": str(root)}


@pytest.fixture
def bundle(env_dirs):
    return write_bundle(env_dirs[0], V1)


@pytest.fixture
def make_worker(python, env_dirs):
    code, site, probe = env_dirs
    workers = []

    def make(**kw):
        env = {"PYTHONPATH": str(site), "PROBE_DIR": str(probe)}
        env.update(kw.pop("env", {}))
        w = Worker(python, env=env, **kw)
        workers.append(w)
        return w

    yield make
    for w in workers:
        w.close()


@pytest.fixture
def worker(make_worker):
    return make_worker()


T = "app.tasks"


# -- start-up and the channel -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["script", "module", "start"])
def test_ready_and_invocations(make_worker, bundle, python, mode, tmp_path):
    w = make_worker(mode=mode, cwd=str(tmp_path))
    ready = w.ready
    assert ready["type"] == "ready"
    assert ready["pid"] == w.pid
    assert ready["implementation"] == "cpython"
    assert ready["protocol"] == 1
    version = subprocess.check_output(
        [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]).decode().strip()
    assert ready["python"] == version
    assert set(ready) == {"type", "pid", "python", "implementation", "protocol"}

    info = w.call(T, "where", bundle=bundle)
    assert info["tasks"].startswith(bundle["path"] + os.sep)
    assert info["hearth"] == os.path.join(PY_DIR, "hearth", "__init__.py")
    assert info["in_worker"] is True
    assert isinstance(info["task_id"], str) and info["task_id"].startswith("t-")
    assert info["main"] == "__main__"
    assert info["sys_path"][0] == bundle["path"]
    assert os.path.join(PY_DIR, "hearth") not in info["sys_path"]
    assert str(tmp_path) not in info["sys_path"] and "" not in info["sys_path"]
    assert PY_DIR in info["sys_path"]
    w.send({"type": "shutdown"})
    assert w.recv() is None
    assert w.wait() == 0


def test_run_returns_value(worker, bundle):
    res = worker.run(T, "add", {"a": 2, "b": 3}, bundle=bundle)
    assert res["ok"] is True and res["value"] == 5
    assert set(res) == {"type", "id", "ok", "value", "duration_us"}
    assert worker.call(T, "unicode", bundle=bundle) == "h\u00e9llo \u2713"


def test_same_process_across_tasks_and_env_persists(worker, bundle):
    pids = {worker.call(T, "getpid", bundle=bundle) for _ in range(100)}
    assert pids == {worker.pid}
    worker.call(T, "set_env", bundle=bundle, key="HEARTH_T_KEY", value="run_time")
    assert worker.call(T, "get_env", bundle=bundle, key="HEARTH_T_KEY") == "run_time"


def test_env_in_run_message(worker, bundle):
    res = worker.run(T, "get_env", {"key": "FROM_MSG"}, bundle=bundle, env={"FROM_MSG": "1"})
    assert res["value"] == "1"
    assert worker.call(T, "get_env", bundle=bundle, key="FROM_MSG") == "1"  # stays
    res = worker.run(T, "get_env", {"key": "FROM_MSG"}, bundle=bundle, env={"FROM_MSG": None})
    assert res["value"] is None


def test_ping_pong(worker):
    worker.send({"type": "ping", "id": "p-1"})
    assert worker.recv() == {"type": "pong", "id": "p-1", "running": []}
    worker.send({"type": "ping", "id": 7})
    assert worker.recv() == {"type": "pong", "id": 7, "running": []}


def test_adopt_applies_env_and_checks_packages(worker, bundle):
    # A pre-started spare taken by an environment: env first, then packages.
    worker.send({"type": "adopt", "env": {"ADOPTED_BY": "env-a"}, "packages": [], "image": "img"})
    assert worker.recv() == {"type": "adopted", "ok": True}
    assert worker.call(T, "get_env", bundle=bundle, key="ADOPTED_BY") == "env-a"
    worker.send({"type": "adopt", "env": {}, "packages": ["no-such-package-xyz", "pip>=0"], "image": "img:1"})
    msg = worker.recv()
    assert msg["type"] == "adopted" and msg["ok"] is False
    assert "image img:1 does not provide the Python package 'no-such-package-xyz'" in msg["message"], msg
    # Refusing an environment is the daemon's call; the worker keeps serving.
    assert worker.call(T, "add", bundle=bundle, a=1, b=2) == 3


@pytest.mark.parametrize("body", [
    b'{"type":"adopt","env":{"A":1}}', b'{"type":"adopt","env":["A"]}', b'{"type":"adopt","packages":"numpy"}',
])
def test_malformed_adopt_is_fatal(worker, body):
    worker.send_raw(struct.pack(">I", len(body)) + body)
    msg = worker.recv()
    assert msg["type"] == "error" and "adopt message" in msg["message"], msg
    assert worker.recv() is None
    assert worker.wait() == 2


def test_eof_exits_zero(worker):
    os.close(worker.w)
    assert worker.recv() is None
    assert worker.wait() == 0


def test_shutdown_exits_zero(worker, bundle):
    worker.call(T, "add", bundle=bundle, a=1, b=1)
    worker.send({"type": "shutdown"})
    assert worker.recv() is None
    assert worker.wait() == 0


def test_missing_channel_fds(python):
    p = subprocess.run([python, WORKER], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 2
    assert b"fd 3" in p.stderr


# -- errors ----------------------------------------------------------------------------

def test_raising_task_reports_and_worker_survives(worker, bundle):
    res = worker.run(T, "boom", {"msg": "bad value"}, bundle=bundle)
    assert res["ok"] is False and "value" not in res
    err = res["error"]
    assert err["type"] == "ValueError" and err["module"] == "builtins"
    assert err["message"] == "bad value"
    tb = err["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "in boom" in tb and "in inner" in tb and tb.rstrip().endswith("ValueError: bad value")
    assert "_worker.py" not in tb
    assert worker.call(T, "add", bundle=bundle, a=1, b=2) == 3

    res = worker.run(T, "fail_custom", {}, bundle=bundle)
    assert res["error"]["type"] == "CustomError" and res["error"]["module"] == "app.models"
    res = worker.run(T, "chained", {}, bundle=bundle)
    assert res["error"]["type"] == "RuntimeError"
    assert "KeyError" in res["error"]["traceback"] and "direct cause" in res["error"]["traceback"]


def test_import_and_lookup_errors(worker, bundle):
    res = worker.run("app.nope", "f", {}, bundle=bundle)
    assert res["error"]["type"] == "ModuleNotFoundError"
    assert "importlib" not in res["error"]["traceback"]
    res = worker.run(T, "nope", {}, bundle=bundle)
    assert res["error"]["type"] == "AttributeError"
    res = worker.run(T, "add", {"a": 1}, bundle=bundle)
    assert res["error"]["type"] == "TypeError"
    assert worker.call(T, "add", bundle=bundle, a=1, b=2) == 3


def test_failed_task_frames_are_released(worker, bundle):
    res = worker.run(T, "fail_holding", {}, bundle=bundle)
    assert res["error"]["message"] == "held"
    assert worker.call(T, "held_alive", bundle=bundle) is False


def test_sys_exit_is_an_error_result(worker, bundle):
    res = worker.run(T, "sysexit", {}, bundle=bundle)
    assert res["error"]["type"] == "SystemExit" and res["error"]["message"] == "3"
    assert worker.call(T, "add", bundle=bundle, a=1, b=2) == 3


def test_os_exit_kills_the_worker(worker, bundle):
    worker.send({"type": "run", "id": "t-die", "module": T, "function": "die", "kwargs": {"code": 7},
                 "bundle": bundle})
    assert worker.recv() is None
    assert worker.wait() == 7


def test_unencodable_result(worker, bundle):
    res = worker.run(T, "unpicklable", {}, bundle=bundle)
    assert res["ok"] is False
    assert res["error"]["message"].startswith("result could not be encoded: ")
    assert worker.call(T, "add", bundle=bundle, a=1, b=2) == 3


# -- values ------------------------------------------------------------------------------

ECHO_VALUES = [
    None, True, False, 0, -5, 2 ** 63 - 1, -2 ** 63, 2 ** 63, -2 ** 63 - 1, 10 ** 40, 1.5, -0.0, 1e308,
    float("inf"), float("-inf"), "", "h\u00e9llo \u2713 \U0001f600", [1, [2, [3, []]]], {"a": {"b": [1, None]}},
    {1: "int key"}, {"a": 1, 2: "mixed"}, {"$pickle": "not base64!"}, {"$dict": {"$pickle": 1}}, {"$other": 2},
    {"$pickle": "x", "second": 1}, {"x": {"$pickle": "nested"}}, {1, 2, 3}, frozenset({"a"}), b"\x00bytes\xff",
    bytearray(b"ba"), datetime.datetime(2024, 5, 6, 7, 8, 9, 10), datetime.date(2020, 1, 1),
    decimal.Decimal("1.10"), 3 + 4j, signal.Signals.SIGINT, {"s": {1, 2}, "l": [b"x", [1, 2]]},
]


def test_value_round_trip_through_worker(worker, bundle):
    for value in ECHO_VALUES:
        back = worker.call(T, "echo", bundle=bundle, x=value)
        assert back == value and type(back) is type(value), (value, back)
    nan = worker.call(T, "echo", bundle=bundle, x=float("nan"))
    assert math.isnan(nan)
    back = worker.call(T, "echo", bundle=bundle, x=(1, (2, "3"), [3.0]))
    assert back == (1, (2, "3"), [3.0]) and type(back[1]) is tuple and type(back[2][0]) is float
    assert worker.call(T, "echo_kwargs", bundle=bundle, **{"a": {1}, "b": [b"y"]}) == {"a": {1}, "b": [b"y"]}


def test_wire_forms(worker, bundle):
    # The raw result frame: JSON where JSON can, $pickle per value, $dict escape.
    res = worker.run(T, "echo", {"x": {"n": 1, "s": {"$pickle": base64.b64encode(pickle.dumps({7}, 4)).decode()},
                                       "esc": {"$dict": {"$pickle": "lit"}}}}, bundle=bundle, raw=True)
    value = res["value"]
    assert value["n"] == 1
    assert set(value["s"]) == {"$pickle"} and pickle.loads(base64.b64decode(value["s"]["$pickle"])) == {7}
    assert value["esc"] == {"$dict": {"$pickle": "lit"}}
    assert decode_value(value) == {"n": 1, "s": {7}, "esc": {"$pickle": "lit"}}


def test_custom_class_from_bundle(worker, bundle, monkeypatch):
    monkeypatch.syspath_prepend(bundle["path"])
    try:
        res = worker.run(T, "make_point", {"x": 2, "y": 5}, bundle=bundle)
        assert set(res["value"]) == {"$pickle"}
        p = decode_value(res["value"])
        assert type(p).__name__ == "Point" and (p.x, p.y) == (2, 5)
        assert worker.call(T, "point_sum", bundle=bundle, p=p) == 7
        assert worker.call(T, "echo", bundle=bundle, x=[p, {"p": p}]) == [p, {"p": p}]
    finally:
        for name in [n for n in sys.modules if n == "app" or n.startswith("app.")]:
            del sys.modules[name]


def test_lone_surrogate_result_is_pickled(worker, bundle):
    res = worker.run(T, "surrogate", {}, bundle=bundle)
    assert res["ok"] and set(res["value"]) == {"$pickle"}
    assert decode_value(res["value"]) == "bad\udcff"


def test_async_task(worker, bundle):
    assert worker.call(T, "async_add", bundle=bundle, a=2, b=40) == 42


def test_task_wrappers_are_unwrapped(worker, bundle):
    for name in ("hearth_task", "fn_task", "wrapped_task", "Holder.add"):
        assert worker.call(T, name, bundle=bundle, a=20, b=22) == 42, name
    assert worker.call(T, "cached_task", bundle=bundle, n=9)["square"] == 81
    assert worker.call(T, "cached_task", bundle=bundle, n=9)["square"] == 81
    assert worker.call(T, "cache_calls", bundle=bundle) == 1  # actor_cache wrapper kept


# -- frame limits and malformed input ---------------------------------------------------------

LIMIT = 65536


def test_result_too_large(make_worker, bundle):
    w = make_worker(max_frame=LIMIT)
    res = w.run(T, "big", {"n": LIMIT + 10}, bundle=bundle)
    assert res["ok"] is False
    err = res["error"]
    assert err["type"] == "ResultTooLarge" and err["module"] == "hearth"
    assert err["message"].endswith("bytes exceeds the limit of %d bytes (HEARTH_MAX_FRAME)" % LIMIT)
    assert w.call(T, "big", bundle=bundle, n=1000) == "x" * 1000
    # An error too large for a frame is truncated, not fatal.
    res = w.run(T, "big_error", {"n": 4 * LIMIT}, bundle=bundle)
    assert res["error"]["type"] == "ValueError" and "truncated" in res["error"]["message"]
    # A large incoming frame under the limit is fine.
    assert len(w.call(T, "echo", bundle=bundle, x="z" * (LIMIT - 1000))) == LIMIT - 1000
    w.send({"type": "ping", "id": 1})
    assert w.recv() == {"type": "pong", "id": 1, "running": []}


def test_large_frames_default_limit(worker, bundle):
    blob = os.urandom(3 << 20)
    assert worker.call(T, "echo", bundle=bundle, x=blob) == blob


def test_oversize_incoming_frame_is_fatal(make_worker):
    w = make_worker(max_frame=LIMIT)
    w.send_raw(struct.pack(">I", 100000) + b"{")
    assert w.recv() == {"type": "error",
                        "message": "frame of 100000 bytes exceeds the limit of 65536 bytes (HEARTH_MAX_FRAME)"}
    assert w.recv() is None
    assert w.wait() == 2


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b'"str"', b"", b"\xff\xfe{}", b'{"type": "dance"}', b'{"id": 1}', b'{"type": 5}',
    b'{"type": "run", "id": "t", "module": "m"}', b'{"type": "run", "id": "t", "module": "m", "function": "f",'
    b' "kwargs": [1]}', b'{"type":"run","id":"t","module":"m","function":"f","env":{"A":1}}',
    b'{"type":"run","id":"t","module":"m","function":"f","bundle":{"version":"v"}}', b'{"type":"ping","x":NaN}',
])
def test_malformed_frames_are_fatal(worker, body):
    worker.send_raw(struct.pack(">I", len(body)) + body)
    msg = worker.recv()
    assert msg["type"] == "error" and isinstance(msg["message"], str) and msg["message"]
    assert set(msg) == {"type", "message"}
    assert worker.recv() is None
    assert worker.wait() == 2


def test_eof_inside_a_frame(worker):
    worker.send_raw(struct.pack(">I", 50) + b'{"type"')
    os.close(worker.w)
    msg = worker.recv()
    assert msg["type"] == "error"
    assert worker.wait() == 2


# -- bundles and actor_cache ----------------------------------------------------------------------

def test_bundle_reload_keeps_cache_and_third_party(make_worker, env_dirs):
    code = env_dirs[0]
    b1 = write_bundle(code, V1)
    src2 = TASKS.replace('VERSION = "v1"', 'VERSION = "v2"') + "\n\ndef only_v2():\n    return 'new'\n"
    b2 = write_bundle(code, V2, tasks_src=src2)
    w = make_worker()

    assert w.call(T, "version", bundle=b1) == "v1"
    assert w.call(T, "cached", bundle=b1, n=3) == {"square": 9, "version": "v1"}
    assert w.call(T, "cache_calls", bundle=b1) == 1
    assert w.call(T, "tp_append", bundle=b1, x="from v1") == ["from v1"]
    ids1 = w.call(T, "ids", bundle=b1)
    assert w.run(T, "only_v2", {}, bundle=b1)["error"]["type"] == "AttributeError"
    where1 = w.call(T, "where", bundle=b1)

    assert w.call(T, "version", bundle=b2) == "v2"
    assert w.call(T, "only_v2", bundle=b2) == "new"
    where2 = w.call(T, "where", bundle=b2)
    assert where2["tasks"].startswith(b2["path"] + os.sep)
    assert where2["models"].startswith(b2["path"] + os.sep)
    assert b1["path"] not in where2["sys_path"] and where2["sys_path"][0] == b2["path"]
    assert where2["hearth"] == where1["hearth"]
    # The value computed under v1 is still there: no recomputation under v2.
    assert w.call(T, "cached", bundle=b2, n=3) == {"square": 9, "version": "v1"}
    assert w.call(T, "cache_calls", bundle=b2) == 0
    assert w.call(T, "cached", bundle=b2, n=4) == {"square": 16, "version": "v2"}
    # Third-party modules (stdlib, PYTHONPATH) are the same objects with their state.
    ids2 = w.call(T, "ids", bundle=b2)
    assert ids2 == ids1
    assert ids2["tp_state"] == ["from v1"]
    # A class from the new code is the new class.
    res = w.run(T, "fail_custom", {}, bundle=b2)
    assert res["error"]["message"] == "custom v2"
    # Back to v1: its code again.
    assert w.call(T, "version", bundle=b1) == "v1"
    assert w.call(T, "cached", bundle=b1, n=3)["version"] == "v1"


def test_null_bundle_runs_installed_code(make_worker, bundle):
    w = make_worker()
    assert w.call("thirdparty", "hello") == "third 0"
    assert w.call(T, "version", bundle=bundle) == "v1"
    assert w.call("thirdparty", "hello", bundle=None) == "third 0"
    res = w.run(T, "version", {}, bundle=None)  # the bundle's modules are gone with it
    assert res["error"]["type"] == "ModuleNotFoundError"
    assert w.call(T, "version", bundle=bundle) == "v1"


def test_actor_cache_in_process():
    calls = []

    @actor_cache
    def f(a, b=0):
        calls.append((a, b))
        return a + b

    @actor_cache()
    def g(x):
        calls.append(x)
        return len(x)

    assert f(1) == 1 and f(1) == 1 and f(1, b=2) == 3 and f(1, b=2) == 3
    assert calls == [(1, 0), (1, 2)]
    assert g([1, 2]) == 2 and g([1, 2]) == 2 and g({"k": {1}}) == 1 and g({"k": {1}}) == 1
    assert calls[2:] == [[1, 2], {"k": {1}}]
    assert f.__name__ == "f" and f.cache_size() == 2
    f.cache_clear()
    assert f.cache_size() == 0 and g.cache_size() == 2

    # Re-decorating a function with the same module + qualname finds the values.
    def f(a, b=0):  # noqa: F811
        raise AssertionError("recomputed")

    f = actor_cache(f)
    assert g.cache_size() == 2
    assert _cache.registry_key(f) == (__name__, "test_actor_cache_in_process.<locals>.f")

    def g(x):  # noqa: F811
        raise AssertionError("recomputed")

    g = actor_cache(g)
    assert g([1, 2]) == 2
    actor_cache.clear()
    assert g.cache_size() == 0

    with pytest.raises(ZeroDivisionError):
        actor_cache(lambda: 1 / 0)()


# -- stdio, fds and signals -----------------------------------------------------------------------

def test_logs_arrive_before_result(worker, bundle):
    assert worker.call(T, "say", bundle=bundle, out="to stdout", err="to stderr") == "said"
    out, err = worker.drain()  # non-blocking: already in the pipes when the result came
    assert out == b"to stdout\nno newline"
    assert err == b"to stderr\n"


@pytest.mark.parametrize("task", ["close_stdout", "replace_stdout", "close_fd1", "redirect_fd1"])
def test_task_breaking_stdout(worker, bundle, task, tmp_path):
    kwargs = {"path": str(tmp_path / "redirected")} if task == "redirect_fd1" else {}
    assert worker.call(T, task, bundle=bundle, **kwargs) == 1
    worker.drain()
    assert worker.call(T, "hello", bundle=bundle, text="after " + task) == 1
    out, err = worker.drain()
    assert b"after %s\n" % task.encode() in out and b"child-after %s\n" % task.encode() in out
    assert err == b"after %s\n" % task.encode()


def test_channel_fds_not_inherited(worker, bundle):
    info = worker.call(T, "fds", bundle=bundle)
    own = info["own"]
    assert own[3].startswith("pipe:") and own[4].startswith("pipe:")
    for key in ("ls", "py", "system"):
        for target in own.values():
            assert target not in info[key], (key, info[key])
    assert info["py"] == ""


def wait_for_output(w, needle, timeout=30):
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        out, _ = w.drain()
        seen += out
        if needle in seen:
            return
        time.sleep(0.01)
    raise AssertionError("never saw %r on stdout" % needle)


def test_sigint_during_task(worker, bundle):
    worker.send({"type": "run", "id": "t-long", "module": T, "function": "sleep",
                 "kwargs": {"seconds": 60, "marker": "started"}, "bundle": bundle})
    wait_for_output(worker, b"started")
    t0 = time.monotonic()
    os.kill(worker.pid, signal.SIGINT)
    res = worker.recv()
    assert time.monotonic() - t0 < 10
    assert res["id"] == "t-long" and res["ok"] is False
    assert res["error"]["type"] == "KeyboardInterrupt" and res["error"]["module"] == "builtins"
    assert "time.sleep" in res["error"]["traceback"]
    assert worker.call(T, "add", bundle=bundle, a=1, b=2) == 3


def test_sigint_idle_is_ignored(worker, bundle):
    for _ in range(3):
        os.kill(worker.pid, signal.SIGINT)
        time.sleep(0.05)
    worker.send({"type": "ping", "id": "alive"})
    assert worker.recv() == {"type": "pong", "id": "alive", "running": []}
    assert worker.call(T, "add", bundle=bundle, a=1, b=2) == 3


def test_signal_handlers_restored_after_task(worker, bundle):
    assert worker.call(T, "ignore_signals", bundle=bundle) == 1
    worker.send({"type": "run", "id": "t-long", "module": T, "function": "sleep",
                 "kwargs": {"seconds": 60, "marker": "go"}, "bundle": bundle})
    wait_for_output(worker, b"go")
    os.kill(worker.pid, signal.SIGINT)
    assert worker.recv()["error"]["type"] == "KeyboardInterrupt"
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait() == 0


def test_sigterm_idle_and_mid_task(make_worker, bundle):
    w = make_worker()
    os.kill(w.pid, signal.SIGTERM)
    assert w.wait() == 0
    w = make_worker()
    w.send({"type": "run", "id": "t-long", "module": T, "function": "sleep",
            "kwargs": {"seconds": 60, "marker": "busy"}, "bundle": bundle})
    wait_for_output(w, b"busy")
    t0 = time.monotonic()
    os.kill(w.pid, signal.SIGTERM)
    assert w.wait() == 0
    assert time.monotonic() - t0 < 5


# -- speed -------------------------------------------------------------------------------------------

def test_round_trip_latency(worker, bundle, capsys):
    """Median round trip of trivial tasks through the pipes (printed, not asserted)."""
    msg = {"type": "run", "id": "t-rt", "module": T, "function": "add", "kwargs": {"a": 1, "b": 2},
           "bundle": bundle, "timeout": None}
    body = json.dumps(msg, separators=(",", ":")).encode()
    frame = struct.pack(">I", len(body)) + body
    assert worker.buf == b""
    r, w = worker.r, worker.w

    def round_trip():
        # What a daemon does: one write, blocking reads until the frame is whole.
        os.write(w, frame)
        data = os.read(r, 65536)
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            data += os.read(r, 65536)
        return data

    for _ in range(50):
        round_trip()
    times, inside = [], []
    for _ in range(2000):
        t0 = time.perf_counter_ns()
        data = round_trip()
        times.append(time.perf_counter_ns() - t0)
        res = json.loads(data[4:].decode("utf-8"))
        assert res["value"] == 3
        inside.append(res["duration_us"])
    times.sort()
    inside.sort()
    with capsys.disabled():
        print("\n[hearth worker] Python %s: median round trip of 2000 trivial tasks: %.1f us "
              "(p90 %.1f us; worker-side duration_us median %d)"
              % (worker.ready["python"], times[1000] / 1000.0, times[1800] / 1000.0, inside[1000]))


# -- several tasks at once (HEARTH_CONCURRENCY) ---------------------------------------

CONCURRENT_TASKS = r'''
import asyncio, os, sys, threading, time

async def nap(tag, seconds):
    print("start", tag)
    await asyncio.sleep(seconds)
    print("end", tag, file=sys.stderr)
    return {"tag": tag, "t0": time.time() - seconds, "t1": time.time()}

def block(tag, seconds):
    print("thread", tag, threading.current_thread().name)
    time.sleep(seconds)
    return {"tag": tag, "thread": threading.current_thread().name}

def spin(tag):
    print("spinning", tag)
    while True:
        time.sleep(0.01)

async def wait_forever(tag):
    await asyncio.sleep(3600)

def task_id():
    from hearth import _worker
    return _worker.current_task_id

async def task_id_async():
    from hearth import _worker
    await asyncio.sleep(0.05)
    return _worker.task_id()

def die():
    os._exit(7)
'''


@pytest.fixture
def concurrent(make_worker, env_dirs):
    b = write_bundle(env_dirs[0], V2, tasks_src=CONCURRENT_TASKS)
    return make_worker(env={"HEARTH_CONCURRENCY": "8"}), b


def _run_msg(tid, function, bundle, **kwargs):
    return {"type": "run", "id": tid, "module": T, "function": function, "kwargs": encode_value(kwargs),
            "bundle": bundle}


def _collect(w, ids, timeout=30.0):
    """Result frames by id, and each task's log frames (stream, text) by id."""
    results, logs = {}, {}
    while len(results) < len(ids):
        msg = w.recv(timeout)
        assert msg is not None, "worker died: %r" % (w.drain(),)
        if msg["type"] == "log":
            assert msg["id"] not in results, "a log frame after its task's result: %r" % msg
            logs.setdefault(msg["id"], []).append((msg["stream"], msg["data"]))
        else:
            assert msg["type"] == "result", msg
            results[msg["id"]] = msg
    return results, logs


def test_concurrent_async_tasks_overlap_and_keep_their_own_output(concurrent):
    w, b = concurrent
    ids = ["a%d" % i for i in range(8)]
    for tid in ids:
        w.send(_run_msg(tid, "nap", b, tag=tid, seconds=1.0))
    t0 = time.monotonic()
    results, logs = _collect(w, ids)
    took = time.monotonic() - t0
    assert all(r["ok"] for r in results.values()), results
    values = [decode_value(results[t]["value"]) for t in ids]
    # All 8 were asleep at the same instant (one second each).
    assert max(v["t0"] for v in values) < min(v["t1"] for v in values), values
    assert took < 8.0, "8 one-second sleeps ran one after another (%.1f s)" % took
    for tid in ids:
        assert logs[tid] == [("stdout", "start %s\n" % tid), ("stderr", "end %s\n" % tid)], logs[tid]


def test_concurrent_plain_functions_run_on_threads(concurrent):
    w, b = concurrent
    ids = ["s%d" % i for i in range(4)]
    for tid in ids:
        w.send(_run_msg(tid, "block", b, tag=tid, seconds=0.5))
    results, logs = _collect(w, ids)
    threads = {decode_value(results[t]["value"])["thread"] for t in ids}
    assert len(threads) == 4 and all(t.startswith("hearth-task") for t in threads), threads
    for tid in ids:
        assert logs[tid][0][1].startswith("thread %s hearth-task" % tid), logs[tid]


def test_concurrent_task_ids_are_per_task(concurrent):
    w, b = concurrent
    w.send(_run_msg("x1", "task_id_async", b))
    w.send(_run_msg("x2", "task_id_async", b))
    w.send(_run_msg("x3", "task_id", b))
    results, _ = _collect(w, ["x1", "x2", "x3"])
    assert {t: decode_value(r["value"]) for t, r in results.items()} == {"x1": "x1", "x2": "x2", "x3": "x3"}


def test_concurrent_cancel_ends_one_task_and_the_others_go_on(concurrent):
    w, b = concurrent
    w.send(_run_msg("c-async", "wait_forever", b, tag="a"))
    w.send(_run_msg("c-thread", "spin", b, tag="t"))
    w.send(_run_msg("c-ok", "nap", b, tag="ok", seconds=0.5))
    time.sleep(0.3)
    w.send({"type": "cancel", "id": "c-async"})
    w.send({"type": "cancel", "id": "c-thread"})
    w.send({"type": "cancel", "id": "no-such-task"})  # already finished: nothing to do
    # Cancelled before its first step: its coroutine never runs, its result still comes.
    w.send(_run_msg("c-early", "wait_forever", b, tag="e"))
    w.send({"type": "cancel", "id": "c-early"})
    w.send(_run_msg("c-early-thread", "spin", b, tag="e"))
    w.send({"type": "cancel", "id": "c-early-thread"})
    results, _ = _collect(w, ["c-async", "c-thread", "c-ok", "c-early", "c-early-thread"])
    assert results["c-early-thread"]["error"]["type"] == "KeyboardInterrupt"
    assert results["c-early"]["ok"] is False and results["c-early"]["error"]["type"] == "CancelledError"
    assert results["c-async"]["ok"] is False and results["c-async"]["error"]["type"] == "CancelledError"
    assert results["c-thread"]["ok"] is False and results["c-thread"]["error"]["type"] == "KeyboardInterrupt"
    assert results["c-ok"]["ok"] is True
    # The worker still serves, with all its threads.
    w.send(_run_msg("after", "block", b, tag="after", seconds=0))
    assert _collect(w, ["after"])[0]["after"]["ok"] is True


def test_concurrent_errors_and_limits(concurrent):
    w, b = concurrent
    w.send(_run_msg("e1", "no_such_function", b))
    results, _ = _collect(w, ["e1"])
    assert results["e1"]["error"]["type"] == "AttributeError"
    # A task id already running is a protocol violation: fatal.
    w.send(_run_msg("dup", "wait_forever", b, tag="d"))
    w.send(_run_msg("dup", "wait_forever", b, tag="d"))
    msg = w.recv()
    assert msg["type"] == "error" and "already running" in msg["message"], msg
    assert w.wait() == 2


def test_concurrent_crash_takes_the_interpreter(concurrent):
    w, b = concurrent
    w.send(_run_msg("n1", "nap", b, tag="n1", seconds=5))
    w.send(_run_msg("boom", "die", b))
    # n1's first output may be forwarded before boom ends the interpreter
    # (how far n1 got is up to the scheduler); no result ever comes.
    while True:
        msg = w.recv()
        if msg is None:
            break
        assert msg["type"] == "log" and msg["id"] == "n1", msg
    assert w.wait() == 7


def test_adopt_switches_a_spare_to_concurrent(make_worker, env_dirs):
    b = write_bundle(env_dirs[0], V2, tasks_src=CONCURRENT_TASKS)
    w = make_worker()
    w.send({"type": "adopt", "env": {"HEARTH_CONCURRENCY": "4"}, "packages": [], "image": "img"})
    assert w.recv() == {"type": "adopted", "ok": True}
    ids = ["p%d" % i for i in range(4)]
    for tid in ids:
        w.send(_run_msg(tid, "nap", b, tag=tid, seconds=0.5))
    results, _ = _collect(w, ids)
    values = [decode_value(results[t]["value"]) for t in ids]
    assert max(v["t0"] for v in values) < min(v["t1"] for v in values), values


def test_concurrent_pong_lists_the_tasks_still_owed(concurrent):
    # The adoption handshake after a daemon restart: a pong names exactly
    # the tasks whose result is not written yet, so none is both answered
    # and listed as running.
    w, b = concurrent
    w.send(_run_msg("slow", "nap", b, tag="slow", seconds=1.5))
    w.send(_run_msg("quick", "nap", b, tag="quick", seconds=0.0))
    results, _ = _collect(w, ["quick"])
    w.send({"type": "ping", "id": "adopt"})
    while True:
        msg = w.recv(10)
        assert msg is not None, w.drain()
        if msg["type"] == "pong":
            break
        assert msg["type"] == "log", msg
    assert msg == {"type": "pong", "id": "adopt", "running": ["slow"]}
    results, _ = _collect(w, ["slow"])
    assert results["slow"]["ok"] is True
    w.send({"type": "ping", "id": 2})
    msg = w.recv(10)
    while msg["type"] == "log":
        msg = w.recv(10)
    assert msg == {"type": "pong", "id": 2, "running": []}
