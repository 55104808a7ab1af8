"""`POST /v1/environments/{env}/tasks` is answered in the channel pipeline
(TaskFastPath) unless the request is one it leaves to the router (a query
string, `Expect`, another `Connection` token). Both must answer alike, keep
responses in order on a kept-alive connection, and finish a task that is
running when the daemon is asked to stop."""
import json
import signal
import socket
import threading
import time

import pytest

from conftest import running_daemon
# `code` uploads test_actors' task module to whichever `hd` the test uses: this module's.
from test_actors import code, env  # noqa: F401


@pytest.fixture(scope="module")
def hd():
    yield from running_daemon("hearth-tr")


class Conn:
    """One kept-alive connection; requests written raw, responses read by
    Content-Length."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.s.settimeout(60)
        self.buf = b""

    @staticmethod
    def request(method, path, body=b"", headers=()):
        lines = [f"{method} {path} HTTP/1.1", "Host: x", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def send(self, raw):
        self.s.sendall(raw)

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; had {self.buf!r}")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("connection closed mid-body")
            rest += chunk
        body, self.buf = rest[:n], rest[n:]
        return status, headers, (json.loads(body) if body else None)

    def closed(self):
        try:
            return self.s.recv(1) == b""
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def task_body(code, fn, wait=True, **kwargs):
    return json.dumps({"module": "tasks", "function": fn, "kwargs": kwargs, "bundle": code, "wait": wait}).encode()


def shape(status, body):
    """What must match between the two paths: the status, the error's code,
    or the task's state and result (ids and timings differ)."""
    if isinstance(body, dict) and "code" in (body.get("error") or {}):   # an API error, not a task's
        return status, body["error"]["code"]
    if status == 200 and body.get("state") == "failed":
        return status, (body["state"], body["error"]["type"], body["error"]["message"])
    if status == 202:  # queued or already running: timing, not the path
        return status, body.get("state") in ("queued", "running", "succeeded")
    return status, (body.get("state"), body.get("result"))


def test_fast_path_and_router_answer_alike(hd, code):
    env(hd, "tr-alike")
    cases = [
        ("echo, waited", "tr-alike", task_body(code, "echo", a=1)),
        ("not waited", "tr-alike", task_body(code, "echo", wait=False, a=1)),
        ("raising task", "tr-alike", task_body(code, "boom", message="no")),
        ("unknown environment", "tr-nope", task_body(code, "echo")),
        ("not JSON", "tr-alike", b"{nope"),
        ("no module", "tr-alike", json.dumps({"function": "echo"}).encode()),
        ("bad module name", "tr-alike", json.dumps({"module": "a b", "function": "echo"}).encode()),
        ("kwargs not an object", "tr-alike", json.dumps({"module": "tasks", "function": "echo", "kwargs": [1]}).encode()),
        ("unknown bundle", "tr-alike", json.dumps({"module": "tasks", "function": "echo", "bundle": "0" * 64}).encode()),
        ("identity of another spec", "tr-alike",
         json.dumps({"module": "tasks", "function": "echo", "bundle": code, "identity": "f" * 64}).encode()),
    ]
    c = Conn(hd.socket)
    try:
        for what, name, body in cases:
            c.send(Conn.request("POST", f"/v1/environments/{name}/tasks", body))
            fast = c.response()
            c.send(Conn.request("POST", f"/v1/environments/{name}/tasks?via=router", body))
            routed = c.response()
            assert fast[1].get("content-type") == "application/json", (what, fast)
            assert shape(fast[0], fast[2]) == shape(routed[0], routed[2]), f"{what}: fast {fast} router {routed}"
            if "code" in ((fast[2] or {}).get("error") or {}):
                assert fast[2] == routed[2], f"{what}: the messages differ: fast {fast[2]} router {routed[2]}"
    finally:
        c.close()


def test_pipelined_requests_are_answered_in_order(hd, code):
    env(hd, "tr-pipe")
    c = Conn(hd.socket)
    try:
        # Three task requests and a router request in one write: the slow
        # first task must not let the others overtake it.
        raw = (Conn.request("POST", "/v1/environments/tr-pipe/tasks", task_body(code, "slow", seconds=0.3, tag="a"))
               + Conn.request("POST", "/v1/environments/tr-pipe/tasks", task_body(code, "echo", n=2))
               + Conn.request("GET", "/v1/version")
               + Conn.request("POST", "/v1/environments/tr-pipe/tasks", task_body(code, "echo", n=3)))
        c.send(raw)
        got = [c.response() for _ in range(4)]
        assert [g[0] for g in got] == [200, 200, 200, 200], got
        assert got[0][2]["state"] == "succeeded", got[0]
        assert got[1][2]["result"] == {"n": 2} and got[3][2]["result"] == {"n": 3}, got
        assert "version" in got[2][2], got[2]
    finally:
        c.close()


def test_connection_close_and_chunked_bodies(hd, code):
    env(hd, "tr-close")
    body = task_body(code, "echo", x="y")
    c = Conn(hd.socket)
    try:
        c.send(Conn.request("POST", "/v1/environments/tr-close/tasks", body, headers=["Connection: close"]))
        status, headers, snap = c.response()
        assert status == 200 and snap["result"] == {"x": "y"}, snap
        assert c.closed(), "Connection: close must close the connection after the response"
    finally:
        c.close()
    c = Conn(hd.socket)
    try:
        # A chunked body, split over several writes.
        head = (b"POST /v1/environments/tr-close/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: application/json\r\n\r\n")
        c.send(head)
        for i in range(0, len(body), 7):
            piece = body[i:i + 7]
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.005)
        c.send(b"0\r\n\r\n")
        status, _, snap = c.response()
        assert status == 200 and snap["result"] == {"x": "y"}, snap
        # Still usable afterwards.
        c.send(Conn.request("POST", "/v1/environments/tr-close/tasks", body))
        assert c.response()[2]["result"] == {"x": "y"}
    finally:
        c.close()


def test_sigterm_lets_a_waited_task_answer(hd, code):
    env(hd, "tr-term")
    c = Conn(hd.socket)
    result = {}

    def wait():
        try:
            c.send(Conn.request("POST", "/v1/environments/tr-term/tasks",
                                task_body(code, "slow", seconds=1.5, tag="term")))
            result["response"] = c.response()
            result["closed"] = c.closed()
        except Exception as e:  # reported below
            result["error"] = repr(e)

    # Warm first, so the slow task is running when SIGTERM arrives.
    c2 = Conn(hd.socket)
    c2.send(Conn.request("POST", "/v1/environments/tr-term/tasks", task_body(code, "echo")))
    assert c2.response()[0] == 200
    c2.close()
    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    hd.proc.send_signal(signal.SIGTERM)
    t.join(60)
    rc = hd.proc.wait(60)
    hd.start()  # for the module's leftover check
    assert "error" not in result, result
    status, _, snap = result["response"]
    assert status == 200 and snap["state"] == "succeeded", snap
    assert result["closed"], "the connection is closed once the draining daemon has answered"
    assert rc in (0, -signal.SIGTERM), rc


def test_arguments_too_large_for_a_run_frame_are_refused_before_anything_runs(hd, code):
    # Under the request limit (64 MiB) but over what fits in the worker's
    # frame: a 400 naming the sizes on both paths, not a ProtocolError later.
    env(hd, "tr-big")
    body = task_body(code, "echo", a="x" * ((64 << 20) - 600))
    c = Conn(hd.socket)
    try:
        for path in ("/v1/environments/tr-big/tasks", "/v1/environments/tr-big/tasks?via=router"):
            c.send(Conn.request("POST", path, body))
            status, _, resp = c.response()
            assert status == 400 and resp["error"]["code"] == "invalid_argument", (path, status, resp)
            assert resp["error"]["message"].startswith("kwargs: ") and "do not fit in a task's run frame" in \
                resp["error"]["message"], resp
        # The replica is still there to take a normal task.
        c.send(Conn.request("POST", "/v1/environments/tr-big/tasks", task_body(code, "echo", a=1)))
        status, _, resp = c.response()
        assert status == 200 and resp["state"] == "succeeded", resp
    finally:
        c.close()
