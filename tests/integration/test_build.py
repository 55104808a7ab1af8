"""Image builds from ImageSpecs (`hearth image build -f`, `POST /v1/images/build`)
against a real daemon: packages from PyPI and Debian, commands, copied files,
the step cache, whiteouts and opaque directories in the layers, and failures
that name the step and store nothing. Built images are shared by the tests of
this module; only PyPI and the Debian mirrors are contacted."""
import json
import os
import pathlib
import re
import textwrap
import threading
import uuid

import pytest

from conftest import IMAGE, _checked, api, running_daemon

BUILD_TIMEOUT = 900


@pytest.fixture(scope="module")
def daemon_b():
    yield from running_daemon("hearth-build")


@pytest.fixture
def hb(daemon_b):
    yield from _checked(daemon_b)


def out(r):
    return r.stdout.decode(errors="replace")


def err(r):
    return r.stderr.decode(errors="replace")


def write_spec(directory, text, files=None):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        p = directory / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    spec = directory / "imagespec.yaml"
    spec.write_text(textwrap.dedent(text))
    return spec


def cli_build(d, spec, *args, check=True):
    """`hearth image build -f spec`: (the image name it printed last, the run)."""
    r = d.hearth("image", "build", "-f", str(spec), *args, check=check, timeout=BUILD_TIMEOUT)
    lines = out(r).strip().splitlines()
    return (lines[-1] if lines else None), r


def api_build(d, spec, verbose=False):
    """POST /v1/images/build: (status, the NDJSON events, or the error body)."""
    status, body = api(d.socket, "POST", "/v1/images/build", {"spec": spec, "verbose": verbose})
    if status != 200:
        return status, body
    return status, [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def store_state(d):
    """What a build may leave in the state root: layers, image names, cache
    entries, and the store's scratch directory."""
    root = pathlib.Path(d.root)
    cache = root / "build-cache.json"
    return {
        "layers": sorted(p.name for p in (root / "layers").iterdir()),
        "images": sorted(json.loads((root / "images.json").read_text())["images"]),
        "cache": sorted(json.loads(cache.read_text())["entries"]) if cache.exists() else [],
        "tmp": sorted(p.name for p in (root / "tmp").iterdir()),
    }


# Built once, shared: pandas from PyPI (about a minute), and a tools image
# with jq from Debian, env and commands that delete and replace files.
@pytest.fixture(scope="module")
def pandas_image(daemon_b, tmp_path_factory):
    spec = write_spec(tmp_path_factory.mktemp("pandas"), """
        name: pandas-test
        packages: [pandas, union]
        """)
    name, r = cli_build(daemon_b, spec)
    return name, r


TOOLS_SPEC = """
    name: tools-test
    apt_packages: [jq]
    env:
      GREETING: hello from env
    commands:
      - echo built > /opt/marker && echo "$GREETING" > /opt/greeting
      - rm /etc/debian_version
      - rm -rf /usr/share/doc && mkdir /usr/share/doc && echo only > /usr/share/doc/only.txt
    """


@pytest.fixture(scope="module")
def tools_image(daemon_b, tmp_path_factory):
    spec = write_spec(tmp_path_factory.mktemp("tools"), TOOLS_SPEC)
    name, r = cli_build(daemon_b, spec)
    return name, r


def test_pandas_from_pypi_runs_in_a_sandbox_and_a_task(hb, pandas_image, tmp_path):
    name, r = pandas_image
    assert re.fullmatch(r"pandas-test:[A-Za-z0-9_]{22}", name), out(r)
    # union is Hearth's to provide: the step installs pandas alone.
    assert "[1/1] uv pip install pandas … " in out(r) and "union" not in out(r)
    listed = json.loads(out(hb.hearth("image", "ls", "--json")))
    assert name in [i["name"] for i in listed]
    r = hb.sandbox("python3", "-c", "import pandas; print(pandas.__version__)", opts=("--image", name), check=True)
    version = out(r).strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version)
    # The base image does not have it.
    assert hb.sandbox("python3", "-c", "import pandas").returncode == 1

    # A task in an environment on the built image returns pandas.__version__.
    code = tmp_path / "code"
    code.mkdir()
    (code / "pdtask.py").write_text("import pandas\n\ndef version():\n    return pandas.__version__\n")
    (tmp_path / "env.yaml").write_text(f"name: pandas-env\ncontainer_image: {name}\nreplica_count: 1\n")
    hb.hearth("apply", "-f", str(tmp_path / "env.yaml"))
    try:
        r = hb.hearth("run", "pandas-env", "pdtask:version", "--code", str(code), timeout=300)
        assert json.loads(out(r)) == version
    finally:
        hb.hearth("rm", "pandas-env", check=False)


def test_same_spec_again_is_a_cache_hit(hb, pandas_image, tmp_path):
    name, _ = pandas_image
    before = store_state(hb)
    # The API with only the fields that differ from the defaults: the same
    # spec, so the same name, and every step cached.
    status, events = api_build(hb, {"name": "pandas-test", "packages": ["pandas", "union"]}, verbose=True)
    assert status == 200, events
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "step", "step_done", "done"], events
    assert events[0] == {"event": "start", "image": name, "steps": 1}
    assert events[1]["cached"] is True and events[2]["cached"] is True
    assert events[-1]["cached"] is True and events[-1]["image"]["name"] == name
    assert store_state(hb) == before
    # The CLI says so too.
    spec = write_spec(tmp_path, "name: pandas-test\npackages: [pandas, union]\n")
    again, r = cli_build(hb, spec)
    assert again == name and "[1/1] uv pip install pandas … cached" in out(r)


def test_apt_package_env_and_commands(hb, tools_image):
    name, r = tools_image
    assert "[1/4] apt-get install jq … " in out(r), out(r)
    assert "[2/4] echo built > /opt/marker" in out(r)
    r = hb.sandbox("sh", "-c", 'echo \'{"a": [1, 2]}\' | jq -c .a; cat /opt/marker /opt/greeting; echo "$GREETING"',
                   opts=("--image", name), check=True)
    assert out(r) == "[1,2]\nbuilt\nhello from env\nhello from env\n"
    # apt's lists and downloaded packages are not in the image.
    r = hb.sandbox("sh", "-c", "ls /var/lib/apt/lists | grep -v -x -e lock -e partial | wc -l; ls /var/cache/apt/archives | grep -c deb$",
                   opts=("--image", name))
    assert out(r).split() == ["0", "0"], out(r)
    # The base image has none of it.
    assert hb.sandbox("sh", "-c", "command -v jq").returncode != 0


def test_deleted_file_is_a_whiteout_and_a_replaced_directory_is_opaque(hb, tools_image):
    name, _ = tools_image
    r = hb.sandbox("sh", "-c", "test -e /etc/debian_version; echo $?; ls -A /usr/share/doc", opts=("--image", name))
    assert out(r) == "1\nonly.txt\n", out(r)
    # In the base image both are still there.
    r = hb.sandbox("sh", "-c", "test -e /etc/debian_version; echo $?; ls /usr/share/doc | wc -l")
    lines = out(r).split()
    assert lines[0] == "0" and int(lines[1]) > 1, out(r)
    # The layers hold it the overlayfs way: a 0:0 character device, an opaque directory.
    layers = pathlib.Path(hb.root, "layers")
    whiteouts = [p for p in layers.glob("*/etc/debian_version") if p.is_char_device()]
    assert whiteouts and all(os.stat(p, follow_symlinks=False).st_rdev == 0 for p in whiteouts)
    opaque = [p for p in layers.glob("*/usr/share/doc") if (p / "only.txt").exists()]
    assert opaque and all(os.getxattr(p, "trusted.overlay.opaque") == b"y" for p in opaque)


def test_changing_one_step_reuses_the_steps_before_it(hb, tools_image, tmp_path):
    name, _ = tools_image
    base_spec = {"name": "tools-test", "apt_packages": ["jq"], "env": {"GREETING": "hello from env"},
                 "commands": ["echo built > /opt/marker && echo \"$GREETING\" > /opt/greeting",
                              "rm /etc/debian_version",
                              "rm -rf /usr/share/doc && mkdir /usr/share/doc && echo only > /usr/share/doc/only.txt"]}
    # The last command changed: only it runs.
    last = dict(base_spec, commands=base_spec["commands"][:2] + ["echo changed > /opt/changed"])
    status, events = api_build(hb, last)
    assert status == 200, events
    done = [e for e in events if e["event"] == "step_done"]
    assert [e["cached"] for e in done] == [True, True, True, False], events
    assert events[-1]["event"] == "done" and events[-1]["cached"] is False
    new = events[-1]["image"]["name"]
    assert new != name
    r = hb.sandbox("sh", "-c", "cat /opt/changed /opt/marker; test -e /opt/marker", opts=("--image", new), check=True)
    assert out(r) == "changed\nbuilt\n"

    # A package added: the apt step is reused, the Python step and everything after run.
    more = dict(base_spec, packages=["six"])
    status, events = api_build(hb, more)
    steps = [(e["description"], e["cached"]) for e in events if e["event"] == "step"]
    assert steps[0] == ("apt-get install jq", True)
    assert steps[1] == ("uv pip install six", False)
    assert [c for _, c in steps[2:]] == [False, False, False]
    assert events[-1]["event"] == "done", events


def test_copy_puts_files_under_root(hb, tmp_path):
    spec = write_spec(tmp_path, """
        name: copy-test
        copy: [src, settings.cfg]
        """, files={"src/app/main.py": "print('from the bundle')\n", "settings.cfg": "[app]\n"})
    name, r = cli_build(hb, spec)
    assert "[1/1] copy bundle " in out(r) and " to /root … " in out(r)
    r = hb.sandbox("sh", "-c", "python3 /root/src/app/main.py; cat /root/settings.cfg; stat -c %a /root",
                   opts=("--image", name), check=True)
    assert out(r) == "from the bundle\n[app]\n700\n"


def test_provided_packages_need_no_step(hb, tmp_path):
    status, events = api_build(hb, {"name": "provided", "packages": ["flytekitplugins-hearth>=0.1", "union", "flytekitplugins-pod", "hearth"]})
    assert status == 200, events
    assert [e["event"] for e in events] == ["start", "done"], events
    assert events[0]["steps"] == 0 and events[-1]["cached"] is True
    assert events[-1]["image"]["layers"] == 1


def test_misspelled_package_fails_naming_it_and_stores_nothing(hb, tmp_path):
    before = store_state(hb)
    typo = "pandas-hearth-typo-" + uuid.uuid4().hex[:8]
    # A first step that succeeds: its layer must go too.
    spec = write_spec(tmp_path, f"""
        name: typo-test
        apt_packages: [tree]
        packages: [{typo}]
        """)
    name, r = cli_build(hb, spec, check=False)
    assert r.returncode == 1
    assert f"step 2/2 (uv pip install {typo}): exit status 1:" in err(r), err(r)
    assert typo in err(r).split("exit status 1:", 1)[1]
    assert store_state(hb) == before
    assert "typo-test" not in out(hb.hearth("image", "ls"))


def test_unknown_apt_package_fails_naming_it_and_stores_nothing(hb):
    before = store_state(hb)
    status, events = api_build(hb, {"name": "apt-typo", "apt_packages": ["hearth-no-such-package"]})
    assert status == 200
    error = events[-1]
    assert error["event"] == "error", events
    assert error["error"]["code"] == "build_failed"
    message = error["error"]["message"]
    assert message.startswith("step 1/1 (apt-get install hearth-no-such-package): exit status 100:"), message
    assert "Unable to locate package hearth-no-such-package" in message
    assert store_state(hb) == before


def test_failing_command_gives_its_status_and_output(hb):
    before = store_state(hb)
    status, events = api_build(hb, {"name": "cmd-fail", "commands": ["echo first line; echo context >&2; exit 3"]},
                               verbose=True)
    assert [e["line"] for e in events if e["event"] == "output"] == ["first line", "context"]
    message = events[-1]["error"]["message"]
    assert message == "step 1/1 (echo first line; echo context >&2; exit 3): exit status 3:\nfirst line\ncontext"
    assert store_state(hb) == before


def test_python_version_must_match_the_base_image(hb):
    status, events = api_build(hb, {"name": "pyver", "python_version": "3.9", "packages": ["six"]})
    message = events[-1]["error"]["message"]
    assert re.match(r"spec.python_version: 3.9 does not match base image hearth/python:3.11, whose python3 is 3\.11\.\d+; Hearth does not download Python", message), message
    status, events = api_build(hb, {"name": "pyver", "python_version": "3.11", "commands": ["true"]})
    assert events[-1]["event"] == "done", events


def test_unknown_spec_key_is_refused(hb, tmp_path):
    status, body = api(hb.socket, "POST", "/v1/images/build", {"spec": {"name": "x", "packges": ["six"]}})
    assert status == 400
    assert body["error"] == {"code": "invalid_argument", "message": "spec.packges: unknown field (did you mean packages?)"}
    spec = write_spec(tmp_path, "name: x\nconda_packages: [numpy]\n")
    _, r = cli_build(hb, spec, check=False)
    assert r.returncode == 1
    assert f"{spec}: conda_packages: unknown field" in err(r), err(r)


def test_same_spec_built_twice_at_once_runs_once(hb):
    marker = uuid.uuid4().hex
    spec = {"name": "concurrent", "commands": [f"echo {marker} > /opt/marker; sleep 1"]}
    results = [None, None]

    def go(i):
        results[i] = api_build(hb, spec)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    dones = [events[-1] for _, events in results]
    assert all(d["event"] == "done" for d in dones), results
    assert sorted(d["cached"] for d in dones) == [False, True]
    assert dones[0]["image"]["name"] == dones[1]["image"]["name"]
    r = hb.sandbox("cat", "/opt/marker", opts=("--image", dones[0]["image"]["name"]), check=True)
    assert out(r) == marker + "\n"
    assert IMAGE in out(hb.hearth("image", "ls"))


SDK_WORKFLOW = '''
from hearth import ActorEnvironment, ImageSpec

image = ImageSpec(packages=["union", "pandas"], commands=["echo sdk > /opt/sdk-marker"])
env = ActorEnvironment(name="sdk-pandas", container_image=image)

@env.task
def version() -> str:
    import pandas
    return pandas.__version__ + " " + open("/opt/sdk-marker").read().strip()

if __name__ == "__main__":
    print("IMAGE", image)
    print("RESULT", version())
'''


def test_sdk_builds_an_image_spec_on_first_use_and_reuses_it(hb, pandas_image, tmp_path):
    # What a first-time user's workflow does: ImageSpec(packages=["pandas"])
    # is built when its environment is first applied, with a line per step
    # on stderr; a second run finds the image and prints nothing about it.
    import subprocess
    import sys
    from conftest import REPO

    (tmp_path / "wf.py").write_text(SDK_WORKFLOW)
    env = dict(os.environ, HEARTH_SOCKET=hb.socket, PYTHONPATH=str(REPO / "python"))
    try:
        runs = [subprocess.run([sys.executable, str(tmp_path / "wf.py")], capture_output=True, text=True,
                               timeout=BUILD_TIMEOUT, env=env, cwd=tmp_path) for _ in range(2)]
    finally:
        hb.hearth("rm", "sdk-pandas", check=False)
    first, second = runs
    assert first.returncode == 0, first.stdout + first.stderr
    image = first.stdout.split("IMAGE ", 1)[1].split()[0]
    assert re.fullmatch(r"flytekit:[A-Za-z0-9_]{22}", image)
    result = first.stdout.split("RESULT ", 1)[1].strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+\S* sdk", result), first.stdout
    # The pandas step is the one pandas_image ran (same base, same step):
    # cached; the command step runs and is reported.
    assert f"hearth: building image {image} (2 steps" in first.stderr, first.stderr
    assert "[2/2] echo sdk > /opt/sdk-marker ..." in first.stderr and "[1/2]" not in first.stderr
    assert f"hearth: image {image} built in" in first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.split("RESULT ", 1)[1].strip() == result
    assert "hearth: " not in second.stderr, second.stderr


PROBE = r'''
import json, os, socket, urllib.error, urllib.request
out = {}
try:  # direct: the replica loopback, where nothing of the host listens
    urllib.request.urlopen("http://127.0.0.1:%(lport)d/probe", timeout=10)
    out["own-loopback"] = "reached"
except OSError as e:
    out["own-loopback"] = str(e)
for name in ("no_proxy", "NO_PROXY"):  # through the proxy, loopback too
    os.environ.pop(name, None)
for key, url in (("loopback", "http://127.0.0.1:%(lport)d/probe"), ("host", "http://%(hip)s:%(hport)d/probe")):
    try:
        out[key] = urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e:
        out[key] = [e.code, e.read().decode()]
    except OSError as e:
        out[key] = str(e)
s = socket.socket()
s.settimeout(5)
try:
    s.connect(("%(hip)s", %(hport)d))
    out["direct"] = "connected"
except OSError as e:
    out["direct"] = e.errno
open("/opt/probe.json", "w").write(json.dumps(out))
'''


def test_a_build_step_cannot_reach_the_hosts_services(hb, tmp_path):
    # A step runs any client's code: it must reach package indexes and
    # nothing of the host. Targets the host itself serves and reaches: a
    # server on its loopback and one on its own address.
    import errno
    import urllib.request
    from test_egress import CountingServer, default_route_address

    host_ip = default_route_address()
    if host_ip is None:
        pytest.skip("no default route: the host has no address of its own to attack")
    loop, hostside = CountingServer("127.0.0.1"), CountingServer(host_ip)
    try:
        assert urllib.request.urlopen(f"http://{host_ip}:{hostside.port}/control", timeout=5).status == 200
        hostside.paths.clear()
        probe = PROBE % {"lport": loop.port, "hip": host_ip, "hport": hostside.port}
        status, events = api_build(hb, {"name": "probe-test", "commands": [f"python3 -c '{probe}'"]})
        assert status == 200 and events[-1]["event"] == "done", events
        name = events[-1]["image"]["name"]
        r = hb.sandbox("cat", "/opt/probe.json", opts=("--image", name), check=True)
        result = json.loads(out(r))
        assert "Connection refused" in result["own-loopback"], result
        assert result["loopback"][0] == 403 and "loopback address" in result["loopback"][1], result
        assert result["host"][0] == 403, result
        assert result["direct"] == errno.ENETUNREACH, result
        assert loop.paths == [] and hostside.paths == []
        hb.hearth("image", "rm", name)
    finally:
        loop.close()
        hostside.close()
