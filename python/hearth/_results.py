"""Decoding task results on the caller: JSON as is, pickles restricted.

A result is produced inside a replica, and the caller does not trust a
replica with code execution in its own process, so ``$pickle`` values are
loaded by ``RestrictedUnpickler``: only safe standard types and classes from
the task's own module and the packages of its return annotation
(``HEARTH_TRUST_RESULTS=1`` loads anything).
"""

import os
import pickle

from hearth import _protocol

__all__ = ["RestrictedUnpickler", "annotation_packages", "decode"]


class RestrictedUnpickler(pickle.Unpickler):
    """See the module docstring."""

    SAFE_BUILTINS = frozenset(["set", "frozenset", "complex", "bytearray", "bytes", "slice", "range", "list",
                               "dict", "tuple", "str", "int", "float", "bool", "object"])
    SAFE_MODULES = frozenset(["collections", "datetime", "decimal", "fractions", "uuid", "pathlib", "ipaddress",
                              "zoneinfo", "array"])
    SAFE_FUNCTIONS = frozenset([("copyreg", "_reconstructor"), ("numpy.core.multiarray", "_reconstruct"),
                                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                                ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"), ("numpy", "ndarray"),
                                ("_codecs", "encode")])

    def __init__(self, data, packages):
        import io

        pickle.Unpickler.__init__(self, io.BytesIO(data))
        self.packages = packages

    def find_class(self, module, name):
        if (module, name) in self.SAFE_FUNCTIONS:
            return pickle.Unpickler.find_class(self, module, name)
        if module == "builtins":
            ok = name in self.SAFE_BUILTINS
        else:
            ok = module in self.SAFE_MODULES or module.split(".")[0] in self.packages
        if ok:
            obj = pickle.Unpickler.find_class(self, module, name)
            if isinstance(obj, type):
                return obj
        raise pickle.UnpicklingError(
            "the task's result refers to %s.%s, which the caller does not unpickle: only safe standard types and "
            "classes from the task's module and its return annotation are loaded (set HEARTH_TRUST_RESULTS=1 to "
            "load any)" % (module, name))


def annotation_packages(hint, out):
    import typing

    if isinstance(hint, type) and hint.__module__ not in ("builtins", "typing"):
        out.add(hint.__module__.split(".")[0])
    for a in typing.get_args(hint) if hint is not None else ():
        annotation_packages(a, out)
    return out




def decode(value, packages):
    """A result value; ``packages``: top-level packages whose classes may load."""
    if os.environ.get("HEARTH_TRUST_RESULTS") == "1":
        return _protocol.decode_value(value, True)
    return _protocol.decode_value(value, lambda raw: RestrictedUnpickler(raw, packages).load())
