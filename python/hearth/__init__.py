"""Hearth: warm, isolated Python replicas on one machine.

The SDK has the names of flytekit and ``union.actor``, so moving a project
to Hearth is changing its import lines::

    from hearth import ActorEnvironment, ImageSpec, Resources, workflow

    actor = ActorEnvironment(name="my-actor", replica_count=1, ttl_seconds=300,
                             requests=Resources(cpu="1", mem="500Mi"))

    @actor.task
    def plus_one(input: int) -> int:
        return input + 1

    @workflow
    def wf(input: int = 0) -> int:
        return plus_one(input=plus_one(input=input))

Code written against ``union`` runs with ``import hearth as union``
(``union.task``, ``union.workflow``, ``union.actor.ActorEnvironment``, ...),
and ``from hearth.actor import ActorEnvironment`` stands for
``from union.actor import ...``.

Calling ``wf(input=1)`` runs each task in a warm replica of ``my-actor``
through hearthd (socket: ``HEARTH_SOCKET``, default
``/run/hearth/hearthd.sock``); ``python -m hearth run FILE.py wf --input 1``
does the same from the shell.

This package is also what every replica's worker runs (``hearth._worker``),
so importing it has no side effects and loads nothing: every name,
``actor_cache`` included, is imported on first use.
"""

__version__ = "0.2.0"

_LAZY = {
    "actor_cache": "hearth._cache",
    "Cache": "hearth._taskcache",
    "ActorEnvironment": "hearth._actor",
    "ActorTask": "hearth._actor",
    "map_task": "hearth._actor",
    "task": "hearth._actor",
    "runs": "hearth._actor",
    "TaskRun": "hearth._actor",
    "Resources": "hearth._spec",
    "Secret": "hearth._spec",
    "ImageSpec": "hearth._spec",
    "PodTemplate": "hearth._spec",
    "ReusePolicy": "hearth._spec",
    "workflow": "hearth._workflow",
    "WorkflowFailurePolicy": "hearth._workflow",
    "LaunchPlan": "hearth._workflow",
    "current_context": "hearth._workflow",
    "conditional": "hearth._flow",
    "dynamic": "hearth._flow",
    "Echo": "hearth._flow",
    "create_node": "hearth._flow",
    "WorkflowError": "hearth._flow",
    "ConditionFailed": "hearth._flow",
    "CronSchedule": "hearth._flow",
    "FixedRate": "hearth._flow",
    "Email": "hearth._flow",
    "Slack": "hearth._flow",
    "PagerDuty": "hearth._flow",
    "WorkflowExecutionPhase": "hearth._flow",
    "HearthError": "hearth._errors",
    "DaemonUnavailable": "hearth._errors",
    "DaemonUpgrading": "hearth._errors",
    "SocketPermissionError": "hearth._errors",
    "APIError": "hearth._errors",
    "EnvironmentRefused": "hearth._errors",
    "QueueFull": "hearth._errors",
    "ImageBuildFailed": "hearth._errors",
    "ResultExpired": "hearth._errors",
    "BundleError": "hearth._errors",
    "UnsafeResult": "hearth._errors",
    "ResultTypeError": "hearth._errors",
    "TaskFailed": "hearth._errors",
    "TaskTimeout": "hearth._errors",
    "InputError": "hearth._typecheck",
    "FlyteFile": "hearth._files",
    "FlyteDirectory": "hearth._files",
    "FileTransferError": "hearth._files",
}

__all__ = ["__version__"] + sorted(_LAZY)


def __getattr__(name):
    if name == "actor":  # union.actor, for code written against `union`
        import importlib

        return importlib.import_module("hearth.actor")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'hearth' has no attribute %r" % (name,))
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"actor"})
