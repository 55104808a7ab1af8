"""``union.actor``'s names, so that code written against union runs with its
import lines changed: ``from hearth.actor import ActorEnvironment``, or
``import hearth as union`` and then ``union.actor.ActorEnvironment``."""

from hearth._actor import ActorEnvironment
from hearth._cache import actor_cache

__all__ = ["ActorEnvironment", "actor_cache"]
