"""What one environment's replicas can see of the daemon's stores, attacked
from inside: another environment's code, the code store itself, secrets left
behind by a replica that failed to start, and secrets an image's non-root
user must still read."""
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import textwrap

import pytest

from conftest import LAYOUT, TMP, api, running_daemon
from test_actors import apply, bundle, env

SPY = textwrap.dedent('''
    import os

    SECRET_OF = {"owner": "%s"}

    def whoami():
        return SECRET_OF["owner"]

    def look(path):
        try:
            return sorted(os.listdir(path))
        except OSError as e:
            return type(e).__name__

    def read(path):
        try:
            return open(path).read()
        except OSError as e:
            return type(e).__name__

    def ids():
        return [os.getuid(), os.getgid()]
''')


@pytest.fixture(scope="module")
def hd():
    yield from running_daemon("hearth-tn")


def upload(hd, owner):
    sha, raw = bundle({"spy.py": SPY % owner})
    status, body = api(hd.socket, "PUT", f"/v1/code/{sha}", raw)
    assert status in (200, 201), body
    return sha


def call(hd, envname, sha, fn, **kwargs):
    req = {"module": "spy", "function": fn, "kwargs": kwargs, "bundle": sha, "wait": True}
    status, body = api(hd.socket, "POST", f"/v1/environments/{envname}/tasks", req)
    assert status == 200 and body["state"] == "succeeded", body
    return body["result"]


def test_a_replica_sees_only_its_own_bundles(hd):
    alice, bob = upload(hd, "alice"), upload(hd, "bob")
    env(hd, "alice-env")
    env(hd, "bob-env")
    assert call(hd, "alice-env", alice, "whoami") == "alice"
    assert call(hd, "bob-env", bob, "whoami") == "bob"
    # Bob's replica lists the code directory and tries Alice's bundle by name.
    assert call(hd, "bob-env", bob, "look", path="/.hearth/code") == [bob]
    assert call(hd, "bob-env", bob, "read", path=f"/.hearth/code/{alice}/spy.py") == "FileNotFoundError"
    assert call(hd, "alice-env", alice, "look", path="/.hearth/code") == [alice]
    # A new version of Bob's code appears beside the old one in his replica only.
    bob2 = upload(hd, "bob, version 2")
    assert call(hd, "bob-env", bob2, "whoami") == "bob, version 2"
    assert call(hd, "bob-env", bob2, "look", path="/.hearth/code") == sorted([bob, bob2])
    assert call(hd, "alice-env", alice, "look", path="/.hearth/code") == [alice]
    # The store on the host is root's alone.
    mode = stat.S_IMODE(os.stat(pathlib.Path(hd.root, "code")).st_mode)
    assert mode == 0o700, oct(mode)
    for e in ("alice-env", "bob-env"):
        hd.hearth("rm", e)


def test_bundle_view_is_read_only(hd):
    env(hd, "carol-env")
    code = ("import os\n"
            "def go(p):\n"
            "    try:\n"
            "        open(p, 'w').write('x')\n"
            "        return 'written'\n"
            "    except OSError as e:\n"
            "        return type(e).__name__\n")
    sha2, raw = bundle({"spy.py": SPY % "carol", "w.py": code})
    assert api(hd.socket, "PUT", f"/v1/code/{sha2}", raw)[0] in (200, 201)
    req = {"module": "w", "function": "go", "kwargs": {"p": f"/.hearth/code/{sha2}/spy.py"}, "bundle": sha2, "wait": True}
    status, body = api(hd.socket, "POST", "/v1/environments/carol-env/tasks", req)
    # Read-only bind mount: EROFS.
    assert status == 200 and body["result"] == "OSError", body
    # The stored copy is untouched.
    assert "carol" in (pathlib.Path(hd.root, "code", sha2, "spy.py")).read_text()
    hd.hearth("rm", "carol-env")


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # another filesystem (the VM suite's tmpfs)
        shutil.copy2(src, dst)


def _derived_image(base, tmp, **config):
    """A copy of the default layout with its config changed by umoci
    (blobs hard-linked, index.json copied: umoci rewrites it)."""
    out = tmp / "layout"
    out.mkdir()
    shutil.copy(base / "index.json", out / "index.json")
    shutil.copy(base / "oci-layout", out / "oci-layout")
    shutil.copytree(base / "blobs", out / "blobs", copy_function=_link_or_copy)
    args = []
    for k, v in config.items():
        args += [f"--config.{k}", v]
    subprocess.run(["umoci", "config", "--image", f"{out}:3.11", *args, "--tag", "derived"], check=True,
                   capture_output=True)
    # One image in the layout, so the import takes it under any --name.
    subprocess.run(["umoci", "rm", "--image", f"{out}:3.11"], check=True, capture_output=True)
    return out


@pytest.fixture
def tmp():
    d = pathlib.Path(tempfile.mkdtemp(prefix="hearth-tn-", dir=TMP))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_failed_start_leaves_no_secrets_behind(hd, tmp):
    layout = _derived_image(LAYOUT, tmp, workingdir="/no/such/dir")
    hd.hearth("image", "import", str(layout), "--name", "test/bad-workdir:1", timeout=600)
    hd.hearth("secret", "set", "tn-token", input=b"do-not-leak")
    r = apply(hd, "name: bad-start\nreplica_count: 1\ncontainer_image: test/bad-workdir:1\n"
                  "secret_requests: [tn-token]\n")
    assert r.returncode == 0, r.stderr
    sha = upload(hd, "dave")
    status, body = api(hd.socket, "POST", "/v1/environments/bad-start/tasks",
                       {"module": "spy", "function": "whoami", "kwargs": {}, "bundle": sha, "wait": True})
    assert body["state"] == "failed" and "chdir /no/such/dir" in body["error"]["message"], body
    hd.hearth("rm", "bad-start")
    # No copy of the secret (nor a code view) survives the failed starts.
    leftovers = list(pathlib.Path(hd.root, "replicas").iterdir())
    assert leftovers == [], leftovers
    found = subprocess.run(["grep", "-rl", "do-not-leak", hd.root], capture_output=True).stdout.decode().split()
    assert found == [str(pathlib.Path(hd.root, "secrets", "tn-token"))], found
    hd.hearth("image", "rm", "test/bad-workdir:1")


def test_non_root_image_user_reads_its_secrets(hd, tmp):
    layout = _derived_image(LAYOUT, tmp, user="1000:1000")
    hd.hearth("image", "import", str(layout), "--name", "test/user1000:1", timeout=600)
    hd.hearth("secret", "set", "tn-user-token", input=b"for-uid-1000")
    env(hd, "as-user", "container_image: test/user1000:1\nsecret_requests: [tn-user-token]\n")
    sha = upload(hd, "erin")
    assert call(hd, "as-user", sha, "ids") == [1000, 1000]
    assert call(hd, "as-user", sha, "read", path="/etc/secrets/tn-user-token") == "for-uid-1000"
    # The view of the code is readable to that user too.
    assert call(hd, "as-user", sha, "whoami") == "erin"
    hd.hearth("rm", "as-user")
    hd.hearth("image", "rm", "test/user1000:1")
