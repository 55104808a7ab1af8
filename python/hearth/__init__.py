"""Hearth: warm, isolated Python replicas on one machine.

This package is also what the replica's worker runs (``hearth._worker``), so it
stays light: importing it has no side effects and pulls in only the standard
library modules ``actor_cache`` needs.
"""

from hearth._cache import actor_cache

__version__ = "0.1.0"

__all__ = ["actor_cache", "__version__"]
