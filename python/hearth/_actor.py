"""ActorEnvironment and its tasks: calling a task from the caller's process
runs it in a warm replica of the environment.

A call, outside a replica:
1. checks the keyword arguments against the function's type hints (nothing
   is sent when they are wrong);
2. applies the environment to hearthd once per process (``POST
   /v1/environments``; the daemon answers ``unchanged`` for the same spec and
   rolls the replicas for a changed one);
3. ships the code: the directory that holds the task's module, as a
   content-addressed bundle uploaded once per version (``hearth._bundle``);
4. ``POST /v1/environments/{name}/tasks`` with ``wait``, and returns the
   result, or raises the remote exception (``hearth._errors``).
Inside a replica (``hearth._worker.in_worker()``), a call runs the function
in-process, as a plain Python call.

Every remote call is appended to ``runs`` (a bounded deque of ``TaskRun``):
where it ran (replica, pid), whether it paid a cold start, and how long it
took; ``python -m hearth run`` prints them.
"""

import collections
import functools
import json
import sys
import threading
import time
import warnings

from hearth import _images, _protocol, _spec
from hearth._errors import APIError, remote_exception

# A module of tasks is imported inside replicas too, where only the
# decorators run: the client, bundling and type checks load on first call.


def _client_for(path):
    c = sys.modules.get("hearth._client")
    if c is None:
        from hearth import _client as c
    return c.client(path)


def _async_client_for(path):
    from hearth._client import async_client

    return async_client(path)


def _in_event_loop():
    """True when called from a coroutine (an asyncio loop runs in this thread)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False

__all__ = ["ActorEnvironment", "ActorTask", "MappedTask", "map_task", "task", "TaskRun", "runs", "applies"]

TaskRun = collections.namedtuple(
    "TaskRun", "task id environment replica pid cold state result_repr total_us queued_us run_us worker_us spare")
runs = collections.deque(maxlen=10000)
# (environment, outcome) for every apply this process made: created, unchanged, replaced.
applies = collections.deque(maxlen=1000)


def _in_worker():
    # Only a replica's worker runs hearth._worker.main(); a process that has
    # not imported the module is not one (a lookup, not an import, per call).
    w = sys.modules.get("hearth._worker")
    return w is not None and w.in_worker()


def record_run(task, environment, snap, shown, total_us):
    """Appends a remote call's ``TaskRun`` (``shown``: its result or error, cut to 200 characters)."""
    runs.append(TaskRun(task, snap.get("id"), environment, snap.get("replica"), snap.get("pid"),
                        bool(snap.get("coldStart")), snap.get("state"),
                        shown if len(shown) <= 200 else shown[:197] + "...", total_us,
                        snap.get("queuedMicros"), snap.get("runMicros"), snap.get("workerMicros"),
                        "spare_adopt" in (snap.get("coldPhases") or {})))


class ActorEnvironment(object):
    """An environment of warm replicas, as ``union.actor.ActorEnvironment``.

    ``name``: the environment (DNS-label style); ``container_image``: an
    image name or ImageSpec (default ``hearth/python:3.11``);
    ``environment``: variables of every replica; ``requests``/``limits``:
    ``Resources`` per replica; ``replica_count``; ``ttl_seconds``: idle time
    before a replica is removed (int or timedelta); ``secret_requests``:
    ``Secret``s (or keys) mounted at ``/etc/secrets``; ``pod_template``;
    ``backlog_length``: tasks that may wait (``max_queue``);
    ``parallelism``: tasks one replica runs at once (``concurrency``).

    Hearth's own, keyword only: ``timeout`` (default per-task limit),
    ``max_tasks_per_replica``, ``max_queue``, ``network`` ("none",
    "egress": HTTP and HTTPS to public hosts through the daemon's proxy, or
    "host"), ``user_namespace`` (True: root in each replica is an
    unprivileged host uid; None: the daemon's default),
    ``image_pull_policy`` ("IfNotPresent", the default, "Always" or "Never":
    when hearthd pulls the image from its registry as the environment is
    applied), ``socket`` (default ``HEARTH_SOCKET``).

    Scaling, as Flyte 2's reusable environments: ``replicas`` (a number,
    or ``(min, max)``: started on demand up to max, idle ones beyond min go
    after ``ttl_seconds``), ``scaledown_ttl`` (how long an environment with
    nothing queued or running keeps its min replicas before going to zero;
    default ``ttl_seconds``), ``concurrency`` (tasks one replica runs at
    once), ``prewarm`` (start min replicas at apply), or all of them as
    ``reusable=ReusePolicy(replicas=, idle_ttl=, scaledown_ttl=,
    concurrency=)``.

    ``mounts``: host directories in every replica, each ``{"host_path":
    ..., "path": ..., "read_only": False}`` or ``(host_path, path)``
    (read-only); hearthd allows those under its ``--allow-mount`` dirs.
    ``devices``: CDI devices (``["vendor.com/class=name"]``, as ``hearth
    devices`` lists them) every replica gets.
    ``preload``: modules (``["numpy", "torch.nn"]``) every replica imports
    before its first task, and spares for this environment before one is
    adopted, so the first task does not pay for those imports."""

    def __init__(self, name, container_image=None, replica_count=None, ttl_seconds=None, environment=None,
                 requests=None, limits=None, accelerator=None, secret_requests=None, pod_template=None,
                 interruptible=False, parallelism=None, backlog_length=None, *, timeout=None,
                 max_tasks_per_replica=None, max_queue=None, network=None, user_namespace=None,
                 image_pull_policy=None, socket=None, replicas=None, scaledown_ttl=None, concurrency=None,
                 prewarm=None, reusable=None, mounts=None, devices=None, preload=None):
        if not isinstance(name, str) or not name:
            raise TypeError("ActorEnvironment: name must be a non-empty string, got %r" % (name,))
        if reusable is not None:
            if not isinstance(reusable, _spec.ReusePolicy):
                raise TypeError("ActorEnvironment %s: reusable must be a hearth.ReusePolicy, got %r" % (name, reusable))
            for field, mine, theirs in (("replicas", replicas, reusable.replicas),
                                        ("ttl_seconds", ttl_seconds, reusable.idle_ttl),
                                        ("scaledown_ttl", scaledown_ttl, reusable.scaledown_ttl),
                                        ("concurrency", concurrency, reusable.concurrency)):
                if mine is not None and theirs is not None:
                    raise TypeError("ActorEnvironment %s: %s is given both directly and in reusable; give it once"
                                    % (name, field))
            replicas = replicas if replicas is not None else reusable.replicas
            ttl_seconds = ttl_seconds if ttl_seconds is not None else reusable.idle_ttl
            scaledown_ttl = scaledown_ttl if scaledown_ttl is not None else reusable.scaledown_ttl
            concurrency = concurrency if concurrency is not None else reusable.concurrency
        if replica_count is not None and (isinstance(replica_count, bool) or not isinstance(replica_count, int)):
            raise TypeError("ActorEnvironment %s: replica_count must be an int, got %r" % (name, replica_count))
        self.replicas = None
        if replicas is not None:
            low, high = _spec.replica_range(replicas, "ActorEnvironment %s: replicas" % name)
            if replica_count is not None and replica_count != high:
                raise TypeError("ActorEnvironment %s: replica_count %d and replicas %r disagree; give replicas "
                                "(min, max), or replica_count alone" % (name, replica_count, replicas))
            self.replicas = (low, high)
            replica_count = high
        if replica_count is None:
            replica_count = 1
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise TypeError("ActorEnvironment %s: concurrency must be an int >= 1, got %r" % (name, concurrency))
        if prewarm is not None and not isinstance(prewarm, bool):
            raise TypeError("ActorEnvironment %s: prewarm must be True or False, got %r" % (name, prewarm))
        if environment is not None and not isinstance(environment, dict):
            raise TypeError("ActorEnvironment %s: environment must be a dict of strings, got %r" % (name, environment))
        if pod_template is not None and not isinstance(pod_template, _spec.PodTemplate):
            raise TypeError("ActorEnvironment %s: pod_template must be a hearth.PodTemplate, got %r" % (name, pod_template))
        if accelerator is not None:
            warnings.warn("ActorEnvironment %s: accelerator is not applied; ask for GPUs with "
                          "Resources(gpu=...)" % name, stacklevel=2)
        # union's newer knobs: tasks a replica runs at once, and the queue's length.
        if parallelism is not None and (isinstance(parallelism, bool) or not isinstance(parallelism, int)
                                        or parallelism < 1):
            raise TypeError("ActorEnvironment %s: parallelism must be an int >= 1, got %r" % (name, parallelism))
        if parallelism is not None and concurrency is not None and parallelism != concurrency:
            raise TypeError("ActorEnvironment %s: parallelism %d and concurrency %d disagree; give one"
                            % (name, parallelism, concurrency))
        if concurrency is None and parallelism is not None:
            concurrency = parallelism
        if backlog_length is not None:
            if isinstance(backlog_length, bool) or not isinstance(backlog_length, int) or backlog_length < 1:
                raise TypeError("ActorEnvironment %s: backlog_length must be an int >= 1, got %r"
                                % (name, backlog_length))
            if max_queue is None:
                max_queue = backlog_length
        self.parallelism = parallelism
        self.backlog_length = backlog_length
        self.name = name
        self.container_image = container_image
        self.replica_count = replica_count
        self.ttl_seconds = ttl_seconds
        self.environment = dict(environment or {})
        self.requests = requests
        self.limits = limits
        self.secret_requests = list(secret_requests or [])
        self.pod_template = pod_template
        self.interruptible = interruptible
        self.timeout = timeout
        self.max_tasks_per_replica = max_tasks_per_replica
        self.max_queue = max_queue
        self.network = network
        if user_namespace is not None and not isinstance(user_namespace, bool):
            raise TypeError("ActorEnvironment %s: user_namespace must be True, False or None, got %r" % (name, user_namespace))
        self.user_namespace = user_namespace
        if image_pull_policy is not None:
            _spec._pull_policy(image_pull_policy, "ActorEnvironment %s: image_pull_policy" % name)
        self.image_pull_policy = image_pull_policy
        self.scaledown_ttl = scaledown_ttl
        self.concurrency = concurrency
        self.mounts = _spec.mounts_list(mounts, "ActorEnvironment %s: mounts" % name)
        if devices is not None and (not isinstance(devices, (list, tuple))
                                    or not all(isinstance(d, str) and d for d in devices)):
            raise TypeError("ActorEnvironment %s: devices must be a list of CDI device names "
                            "(vendor.com/class=name), got %r" % (name, devices))
        self.devices = list(devices or [])
        if isinstance(preload, str):
            preload = [preload]
        if preload is not None and (not isinstance(preload, (list, tuple))
                                    or not all(isinstance(m, str) and m for m in preload)):
            raise TypeError("ActorEnvironment %s: preload must be a list of module names (such as "
                            "[\"numpy\"]), got %r" % (name, preload))
        self.preload = list(preload or [])
        self.prewarm = prewarm
        self.socket = socket
        self._applied = {}  # socket path -> identity the daemon gave this process's spec
        self._lock = threading.Lock()

    def __repr__(self):
        return "ActorEnvironment(name=%r, replica_count=%r)" % (self.name, self.replica_count)

    # -- the spec ---------------------------------------------------------------

    def spec(self):
        """The environment spec sent to hearthd (JSON-able)."""
        where = "ActorEnvironment %s" % self.name
        env = _spec.image_env(self.container_image)
        env.update({str(k): str(v) for k, v in self.environment.items()})
        spec = {"name": self.name}
        if self.replicas is not None and self.replicas[0] != self.replicas[1]:
            spec["replicas"] = {"min": self.replicas[0], "max": self.replicas[1]}
        else:
            spec["replica_count"] = self.replica_count
        scaledown = _spec.whole_seconds(self.scaledown_ttl, "%s: scaledown_ttl" % where)
        if scaledown is not None:
            spec["scaledown_ttl"] = scaledown
        if self.concurrency is not None:
            spec["concurrency"] = self.concurrency
        if self.prewarm is not None:
            spec["prewarm"] = self.prewarm
        if self.mounts:
            spec["mounts"] = self.mounts
        if self.devices:
            spec["devices"] = self.devices
        if self.preload:
            spec["preload"] = self.preload
        if self.container_image is not None:
            spec["container_image"] = _spec.image_name(self.container_image)
        packages = _spec.image_packages(self.container_image)
        if self.pod_template is not None:
            pt, pt_packages, pt_env = _spec.pod_template_dict(self.pod_template, "%s: pod_template" % where)
            spec["pod_template"] = pt
            packages += [p for p in pt_packages if p not in packages]
            for k, v in pt_env.items():
                env.setdefault(k, v)
        if env:
            spec["environment"] = env
        req = _spec.resources_dict(self.requests, "%s: requests" % where)
        lim = _spec.resources_dict(self.limits, "%s: limits" % where)
        if req:
            spec["requests"] = req
        if lim:
            spec["limits"] = lim
        ttl = _spec.seconds(self.ttl_seconds, "%s: ttl_seconds" % where)
        if ttl is not None:
            if ttl != int(ttl):
                raise ValueError("%s: ttl_seconds must be whole seconds, got %r" % (where, ttl))
            spec["ttl_seconds"] = int(ttl)
        keys = _spec.secret_keys(self.secret_requests)
        if keys:
            spec["secret_requests"] = keys
        if packages:
            spec["packages"] = packages
        timeout = _spec.seconds(self.timeout, "%s: timeout" % where)
        if timeout is not None:
            spec["timeout"] = timeout
        if self.max_tasks_per_replica is not None:
            spec["max_tasks_per_replica"] = self.max_tasks_per_replica
        if self.max_queue is not None:
            spec["max_queue"] = self.max_queue
        if self.network is not None:
            spec["network"] = self.network
        if self.user_namespace is not None:
            spec["user_namespace"] = self.user_namespace
        if self.image_pull_policy is not None:
            spec["image_pull_policy"] = self.image_pull_policy
        return spec

    def apply(self, client=None):
        """Applies the environment now; returns the daemon's outcome
        (``created``, ``unchanged`` or ``replaced``)."""
        c = client or _client_for(self.socket)
        spec = self.spec()
        images = [self.container_image]
        if self.pod_template is not None:
            images += _spec.pod_template_images(self.pod_template)
        for image in images:
            for build in _spec.image_builds(image):
                _images.ensure_built(build, c)
        body = json.dumps(spec, sort_keys=True)
        results = _images.apply_streaming(c, body.encode(), self.name)
        identity = results[0].get("identity") if results else None
        with self._lock:
            self._applied[c.path] = identity
        outcome = results[0]["outcome"] if results else None
        applies.append((self.name, outcome))
        return outcome

    def _ensure(self, c):
        if c.path not in self._applied:
            self.apply(c)

    def status(self):
        """The daemon's view: replicas (state, pid, tasks run, idle), queue, last error."""
        c = _client_for(self.socket)
        return c.call("GET", "/v1/environments/" + self.name, what="status of %s" % self.name)

    def remove(self):
        c = _client_for(self.socket)
        c.call("DELETE", "/v1/environments/" + self.name, what="remove %s" % self.name)
        with self._lock:
            self._applied.pop(c.path, None)

    # -- tasks ------------------------------------------------------------------

    @staticmethod
    def cache(fn=None):
        """``@actor.cache``, as union spells ``actor_cache`` on an
        environment: memoise for the life of the replica."""
        from hearth._cache import actor_cache

        return actor_cache(fn)

    def dynamic(self, fn=None, **options):
        """``@actor.dynamic``: a dynamic workflow (see ``hearth._flow.dynamic``);
        its body runs in the caller's process, its tasks in their environments."""
        from hearth._flow import dynamic

        return dynamic(fn, _environment=self, **options)

    def task(self, fn=None, *, timeout=None, retries=0, cache=False, name=None, **options):
        """``@env.task`` or ``@env.task(timeout=60, retries=2)``.

        ``timeout``: seconds or timedelta for each call (over the
        environment's); ``retries``: further attempts when the task fails;
        ``cache`` (True or a ``hearth.Cache``), ``cache_version``,
        ``cache_serialize``, ``cache_ignore_input_vars``: the caller's task
        cache (``hearth._taskcache``). flytekit's other task options are
        accepted; those Hearth does not apply (``requests``, ...) warn once."""
        def decorate(f):
            return ActorTask(self, f, timeout=timeout, retries=retries, cache=cache, name=name, options=options)

        if fn is None:
            return decorate
        if not callable(fn):
            raise TypeError("%s.task: expected a function, got %r" % (self.name, fn))
        return decorate(fn)

    def _post(self, c, path, body, what):
        """POST a task or batch for the identity this process applied.
        Re-applies once when the daemon does not know the environment
        (removed) or holds another spec under its name (another client
        applied one: 409), so a task never runs on someone else's spec."""
        for attempt in (0, 1):
            try:
                return c.call("POST", path, self._body(c, body), what=what)
            except APIError as e:
                self._reapply_if_stale(c, e, attempt)
        raise AssertionError("unreachable")

    async def _apost(self, ac, c, path, body, what):
        """``_post`` for asyncio code: the same re-apply rule."""
        for attempt in (0, 1):
            try:
                return await ac.call("POST", path, self._body(c, body), what=what)
            except APIError as e:
                self._reapply_if_stale(c, e, attempt)
        raise AssertionError("unreachable")

    def _post_task(self, c, path, body, what):
        """``_post`` of one task with an id of its own: if hearthd goes
        away before it answers, the call waits for it and asks for the task
        by id (``_client.recover_task``) rather than fail or run it twice."""
        _client = sys.modules["hearth._client"]
        body["id"] = _client.task_id()
        try:
            return self._post(c, path, body, what)
        except _client.DaemonUnavailable as e:
            return _client.recover_task(c, body["id"], e, lambda: self._post(c, path, body, what), what)

    def _post_batch(self, c, path, body, what):
        """``_post_task`` for a batch: its tasks are ID-0, ID-1, …, and all
        or none of them were accepted (``_client.recover_batch``)."""
        _client = sys.modules["hearth._client"]
        body["id"] = _client.task_id()
        try:
            return self._post(c, path, body, what)
        except _client.DaemonUnavailable as e:
            return _client.recover_batch(c, body["id"], len(body["inputs"]), e,
                                         lambda: self._post(c, path, body, what), what)

    async def _apost_task(self, ac, c, path, body, what):
        _client = sys.modules["hearth._client"]
        body["id"] = _client.task_id()
        try:
            return await self._apost(ac, c, path, body, what)
        except _client.DaemonUnavailable as e:
            return await _client.arecover_task(ac, body["id"], e, lambda: self._apost(ac, c, path, body, what), what)

    def _body(self, c, body):
        body["identity"] = self._applied.get(c.path)
        return sys.modules["hearth._client"].compact_json(body)

    def _reapply_if_stale(self, c, e, attempt):
        """Re-raises ``e`` unless the daemon lost or replaced this spec and
        this was the first attempt; then applies the spec again."""
        stale = e.code in ("environment_not_found", "spec_changed")
        if not stale or attempt == 1:
            raise e
        with self._lock:
            self._applied.pop(c.path, None)
        self._ensure(c)


class ActorTask(object):
    """A task of an ActorEnvironment; call it with keyword arguments."""

    def __init__(self, env, fn, timeout=None, retries=0, cache=False, name=None, options=None):
        functools.update_wrapper(self, fn)
        self._hearth_fn = fn  # what the worker runs (see hearth._worker)
        self.environment = env
        self.timeout = timeout
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise TypeError("task %s: retries must be an int >= 0, got %r" % (fn.__name__, retries))
        self.retries = retries
        self.name = name or "%s.%s" % (fn.__module__, fn.__qualname__)
        options = dict(options or {})
        self._cache = None  # the caller's task cache (hearth._taskcache), when cache is on
        if cache or any(k.startswith("cache_") for k in options):
            from hearth import _taskcache

            self._cache = _taskcache.configure(self.name, fn, cache, options, env.container_image)
        ignored = sorted(k for k, v in options.items() if v)
        if ignored:
            warnings.warn("task %s: %s not applied by Hearth" % (fn.__qualname__, ", ".join(ignored)), stacklevel=3)
        if "<locals>" in fn.__qualname__:
            raise TypeError("task %s must be defined at the top level of a module, so a replica can import it"
                            % fn.__qualname__)
        self._sig = None
        self._where = None
        self._classes = None
        # An ``async def`` task called from a coroutine is awaited: ``await t(x=1)``.
        from hearth._worker import _is_async  # the worker's own test: what it awaits

        self._async = _is_async(fn)

    def __repr__(self):
        return "<hearth task %s in %s>" % (self.__qualname__, self.environment.name)

    @property
    def signature(self):
        if self._sig is None:
            from hearth._typecheck import Signature

            self._sig = Signature(self._hearth_fn, "task")
        return self._sig

    def location(self):
        """(module name the replica imports, code root)."""
        if self._where is None:
            import sys

            from hearth import _bundle

            mod = sys.modules.get(self._hearth_fn.__module__)
            self._where = _bundle.module_root(self._hearth_fn.__module__, getattr(mod, "__file__", None))
        return self._where

    def __call__(self, *args, **kwargs):
        if _in_worker():
            return self._hearth_fn(*args, **kwargs)
        if self._async and _in_event_loop():
            return self.aio(*args, **kwargs)
        from hearth import _flow  # in a workflow: skipped branches, bool proxies, `>>` (see there)

        def run(a, k):
            if self._cache is not None:
                return self._cache.call(self, self.signature.bind(a, k))
            return self._remote(self.signature.bind(a, k))
        return _flow.call(self, args, kwargs, run)

    async def aio(self, *args, **kwargs):
        """The task as a coroutine: ``await t.aio(x=1)`` (and ``await t(x=1)``
        for an ``async def`` task called from a coroutine). Many awaited at
        once run at once over the environment's replicas, each a request on
        the event loop, not a thread."""
        if _in_worker():
            value = self._hearth_fn(*args, **kwargs)
            if hasattr(value, "__await__"):
                value = await value
            return value
        bound = self.signature.bind(args, kwargs)
        if self._cache is not None:
            import asyncio

            # The task cache's file I/O is blocking: off the loop.
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: self._cache.call(self, bound))
        return await self._aremote(bound)

    async def _aremote(self, kwargs):
        c, body, encoded = self._request([kwargs])
        body["kwargs"] = encoded[0]
        body["wait"] = True
        path = "/v1/environments/%s/tasks" % self.environment.name
        ac = _async_client_for(self.environment.socket)
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            snap = await self.environment._apost_task(ac, c, path, body, "task %s" % self.__qualname__)
            total = int((time.perf_counter() - t0) * 1e6)
            try:
                return self._outcome(snap, total)
            except Exception:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")

    # -- remote ----------------------------------------------------------------

    def _request(self, kwargs_list):
        env = self.environment
        c = _client_for(env.socket)
        env._ensure(c)
        module, root = self.location()
        from hearth import _bundle

        bundle = _bundle.bundle_for(root)
        _bundle.ensure_uploaded(c, bundle)
        body = {"module": module, "function": self._hearth_fn.__qualname__, "bundle": bundle.sha256}
        timeout = _spec.seconds(self.timeout, "task %s: timeout" % self.__qualname__)
        if timeout is not None:
            body["timeout"] = timeout
        enc = _protocol.encode_value
        encoded = [{k: enc(v) for k, v in kw.items()} for kw in kwargs_list]
        return c, body, encoded

    def _remote(self, kwargs, keep=None):
        """``keep``: a list the successful snapshot is appended to (the task cache stores its result)."""
        c, body, encoded = self._request([kwargs])
        body["kwargs"] = encoded[0]
        body["wait"] = True
        path = "/v1/environments/%s/tasks" % self.environment.name
        for attempt in range(self.retries + 1):
            t0 = time.perf_counter()
            snap = self.environment._post_task(c, path, body, "task %s" % self.__qualname__)
            total = int((time.perf_counter() - t0) * 1e6)
            try:
                value = self._outcome(snap, total)
                if keep is not None:
                    keep.append(snap)
                return value
            except Exception:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")

    def _decode(self, value):
        """The result as the return annotation declares it: decoded (pickles
        restricted), then conformed (``hearth._typecheck.conform``); a value
        that does not fit is ``ResultTypeError``."""
        _results = sys.modules.get("hearth._results")
        if _results is None:
            from hearth import _results
        module = self.location()[0]
        returns = self.signature.returns
        if self._classes is None:
            self._classes = _results.task_classes(returns, self._hearth_fn.__module__, module)
        task = "%s.%s" % (module, self._hearth_fn.__qualname__)
        value = _results.decode(value, self._classes, task)
        if returns is None or returns is type(None):
            return None
        from hearth._typecheck import InputError, conform

        try:
            return conform(value, returns, "the output of task %s" % task)
        except InputError as e:
            from hearth._errors import ResultTypeError

            raise ResultTypeError("%s (the replica sent a value its return annotation does not allow)" % e) from None

    def _outcome(self, snap, total_us, record=True):
        state = snap.get("state")
        ok = state == "succeeded"
        value = self._decode(snap.get("result")) if ok else None
        if record:
            shown = repr(value) if ok else "%s: %s" % ((snap.get("error") or {}).get("type"),
                                                      (snap.get("error") or {}).get("message"))
            record_run(self.__qualname__, self.environment.name, snap, shown, total_us)
        if ok:
            return value
        raise remote_exception(self.__qualname__, snap.get("error"), snap.get("id"), snap.get("replica"),
                               snap.get("pid"))


class MappedTask(object):
    """``map_task(task)(x=[1, 2, 3])``: one call per element, spread over the
    environment's replicas (the daemon's batch form); results in input
    order. Arguments that are lists are mapped (all of the same length);
    bind constants with ``functools.partial(task, y=1)``.
    ``min_success_ratio``: below 1.0, failed elements give None as long as
    that share of elements succeeded; otherwise the first failure raises."""

    def __init__(self, task, concurrency=None, min_success_ratio=None):
        bound = {}
        if isinstance(task, functools.partial):
            if task.args:
                raise TypeError("map_task: bind constants by keyword: functools.partial(task, name=value)")
            bound = dict(task.keywords)
            task = task.func
        if not isinstance(task, ActorTask):
            raise TypeError("map_task: expected a task made with @ActorEnvironment.task, got %r" % (task,))
        if min_success_ratio is not None and not (0.0 <= min_success_ratio <= 1.0):
            raise ValueError("map_task: min_success_ratio must be between 0 and 1, got %r" % (min_success_ratio,))
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
            raise ValueError("map_task: concurrency must be a positive int, got %r" % (concurrency,))
        self.task = task
        self.bound = bound
        self.concurrency = concurrency
        self.min_success_ratio = min_success_ratio
        functools.update_wrapper(self, task._hearth_fn)

    def _inputs(self, args, kwargs):
        from hearth._typecheck import InputError

        name = self.task.__qualname__
        if args:
            raise InputError("map_task(%s)() takes keyword arguments only: call it with lists, e.g. %s(x=[1, 2])"
                            % (name, name))
        lists = {k: v for k, v in kwargs.items() if isinstance(v, list)}
        for k, v in kwargs.items():
            if k not in lists:
                raise InputError("map_task(%s)() input %r: expected a list to map over, got %s; bind constants with "
                                "functools.partial(%s, %s=...)" % (name, k, type(v).__name__, name, k))
        if not lists:
            raise InputError("map_task(%s)() needs at least one list of inputs" % name)
        sizes = {len(v) for v in lists.values()}
        if len(sizes) != 1:
            raise InputError("map_task(%s)() inputs have different lengths: %s"
                             % (name, ", ".join("%s=%d" % (k, len(v)) for k, v in sorted(lists.items()))))
        n = sizes.pop()
        sig = self.task.signature
        out = []
        for i in range(n):
            kw = dict(self.bound)
            kw.update({k: v[i] for k, v in lists.items()})
            try:
                out.append(sig.bind((), kw))
            except InputError as e:
                raise InputError("map_task element %d: %s" % (i, e))
        return out

    def __call__(self, *args, **kwargs):
        if not _in_worker():
            from hearth import _flow  # in a workflow: skipped branches, proxies unwrapped (see there)
            return _flow.call(self, args, kwargs, self._call)
        return self._call(args, kwargs)

    def _call(self, args, kwargs):
        inputs = self._inputs(args, kwargs)
        if _in_worker():
            return [self.task._hearth_fn(**kw) for kw in inputs]
        if not inputs:
            return []
        cache = self.task._cache
        if cache is not None:
            # Only the misses go to the daemon; hits fill their places below.
            cdir, keys, hits = cache.lookup_many(self.task, inputs, record=len(inputs) <= 100)
            todo = [i for i in range(len(inputs)) if i not in hits]
            if not todo:
                return [hits[i] for i in range(len(inputs))]
            whole, inputs = inputs, [inputs[i] for i in todo]
        c, body, encoded = self.task._request(inputs)
        env = self.task.environment
        # The daemon's queue holds max_queue tasks per environment: send
        # chunks that fit, two in flight so replicas never wait between them.
        chunk = min(self.concurrency or 10 ** 9, max(1, (env.max_queue or 1000) // 2))
        pieces = [encoded[i:i + chunk] for i in range(0, len(encoded), chunk)]
        path = "/v1/environments/%s/batch" % env.name
        what = "map_task(%s)" % self.task.__qualname__

        def send(piece):
            b = dict(body, inputs=piece)
            cc = _client_for(env.socket)
            return env._post_batch(cc, path, b, what)

        t0 = time.perf_counter()
        if len(pieces) == 1:
            snaps = send(pieces[0])
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=2) as pool:
                snaps = [s for part in pool.map(send, pieces) for s in part]
        total = int((time.perf_counter() - t0) * 1e6)
        results, failures = [], []
        for i, snap in enumerate(snaps):
            try:
                results.append(self.task._outcome(snap, total, record=len(snaps) <= 100))
                if cache is not None and cdir is not None and keys[todo[i]] is not None:
                    cache.store(self.task, keys[todo[i]], cdir, snap)
            except Exception as e:
                failures.append((i if cache is None else todo[i], e))
                results.append(None)
        if cache is not None:
            done = dict(zip(todo, results))
            results = [hits[i] if i in hits else done[i] for i in range(len(whole))]
        if failures:
            ratio = 1.0 if self.min_success_ratio is None else self.min_success_ratio
            if (len(results) - len(failures)) / float(len(results)) < ratio or ratio >= 1.0:
                i, e = failures[0]
                if len(failures) > 1:
                    e.args = ("%s\n(element %d; %d of %d elements failed)" % (e, i, len(failures), len(results)),)
                    if hasattr(e, "_text"):
                        e._text = e.args[0]
                raise e
        return results


def map_task(task, concurrency=None, min_success_ratio=None, **options):
    """flytekit's ``map_task``: ``map_task(task)(input=[1, 2, 3])``."""
    if options:
        warnings.warn("map_task: %s not applied by Hearth" % ", ".join(sorted(options)), stacklevel=2)
    return MappedTask(task, concurrency, min_success_ratio)


# -- plain tasks -----------------------------------------------------------------

_ONE_SHOT = {}  # spec JSON -> the hidden environment of plain tasks with that configuration
_one_shot_lock = threading.Lock()
ONE_SHOT_TTL = 60


def _one_shot_environment(container_image, requests, limits, environment, secret_requests, pod_template, where):
    """The environment plain tasks of one configuration share: a replica per
    call (``max_tasks_per_replica=1``: each call gets a fresh interpreter in
    a fresh container, as Flyte runs a plain task in a new pod), named
    ``task-<hash of the spec>``, gone after ``ONE_SHOT_TTL`` idle seconds."""
    probe = ActorEnvironment("task", container_image=container_image, environment=environment, requests=requests,
                             limits=limits, secret_requests=secret_requests, pod_template=pod_template,
                             max_tasks_per_replica=1, ttl_seconds=ONE_SHOT_TTL)
    try:
        spec = probe.spec()
    except (TypeError, ValueError) as e:
        raise type(e)("%s: %s" % (where, e)) from None
    import hashlib

    key = json.dumps(spec, sort_keys=True)
    with _one_shot_lock:
        env = _ONE_SHOT.get(key)
        if env is None:
            probe.name = "task-" + hashlib.sha256(key.encode()).hexdigest()[:10]
            env = _ONE_SHOT[key] = probe
    return env


def task(fn=None, *, container_image=None, requests=None, limits=None, environment=None, secret_requests=None,
         pod_template=None, timeout=None, retries=0, cache=False, name=None, **options):
    """flytekit's plain ``@task``: each call runs in a fresh one-shot replica
    (the cold side of cold-versus-warm, with the same API as ``@actor.task``);
    tasks with the same image, resources, environment, secrets and pod
    template share one hidden environment (``task-<hash>``).
    ``container_image``, ``requests``, ``limits``, ``environment``,
    ``secret_requests`` and ``pod_template`` are the replica's; ``timeout``,
    ``retries``, ``cache`` and ``cache_*`` as for ``@actor.task``; flytekit's other
    options are accepted (those Hearth does not apply warn once)."""
    def decorate(f):
        where = "task %s" % getattr(f, "__qualname__", f)
        env = _one_shot_environment(container_image, requests, limits, environment, secret_requests, pod_template,
                                    where)
        t = ActorTask(env, f, timeout=timeout, retries=retries, cache=cache, name=name, options=options)
        t._plain = True  # flytekit's semantics: no return annotation means no output (see hearth._flow)
        return t

    if fn is None:
        return decorate
    if not callable(fn):
        raise TypeError("task: expected a function, got %r" % (fn,))
    return decorate(fn)
