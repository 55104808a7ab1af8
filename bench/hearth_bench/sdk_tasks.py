"""Tasks for the SDK measurement: an environment and a task defined the way a
user writes them. Imported only when the SDK is available."""

from hearth import ActorEnvironment

env = ActorEnvironment(name="bench-sdk", replica_count=1, ttl_seconds=600)


@env.task
def trivial():
    import json
    return json.dumps(1 + 1)
