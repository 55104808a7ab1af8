"""HTTP/1.1 over hearthd's Unix socket, for the SDK.

One persistent connection per thread (keep-alive), so a warm task costs one
request on an open socket: no connect, no http.client machinery. The
socket is ``HEARTH_SOCKET`` or ``/run/hearth/hearthd.sock``. A remote daemon
(``hearthd --listen tcp://…``) is ``HEARTH_HOST=tcp://HOST:PORT``, reached
only with mutual TLS: ``HEARTH_TLS_CERT``, ``HEARTH_TLS_KEY`` and
``HEARTH_TLS_CA`` (default ``~/.hearth/tls/{cert,key,ca}.pem``, what
``hearth certs client`` writes). Code bundles, files and results travel the
same way on both.

Errors are the SDK's: ``DaemonUnavailable`` names the socket and how to
start the daemon, ``SocketPermissionError`` says how to get access, and an
error response becomes ``APIError`` with the daemon's code and message.
"""

import errno
import json
import os
import re
import socket
import sys
import threading
import time

from hearth import _protocol
from hearth._errors import (APIError, DaemonUnavailable, DaemonUpgrading, EnvironmentRefused, QueueFull, ResultExpired,
                            SocketPermissionError)

__all__ = ["Client", "AsyncClient", "default_socket", "client", "async_client"]

DEFAULT_SOCKET = "/run/hearth/hearthd.sock"


# json.dumps builds a JSONEncoder at every call when given separators; one
# made once encodes the same bytes (a warm task's request is encoded per call).
_compact = json.JSONEncoder(separators=(",", ":")).encode


def compact_json(value):
    """``value`` as compact JSON bytes (ASCII, as json.dumps writes it)."""
    return _compact(value).encode()


def default_socket(env=None):
    """Where the SDK reaches hearthd: ``HEARTH_HOST`` (``tcp://HOST:PORT``
    or ``unix:///PATH``), else ``HEARTH_SOCKET``, else the default socket
    (of ``env``, default the process's environment)."""
    env = os.environ if env is None else env
    host = env.get("HEARTH_HOST")
    if host:
        return host[len("unix://"):] if host.startswith("unix://") else host
    return env.get("HEARTH_SOCKET") or DEFAULT_SOCKET


def _tcp_address(address):
    """``(host, port)`` of a ``tcp://HOST:PORT`` address, or None for a socket path."""
    if not address.startswith("tcp://"):
        return None
    rest = address[len("tcp://"):].rstrip("/")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("HEARTH_HOST %r: expected tcp://HOST:PORT (or unix:///PATH)" % address)
    return host, int(port)


def _tls_files():
    env = os.environ
    home = os.path.join(os.path.expanduser("~"), ".hearth", "tls")
    out = []
    for var, name in (("HEARTH_TLS_CERT", "cert.pem"), ("HEARTH_TLS_KEY", "key.pem"), ("HEARTH_TLS_CA", "ca.pem")):
        path = env.get(var) or os.path.join(home, name)
        if not env.get(var) and not os.path.exists(path):
            raise DaemonUnavailable("HEARTH_HOST names a TCP daemon, which speaks only mutual TLS: set %s (or put "
                                    "%s in %s); `hearth certs client` makes the files" % (var, name, home))
        out.append((var, path))
    return out


def _tls_context():
    """The client's side of mutual TLS: its certificate, and the cluster CA
    that must have signed the daemon's (whose name or address must match
    the host dialled)."""
    import ssl

    (cv, cert), (kv, key), (av, ca) = _tls_files()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise DaemonUnavailable("%s %s: cannot load it as PEM CA certificates (%s)" % (av, ca, e)) from None
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise DaemonUnavailable("%s %s with %s %s: cannot load the certificate and its key (%s)"
                                % (cv, cert, kv, key, e)) from None
    return ctx, cert


def _tls_error(address, e, cert=None):
    """The SDK's error for a TLS failure on ``address``: which side refused
    what. None when ``e`` is not a TLS error."""
    ssl = sys.modules.get("ssl")
    if ssl is None or not isinstance(e, ssl.SSLError):
        return None
    reason = (getattr(e, "reason", None) or str(e)).upper()
    if "ALERT" in reason:
        return DaemonUnavailable(
            "hearthd at %s refused this client's certificate (%s) at the TLS handshake: %s. It must be a client "
            "certificate of the daemon's CA (its --tls-ca), within its validity: check HEARTH_TLS_CERT and "
            "HEARTH_TLS_KEY" % (address, cert or "HEARTH_TLS_CERT", reason.lower().replace("_", " ")))
    if "CERTIFICATE_VERIFY_FAILED" in reason or isinstance(e, getattr(ssl, "SSLCertVerificationError", ())):
        return DaemonUnavailable(
            "this client refused the certificate of hearthd at %s at the TLS handshake: %s (it must be signed by "
            "HEARTH_TLS_CA and name the host dialled)" % (address, getattr(e, "verify_message", None) or e))
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason:
        return DaemonUnavailable("%s does not speak TLS: is it hearthd's --listen address? (%s)" % (address, e))
    return DaemonUnavailable("TLS with hearthd at %s failed: %s" % (address, e))


# The head of a warm task's response, as hearthd writes it, has these two
# headers only; a head that is not one of them is parsed line by line.
_PLAIN_HEAD = re.compile(rb"HTTP/1\.1 \d{3} [^\r\n]*\r\nContent-Type: application/json\r\nContent-Length: (\d+)\Z")


def _headers(head):
    """The headers of a response head (bytes, without the blank line), names lowercased."""
    m = _PLAIN_HEAD.match(head)
    if m is not None:
        return {"content-type": "application/json", "content-length": m.group(1).decode()}
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return headers


_UNSET = object()


class _Closed(Exception):
    """The server closed a kept-alive connection before answering."""


class Client(object):
    def __init__(self, path=None):
        self.path = path or default_socket()
        self._local = threading.local()
        self._tcp = _tcp_address(self.path)
        self._tls = None  # (context, certificate path), made at the first connect

    # -- connection ------------------------------------------------------------

    def _connect(self):
        if self._tcp is not None:
            return self._connect_tls()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise _connect_error(self.path, e) from None
        return s

    def _tls_failure(self, sock, e):
        """The SDK's error for ``e`` on a TLS connection, None otherwise.
        After a TLS 1.3 handshake a daemon refuses a client's certificate
        with an alert that follows the handshake: a write may fail first
        (the daemon closed), while the alert that says why waits unread."""
        if self._tcp is None:
            return None
        cert = self._tls and self._tls[1]
        if "ALERT" not in str(e).upper():
            try:
                sock.settimeout(1)
                sock.recv(1)
            except OSError as alert:
                if "ALERT" in str(alert).upper():
                    e = alert
        return _tls_error(self.path, e, cert)

    def _connect_tls(self):
        if self._tls is None:
            self._tls = _tls_context()
        ctx, cert = self._tls
        host, port = self._tcp
        try:
            raw = socket.create_connection((host, port), timeout=30)
        except OSError as e:
            raise _connect_error(self.path, e) from None
        try:
            s = ctx.wrap_socket(raw, server_hostname=host)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(None)
        except OSError as e:
            raw.close()
            raise (_tls_error(self.path, e, cert) or _connect_error(self.path, e)) from None
        return s

    def close(self):
        s = getattr(self._local, "sock", None)
        if s is not None:
            self._local.sock = None
            self._local.buf = b""
            s.close()

    # -- requests --------------------------------------------------------------

    def request(self, method, path, body=None, content_type="application/json", timeout=None):
        """``(status, body bytes)``. ``body`` may be bytes or a JSON-able value."""
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            body = compact_json(body)
        data = b"" if body is None else bytes(body)
        head = ("%s %s HTTP/1.1\r\nHost: hearthd\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                % (method, path, content_type, len(data))).encode()
        msg = head + data if len(data) < 65536 else None
        for attempt in (0, 1):
            sock = getattr(self._local, "sock", None)
            reused = sock is not None
            if sock is None:
                sock = self._local.sock = self._connect()
                self._local.buf = b""
                self._local.timeout = _UNSET  # a new socket: set its timeout
            try:
                if getattr(self._local, "timeout", _UNSET) != timeout:
                    # Each settimeout is a system call (FIONBIO): only when it changes.
                    sock.settimeout(timeout)
                    self._local.timeout = timeout
                if msg is not None:
                    sock.sendall(msg)
                else:
                    sock.sendall(head)
                    sock.sendall(data)
                return self._response(sock)
            except _Closed:
                self.close()
                if reused and attempt == 0:
                    continue  # the daemon closed an idle connection: one fresh try
                raise DaemonUnavailable("hearthd at %s closed the connection without answering %s %s"
                                        % (self.path, method, path))
            except socket.timeout:
                self.close()
                raise TimeoutError("hearthd at %s did not answer %s %s within %s s" % (self.path, method, path, timeout))
            except OSError as e:
                tls = self._tls_failure(sock, e)
                self.close()
                if tls is not None:
                    raise tls from None
                if reused and attempt == 0 and e.errno in (errno.EPIPE, errno.ECONNRESET):
                    continue
                raise DaemonUnavailable("lost the connection to hearthd at %s during %s %s: %s"
                                        % (self.path, method, path, os.strerror(e.errno or 0)))
        raise AssertionError("unreachable")

    def _read_more(self, sock, got_any):
        # 64 KiB: a larger request makes CPython allocate the buffer with
        # mmap (glibc's threshold is 128 KiB) and shrink and unmap it after
        # a short reply, three system calls and page faults a warm task.
        chunk = sock.recv(65536)
        if not chunk:
            if not got_any:
                raise _Closed()
            raise DaemonUnavailable("hearthd at %s closed the connection in the middle of a response" % self.path)
        return chunk

    def _read_body(self, sock, have, n):
        """The rest of an ``n``-byte body, ``have`` already read: received
        into one buffer of its size (appending chunk to chunk copies a
        large body over and over)."""
        body = bytearray(n)
        body[:len(have)] = have
        view = memoryview(body)
        got = len(have)
        while got < n:
            k = sock.recv_into(view[got:], min(n - got, 1 << 20))
            if not k:
                raise DaemonUnavailable("hearthd at %s closed the connection in the middle of a response" % self.path)
            got += k
        view.release()
        return bytes(body)

    def _response(self, sock):
        buf = self._local.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            buf += self._read_more(sock, bool(buf))
        head = buf[:end]
        rest = buf[end + 4:]
        first = head.split(b"\r\n", 1)[0]
        try:
            status = int(first.split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.close()
            raise DaemonUnavailable("hearthd at %s sent a malformed status line: %r"
                                    % (self.path, first[:80].decode("latin-1")))
        headers = _headers(head)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out = []
            while True:
                while b"\r\n" not in rest:
                    rest += self._read_more(sock, True)
                size_line, _, rest = rest.partition(b"\r\n")
                n = int(size_line.split(b";")[0], 16)
                while len(rest) < n + 2:
                    rest += self._read_more(sock, True)
                out.append(rest[:n])
                rest = rest[n + 2:]
                if n == 0:
                    break
            body = b"".join(out)
        else:
            n = int(headers.get("content-length", "0"))
            if len(rest) >= n:
                body, rest = rest[:n], rest[n:]
            else:
                body, rest = self._read_body(sock, rest, n), b""
        self._local.buf = rest
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def call(self, method, path, body=None, what=None, content_type="application/json", timeout=None,
             not_found=None):
        """JSON in, JSON out; an error status raises APIError (or the
        subclass for the route). ``not_found``: returned for a 404. A
        request hearthd did not act on because it is upgrading, or could not
        take because the daemon that answered before is between binaries
        (refused), is sent again within ``reconnect_timeout()``."""
        resend = _Resend(self)
        while True:
            try:
                status, raw = self.request(method, path, body, content_type=content_type, timeout=timeout)
                self._answered = True
                return _answer(status, raw, method, path, what, not_found)
            except DaemonUnavailable as e:
                time.sleep(resend.pause(e))


    def stream(self, method, path, body=None, what=None, timeout=None, accept=None):
        """Yields the JSON objects of an NDJSON response as they arrive (a
        build's steps, a pull's progress). An error status raises as
        ``call`` does. The connection is not reused afterwards."""
        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            body = compact_json(body)
        data = b"" if body is None else bytes(body)
        sock = self._connect()
        try:
            sock.settimeout(timeout)
            extra = "Accept: %s\r\n" % accept if accept else ""
            sock.sendall(("%s %s HTTP/1.1\r\nHost: hearthd\r\nContent-Type: application/json\r\n%s"
                          "Content-Length: %d\r\nConnection: close\r\n\r\n" % (method, path, extra, len(data))).encode())
            sock.sendall(data)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise DaemonUnavailable("hearthd at %s closed the connection without answering %s %s"
                                            % (self.path, method, path))
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = _headers(head)
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"

            def body_bytes(rest):
                # De-chunks as bytes arrive; without chunking, reads to EOF.
                while True:
                    if not chunked:
                        if rest:
                            yield rest
                        rest = sock.recv(65536)
                        if not rest:
                            return
                        continue
                    while b"\r\n" not in rest:
                        more = sock.recv(65536)
                        if not more:
                            raise DaemonUnavailable("hearthd at %s closed the connection in the middle of %s %s"
                                                    % (self.path, method, path))
                        rest += more
                    size_line, _, rest = rest.partition(b"\r\n")
                    n = int(size_line.split(b";")[0], 16)
                    if n == 0:
                        return
                    while len(rest) < n + 2:
                        more = sock.recv(65536)
                        if not more:
                            raise DaemonUnavailable("hearthd at %s closed the connection in the middle of %s %s"
                                                    % (self.path, method, path))
                        rest += more
                    yield rest[:n]
                    rest = rest[n + 2:]

            if status >= 300:
                raw = b"".join(body_bytes(rest))
                code, message = "http_%d" % status, raw.decode("utf-8", "replace")[:2000]
                try:
                    err = json.loads(raw)["error"]
                    code, message = err.get("code", code), err.get("message", message)
                except (ValueError, KeyError, TypeError, AttributeError):
                    pass
                raise APIError(status, code, message, what)
            pending = b""
            for piece in body_bytes(rest):
                pending += piece
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
        except socket.timeout:
            raise TimeoutError("hearthd at %s did not answer %s %s within %s s" % (self.path, method, path, timeout))
        except OSError as e:
            tls = self._tls_failure(sock, e)
            if tls is None:
                raise
            raise tls from None
        finally:
            sock.close()


_lock = threading.Lock()
_clients = {}

# Task ids the SDK gives its tasks (`POST … {"id": …}`), so a call whose
# connection hearthd dropped can ask for its task by id instead of running
# it again. Random per process (and again in a forked child), then a count.
_ids = {"prefix": "c-" + os.urandom(8).hex(), "next": 0}


def _new_prefix():
    _ids["prefix"] = "c-" + os.urandom(8).hex()
    _ids["next"] = 0


os.register_at_fork(after_in_child=_new_prefix)


def task_id():
    """A task id of this process, unique among its calls."""
    with _lock:
        _ids["next"] += 1
        return "%s-%d" % (_ids["prefix"], _ids["next"])


FINAL_STATES = ("succeeded", "failed", "cancelled", "lost")
_MISSING = object()


def reconnect_timeout():
    """How long a task call waits for hearthd to come back after it went
    away mid-call (``HEARTH_RECONNECT_TIMEOUT`` seconds, default 60; 0: no wait)."""
    text = os.environ.get("HEARTH_RECONNECT_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        raise ValueError("HEARTH_RECONNECT_TIMEOUT: %r is not a number of seconds" % text) from None
    if not value >= 0:
        raise ValueError("HEARTH_RECONNECT_TIMEOUT: %r must be 0 or more seconds" % text)
    return value


def _gave_up(error, tid, waited):
    return DaemonUnavailable("%s; task %s: waited %.0f s (HEARTH_RECONNECT_TIMEOUT) for hearthd to answer for it "
                             "again; ask later with `hearth result %s`" % (error, tid, waited, tid))


def recover_task(c, tid, error, resubmit, what=None):
    """hearthd went away while a task call waited (``error``, a
    DaemonUnavailable): wait for it to come back, within
    ``reconnect_timeout()``, and ask for the task by id. A task it knows
    (finished before, or ended while it was down) is answered from there
    and never run twice; one it never accepted is submitted again by
    ``resubmit()`` (same id)."""
    limit = reconnect_timeout()
    start = time.monotonic()
    delay = 0.05
    while True:
        try:
            snap = c.call("GET", "/v1/tasks/%s?wait=20" % tid, what=what, not_found=_MISSING)
            if snap is _MISSING:
                return resubmit()
            if snap.get("state") in FINAL_STATES:
                return snap
            continue  # still queued or running: wait again
        except DaemonUnavailable as e:
            error = e
        waited = time.monotonic() - start
        if waited >= limit:
            raise _gave_up(error, tid, waited) from None
        time.sleep(min(delay, max(0.0, limit - waited)))
        delay = min(delay * 2, 1.0)


def recover_batch(c, bid, n, error, resubmit, what=None):
    """``recover_task`` for a batch of ``n`` tasks ``bid``-0 … ``bid``-(n-1):
    hearthd accepted all of them or none, so the first one says which; the
    list of their final snapshots, or ``resubmit()``'s."""
    first = recover_task(c, "%s-0" % bid, error, resubmit, what)
    if isinstance(first, list):
        return first  # never accepted: sent again, whole

    def gone(tid):
        # Accepted with the first, yet unknown now (past retention): lost.
        return lambda: {"id": tid, "state": "lost", "error": {
            "type": "TaskLost", "message": "task %s of batch %s is no longer known to hearthd; its result is lost" % (tid, bid)}}

    rest = [recover_task(c, "%s-%d" % (bid, i), error, gone("%s-%d" % (bid, i)), what) for i in range(1, n)]
    return [first] + rest


async def arecover_task(ac, tid, error, resubmit, what=None):
    """``recover_task`` for asyncio code; ``resubmit`` is a coroutine function."""
    import asyncio

    limit = reconnect_timeout()
    start = time.monotonic()
    delay = 0.05
    while True:
        try:
            snap = await ac.call("GET", "/v1/tasks/%s?wait=20" % tid, what=what, not_found=_MISSING)
            if snap is _MISSING:
                return await resubmit()
            if snap.get("state") in FINAL_STATES:
                return snap
            continue
        except DaemonUnavailable as e:
            error = e
        waited = time.monotonic() - start
        if waited >= limit:
            raise _gave_up(error, tid, waited) from None
        await asyncio.sleep(min(delay, max(0.0, limit - waited)))
        delay = min(delay * 2, 1.0)


def _unsent(e, answered_before):
    """Whether a request that failed with ``e`` was certainly not acted on
    and hearthd is between binaries: a 503 ``upgrading``, or a refused
    connect to a daemon that answered this client before (an upgrade's
    exec, a restart). Such a request is sent again."""
    return isinstance(e, DaemonUpgrading) or (answered_before and getattr(e, "refused", False))


class _Resend(object):
    """One call's sending again of requests ``_unsent`` names: backing off
    from 20 ms to 0.5 s, within ``reconnect_timeout()`` of the first."""

    def __init__(self, client):
        self.client = client
        self.limit = None
        self.delay = 0.02

    def pause(self, e):
        """Seconds to wait before sending again; raises ``e`` when it is not
        to be sent again, or the time is up."""
        if not _unsent(e, getattr(self.client, "_answered", False)):
            raise e
        if self.limit is None:
            self.limit, self.start = reconnect_timeout(), time.monotonic()
        waited = time.monotonic() - self.start
        if waited >= self.limit:
            raise e
        pause, self.delay = min(self.delay, self.limit - waited), min(self.delay * 2, 0.5)
        return pause


def _connect_error(path, e):
    """The SDK's error for a failed connect to ``path``."""
    if path.startswith("tcp://"):
        err = DaemonUnavailable("cannot connect to hearthd at %s: %s. Is `hearthd --listen %s` running there?"
                                % (path, os.strerror(e.errno) if e.errno else e, path))
        err.refused = isinstance(e, ConnectionRefusedError)
        return err
    if isinstance(e, FileNotFoundError):
        return DaemonUnavailable(
            "hearthd is not running: there is no socket at %s. Start it with `sudo hearthd &` "
            "(or `sudo scripts/demo`), or set HEARTH_SOCKET to the socket it listens on." % path)
    if isinstance(e, ConnectionRefusedError):
        err = DaemonUnavailable(
            "hearthd is not running: nothing listens on %s (a stale socket file). Start it with "
            "`sudo hearthd &`, or set HEARTH_SOCKET to the socket it listens on." % path)
        err.refused = True
        return err
    if isinstance(e, PermissionError):
        return SocketPermissionError(
            "permission denied on %s: hearthd's socket is mode 0660, owned by root and group hearth. "
            "Run as root, or add yourself to the group (`sudo usermod -aG hearth $USER`, then log in "
            "again)." % path)
    return DaemonUnavailable("cannot connect to hearthd at %s: %s" % (path, os.strerror(e.errno or 0)))


def _answer(status, raw, method, path, what, not_found=None):
    """A response's JSON, or the error it carries raised as the SDK's exception."""
    if status < 300:
        if not raw:
            return None
        try:
            return _protocol.loads_value(raw)
        except ValueError:
            return json.loads(raw)  # says what is wrong, as before
    if status == 404 and not_found is not None:
        return not_found
    if status == 503:
        try:
            err = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            err = None
        if isinstance(err, dict) and err.get("code") == "upgrading":
            raise DaemonUpgrading(err.get("message", "hearthd is upgrading"))
    code, message = "http_%d" % status, raw.decode("utf-8", "replace")[:2000]
    task = None
    try:
        doc = json.loads(raw)
        err = doc["error"]
        code, message = err.get("code", code), err.get("message", message)
        task = doc.get("task")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    if status == 410 and code == "result_expired":
        raise ResultExpired(status, code, message, what, task=task)
    cls = APIError
    if status == 429:
        cls = QueueFull
    elif method == "POST" and path == "/v1/environments":
        cls = EnvironmentRefused
    raise cls(status, code, message, what)


class AsyncClient(object):
    """The same requests for asyncio code: a connection per request in
    flight (kept for the next one when the response allows), so many
    awaited tasks run at once on one event loop, without a thread each."""

    def __init__(self, path=None):
        self.path = path or default_socket()
        import weakref

        # event loop -> [(reader, writer)]: a connection belongs to its loop
        self._idle = weakref.WeakKeyDictionary()
        self._tcp = _tcp_address(self.path)
        self._tls = None

    async def _open(self):
        import asyncio

        try:
            if self._tcp is None:
                return await asyncio.open_unix_connection(self.path)
            if self._tls is None:
                self._tls = _tls_context()
            host, port = self._tcp
            return await asyncio.open_connection(host, port, ssl=self._tls[0], server_hostname=host)
        except OSError as e:
            raise (_tls_error(self.path, e, self._tls and self._tls[1]) or _connect_error(self.path, e)) from None

    async def request(self, method, path, body=None, content_type="application/json"):
        import asyncio

        if body is not None and not isinstance(body, (bytes, bytearray, memoryview)):
            body = compact_json(body)
        data = b"" if body is None else bytes(body)
        head = ("%s %s HTTP/1.1\r\nHost: hearthd\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                % (method, path, content_type, len(data))).encode()
        loop = asyncio.get_running_loop()
        idle = self._idle.setdefault(loop, [])
        for attempt in (0, 1):
            conn = idle.pop() if idle else None
            reused = conn is not None
            if conn is None:
                conn = await self._open()
            reader, writer = conn
            try:
                writer.write(head + data)
                await writer.drain()
                status, raw, keep = await self._response(reader)
            except (_Closed, ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                writer.close()
                tls = _tls_error(self.path, e, self._tls and self._tls[1])
                if tls is not None:
                    raise tls from None
                if reused and attempt == 0 and not isinstance(e, asyncio.IncompleteReadError):
                    continue  # the daemon closed an idle connection: one fresh try
                raise DaemonUnavailable("lost the connection to hearthd at %s during %s %s"
                                        % (self.path, method, path)) from None
            except BaseException:
                writer.close()  # cancelled mid-request: the connection is in an unknown state
                raise
            if keep:
                idle.append(conn)
            else:
                writer.close()
            return status, raw
        raise AssertionError("unreachable")

    @staticmethod
    async def _response(reader):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except Exception as e:
            import asyncio

            if isinstance(e, asyncio.IncompleteReadError) and not e.partial:
                raise _Closed()
            raise
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise DaemonUnavailable("hearthd sent a malformed status line: %r" % (lines[0][:80],))
        headers = _headers(head[:-4])
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                out.append(chunk[:size])
                if size == 0:
                    break
            raw = b"".join(out)
        else:
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, raw, headers.get("connection", "").lower() != "close"

    async def call(self, method, path, body=None, what=None, content_type="application/json", not_found=None):
        """``Client.call`` for asyncio code, with the same resending."""
        import asyncio

        resend = _Resend(self)
        while True:
            try:
                status, raw = await self.request(method, path, body, content_type=content_type)
                self._answered = True
                return _answer(status, raw, method, path, what, not_found)
            except DaemonUnavailable as e:
                await asyncio.sleep(resend.pause(e))


_async_clients = {}


def _shared(cache, cls, path):
    path = path or default_socket()
    c = cache.get(path)
    if c is None:
        with _lock:
            c = cache.get(path)
            if c is None:
                c = cache[path] = cls(path)
    return c


def async_client(path=None):
    """The shared asyncio client for ``path``."""
    return _shared(_async_clients, AsyncClient, path)


def client(path=None):
    """The shared client for ``path`` (default: HEARTH_SOCKET, read at each call)."""
    return _shared(_clients, Client, path)
