"""Host directories as volumes (`mounts` in a spec, `hearthd --allow-mount`),
against a real daemon: read-only unless asked, nosuid and nodev, refused
outside the allowed prefixes, and no symlink — on the host path's way or
planted inside the mounted directory — leads a replica to a host file
outside what the operator allowed. The targets of the attacks are files
this host lets root read (a file the test writes outside the prefix), so
a refusal here is Hearth's, not the machine's.
"""
import errno
import json
import os
import shutil
import tempfile
import textwrap

import pytest

from conftest import TMP, api, running_daemon
from test_actors import upload_code

PROBE = textwrap.dedent('''
    import errno, os

    def read(path):
        try:
            with open(path) as f:
                return {"ok": f.read()}
        except OSError as e:
            return {"errno": errno.errorcode.get(e.errno, str(e.errno))}

    def write(path, text):
        try:
            with open(path, "w") as f:
                f.write(text)
            return {"ok": True}
        except OSError as e:
            return {"errno": errno.errorcode.get(e.errno, str(e.errno))}

    def mount_options(path):
        for line in open("/proc/self/mountinfo"):
            fields = line.split()
            if fields[4] == path:
                return fields[5]
        return None

    def listdir(path):
        return sorted(os.listdir(path))
''')


@pytest.fixture(scope="module")
def layout():
    """<base>/allowed (the prefix), <base>/outside (a host secret)."""
    base = tempfile.mkdtemp(prefix="hearth-vol-", dir=TMP)
    allowed = os.path.join(base, "allowed")
    outside = os.path.join(base, "outside")
    for d in (allowed, outside, os.path.join(allowed, "data"), os.path.join(allowed, "rw")):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(outside, "secret.txt"), "w") as f:
        f.write("host secret\n")
    with open(os.path.join(allowed, "data", "model.txt"), "w") as f:
        f.write("weights\n")
    # Planted: a link inside the mounted directory to the host secret, and
    # a link on the way out of the prefix.
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(allowed, "data", "to-secret"))
    os.symlink(outside, os.path.join(allowed, "escape"))
    os.symlink("../outside", os.path.join(allowed, "escape-relative"))
    yield {"base": base, "allowed": allowed, "outside": outside}
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def vd(layout):
    yield from running_daemon("hearth-vol", extra_args=["--allow-mount", layout["allowed"]])


@pytest.fixture(scope="module")
def code(vd):
    return upload_code(vd, {"probe.py": PROBE})


def apply(d, text):
    return d.hearth("apply", "-f", "-", input=text.encode(), check=False)


def call(d, env, code, fn, **kwargs):
    status, body = api(d.socket, "POST", f"/v1/environments/{env}/tasks",
                       {"module": "probe", "function": fn, "kwargs": kwargs, "bundle": code, "wait": True})
    assert status == 200 and body["state"] == "succeeded", body
    return body["result"]


def test_read_only_by_default_nosuid_nodev(vd, code, layout):
    data = os.path.join(layout["allowed"], "data")
    r = apply(vd, f"name: vol-ro\nmounts: [{{host_path: {data}, path: /models/base}}]\n")
    assert r.returncode == 0, r.stderr
    assert call(vd, "vol-ro", code, "read", path="/models/base/model.txt") == {"ok": "weights\n"}
    assert call(vd, "vol-ro", code, "write", path="/models/base/new.txt", text="x") == {"errno": "EROFS"}
    opts = call(vd, "vol-ro", code, "mount_options", path="/models/base").split(",")
    assert "ro" in opts and "nosuid" in opts and "nodev" in opts, opts
    assert not os.path.exists(os.path.join(data, "new.txt"))


def test_pod_template_host_path_volumes_are_mounts(vd, code, layout):
    data = os.path.join(layout["allowed"], "data")
    r = apply(vd, textwrap.dedent(f"""
        name: vol-pod
        pod_template:
          pod_spec:
            containers: [{{name: primary, volumeMounts: [{{name: models, mountPath: /models}}]}}]
            volumes: [{{name: models, hostPath: {{path: {data}}}}}]
    """))
    assert r.returncode == 0, r.stderr
    assert call(vd, "vol-pod", code, "read", path="/models/model.txt") == {"ok": "weights\n"}
    assert call(vd, "vol-pod", code, "write", path="/models/x", text="x") == {"errno": "EROFS"}


def test_writable_when_asked(vd, code, layout):
    rw = os.path.join(layout["allowed"], "rw")
    r = apply(vd, f"name: vol-rw\nmounts: [{{host_path: {rw}, path: /scratch, read_only: false}}]\n")
    assert r.returncode == 0, r.stderr
    assert call(vd, "vol-rw", code, "write", path="/scratch/out.txt", text="from the replica") == {"ok": True}
    with open(os.path.join(rw, "out.txt")) as f:
        assert f.read() == "from the replica"


def test_a_symlink_planted_inside_resolves_inside_the_replica(vd, code, layout):
    data = os.path.join(layout["allowed"], "data")
    r = apply(vd, f"name: vol-link\nmounts: [{{host_path: {data}, path: /models/base}}]\n")
    assert r.returncode == 0, r.stderr
    # The link's absolute target is resolved in the replica's root, where
    # the host's directory does not exist.
    got = call(vd, "vol-link", code, "read", path="/models/base/to-secret")
    assert got == {"errno": "ENOENT"}, got
    # Control: root on this host can read the secret through the same link.
    with open(os.path.join(data, "to-secret")) as f:
        assert f.read() == "host secret\n"


@pytest.mark.parametrize("sub, why", [
    ("escape", "leads out of"),
    ("escape-relative", "leads out of"),
    ("data/../../outside", "is not a normalized path"),
    ("nope", "does not exist"),
    ("data/model.txt", "is not a directory"),
])
def test_a_host_path_that_leaves_the_prefix_or_is_not_a_directory_is_refused(vd, layout, sub, why):
    path = layout["allowed"] + "/" + sub
    r = apply(vd, f"name: vol-bad\nmounts: [{{host_path: \"{path}\", path: /x}}]\n")
    assert r.returncode != 0, r.stdout
    assert why in r.stderr.decode(), r.stderr
    # Control for the links: they do lead to a real, readable host directory.
    if sub.startswith("escape"):
        assert os.listdir(path) == ["secret.txt"]


def test_outside_the_allowed_prefixes_is_forbidden(vd, layout):
    r = apply(vd, f"name: vol-out\nmounts: [{{host_path: {layout['outside']}, path: /x}}]\n")
    msg = r.stderr.decode()
    assert r.returncode != 0 and "is not under a directory hearthd lets environments mount" in msg, msg
    assert layout["allowed"] in msg, msg
    status, body = api(vd.socket, "POST", "/v1/environments",
                       {"name": "vol-out", "mounts": [{"host_path": "/etc", "path": "/x"}]})
    assert status == 403 and body["error"]["code"] == "forbidden", (status, body)


@pytest.mark.parametrize("target, why", [
    ("/proc/x", "under /proc"), ("/dev", "is /dev"), ("/.hearth/worker", "under /.hearth"),
    ("/etc/secrets", "is /etc/secrets"), ("relative", "expected an absolute path"), ("/", "expected an absolute path other than /"),
])
def test_reserved_or_bad_targets_are_refused(vd, layout, target, why):
    r = apply(vd, f"name: vol-target\nmounts: [{{host_path: {layout['allowed']}, path: \"{target}\"}}]\n")
    assert r.returncode != 0 and why in r.stderr.decode(), r.stderr


def test_without_allow_mount_nothing_is_mounted(hearth):
    r = hearth.hearth("apply", "-f", "-", input=b"name: vol-none\nmounts: [{host_path: /var/tmp, path: /x}]\n",
                      check=False)
    assert r.returncode != 0 and "hearthd allows none" in r.stderr.decode(), r.stderr
