"""The worker's entry point in a replica (``python3 /.hearth/worker/hearth/_start.py``).

A script is compiled from source at every start, bytecode cache or not; this
one is a few lines, and ``hearth._worker`` (1,200 lines) is then imported as a
module, from its cached bytecode where the package has it for this Python.
"""
import os
import sys

if __name__ == "__main__":
    # The script's directory (hearth/) is sys.path[0]: importing ``hearth``
    # needs its parent there instead.
    here = os.path.dirname(os.path.realpath(__file__))
    if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == here:
        del sys.path[0]
    root = os.path.dirname(here)
    if root not in sys.path:
        sys.path.insert(0, root)
    from hearth import _worker

    _worker._exit(_worker.main())
