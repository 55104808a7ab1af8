"""network egress: a replica's own network namespace with loopback only, in
which hearthd listens at 127.0.0.1:3128 before the replica's first process
runs and serves an HTTP forward proxy that connects out from the host's
namespace to public addresses on ports 80 and 443 only.

The attacks run inside replicas against the real daemon: the host's
loopback and its own address (test servers this module starts, which must
never see a request), cloud metadata, other ports, a direct connect without
the proxy, garbage and a connection flood at the proxy. PyPI and the Debian
mirror are the only outside hosts contacted (the allowed fetches)."""
import errno
import hashlib
import http.server
import io
import json
import os
import pathlib
import socket
import subprocess
import tarfile
import textwrap
import threading
import time

import pytest

from conftest import BIN, api, running_daemon

RULE = ("replicas with network egress reach public addresses on ports 80 and 443 only "
        "(hearthd --egress-allow CIDR[:PORT])")
EGRESS = ("--network", "egress")


def out(r):
    return r.stdout.decode(errors="replace")


def err(r):
    return r.stderr.decode(errors="replace")


def probe(d, code, opts=EGRESS, timeout=180):
    """Runs Python code in a sandbox; it must print one JSON object."""
    r = d.py(textwrap.dedent(code), opts=opts, timeout=timeout)
    assert r.returncode == 0, f"probe failed ({r.returncode}): {err(r)}\n{out(r)}"
    return json.loads(out(r).strip().splitlines()[-1])


# Inside a replica: one raw request to the proxy, the status line and body.
ASK = '''
import socket
def ask(data, timeout=30):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=timeout)
    try:
        s.sendall(data)
    except OSError:
        pass
    raw = b""
    try:
        while chunk := s.recv(65536):
            raw += chunk
    except OSError:
        pass
    s.close()
    head, _, body = raw.partition(b"\\r\\n\\r\\n")
    first = head.split(b"\\r\\n")[0].decode(errors="replace")
    return {"status": int(first.split()[1]) if first.count(" ") >= 2 else 0,
            "line": first, "body": body.decode(errors="replace").strip()}
'''


class CountingServer:
    """An HTTP/1.1 server on the host that counts the requests it gets."""

    def __init__(self, address, port=0):
        counter = self
        self.paths = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                counter.paths.append(self.path)
                body = f"hello {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def local_cas():
    """PEM of the CAs installed locally on this host (update-ca-certificates'
    /usr/local/share/ca-certificates). Where the host's own way out
    intercepts TLS (this project's build machines), the image's bundle
    lacks that CA: the replica adds these to its defaults. Usually empty."""
    d = pathlib.Path("/usr/local/share/ca-certificates")
    return "".join(p.read_text() for p in sorted(d.rglob("*.crt"))) if d.is_dir() else ""


def default_route_address():
    """The host's address on its default-route interface, or None (no route)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("203.0.113.80", 443))  # picks the route; sends nothing
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


def hearthd_pid(d):
    return d.proc.pid


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_inodes(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def listeners(tcp_text):
    """(local address, inode) of LISTEN sockets in a /proc/net/tcp text."""
    found = []
    for line in tcp_text.splitlines()[1:]:
        f = line.split()
        if f[3] == "0A":
            found.append((f[1], int(f[9])))
    return found


# 127.0.0.1:3128 as /proc/net/tcp writes it.
PROXY_LOCAL = "0100007F:0C38"


# MARK: allowed


def test_fetches_pypi_and_debian_through_the_proxy(hearth):
    p = probe(hearth, """
        import json, os, ssl, urllib.request
        res = {k: os.environ.get(k) for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY")}
        ctx = ssl.create_default_context()
        if os.environ["EXTRA_CA"]:
            ctx.load_verify_locations(cadata=os.environ["EXTRA_CA"])
        r = urllib.request.urlopen("https://pypi.org/simple/six/", timeout=60, context=ctx)
        res["pypi"] = r.status
        res["six"] = b"six-" in r.read()
        r = urllib.request.urlopen("http://deb.debian.org/debian/dists/bookworm/Release", timeout=60)
        res["debian"] = r.status
        res["release"] = b"Codename: bookworm" in r.read()
        res["resolv"] = open("/etc/resolv.conf").read()
        print(json.dumps(res))
    """, opts=EGRESS + ("--env", "EXTRA_CA=" + local_cas()))
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert p[k] == "http://127.0.0.1:3128", p
    assert p["NO_PROXY"] == "localhost,127.0.0.1"
    assert p["pypi"] == 200 and p["six"], p
    assert p["debian"] == 200 and p["release"], p
    assert "egress" in p["resolv"] and "nameserver" not in p["resolv"]


def test_environment_with_egress_fetches_through_the_proxy(hearth):
    tasks = textwrap.dedent("""
        import ssl, urllib.request
        def fetch(url, cadata):
            ctx = ssl.create_default_context()
            if cadata:
                ctx.load_verify_locations(cadata=cadata)
            with urllib.request.urlopen(url, timeout=60, context=ctx) as r:
                return {"status": r.status, "six": b"six-" in r.read()}
    """)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = tasks.encode()
        info = tarfile.TarInfo("egress_tasks.py")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    sha = hashlib.sha256(raw).hexdigest()
    status, body = api(hearth.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status in (200, 201), body
    r = hearth.hearth("apply", "-f", "-", check=False,
                      input=b"name: egress-env\nreplica_count: 1\nttl_seconds: 300\nnetwork: egress\n")
    assert r.returncode == 0, err(r)
    try:
        status, body = api(hearth.socket, "POST", "/v1/environments/egress-env/tasks",
                           {"module": "egress_tasks", "function": "fetch", "bundle": sha, "wait": True,
                            "kwargs": {"url": "https://pypi.org/simple/six/", "cadata": local_cas()}})
        assert status == 200 and body["state"] == "succeeded", body
        assert body["result"] == {"status": 200, "six": True}
        # The namespace and its proxy are a start phase of their own.
        assert "egress" in body.get("coldPhases", {}), body
    finally:
        status, _ = api(hearth.socket, "DELETE", "/v1/environments/egress-env")
        assert status in (200, 202, 204)


# MARK: refused


def test_the_host_metadata_and_other_ports_are_refused(hearth):
    host_ip = default_route_address()
    local = CountingServer("127.0.0.1")
    lan = CountingServer(host_ip) if host_ip else None
    try:
        # Control: the host itself reaches both servers.
        import urllib.request
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        assert opener.open(f"http://127.0.0.1:{local.port}/control", timeout=10).status == 200
        if lan:
            assert opener.open(f"http://{host_ip}:{lan.port}/control", timeout=10).status == 200
        assert local.paths == ["/control"]
        local.paths.clear()
        if lan:
            lan.paths.clear()

        targets = {
            "loopback_connect": f"CONNECT 127.0.0.1:{local.port} HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\n\r\n",
            "loopback_get": f"GET http://127.0.0.1:{local.port}/x HTTP/1.1\r\nHost: 127.0.0.1:{local.port}\r\n\r\n",
            "localhost_name": "CONNECT localhost:443 HTTP/1.1\r\n\r\n",
            "mapped": f"CONNECT [::ffff:127.0.0.1]:{local.port} HTTP/1.1\r\n\r\n",
            "metadata": "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
            "port22": "CONNECT pypi.org:22 HTTP/1.1\r\nHost: pypi.org:22\r\n\r\n",
        }
        if lan:
            targets["host_address"] = f"GET http://{host_ip}:{lan.port}/x HTTP/1.1\r\nHost: {host_ip}:{lan.port}\r\n\r\n"
        p = probe(hearth, ASK + f"""
import errno, json, socket, urllib.request
targets = {json.dumps(targets)}
res = {{k: ask(v.encode()) for k, v in targets.items()}}
# Without the proxy nothing leaves: no route out of the namespace.
try:
    socket.create_connection(("203.0.113.80", 443), timeout=10)
    res["direct"] = "connected"
except OSError as e:
    res["direct"] = e.errno
# NO_PROXY: urllib goes to the replica's own loopback, not the host's.
try:
    urllib.request.urlopen("http://127.0.0.1:{local.port}/bypass", timeout=10)
    res["own_loopback"] = "reached"
except OSError as e:
    res["own_loopback"] = str(e)
print(json.dumps(res))
""")
        lp = local.port
        assert p["loopback_connect"]["status"] == 403, p
        assert p["loopback_connect"]["line"] == "HTTP/1.1 403 Forbidden"
        assert p["loopback_connect"]["body"] == f"hearth egress: 127.0.0.1:{lp} refused: loopback address; {RULE}"
        assert p["loopback_get"]["body"] == f"hearth egress: 127.0.0.1:{lp} refused: loopback address; {RULE}"
        assert p["localhost_name"]["status"] == 403
        assert p["localhost_name"]["body"].startswith("hearth egress: localhost:443 (")
        assert "refused: loopback address;" in p["localhost_name"]["body"]
        assert p["mapped"]["body"] == (f"hearth egress: [::ffff:127.0.0.1]:{lp} refused: "
                                       f"loopback address (IPv4-mapped); {RULE}")
        assert p["metadata"]["body"] == ("hearth egress: 169.254.169.254:80 refused: link-local address "
                                         f"(169.254.0.0/16, where cloud metadata answers); {RULE}")
        assert p["port22"]["body"] == f"hearth egress: pypi.org:22 refused: port 22 is not allowed; {RULE}"
        if lan:
            assert p["host_address"]["status"] == 403, p
            assert p["host_address"]["body"] == f"hearth egress: {host_ip}:{lan.port} refused: an address of this host; {RULE}"
        assert p["direct"] == errno.ENETUNREACH, p
        assert "Connection refused" in p["own_loopback"], p
        # Refused means never contacted.
        assert local.paths == []
        if lan:
            assert lan.paths == []
        # Logged at info with the replica's name.
        log = pathlib.Path(hearth.log).read_text(errors="replace")
        assert "egress sbx-" in log and f"127.0.0.1:{lp} refused: loopback address" in log
    finally:
        local.close()
        if lan:
            lan.close()


def test_egress_with_a_user_namespace(hearth):
    """The netns is joined before the user namespace (the host's owns it)."""
    p = probe(hearth, ASK + """
import json
res = {"uid_map": open("/proc/self/uid_map").read().split(),
       "ask": ask(b"CONNECT 10.0.0.1:443 HTTP/1.1\\r\\n\\r\\n"),
       "listen": [l.split()[1] for l in open("/proc/net/tcp").read().splitlines()[1:] if l.split()[3] == "0A"]}
print(json.dumps(res))
""", opts=EGRESS + ("--userns",))
    assert int(p["uid_map"][1]) >= 0x70000000, p
    assert p["ask"]["body"] == f"hearth egress: 10.0.0.1:443 refused: private address (RFC 1918); {RULE}"
    assert p["listen"] == [PROXY_LOCAL]


# MARK: one proxy per replica, gone with it


def test_each_replica_has_its_own_listener_and_teardown_closes_it(hearth):
    pid = hearthd_pid(hearth)
    # The proxy's threads start with the first egress replica: warm them.
    assert hearth.sandbox("true", opts=EGRESS).returncode == 0
    before = fd_count(pid)
    code = textwrap.dedent("""
        import json, os, time
        tcp = open("/proc/net/tcp").read()
        print(json.dumps({"netns": os.stat("/proc/self/ns/net").st_ino, "tcp": tcp}), flush=True)
        # Output keeps flowing, so hearthd sees its client go and kills the replica.
        end = time.time() + float(os.environ["HOLD"])
        while time.time() < end:
            print(".", flush=True)
            time.sleep(0.1)
    """)
    env = dict(os.environ, HEARTH_SOCKET=hearth.socket)
    procs = [subprocess.Popen([str(BIN / "hearth"), "sandbox", *EGRESS, "--env", "HOLD=30", "--",
                               "python3", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for _ in range(2)]
    try:
        seen = [json.loads(p.stdout.readline()) for p in procs]
        held = socket_inodes(pid)
        own_ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        assert seen[0]["netns"] != seen[1]["netns"]
        assert own_ns not in (seen[0]["netns"], seen[1]["netns"])
        inodes = []
        for s in seen:
            found = listeners(s["tcp"])
            # Exactly one listener in each namespace: the proxy's, held by hearthd.
            assert [a for a, _ in found] == [PROXY_LOCAL], found
            inodes.append(found[0][1])
            assert found[0][1] in held
        assert inodes[0] != inodes[1]
        # Neither is in the daemon's own namespace.
        host_tcp = pathlib.Path(f"/proc/{pid}/net/tcp").read_text()
        assert not any(i in inodes for _, i in listeners(host_tcp))
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # The clients are gone: the replicas are killed and torn down, and the
    # listeners with them.
    deadline = time.time() + 15
    while time.time() < deadline:
        if fd_count(pid) <= before and not (set(inodes) & socket_inodes(pid)):
            break
        time.sleep(0.1)
    assert not (set(inodes) & socket_inodes(pid)), "a listener outlived its replica"
    assert fd_count(pid) <= before, f"hearthd holds {fd_count(pid)} fds, {before} before"


# MARK: hostile clients


def test_hearthd_survives_garbage_and_a_flood(hearth):
    pid = hearthd_pid(hearth)
    p = probe(hearth, ASK + """
import json, select, socket, time
res = {}
res["garbage"] = ask(b"\\x00\\x01\\x02 garbage \\xff\\r\\n\\r\\n")
res["origin_form"] = ask(b"GET / HTTP/1.1\\r\\nHost: pypi.org\\r\\n\\r\\n")
res["huge"] = ask(b"GET http://pypi.org/ HTTP/1.1\\r\\nX: " + b"a" * 20000 + b"\\r\\n\\r\\n")
res["endless"] = ask(b"GET http://pypi.org/ HTTP/1.1\\r\\n" + b"X: y\\r\\n" * 4000)
# A flood: 200 connections at once; the proxy serves 64 per replica and
# answers the rest 503 at once.
flood = [socket.create_connection(("127.0.0.1", 3128), timeout=10) for _ in range(200)]
pending, refused, other = set(flood), 0, 0
deadline = time.time() + 20
while pending and refused + other < 200 - 64 and time.time() < deadline:
    for s in select.select(list(pending), [], [], 0.5)[0]:
        pending.discard(s)
        if s.recv(100).startswith(b"HTTP/1.1 503"):
            refused += 1
        else:
            other += 1
# The 64 it serves stay silent: they have sent no request yet.
other += len(select.select(list(pending), [], [], 0.5)[0])
res["flood_refused"], res["flood_other"] = refused, other
for s in flood:
    s.close()
# The slots come back once the flood's connections are gone.
deadline = time.time() + 20
while time.time() < deadline:
    res["after"] = ask(b"CONNECT 127.0.0.1:1 HTTP/1.1\\r\\n\\r\\n")
    if res["after"]["status"] == 403:
        break
    time.sleep(0.2)
print(json.dumps(res))
""")
    assert p["garbage"]["status"] == 400, p
    assert p["origin_form"]["status"] == 400 and "CONNECT host:port" in p["origin_form"]["body"], p
    assert p["huge"]["status"] == 431, p["huge"]
    assert p["endless"]["status"] == 431, p["endless"]
    assert p["flood_refused"] == 200 - 64 and p["flood_other"] == 0, p
    assert p["after"]["status"] == 403, p
    assert hearth.proc.poll() is None
    status, body = api(hearth.socket, "GET", "/v1/version")
    assert status == 200 and body["pid"] == pid


# MARK: --egress-allow


@pytest.fixture(scope="module")
def widened():
    """A daemon whose egress also reaches a test server on the host's
    loopback (`--egress-allow 127.0.0.1:PORT`): the proxy's relaying, proven
    without the internet."""
    server = CountingServer("127.0.0.1")
    try:
        for d in running_daemon("hearth-eg", extra_args=["--egress-allow", f"127.0.0.1:{server.port}"]):
            yield server, d
    finally:
        server.close()


def test_egress_allow_widens_and_the_proxy_relays(widened):
    server, d = widened
    port = server.port
    p = probe(d, ASK + f"""
import json, socket
port = {port}
res = {{}}
res["get"] = ask(f"GET http://127.0.0.1:{{port}}/one HTTP/1.1\\r\\nHost: 127.0.0.1:{{port}}\\r\\nConnection: close\\r\\n\\r\\n".encode())
# A tunnel: the 200, then plain HTTP through it.
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(f"CONNECT 127.0.0.1:{{port}} HTTP/1.1\\r\\n\\r\\n".encode())
first = s.recv(4096)
s.sendall(f"GET /tunnel HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n".encode())
rest = b""
while chunk := s.recv(65536):
    rest += chunk
res["connect"] = first.decode()
res["tunnelled"] = rest.decode(errors="replace")
# Two requests on one connection to the same destination, then one to another.
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall((f"GET http://127.0.0.1:{{port}}/p1 HTTP/1.1\\r\\nHost: 127.0.0.1:{{port}}\\r\\n\\r\\n"
           f"GET http://127.0.0.1:{{port}}/p2 HTTP/1.1\\r\\nHost: 127.0.0.1:{{port}}\\r\\n\\r\\n"
           f"GET http://127.0.0.2:{{port}}/p3 HTTP/1.1\\r\\nHost: 127.0.0.2:{{port}}\\r\\n\\r\\n").encode())
got = b""
try:
    while chunk := s.recv(65536):
        got += chunk
except OSError:
    pass
res["pipelined"] = got.decode(errors="replace")
res["other_port"] = ask(f"CONNECT 127.0.0.1:{{port + 1 if port < 65535 else port - 1}} HTTP/1.1\\r\\n\\r\\n".encode())
print(json.dumps(res))
""")
    # Forwarded as received: the server sees the absolute form.
    base = f"http://127.0.0.1:{port}"
    assert p["get"]["status"] == 200 and p["get"]["body"] == f"hello {base}/one", p
    assert p["connect"] == "HTTP/1.1 200 Connection established\r\n\r\n"
    assert p["tunnelled"].startswith("HTTP/1.1 200") and p["tunnelled"].endswith("hello /tunnel\n")
    # The third names another destination: the server gets EOF after the
    # first two, answers them and closes; the third reaches no server.
    assert f"hello {base}/p1" in p["pipelined"] and f"hello {base}/p2" in p["pipelined"], p["pipelined"]
    assert "/p3" not in p["pipelined"]
    assert server.paths == [f"{base}/one", "/tunnel", f"{base}/p1", f"{base}/p2"]
    assert p["other_port"]["status"] == 403 and "refused: loopback address" in p["other_port"]["body"]


def test_bad_egress_allow_stops_hearthd(tmp_path):
    r = subprocess.run([str(BIN / "hearthd"), "--root", str(tmp_path / "root"), "--socket", str(tmp_path / "s.sock"),
                        "--egress-allow", "10.1.2.3/24"], capture_output=True, timeout=60)
    assert r.returncode == 1
    assert "--egress-allow: \"10.1.2.3/24\" has bits set below its prefix (did you mean 10.1.2.0/24?)" in err(r)
    assert not (tmp_path / "root").exists()


def test_unknown_network_mode_names_egress(hearth):
    r = hearth.sandbox("/bin/true", opts=("--network", "bridge"))
    assert r.returncode == 125 and "use none, egress or host" in err(r)
    r = hearth.hearth("apply", "-f", "-", check=False, input=b"name: bad-net\nnetwork: bridge\n")
    assert r.returncode != 0 and "egress" in err(r)
