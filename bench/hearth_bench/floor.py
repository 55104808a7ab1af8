"""The floor under a warm round trip: what four process crossings cost on
this machine, measured in the same run as Hearth's warm tasks.

A Hearth warm task crosses processes four times: the client's request into
hearthd (a Unix socket), hearthd's run frame to the worker (a pipe), the
worker's result frame back (a pipe), and the response to the client (the
socket). The floor does the same with nothing else: this process as the
client, a relay process (the daemon's place) that reads a request from a
Unix socket, writes it to a pipe and relays the answer back, and an echo
process (the worker's place) that writes back what it reads. Client and
echo are pinned to one CPU and the relay to another, so every hop crosses
CPUs, as it does for hearthd's event loop and a replica; unpinned, the
scheduler's placement of the three moves the floor by several times from
run to run. Both helpers are Python, as the client and the worker are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Set

# The echo: the worker's place. Reads what the relay writes, writes it back.
ECHO = r"""
import os, sys
cpu = int(sys.argv[1])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
while True:
    data = os.read(0, 1 << 16)
    if not data:
        break
    os.write(1, data)
"""

# The relay: the daemon's place. One client connection; each request goes to
# the echo over a pipe and its answer back over the socket.
RELAY = r"""
import os, socket, subprocess, sys
path, cpu, echo_cpu, echo = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
child = subprocess.Popen([sys.executable, "-c", echo, echo_cpu], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         bufsize=0)
to_echo, from_echo = child.stdin.fileno(), child.stdout.fileno()
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(1)
print("ready", flush=True)
conn, _ = server.accept()
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    os.write(to_echo, data)
    conn.sendall(os.read(from_echo, 1 << 16))
child.stdin.close()
child.wait()
"""

# About the size of a warm task request (module, function, kwargs, bundle).
REQUEST = b'{"module":"benchmod","function":"trivial","kwargs":{},"bundle":"' + b"0" * 64 + b'","wait":true}'


def placement(cpus: Set[int]) -> Optional[tuple]:
    """(client/echo CPU, relay CPU): the two lowest CPUs this process may
    use, or None with fewer than two (then nothing is pinned)."""
    allowed = sorted(cpus)
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


class Floor:
    """The relay and echo processes and a connection to the relay."""

    def __init__(self, python: str = sys.executable) -> None:
        self.dir = tempfile.mkdtemp(prefix="hearth-floor-")
        path = os.path.join(self.dir, "relay.sock")
        self.original = os.sched_getaffinity(0)
        self.pins = placement(self.original)
        near, far = self.pins if self.pins else (-1, -1)
        self.relay = subprocess.Popen([python, "-c", RELAY, path, str(far), str(near), ECHO],
                                      stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.relay.stdout is not None
        line = self.relay.stdout.readline()
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(f"the floor's relay did not start (said {line!r})")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.samples(50)

    def round_trip(self) -> float:
        """One request through relay and echo and back, in seconds."""
        t0 = time.perf_counter()
        self.sock.sendall(REQUEST)
        got = 0
        while got < len(REQUEST):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("the floor's relay closed the connection")
            got += len(chunk)
        return time.perf_counter() - t0

    def samples(self, n: int) -> List[float]:
        """n round trips, the calling thread on the echo's CPU meanwhile."""
        if self.pins:
            os.sched_setaffinity(0, {self.pins[0]})
        try:
            return [self.round_trip() for _ in range(n)]
        finally:
            if self.pins:
                os.sched_setaffinity(0, self.original)

    def describe(self) -> str:
        if not self.pins:
            return "unpinned (fewer than two CPUs)"
        return f"client and echo on CPU {self.pins[0]}, relay on CPU {self.pins[1]}"

    def close(self) -> None:
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()
        try:
            self.relay.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.relay.kill()
            self.relay.wait()
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))
        os.rmdir(self.dir)
