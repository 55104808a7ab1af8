"""actor_cache: memoize a function for the life of the replica.

    from hearth import actor_cache

    @actor_cache                 # or @actor_cache()
    def load_model(name):
        return expensive_load(name)

Results are kept per function in a registry that lives in this module (part
of the worker, never dropped), keyed by the function's ``__module__`` and
``__qualname__``. When the worker reloads the user's code for a new bundle
version, the re-imported, re-decorated function finds the values the old
version computed: a loaded model survives a code change.

Keys: the positional arguments plus the keyword arguments (sorted by name;
``f(1)`` and ``f(x=1)`` are different keys, as with functools.lru_cache).
Hashable arguments are used as they are; if any is unhashable the key is the
pickle of the arguments instead (so e.g. two dicts with equal content but a
different insertion order are different keys). Exceptions are not cached.
The cache is unbounded.

The wrapped function has ``cache_clear()`` and ``cache_size()``;
``actor_cache.clear()`` empties every registry entry (``clear(fn)`` one).
Standard library only; no side effects on import.
"""

import functools
import threading

__all__ = ["actor_cache", "clear", "registry_key"]

# (module, qualname) -> {key: value}. Held here, not in user code.
_registry = {}
_lock = threading.Lock()
_KW_MARK = object()


class _PickledKey(object):
    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def __hash__(self):
        return hash(self.data)

    def __eq__(self, other):
        return type(other) is _PickledKey and other.data == self.data


def registry_key(fn):
    return (getattr(fn, "__module__", None) or "?", getattr(fn, "__qualname__", None) or fn.__name__)


def _store_for(fn):
    rk = registry_key(fn)
    with _lock:
        store = _registry.get(rk)
        if store is None:
            store = _registry[rk] = {}
    return rk, store


def _make_key(args, kwargs):
    if kwargs:
        key = args + (_KW_MARK,) + tuple(sorted(kwargs.items()))
    else:
        key = args
    try:
        hash(key)
        return key
    except TypeError:
        import pickle

        return _PickledKey(pickle.dumps((args, sorted(kwargs.items())), protocol=4))


def _decorate(fn):
    rk, store = _store_for(fn)
    missing = object()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        key = _make_key(args, kwargs)
        value = store.get(key, missing)
        if value is missing:
            value = fn(*args, **kwargs)
            store[key] = value
        return value

    def cache_clear():
        store.clear()

    def cache_size():
        return len(store)

    wrapper.cache_clear = cache_clear
    wrapper.cache_size = cache_size
    wrapper._hearth_cache_key = rk
    return wrapper


def actor_cache(fn=None):
    """Decorator; ``@actor_cache`` and ``@actor_cache()`` both work."""
    if fn is None:
        return _decorate
    if not callable(fn):
        raise TypeError("actor_cache expects a function, got %r" % (fn,))
    return _decorate(fn)


def clear(fn=None):
    """Empty the cache of ``fn`` (a decorated function), or every cache."""
    with _lock:
        if fn is None:
            for store in _registry.values():
                store.clear()
            return
        rk = getattr(fn, "_hearth_cache_key", None) or registry_key(fn)
        store = _registry.get(rk)
    if store is not None:
        store.clear()


actor_cache.clear = clear
