"""The plugin's side in a replica: one task execution, as a Flyte container
runs one (``pyflyte-execute``), in the warm interpreter.

``run`` imports the task's module (from the task's code bundle; the worker
switches bundles and drops the old modules as for any task), receives the
input literals and their files (``_literals``), and lets flytekit's
``dispatch_execute`` convert them, call the function and convert its
outputs. Files the outputs point to travel back with them. An exception of
the function is raised as itself, so the caller sees its type and message.
"""

import importlib
import os
import tempfile

__all__ = ["run"]

_state = {}


def _context():
    """A flytekit context for one execution: local file access under a
    fresh directory of the replica's /tmp, as pyflyte's local runs have."""
    from flytekit.core.context_manager import ExecutionParameters, ExecutionState, FlyteContextManager
    from flytekit.core.data_persistence import FileAccessProvider

    base = _state.get("base")
    if base is None or not os.path.isdir(base):
        base = _state["base"] = tempfile.mkdtemp(prefix="flyte-hearth-")
    raw = tempfile.mkdtemp(prefix="raw-", dir=base)
    ctx = FlyteContextManager.current_context()
    fa = FileAccessProvider(local_sandbox_dir=raw, raw_output_prefix=os.path.join(raw, "out"))
    params = ExecutionParameters.new_builder(ctx.user_space_params).build() if ctx.user_space_params else None
    b = ctx.with_file_access(fa)
    state = ctx.new_execution_state().with_params(mode=ExecutionState.Mode.LOCAL_TASK_EXECUTION,
                                                  user_space_params=params)
    return b.with_execution_state(state), raw


def run(module, task, inputs):
    """The output literals (``_literals.encode``) of ``module.task`` on ``inputs``."""
    from flytekit.core.context_manager import FlyteContextManager
    from flytekitplugins.hearth import _literals
    from flytekitplugins.hearth._task import HearthFunctionTask

    mod = importlib.import_module(module)
    t = getattr(mod, task, None)
    if not isinstance(t, HearthFunctionTask):
        raise TypeError("%s.%s is not a task of a flytekitplugins.hearth ActorEnvironment (found %s)"
                        % (module, task, type(t).__name__))
    builder, raw = _context()
    with FlyteContextManager.with_context(builder) as ctx:
        literal_map = _literals.decode(inputs, base=raw)
        try:
            out = t.dispatch_execute(ctx, literal_map)
        except Exception as e:
            # flytekit wraps the user's exception, or rewrites its message in local execution: raise the user's own.
            cause = e.__cause__
            if isinstance(cause, Exception):
                raise cause
            if getattr(e, "_hearth_args", None) is not None:
                e.args = e._hearth_args
            raise
        if not hasattr(out, "to_flyte_idl"):  # a VoidPromise: no outputs
            from flytekit.models.literals import LiteralMap

            out = LiteralMap(literals={})
        return _literals.encode(out)
