"""CDI devices (`devices: [vendor.com/class=name]` in a spec, specs read from
`hearthd --cdi-spec-dir`), against a real daemon, with harmless real
devices this host lets root open (/dev/fuse, /dev/net/tun): a replica that
asks for one can open it and not the other, even after making the other's
node itself (root in a replica keeps CAP_MKNOD, so the device cgroup is
what refuses); a replica that asks for none can open neither; a device's
env reaches the replica; `hearth devices` lists what the specs offer and
names a malformed spec's file and field; unknown devices and devices that
need hooks are refused at apply, unless hearthd runs with
--allow-privileged: then a createContainer hook runs on the host, as an OCI
runtime runs it, while the replica waits with its root complete, and a hook
that fails or outlives its timeout fails the replica's start with its
output."""
import json
import os
import shutil
import sys
import tempfile
import textwrap

import pytest

from conftest import TMP, api, running_daemon
from test_actors import upload_code

FUSE = ("fuse", 10, 229, "/dev/fuse")
TUN = ("tun", 10, 200, "/dev/net/tun")

PROBE = textwrap.dedent('''
    import errno, os, stat

    def try_open(path):
        try:
            os.close(os.open(path, os.O_RDWR))
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    def probe(devices):
        """For each (name, major, minor, path): opening the node the replica
        was given, and opening a node made here with the same numbers."""
        out = {}
        for name, major, minor, path in devices:
            made = "/dev/made-" + name  # /dev: the one writable mount that is not nodev
            try:
                if os.path.exists(made):
                    os.unlink(made)
                os.mknod(made, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
                mine = try_open(made)
            except OSError as e:
                mine = "mknod " + errno.errorcode.get(e.errno, str(e.errno))
            out[name] = {"given": try_open(path), "made": mine}
        return out

    def env(key):
        return os.environ.get(key)
''')

SPEC = {
    "cdiVersion": "0.6.0",
    "kind": "hearth.test/dev",
    "containerEdits": {"env": ["HEARTH_CDI_KIND=hearth.test/dev"]},
    "devices": [
        {"name": "fuse", "containerEdits": {"deviceNodes": [{"path": "/dev/fuse"}], "env": ["HEARTH_CDI_FUSE=1"]}},
        {"name": "tun", "containerEdits": {"deviceNodes": [{"path": "/dev/net/tun", "type": "c", "major": 10,
                                                            "minor": 200, "permissions": "rw"}]}},
        {"name": "hooked", "containerEdits": {"hooks": [{"hookName": "createContainer", "path": "/usr/bin/true"}]}},
    ],
}
YAML_SPEC = textwrap.dedent('''
    cdiVersion: 0.5.0
    kind: hearth.test/yaml
    devices:
      - name: null0
        containerEdits:
          env: [FROM_YAML=yes]
''')
BAD_SPEC = {"cdiVersion": "0.6.0", "kind": "hearth.test/bad",
            "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/etc/passwd"}]}}]}


def host_has_devices():
    """The attack targets must be devices this host lets root open."""
    for path in ("/dev/fuse", "/dev/net/tun"):
        try:
            os.close(os.open(path, os.O_RDWR))
        except OSError as e:
            pytest.skip(f"this host cannot open {path} ({e.strerror}): the CDI tests use it as a harmless real device")


@pytest.fixture(scope="module")
def cdi_dir():
    host_has_devices()
    d = tempfile.mkdtemp(prefix="hearth-cdi-", dir=TMP)
    with open(os.path.join(d, "test.json"), "w") as f:
        json.dump(SPEC, f)
    with open(os.path.join(d, "test.yaml"), "w") as f:
        f.write(YAML_SPEC)
    with open(os.path.join(d, "bad.json"), "w") as f:
        json.dump(BAD_SPEC, f)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cd(cdi_dir):
    yield from running_daemon("hearth-cdi", extra_args=["--cdi-spec-dir", cdi_dir])


@pytest.fixture(scope="module")
def code(cd):
    return upload_code(cd, {"probe.py": PROBE})


def apply(d, text):
    return d.hearth("apply", "-f", "-", input=text.encode(), check=False)


def call(d, env, code, fn, **kwargs):
    status, body = api(d.socket, "POST", f"/v1/environments/{env}/tasks",
                       {"module": "probe", "function": fn, "kwargs": kwargs, "bundle": code, "wait": True})
    assert status == 200 and body["state"] == "succeeded", body
    return body["result"]


def test_hearth_devices_lists_the_specs_and_names_a_bad_one(cd, cdi_dir):
    r = cd.hearth("devices")
    out = r.stdout.decode()
    for name in ("hearth.test/dev=fuse", "hearth.test/dev=tun", "hearth.test/yaml=null0"):
        assert name in out, out
    assert "hearth.test/bad=x" not in out
    assert f"unreadable CDI spec: {cdi_dir}/bad.json: devices[0].containerEdits.deviceNodes[0].path: " \
           "\"/etc/passwd\" is not a path under /dev" in out, out


def test_a_replica_gets_the_device_it_asks_for_and_no_other(cd, code):
    assert apply(cd, "name: cdi-fuse\ndevices: [hearth.test/dev=fuse]\n").returncode == 0
    got = call(cd, "cdi-fuse", code, "probe", devices=[FUSE, TUN])
    assert got["fuse"] == {"given": "ok", "made": "ok"}, got
    assert got["tun"]["given"] == "ENOENT" and got["tun"]["made"] == "EPERM", got
    assert call(cd, "cdi-fuse", code, "env", key="HEARTH_CDI_FUSE") == "1"
    assert call(cd, "cdi-fuse", code, "env", key="HEARTH_CDI_KIND") == "hearth.test/dev", "the spec's own edits"

    assert apply(cd, "name: cdi-tun\ndevices: [hearth.test/dev=tun]\n").returncode == 0
    got = call(cd, "cdi-tun", code, "probe", devices=[FUSE, TUN])
    assert got["tun"]["given"] == "ok" and got["fuse"] == {"given": "ENOENT", "made": "EPERM"}, got


def test_a_replica_that_asks_for_none_can_open_neither(cd, code):
    assert apply(cd, "name: cdi-none\n").returncode == 0
    got = call(cd, "cdi-none", code, "probe", devices=[FUSE, TUN])
    for name in ("fuse", "tun"):
        assert got[name] == {"given": "ENOENT", "made": "EPERM"}, got
    # Control: this host lets root open both.
    for _, _, _, path in (FUSE, TUN):
        os.close(os.open(path, os.O_RDWR))


def test_yaml_specs_and_env_only_devices(cd, code):
    assert apply(cd, "name: cdi-yaml\ndevices: [hearth.test/yaml=null0]\n").returncode == 0
    assert call(cd, "cdi-yaml", code, "env", key="FROM_YAML") == "yes"


@pytest.mark.parametrize("device, why", [
    ("hearth.test/dev=nope", "is not a device this host offers (offered: hearth.test/dev=fuse"),
    ("hearth.test/bad=x", "CDI specs that could not be read:"),
    ("hearth.test/dev=hooked", "needs a createContainer hook (/usr/bin/true), a program run as root on the host, "
                               "which hearthd runs only when started with --allow-privileged"),
    ("not-a-device", "is not a CDI device name; expected vendor.com/class=name"),
])
def test_unknown_or_unusable_devices_are_refused(cd, device, why):
    r = apply(cd, f"name: cdi-bad\ndevices: [\"{device}\"]\n")
    assert r.returncode != 0 and why in r.stderr.decode(), r.stderr


# A hook as OCI runtimes run them: the state on stdin, the root found
# through the bundle's config.json. It writes what it was given into the
# replica's root, where the task reads it.
HOOK = textwrap.dedent('''\
    #!{python}
    import json, os, sys
    state = json.load(sys.stdin)
    config = json.load(open(os.path.join(state["bundle"], "config.json")))
    root = config["root"]["path"]
    with open(os.path.join(root, "tmp", "hooked"), "w") as f:
        json.dump({{"id": state["id"], "status": state["status"], "pid": state["pid"], "root": root,
                   "args": sys.argv[1:], "env": os.environ.get("HOOK_ENV"), "path": os.environ.get("PATH")}}, f)
''')


@pytest.fixture(scope="module")
def hooks_dir():
    host_has_devices()
    d = tempfile.mkdtemp(prefix="hearth-cdi-hooks-", dir=TMP)
    hook = os.path.join(d, "hook.py")
    with open(hook, "w") as f:
        f.write(HOOK.format(python=sys.executable))
    failing = os.path.join(d, "failing.sh")
    with open(failing, "w") as f:
        f.write("#!/bin/sh\necho boom >&2\nexit 3\n")
    slow = os.path.join(d, "slow.sh")
    with open(slow, "w") as f:
        f.write("#!/bin/sh\nexec sleep 60\n")
    for p in (hook, failing, slow):
        os.chmod(p, 0o755)

    def dev(name, hook):
        return {"name": name, "containerEdits": {"deviceNodes": [{"path": "/dev/fuse"}], "hooks": [hook]}}
    spec = {"cdiVersion": "0.6.0", "kind": "hearth.test/hooks", "devices": [
        dev("runs", {"hookName": "createContainer", "path": hook, "args": ["hook.py", "--flag", "x"],
                     "env": ["HOOK_ENV=from-the-spec"]}),
        dev("fails", {"hookName": "createContainer", "path": failing}),
        dev("slow", {"hookName": "createContainer", "path": slow, "timeout": 1}),
        dev("prestart", {"hookName": "prestart", "path": hook}),
    ]}
    with open(os.path.join(d, "hooks.json"), "w") as f:
        json.dump(spec, f)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def privileged(hooks_dir):
    yield from running_daemon("hearth-cdi-priv", extra_args=["--cdi-spec-dir", hooks_dir, "--allow-privileged"])


HOOKED_PROBE = textwrap.dedent('''
    import json, os

    def hooked():
        return dict(json.load(open("/tmp/hooked")), replica=os.environ.get("HEARTH_REPLICA"))
''')


def test_a_create_container_hook_runs_under_allow_privileged(privileged):
    code = upload_code(privileged, {"probe.py": HOOKED_PROBE})
    assert apply(privileged, "name: cdi-hook\ndevices: [hearth.test/hooks=runs]\n").returncode == 0
    got = call(privileged, "cdi-hook", code, "hooked")
    assert got["id"] == got["replica"] and got["status"] == "creating", got
    assert got["root"] == f"/proc/{got['pid']}/root", got
    assert got["args"] == ["--flag", "x"] and got["env"] == "from-the-spec", got
    assert got["path"] is None, "the hook's environment is the spec's alone"


@pytest.mark.parametrize("device, why", [
    ("fails", "createContainer hook {dir}/failing.sh exited with status 3; its output: boom"),
    ("slow", "createContainer hook {dir}/slow.sh: still running after its timeout of 1 s; killed"),
])
def test_a_failing_or_hanging_hook_fails_the_start_with_its_reason(privileged, hooks_dir, device, why):
    code = upload_code(privileged, {"probe.py": HOOKED_PROBE})
    env = f"cdi-hook-{device}"
    assert apply(privileged, f"name: {env}\ndevices: [hearth.test/hooks={device}]\n").returncode == 0
    status, body = api(privileged.socket, "POST", f"/v1/environments/{env}/tasks",
                       {"module": "probe", "function": "hooked", "kwargs": {}, "bundle": code, "wait": True})
    text = json.dumps(body)
    assert body.get("state") != "succeeded" and why.format(dir=hooks_dir) in text, (status, text)
    privileged.hearth("rm", env)


def test_hooks_of_other_moments_are_refused_even_when_privileged(privileged):
    r = apply(privileged, "name: cdi-prestart\ndevices: [hearth.test/hooks=prestart]\n")
    assert r.returncode != 0 and "Hearth runs createContainer hooks only" in r.stderr.decode(), r.stderr
