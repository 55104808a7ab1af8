"""A small HTTP/1.1 client for hearthd's Unix socket: one kept-alive
connection (http.client handles chunked bodies), JSON in and out."""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import tarfile
import hashlib
from typing import Any, Dict, Iterator, List, Optional, Tuple


class APIError(RuntimeError):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class Client:
    def __init__(self, socket_path: str, timeout: float = 300.0):
        self.path = socket_path
        self.timeout = timeout
        self._conn: Optional[_UnixConnection] = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def raw(self, method: str, path: str, body: Optional[bytes] = None,
            content_type: str = "application/json") -> Tuple[int, bytes]:
        """One request on the kept-alive connection; reconnects once if the
        daemon closed it between requests."""
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = _UnixConnection(self.path, self.timeout)
            try:
                headers = {"Content-Type": content_type} if body is not None else {}
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
             ok: Tuple[int, ...] = (200, 201, 202, 204), content_type: str = "application/json") -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        status, out = self.raw(method, path, data, content_type)
        if status not in ok:
            raise APIError(f"{method} {path}: HTTP {status}: {out[:500].decode(errors='replace')}")
        return json.loads(out) if out else None

    # The API, as the benchmark uses it.

    def apply(self, yaml_text: str) -> Any:
        return self.call("POST", "/v1/environments", raw=yaml_text.encode(), content_type="application/yaml")

    def delete_env(self, name: str) -> None:
        self.call("DELETE", f"/v1/environments/{name}", ok=(200, 202, 204, 404))

    def env_status(self, name: str) -> Any:
        return self.call("GET", f"/v1/environments/{name}")

    def task(self, env: str, module: str, function: str, bundle: Optional[str], kwargs: Optional[Dict] = None) -> Dict:
        snap = self.call("POST", f"/v1/environments/{env}/tasks",
                         {"module": module, "function": function, "kwargs": kwargs or {}, "bundle": bundle,
                          "wait": True})
        if snap.get("state") != "succeeded":
            raise APIError(f"task {module}.{function} on {env}: {snap.get('state')}: {snap.get('error')}")
        return snap

    def batch(self, env: str, module: str, function: str, bundle: Optional[str], inputs: List[Dict]) -> List[Dict]:
        return self.call("POST", f"/v1/environments/{env}/batch",
                         {"module": module, "function": function, "inputs": inputs, "bundle": bundle})

    def upload_code(self, files: Dict[str, bytes]) -> str:
        raw = make_tar(files)
        sha = hashlib.sha256(raw).hexdigest()
        self.call("PUT", f"/v1/code/{sha}", raw=raw, content_type="application/x-tar")
        return sha

    def build_image(self, spec: Dict[str, Any]) -> List[Dict[str, Any]]:
        """POST /v1/images/build; the NDJSON events, the last `done` (an
        `error` event raises)."""
        status, out = self.raw("POST", "/v1/images/build", json.dumps({"spec": spec}).encode())
        if status != 200:
            raise APIError(f"POST /v1/images/build: HTTP {status}: {out[:500].decode(errors='replace')}")
        events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        if not events or events[-1].get("event") != "done":
            last = events[-1] if events else {}
            raise APIError(f"image build: {(last.get('error') or {}).get('message', last)}"[:500])
        return events

    def delete_image(self, name: str) -> None:
        self.call("DELETE", f"/v1/images/{name}", ok=(200, 204, 404))

    def metrics(self) -> str:
        status, out = self.raw("GET", "/metrics")
        if status != 200:
            raise APIError(f"GET /metrics: HTTP {status}")
        return out.decode()

    def version(self) -> Any:
        return self.call("GET", "/v1/version")

    def sandbox(self, argv: List[str], image: Optional[str] = None) -> Tuple[int, bytes, Dict]:
        """Runs a one-shot sandbox; returns (exit code, stdout, started event)."""
        body: Dict[str, Any] = {"argv": argv}
        if image:
            body["image"] = image
        status, data = self.raw("POST", "/v1/sandboxes", json.dumps(body).encode())
        if status != 200:
            raise APIError(f"POST /v1/sandboxes: HTTP {status}: {data[:500].decode(errors='replace')}")
        out, started, code = b"", {}, None
        for kind, payload in frames(data):
            if kind == 1:
                out += payload
            elif kind == 3:
                ev = json.loads(payload)
                if ev.get("event") == "started":
                    started = ev
                elif ev.get("event") == "exit":
                    code = ev.get("exitCode")
        if code is None:
            raise APIError("sandbox stream ended without an exit event")
        return code, out, started


class LeanClient:
    """The least a client can do: one kept-alive Unix socket, the request
    written as bytes, the response read by Content-Length. Python's
    http.client costs 150-250 µs a request on a busy 2-CPU machine (headers
    through email.parser, several objects per call), more than the daemon
    itself; this measures what the API costs without that."""

    def __init__(self, socket_path: str, timeout: float = 300.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def post_json(self, path: str, body: bytes) -> Tuple[int, bytes]:
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: hearthd\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if length is None:
            raise APIError(f"POST {path}: response without Content-Length")
        while len(self.buf) < length:
            self._fill()
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise APIError("hearthd closed the connection")
        self.buf += chunk

    def task(self, env: str, body: bytes, query: str = "") -> Dict:
        status, data = self.post_json(f"/v1/environments/{env}/tasks{query}", body)
        snap = json.loads(data)
        if status != 200 or snap.get("state") != "succeeded":
            raise APIError(f"task on {env}: HTTP {status}: {data[:300]!r}")
        return snap


def frames(data: bytes) -> Iterator[Tuple[int, bytes]]:
    """The sandbox stream: 1 byte kind, 4 bytes big-endian length, payload."""
    off = 0
    while off + 5 <= len(data):
        kind = data[off]
        (n,) = struct.unpack(">I", data[off + 1:off + 5])
        yield kind, data[off + 5:off + 5 + n]
        off += 5 + n


def make_tar(files: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            info.mtime = 0
            t.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def parse_prometheus(text: str) -> Dict[str, List[Tuple[Dict[str, str], float]]]:
    """{metric name: [(labels, value)]} from Prometheus text format."""
    out: Dict[str, List[Tuple[Dict[str, str], float]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        labels: Dict[str, str] = {}
        name = name_labels
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            rest = rest.rstrip("}")
            for part in _split_labels(rest):
                k, _, v = part.partition("=")
                labels[k.strip()] = v.strip().strip('"')
        try:
            out.setdefault(name, []).append((labels, float(value)))
        except ValueError:
            continue
    return out


def _split_labels(s: str) -> List[str]:
    parts, cur, quoted = [], "", False
    for ch in s:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def histogram(metrics: Dict[str, List[Tuple[Dict[str, str], float]]], name: str) -> List[Tuple[float, float]]:
    """Cumulative [(le, count)] of a histogram (labels other than le summed)."""
    acc: Dict[float, float] = {}
    for labels, value in metrics.get(name + "_bucket", []):
        le = labels.get("le", "+Inf")
        bound = float("inf") if le in ("+Inf", "Inf") else float(le)
        acc[bound] = acc.get(bound, 0.0) + value
    return sorted(acc.items())


def histogram_delta(after: List[Tuple[float, float]], before: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    b = dict(before)
    return [(le, c - b.get(le, 0.0)) for le, c in after]
