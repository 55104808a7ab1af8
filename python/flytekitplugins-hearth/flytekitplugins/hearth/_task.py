"""The task: a flytekit ``PythonFunctionTask`` whose execution runs in a
warm replica of its ActorEnvironment.

flytekit does everything around the call as for any task: the type engine
turns a workflow's values into the task's input literals, the local cache
answers a cached call before anything runs, and ``map_task`` maps it.
Where flytekit would call the function, this task sends the input
literals (``_literals``) to hearthd as one task of the environment; in the
replica, ``flytekitplugins.hearth._runtime.run`` imports the task's module,
lets flytekit's ``dispatch_execute`` turn the literals into Python values
and call the function, and sends the output literals back. Retries are
flytekit's ``retries``: a task that fails (its exception, a replica that
died, a timeout) runs again, up to that many more times.
"""

import dataclasses
import sys
import time
import typing

from flytekit.core.python_function_task import PythonFunctionTask
from flytekit.extend import TaskPlugins
from hearth import _actor

__all__ = ["HearthActor", "HearthFunctionTask", "TASK_TYPE", "task_request", "task_outputs", "image_builds"]

TASK_TYPE = "hearth-actor"
RUNTIME = "flytekitplugins.hearth._runtime"


@dataclasses.dataclass
class HearthActor(object):
    """A task's config: the ActorEnvironment it runs in."""

    environment: typing.Any = None


class HearthFunctionTask(PythonFunctionTask[HearthActor]):
    """A flytekit task of an ActorEnvironment (``@env.task``)."""

    _TASK_TYPE = TASK_TYPE

    def __init__(self, task_config, task_function, **kwargs):
        super().__init__(task_config=task_config, task_function=task_function, task_type=TASK_TYPE, **kwargs)
        if "<locals>" in task_function.__qualname__:
            raise TypeError("task %s must be defined at the top level of a module, so a replica can import it"
                            % task_function.__qualname__)

    @property
    def actor_environment(self):
        """The task's ActorEnvironment (``environment`` is flytekit's: the
        container's variables, which serializing a task reads)."""
        return self.task_config.environment

    def get_custom(self, settings):
        """What a Flyte cluster hands the connector: the environment spec, the
        image builds it names (a node's hearthd may never have seen them),
        and where the function lives, named as flytekit's own resolver names
        it in the container's args (``flytekitplugins.hearth.connector``)."""
        from flytekit.core.tracker import extract_task_module

        _, module, function, _ = extract_task_module(self)
        env = self.actor_environment
        return {"environment": env.spec(), "images": image_builds(env.hearth),
                "module": module, "function": function}

    # -- the two ways flytekit runs a task ------------------------------------------

    def dispatch_execute(self, ctx, input_literal_map):
        if _actor._in_worker():
            return super().dispatch_execute(ctx, input_literal_map)
        return self.run_remote(ctx, input_literal_map)

    def execute(self, **kwargs):
        # map_task (ArrayNodeMapTask) calls execute with Python values.
        if _actor._in_worker():
            try:
                return super().execute(**kwargs)
            except Exception as e:
                # flytekit's local execution then rewrites e.args ("Error encountered while executing ...");
                # _runtime puts the user's back.
                try:
                    e._hearth_args = e.args
                except AttributeError:
                    pass
                raise
        from flytekit.core.context_manager import FlyteContextManager
        from flytekit.core.type_engine import TypeEngine
        from flytekit.models.literals import LiteralMap

        ctx = FlyteContextManager.current_context()
        types = self.python_interface.inputs
        literals = {k: TypeEngine.to_literal(ctx, v, types[k], self.interface.inputs[k].type)
                    for k, v in kwargs.items()}
        out = self.run_remote(ctx, LiteralMap(literals=literals))
        names = list(self.python_interface.outputs)
        values = TypeEngine.literal_map_to_kwargs(ctx, out, self.python_interface.outputs)
        if not names:
            return None
        if len(names) == 1:
            return values[names[0]]
        return tuple(values[n] for n in names)

    # -- the call -----------------------------------------------------------------

    def location(self):
        """(module the replica imports, its code root), as hearth's tasks find it."""
        from hearth import _bundle

        fn = self.task_function
        mod = sys.modules.get(fn.__module__)
        return _bundle.module_root(fn.__module__, getattr(mod, "__file__", None))

    def run_remote(self, ctx, input_literal_map):
        """The output LiteralMap of one execution in a replica (retried up
        to ``metadata.retries`` more times when it fails)."""
        from hearth import _bundle

        env = self.actor_environment.hearth
        c = _actor._client_for(env.socket)
        env._ensure(c)
        module, root = self.location()
        bundle = _bundle.bundle_for(root)
        _bundle.ensure_uploaded(c, bundle)
        body = task_request(module, self.task_function.__name__, input_literal_map, bundle.sha256,
                            self.metadata.timeout)
        body["wait"] = True
        path = "/v1/environments/%s/tasks" % env.name
        retries = self.metadata.retries or 0
        for attempt in range(retries + 1):
            t0 = time.perf_counter()
            snap = env._post_task(c, path, dict(body), "task %s" % self.name)
            try:
                return self._outcome(ctx, snap, int((time.perf_counter() - t0) * 1e6))
            except Exception:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")

    def _outcome(self, ctx, snap, total_us):
        state = snap.get("state")
        _actor.record_run(self.name, self.actor_environment.name, snap, state, total_us)
        if state != "succeeded":
            raise _actor.remote_exception(self.name, snap.get("error"), snap.get("id"), snap.get("replica"),
                                          snap.get("pid"))
        return task_outputs(snap, ctx.file_access.get_random_local_directory())


def task_request(module, function, input_literal_map, bundle=None, timeout=None):
    """The body of ``POST /v1/environments/{e}/tasks`` that runs one
    execution of ``module.function`` on ``input_literal_map`` in a replica
    (``_runtime.run``); ``bundle``: the code bundle's sha256 (None: the
    module is in the image); ``timeout``: flytekit's (a timedelta, zero
    when none). The caller's side and the connector send the same."""
    from hearth import _protocol

    from flytekitplugins.hearth import _literals

    kwargs = {"module": module, "task": function, "inputs": _literals.encode(input_literal_map)}
    body = {"module": RUNTIME, "function": "run", "kwargs": {k: _protocol.encode_value(v) for k, v in kwargs.items()}}
    if bundle is not None:
        body["bundle"] = bundle
    seconds = timeout.total_seconds() if hasattr(timeout, "total_seconds") else float(timeout or 0)
    if seconds > 0:
        body["timeout"] = seconds
    return body


def task_outputs(snap, base):
    """The output LiteralMap of a succeeded task (its hearthd snapshot),
    files written under ``base``."""
    from hearth import _protocol

    from flytekitplugins.hearth import _literals

    # Data only: a replica's answer is never unpickled here.
    return _literals.decode(_protocol.decode_value(snap.get("result"), unpickle=False), base=base)


def image_builds(env):
    """The images hearthd must build for a ``hearth.ActorEnvironment``'s
    spec, bases first: ``[{"name": image reference, "spec": build request}]``
    (JSON, for a task template's custom)."""
    from hearth import _spec

    images = [env.container_image]
    if env.pod_template is not None:
        images += _spec.pod_template_images(env.pod_template)
    out = []
    for image in images:
        for spec in _spec.image_builds(image):
            chain = []
            while getattr(spec, "_hearth_build", None) is not None and len(chain) < 16:
                chain.append(spec)
                spec = getattr(spec, "base_image", None)
            for s in reversed(chain):
                build, _, name = s._hearth_build
                entry = {"name": name, "spec": build}
                if entry not in out:
                    out.append(entry)
    return out


TaskPlugins.register_pythontask_plugin(HearthActor, HearthFunctionTask)
