"""hearthd's own lifecycle: the state-root lock, crash recovery, graceful
shutdown, the API's error shapes and the image store through the CLI."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, IMAGE, LAYOUT, TMP, api, running_daemon


@pytest.fixture(scope="module")
def own():
    """A daemon of this module's own, restarted by the tests."""
    yield from running_daemon("hearth-lc")


def test_second_daemon_on_same_root_refuses(own):
    r = subprocess.run([str(BIN / "hearthd"), "--root", own.root, "--socket", own.socket + "2",
                        "--init", str(BIN / "hearth-init"), "--cgroup-name", own.subtree],
                       capture_output=True, timeout=30)
    assert r.returncode != 0
    assert b"another hearthd" in r.stderr and own.root.encode() in r.stderr, r.stderr


def test_daemon_refuses_a_live_socket(own):
    other = tempfile.mkdtemp(prefix="hearth-lc2-", dir=TMP)
    try:
        r = subprocess.run([str(BIN / "hearthd"), "--root", other, "--socket", own.socket,
                            "--init", str(BIN / "hearth-init")], capture_output=True, timeout=30)
        assert r.returncode != 0 and b"in use by another running hearthd" in r.stderr, r.stderr
        assert own.hearth("version").returncode == 0
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_cli_names_the_socket_when_daemon_is_down(tmp_path):
    env = dict(os.environ, HEARTH_SOCKET=str(tmp_path / "nope.sock"))
    r = subprocess.run([str(BIN / "hearth"), "version"], capture_output=True, env=env)
    assert r.returncode != 0
    assert b"hearthd is not running" in r.stderr and b"nope.sock" in r.stderr


def test_api_errors_are_json_with_stable_codes(own):
    status, body = api(own.socket, "POST", "/v1/sandboxes", b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_argument"
    status, body = api(own.socket, "POST", "/v1/sandboxes", {"image": IMAGE})
    assert status == 400 and "argv" in body["error"]["message"]
    status, body = api(own.socket, "POST", "/v1/sandboxes", {"argv": ["/bin/true"], "memory": "12Qi"})
    assert status == 400 and "memory" in body["error"]["message"] and "12Qi" in body["error"]["message"]
    status, body = api(own.socket, "POST", "/v1/sandboxes", {"argv": ["/bin/true"], "image": "nope:1"})
    assert status == 404 and body["error"]["code"] == "image_not_found"
    status, body = api(own.socket, "DELETE", "/v1/images/nope:1")
    assert status == 404 and body["error"]["code"] == "image_not_found"
    status, body = api(own.socket, "GET", "/v1/version")
    assert status == 200 and body["api"] == "v1"
    # Hummingbird's own refusals get the same JSON body and keep their status.
    status, body = api(own.socket, "GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found", body
    assert body["error"]["message"].startswith("no route GET /v1/nothing-here"), body
    status, body = api(own.socket, "POST", "/v1/registries/login", b"x" * (65 << 10))
    assert status == 413 and body["error"]["code"] == "invalid_argument", body
    assert "request body is larger than this route takes" in body["error"]["message"], body


def test_image_commands(own, tmp_path):
    r = own.hearth("image", "import", str(tmp_path / "missing"), "--name", "x:1", check=False)
    assert r.returncode != 0 and b"missing" in r.stderr
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar archive" * 100)
    r = own.hearth("image", "import", str(garbage), "--name", "x:1", check=False)
    assert r.returncode != 0 and r.stderr.strip(), r.stderr
    # A second name for the same image shares its layers; removing it keeps them.
    own.hearth("image", "import", str(LAYOUT), "--name", "copy:1")
    ls = json.loads(own.hearth("image", "ls", "--json").stdout)
    names = {i["name"]: i for i in ls}
    assert names["copy:1"]["id"] == names[IMAGE]["id"]
    own.hearth("image", "rm", "copy:1")
    assert own.sandbox("/bin/true").returncode == 0
    r = own.hearth("image", "rm", "copy:1", check=False)
    assert r.returncode != 0 and b"copy:1" in r.stderr


def test_image_in_use_is_not_removed(own):
    own.hearth("image", "import", str(LAYOUT), "--name", "busy:1")
    env = dict(os.environ, HEARTH_SOCKET=own.socket)
    p = subprocess.Popen([str(BIN / "hearth"), "sandbox", "--image", "busy:1", "--", "sleep", "3"], env=env)
    try:
        time.sleep(1.0)
        r = own.hearth("image", "rm", "busy:1", check=False)
        assert r.returncode != 0 and b"in use" in r.stderr, r.stderr
    finally:
        assert p.wait(30) == 0
    own.hearth("image", "rm", "busy:1")


def test_image_of_an_environment_is_not_removed(own):
    """An environment's replicas run on its image (mounted overlays), and
    its next replica needs it: deleting it is refused, naming the user."""
    own.hearth("image", "import", str(LAYOUT), "--name", "envimg:1")
    status, body = api(own.socket, "POST", "/v1/environments",
                       {"name": "on-envimg", "container_image": "envimg:1", "replica_count": 1})
    assert status in (200, 201), body
    status, snap = api(own.socket, "POST", "/v1/environments/on-envimg/tasks",
                       {"module": "os", "function": "getpid", "wait": True})
    assert status == 200 and snap["state"] == "succeeded", snap
    try:
        status, body = api(own.socket, "DELETE", "/v1/images/envimg:1")
        assert status == 409 and body["error"]["code"] == "conflict", body
        msg = body["error"]["message"]
        assert msg.startswith('image "envimg:1" is in use by environment on-envimg (replica ') and \
            snap["replica"] in msg and msg.endswith("remove that environment first (hearth rm NAME)"), msg
        assert "envimg:1" in own.hearth("image", "ls").stdout.decode()
    finally:
        own.hearth("rm", "on-envimg")
    status, body = api(own.socket, "DELETE", "/v1/images/envimg:1")
    assert status == 204, body


def test_crash_recovery_cleans_up(own):
    """SIGKILL the daemon with a replica running; the next start removes it."""
    env = dict(os.environ, HEARTH_SOCKET=own.socket)
    p = subprocess.Popen([str(BIN / "hearth"), "sandbox", "--", "sleep", "300"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline and not own.leftovers():
        time.sleep(0.1)
    assert own.leftovers(), "the sandbox never started"
    own.stop(signal.SIGKILL)
    p.wait(30)
    assert own.leftovers(), "a replica should outlive a SIGKILLed daemon until the next start"
    own.start()
    assert own.leftovers() == []
    assert own.sandbox("/bin/true").returncode == 0


def test_sigterm_lets_running_sandboxes_finish(own):
    env = dict(os.environ, HEARTH_SOCKET=own.socket)
    p = subprocess.Popen([str(BIN / "hearth"), "sandbox", "--", "sh", "-c", "sleep 1; echo finished"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    assert own.stop(signal.SIGTERM) == 0
    out, err = p.communicate(30)
    assert p.returncode == 0 and out == b"finished\n", (p.returncode, out, err)
    assert own.leftovers() == []
    assert not os.path.exists(own.socket)
    own.start()


def test_sigterm_kills_sandboxes_past_the_deadline(own):
    env = dict(os.environ, HEARTH_SOCKET=own.socket)
    p = subprocess.Popen([str(BIN / "hearth"), "sandbox", "--", "sleep", "300"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    t = time.time()
    assert own.stop(signal.SIGTERM) == 0    # --shutdown-timeout 3
    assert time.time() - t < 20
    p.wait(30)
    assert p.returncode != 0
    assert own.leftovers() == []
    own.start()


def plain_rootfs(tmp_path):
    """The default image's tree unpacked into a directory, with a device
    node (as debootstrap makes), a file, a symlink and a setuid program
    owned by an unusual uid and gid."""
    index = json.loads((LAYOUT / "index.json").read_text())
    manifest = json.loads((LAYOUT / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    root = tmp_path / "rootfs"
    root.mkdir()
    import tarfile
    for layer in manifest["layers"]:
        with tarfile.open(LAYOUT / "blobs" / "sha256" / layer["digest"].split(":")[1]) as tar:
            tar.extractall(root, filter="fully_trusted")
    (root / "dev").mkdir(exist_ok=True)
    os.mknod(root / "dev" / "made-null", 0o666 | 0o020000, os.makedev(1, 3))
    (root / "etc" / "from-a-directory").write_text("yes\n")
    os.symlink("from-a-directory", root / "etc" / "a-link")
    tool = root / "usr" / "local" / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chown(tool, 1234, 5678)
    os.chmod(tool, 0o4750)
    return root


ROOTFS_PROBE = ("import json, os; st = os.stat('/usr/local/bin/tool'); "
                "print(json.dumps([open('/etc/from-a-directory').read().strip(), os.readlink('/etc/a-link'), "
                "oct(st.st_mode & 0o7777), st.st_uid, st.st_gid, os.path.exists('/dev/made-null')]))")
ROOTFS_SEEN = ["yes", "from-a-directory", "0o4750", 1234, 5678, False]


def test_image_import_of_a_plain_root_filesystem(own, tmp_path):
    """What debootstrap or `docker export | tar x` leaves: the tree becomes a
    one-layer image (device nodes in it left out), and replicas run on it."""
    root = plain_rootfs(tmp_path)
    r = own.hearth("image", "import", str(root), check=False)
    assert r.returncode != 0 and b"carries no image name" in r.stderr, r.stderr
    own.hearth("image", "import", str(root), "--name", "plain:1")
    r = own.hearth("sandbox", "--image", "plain:1", "--", "python3", "-c", ROOTFS_PROBE, check=False)
    assert r.returncode == 0 and json.loads(r.stdout) == ROOTFS_SEEN, (r.stdout, r.stderr)
    ls = {i["name"]: i for i in json.loads(own.hearth("image", "ls", "--json").stdout)}
    assert ls["plain:1"]["layers"] == 1, ls["plain:1"]
    own.hearth("image", "rm", "plain:1")


def test_image_import_of_a_root_filesystem_archive_and_a_streamed_directory(own, tmp_path):
    """A tar of a root filesystem (what `docker export` or `tar -C DIR -c .`
    writes), opened by hearthd or uploaded, and a root filesystem directory
    sent as bytes (what a non-root user's CLI does; --stream as root):
    each becomes an image whose files keep their modes, owners and links,
    with the device node left out."""
    import tarfile
    root = plain_rootfs(tmp_path)
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    with tarfile.open(archive) as tar:
        assert any(m.ischr() for m in tar.getmembers())  # the node is in the archive
    r = own.hearth("image", "import", str(archive), check=False)
    assert r.returncode != 0 and b"carries no image name" in r.stderr, r.stderr
    r = own.hearth("image", "import", str(root), "--stream", check=False)
    assert r.returncode != 0 and b"carries no image name" in r.stderr, r.stderr
    for name, args in (("plain:tar", [str(archive)]), ("plain:tar-sent", [str(archive), "--stream"]),
                       ("plain:dir-sent", [str(root), "--stream"])):
        r = own.hearth("image", "import", *args, "--name", name)
        if name == "plain:dir-sent":
            assert b"left out 1 device node" in r.stderr, r.stderr
        r = own.hearth("sandbox", "--image", name, "--", "python3", "-c", ROOTFS_PROBE, check=False)
        assert r.returncode == 0 and json.loads(r.stdout) == ROOTFS_SEEN, (name, r.stdout, r.stderr)
        own.hearth("image", "rm", name)
