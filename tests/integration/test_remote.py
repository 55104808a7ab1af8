"""A remote daemon: `hearthd --listen tcp://127.0.0.1:PORT` with mutual
TLS, certificates from `hearth certs`, and clients (the CLI and the SDK)
that reach it through HEARTH_HOST and HEARTH_TLS_*. A client with a
certificate of the cluster CA runs tasks (code bundles, results and image
bytes travel as on the Unix socket) under its certificate's subject; one
of another CA, an expired one, none at all and plain TCP are refused at
the TLS handshake, each with a message that says which side refused what.
The socket's policy applies to TCP callers: they are never root peers."""
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import BIN, LAYOUT, REPO, certs, free_port, running_daemon


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    certs("ca", str(d / "ca"))
    certs("server", str(d / "node"), "--ca", str(d / "ca"), "--host", "127.0.0.1")
    certs("client", str(d / "alice"), "--ca", str(d / "ca"), "--name", "alice")
    certs("ca", str(d / "other-ca"))
    certs("client", str(d / "mallory"), "--ca", str(d / "other-ca"), "--name", "mallory")
    certs("client", str(d / "expired"), "--ca", str(d / "ca"), "--name", "old",
          "--not-before", "2025-01-01", "--not-after", "2025-02-01")
    # A node certificate for an address nobody dials: a client must refuse it.
    certs("server", str(d / "elsewhere"), "--ca", str(d / "ca"), "--host", "10.99.0.1")
    return d


@pytest.fixture(scope="module")
def node(pki):
    port = free_port()
    args = ["--listen", f"tcp://127.0.0.1:{port}", "--tls-cert", pki / "node" / "server.pem",
            "--tls-key", pki / "node" / "server-key.pem", "--tls-ca", pki / "node" / "ca.pem"]
    for d in running_daemon("hearth-remote", extra_args=args, import_image=False):
        d.host = f"tcp://127.0.0.1:{port}"
        d.port = port
        yield d


def client_env(node, pki, who="alice", ca=None):
    env = dict(os.environ, HEARTH_HOST=node.host, HEARTH_TLS_CERT=str(pki / who / "cert.pem"),
               HEARTH_TLS_KEY=str(pki / who / "key.pem"), HEARTH_TLS_CA=str(ca or pki / who / "ca.pem"),
               PYTHONPATH=str(REPO / "python"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("HEARTH_SOCKET", None)
    return env


def remote_hearth(node, pki, *args, who="alice", timeout=600):
    return subprocess.run([str(BIN / "hearth"), *args], capture_output=True, text=True,
                          env=client_env(node, pki, who), timeout=timeout)


FLOW = textwrap.dedent('''
    import os
    from hearth import ActorEnvironment, workflow

    env = ActorEnvironment(name="remote-env", replica_count=1)

    @env.task
    def double(n: int) -> dict:
        global SEEN
        SEEN = globals().get("SEEN", 0) + 1
        return {"value": n * 2, "pid": os.getpid(), "seen": SEEN, "blob": "x" * 300000}

    @workflow
    def wf(n: int) -> list:
        return [double(n=n), double(n=n + 1)]
''')


def run_sdk(node, pki, code, tmp_path, who="alice"):
    (tmp_path / "remote_flow.py").write_text(FLOW)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env=client_env(node, pki, who), timeout=600)


def test_a_client_of_the_cluster_ca_runs_tasks(node, pki, tmp_path):
    # The image's bytes travel over TLS: a path means nothing to a remote daemon.
    r = remote_hearth(node, pki, "image", "import", str(LAYOUT), "--name", "hearth/python:3.11")
    assert r.returncode == 0 and "imported hearth/python:3.11" in r.stdout, (r.stdout, r.stderr)

    v = remote_hearth(node, pki, "version")
    assert v.returncode == 0 and "you are CN=alice,O=hearth on " + node.host in v.stdout, (v.stdout, v.stderr)

    # The SDK: the environment applied, the module sent as a code bundle,
    # two tasks in one warm replica, a 300 kB result back; asyncio too.
    r = run_sdk(node, pki, textwrap.dedent('''
        import asyncio, json
        import remote_flow
        from hearth import _client
        first = remote_flow.wf(n=20)
        second = remote_flow.double(n=1)
        async def who():
            return await _client.async_client().call("GET", "/v1/version")
        info = _client.client().call("GET", "/v1/info")
        print(json.dumps({"first": first, "second": second, "caller": asyncio.run(who())["caller"], "info": info}))
    '''), tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr, open(node.log).read()[-2000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [t["value"] for t in out["first"]] == [40, 42]
    assert out["second"]["value"] == 2 and len(out["second"]["blob"]) == 300000
    # One interpreter kept its globals across the three tasks.
    assert len({t["pid"] for t in out["first"] + [out["second"]]}) == 1
    assert out["second"]["seen"] == 3
    assert out["caller"] == "CN=alice,O=hearth"
    # What a scheduler places by: the node's capacity and what is admitted.
    info = out["info"]
    assert info["caller"] == "CN=alice,O=hearth" and info["environments"] == 1 and info["replicas"] == 1
    assert info["capacity"]["cpuMilli"] == os.cpu_count() * 1000
    assert 0 < info["free"]["memoryBytes"] <= info["capacity"]["memoryBytes"]
    assert info["free"]["cpuMilli"] == info["capacity"]["cpuMilli"] - info["admitted"]["cpuMilli"]

    # The CLI lists what the SDK applied, over the same TLS.
    ls = remote_hearth(node, pki, "ls")
    assert ls.returncode == 0 and "remote-env" in ls.stdout, (ls.stdout, ls.stderr)
    assert "TLS: refused" not in open(node.log).read()


def test_a_certificate_of_another_ca_is_refused(node, pki, tmp_path):
    # mallory trusts the right CA for the daemon; its own certificate is the problem.
    r = subprocess.run([str(BIN / "hearth"), "version"], capture_output=True, text=True, timeout=60,
                       env=client_env(node, pki, "mallory", ca=pki / "ca" / "ca.pem"))
    assert r.returncode != 0
    assert "refused this client's certificate" in r.stderr and "unknown ca" in r.stderr, r.stderr
    assert str(pki / "mallory" / "cert.pem") in r.stderr and node.host.replace("tcp://", "") in r.stderr
    env = client_env(node, pki, "mallory", ca=pki / "ca" / "ca.pem")
    (tmp_path / "remote_flow.py").write_text(FLOW)
    s = subprocess.run([sys.executable, "-c", "import remote_flow; remote_flow.wf(n=1)"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    assert s.returncode != 0
    assert "DaemonUnavailable" in s.stderr and "refused this client's certificate" in s.stderr, s.stderr[-2000:]
    assert "unknown ca" in s.stderr
    assert "TLS: refused" in open(node.log).read()


def tls_exchange(node, ctx, request=b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n"):
    """A raw TLS client: what the daemon answers, or the TLS error."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=20) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as t:
                t.sendall(request)
                return t.recv(4096)
        except ssl.SSLError as e:
            return e


def test_an_expired_certificate_is_refused(node, pki):
    # The CLI will not even send one.
    r = remote_hearth(node, pki, "version", who="expired")
    assert r.returncode != 0 and "HEARTH_TLS_CERT" in r.stderr and "expired on 2025-02-01" in r.stderr, r.stderr
    # The daemon refuses it when a client does.
    ctx = ssl.create_default_context(cafile=str(pki / "ca" / "ca.pem"))
    ctx.load_cert_chain(str(pki / "expired" / "cert.pem"), str(pki / "expired" / "key.pem"))
    got = tls_exchange(node, ctx)
    assert isinstance(got, ssl.SSLError) and "CERTIFICATE_EXPIRED" in str(got), got


def test_no_certificate_and_plain_tcp_are_refused(node, pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca" / "ca.pem"))
    got = tls_exchange(node, ctx)
    assert isinstance(got, ssl.SSLError) and "CERTIFICATE_REQUIRED" in str(got), got
    # Plain HTTP on the TLS port: no answer but a closed connection.
    with socket.create_connection(("127.0.0.1", node.port), timeout=20) as s:
        s.sendall(b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert b"HTTP/1" not in data and b"version" not in data, data
    # The daemon is fine afterwards.
    assert remote_hearth(node, pki, "version").returncode == 0


def test_a_client_refuses_a_daemon_certificate_for_another_host(pki, tmp_path):
    """The daemon's certificate must name the address dialled: a server
    presenting a cluster certificate for 10.99.0.1 on 127.0.0.1 is refused."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki / "elsewhere" / "server.pem"), str(pki / "elsewhere" / "server-key.pem"))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        srv.settimeout(30)
        try:
            conn, _ = srv.accept()
            with conn:
                try:
                    ctx.wrap_socket(conn, server_side=True).recv(10)
                except (ssl.SSLError, OSError):
                    pass
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    env = dict(os.environ, HEARTH_HOST=f"tcp://127.0.0.1:{port}", HEARTH_TLS_CERT=str(pki / "alice" / "cert.pem"),
               HEARTH_TLS_KEY=str(pki / "alice" / "key.pem"), HEARTH_TLS_CA=str(pki / "alice" / "ca.pem"))
    r = subprocess.run([str(BIN / "hearth"), "version"], capture_output=True, text=True, env=env, timeout=60)
    t.join(30)
    srv.close()
    assert r.returncode != 0
    assert "this client refused the certificate of hearthd" in r.stderr, r.stderr


def test_the_socket_policy_applies_to_tcp_callers(node, pki):
    """A TCP caller is never a root peer: no host path is opened for it,
    and privileged settings still need --allow-privileged."""
    import http.client

    ctx = ssl.create_default_context(cafile=str(pki / "ca" / "ca.pem"))
    ctx.load_cert_chain(str(pki / "alice" / "cert.pem"), str(pki / "alice" / "key.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", node.port, context=ctx, timeout=60)
    conn.request("POST", "/v1/images/import", body=json.dumps({"path": "/etc", "name": "stolen:1"}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read().decode()
    assert r.status == 403 and "only root may have hearthd open a host path" in body and "CN=alice,O=hearth" in body, body
    conn.close()
    spec = "name: priv\nreplica_count: 1\nseccomp: unconfined\n"
    r = subprocess.run([str(BIN / "hearth"), "apply", "-f", "-"], input=spec, capture_output=True, text=True,
                       env=client_env(node, pki), timeout=120)
    assert r.returncode != 0 and "--allow-privileged" in r.stderr, (r.stdout, r.stderr)


def test_listen_options_are_checked_before_anything_starts(pki, tmp_path):
    hearthd = str(BIN / "hearthd")
    base = ["--root", str(tmp_path / "root"), "--socket", str(tmp_path / "s.sock")]
    cases = [
        (["--listen", "tcp://127.0.0.1:1"], "needs --tls-cert, --tls-key, --tls-ca"),
        (["--tls-cert", str(pki / "node" / "server.pem")], "--tls-cert is for --listen"),
        (["--listen", "127.0.0.1:7443"], "expected tcp://HOST:PORT"),
        (["--listen", "tcp://127.0.0.1:1", "--tls-cert", str(pki / "node" / "server.pem"),
          "--tls-key", str(pki / "alice" / "key.pem"), "--tls-ca", str(pki / "ca" / "ca.pem")],
         "is not the key of --tls-cert"),
        (["--listen", "tcp://127.0.0.1:1", "--tls-cert", str(pki / "node" / "server.pem"),
          "--tls-key", str(pki / "node" / "server-key.pem"), "--tls-ca", str(tmp_path / "missing.pem")],
         "--tls-ca " + str(tmp_path / "missing.pem") + ": cannot read it (ENOENT)"),
    ]
    for args, want in cases:
        r = subprocess.run([hearthd, *base, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and want in r.stderr, (args, r.stderr)
        assert not (tmp_path / "root").exists() or "cannot read it" in want or "not the key" in want
    # `hearth certs` never overwrites a CA.
    again = certs("ca", str(pki / "ca"), check=False)
    assert again.returncode != 0 and "exists" in again.stderr
