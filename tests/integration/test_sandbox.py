"""Isolation of one-shot sandboxes, proven by running hostile probes inside
`hearth sandbox` with the default image against the real daemon."""
import json
import os
import pathlib
import subprocess
import textwrap
import time
import uuid

import pytest

from conftest import BIN, TMP, _cgroup_dirs, cgroup_layout


DOCKER_DEFAULT_CAPS = 0x00000000A80425FB


def out(r):
    return r.stdout.decode(errors="replace")


def err(r):
    return r.stderr.decode(errors="replace")


def probe(hearth, code, opts=()):
    """Runs Python code in a sandbox; it must print one JSON object."""
    r = hearth.py(textwrap.dedent(code), opts=opts)
    assert r.returncode == 0, f"probe failed ({r.returncode}): {err(r)}"
    return json.loads(out(r).strip().splitlines()[-1])


def test_true_and_exit_status(hearth):
    assert hearth.sandbox("/bin/true").returncode == 0
    assert hearth.sandbox("/bin/false").returncode == 1
    r = hearth.sandbox("sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert out(r) == "out\n"
    assert err(r) == "err\n"


def test_missing_command_is_reported(hearth):
    r = hearth.sandbox("/no/such/binary")
    assert r.returncode == 127
    assert "/no/such/binary" in err(r)


def test_unknown_image_is_refused(hearth):
    r = hearth.sandbox("/bin/true", opts=("--image", "no/such:image"))
    assert r.returncode == 125
    assert "no/such:image" in err(r) and "not found" in err(r)


def test_bad_quantities_are_refused(hearth):
    r = hearth.sandbox("/bin/true", opts=("--memory", "lots"))
    assert r.returncode == 125 and "memory" in err(r) and "lots" in err(r)
    r = hearth.sandbox("/bin/true", opts=("--cpus=-1",))
    assert r.returncode == 125 and "cpus" in err(r)
    r = hearth.sandbox("/bin/true", opts=("--network", "bridge"))
    assert r.returncode == 125 and "network" in err(r) and "bridge" in err(r)


def test_pid1_is_hearth_init_and_host_is_invisible(hearth):
    p = probe(hearth, """
        import os, json
        pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        print(json.dumps({
            "exe1": os.readlink('/proc/1/exe'),
            "cmd1": open('/proc/1/cmdline','rb').read().split(b'\\0')[0].decode(),
            "me": os.getpid(), "ppid": os.getppid(), "pids": pids}))
    """)
    assert p["exe1"] == "/.hearth/hearth-init"
    assert p["cmd1"] == "hearth-init"
    assert p["ppid"] == 1
    assert set(p["pids"]) == {1, p["me"]}, p["pids"]


def test_zombies_are_reaped(hearth):
    # Orphans re-parented to PID 1 must not linger as zombies.
    p = probe(hearth, """
        import os, time, json
        for _ in range(5):
            if os.fork() == 0:
                if os.fork() == 0:
                    os._exit(0)      # grandchild: orphaned, then exits
                os._exit(0)
        time.sleep(0.5)
        for _ in range(5):
            try: os.waitpid(-1, 0)
            except ChildProcessError: break
        time.sleep(0.5)
        states = {}
        for p in os.listdir('/proc'):
            if p.isdigit():
                states[p] = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0]
        print(json.dumps({"zombies": [p for p, s in states.items() if s == 'Z']}))
    """)
    assert p["zombies"] == []


def test_hostname_and_network_none(hearth):
    p = probe(hearth, """
        import os, json, socket
        ifaces = sorted(os.listdir('/sys/class/net'))
        flags = int(open('/sys/class/net/lo/flags').read(), 16)
        print(json.dumps({"hostname": socket.gethostname(), "etc": open('/etc/hostname').read().strip(),
                          "ifaces": ifaces, "lo_up": bool(flags & 1)}))
    """)
    assert p["hostname"].startswith("sbx-")
    assert p["etc"] == p["hostname"]
    assert p["ifaces"] == ["lo"]
    assert p["lo_up"]


def test_network_host_sees_host_interfaces(privileged):
    p = probe(privileged, """
        import os, json
        print(json.dumps({"ifaces": sorted(os.listdir('/sys/class/net'))}))
    """, opts=("--network", "host"))
    assert sorted(os.listdir("/sys/class/net")) == p["ifaces"]


def test_capabilities_no_new_privs_seccomp(hearth):
    p = probe(hearth, """
        import json
        st = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)
        print(json.dumps({k: st[k].strip() for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapInh', 'CapAmb', 'NoNewPrivs', 'Seccomp')}))
    """)
    assert int(p["CapEff"], 16) == DOCKER_DEFAULT_CAPS
    assert int(p["CapPrm"], 16) == DOCKER_DEFAULT_CAPS
    assert int(p["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    assert int(p["CapInh"], 16) == 0
    assert int(p["CapAmb"], 16) == 0
    assert p["NoNewPrivs"] == "1"
    assert p["Seccomp"] == "2"


SYSCALL_PROBE = """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keep = []
def s(b):
    buf = ctypes.create_string_buffer(b); keep.append(buf); return ctypes.addressof(buf)
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    e = ctypes.get_errno()
    if r == 0 and nr == 56:
        pass
    return [r, e]
pid = os.getpid()
res = {
  "mount": sc(165, s(b"none"), s(b"/mnt"), s(b"tmpfs"), 0, 0),
  "umount2": sc(166, s(b"/proc"), 2),
  "unshare": sc(272, 0x20000),
  "setns": sc(308, os.open('/proc/self/ns/net', os.O_RDONLY), 0),
  "pivot_root": sc(155, s(b"/"), s(b"/")),
  "keyctl": sc(250, 0, 0, 0, 0, 0),
  "bpf": sc(321, 0, 0, 0),
  "kexec_load": sc(246, 0, 0, 0, 0),
  "init_module": sc(175, 0, 0, s(b"")),
}
# clone with namespace flags: if it ever succeeded the child leaves at once.
r = sc(56, 0x20000 | 0x11, 0, 0, 0, 0)
if r[0] == 0:
    os._exit(0)
res["clone_newns"] = r
r = sc(56, 0x40000000 | 0x11, 0, 0, 0, 0)
if r[0] == 0:
    os._exit(0)
res["clone_newnet"] = r
print(json.dumps(res))
"""


def test_dangerous_syscalls_get_eperm(hearth):
    p = probe(hearth, SYSCALL_PROBE)
    for name, (rc, e) in p.items():
        assert rc == -1 and e == 1, f"{name}: rc={rc} errno={e}, expected EPERM"


def test_unconfined_seccomp_still_lacks_capabilities(privileged):
    # Without seccomp, capabilities still refuse mount (no CAP_SYS_ADMIN).
    p = probe(privileged, SYSCALL_PROBE, opts=("--seccomp", "unconfined"))
    rc, e = p["mount"]
    assert rc == -1 and e == 1


def test_seccomp_profile_file(privileged, tmp_path):
    hearth = privileged
    # An OCI profile that allows everything but mkdir (ENOTDIR as a marker).
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 20}]}
    f = tmp_path / "profile.json"
    f.write_text(json.dumps(profile))
    r = hearth.py("import os\ntry:\n os.mkdir('/tmp/x')\nexcept OSError as e:\n print(e.errno)",
                  opts=("--seccomp", str(f)))
    assert r.returncode == 0, err(r)
    assert out(r).strip() == "20"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"defaultAction": "SCMP_ACT_NOPE"}))
    r = hearth.sandbox("/bin/true", opts=("--seccomp", str(bad)))
    assert r.returncode == 125 and "SCMP_ACT_NOPE" in err(r)


def test_ordinary_python_works(hearth):
    p = probe(hearth, """
        import json, os, socket, subprocess, threading, tempfile
        res = {}
        box = []
        ts = [threading.Thread(target=lambda i=i: box.append(i)) for i in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        res["threads"] = sorted(box) == list(range(8))
        res["subprocess"] = subprocess.run(["sh", "-c", "echo hi"], capture_output=True).stdout == b"hi\\n"
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
        c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
        c.sendall(b"ping"); res["socket"] = a.recv(4) == b"ping"
        with tempfile.NamedTemporaryFile("w+", dir="/tmp") as f:
            f.write("data"); f.flush(); f.seek(0); res["files"] = f.read() == "data"
        import multiprocessing
        with multiprocessing.Pool(2) as pool:
            res["multiprocessing"] = pool.map(abs, [-1, -2]) == [1, 2]
        print(json.dumps(res))
    """)
    assert all(p.values()), p


def test_masked_and_readonly_paths(hearth):
    p = probe(hearth, """
        import json, os, errno
        res = {}
        for f in ('/proc/kcore', '/proc/keys', '/proc/timer_list'):
            try:
                res[f] = len(open(f, 'rb').read(64))
            except OSError as e:
                res[f] = -e.errno
        def write(path, data):
            try:
                with open(path, 'w') as fh: fh.write(data)
                return 0
            except OSError as e:
                return e.errno
        res["proc_sys"] = write('/proc/sys/kernel/hostname', 'pwned')
        res["sys"] = write('/sys/kernel/mm/transparent_hugepage/enabled', 'never')
        try:
            os.mkdir('/sys/hearth-probe'); res["sys_mkdir"] = 0
        except OSError as e:
            res["sys_mkdir"] = e.errno
        print(json.dumps(res))
    """)
    for f in ("/proc/kcore", "/proc/keys", "/proc/timer_list"):
        # Masked reads as empty; some kernels (this one: kcore) have no such file at all.
        assert p[f] in (0, -2), f"{f} is readable: {p[f]}"
    assert p["/proc/keys"] == 0 and p["/proc/timer_list"] == 0, p
    assert p["proc_sys"] in (30, 13), p  # EROFS (or EACCES)
    assert p["sys"] in (30, 13), p
    assert p["sys_mkdir"] in (30, 13), p


def test_host_files_are_unreachable(hearth):
    marker = pathlib.Path(TMP) / f"hearth-host-marker-{uuid.uuid4().hex}"
    marker.write_text("host secret")
    try:
        p = probe(hearth, f"""
            import json, os
            res = {{"marker": os.path.exists({str(marker)!r}),
                   "root_is_image": os.path.exists('/usr/bin/python3') and not os.path.exists('/work'),
                   "proc1root": os.listdir('/proc/1/root') == os.listdir('/')}}
            print(json.dumps(res))
        """)
        assert p == {"marker": False, "root_is_image": True, "proc1root": True}
    finally:
        marker.unlink()


def test_memory_limit_oom_is_reported(hearth):
    r = hearth.py("b = bytearray(256 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')",
                  opts=("--memory", "64Mi"))
    assert r.returncode == 137, (r.returncode, err(r))
    assert "survived" not in out(r)
    assert "killed: out of memory, limit 64Mi" in err(r)


def test_memory_within_limit_is_fine(hearth):
    r = hearth.py("b = bytearray(16 * 1024 * 1024)\nprint('ok')", opts=("--memory", "64Mi"))
    assert r.returncode == 0 and out(r) == "ok\n", err(r)


def test_fork_bomb_is_contained(hearth):
    r = hearth.py(textwrap.dedent("""
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                n += 1
        except OSError as e:
            print(n, e.errno)
    """), opts=("--pids", "64"), timeout=60)
    assert r.returncode == 0, err(r)
    n, e = map(int, out(r).split())
    assert n < 64 and e == 11  # EAGAIN
    # The host (and the daemon) are fine.
    assert hearth.sandbox("/bin/true").returncode == 0


def test_cpu_limit_throttles(hearth):
    p = probe(hearth, """
        import json, time, resource
        t0 = time.monotonic(); c0 = time.process_time()
        while time.monotonic() - t0 < 2.0:
            pass
        wall = time.monotonic() - t0; cpu = time.process_time() - c0
        print(json.dumps({"wall": wall, "cpu": cpu}))
    """, opts=("--cpus", "0.5"))
    assert p["cpu"] / p["wall"] <= 0.6, p


def test_writes_vanish_and_layers_are_untouched(hearth):
    layers = pathlib.Path(hearth.root, "layers")
    def snapshot():
        return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size, p.lstat().st_mode) for p in layers.rglob("*")}
    before = snapshot()
    before_etc = {p for p in layers.glob("*/etc/*")}
    r = hearth.sandbox("sh", "-c", "echo x > /etc/hearth-marker && echo y > /tmp/marker && rm -f /etc/os-release && cat /etc/hearth-marker")
    assert r.returncode == 0 and out(r) == "x\n", err(r)
    r = hearth.sandbox("sh", "-c", "ls /etc/hearth-marker /tmp/marker 2>&1; test -e /etc/os-release && echo present")
    assert "No such file" in out(r) and "present" in out(r)
    assert {p for p in layers.glob("*/etc/*")} == before_etc
    assert not list(layers.glob("*/etc/hearth-marker"))
    assert snapshot() == before


def test_teardown_of_a_hostile_writable_layer_follows_no_link_and_leaves_nothing(hearth):
    # The replica leaves a tree deeper than PATH_MAX in its writable layer,
    # and symlinks whose targets are host paths (inside the replica they are
    # only strings). Teardown must remove all of it (the conftest checks no
    # replica directory is left) without following a link: the host
    # directory the links name keeps its file.
    host = pathlib.Path(TMP, f"hearth-precious-{uuid.uuid4().hex[:8]}")
    (host / "keep").mkdir(parents=True)
    (host / "keep" / "file").write_text("precious")
    try:
        result = probe(hearth, f"""
            import json, os
            os.makedirs("/deep")
            os.chdir("/deep")
            depth = 0
            for _ in range(2500):  # "/d" x 2500: 5000 bytes of path, past PATH_MAX
                os.mkdir("d")
                os.chdir("d")
                depth += 1
            open("bottom", "w").write("x")
            os.symlink({str(host)!r}, "/escape")
            os.symlink({str(host / "keep" / "file")!r}, "/deep/file-link")
            os.makedirs("/nest")
            os.symlink({str(host)!r}, "/nest/into")
            print(json.dumps({{"deep": len("/deep") + 2 * depth}}))
        """)
        assert result["deep"] > 4096, result
        deadline = time.time() + 20
        while hearth.leftovers() and time.time() < deadline:
            time.sleep(0.1)
        assert hearth.leftovers() == [], "the whole writable layer is removed, deep tree included"
        assert (host / "keep" / "file").read_text() == "precious"
        assert sorted(p.name for p in host.iterdir()) == ["keep"]
    finally:
        subprocess.run(["rm", "-rf", str(host)], check=False)


def test_env_and_workdir(hearth):
    r = hearth.sandbox("sh", "-c", "echo $GREETING $HOSTNAME; pwd", opts=("--env", "GREETING=hi", "--workdir", "/tmp"))
    assert r.returncode == 0, err(r)
    first, second = out(r).splitlines()
    assert first.startswith("hi sbx-") and second == "/tmp"


def test_many_sandboxes_leave_nothing(hearth):
    for _ in range(10):
        assert hearth.sandbox("/bin/true").returncode == 0


# --- cgroups, on whichever layout this host has (v1 here, v2 in the VM suite:
# scripts/vm-test). Each checks the files of DESIGN.md's mapping table.

def _read(path):
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return None


def _live_replica_cgroups(hearth, deadline):
    """The replica's cgroup directories (one per hierarchy on v1, the leaf on
    v2) once a process runs in them; waits until `deadline`."""
    while time.time() < deadline:
        found = []
        for top in _cgroup_dirs(hearth.subtree):
            for d, dirs, _ in os.walk(top):
                if d != top and not dirs and _read(os.path.join(d, "cgroup.procs")):
                    found.append(d)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("no replica cgroup with a process appeared")


def _by_file(dirs, name):
    """The one directory among `dirs` that has control file `name`."""
    hits = [d for d in dirs if os.path.exists(os.path.join(d, name))]
    assert len(hits) == 1, (name, dirs)
    return os.path.join(hits[0], name)


def test_cgroup_limits_reach_the_kernel(hearth):
    env = dict(os.environ, HEARTH_SOCKET=hearth.socket)
    p = subprocess.Popen([str(BIN / "hearth"), "sandbox", "--memory", "64Mi", "--cpus", "0.5", "--pids", "64", "--",
                          "sh", "-c", "cat /proc/self/cgroup; sleep 8"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        dirs = _live_replica_cgroups(hearth, time.time() + 60)
        values = {f: _read(_by_file(dirs, f)) for f in (
            ["cpu.max", "memory.max", "memory.oom.group", "pids.max"] if cgroup_layout() == "v2" else
            ["cpu.cfs_quota_us", "cpu.cfs_period_us", "memory.limit_in_bytes", "pids.max"])}
        swap = [_read(os.path.join(d, f)) for d in dirs for f in ("memory.swap.max", "memory.memsw.limit_in_bytes")
                if os.path.exists(os.path.join(d, f))]
    finally:
        stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    if cgroup_layout() == "v2":
        assert values == {"cpu.max": "50000 100000", "memory.max": str(64 << 20), "memory.oom.group": "1",
                          "pids.max": "64"}
        assert swap in ([], ["0"])
        # CLONE_INTO_CGROUP roots the replica's cgroup namespace at its leaf.
        assert stdout.decode() == "0::/\n"
    else:
        assert values == {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000",
                          "memory.limit_in_bytes": str(64 << 20), "pids.max": "64"}
        assert swap in ([], [str(64 << 20)])
        # Unshared after the move: every hierarchy's root is the replica's.
        assert all(line.endswith(":/") for line in stdout.decode().splitlines()), stdout


def test_cgroup_requests_reach_the_kernel(hearth, tmp_path):
    """An environment's requests: weight/shares and memory protection."""
    name = "cg-requests-" + uuid.uuid4().hex[:6]
    spec = (f"name: {name}\nreplica_count: 1\nttl_seconds: 300\n"
            "requests: {cpu: 500m, mem: 32Mi}\nlimits: {cpu: '1', mem: 64Mi}\n")
    hearth.hearth("apply", "-f", "-", input=spec.encode())
    try:
        (tmp_path / "tasks.py").write_text("def ping():\n    return 'pong'\n")
        r = hearth.hearth("run", name, "tasks:ping", "--code", str(tmp_path), timeout=300)
        assert "pong" in r.stdout.decode(), r.stdout
        dirs = _live_replica_cgroups(hearth, time.time() + 60)
        if cgroup_layout() == "v2":
            assert _read(_by_file(dirs, "cpu.weight")) == "59"            # shares 512, crun's mapping
            assert _read(_by_file(dirs, "cpu.max")) == "100000 100000"
            assert _read(_by_file(dirs, "memory.low")) == str(32 << 20)
            assert _read(_by_file(dirs, "memory.max")) == str(64 << 20)
        else:
            assert _read(_by_file(dirs, "cpu.shares")) == "512"
            assert _read(_by_file(dirs, "cpu.cfs_quota_us")) == "100000"
            assert _read(_by_file(dirs, "memory.soft_limit_in_bytes")) == str(32 << 20)
            assert _read(_by_file(dirs, "memory.limit_in_bytes")) == str(64 << 20)
    finally:
        hearth.hearth("rm", name, check=False)


def test_daemon_sits_in_its_own_leaf_on_cgroup_v2(hearth):
    if cgroup_layout() != "v2":
        pytest.skip("cgroup v2 only: only v2 moves the daemon into a <subtree>-daemon leaf; on v1 it stays where it is")
    own = pathlib.Path(f"/proc/{hearth.proc.pid}/cgroup").read_text().strip()
    assert own.startswith("0::") and own.endswith(f"/{hearth.subtree}-daemon"), own
    base = "/sys/fs/cgroup" + own[3:].rsplit("/", 1)[0]
    assert _read(os.path.join(base, "cgroup.procs")) == "", "the daemon's parent cgroup must hold no process"
    assert {"cpu", "memory", "pids"} <= set(_read(os.path.join(base, "cgroup.subtree_control")).split())
    assert {"cpu", "memory", "pids"} <= set(_read(os.path.join(base, hearth.subtree, "cgroup.subtree_control")).split())



def test_client_gone_before_the_output_leaves_nothing(hearth):
    """A client that sends the request and hangs up at once: once the
    command exits, the replica is removed, whether or not the server got to
    stream the body (it may never run it, or stall in its first write)."""
    import socket as _socket
    body = json.dumps({"argv": ["sleep", "3"]}).encode()
    for _ in range(3):
        s = _socket.socket(_socket.AF_UNIX)
        s.connect(hearth.socket)
        s.sendall(b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        s.close()
    deadline = time.time() + 60
    problems = ["not checked yet"]
    while problems and time.time() < deadline:
        time.sleep(0.5)
        problems = hearth.leftovers()
    assert not problems, problems
