"""Inert ``kubernetes.client.models`` for replicas whose image lacks kubernetes.

A module written for a pod template (the seed's ``pod_template.py``) imports
``kubernetes.client.models`` at the top. The caller's process has the real
package and reads the pod spec when it applies the environment; inside the
replica the module is imported again only to reach its tasks, and the pod
spec objects it builds are never read there. Making the worker's image
carry the kubernetes client and its dependencies for that would be a heavy
price for nothing, so the worker installs this finder *last* on
``sys.meta_path``: when the image has the real package, that one is imported;
otherwise ``kubernetes``, ``kubernetes.client`` and
``kubernetes.client.models`` resolve here, and every ``V1…``/``V2…`` name is
a plain record class (keyword arguments become attributes; unset attributes
read as None, as in the real models).
"""

import sys

# The import system's own ModuleSpec: importing importlib.machinery would cost start-up time.
_ModuleSpec = type(sys.__spec__) if getattr(sys, "__spec__", None) is not None else None

__all__ = ["install", "MODULES"]

MODULES = ("kubernetes", "kubernetes.client", "kubernetes.client.models")
_classes = {}


class _Model(object):
    """A stand-in for a kubernetes model: attributes as given."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def to_dict(self):
        return dict(self.__dict__)

    def __eq__(self, other):
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self):
        return id(self)

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % kv for kv in sorted(self.__dict__.items())))


def _model(name):
    if not (len(name) > 1 and name[0] == "V" and name[1].isdigit() and name.isalnum() and name.isascii()):
        raise AttributeError("module 'kubernetes.client.models' has no attribute %r "
                             "(Hearth's stand-in: the image has no kubernetes package)" % (name,))
    cls = _classes.get(name)
    if cls is None:
        cls = _classes[name] = type(name, (_Model,), {"__module__": "kubernetes.client.models"})
    return cls


class _Finder(object):
    # A meta path finder and its loader (duck-typed: importlib.abc costs start-up time).
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MODULES:
            return None
        spec_type = _ModuleSpec
        if spec_type is None:  # pragma: no cover
            import importlib.machinery

            spec_type = importlib.machinery.ModuleSpec
        return spec_type(fullname, self, is_package=fullname != MODULES[-1])

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__hearth_stand_in__ = True
        if module.__name__ == "kubernetes.client.models":
            module.__getattr__ = _model
        elif module.__name__ == "kubernetes.client":
            from kubernetes.client import models

            module.models = models
            module.__getattr__ = _model
        else:
            module.__path__ = []


_finder = _Finder()


def install():
    """Append the finder to sys.meta_path (once); real packages win."""
    if _finder not in sys.meta_path:
        sys.meta_path.append(_finder)
