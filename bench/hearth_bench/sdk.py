"""The warm round trip through the Python SDK (python/hearth), measured when
`from hearth import ActorEnvironment` works; reported as not available
otherwise."""

from __future__ import annotations

import os
from typing import Any, Callable


class Unavailable(Exception):
    pass


def setup(socket_path: str) -> Callable[[], Any]:
    """Returns a no-argument callable that runs the trivial task once through
    the SDK and returns its result ("2")."""
    os.environ["HEARTH_SOCKET"] = socket_path
    try:
        from hearth import ActorEnvironment  # noqa: F401
    except ImportError as e:
        raise Unavailable(f"the SDK has no ActorEnvironment yet ({e})") from e
    from hearth_bench import sdk_tasks
    return sdk_tasks.trivial
