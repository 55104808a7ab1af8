"""Pulls from real OCI registries (registry_fixtures: Debian's docker-registry
on 127.0.0.1 behind TLS with a CA made here, htpasswd or token auth, or
plain HTTP; a proxy that breaks blobs), against a real daemon.

The module's daemon starts with `--registry-ca` (the test CA),
`--insecure-registry` for the plain registry and the proxy, and
`--registry-mirror docker.io=<plain registry>` (so familiar names such as
`hearth/python:3.11` resolve there); it starts with an empty store, so every
layer it has came through a registry. Failures are checked to leave nothing:
no file in the store's tmp/, no new layer directory, no image recorded.

Environment names here start with `pl-`.
"""
import json
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import IMAGE, LAYOUT, TMP, _checked, api, raw_request, running_daemon
from registry_fixtures import (PASSWORD, USER, Registries, free_port, index_of, layout_manifest, link_blobs,
                               small_image, whiteout_image, write_image, write_layout)
from test_actors import TASKS, bundle

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry") or not shutil.which("skopeo"),
                                reason="needs docker-registry and skopeo (scripts/setup installs them)")


@pytest.fixture(scope="module")
def regs():
    base = tempfile.mkdtemp(prefix="hearth-reg-", dir=TMP)
    r = Registries(base)
    r.start()
    try:
        r.layouts = pathlib.Path(base) / "layouts"
        r.layouts.mkdir()
        r.push(f"oci:{LAYOUT}:3.11", "hearth/python:3.11")
        wh = whiteout_image(LAYOUT, r.layouts / "wh")
        r.push(f"oci:{wh}:wh", "wh/python:1")
        yield r
    finally:
        r.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def rd(regs):
    yield from running_daemon("hearth-rg", import_image=False, extra_args=[
        "--registry-ca", str(regs.ca),
        "--insecure-registry", regs.plain.host, "--insecure-registry", regs.proxy.host,
        "--registry-mirror", f"docker.io={regs.plain.host}"])


@pytest.fixture
def d(rd, regs):
    """The module's daemon, checked for leftovers after the test; the proxy reset."""
    regs.proxy.reset()
    yield from _checked(rd)
    regs.proxy.reset()


def small(regs, ref, **kw):
    """Pushes a fresh small image (random layers) as REF on the plain
    registry; returns (its manifest descriptor, layout path)."""
    layout = pathlib.Path(tempfile.mkdtemp(prefix="img-", dir=regs.layouts))
    top = small_image(layout, "t", **kw)
    regs.push(f"oci:{layout}:t", ref)
    return top, layout


def manifest_of(layout, top):
    return json.loads((layout / "blobs" / "sha256" / top["digest"][7:]).read_text())


def ndjson(sock, method, path, body, headers=()):
    """One request; (status, [parsed lines]) for an NDJSON answer, else (status, parsed JSON)."""
    data = json.dumps(body).encode() if not isinstance(body, (bytes, str)) else (
        body.encode() if isinstance(body, str) else body)
    status, head, rest = raw_request(sock, method, path, data, headers, timeout=600)
    if b"x-ndjson" in head.lower():
        return status, [json.loads(line) for line in rest.splitlines() if line.strip()]
    return status, json.loads(rest) if rest else None


def pull(d, ref, name=None):
    body = {"reference": ref}
    if name:
        body["name"] = name
    status, events = ndjson(d.socket, "POST", "/v1/images/pull", body)
    assert status == 200, events
    return events


def pulled(d, ref, name=None):
    events = pull(d, ref, name)
    assert events[-1]["event"] == "done", events[-1]
    return events, events[-1]["image"]


def failed(d, ref):
    events = pull(d, ref)
    assert events[-1]["event"] == "error", events[-1]
    return events[-1]["error"]


def store(d):
    """(images by name → id, layer directories, tmp/ entries)."""
    root = pathlib.Path(d.root)
    index = root / "images.json"
    images = {k: v["id"] for k, v in json.loads(index.read_text())["images"].items()} if index.exists() else {}
    return images, sorted(p.name for p in (root / "layers").iterdir()), sorted(p.name for p in (root / "tmp").iterdir())


def assert_nothing_left(d, before):
    images, layers, tmp = store(d)
    assert tmp == [], f"left in tmp/: {tmp}"
    assert layers == before[1], f"layers before {before[1]}, after {layers}"
    assert images == before[0], f"images before {before[0]}, after {images}"


def rm_images(d, *names):
    for n in names:
        d.hearth("image", "rm", n)


def config_digest(layout, top):
    return manifest_of(layout, top)["config"]["digest"]


# MARK: pulls


def test_anonymous_pull_streams_layers_and_the_image_runs(d, regs):
    ref = f"{regs.plain.host}/hearth/python:3.11"
    digest, manifest = regs.manifest("hearth/python:3.11")
    events, image = pulled(d, ref)
    assert events[0]["event"] == "resolved" and events[0]["manifestDigest"] == digest and events[0]["layers"] == 1
    layer = manifest["layers"][0]
    states = [e["state"] for e in events if e["event"] == "layer"]
    assert states[0] == "waiting" and states[-2:] == ["unpacking", "done"] and "downloading" in states, states
    assert all(e["digest"] == layer["digest"] and e["size"] == layer["size"] for e in events if e["event"] == "layer")
    assert image["name"] == ref and image["id"] == manifest["config"]["digest"] and image["layers"] == 1
    assert ref in d.hearth("image", "ls").stdout.decode()
    r = d.py("import sys; print('hello from', sys.version_info[:2])", opts=("--image", ref))
    assert r.returncode == 0 and b"hello from (3, 11)" in r.stdout, r.stderr
    rm_images(d, ref)
    assert store(d)[1] == [], "the only image's layer goes with it"


def test_layers_in_the_store_are_not_fetched_again_and_whiteouts_apply(d, regs):
    base = f"{regs.proxy.host}/hearth/python:3.11"
    wh = f"{regs.proxy.host}/wh/python:1"
    pulled(d, base)
    _, base_manifest = regs.manifest("hearth/python:3.11")
    _, wh_manifest = regs.manifest("wh/python:1")
    assert len(wh_manifest["layers"]) == 3 and wh_manifest["layers"][0]["digest"] == base_manifest["layers"][0]["digest"]
    regs.proxy.reset()
    # The CLI's plain (non-tty) progress: one line per layer and state.
    r = d.hearth("image", "pull", wh, timeout=600)
    out = r.stdout.decode()
    base_blob = base_manifest["layers"][0]["digest"]
    assert f"{base_blob[:19]}  already present" in out, out
    for layer in wh_manifest["layers"][1:]:
        assert f"{layer['digest'][:19]}  done" in out, out
    assert f"pulled {wh} (" in out and "3 layers" in out and "2 fetched, 1 already present" in out, out
    fetched = regs.proxy.blob_requests()
    assert base_blob not in fetched, fetched
    assert sorted(fetched) == sorted([wh_manifest["config"]["digest"]] + [l["digest"] for l in wh_manifest["layers"][1:]])
    r = d.py("import os\n"
             "print(os.path.exists('/etc/debian_version'), os.path.exists('/etc/os-release'))\n"
             "print(open('/opt/hearth/one').read().strip(), '|', open('/opt/hearth/two').read().strip())\n"
             "print(os.path.exists('/opt/hearth/gone'), sorted(os.listdir('/opt/hearth')))",
             opts=("--image", wh))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["False True", "first layer | second layer", "False ['one', 'two']"], r.stdout
    rm_images(d, wh, base)


def test_multi_platform_index_picks_linux_amd64(d, regs):
    layout = pathlib.Path(tempfile.mkdtemp(prefix="multi-", dir=regs.layouts))
    amd = write_image(layout, [{"amd64.txt": os.urandom(4096)}], arch="amd64")
    arm = write_image(layout, [{"arm64.txt": os.urandom(4096)}], arch="arm64")
    top = index_of(layout, "multi", [arm, amd])
    regs.push(f"oci:{layout}:multi", "multi/app:1")
    index_digest, index = regs.manifest("multi/app:1")
    assert len(index["manifests"]) == 2, index
    ref = f"{regs.plain.host}/multi/app:1"
    events, image = pulled(d, ref)
    assert events[0]["manifestDigest"] == index_digest == top["digest"]
    assert image["id"] == config_digest(layout, amd)
    rm_images(d, ref)


def test_no_image_for_this_platform_is_refused_and_leaves_nothing(d, regs):
    layout = pathlib.Path(tempfile.mkdtemp(prefix="arm-", dir=regs.layouts))
    arm = write_image(layout, [{"arm64.txt": os.urandom(4096)}], arch="arm64")
    v7 = write_image(layout, [{"arm.txt": os.urandom(4096)}], arch="arm")
    index_of(layout, "arm", [arm, v7])
    regs.push(f"oci:{layout}:arm", "armonly/app:1")
    # A bare arm64 manifest, no index: its config says so.
    single = pathlib.Path(tempfile.mkdtemp(prefix="arm1-", dir=regs.layouts))
    write_layout(single, write_image(single, [{"x": os.urandom(4096)}], arch="arm64"), "one")
    regs.push(f"oci:{single}:one", "armsingle/app:1")
    before = store(d)
    err = failed(d, f"{regs.plain.host}/armonly/app:1")
    assert err["code"] == "invalid_image", err
    assert "no linux/amd64 image" in err["message"] and "linux/arm64, linux/arm" in err["message"], err
    err = failed(d, f"{regs.plain.host}/armsingle/app:1")
    assert err["code"] == "invalid_image" and "is for linux/arm64; this host runs linux/amd64" in err["message"], err
    assert_nothing_left(d, before)


def test_unknown_tag_and_repository_quote_the_registry(d, regs):
    before = store(d)
    err = failed(d, f"{regs.plain.host}/hearth/python:nope")
    assert err["code"] == "image_not_found", err
    assert "MANIFEST_UNKNOWN: manifest unknown" in err["message"] and "hearth/python:nope" in err["message"], err
    r = d.hearth("image", "pull", f"{regs.plain.host}/no/such:1", check=False)
    # (distribution answers MANIFEST_UNKNOWN for a repository it does not have, too)
    assert r.returncode != 0 and b"answered 404: MANIFEST_UNKNOWN: manifest unknown" in r.stderr, r.stderr
    assert r.stderr.startswith(f"hearth: pull {regs.plain.host}/no/such:1: ".encode()), r.stderr
    # A reference that does not parse is a 400 before anything is fetched.
    status, body = ndjson(d.socket, "POST", "/v1/images/pull", {"reference": "Bad/Name"})
    assert status == 400 and body["error"]["code"] == "invalid_argument" and "Bad/Name" in body["error"]["message"], body
    assert_nothing_left(d, before)


def test_pull_by_digest_checks_the_manifest_and_names_it(d, regs):
    top, layout = small(regs, "dig/app:1")
    host = regs.plain.host
    ref = f"{host}/dig/app:1@{top['digest']}"
    _, image = pulled(d, ref)
    assert image["name"] == f"{host}/dig/app@{top['digest']}" and image["id"] == config_digest(layout, top)
    # Pulled by tag too and the digest name removed, NAME@DIGEST still
    # finds the image (its manifest has that digest).
    pulled(d, f"{host}/dig/app:1")
    rm_images(d, f"{host}/dig/app@{top['digest']}")
    status, events = apply_stream(d, f"name: pl-dig\ncontainer_image: {host}/dig/app@{top['digest']}\n"
                                     "image_pull_policy: Never\n")
    assert events[-1]["event"] == "applied", events
    d.hearth("rm", "pl-dig")
    before = store(d)
    wrong = "sha256:" + "0" * 64
    err = failed(d, f"{host}/dig/app@{wrong}")
    assert err["code"] == "image_not_found" and "MANIFEST_UNKNOWN" in err["message"], err
    assert_nothing_left(d, before)
    rm_images(d, f"{host}/dig/app:1")


# MARK: bad input loses nothing


@pytest.mark.parametrize("mode,code,words", [
    ("flip", "invalid_image", "blob digest mismatch"),
    ("short", "unavailable", "(the blob is truncated)"),
    ("die", "unavailable", "the download broke off"),
])
def test_broken_blob_fails_the_pull_and_leaves_nothing(d, regs, mode, code, words):
    top, layout = small(regs, f"broken/{mode}:1", layers=3, size=3 << 20)
    layers = manifest_of(layout, top)["layers"]
    before = store(d)
    regs.proxy.mode = (mode, layers[1]["digest"])
    ref = f"{regs.proxy.host}/broken/{mode}:1"
    err = failed(d, ref)
    assert err["code"] == code and words in err["message"] and layers[1]["digest"] in err["message"], err
    assert err["message"].startswith(f"pull {ref}"), err
    assert_nothing_left(d, before)
    # The registry back in order, the same pull succeeds.
    regs.proxy.reset()
    pulled(d, ref)
    rm_images(d, ref)


# MARK: auth and TLS


def test_login_checks_the_password_and_basic_auth_pulls(d, regs):
    top, layout = small(regs, "private/basic:1")
    host = regs.basic.host
    ref = f"{host}/private/basic:1"
    before = store(d)
    err = failed(d, ref)
    assert err["code"] == "forbidden" and f"hearth login {host}" in err["message"], err
    assert "UNAUTHORIZED: authentication required" in err["message"], err
    auth = pathlib.Path(d.root, "registry-auth.json")
    r = d.hearth("login", host, "-u", USER, "--password-stdin", input=b"not-the-password\n", check=False)
    assert r.returncode != 0, r.stdout
    assert f"login to {host} as {USER} refused".encode() in r.stderr and b"UNAUTHORIZED" in r.stderr, r.stderr
    assert not auth.exists() or host not in auth.read_text()
    r = d.hearth("login", host, "-u", USER, "--password-stdin", input=PASSWORD.encode() + b"\n")
    assert f"credentials saved for {host}".encode() in r.stdout
    st = auth.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    status, saved = api(d.socket, "GET", "/v1/registries")
    assert status == 200 and saved == [{"registry": host, "username": USER, "message": "credentials saved"}], saved
    _, image = pulled(d, ref)
    assert image["id"] == config_digest(layout, top)
    assert PASSWORD not in pathlib.Path(d.log).read_text(), "the password is in the daemon's log"
    r = d.hearth("logout", host)
    assert f"credentials for {host} removed".encode() in r.stdout
    rm_images(d, ref)
    err = failed(d, ref)
    assert err["code"] == "forbidden", err
    assert_nothing_left(d, before)


def test_bearer_tokens_anonymous_and_with_a_login(d, regs):
    host = regs.token.host
    small(regs, "public/tok:1")
    small(regs, "private/tok:1")
    small(regs, "private/tok2:1")
    regs.tokens.requests.clear()
    before = store(d)
    pulled(d, f"{host}/public/tok:1")
    assert (None, "repository:public/tok:pull") in regs.tokens.requests, regs.tokens.requests
    # Anonymous tokens carry no access to private/: the registry's refusal.
    err = failed(d, f"{host}/private/tok:1")
    assert err["code"] == "forbidden" and f"hearth login {host}" in err["message"] and "UNAUTHORIZED" in err["message"], err
    r = d.hearth("login", host, "-u", USER, "--password-stdin", input=b"wrong\n", check=False)
    assert r.returncode != 0 and b"token server: wrong password for alice" in r.stderr, r.stderr
    d.hearth("login", host, "-u", USER, "--password-stdin", input=PASSWORD.encode())
    regs.tokens.requests.clear()
    pulled(d, f"{host}/private/tok:1")
    assert regs.tokens.requests == [(USER, "repository:private/tok:pull")], regs.tokens.requests
    # The token is cached per registry and scope: a second pull asks for none.
    pulled(d, f"{host}/private/tok:1")
    assert len(regs.tokens.requests) == 1, regs.tokens.requests
    # The password changed at the registry: the saved one is refused at pull.
    import registry_fixtures
    registry_fixtures.PASSWORD = "changed"
    try:
        mid = store(d)
        err = failed(d, f"{host}/private/tok2:1")
        assert err["code"] == "forbidden" and "token server: wrong password for alice" in err["message"], err
        assert_nothing_left(d, mid)
    finally:
        registry_fixtures.PASSWORD = PASSWORD
    d.hearth("logout", host)
    rm_images(d, f"{host}/public/tok:1", f"{host}/private/tok:1")
    assert_nothing_left(d, before)


def test_plain_http_and_unknown_cas_are_refused_unless_configured(hearth, regs):
    """The session daemon has no --insecure-registry and no --registry-ca."""
    before = store(hearth)
    err = failed(hearth, f"{regs.plain.host}/hearth/python:3.11")
    assert err["code"] == "unavailable" and "WRONG_VERSION_NUMBER" in err["message"], err
    assert f"--insecure-registry {regs.plain.host}" in err["message"], err
    err = failed(hearth, f"{regs.basic.host}/hearth/python:3.11")
    assert err["code"] == "unavailable" and "CERTIFICATE_VERIFY_FAILED" in err["message"], err
    assert "--registry-ca" in err["message"], err
    # Docker's default registry is only a name without --registry-mirror.
    err = failed(hearth, "python:3.11-slim")
    assert err["code"] == "image_not_found" and "--registry-mirror docker.io=HOST[:PORT]" in err["message"], err
    assert err["message"].startswith("pull docker.io/library/python:3.11-slim: "), err
    closed = free_port()
    err = failed(hearth, f"127.0.0.1:{closed}/x:1")
    assert err["code"] == "unavailable" and "ECONNREFUSED" in err["message"], err
    assert_nothing_left(hearth, before)


# MARK: pull on apply


def apply_stream(d, text):
    return ndjson(d.socket, "POST", "/v1/environments?source=test", text.encode(),
                  headers=[("Accept", "application/x-ndjson")])


def test_apply_pulls_as_its_policy_says(d, regs):
    sha, raw = bundle({"tasks.py": TASKS})
    assert api(d.socket, "PUT", f"/v1/code/{sha}", raw)[0] == 201
    ref = f"{regs.plain.host}/hearth/python:3.11"
    spec = f"name: pl-a\nreplica_count: 1\ncontainer_image: {ref}\n"
    # IfNotPresent (the default): the CLI shows the pull, then the result.
    r = d.hearth("apply", "-f", "-", input=spec.encode(), timeout=600)
    out = r.stdout.decode()
    assert "unpacking" in out and "done" in out, out
    assert out.splitlines()[-1].startswith("environment pl-a created ("), out
    status, body = api(d.socket, "POST", "/v1/environments/pl-a/tasks",
                       {"module": "tasks", "function": "pid", "kwargs": {}, "bundle": sha, "wait": True})
    assert status == 200 and body["state"] == "succeeded", body
    # Present now: no pull at the next apply.
    status, events = apply_stream(d, spec)
    assert status == 200 and [e["event"] for e in events] == ["applied"], events
    assert events[0]["results"][0]["outcome"] == "unchanged"

    # Never: a missing image is refused, naming the policy.
    missing = f"{regs.plain.host}/never/there:1"
    status, body = api(d.socket, "POST", "/v1/environments",
                       f"name: pl-never\ncontainer_image: {missing}\nimage_pull_policy: Never\n".encode())
    assert status == 404 and body["error"]["code"] == "image_not_found", body
    assert "image_pull_policy is Never" in body["error"]["message"] and missing in body["error"]["message"], body

    # Always: the name is resolved at every apply; a new push under the tag is picked up.
    moving = f"{regs.plain.host}/moving/app:1"
    regs.push(f"oci:{LAYOUT}:3.11", "moving/app:1")
    always = f"name: pl-always\ncontainer_image: {moving}\nimage_pull_policy: Always\n"
    status, events = apply_stream(d, always)
    assert events[-1]["event"] == "applied", events
    assert any(e["event"] == "pull" and e["pull"]["event"] == "resolved" for e in events), events
    first = store(d)[0][moving]
    regs.push(f"oci:{regs.layouts / 'wh'}:wh", "moving/app:1")
    status, events = apply_stream(d, always)
    assert events[-1]["event"] == "applied" and events[-1]["results"][0]["outcome"] == "unchanged", events
    pulls = [e["pull"] for e in events if e["event"] == "pull"]
    assert [p["state"] for p in pulls if p["event"] == "layer" and p["state"] == "cached"], pulls
    assert store(d)[0][moving] != first == store(d)[0][ref]

    # An unreachable registry refuses the environment with its error; a
    # JSON client gets the same answer.
    down = f"127.0.0.1:{free_port()}/gone/app:1"
    before = store(d)
    status, body = api(d.socket, "POST", "/v1/environments", f"name: pl-down\ncontainer_image: {down}\n".encode())
    assert status == 503 and body["error"]["code"] == "unavailable", body
    assert 'environment "pl-down"' in body["error"]["message"] and "ECONNREFUSED" in body["error"]["message"], body
    status, events = apply_stream(d, f"name: pl-down\ncontainer_image: {regs.plain.host}/hearth/python:404\n")
    assert events[-1]["event"] == "error" and "MANIFEST_UNKNOWN" in events[-1]["error"]["message"], events
    assert api(d.socket, "GET", "/v1/environments/pl-down")[0] == 404
    assert_nothing_left(d, before)

    # The pod template's imagePullPolicy (Kubernetes' spelling) wins.
    pod = (f"name: pl-pod\ncontainer_image: {moving}\nimage_pull_policy: Always\n"
           f"pod_template:\n  pod_spec:\n    containers:\n    - name: primary\n      image: {missing}\n"
           f"      imagePullPolicy: Never\n")
    status, body = api(d.socket, "POST", "/v1/environments", pod.encode())
    assert status == 404 and "image_pull_policy is Never" in body["error"]["message"], body
    status, body = api(d.socket, "POST", "/v1/environments", b"name: pl-bad\nimage_pull_policy: always\n")
    assert status == 400 and 'image_pull_policy: "always" is not a pull policy' in body["error"]["message"], body

    for name in ("pl-a", "pl-always"):
        d.hearth("rm", name)
    rm_images(d, ref, moving)


def test_a_spec_the_policy_refuses_pulls_nothing(d, regs):
    """The privilege check comes first: nothing is fetched for a refused spec."""
    status, body = api(d.socket, "POST", "/v1/environments",
                       f"name: pl-priv\ncontainer_image: {regs.proxy.host}/hearth/python:3.11\nnetwork: host\n".encode())
    assert status == 403 and body["error"]["code"] == "forbidden" and "--allow-privileged" in body["error"]["message"], body
    assert regs.proxy.log == [], regs.proxy.log


def test_familiar_names_are_one_name(d, regs):
    """docker.io is this daemon's plain registry (--registry-mirror): the
    long and the familiar forms of a name are the same stored image."""
    small(regs, "library/tiny:1")
    _, image = pulled(d, "docker.io/library/tiny:1")
    assert image["name"] == "tiny:1", image
    names = d.hearth("image", "ls").stdout.decode()
    assert "tiny:1" in names and "docker.io" not in names, names
    # An environment naming it in the short form finds it without a pull.
    status, events = apply_stream(d, "name: pl-tiny\ncontainer_image: tiny:1\nimage_pull_policy: Never\n")
    assert events[-1]["event"] == "applied", events
    d.hearth("rm", "pl-tiny")
    # The default image's name, pulled in its long form, runs as `hearth/python:3.11`.
    pulled(d, "docker.io/hearth/python:3.11")
    r = d.py("print(2 + 2)", opts=("--image", IMAGE))
    assert r.returncode == 0 and r.stdout.strip() == b"4", r.stderr
    rm_images(d, "docker.io/library/tiny:1", IMAGE)


SDK_PULL = '''
from hearth import ActorEnvironment, ImageSpec

ref, how = REF, HOW  # filled in below: the module is imported in the replica too
if how == "env":
    env = ActorEnvironment(name="sdk-pull", container_image=ref)
else:  # an ImageSpec on a base the store lacks: the build pulls it
    env = ActorEnvironment(name="sdk-pull", container_image=ImageSpec(base_image=ref, commands=["echo x > /opt/x"]))

@env.task
def marker() -> str:
    import os
    return "ok" if os.path.exists("/etc/debian_version") or os.path.exists("/opt/x") else "?"

if __name__ == "__main__":
    print("RESULT", marker())
'''


@pytest.mark.parametrize("how", ["env", "imagespec"])
def test_the_sdk_shows_the_pull_of_a_missing_image(d, regs, tmp_path, how):
    # A user's environment (or ImageSpec base) names an image the store
    # lacks: the SDK's apply (or build) pulls it and says so on stderr.
    import subprocess
    import sys
    from conftest import REPO

    ref = f"{regs.plain.host}/hearth/python:3.11"
    if ref in store(d)[0]:  # an earlier test's pull
        rm_images(d, ref)
    before = store(d)
    (tmp_path / "wf.py").write_text(SDK_PULL.replace("REF, HOW", f"{ref!r}, {how!r}"))
    env = dict(os.environ, HEARTH_SOCKET=d.socket, PYTHONPATH=str(REPO / "python"))
    try:
        r = subprocess.run([sys.executable, str(tmp_path / "wf.py")], capture_output=True, text=True,
                           timeout=600, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "RESULT ok" in r.stdout
        if how == "env":
            assert f"hearth: pulling {ref} (1 layer) for sdk-pull" in r.stderr, r.stderr
            assert f"hearth: pulled {ref} in " in r.stderr, r.stderr
        else:
            assert f"hearth: pulling base image {ref}" in r.stderr, r.stderr
            assert "hearth: pulled " in r.stderr and "[1/1] echo x > /opt/x" in r.stderr, r.stderr
        assert ref in store(d)[0]
    finally:
        d.hearth("rm", "sdk-pull", check=False)
        names = [n for n in store(d)[0] if n not in before[0]]
        rm_images(d, *names)
