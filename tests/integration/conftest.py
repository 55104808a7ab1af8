"""A real hearthd on a temporary state root and socket, shared by the session.

Every test talks to it through the real `hearth` CLI. After each test the
fixture checks that nothing is left behind: no mount under the state root,
no replica directory, no cgroup under the daemon's subtree, no stray process.

Daemons run with `--spares 0` unless a test asks for pre-started spares
(`running_daemon(prefix, spares=N)`, see test_spares.py), so that every
replica a test sees is one it caused.
"""
import json
import os
import socket
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("HEARTH_BIN", REPO / ".build" / "release"))
LAYOUT = pathlib.Path(os.environ.get("HEARTH_IMAGE_LAYOUT", REPO / "rootfs" / "out" / "python-3.11"))
IMAGE = "hearth/python:3.11"
# Where state roots and sockets go: a local filesystem overlayfs can use as
# an upper layer (the VM suite points it at a tmpfs).
TMP = os.environ.get("HEARTH_TEST_TMPDIR", "/var/tmp")
# Set by the VM suite (tests/vm/guest.sh) on a pure cgroup v2 host: each
# daemon runs in a cgroup of its own below this directory, as systemd runs a
# service with Delegate=yes, rather than beside pytest.
CGROUP_PARENT = os.environ.get("HEARTH_TEST_CGROUP_PARENT")
# Pre-started spare replicas are named `spare-<boot>-<n>` (replica directory,
# cgroup leaf, hostname); a replica an environment adopted keeps that name.
SPARE_PREFIX = "spare-"


def pytest_collection_modifyitems(config, items):
    """HEARTH_TEST_SKIP names a file of `node-id reason` lines (the VM suite's
    tests/vm/skip.txt; a node id may be a file or a test, parameters
    included): those tests are skipped with that reason, so that `-rs` lists
    them by name instead of leaving them out silently. With
    HEARTH_TEST_SKIP_KEEP=WORD, lines whose reason starts with WORD are
    ignored (the VM suite's HEARTH_VM_FULL=1)."""
    path = os.environ.get("HEARTH_TEST_SKIP")
    if not path:
        return
    keep = os.environ.get("HEARTH_TEST_SKIP_KEEP")
    rules = []
    for line in pathlib.Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            node, _, reason = line.strip().partition(" ")
            if not (keep and reason.strip().startswith(keep)):
                rules.append((node, reason.strip()))
    for item in items:
        for node, reason in rules:
            if item.nodeid == node or item.nodeid.startswith((node + "[", node + "::")):
                # The name goes into the reason: -rs shows only the file.
                item.add_marker(pytest.mark.skip(reason=f"{item.name}: {reason}"))
                break


def cgroup_layout():
    """"v2" on a pure cgroup v2 host, "v1" where cpu, memory and pids are v1."""
    return "v1" if os.path.exists("/sys/fs/cgroup/pids/cgroup.procs") else "v2"


def _cgroup_dirs(subtree):
    """Directories named `subtree` in any cgroup hierarchy (v1 or v2)."""
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if top.count("/") > 9:
            dirs[:] = []
            continue
        for d in dirs:
            if d == subtree:
                found.append(os.path.join(top, d))
    return found


def raw_request(sock, method, path, data, headers=(), timeout=None):
    """One raw HTTP/1.1 request on the Unix socket: (status, head bytes, body
    bytes, de-chunked). `headers`: extra (name, value) pairs."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
              f"{extra}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    s.settimeout(timeout)
    raw = b""
    while chunk := s.recv(65536):
        raw += chunk
    s.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"chunked" in head.lower():
        out = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out += rest[:n]
            rest = rest[n + 2:]
        rest = out
    return status, head, rest


def api(sock, method, path, body=None):
    """One raw HTTP/1.1 request on the Unix socket: (status, parsed JSON or text)."""
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    status, _, rest = raw_request(sock, method, path, data)
    try:
        return status, json.loads(rest)
    except ValueError:
        return status, rest


# flytekit and the plugin, installed by scripts/setup (flytekit from PyPI):
# the flytekit modules run their programs from here.
FLYTE_VENV = REPO / ".venv-flyte"


def needs_flyte_venv(program):
    """The module mark of a module that runs `program` from FLYTE_VENV."""
    return pytest.mark.skipif(not program.exists(), reason="no %s: scripts/setup makes it (flytekit from PyPI)"
                              % program)


def free_port():
    """A TCP port on 127.0.0.1 nothing listens on now (a daemon's --listen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def certs(*args, check=True):
    """`hearth certs ARGS` (a CA, node or client certificate for --listen)."""
    r = subprocess.run([str(BIN / "hearth"), "certs", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def is_spare(name):
    """Whether a replica name (directory, cgroup leaf) is a pre-started spare's."""
    return name.startswith(SPARE_PREFIX)


class Daemon:
    def __init__(self, root, socket, subtree, log, spares=0, extra_args=(), binary=None):
        """`spares`: hearthd's --spares (0: none, the suite's default);
        `extra_args`: more hearthd options (e.g. ["--spare-ttl", "3"]);
        `binary`: the hearthd to run (default BIN/hearthd)."""
        self.binary = str(binary or BIN / "hearthd")
        self.root = root
        self.socket = socket
        self.subtree = subtree
        self.log = log
        self.spares = spares
        self.extra_args = [str(a) for a in extra_args]
        self.proc = None

    @property
    def service_cgroup(self):
        """The daemon's own cgroup when CGROUP_PARENT is set (v2 VM suite)."""
        return os.path.join(CGROUP_PARENT, self.subtree + ".service") if CGROUP_PARENT else None

    def start(self):
        self.logf = open(self.log, "ab")
        cmd = [self.binary, "--root", self.root, "--socket", self.socket,
               "--init", str(BIN / "hearth-init"), "--cgroup-name", self.subtree, "--shutdown-timeout", "3",
               "--worker-dir", str(REPO / "python"), "--spares", str(self.spares),
               # No default memory limit unless a test asks (test_limits.py):
               # admission would count 1Gi per replica, more than the VM
               # suite's machine has for the environments a module keeps.
               "--default-memory", "none", *self.extra_args]
        if self.service_cgroup:
            # Start in the service cgroup; once hearthd has moved itself into
            # its leaf (controllers are then on in the service cgroup, which
            # may hold no process), a restart starts there, as systemd's
            # DelegateSubgroup= does.
            os.makedirs(self.service_cgroup, exist_ok=True)
            leaf = os.path.join(self.service_cgroup, self.subtree + "-daemon")
            place = leaf if os.path.isdir(leaf) else self.service_cgroup
            cmd = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', place, *cmd]
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("hearthd exited early:\n" + pathlib.Path(self.log).read_text()[-3000:])
            if self.hearth("version", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("hearthd did not come up:\n" + pathlib.Path(self.log).read_text()[-3000:])

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def release_cgroup(self):
        """After stop(): removes the service cgroup (v2 VM suite). hearthd
        removes its subtree on shutdown; only its own, now empty, leaf may
        remain. Returns what could not be removed."""
        svc = self.service_cgroup
        if not svc or not os.path.isdir(svc):
            return []
        for top, dirs, _ in sorted(os.walk(svc), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(top)
            except OSError:
                pass
        if not os.path.isdir(svc):
            return []
        return [f"cgroup left: {top}" for top, _, _ in os.walk(svc)]

    def hearth(self, *args, check=True, timeout=120, input=None):
        env = dict(os.environ, HEARTH_SOCKET=self.socket)
        env.pop("HEARTH_HOST", None)  # it would win over HEARTH_SOCKET
        r = subprocess.run([str(BIN / "hearth"), *args], capture_output=True, env=env, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"hearth {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout.decode(errors='replace')}\nstderr: {r.stderr.decode(errors='replace')}")
        return r

    def sandbox(self, *cmd, opts=(), check=False, timeout=120):
        return self.hearth("sandbox", *opts, "--", *cmd, check=check, timeout=timeout)

    def py(self, code, opts=(), check=False, timeout=120):
        return self.sandbox("python3", "-c", code, opts=opts, check=check, timeout=timeout)

    # What must be empty between tests.
    def leftovers(self, ignore_spares=False):
        """Mounts, replica directories, cgroups and processes of replicas
        that still exist. With `ignore_spares`, those of replicas named
        `spare-…` (pre-started spares, and replicas adopted from them) are
        not reported: for checks while a daemon with spares runs, which keeps
        its spares. At daemon stop nothing may be left, spares included."""
        problems = []
        rprefix = self.root + "/replicas/"

        def skip(name):
            return ignore_spares and name is not None and is_spare(name)

        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4]
                if mp.startswith(self.root + "/replicas"):
                    if skip(mp[len(rprefix):].split("/")[0] if mp.startswith(rprefix) else None):
                        continue
                    problems.append(f"mount left: {mp}")
        rdir = pathlib.Path(self.root, "replicas")
        if rdir.exists():
            for p in rdir.iterdir():
                if not skip(p.name):
                    problems.append(f"replica directory left: {p}")
        for d in _cgroup_dirs(self.subtree):
            for sub in os.listdir(d):
                if os.path.isdir(os.path.join(d, sub)) and not skip(sub):
                    problems.append(f"cgroup left: {d}/{sub}")
        # Processes whose root is under our replicas directory.
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                root = os.readlink(f"/proc/{pid}/root")
                cg = pathlib.Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue
            if root.startswith(self.root) or f"/{self.subtree}/" in cg:
                # The replica it belongs to: from its root, or its cgroup leaf.
                owners = set()
                if root.startswith(rprefix):
                    owners.add(root[len(rprefix):].split("/")[0])
                for cline in cg.splitlines():
                    path = cline.split(":", 2)[-1]
                    if f"/{self.subtree}/" in path:
                        owners.add(path.split(f"/{self.subtree}/", 1)[1].split("/")[0])
                if owners and all(skip(o) for o in owners):
                    continue
                problems.append(f"process left: pid {pid} root {root}")
        return problems


def keeper_pid(hd):
    """The keeper's pid: the process holding the listening socket bound at
    <root>/keeper.sock (its peer credentials would name the hearthd that
    made the socket)."""
    path = os.path.join(hd.root, "keeper.sock")
    inodes = set()
    with open("/proc/net/unix") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path:
                inodes.add(parts[6])
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            for fd in fds:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    if open(f"/proc/{pid}/comm").read().strip() == "hearth-keeper":
                        return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no keeper listens on {path}")


def running_daemon(prefix, spares=0, extra_args=(), import_image=True, binary=None):
    """A daemon on a fresh state root with the default image imported
    (unless `import_image` is false); stopped and checked for leftovers
    (spares included) at the end. `spares` and `extra_args` go to Daemon
    (hearthd's --spares, more options)."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    for b in ("hearthd", "hearth", "hearth-init"):
        if not (BIN / b).exists():
            pytest.fail(f"{BIN / b} is missing: run scripts/setup first")
    if not (LAYOUT / "index.json").exists():
        pytest.fail(f"default image layout {LAYOUT} is missing: run rootfs/build first")
    base = tempfile.mkdtemp(prefix=f"{prefix}-", dir=TMP)
    d = Daemon(root=os.path.join(base, "root"), socket=os.path.join(base, "hearthd.sock"),
               subtree=f"{prefix}-{os.getpid()}", log=os.path.join(base, "hearthd.log"),
               spares=spares, extra_args=extra_args, binary=binary)
    d.start()
    if import_image:
        d.hearth("image", "import", str(LAYOUT), "--name", IMAGE, timeout=600)
    yield d
    d.stop()
    problems = d.leftovers()
    # Only the daemon's own leaf may be left in its service cgroup (v2):
    # anything else is a subtree the daemon did not remove.
    if d.service_cgroup and os.path.isdir(d.service_cgroup):
        extra = [n for n in os.listdir(d.service_cgroup)
                 if os.path.isdir(os.path.join(d.service_cgroup, n)) and n != d.subtree + "-daemon"]
        problems += [f"cgroup left: {d.service_cgroup}/{n}" for n in extra]
    problems += d.release_cgroup()
    if problems or d.proc.returncode not in (0, -signal.SIGTERM):
        # The state root goes away below: keep what the daemon said.
        log_tail = pathlib.Path(d.log).read_text(errors="replace")[-8000:]
        problems.append(f"hearthd exited {d.proc.returncode}; the end of its log:\n{log_tail}")
    shutil.rmtree(base, ignore_errors=True)
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="session")
def daemon():
    yield from running_daemon("hearth-it")


def _checked(daemon):
    yield daemon
    deadline = time.time() + 5
    problems = daemon.leftovers()
    while problems and time.time() < deadline:
        time.sleep(0.1)
        problems = daemon.leftovers()
    assert not problems, problems


@pytest.fixture
def hearth(daemon):
    """The session daemon, checked for leftovers after the test. It runs
    without --allow-privileged, as hearthd does by default."""
    yield from _checked(daemon)


@pytest.fixture(scope="session")
def privileged_daemon():
    yield from running_daemon("hearth-priv", extra_args=["--allow-privileged"])


@pytest.fixture
def privileged(privileged_daemon):
    """A daemon started with --allow-privileged, for tests of the settings
    it lets clients ask for (seccomp unconfined or a custom profile, added
    capabilities, network host); checked for leftovers after the test."""
    yield from _checked(privileged_daemon)
