"""The socket's policy, attacked from a client: privileged settings need
hearthd --allow-privileged; a host path is opened for root peers only, and
anyone else sends the image's bytes; the socket itself is 0660 and only its
owner and group connect."""
import json
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import BIN, IMAGE, LAYOUT, TMP, api

NOBODY = 65534
# A non-root client that may use the socket: the daemon's socket is root's
# group (there is no `hearth` group on the test machines).
AS_GROUP_MEMBER = ["setpriv", f"--reuid={NOBODY}", "--regid=0", "--clear-groups"]
AS_STRANGER = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

PRIVILEGED_SPECS = [
    ("seccomp: unconfined\n", "seccomp: unconfined"),
    ("seccomp: /etc/shadow\n", 'seccomp: "/etc/shadow"'),
    ("capabilities: {add: [SYS_ADMIN]}\n", "capabilities.add: [CAP_SYS_ADMIN]"),
    ("capabilities: {add: [ALL]}\n", "capabilities.add: [ALL]"),
    ("network: host\n", "network: host"),
]


def spec(name, extra):
    return f"name: {name}\nreplica_count: 1\nttl_seconds: 30\n{extra}"


@pytest.mark.parametrize("extra,field", PRIVILEGED_SPECS, ids=[f for _, f in PRIVILEGED_SPECS])
def test_privileged_environment_settings_are_refused(hearth, extra, field):
    status, body = api(hearth.socket, "POST", "/v1/environments", spec("priv", extra).encode())
    assert status == 403, body
    msg = body["error"]["message"]
    assert body["error"]["code"] == "forbidden"
    assert msg.startswith('environment "priv": ' + field), msg
    assert "--allow-privileged" in msg
    # Refused before the daemon read the profile path: no parse error of /etc/shadow.
    assert "invalid" not in msg and "JSON" not in msg
    # Nothing was applied.
    status, _ = api(hearth.socket, "GET", "/v1/environments/priv")
    assert status == 404
    # The CLI shows the same message and fails.
    r = hearth.hearth("apply", "-f", "-", input=spec("priv", extra).encode(), check=False)
    assert r.returncode != 0 and b"--allow-privileged" in r.stderr


def test_all_privileged_fields_are_named_at_once(hearth):
    r = hearth.hearth("apply", "-f", "-", check=False,
                      input=spec("priv2", "seccomp: unconfined\nnetwork: host\ncapabilities: {add: [NET_ADMIN]}\n").encode())
    err = r.stderr.decode()
    assert r.returncode != 0
    for field in ("seccomp: unconfined", "capabilities.add: [CAP_NET_ADMIN]", "network: host", "--allow-privileged"):
        assert field in err, err


@pytest.mark.parametrize("opts,field", [
    (("--network", "host"), "network: host"),
    (("--seccomp", "unconfined"), "seccomp: unconfined"),
])
def test_privileged_sandbox_settings_are_refused(hearth, opts, field):
    r = hearth.sandbox("true", opts=opts)
    assert r.returncode == 125
    err = r.stderr.decode()
    assert f"sandbox: {field}" in err and "--allow-privileged" in err, err


def test_custom_seccomp_profile_is_refused(hearth, tmp_path):
    f = tmp_path / "allow-all.json"
    f.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))
    r = hearth.sandbox("true", opts=("--seccomp", str(f)))
    assert r.returncode == 125
    assert "seccomp: a custom profile" in r.stderr.decode() and "--allow-privileged" in r.stderr.decode()


def test_allow_privileged_lets_them_through(privileged):
    """The control: the same requests pass on a daemon that allows them."""
    r = privileged.hearth("apply", "-f", "-", input=spec("priv-ok", "network: host\ncapabilities: {add: [NET_ADMIN]}\n").encode())
    assert b"created" in r.stdout
    privileged.hearth("rm", "priv-ok")
    r = privileged.sandbox("true", opts=("--network", "host"))
    assert r.returncode == 0, r.stderr


def _readable_copy(src, dst):
    shutil.copytree(src, dst)
    for top, dirs, files in os.walk(dst):
        os.chmod(top, 0o755)
        for f in files:
            os.chmod(os.path.join(top, f), 0o644)


@pytest.fixture
def scratch():
    d = tempfile.mkdtemp(prefix="hearth-policy-", dir=TMP)
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def socket_dir_searchable(daemon):
    """The test daemon's directory is a 0700 mkdtemp: let a non-root client
    reach the socket itself, whose own mode is what is under test."""
    os.chmod(os.path.dirname(daemon.socket), 0o711)


def _as(who, hearth, *args):
    env = dict(os.environ, HEARTH_SOCKET=hearth.socket)
    return subprocess.run([*who, str(BIN / "hearth"), *args], capture_output=True, env=env, timeout=300)


def test_path_import_is_for_root_peers_only(hearth, scratch):
    # A root-only archive a non-root user would like root to read for them.
    secret = scratch / "root-only.tar"
    shutil.copy(LAYOUT / "index.json", secret)
    os.chmod(secret, 0o600)
    code = ("import json, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "b = json.dumps({'path': sys.argv[2], 'name': 'stolen/x:1'}).encode()\n"
            "s.sendall(b'POST /v1/images/import HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n'\n"
            "          b'Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(b) + b)\n"
            "out = b''\n"
            "while True:\n"
            "    c = s.recv(65536)\n"
            "    if not c: break\n"
            "    out += c\n"
            "sys.stdout.write(out.decode())\n")
    r = subprocess.run([*AS_GROUP_MEMBER, "/usr/bin/python3", "-c", code, hearth.socket, str(secret)],
                       capture_output=True, timeout=60)
    text = r.stdout.decode()
    assert " 403 " in text.splitlines()[0], text
    assert "only root may have hearthd open a host path" in text and f"uid {NOBODY}" in text, text
    assert b"stolen/x" not in hearth.hearth("image", "ls").stdout


def test_non_root_import_streams_the_bytes(hearth, scratch):
    layout = scratch / "layout"
    _readable_copy(LAYOUT, layout)
    r = _as(AS_GROUP_MEMBER, hearth, "image", "import", str(layout), "--name", "streamed/python:1")
    assert r.returncode == 0, r.stderr
    assert b"imported streamed/python:1" in r.stdout
    r = hearth.py("print(6 * 7)", opts=("--image", "streamed/python:1"))
    assert r.returncode == 0 and r.stdout.strip() == b"42", r.stderr
    # The bytes come from the client: what it cannot read, it cannot import.
    os.chmod(layout / "index.json", 0o600)
    r = _as(AS_GROUP_MEMBER, hearth, "image", "import", str(layout), "--name", "streamed/python:2")
    assert r.returncode != 0 and b"EACCES" in r.stderr, r.stderr
    # A file that is no image: the message names the upload, not a daemon path.
    junk = scratch / "junk.tar"
    junk.write_bytes(b"not an archive" * 100)
    r = _as(AS_GROUP_MEMBER, hearth, "image", "import", str(junk), "--name", "streamed/junk:1")
    assert r.returncode != 0 and b"the uploaded archive" in r.stderr, r.stderr
    hearth.hearth("image", "rm", "streamed/python:1")
    # Nothing of the uploads is left in the store's scratch directory.
    assert [p.name for p in pathlib.Path(hearth.root, "tmp").iterdir()] == []


def test_root_can_stream_too(hearth, scratch):
    r = hearth.hearth("image", "import", "--stream", str(LAYOUT), "--name", "streamed/root:1", timeout=300)
    assert b"imported streamed/root:1" in r.stdout
    hearth.hearth("image", "rm", "streamed/root:1")


def test_socket_is_0660_and_strangers_cannot_connect(hearth):
    st = os.stat(hearth.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0
    # The private directory it was bound in is gone.
    assert not [p for p in os.listdir(os.path.dirname(hearth.socket)) if p.startswith(".hearthd-bind-")]
    r = _as(AS_STRANGER, hearth, "image", "ls")
    assert r.returncode != 0 and b"permission denied connecting" in r.stderr, r.stderr
    r = _as(AS_GROUP_MEMBER, hearth, "image", "ls")
    assert r.returncode == 0 and IMAGE.encode() in r.stdout, r.stderr
