"""flytekit plugin: union's ActorEnvironment on Hearth's warm replicas.

    from flytekit import workflow
    from flytekitplugins.hearth import ActorEnvironment

    actor = ActorEnvironment(name="my-actor", replica_count=1, ttl_seconds=300)

    @actor.task
    def plus_one(input: int) -> int:
        return input + 1

Tasks are real flytekit tasks (type engine, cache, retries, map_task,
``pyflyte run``); their executions run in the environment's warm replicas
of the hearthd at ``HEARTH_SOCKET`` (or ``HEARTH_HOST``). On a Flyte
cluster the same tasks go through the connector (``connector``,
``hearth-connector``) to the hearthd of a node.
"""

from flytekitplugins.hearth._environment import ActorEnvironment
from flytekitplugins.hearth._task import HearthActor, HearthFunctionTask
# Registers the connector: `pyflyte serve connector` finds it through this package's flytekit.plugins entry point.
from flytekitplugins.hearth.connector import HearthConnector

__all__ = ["ActorEnvironment", "HearthActor", "HearthConnector", "HearthFunctionTask"]
