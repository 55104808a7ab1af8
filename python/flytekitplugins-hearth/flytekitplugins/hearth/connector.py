"""The Flyte connector for ``hearth-actor`` tasks: a Flyte cluster's
executions of ``@env.task`` run in the warm replicas of a node's hearthd.

flytepropeller hands a connector service (``hearth-connector``, or
``pyflyte serve connector`` with this plugin installed) the task's template
and input literals; ``HearthConnector``:

``create``
    builds the images the template's ``custom`` names (``images``, once per
    process), applies its ``environment`` spec (the SDK's apply: once per
    process, again when hearthd lost or replaced it), ships the code and
    posts one task running ``flytekitplugins.hearth._runtime.run`` on the
    input literals, as the caller's side does (``_task.task_request``). The
    code: when the container's args carry flytekit's fast-registration
    distribution (``pyflyte-fast-execute --additional-distribution URL`` or
    ``--dynamic-addl-distro URL``), it is downloaded with flytekit's file
    access (``file://``, ``s3://``, … as the container would), unpacked and
    uploaded to hearthd as the task's code bundle; otherwise the module must
    be importable in the image. The task id is derived from Flyte's task
    execution id when there is one, so a create that propeller sends again
    is the same hearthd task, not a second run.
``get``
    maps the task's state to a phase (``PHASES``); a succeeded task's
    outputs are its LiteralMap, files sent back by the replica written
    locally and, when the output prefix is remote, uploaded under it.
``delete``
    cancels the task (``DELETE /v1/tasks/{id}``; one hearthd no longer
    knows is already gone).

hearthd is reached through the SDK's client (``hearth._client.client()``:
``HEARTH_SOCKET``, default ``/run/hearth/hearthd.sock``, or ``HEARTH_HOST``).

Many nodes (``HEARTH_NODES=tcp://a:7443,tcp://b:7443,…``, each with the
same ``HEARTH_TLS_*`` client certificate): an environment is placed on one
node (``Nodes``: among the nodes whose free cpu, memory and GPUs in
``GET /v1/info`` cover its reservation, the one with the most free memory,
then the fewest environments; the next one when admission refuses it)
and stays there while the node answers, so its tasks find its warm
replicas. A node that does not answer (a connect refused or reset for
longer than ``HEARTH_RECONNECT_TIMEOUT``) is marked down: ``get`` reports
its tasks ``RETRYABLE_FAILED``, flytepropeller retries them, and the retry's
``create`` places the environment on another node (docs/multi-node.md).
"""

import asyncio
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import types
import typing
from collections import OrderedDict
from dataclasses import dataclass

from flyteidl.core.execution_pb2 import TaskExecution
from flytekit.extend.backend.base_connector import AsyncConnectorBase, ConnectorRegistry, Resource, ResourceMeta
from hearth import _actor, _bundle, _images
from hearth._errors import BundleError, DaemonUnavailable, EnvironmentRefused, ResultExpired, SocketPermissionError

from flytekitplugins.hearth import _literals
from flytekitplugins.hearth._task import TASK_TYPE, task_outputs, task_request

__all__ = ["HearthConnector", "HearthMetadata", "HearthUnreachable", "Nodes", "PHASES", "code_distribution", "phase"]

# hearthd's task states (docs/protocol.md, 2.6) as Flyte's phases. A
# function's exception and a replica lost mid-task are retryable: the task's
# `retries` apply, as to any Flyte task (FAILED would end the execution).
PHASES = {
    "queued": TaskExecution.RUNNING,
    "running": TaskExecution.RUNNING,
    "succeeded": TaskExecution.SUCCEEDED,
    "failed": TaskExecution.RETRYABLE_FAILED,
    "lost": TaskExecution.RETRYABLE_FAILED,
    "cancelled": TaskExecution.FAILED,
}

_DISTRIBUTION_FLAGS = ("--additional-distribution", "--dynamic-addl-distro")
_PICKLED = "pkl.gz"  # flytekit's PICKLE_FILE_PATH: an interactive session's pickled task, not code


class HearthUnreachable(ConnectionError):
    """hearthd does not answer on the connector's socket."""


@dataclass
class HearthMetadata(ResourceMeta):
    """What ``create`` hands propeller back: the hearthd task and where its code came from."""

    task_id: str
    environment: str
    task: str = ""  # module.function, for messages
    code: str = "image"  # "distribution": the fast-registration tarball as the task's bundle
    distribution: typing.Optional[str] = None
    bundle: typing.Optional[str] = None
    output_prefix: typing.Optional[str] = None
    node: str = ""  # the hearthd the task was posted to ("": the default one)


class Nodes(object):
    """The hearthd daemons a connector places environments on, and where
    each environment is. One node (the SDK's default daemon) unless
    ``HEARTH_NODES`` lists several."""

    # A node marked down is tried again after this long (it may be back).
    RETRY_DOWN_SECONDS = 30.0

    def __init__(self, addresses):
        self.addresses = [a for a in addresses if a]
        if not self.addresses:
            raise ValueError("HEARTH_NODES: no node address in it (tcp://HOST:PORT or a socket path, comma-separated)")
        self._lock = threading.Lock()
        self._placed = {}  # environment name -> address
        # environment name -> (address, bytes it will hold): placements whose
        # create is under way, not yet in that node's GET /v1/info
        self._pending = {}
        self._down = {}  # address -> (time.monotonic() when marked, why)
        self.moves = 0  # environments placed again after their node was lost
        self.log = []  # (time.time(), event, environment or None, address, detail)

    @classmethod
    def from_environment(cls, env=None):
        from hearth import _client

        env = os.environ if env is None else env
        raw = env.get("HEARTH_NODES", "")
        if not raw.strip():
            return cls([_client.default_socket(env)])
        nodes = [a.strip() for a in raw.split(",") if a.strip()]
        for a in nodes:
            _client._tcp_address(a)  # a malformed address is named now, not at the first task
        return cls(nodes)

    def client(self, address):
        return _actor._client_for(address)

    def where(self, environment):
        with self._lock:
            return self._placed.get(environment)

    def candidates(self, environment, need=None):
        """Addresses to try for ``environment``, best first: where it is
        placed (while that node is up), else the nodes that answer
        ``GET /v1/info``: those whose free cpu, memory and GPUs cover
        ``need`` (``reservation``'s) before those that do not (their
        admission will say why), then by free memory (most first), then
        environments (fewest first). Placements under way count as if
        admitted, so that creates at once spread instead of all taking the
        node that was emptiest before any of them; the first address is
        recorded as this one's, until ``placed`` or ``release``."""
        need = need or {}
        with self._lock:
            placed = self._placed.get(environment)
            down = dict(self._down)
            pending = self._pending.get(environment)
        if placed is not None and placed not in down:
            return [placed]
        if pending is not None and pending[0] not in down:
            return [pending[0]]  # another create is placing it there: one node per environment
        if len(self.addresses) == 1:
            return list(self.addresses)
        now = time.monotonic()
        answers = []
        for address in self.addresses:
            marked = down.get(address)
            if marked is not None and now - marked[0] < self.RETRY_DOWN_SECONDS:
                continue
            try:
                info = self.client(address).call("GET", "/v1/info", what="capacity of node %s" % address, timeout=10)
            except (DaemonUnavailable, SocketPermissionError, OSError) as e:
                self.mark_down(address, e)
                continue
            with self._lock:
                self._down.pop(address, None)
            free = info.get("free") or {}
            answers.append((address, {k: int(free.get(k, 0)) for k in RESOURCES}, int(info.get("environments", 0))))
        with self._lock:
            pending = self._pending.get(environment)
            if pending is not None and pending[0] in [a for a, _, _ in answers]:
                return [pending[0]]
            ranked = []
            for address, free, count in answers:
                others = [n for e, (a, n) in self._pending.items() if a == address and e != environment]
                left = {k: free[k] - sum(n.get(k, 0) for n in others) for k in RESOURCES}
                fits = all(left[k] >= need.get(k, 0) for k in RESOURCES)
                ranked.append((0 if fits else 1, -left["memoryBytes"], count + len(others), address))
            order = [a for _, _, _, a in sorted(ranked)]
            if order:
                self._pending[environment] = (order[0], need)
        return order

    def placing(self, environment, address, need=None):
        """A create tries ``address`` for ``environment`` (the next
        candidate after the first refused it)."""
        with self._lock:
            self._pending[environment] = (address, need or {})

    def release(self, environment):
        """A create ended without placing ``environment``."""
        with self._lock:
            self._pending.pop(environment, None)

    def placed(self, environment, address):
        with self._lock:
            self._pending.pop(environment, None)
            before = self._placed.get(environment)
            self._placed[environment] = address
            if before is not None and before != address:
                self.moves += 1
                self.log.append((time.time(), "moved", environment, address, "from " + before))
            elif before is None:
                self.log.append((time.time(), "placed", environment, address, ""))

    def mark_down(self, address, why):
        """``address`` did not answer: its environments are to be placed
        again (they keep their old address until then, so a move is counted)."""
        with self._lock:
            if address not in self._down:
                self.log.append((time.time(), "down", None, address, str(why)[:300]))
            self._down[address] = (time.monotonic(), str(why))

    def is_down(self, address):
        with self._lock:
            return address in self._down


def phase(state):
    """Flyte's phase for a hearthd task state."""
    try:
        return PHASES[state]
    except KeyError:
        raise ValueError("hearthd task state %r is not one of %s" % (state, ", ".join(PHASES))) from None


def code_distribution(args):
    """The fast-registration distribution a container's ``args`` name
    (``--additional-distribution URL``, ``--dynamic-addl-distro URL``, or
    ``=URL``), or None. A placeholder flytectl did not fill in, a pickled
    task and anything but a ``.tar.gz`` are refused by name."""
    url = None
    args = list(args or [])
    for i, arg in enumerate(args):
        for flag in _DISTRIBUTION_FLAGS:
            if arg == flag:
                if i + 1 >= len(args):
                    raise ValueError("container args: %s has no value" % flag)
                value = args[i + 1]
            elif arg.startswith(flag + "="):
                value = arg[len(flag) + 1:]
            else:
                continue
            if "{{" in value:
                raise ValueError("container args: %s %s is a placeholder, not a location; register the task with "
                                 "fast registration (pyflyte register) so it names the uploaded code" % (flag, value))
            if os.path.basename(value) == _PICKLED:
                raise ValueError("container args: %s %s is a pickled task (an interactive session's); a hearth "
                                 "replica imports its task's module, so register it from a module" % (flag, value))
            if not value.endswith(".tar.gz"):
                raise ValueError("container args: %s %s is not a fast-registration tarball (.tar.gz)" % (flag, value))
            if url is not None and value != url:
                raise ValueError("container args name two distributions, %s and %s" % (url, value))
            url = value
    return url


def task_id_for(task_execution_metadata):
    """hearthd's task id for one Flyte task execution (a retry is another),
    so a create propeller repeats finds the task the first one made; a
    fresh id of the SDK's when there is no execution id (local runs)."""
    from hearth import _client

    ident = getattr(task_execution_metadata, "task_execution_id", None)
    if ident is None:
        return _client.task_id()
    raw = ident.to_flyte_idl().SerializeToString(deterministic=True)
    if not raw:
        return _client.task_id()
    return "flyte-" + hashlib.sha256(raw).hexdigest()[:40]


def _custom(task_template):
    """(environment spec, images, module, function) of a template's custom, checked."""
    where = "task %s: template custom" % getattr(getattr(task_template, "id", None), "name", "?")
    custom = task_template.custom or {}
    env = custom.get("environment")
    if not isinstance(env, dict) or not isinstance(env.get("name"), str) or not env.get("name"):
        raise ValueError("%s: \"environment\" must be an environment spec with a name (HearthFunctionTask.get_custom "
                         "writes it), got %r" % (where, env))
    for field in ("module", "function"):
        if not isinstance(custom.get(field), str) or not custom.get(field):
            raise ValueError("%s: %r must be a non-empty string, got %r" % (where, field, custom.get(field)))
    images = custom.get("images") or []
    if not isinstance(images, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                               and isinstance(i.get("spec"), dict) for i in images):
        raise ValueError("%s: \"images\" must be a list of {\"name\", \"spec\"} build requests, got %r"
                         % (where, images))
    return env, images, custom["module"], custom["function"]


_build_locks = {}  # (node, image name) -> threading.Lock
_build_locks_lock = threading.Lock()


def _build_lock(address, image):
    with _build_locks_lock:
        return _build_locks.setdefault((address, image), threading.Lock())


_UNITS = {"": 1, "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12,
          "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


# What GET /v1/info counts, and what a placement needs of each.
RESOURCES = ("cpuMilli", "memoryBytes", "gpus")


def reservation(spec):
    """What admission holds for an environment spec, as GET /v1/info counts
    it: every replica at its memory limit (its request without one), its
    cpu request and its GPUs. An amount the spec does not name (or this
    estimate cannot read) is 0: the node's admission has the last word."""
    def amount(section, keys, scale):
        r = spec.get(section) or {}
        value = next((r[k] for k in keys if r.get(k) is not None), None)
        if value is None:
            return None
        m = re.match(r"^\s*([0-9.]+)\s*(m|[kMGT]i?)?\s*$", str(value))
        if not m:
            return None
        try:
            return int(float(m.group(1)) * scale(m.group(2) or ""))
        except (ValueError, KeyError):
            return None

    memory_unit = lambda u: _UNITS[u]  # noqa: E731
    cpu_unit = lambda u: {"": 1000, "m": 1}[u]  # noqa: E731
    memory = amount("limits", ("memory", "mem"), memory_unit)
    if memory is None:
        memory = amount("requests", ("memory", "mem"), memory_unit) or 0
    cpu = amount("requests", ("cpu",), cpu_unit) or 0
    gpus = (amount("requests", ("gpu", "gpus"), lambda u: {"": 1}[u]) or
            amount("limits", ("gpu", "gpus"), lambda u: {"": 1}[u]) or 0)
    replicas = spec.get("replicas")
    count = replicas.get("max", 1) if isinstance(replicas, dict) else spec.get("replica_count", 1)
    try:
        count = int(count)
    except (TypeError, ValueError):
        count = 1
    return {"cpuMilli": cpu * count, "memoryBytes": memory * count, "gpus": gpus * count}


class _SpecEnvironment(_actor.ActorEnvironment):
    """An environment known by its spec alone (a template's custom), with
    the SDK's apply, identity and re-apply-when-stale rules."""

    def __init__(self, spec, images):
        super().__init__(spec["name"])
        self._spec = spec
        self._images = images

    def spec(self):
        return dict(self._spec)

    def apply(self, client=None):
        c = client or _actor._client_for(None)
        for image in self._images:
            copy = (image["spec"].get("copy") or {}).get("bundle")
            if copy and c.call("GET", "/v1/code/" + copy, what="code bundle", not_found=False) is False:
                raise ValueError("image %s: its ImageSpec.copy files (code bundle %s) are not on hearthd at %s; "
                                 "apply the environment once from where those files are, or build the image there"
                                 % (image["name"], copy, c.path))
            # The SDK's build (once per process, its progress and errors), of a plan read from the template;
            # one at a time per node and image, so environments created at once sharing it build it once.
            with _build_lock(c.path, image["name"]):
                _images.ensure_built(types.SimpleNamespace(_hearth_build=(image["spec"], None, image["name"]),
                                                           base_image=None), c)
        return super().apply(c)


class HearthConnector(AsyncConnectorBase):
    """flytekit's async connector for task type ``hearth-actor``."""

    name = "Hearth Connector"

    def __init__(self, nodes=None):
        super().__init__(task_type_name=TASK_TYPE, metadata_type=HearthMetadata)
        self.nodes = nodes if nodes is not None else Nodes.from_environment()
        self._lock = threading.Lock()
        self._environments = OrderedDict()  # spec and images (JSON) -> _SpecEnvironment, newest last
        self._distributions = OrderedDict()  # distribution URL -> bundle sha256 uploaded from it

    # -- flytekit's interface: blocking work off the server's event loop ----------

    async def create(self, task_template, output_prefix, inputs=None, task_execution_metadata=None, **kwargs):
        return await _off_loop(self._create, task_template, output_prefix, inputs, task_execution_metadata)

    async def get(self, resource_meta, **kwargs):
        return await _off_loop(self._get, resource_meta)

    async def delete(self, resource_meta, **kwargs):
        return await _off_loop(self._delete, resource_meta)

    # -- the work -------------------------------------------------------------------

    def _create(self, task_template, output_prefix, inputs, task_execution_metadata):
        spec, images, module, function = _custom(task_template)
        container = getattr(task_template, "container", None)
        url = code_distribution(container.args if container is not None else [])
        tid = task_id_for(task_execution_metadata)
        what = "task %s.%s (hearthd task %s)" % (module, function, tid)
        env = self._environment(spec, images)
        timeout = getattr(getattr(task_template, "metadata", None), "timeout", None)
        try:
            return self._place(env, url, tid, what, module, function, inputs, timeout, output_prefix)
        finally:
            self.nodes.release(env.name)  # placed, or no node took it: no longer under way

    def _place(self, env, url, tid, what, module, function, inputs, timeout, output_prefix):
        """Posts the task on the environment's node, placing it first when it has none (up)."""
        from flytekit.models.literals import LiteralMap

        many = len(self.nodes.addresses) > 1
        refusals = []
        need = reservation(env.spec())
        for address in self.nodes.candidates(env.name, need):
            self.nodes.placing(env.name, address, need)
            try:
                with _reaching(what, address if many else None, self.nodes if many else None) as c:
                    env._ensure(c)
                    bundle = self._bundle(c, url) if url else None
                    body = task_request(module, function, inputs if inputs is not None else LiteralMap(literals={}),
                                        bundle, timeout)
                    body["id"] = tid
                    snap = env._post(c, "/v1/environments/%s/tasks" % env.name, body, what)
            except HearthUnreachable as e:
                if not many:
                    raise
                refusals.append("%s: down (%s)" % (address, e.__cause__ or e))
                continue
            except EnvironmentRefused as e:
                # Admission on that node found no room (another client took
                # it since GET /v1/info): the next node may have it.
                if not many or e.code != "conflict":
                    raise
                refusals.append("%s: %s" % (address, e.message))
                continue
            self.nodes.placed(env.name, address)
            return HearthMetadata(task_id=snap.get("id") or tid, environment=env.name,
                                  task="%s.%s" % (module, function), code="distribution" if url else "image",
                                  distribution=url, bundle=bundle, output_prefix=output_prefix,
                                  node=address if many else "")
        raise HearthUnreachable("hearth connector: no node could take environment %s for %s: %s" % (
            env.name, what, "; ".join(refusals) or "every node (%s) is down" % ", ".join(self.nodes.addresses)))

    def _get(self, meta):
        from flytekit.core.context_manager import FlyteContextManager

        what = "status of hearthd task %s" % meta.task_id
        node = getattr(meta, "node", "") or None
        try:
            with _reaching(what, node, self.nodes if node else None) as c:
                try:
                    snap = c.call("GET", "/v1/tasks/" + meta.task_id, what=what, not_found=False)
                except ResultExpired as e:
                    return Resource(phase=TaskExecution.FAILED, message="hearthd task %s of %s: %s" % (
                        meta.task_id, meta.task or meta.environment, e))
        except HearthUnreachable as e:
            if node is None:
                raise
            # The node is lost, and the task with it: Flyte's retry places
            # the environment on another node.
            return Resource(phase=TaskExecution.RETRYABLE_FAILED, message=(
                "node %s lost: hearthd task %s of %s (environment %s) did not finish there (%s); a retry places "
                "the environment on another node" % (node, meta.task_id, meta.task, meta.environment,
                                                     e.__cause__ or e)))
        if snap is False:
            return Resource(phase=TaskExecution.FAILED, message=(
                "hearthd task %s of %s (environment %s) is not known to hearthd at %s: it was never accepted, or "
                "finished longer ago than hearthd keeps tasks" % (meta.task_id, meta.task, meta.environment, c.path)))
        state = snap.get("state")
        p = phase(state)
        info = {k: snap.get(k) for k in ("id", "state", "replica", "pid", "coldStart") if snap.get(k) is not None}
        info.update(environment=meta.environment, code=meta.code)
        if p == TaskExecution.RUNNING:
            where = "replica %s (pid %s)" % (snap.get("replica"), snap.get("pid")) if state == "running" else \
                "the queue of environment %s" % meta.environment
            return Resource(phase=p, message="hearthd task %s: %s in %s" % (meta.task_id, state, where),
                            custom_info=info)
        if p != TaskExecution.SUCCEEDED:
            err = _actor.remote_exception(meta.task or meta.environment, snap.get("error"), meta.task_id,
                                          snap.get("replica"), snap.get("pid"))
            return Resource(phase=p, message="%s (hearthd state %s)" % (err, state), custom_info=info)
        ctx = FlyteContextManager.current_context()
        base = ctx.file_access.get_random_local_directory()
        outputs = task_outputs(snap, base)
        if meta.output_prefix and ctx.file_access.is_remote(meta.output_prefix):
            outputs = publish(outputs, ctx.file_access, "%s/hearth/%s" % (meta.output_prefix.rstrip("/"), meta.task_id))
            shutil.rmtree(base, ignore_errors=True)  # uploaded: a long-running service keeps no copies
        return Resource(phase=p, message="hearthd task %s succeeded in replica %s (pid %s)" % (
            meta.task_id, snap.get("replica"), snap.get("pid")), outputs=outputs, custom_info=info)

    def _delete(self, meta):
        what = "cancel hearthd task %s" % meta.task_id
        node = getattr(meta, "node", "") or None
        if node is not None and self.nodes.is_down(node):
            return  # a lost node's tasks went with it
        with _reaching(what, node) as c:
            # A task hearthd no longer knows has nothing left to cancel.
            c.call("DELETE", "/v1/tasks/" + meta.task_id, what=what, not_found=False)

    # -- pieces -------------------------------------------------------------------

    def _environment(self, spec, images):
        key = json.dumps([spec, images], sort_keys=True)
        with self._lock:
            env = self._environments.get(key)
            if env is None:
                env = self._environments[key] = _SpecEnvironment(spec, images)
                while len(self._environments) > 64:
                    self._environments.popitem(last=False)
            self._environments.move_to_end(key)
        return env

    def _bundle(self, c, url):
        """The sha256 of the code bundle made from distribution ``url``,
        uploaded to ``c``'s hearthd (fast registration names its tarball
        after its content, so a URL is unpacked once per process)."""
        with self._lock:
            sha = self._distributions.get(url)
        # One look-up per task: a hearthd that lost the bundle (a new state root) gets it again.
        if sha is not None and c.call("GET", "/v1/code/" + sha, what="code bundle", not_found=False) is not False:
            return sha
        b = distribution_bundle(url)
        # Asked of this node, not of the SDK's once-per-process set: another
        # thread's upload of the same bundle to another node would answer for it.
        if c.call("GET", "/v1/code/" + b.sha256, what="code bundle", not_found=False) is False:
            c.call("PUT", "/v1/code/" + b.sha256, b.data, what="upload of code distribution %s" % url,
                   content_type="application/x-tar", timeout=300)
        with self._lock:
            self._distributions[url] = b.sha256
            while len(self._distributions) > 256:
                self._distributions.popitem(last=False)
        return b.sha256


def distribution_bundle(url):
    """The code bundle (``hearth._bundle.Bundle``) of a fast-registration
    tarball: downloaded with flytekit's file access and unpacked as
    ``pyflyte-fast-execute`` does, then tarred as the SDK tars a project."""
    from flytekit.tools.fast_registration import download_distribution

    d = tempfile.mkdtemp(prefix="hearth-distribution-")
    try:
        root = os.path.join(d, "code")
        os.mkdir(root)
        try:
            download_distribution(url, root)
        except Exception as e:
            raise RuntimeError("code distribution %s (the task's --additional-distribution) could not be fetched and "
                               "unpacked: %s" % (url, e)) from e
        os.remove(os.path.join(root, os.path.basename(url)))  # the tarball itself, beside what it unpacked
        # Not bundle_for: its per-root cache would keep every unpacked copy for the life of the server.
        try:
            return _bundle._tar(root, _bundle._scan(root))
        except BundleError as e:
            raise BundleError("code distribution %s: %s" % (url, e)) from None
    finally:
        shutil.rmtree(d, ignore_errors=True)


def publish(literal_map, file_access, prefix):
    """``literal_map`` with its local blobs (the files a replica sent back)
    uploaded under ``prefix`` (a remote output location) and their URIs
    rewritten: Flyte reads outputs from its blob store, not from this host."""
    from flytekit.models.literals import LiteralMap

    pb = literal_map.to_flyte_idl()
    done = {}
    for lit in pb.literals.values():
        for holder in _literals._blobs(lit, []):
            path = _literals._local(holder.uri)
            if path is None or not os.path.exists(path):
                continue
            if holder.uri not in done:
                remote = "%s/%d-%s" % (prefix.rstrip("/"), len(done), os.path.basename(path.rstrip("/")))
                done[holder.uri] = file_access.put_data(path, remote, is_multipart=os.path.isdir(path))
            holder.uri = done[holder.uri]
    return LiteralMap.from_flyte_idl(pb)


class _reaching(object):
    """The SDK's client for a node's hearthd (``address``; None: the
    default one); an unreachable one raises ``HearthUnreachable`` naming the
    address and what was being done, and is marked down in ``nodes``."""

    def __init__(self, what, address=None, nodes=None):
        self.what = what
        self.address = address
        self.nodes = nodes

    def __enter__(self):
        self.client = _actor._client_for(self.address)
        return self.client

    def __exit__(self, kind, e, tb):
        if isinstance(e, (DaemonUnavailable, SocketPermissionError)):
            if self.nodes is not None:
                self.nodes.mark_down(self.client.path, e)
            # Which setting named the address: the SDK's client takes HEARTH_HOST over HEARTH_SOCKET.
            setting = "HEARTH_NODES" if self.address else "HEARTH_HOST" if os.environ.get("HEARTH_HOST") \
                else "HEARTH_SOCKET"
            raise HearthUnreachable("hearth connector: cannot reach hearthd at %s (%s) for %s: %s"
                                    % (self.client.path, setting, self.what, e)) from e
        return False


async def _off_loop(fn, *args):
    # The gRPC server is one event loop: hearthd calls, downloads and builds block, so they run in its executor.
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))


ConnectorRegistry.register(HearthConnector(), override=True)
