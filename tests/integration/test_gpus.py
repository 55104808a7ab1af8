"""Whole GPUs per replica (`limits: {gpu: N}`, also `nvidia.com/gpu`), on a
fake NVIDIA layout: a CDI spec of kind nvidia.com/gpu whose GPUs are
harmless real devices this host lets root open (GPU 0 is /dev/fuse shown as
/dev/nvidia0, GPU 1 is /dev/net/tun shown as /dev/nvidia1) and whose
driver library is a file the test writes. Two replicas with one GPU each
get different GPUs and can open only their own; admission counts GPUs;
a removed environment's GPUs are free again."""
import json
import os
import shutil
import tempfile
import textwrap

import pytest

from conftest import TMP, api, running_daemon
from test_actors import upload_code
from test_scaling import finished
from test_cdi import host_has_devices

PROBE = textwrap.dedent('''
    import errno, os, time

    def gpu_view(hold=0.0):
        def try_open(path):
            try:
                os.close(os.open(path, os.O_RDWR))
                return "ok"
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e.errno))
        time.sleep(hold)
        return {"NVIDIA_VISIBLE_DEVICES": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "nvidia0": try_open("/dev/nvidia0"), "nvidia1": try_open("/dev/nvidia1"),
                "lib": open("/usr/lib/fake-nvidia/libcuda.so.1").read(),
                "link": os.readlink("/usr/lib/fake-nvidia/libcuda.so") if os.path.islink("/usr/lib/fake-nvidia/libcuda.so") else None,
                "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH"),
                "replica": os.environ.get("HEARTH_REPLICA")}
''')


@pytest.fixture(scope="module")
def layout():
    host_has_devices()
    base = tempfile.mkdtemp(prefix="hearth-gpu-", dir=TMP)
    lib = os.path.join(base, "libcuda.so.1")
    with open(lib, "w") as f:
        f.write("fake driver\n")
    spec = {
        "cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
        "containerEdits": {"mounts": [{"hostPath": lib, "containerPath": "/usr/lib/fake-nvidia/libcuda.so.1",
                                       "options": ["ro", "nosuid", "nodev", "bind"]}],
                           # As nvidia-ctk writes them; Hearth does these two itself.
                           "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk",
                                      "args": ["nvidia-ctk", "hook", "update-ldcache", "--folder", "/usr/lib/fake-nvidia"]},
                                     {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
                                      "args": ["nvidia-cdi-hook", "create-symlinks",
                                               "--link", "libcuda.so.1::/usr/lib/fake-nvidia/libcuda.so"]},
                                     {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
                                      "args": ["nvidia-cdi-hook", "disable-device-node-modification"]}]},
        "devices": [
            {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0", "hostPath": "/dev/fuse"}]}},
            {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia1", "hostPath": "/dev/net/tun"}]}},
            {"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0", "hostPath": "/dev/fuse"},
                                                               {"path": "/dev/nvidia1", "hostPath": "/dev/net/tun"}]}},
        ],
    }
    cdi = os.path.join(base, "cdi")
    os.makedirs(cdi)
    with open(os.path.join(cdi, "nvidia.json"), "w") as f:
        json.dump(spec, f)
    yield cdi
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def gd(layout):
    yield from running_daemon("hearth-gpu", extra_args=["--cdi-spec-dir", layout])


@pytest.fixture(scope="module")
def code(gd):
    return upload_code(gd, {"probe.py": PROBE})


def submit(d, env, code, **kwargs):
    status, body = api(d.socket, "POST", f"/v1/environments/{env}/tasks",
                       {"module": "probe", "function": "gpu_view", "kwargs": kwargs, "bundle": code, "wait": False})
    assert status == 202, body
    return body["id"]


def wait(d, tid):
    return finished(d, [tid])[0]


def test_two_replicas_get_one_gpu_each_and_open_only_their_own(gd, code):
    r = gd.hearth("apply", "-f", "-", input=b"name: gpu-pair\nreplica_count: 2\nlimits: {nvidia.com/gpu: 1}\n",
                  check=False)
    assert r.returncode == 0, r.stderr
    a, b = [wait(gd, t) for t in [submit(gd, "gpu-pair", code, hold=1.5), submit(gd, "gpu-pair", code, hold=1.5)]]
    assert a["state"] == b["state"] == "succeeded", (a, b)
    va, vb = a["result"], b["result"]
    assert va["replica"] != vb["replica"], (va, vb)
    assert {va["NVIDIA_VISIBLE_DEVICES"], vb["NVIDIA_VISIBLE_DEVICES"]} == {"0", "1"}, (va, vb)
    for v in (va, vb):
        own, other = ("nvidia0", "nvidia1") if v["NVIDIA_VISIBLE_DEVICES"] == "0" else ("nvidia1", "nvidia0")
        assert v[own] == "ok" and v[other] == "ENOENT", v
        assert v["CUDA_VISIBLE_DEVICES"] == "0" and v["lib"] == "fake driver\n", v
        assert v["link"] == "libcuda.so.1" and v["LD_LIBRARY_PATH"] == "/usr/lib/fake-nvidia", v
    st = json.loads(gd.hearth("status", "gpu-pair", "--json").stdout)
    held = sorted(g for rep in st["replicas"] for g in rep.get("gpus", []))
    assert held == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"], st
    assert "GPUS" in gd.hearth("status", "gpu-pair").stdout.decode()


def test_admission_counts_gpus_and_removal_frees_them(gd, code):
    assert gd.hearth("apply", "-f", "-", input=b"name: gpu-pair\nreplica_count: 2\nlimits: {nvidia.com/gpu: 1}\n",
                     check=False).returncode == 0
    r = gd.hearth("apply", "-f", "-", input=b"name: gpu-more\nlimits: {gpu: 1}\n", check=False)
    msg = r.stderr.decode()
    assert r.returncode != 0 and "gpu 1 = 1 GPUs, plus 2 already admitted" in msg and "exceeds the 2" in msg, msg
    r = gd.hearth("apply", "-f", "-", input=b"name: gpu-three\nreplica_count: 3\nlimits: {gpu: 1}\n", check=False)
    assert r.returncode != 0 and "replica_count 3 × gpu 1 = 3 GPUs" in r.stderr.decode(), r.stderr
    gd.hearth("rm", "gpu-pair")
    r = gd.hearth("apply", "-f", "-", input=b"name: gpu-more\nlimits: {gpu: 2}\n", check=False)
    assert r.returncode == 0, r.stderr
    snap = wait(gd, submit(gd, "gpu-more", code))
    assert snap["state"] == "succeeded", snap
    v = snap["result"]
    assert v["NVIDIA_VISIBLE_DEVICES"] == "0,1" and v["CUDA_VISIBLE_DEVICES"] == "0,1", v
    assert v["nvidia0"] == "ok" and v["nvidia1"] == "ok", v
    gd.hearth("rm", "gpu-more")


def test_no_gpu_asked_sees_none(gd, code):
    assert gd.hearth("apply", "-f", "-", input=b"name: gpu-none\n", check=False).returncode == 0
    v = wait(gd, submit(gd, "gpu-none", code))
    assert v["state"] == "failed" and "fake-nvidia" in v["error"]["message"], v  # no driver library either
    status, body = api(gd.socket, "POST", "/v1/environments/gpu-none/tasks",
                       {"module": "os", "function": "listdir", "kwargs": {"path": "/dev"}, "wait": True})
    assert status == 200 and not any(n.startswith("nvidia") for n in body["result"]), body


# -- no CDI spec: nodes found the way nvidia-ctk finds them ------------------------------

@pytest.fixture(scope="module")
def fake_dev():
    """A /dev with NVIDIA's names on harmless devices: nvidia0 is fuse's
    numbers, nvidiactl null's."""
    host_has_devices()
    base = tempfile.mkdtemp(prefix="hearth-nvdev-", dir=TMP)
    dev = os.path.join(base, "dev")
    os.makedirs(dev)
    os.mknod(os.path.join(dev, "nvidia0"), 0o666 | 0o020000, os.makedev(10, 229))
    os.mknod(os.path.join(dev, "nvidiactl"), 0o666 | 0o020000, os.makedev(1, 3))
    empty = os.path.join(base, "cdi")
    os.makedirs(empty)
    yield dev, empty
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def nd(fake_dev):
    dev, empty = fake_dev
    yield from running_daemon("hearth-nvdev", extra_args=["--cdi-spec-dir", empty, "--nvidia-dev-dir", dev])


def test_without_a_cdi_spec_gpus_are_generated_from_the_nodes(nd, fake_dev):
    out = nd.hearth("devices").stdout.decode()
    assert "nvidia.com/gpu=0" in out and f"(generated from {fake_dev[0]}/nvidia*)" in out, out
    sha = upload_code(nd, {"probe.py": PROBE.replace('open("/usr/lib/fake-nvidia/libcuda.so.1").read()', '"-"')})
    assert nd.hearth("apply", "-f", "-", input=b"name: nv-gen\nlimits: {gpu: 1}\n", check=False).returncode == 0
    status, snap = api(nd.socket, "POST", "/v1/environments/nv-gen/tasks",
                       {"module": "probe", "function": "gpu_view", "kwargs": {}, "bundle": sha, "wait": True})
    assert status == 200 and snap["state"] == "succeeded", snap
    v = snap["result"]
    assert v["nvidia0"] == "ok" and v["NVIDIA_VISIBLE_DEVICES"] == "0", v
    status, ls = api(nd.socket, "POST", "/v1/environments/nv-gen/tasks",
                     {"module": "os", "function": "listdir", "kwargs": {"path": "/dev"}, "wait": True})
    assert "nvidiactl" in ls["result"], ls
    r = nd.hearth("apply", "-f", "-", input=b"name: nv-two\nlimits: {gpu: 2}\n", check=False)
    assert r.returncode != 0 and "exceeds the 1" in r.stderr.decode(), r.stderr
