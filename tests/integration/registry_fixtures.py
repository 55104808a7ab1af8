"""Real OCI registries on 127.0.0.1 for test_registry.py.

Debian's `docker-registry` (the CNCF distribution server) serves one storage
directory through three front ends, so an image pushed once can be pulled
through each:

- `basic`: HTTPS with a certificate for 127.0.0.1 (IP SAN) signed by a CA
  made here with openssl, htpasswd (bcrypt) auth;
- `token`: HTTPS, `auth: token` against `TokenServer`, a small HTTPS token
  server in this process that signs RS256 JWTs with `openssl dgst` (the
  registry trusts its certificate through `rootcertbundle`; the JWT carries
  it as `x5c`). Repositories under `public/` get anonymous pull tokens;
  everything else needs alice's password;
- `plain`: plain HTTP, no auth.

`Proxy` stands in front of `plain` and can flip a byte of a blob, end a blob
early, or die in the middle of one; it logs every request. Images are
pushed with skopeo.
"""
import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import pathlib
import shutil
import socket
import socketserver
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse

USER, PASSWORD = "alice", "s3cret-pa55"
SERVICE, ISSUER = "hearth-test-registry", "hearth-test-issuer"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, log=None, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"registry exited early:\n{pathlib.Path(log).read_text()[-3000:] if log else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def run(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def make_ca(d):
    """A CA, a certificate for 127.0.0.1 signed by it, and a self-signed
    token-signing certificate; returns their paths."""
    d = pathlib.Path(d)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.pem",
        "-days", "2", "-subj", "/CN=Hearth test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "server.key", "-out", d / "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", d / "server.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
        "-CAcreateserial", "-out", d / "server.pem", "-days", "2", "-extfile", d / "ext.cnf")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "token.key", "-out", d / "token.pem",
        "-days", "2", "-subj", "/CN=Hearth test token issuer")
    # skopeo reads CAs from a directory of *.crt files.
    (d / "certs").mkdir()
    shutil.copy(d / "ca.pem", d / "certs" / "ca.crt")
    return d


class Registry:
    """One `docker-registry serve` process."""

    def __init__(self, d, name, storage, tls=None, auth=None):
        self.port = free_port()
        self.name = name
        self.host = f"127.0.0.1:{self.port}"
        self.log = d / f"{name}.log"
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": "hearth-test"},
        }
        if tls:
            config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        if auth:
            config["auth"] = auth
        self.config = d / f"{name}.yml"
        # JSON is YAML.
        self.config.write_text(json.dumps(config))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(self.config)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc, self.log)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The Bearer realm: `GET /token?service=&scope=` with optional Basic
    credentials → `{"token": <RS256 JWT>}`. Logs (user, scope) per request."""

    def __init__(self, d):
        self.d = d
        self.port = free_port()
        self.requests = []
        der = subprocess.run(["openssl", "x509", "-in", str(d / "token.pem"), "-outform", "DER"],
                             capture_output=True, check=True).stdout
        self.x5c = base64.b64encode(der).decode()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(url.query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if (u, p) != (USER, PASSWORD):
                        server.requests.append(("refused", u, q.get("scope", [""])[0]))
                        body = json.dumps({"errors": [{"code": "UNAUTHORIZED",
                                                       "message": f"token server: wrong password for {u}"}]}).encode()
                        self.send_response(401)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    user = u
                scopes = q.get("scope", [])
                server.requests.append((user, ",".join(scopes)))
                access = []
                for scope in scopes:
                    kind, name, actions = scope.split(":")
                    if user or name.startswith("public/"):
                        allowed = actions.split(",") if user else ["pull"]
                        access.append({"type": kind, "name": name, "actions": allowed})
                body = json.dumps({"token": server.sign(user or "", access), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(d / "server.pem"), str(d / "server.key"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def sign(self, subject, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 60, "iat": now,
                  "jti": b64url(os.urandom(12)), "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.d / "token.key")],
                             input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{b64url(sig)}"

    def start(self):
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Proxy:
    """Plain-HTTP proxy in front of a registry. `mode`: None (forward),
    ("flip", digest): one byte of that blob inverted; ("short", digest):
    that blob sent chunked and ended cleanly at half its length; ("die",
    digest): half of that blob sent under its full Content-Length, then
    the connection and every later one are cut. `log` lists request paths."""

    def __init__(self, upstream_port):
        self.port = free_port()
        self.upstream = upstream_port
        self.mode = None
        self.dead = False
        self.log = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one_request(self):
                if proxy.dead:
                    self.close_connection = True
                    self.connection.close()
                    return
                super().handle_one_request()

            def do_GET(self):
                proxy.log.append(self.path)
                up = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                up.request("GET", self.path, headers=headers)
                r = up.getresponse()
                body = r.read()
                up.close()
                mode = proxy.mode
                target = mode is not None and self.path.endswith("/blobs/" + mode[1]) and r.status == 200
                if target and mode[0] == "flip":
                    body = bytearray(body)
                    body[len(body) // 2] ^= 0xFF
                    body = bytes(body)
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                if target and mode[0] == "short":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = body[: len(body) // 2]
                    self.wfile.write(b"%x\r\n" % len(half) + half + b"\r\n0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if target and mode[0] == "die":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    proxy.dead = True
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            do_HEAD = do_GET

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def reset(self):
        self.mode = None
        self.dead = False
        self.log.clear()

    def blob_requests(self):
        return [p.rsplit("/", 1)[1] for p in self.log if "/blobs/" in p]

    def start(self):
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Registries:
    """The CA, the three registries on one storage, the token server, the proxy."""

    def __init__(self, base):
        self.dir = pathlib.Path(base)
        make_ca(self.dir)
        storage = self.dir / "storage"
        storage.mkdir()
        htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True,
                                  check=True).stdout
        (self.dir / "htpasswd").write_text(htpasswd)
        tls = (self.dir / "server.pem", self.dir / "server.key")
        self.tokens = TokenServer(self.dir)
        self.basic = Registry(self.dir, "basic", storage, tls=tls,
                              auth={"htpasswd": {"realm": "hearth-test", "path": str(self.dir / "htpasswd")}})
        self.token = Registry(self.dir, "token", storage, tls=tls, auth={"token": {
            "realm": f"https://127.0.0.1:{self.tokens.port}/token", "service": SERVICE, "issuer": ISSUER,
            "rootcertbundle": str(self.dir / "token.pem")}})
        self.plain = Registry(self.dir, "plain", storage)
        self.proxy = Proxy(self.plain.port)
        self.ca = self.dir / "ca.pem"

    def start(self):
        self.tokens.start()
        for r in (self.basic, self.token, self.plain):
            r.start()
        self.proxy.start()

    def stop(self):
        for r in (self.basic, self.token, self.plain):
            r.stop()
        self.tokens.stop()
        self.proxy.stop()

    def push(self, source, ref):
        """skopeo copy `source` (oci:DIR:TAG) to REPO:TAG on the plain
        registry (the others serve the same storage); `--all` keeps an index."""
        run("skopeo", "copy", "--all", "--dest-tls-verify=false", source, f"docker://{self.plain.host}/{ref}")

    def manifest(self, ref, accept=("application/vnd.oci.image.index.v1+json",
                                    "application/vnd.oci.image.manifest.v1+json",
                                    "application/vnd.docker.distribution.manifest.v2+json",
                                    "application/vnd.docker.distribution.manifest.list.v2+json")):
        """(digest, parsed document) of REPO:TAG as the registry has it."""
        repo, _, tag = ref.rpartition(":")
        c = http.client.HTTPConnection("127.0.0.1", self.plain.port, timeout=30)
        c.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ", ".join(accept)})
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == 200, (ref, r.status, body)
        return "sha256:" + hashlib.sha256(body).hexdigest(), json.loads(body)


# MARK: layouts


def _blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def layer_tar(files):
    """A gzipped tar of {path: bytes}, and its diff ID."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_600_000_000
            tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def write_image(layout, layers, arch="amd64"):
    """Blobs of an image with `layers` (each {path: bytes}); its manifest descriptor."""
    blobs, diff_ids = [], []
    for files in layers:
        gz, diff_id = layer_tar(files)
        blobs.append(dict(_blob(layout, gz), mediaType="application/vnd.oci.image.layer.v1.tar+gzip"))
        diff_ids.append(diff_id)
    config = {"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
              "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cfg = dict(_blob(layout, json.dumps(config).encode()), mediaType="application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg, "layers": blobs}
    return dict(_blob(layout, json.dumps(manifest).encode()), mediaType="application/vnd.oci.image.manifest.v1+json",
                platform={"os": "linux", "architecture": arch})


def write_layout(layout, top, tag):
    """index.json naming `top` (a manifest or index descriptor) `tag`."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    d = {k: v for k, v in top.items() if k != "platform"}
    d["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [d]}))


def small_image(layout, tag, layers=2, size=2 << 20, arch="amd64"):
    """A layout with `layers` layers of `size` random (incompressible) bytes each."""
    top = write_image(layout, [{f"data/{i}.bin": os.urandom(size)} for i in range(layers)], arch=arch)
    write_layout(layout, top, tag)
    return top


def index_of(layout, tag, manifests):
    """A layout whose `tag` is an image index of `manifests` (descriptors with platforms)."""
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    top = dict(_blob(layout, json.dumps(index).encode()), mediaType="application/vnd.oci.image.index.v1+json")
    write_layout(layout, top, tag)
    return top


def link_blobs(src, dst):
    """Hard-links (else copies) every blob of layout `src` into `dst`."""
    for p in (src / "blobs" / "sha256").iterdir():
        target = dst / "blobs" / "sha256" / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            continue
        try:
            os.link(p, target)
        except OSError:
            shutil.copy2(p, target)


def layout_manifest(layout, tag=None):
    """The manifest descriptor of a single-image layout (amd64)."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if tag is None or m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return dict(digest=m["digest"], size=m["size"], mediaType=m["mediaType"],
                        platform={"os": "linux", "architecture": "amd64"})
    raise KeyError(tag)


def whiteout_image(base, out, tag="wh"):
    """The default layout plus two layers made with umoci: the first
    deletes /etc/debian_version (a whiteout) and adds /opt/hearth/one and
    /opt/hearth/gone; the second deletes gone and adds /opt/hearth/two."""
    out.mkdir()
    shutil.copy(base / "index.json", out / "index.json")
    shutil.copy(base / "oci-layout", out / "oci-layout")
    link_blobs(base, out)
    bundle = out.parent / (out.name + "-bundle")
    run("umoci", "unpack", "--image", f"{out}:3.11", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "etc" / "debian_version").unlink()
    (rootfs / "opt" / "hearth").mkdir(parents=True)
    (rootfs / "opt" / "hearth" / "one").write_text("first layer\n")
    (rootfs / "opt" / "hearth" / "gone").write_text("deleted by the second layer\n")
    # --refresh-bundle: the second repack diffs against the first, so it is a layer of its own.
    run("umoci", "repack", "--refresh-bundle", "--image", f"{out}:step1", bundle)
    (rootfs / "opt" / "hearth" / "gone").unlink()
    (rootfs / "opt" / "hearth" / "two").write_text("second layer\n")
    run("umoci", "repack", "--image", f"{out}:{tag}", bundle)
    shutil.rmtree(bundle)
    return out
