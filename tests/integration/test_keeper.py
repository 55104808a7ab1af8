"""`hearth-init --keeper`: holds duplicates of replicas' fds so that they
outlive hearthd, and hands them back over a SOCK_SEQPACKET socket with
SCM_RIGHTS (the protocol is in Sources/hearth-init/keeper.c).

No daemon here: each test binds and listens a socket in a directory of its
own, starts the keeper with it as fd 3 and plays hearthd itself. The fds it
stores are a pidfd of a `sleep` child and pipe ends, so whether the keeper
holds, returns or closes them shows on the pipe's other end.
"""
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, TMP

# Listing 4096 records receives an fd per record: as many fds as this
# process may have (the VM suite's default soft limit is 1024).
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

MAX = 256 * 1024
NOBODY = 65534
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def wait_for(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def readable(fd, timeout):
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(timeout * 1000))


def sees_eof(fd, timeout=5.0):
    """Whether the pipe read end `fd` reaches EOF within `timeout` s (data
    before it is read and dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if readable(fd, max(0.0, deadline - time.monotonic())):
            if os.read(fd, 65536) == b"":
                return True
    return False


def put(s, name, record, fds):
    socket.send_fds(s, [b"P" + name + b"\n" + record], list(fds))


def listing(s):
    """[(name, record, fds)] from an `L` on `s`, checked against its `E`."""
    s.send(b"L")
    out = []
    while True:
        msg, fds, flags, _ = socket.recv_fds(s, MAX + 1, 16, socket.MSG_CMSG_CLOEXEC)
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC), flags
        if msg.startswith(b"E"):
            assert not fds
            assert int(msg[1:]) == len(out), (msg, len(out))
            return out
        assert msg[:1] == b"R", msg[:64]
        name, nl, record = msg[1:].partition(b"\n")
        assert nl
        out.append((name, record, fds))


def close_listed(recs):
    """Closes the fds a listing brought."""
    for _, _, fds in recs:
        for fd in fds:
            os.close(fd)


def names(s):
    """The names an `L` returns, in order; the fds it brought are closed."""
    recs = listing(s)
    close_listed(recs)
    return [name for name, _, _ in recs]


def pidfd_pid(fd):
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("Pid:"):
            return int(line.split()[1])
    raise AssertionError(f"fd {fd} is not a pidfd")


class Keeper:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hearth-keeper-", dir=TMP)
        self.path = os.path.join(self.dir, "keeper.sock")
        self.logpath = os.path.join(self.dir, "keeper.log")
        self.clients = []
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        lsock.bind(self.path)
        lsock.listen(16)
        fd = lsock.fileno()
        # bash (dash takes single-digit fds only) puts the socket on fd 3 and execs the keeper (same pid);
        # it also passes the socket's own number, which the keeper closes.
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f'exec "$0" --keeper 3<&{fd}', str(BIN / "hearth-init")],
                pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        lsock.close()
        self.pid = self.proc.pid

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(5)
        s.connect(self.path)
        self.clients.append(s)
        return s

    def log(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def wait_log(self, text, count=1):
        wait_for(lambda: self.log().count(text) >= count, what=f"{text!r} in the keeper's log:\n{self.log()}")

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def running(self):
        return self.proc.poll() is None

    def exit_code(self, timeout=5):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the keeper did not exit within {timeout} s; its log:\n{self.log()}")

    def close(self):
        for s in self.clients:
            s.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Sleeper:
    """A `sleep` child and a pidfd for it."""

    def __init__(self):
        self.proc = subprocess.Popen(["sleep", "60"])
        self.pidfd = os.pidfd_open(self.proc.pid)

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)

    def close(self):
        if self.proc.poll() is None:
            self.kill()
        os.close(self.pidfd)


@pytest.fixture
def keeper():
    if os.geteuid() != 0:
        pytest.skip("the keeper serves root only")
    if not (BIN / "hearth-init").exists():
        pytest.fail(f"{BIN / 'hearth-init'} is missing: run scripts/setup first")
    k = Keeper()
    yield k
    k.close()


@pytest.fixture
def sleeper():
    s = Sleeper()
    yield s
    s.close()


@pytest.fixture
def pipes():
    """make() -> (read end, write end); every end still open is closed at the end."""
    opened = []

    def make():
        r, w = os.pipe()
        opened.extend((r, w))
        return r, w

    def close(fd):
        opened.remove(fd)
        os.close(fd)

    make.close = close
    yield make
    for fd in opened:
        os.close(fd)


def test_starts_detached_with_only_its_socket(keeper):
    c = keeper.connect()
    assert names(c) == []
    assert open(f"/proc/{keeper.pid}/comm").read().strip() == "hearth-keeper"
    assert os.getsid(keeper.pid) == keeper.pid
    fds = {int(fd): os.readlink(f"/proc/{keeper.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{keeper.pid}/fd")}
    # 0-2 as given, 3 the listening socket, the client; the socket's other
    # number that the shell passed is gone; /dev/null is its spare fd.
    assert set(fds) - {0, 1, 2} == {3, 4, 5}, fds
    assert fds[3].startswith("socket:") and fds[4] == "/dev/null", fds
    flags = next(l for l in open(f"/proc/{keeper.pid}/fdinfo/3") if l.startswith("flags:"))
    assert int(flags.split()[1], 8) & os.O_CLOEXEC, flags
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        os.kill(keeper.pid, sig)
    assert names(c) == [] and keeper.running()
    os.kill(keeper.pid, signal.SIGTERM)
    assert keeper.exit_code() == -signal.SIGTERM


def test_put_then_list_on_a_new_connection_returns_the_same_fds(keeper, sleeper, pipes):
    r, w = pipes()
    record = bytes(range(256)) + b"\n\0 a record may hold any bytes\n"
    c = keeper.connect()
    put(c, b"replica-1", record, [sleeper.pidfd, w])
    pipes.close(w)
    c.close()
    keeper.wait_log("client gone")
    # Only the keeper holds the write end now: no EOF on the read end.
    assert not readable(r, 0.3)
    assert keeper.running()

    c2 = keeper.connect()
    [(name, got, fds)] = listing(c2)
    assert name == b"replica-1" and got == record and len(fds) == 2
    pidfd, w2 = fds
    assert pidfd_pid(pidfd) == sleeper.proc.pid
    os.write(w2, b"ping")
    assert readable(r, 5) and os.read(r, 16) == b"ping"
    os.close(pidfd)
    os.close(w2)
    # The keeper kept its own copy of what it handed out.
    assert not readable(r, 0.3)
    assert names(c2) == [b"replica-1"]


def test_records_outlive_the_client(keeper, sleeper, pipes):
    _, w = pipes()
    c = keeper.connect()
    put(c, b"a", b"", [sleeper.pidfd, w])
    put(c, b"b", b"two", [sleeper.pidfd])
    assert names(c) == [b"a", b"b"]
    c.close()
    keeper.wait_log("client gone")
    assert keeper.running()
    c2 = keeper.connect()
    recs = listing(c2)
    assert [(n, rec, len(fds)) for n, rec, fds in recs] == [(b"a", b"", 2), (b"b", b"two", 1)]
    close_listed(recs)


def test_exited_replica_is_dropped_and_a_client_keeps_the_keeper(keeper, sleeper, pipes):
    r, w = pipes()
    c = keeper.connect()
    put(c, b"gone-soon", b"x", [sleeper.pidfd, w])
    pipes.close(w)
    assert names(c) == [b"gone-soon"]
    sleeper.kill()
    wait_for(lambda: names(c) == [], what="the record of the exited process to go")
    assert "gone-soon exited: dropped" in keeper.log()
    assert sees_eof(r), "the keeper still holds the exited replica's pipe"
    # No records, but a client: the keeper stays.
    time.sleep(0.2)
    assert keeper.running() and names(c) == []
    c.close()
    assert keeper.exit_code() == 0


def test_last_replica_exiting_with_no_client_ends_the_keeper(keeper, sleeper):
    c = keeper.connect()
    put(c, b"last", b"", [sleeper.pidfd])
    assert names(c) == [b"last"]
    c.close()
    keeper.wait_log("client gone")
    assert keeper.running()
    sleeper.kill()
    assert keeper.exit_code() == 0
    assert "last exited: dropped" in keeper.log()


def test_drop_closes_the_records_fds(keeper, sleeper, pipes):
    r1, w1 = pipes()
    r2, w2 = pipes()
    c = keeper.connect()
    put(c, b"one", b"1", [sleeper.pidfd, w1])
    put(c, b"two", b"2", [sleeper.pidfd, w2])
    pipes.close(w1)
    pipes.close(w2)
    c.send(b"Dnobody-by-this-name")
    c.send(b"Done")
    assert names(c) == [b"two"]
    assert sees_eof(r1)
    assert not readable(r2, 0.3)


def test_put_with_a_known_name_replaces_the_record(keeper, sleeper, pipes):
    r1, w1 = pipes()
    r2, w2 = pipes()
    c = keeper.connect()
    put(c, b"a", b"old", [sleeper.pidfd, w1])
    put(c, b"b", b"", [sleeper.pidfd])
    put(c, b"a", b"new", [sleeper.pidfd, w2])
    pipes.close(w1)
    pipes.close(w2)
    recs = listing(c)
    # Stored anew: the replacement lists last.
    assert [(n, rec, len(fds)) for n, rec, fds in recs] == [(b"b", b"", 1), (b"a", b"new", 2)]
    close_listed(recs)
    assert sees_eof(r1), "the replaced record's fds are still open"
    assert not readable(r2, 0.3)


def test_quit_closes_everything_and_exits(keeper, sleeper, pipes):
    r, w = pipes()
    c = keeper.connect()
    put(c, b"q", b"", [sleeper.pidfd, w])
    pipes.close(w)
    assert names(c) == [b"q"]
    c.send(b"Q")
    assert keeper.exit_code() == 0
    assert sees_eof(r)
    assert c.recv(16) == b""


def test_malformed_puts_are_refused_and_leak_nothing(keeper, sleeper, pipes):
    c = keeper.connect()
    assert names(c) == []
    baseline = keeper.fds()
    ends = []

    def w():
        r, w = pipes()
        ends.append((r, w))
        return w

    put(c, b"no-fds", b"", [])
    put(c, b"a/b", b"", [sleeper.pidfd, w()])
    put(c, b"nine", b"", [sleeper.pidfd] + [w() for _ in range(8)])
    put(c, b"", b"", [sleeper.pidfd])
    put(c, b"x" * 201, b"", [sleeper.pidfd])
    put(c, b"nul\0", b"", [sleeper.pidfd])
    put(c, b"pipe-first", b"", [w(), sleeper.pidfd])
    socket.send_fds(c, [b"Pno-newline"], [sleeper.pidfd])
    socket.send_fds(c, [b"Dno-fds-here"], [w()])
    c.send(b"Lextra")
    c.send(b"Qextra")
    c.send(b"?")
    for _, wfd in ends:
        pipes.close(wfd)
    assert names(c) == []
    assert keeper.fds() == baseline, os.listdir(f"/proc/{keeper.pid}/fd")
    for r, _ in ends:
        assert sees_eof(r), "the keeper kept an fd of a refused message"
    log = keeper.log()
    for rule in ("no fds", "name contains NUL, '/' or newline", "more than 8 fds", "empty name",
                 "name longer than 200 bytes", "first fd is not a pidfd", "no newline after the name",
                 "closed 1 fds sent with 'D'", "refused list", "refused quit",
                 "unknown operation 0x3f"):
        assert rule in log, (rule, log)
    # The connection still works, and a good put after the bad ones counts.
    put(c, b"good", b"", [sleeper.pidfd])
    assert names(c) == [b"good"]
    assert keeper.running()


def test_size_limit(keeper, sleeper):
    c = keeper.connect()
    c.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * MAX)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MAX)
    name = b"big"
    record = os.urandom(MAX - len(name) - 2)
    put(c, name, record, [sleeper.pidfd])
    put(c, b"too-big", os.urandom(MAX), [sleeper.pidfd])
    recs = listing(c)
    assert [(n, rec == record) for n, rec, _ in recs] == [(b"big", True)]
    close_listed(recs)
    assert "refused message: longer than 256 KiB" in keeper.log()


@pytest.mark.skipif(FD_LIMIT != resource.RLIM_INFINITY and FD_LIMIT < 4096 + 256,
                    reason="listing 4096 records needs more than 4096 open fds; RLIMIT_NOFILE here is lower")
def test_at_most_4096_records(keeper, sleeper):
    c = keeper.connect()
    for i in range(4096):
        put(c, b"r%d" % i, b"", [sleeper.pidfd])
    put(c, b"one-too-many", b"", [sleeper.pidfd])
    put(c, b"r0", b"replaced", [sleeper.pidfd])
    got = names(c)
    assert got == [b"r%d" % i for i in range(1, 4096)] + [b"r0"]
    assert "refused put of one-too-many: too many records (4096)" in keeper.log()


def test_a_new_connection_replaces_the_client(keeper, sleeper):
    c1 = keeper.connect()
    assert names(c1) == []
    c2 = keeper.connect()
    assert names(c2) == []
    assert c1.recv(16) == b"", "the replaced client did not see EOF"
    # Everything the old client sent before the new one came still counts
    # (a crashed daemon's last puts), even when the keeper sees it all at once.
    os.kill(keeper.pid, signal.SIGSTOP)
    try:
        for name in (b"last", b"words", b"said"):
            put(c2, name, b"", [sleeper.pidfd])
        c2.send(b"Dsaid")
        c3 = keeper.connect()
    finally:
        os.kill(keeper.pid, signal.SIGCONT)
    assert names(c3) == [b"last", b"words"]
    assert c2.recv(16) == b""
    assert keeper.running()


def test_non_root_peer_is_refused(keeper, sleeper):
    os.chmod(keeper.dir, 0o755)
    os.chmod(keeper.path, 0o666)
    c = keeper.connect()
    put(c, b"kept", b"", [sleeper.pidfd])
    assert names(c) == [b"kept"]
    # A forked child, not a new interpreter: this one may sit where nobody
    # cannot read it. It reports what it received on a pipe.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(5)
            s.connect(keeper.path)
            # Nothing sent: closing a socket with unread data would show
            # as ECONNRESET rather than EOF.
            os.write(w, repr(s.recv(64)).encode())
        except BaseException as e:
            os.write(w, repr(e).encode())
        os._exit(0)
    os.close(w)
    try:
        assert readable(r, 10)
        got = os.read(r, 4096).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert got == "b''", got
    assert f"uid {NOBODY}: not root" in keeper.log()
    # The root client was not replaced and is still served.
    assert names(c) == [b"kept"]


def test_client_eof_with_no_records_ends_the_keeper(keeper):
    c = keeper.connect()
    assert names(c) == []
    c.close()
    assert keeper.exit_code() == 0
    assert "no client and no records: exiting" in keeper.log()


def test_refuses_an_fd_3_that_is_not_a_listening_socket():
    r, w = os.pipe()
    try:
        out = subprocess.run(["bash", "-c", f'exec "$0" --keeper 3<&{r}', str(BIN / "hearth-init")],
                             pass_fds=(r,), capture_output=True, text=True, timeout=10)
    finally:
        os.close(r)
        os.close(w)
    assert out.returncode == 2
    assert "hearth-keeper: fd 3 is not a listening socket" in out.stderr
