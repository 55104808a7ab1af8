"""Unit tests of the SDK's pieces that need no daemon."""
import datetime
import enum
import io
import json
import os
import pickle
import socket
import sys
import tarfile
import time
import typing
import warnings

import pytest

import hearth
from hearth import _bundle, _client, _errors, _packages, _protocol, _results, _runner, _spec
from hearth._actor import ActorEnvironment, map_task
from hearth._results import RestrictedUnpickler as _RestrictedUnpickler
from hearth._client import Client
from hearth._typecheck import InputError, Signature, check_value
from hearth._workflow import LaunchPlan, SecretsManager, workflow


# -- type checks -------------------------------------------------------------------

def f(a: int, b: float = 1.0, names: typing.List[str] = (), opt: typing.Optional[int] = None,
      pair: tuple[int, str] = (1, "x"), m: dict[str, int] = {}) -> int:
    return a


@pytest.mark.parametrize("kwargs, message", [
    ({"a": "1"}, "input 'a': expected int, got str '1'"),
    ({"a": True}, "expected int, got bool"),
    ({"a": 1, "b": "x"}, "input 'b': expected float"),
    ({"a": 1, "names": ["a", 3]}, "names'[1]: expected str, got int"),
    ({"a": 1, "opt": "x"}, "input 'opt'"),
    ({"a": 1, "pair": (1, 2)}, "pair'[1]: expected str"),
    ({"a": 1, "pair": (1,)}, "expected a tuple of 2"),
    ({"a": 1, "m": {"k": "v"}}, "m'['k']: expected int"),
    ({"a": 1, "zzz": 1}, "unexpected keyword argument 'zzz' (its inputs: a, b, names, opt, pair, m)"),
    ({}, "missing required input 'a' (int)"),
])
def test_signature_refuses(kwargs, message):
    with pytest.raises(InputError) as e:
        Signature(f).bind((), kwargs)
    assert message in str(e.value)


def test_signature_accepts_and_fills_defaults():
    out = Signature(f).bind((), {"a": 1, "b": 2, "opt": None, "names": ["x"]})
    assert out["a"] == 1 and out["b"] == 2 and out["pair"] == (1, "x") and out["m"] == {}


def test_positional_arguments_bind_in_order_with_the_same_checks():
    # flytekit >= 1.13 takes positional task inputs.
    out = Signature(f).bind((1, 2), {"names": ["x"]})
    assert out["a"] == 1 and out["b"] == 2.0 and type(out["b"]) is float and out["names"] == ["x"]
    with pytest.raises(InputError, match=r"f\(\) input 'a': expected int, got str '1'"):
        Signature(f).bind(("1",), {})
    with pytest.raises(InputError, match=r"f\(\) got input 'a' twice"):
        Signature(f).bind((1,), {"a": 2})
    with pytest.raises(InputError, match=r"f\(\) takes 6 positional inputs \(a, b, names, opt, pair, m\) but 7 were given"):
        Signature(f).bind((1,) * 7, {})


def test_conform_gives_the_declared_types():
    from hearth._typecheck import conform

    assert type(conform(3, float, "x")) is float
    assert conform([1, 2], typing.List[float], "x") == [1.0, 2.0]
    assert type(conform({"a": 1}, dict[str, float], "x")["a"]) is float
    assert conform([1, "a"], tuple[float, str], "x") == (1.0, "a")
    assert type(conform(3, typing.Union[int, float], "x")) is int
    assert type(conform(3, typing.Optional[float], "x")) is float
    assert conform((x for x in "ab"), typing.Iterator[str], "x") == ["a", "b"]

    class Fit(typing.NamedTuple):
        slope: float

    fit = conform(2, Fit, "x")
    assert type(fit) is Fit and type(fit.slope) is float
    assert conform((2.5,), Fit, "x") == Fit(2.5)
    Pair = typing.NamedTuple("Pair", [("a", int), ("b", str)])
    assert type(conform((1, "b"), Pair, "x")) is Pair
    with pytest.raises(InputError, match=r"x\.a: expected int, got str"):
        conform(("1", "b"), Pair, "x")
    with pytest.raises(InputError, match=r"x: expected int, got bool True"):
        conform(True, int, "x")

    class Row(typing.TypedDict):
        a: int

    class Greeter(typing.Protocol):
        def greet(self) -> str: ...

    # What isinstance cannot check is taken as it is, not an error.
    assert conform({"a": 1}, Row, "x") == {"a": 1} and conform(3, Greeter, "x") == 3


def test_check_value_literals_unions_and_classes():
    check_value("a", typing.Literal["a", "b"], "x")
    with pytest.raises(InputError):
        check_value("c", typing.Literal["a", "b"], "x")
    check_value(3, int | str, "x")
    with pytest.raises(InputError):
        check_value(3.5, int | str, "x")
    check_value(datetime.date.today(), datetime.date, "x")
    check_value(object(), typing.Any, "x")


# -- bundles -----------------------------------------------------------------------

def _names(b):
    with tarfile.open(fileobj=io.BytesIO(b.data)) as t:
        return sorted(m.name for m in t.getmembers())


def test_bundle_is_deterministic_and_skips_what_is_not_code(tmp_path, monkeypatch):
    monkeypatch.setattr(_bundle, "RESCAN_SECONDS", 0)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "tasks.py").write_text("X = 1\n")
    (tmp_path / "pkg" / "tasks.cpython-311.pyc").write_bytes(b"junk")
    for d in (".git", "__pycache__", "node_modules", "venv"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_text("x")
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "link_in").symlink_to("pkg/tasks.py")
    (tmp_path / "link_out").symlink_to("/etc/passwd")
    b1 = _bundle.bundle_for(str(tmp_path))
    assert _names(b1) == ["link_in", "pkg", "pkg/__init__.py", "pkg/tasks.py"]
    with tarfile.open(fileobj=io.BytesIO(b1.data)) as t:
        for m in t.getmembers():
            assert m.mtime == 0 and m.uid == 0 and m.gid == 0
    os.utime(tmp_path / "pkg" / "tasks.py", (1, 1))  # touch: same content, same hash
    b2 = _bundle.bundle_for(str(tmp_path))
    assert b2.sha256 == b1.sha256
    (tmp_path / "pkg" / "tasks.py").write_text("X = 2\n")
    b3 = _bundle.bundle_for(str(tmp_path))
    assert b3.sha256 != b1.sha256


def test_bundle_size_cap_names_the_biggest_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_MAX_BUNDLE_BYTES", "1000")
    (tmp_path / "tasks.py").write_text("x = 1\n")
    (tmp_path / "data.bin").write_bytes(b"\0" * 5000)
    with pytest.raises(_errors.BundleError, match=r"over the 0\.0 MiB limit .*biggest files: data\.bin"):
        _bundle.bundle_for(str(tmp_path / ""))


def test_module_root():
    assert _bundle.module_root("app.tasks", "/p/app/tasks.py") == ("app.tasks", "/p")
    assert _bundle.module_root("app", "/p/app/__init__.py") == ("app", "/p")
    assert _bundle.module_root("job", "/p/job.py") == ("job", "/p")
    with pytest.raises(_errors.BundleError, match="no source file"):
        _bundle.module_root("x", None)


# -- specs --------------------------------------------------------------------------

# ImageSpec(packages=["pandas"])'s tag: the vector of the daemon's unit test
# (HearthCoreTests.ImageBuildSpecTests) and docs/design.md, "Image builds".
TAG_VECTOR = "4086UmQbtb_4e6YxM_aOQQ"


def test_environment_spec_translation():
    image = _spec.ImageSpec(registry="r.example", packages=["union", "flytekitplugins-pod"], env={"FROM_IMAGE": "1"})
    env = ActorEnvironment(name="e", replica_count=2, ttl_seconds=datetime.timedelta(minutes=5),
                           requests=_spec.Resources(cpu=1, mem="300Mi"), limits=_spec.Resources(mem="1Gi", gpu=1),
                           environment={"A": "b"}, container_image=image,
                           secret_requests=[_spec.Secret(key="tok"), "other"], timeout=30)
    assert env.spec() == {
        "name": "e", "replica_count": 2, "container_image": "hearth/python:3.11",
        "environment": {"FROM_IMAGE": "1", "A": "b"}, "requests": {"cpu": "1", "mem": "300Mi"},
        "limits": {"mem": "1Gi", "gpu": "1"}, "ttl_seconds": 300, "secret_requests": ["tok", "other"],
        "timeout": 30,
    }


def test_scaling_fields_and_flyte2_reuse_policy():
    env = ActorEnvironment(name="s", replicas=(1, 4), scaledown_ttl=datetime.timedelta(minutes=10), concurrency=8,
                           prewarm=True)
    assert env.spec() == {"name": "s", "replicas": {"min": 1, "max": 4}, "scaledown_ttl": 600, "concurrency": 8,
                          "prewarm": True}
    assert env.replica_count == 4
    # Flyte 2's spelling: idle_ttl is the per-replica ttl.
    flyte2 = ActorEnvironment(name="s", reusable=hearth.ReusePolicy(replicas=(0, 3), idle_ttl=30, scaledown_ttl=120,
                                                                    concurrency=2))
    assert flyte2.spec() == {"name": "s", "replicas": {"min": 0, "max": 3}, "ttl_seconds": 30, "scaledown_ttl": 120,
                             "concurrency": 2}
    # A fixed number stays replica_count; union's parallelism is concurrency.
    assert ActorEnvironment(name="s", replicas=3).spec() == {"name": "s", "replica_count": 3}
    assert ActorEnvironment(name="s", parallelism=4).spec()["concurrency"] == 4
    assert ActorEnvironment(name="s", replicas={"min": 2, "max": 5}).spec()["replicas"] == {"min": 2, "max": 5}
    for kwargs, message in [
        (dict(replica_count=2, replicas=(0, 4)), "replica_count 2 and replicas (0, 4) disagree"),
        (dict(replicas=(1, 2, 3)), "replicas: expected (min, max)"),
        (dict(replicas=("1", 2)), "replicas: min must be an int"),
        (dict(replicas={"min": 1}), "replicas: needs a max"),
        (dict(concurrency=0), "concurrency must be an int >= 1"),
        (dict(prewarm="yes"), "prewarm must be True or False"),
        (dict(parallelism=2, concurrency=3), "parallelism 2 and concurrency 3 disagree"),
        (dict(concurrency=2, reusable=hearth.ReusePolicy(concurrency=2)), "concurrency is given both directly and in reusable"),
        (dict(reusable={"replicas": 2}), "reusable must be a hearth.ReusePolicy"),
    ]:
        with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            ActorEnvironment(name="s", **kwargs)
    with pytest.raises(ValueError, match="scaledown_ttl must be whole seconds"):
        ActorEnvironment(name="s", scaledown_ttl=1.5).spec()


def test_mounts_in_the_spec():
    env = ActorEnvironment(name="m", mounts=[("/data/models", "/models"),
                                             {"host_path": "/data/out", "path": "/out", "read_only": False}])
    assert env.spec()["mounts"] == [{"host_path": "/data/models", "path": "/models"},
                                    {"host_path": "/data/out", "path": "/out", "read_only": False}]
    assert "mounts" not in ActorEnvironment(name="m").spec()
    assert ActorEnvironment(name="m", devices=["example.com/net=tun"]).spec()["devices"] == ["example.com/net=tun"]
    with pytest.raises(TypeError, match="devices must be a list of CDI device names"):
        ActorEnvironment(name="m", devices="example.com/net=tun")
    assert ActorEnvironment(name="m", preload=["numpy", "torch.nn"]).spec()["preload"] == ["numpy", "torch.nn"]
    assert ActorEnvironment(name="m", preload="numpy").spec()["preload"] == ["numpy"]
    assert "preload" not in ActorEnvironment(name="m").spec()
    with pytest.raises(TypeError, match="preload must be a list of module names"):
        ActorEnvironment(name="m", preload=[1])
    for mounts, message in [("/data", "expected a list of mounts"), ([("/d",)], r"expected \{host_path"),
                            ([{"host": "/d", "path": "/x"}], "unknown key 'host'"),
                            ([("/d", "/x", "yes")], "read_only must be True or False")]:
        with pytest.raises(TypeError, match=message):
            ActorEnvironment(name="m", mounts=mounts)


def test_pod_template_host_path_volumes():
    from kubernetes.client import V1Container, V1HostPathVolumeSource, V1PodSpec, V1Volume, V1VolumeMount
    t = _spec.PodTemplate(pod_spec=V1PodSpec(
        containers=[V1Container(name="primary", volume_mounts=[V1VolumeMount(name="m", mount_path="/models")])],
        volumes=[V1Volume(name="m", host_path=V1HostPathVolumeSource(path="/data/models"))]))
    spec = ActorEnvironment(name="v", pod_template=t).spec()
    assert spec["pod_template"]["pod_spec"] == {
        "containers": [{"name": "primary", "volumeMounts": [{"name": "m", "mountPath": "/models"}]}],
        "volumes": [{"name": "m", "hostPath": {"path": "/data/models"}}]}
    bad = _spec.PodTemplate(pod_spec={"containers": [{"name": "primary"}], "volumes": [{"name": "e", "emptyDir": {}}]})
    with pytest.raises(ValueError, match="only hostPath volumes are supported"):
        ActorEnvironment(name="v", pod_template=bad).spec()


def test_image_spec_that_needs_nothing_is_its_base():
    assert _spec.ImageSpec(packages=["union", "flytekitplugins-hearth>=0.1"]) == "hearth/python:3.11"
    # flytekit is a real package (the plugin's tasks import it): asked for, it is built.
    assert _spec.ImageSpec(packages=["union", "flytekit>=1.10"]) != "hearth/python:3.11"
    assert _spec.ImageSpec(base_image="img:1", env={"A": "1"}) == "img:1"
    assert _spec.image_builds(_spec.ImageSpec(packages=["union"])) == []


def test_image_pull_policy_is_passed_and_checked():
    env = ActorEnvironment(name="p", container_image="127.0.0.1:5000/app:1", image_pull_policy="Always")
    assert env.spec()["image_pull_policy"] == "Always"
    assert "image_pull_policy" not in ActorEnvironment(name="q").spec()
    with pytest.raises(ValueError, match="'always' is not a pull policy"):
        ActorEnvironment(name="r", image_pull_policy="always")
    pt = _spec.PodTemplate(pod_spec={"containers": [{"name": "primary", "image": "img:1", "imagePullPolicy": "Never"}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d, _, _ = _spec.pod_template_dict(pt)
    assert d["pod_spec"]["containers"][0]["imagePullPolicy"] == "Never"


def test_image_spec_that_needs_a_build_is_named_by_its_hash():
    from hearth import _images

    spec = _spec.ImageSpec(packages=["union", "pandas"], registry="localhost:5000/team")
    build, bundle, name = spec._hearth_build
    assert bundle is None
    assert build == {"name": "flytekit", "registry": "localhost:5000/team", "base_image": "hearth/python:3.11",
                     "python_version": None, "packages": ["union", "pandas"], "requirements": None,
                     "apt_packages": [], "pip_index": None, "pip_extra_index_url": [], "pip_extra_args": None,
                     "env": {}, "commands": [], "copy": None}
    # The fixed vector POST /v1/images/build computes too (docs/design.md, "Image builds").
    assert _images.spec_tag({"name": "flytekit", "registry": None, "base_image": "hearth/python:3.11",
                             "python_version": None, "packages": ["pandas"], "requirements": None,
                             "apt_packages": [], "pip_index": None, "pip_extra_index_url": [],
                             "pip_extra_args": None, "env": {}, "commands": [], "copy": None}) \
        == TAG_VECTOR
    assert spec == name == "localhost:5000/team/flytekit:" + _images.spec_tag(build)
    assert _spec.ImageSpec(packages=["union", "pandas"], registry="localhost:5000/team") == spec
    assert _spec.ImageSpec(packages=["pandas==2.1"], registry="localhost:5000/team") != spec
    assert _spec.image_builds(spec) == [spec] and _spec.image_builds(str(spec)) != []
    assert _spec.image_packages(spec) == []  # the build installs them
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy._hearth_build == spec._hearth_build


def test_image_spec_on_a_built_base_builds_on_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "requirements.txt").write_text("numpy>=1.24\n")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.txt").write_text("hello")
    base = _spec.ImageSpec(apt_packages=["jq"])
    top = _spec.ImageSpec(base_image=base, requirements="requirements.txt", copy=["conf"], commands=["true"])
    build, bundle, name = top._hearth_build
    assert build["base_image"] == str(base) and build["requirements"] == "numpy>=1.24\n"
    assert build["copy"] == {"bundle": bundle[0], "dest": "/root"}
    import io, tarfile
    names = tarfile.open(fileobj=io.BytesIO(bundle[1])).getnames()
    assert names == ["conf", "conf/a.txt"]
    with pytest.raises(ValueError, match="ImageSpec.copy: nope does not exist"):
        _spec.ImageSpec(copy=["nope"])
    with pytest.raises(ValueError, match="must be a relative path"):
        _spec.ImageSpec(copy=["/etc/passwd"])
    with pytest.raises(ValueError, match="ImageSpec.requirements: cannot read missing.txt"):
        _spec.ImageSpec(requirements="missing.txt")


def test_image_spec_warns_about_what_it_does_not_build():
    with pytest.warns(UserWarning, match="conda_packages: Hearth does not build it"):
        _spec.ImageSpec(conda_packages=["numpy"])


def test_pod_template_from_dict_and_warnings():
    pt = _spec.PodTemplate(primary_container_name="main", labels={"team": "ml"}, pod_spec={
        "containers": [{"name": "main", "image": "img:1", "env": [{"name": "K", "value": "v"}],
                        "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}}, "command": ["x"]}],
        "nodeSelector": {"a": "b"}})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d, packages, env = _spec.pod_template_dict(pt)
    assert d == {"primary_container_name": "main", "labels": {"team": "ml"}, "pod_spec": {"containers": [
        {"name": "main", "image": "img:1", "env": [{"name": "K", "value": "v"}],
         "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}}}]}}
    text = " ".join(str(x.message) for x in w)
    assert "nodeSelector not applied" in text and "command not applied" in text


def test_pod_template_value_from_is_refused():
    pt = _spec.PodTemplate(pod_spec={"containers": [{"name": "primary", "env": [{"name": "K", "valueFrom": {}}]}]})
    with pytest.raises(ValueError, match=r"env\[0\] \(K\): value_from is not supported"):
        _spec.pod_template_dict(pt)


def test_pod_template_with_kubernetes_models():
    models = pytest.importorskip("kubernetes.client.models")
    image = _spec.ImageSpec(packages=["union", "pyarrow"])
    assert image.startswith("flytekit:")
    pt = _spec.PodTemplate(primary_container_name="primary", pod_spec=models.V1PodSpec(containers=[
        models.V1Container(name="primary", image=image, env=[models.V1EnvVar(name="E", value="1")],
                           resources=models.V1ResourceRequirements(requests={"cpu": "1", "memory": "1Gi"}))]))
    d, packages, env = _spec.pod_template_dict(pt)
    c = d["pod_spec"]["containers"][0]
    assert c == {"name": "primary", "image": str(image), "env": [{"name": "E", "value": "1"}],
                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
    assert packages == []  # the build installs pyarrow


def test_k8s_stand_in_models():
    from hearth import _k8s_compat

    finder = _k8s_compat._Finder()
    spec = finder.find_spec("kubernetes.client.models")
    mod = type(sys)("kubernetes.client.models")
    finder.exec_module(mod)
    c = mod.V1Container(name="p", image="x")
    assert c.name == "p" and c.resources is None
    with pytest.raises(AttributeError, match="stand-in"):
        mod.__getattr__("not_a_model")
    assert spec.name == "kubernetes.client.models" and finder.find_spec("json") is None


# -- packages -----------------------------------------------------------------------

@pytest.mark.parametrize("installed, op, wanted, ok", [
    ("1.24.2", ">=", "1.24", True), ("1.24.2", "<", "1.24", False), ("2.0", "==", "2", True),
    ("1.10.3", "~=", "1.10", True), ("2.0", "~=", "1.10", False), ("1.2.9", "==", "1.2.*", True),
    ("1.3", "!=", "1.2.*", True), ("2.0rc1", ">=", "2.0", True), (None, ">=", "1", False),
])
def test_version_clauses(installed, op, wanted, ok):
    assert _packages.satisfies(installed, op, wanted) is ok


def test_missing_packages_messages():
    assert _packages.missing(["pytest", "union", "flytekitplugins-pod", "flytekitplugins_hearth", "hearth"], "img") == []
    msgs = _packages.missing(["no-such-dist-xyz", "pytest<1"], "img:1")
    assert "image img:1 does not provide the Python package 'no-such-dist-xyz'" in msgs[0]
    assert "image img:1 has pytest" in msgs[1] and "pytest<1 is required" in msgs[1]
    with pytest.raises(ValueError, match="not a package requirement"):
        _packages.parse("numpy; os.system('x')")


# -- errors and results --------------------------------------------------------------

def test_remote_exception_is_the_builtin_too():
    e = _errors.remote_exception("t", {"type": "ValueError", "module": "builtins", "message": "bad",
                                       "traceback": "Traceback ...\nValueError: bad\n"}, "t-1", "r-1", 2)
    assert isinstance(e, ValueError) and isinstance(e, _errors.TaskFailed)
    assert "task t (t-1, replica r-1, pid 2) failed: ValueError: bad" in str(e)
    assert "Remote traceback:" in str(e)
    k = _errors.remote_exception("t", {"type": "KeyError", "module": "builtins", "message": "'k'"})
    assert isinstance(k, KeyError) and "KeyError: 'k'" in str(k)
    custom = _errors.remote_exception("t", {"type": "Boom", "module": "app.errors", "message": "x"})
    assert type(custom).__name__ == "Boom" and "app.errors.Boom: x" in str(custom)
    assert isinstance(_errors.remote_exception("t", {"type": "Timeout", "message": "late"}), TimeoutError)
    assert not isinstance(_errors.remote_exception("t", {"type": "Timeout", "module": "app", "message": ""}),
                          TimeoutError)


class Point(typing.NamedTuple):
    x: int
    y: int


def test_restricted_unpickler():
    # More in test_results_hostile.py.
    ok = pickle.dumps({"when": datetime.datetime(2024, 1, 1), "s": {1, 2}, "p": Point(1, 2)})
    got = _RestrictedUnpickler(ok, _results.task_classes(typing.Dict[str, Point], __name__, __name__)).load()
    assert got["p"] == Point(1, 2)
    evil = b"cos\nsystem\n(S'true'\ntR."
    with pytest.raises(hearth.UnsafeResult, match="names os.system, which is not allowed"):
        _RestrictedUnpickler(evil, {}).load()


def test_protocol_decode_with_a_loader():
    enc = _protocol.encode_value({1, 2})
    assert _protocol.decode_value(enc, lambda raw: ("loaded", len(raw)))[0] == "loaded"


# -- client errors --------------------------------------------------------------------

def test_client_names_a_missing_socket(tmp_path):
    c = Client(str(tmp_path / "none.sock"))
    with pytest.raises(_errors.DaemonUnavailable, match=r"no socket at .*none\.sock\. Start it with `sudo hearthd &`"):
        c.call("GET", "/v1/version")


def test_client_names_a_stale_socket(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    with pytest.raises(_errors.DaemonUnavailable, match="nothing listens on"):
        Client(path).call("GET", "/v1/version")


def test_client_permission_message(monkeypatch, tmp_path):
    def refuse(self, addr):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(_errors.SocketPermissionError, match="group hearth"):
        Client(str(tmp_path / "x.sock")).call("GET", "/v1/version")


def _read_request(conn, buf):
    """Reads one request (head and Content-Length body) from a fake
    server's connection; returns what came after it."""
    while b"\r\n\r\n" not in buf:
        buf += conn.recv(65536)
    head, _, buf = buf.partition(b"\r\n\r\n")
    n = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(buf) < n:
        buf += conn.recv(65536)
    return buf[n:]


def test_client_keep_alive_and_error_bodies(tmp_path):
    """A tiny HTTP server on a Unix socket: two requests on one connection,
    then an error response becomes APIError with the daemon's code."""
    import threading

    path = str(tmp_path / "d.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    accepted = []

    def serve():
        conn, _ = srv.accept()
        accepted.append(1)
        buf = b""
        for status, body in ((200, b'{"ok":1}'), (404, b'{"error":{"code":"not_found","message":"no such env"}}')):
            buf = _read_request(conn, buf)
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    c = Client(path)
    assert c.call("POST", "/v1/x", {"a": 1}) == {"ok": 1}
    with pytest.raises(_errors.APIError) as e:
        c.call("GET", "/v1/environments/zz", what="status of zz")
    t.join()
    assert e.value.code == "not_found" and "status of zz: no such env" in str(e.value)
    assert accepted == [1]


def test_client_sends_again_what_an_upgrading_daemon_refused(tmp_path, monkeypatch):
    """A 503 `upgrading` (nothing was acted on) is sent again, and so is a
    request refused at connect by a daemon that answered before (between
    binaries); a plain stale socket still fails at once."""
    import threading

    monkeypatch.setenv("HEARTH_RECONNECT_TIMEOUT", "20")
    path = str(tmp_path / "u.sock")
    up = b'{"error":{"code":"upgrading","message":"hearthd is handing over"}}'
    got = []

    def listen():
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(4)
        return srv

    def answer(srv, replies):
        conn, _ = srv.accept()
        buf = b""
        for status, body in replies:
            buf = _read_request(conn, buf)
            got.append(status)
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        conn.close()

    srv = listen()

    def first():
        answer(srv, [(200, b'{"n":1}'), (503, up), (503, up)])
        srv.close()  # the old binary is gone: connects are refused for a while
        time.sleep(0.5)
        os.unlink(path)
        new = listen()
        answer(new, [(200, b'{"n":2}')])
        new.close()

    t = threading.Thread(target=first)
    t.start()
    c = Client(path)
    assert c.call("GET", "/v1/version") == {"n": 1}
    assert c.call("POST", "/v1/environments/e/tasks", {"id": "c-1"}) == {"n": 2}
    t.join()
    assert got == [200, 503, 503, 200]
    with pytest.raises(_errors.DaemonUpgrading):
        _client._answer(503, up, "POST", "/v1/x", None)


def test_client_reads_every_response_shape(tmp_path):
    """The warm path's head (Content-Type, Content-Length), other heads,
    a chunked body, a 3 MiB body sent in small pieces, two responses in
    one send, and `Connection: close`, all on one client."""
    import threading

    path = str(tmp_path / "d.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(2)
    big = b'{"data":"' + b"x" * (3 << 20) + b'"}'

    def serve():
        conn, _ = srv.accept()
        buf = _read_request(conn, b"")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n"
                     b'{"ok":1}')
        buf = _read_request(conn, buf)
        conn.sendall(b"HTTP/1.1 201 Created\r\nX-Other: 1\r\ncontent-length: 8\r\n\r\n{\"ok\":2}")
        buf = _read_request(conn, buf)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"ok\r\n"
                     b"3\r\n\":3\r\n1\r\n}\r\n0\r\n\r\n")
        buf = _read_request(conn, buf)
        data = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(big) + big
        for i in range(0, len(data), 7000):
            conn.sendall(data[i:i + 7000])
        buf = _read_request(conn, buf)
        buf = _read_request(conn, buf)
        one = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"ok\":%d}"
        conn.sendall(one % 5 + one % 6)
        buf = _read_request(conn, buf)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n"
                     b"Connection: close\r\n\r\n{\"ok\":7}")
        conn.close()
        conn, _ = srv.accept()  # the client reconnects after the close
        _read_request(conn, b"")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n"
                     b'{"ok":8}')
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    c = Client(path)
    assert c.call("POST", "/v1/x", {"a": 1}) == {"ok": 1}
    assert c.call("POST", "/v1/x", {"a": 2}) == {"ok": 2}
    assert c.call("POST", "/v1/x", {"a": 3}, timeout=30) == {"ok": 3}
    assert c.call("GET", "/v1/big")["data"] == "x" * (3 << 20)
    # Two requests written before either answer is read (pipelined by hand).
    sock = c._local.sock
    sock.sendall(b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    sock.sendall(b"GET /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert c._response(sock) == (200, b'{"ok":5}')
    assert c._response(sock) == (200, b'{"ok":6}')
    assert c.call("GET", "/v1/x") == {"ok": 7}
    assert getattr(c._local, "sock", None) is None
    assert c.call("GET", "/v1/x") == {"ok": 8}
    t.join()
    srv.close()

# -- workflows, launch plans, secrets, map_task inside a worker -------------------------

def test_workflow_and_launch_plan_run_locally():
    @workflow
    def wf(name: str, times: int = 2) -> str:
        return " ".join([name] * times)

    assert wf(name="a") == "a a" and wf("a", 1) == "a"
    with pytest.raises(InputError):
        wf(1)
    lp = LaunchPlan.get_default_launch_plan(None, wf)
    assert lp(name="b") == "b b" and LaunchPlan.get_default_launch_plan(None, wf) is lp
    fixed = LaunchPlan.get_or_create(wf, name="fixed", fixed_inputs={"times": 3})
    assert fixed(name="c") == "c c c"
    with pytest.raises(TypeError, match="fixed"):
        fixed(name="c", times=1)


def test_secrets_manager(tmp_path, monkeypatch):
    (tmp_path / "tok").write_text("v1")
    s = SecretsManager(str(tmp_path))
    assert s.get(key="tok") == "v1"
    monkeypatch.setenv("HEARTH_SECRET_OTHER_KEY", "v2")
    assert s.get(key="other-key") == "v2"
    with pytest.raises(ValueError, match="secret 'nope' is not available"):
        s.get(key="nope")
    with pytest.raises(ValueError, match="not valid"):
        s.get(key="../etc")


_menv = ActorEnvironment(name="m")


@_menv.task
def g(x: int, y: int = 0) -> int:
    return x + y


def test_map_task_inputs_are_checked():
    m = map_task(g)
    with pytest.raises(InputError, match="different lengths"):
        m(x=[1, 2], y=[1])
    with pytest.raises(InputError, match="expected a list to map over"):
        m(x=[1], y=2)
    with pytest.raises(InputError, match="element 1: .*expected int"):
        m(x=[1, "2"])
    import functools

    assert len(map_task(functools.partial(g, y=1))._inputs((), {"x": [1, 2]})) == 2


def test_tasks_must_be_top_level():
    env = ActorEnvironment(name="m")
    with pytest.raises(TypeError, match="top level of a module"):
        @env.task
        def local() -> int:
            return 1


# -- runner ---------------------------------------------------------------------------

class Colour(enum.Enum):
    RED = "red"


@pytest.mark.parametrize("text, hint, value", [
    ("0", int, 0), ("0x10", int, 16), ("1.5", float, 1.5), ("yes", bool, True), ("0", bool, False),
    ("Ada", str, "Ada"), ("[1, 2]", list[int], [1, 2]), ('{"a": 1}', dict[str, int], {"a": 1}),
    ("none", typing.Optional[int], None), ("3", typing.Optional[int], 3), ("red", Colour, Colour.RED),
    ("RED", Colour, Colour.RED), ("2024-01-02", datetime.date, datetime.date(2024, 1, 2)),
    ("[1, \"a\"]", tuple[int, str], (1, "a")),
])
def test_parse_value(text, hint, value):
    assert _runner.parse_value(text, hint, "x") == value


def test_parse_value_errors_name_the_flag():
    with pytest.raises(_runner.UsageError, match=r"--my-input: 'x' is not a valid int"):
        _runner.parse_value("x", int, "my_input")


def test_format_outputs():
    assert _runner.format_outputs(None) == []
    assert _runner.format_outputs(4) == ["4"]
    assert _runner.format_outputs(("a", "b")) == ["a", "b"]
    assert _runner.format_outputs(Point(1, 2)) == ["x: 1", "y: 2"]
    assert _runner.format_outputs({"a": [1]}) == ['{"a": [1]}']


def test_lazy_names():
    assert set(["ActorEnvironment", "workflow", "map_task", "ImageSpec"]) <= set(dir(hearth))
    with pytest.raises(AttributeError):
        hearth.nope
