"""workflow, LaunchPlan and current_context, as flytekit spells them.

A workflow runs in the caller's process as plain Python: its body calls
tasks (each a request to hearthd, run in a warm replica), other workflows
and launch plans, in order. Inputs are keyword arguments checked against
the type hints, as for tasks.

``current_context()`` works everywhere; inside a replica
``current_context().secrets.get(key=K)`` reads ``/etc/secrets/K`` (mounted for
the environment's ``secret_requests``), and ``execution_id`` is the task's id.
"""

import functools
import os

__all__ = ["workflow", "Workflow", "WorkflowFailurePolicy", "LaunchPlan", "current_context", "ExecutionParameters", "SecretsManager"]


class Workflow(object):
    def __init__(self, fn, options=None):
        functools.update_wrapper(self, fn)
        self._hearth_fn = fn
        self.name = "%s.%s" % (fn.__module__, fn.__qualname__)
        self.options = dict(options or {})
        self._sig = None

    @property
    def signature(self):
        if self._sig is None:
            from hearth._typecheck import Signature

            self._sig = Signature(self._hearth_fn, "workflow")
        return self._sig

    def __call__(self, *args, **kwargs):
        from hearth import _flow  # conditionals, skipped branches, bool proxies, `>>` (see there)

        return _flow.call(self, args, kwargs, self._run)

    def _run(self, args, kwargs):
        from hearth import _flow

        return _flow.run_body(self, self.signature.bind(args, kwargs))

    def __repr__(self):
        return "<hearth workflow %s>" % self.name


class WorkflowFailurePolicy(object):
    """flytekit's failure policies, accepted by ``@workflow(failure_policy=...)``.
    Hearth runs a body's calls in order and stops at the first failure
    (``FAIL_IMMEDIATELY``); the other policy is accepted, not applied."""
    FAIL_IMMEDIATELY = "FAIL_IMMEDIATELY"
    FAIL_AFTER_EXECUTABLE_NODES_COMPLETE = "FAIL_AFTER_EXECUTABLE_NODES_COMPLETE"


def workflow(fn=None, **options):
    """``@workflow`` or ``@workflow(failure_policy=..., interruptible=...)``;
    flytekit's options are accepted and have no effect on local execution."""
    if fn is None:
        return lambda f: Workflow(f, options)
    if not callable(fn):
        raise TypeError("workflow: expected a function, got %r" % (fn,))
    return Workflow(fn, options)


class LaunchPlan(object):
    """A workflow with default and fixed inputs. A schedule, notifications,
    labels and the like are kept but not applied: Hearth runs a launch plan
    when it is called."""

    _registry = {}
    CACHE = _registry  # flytekit's name
    _warned = set()

    def __init__(self, name, workflow, default_inputs=None, fixed_inputs=None, schedule=None, notifications=None,
                 labels=None, annotations=None, **options):
        if not isinstance(workflow, Workflow):
            raise TypeError("LaunchPlan %s: expected a @workflow, got %r" % (name, workflow))
        self.name = name
        self.workflow = workflow
        self.default_inputs = dict(default_inputs or {})
        self.fixed_inputs = dict(fixed_inputs or {})
        self.schedule = schedule
        self.notifications = notifications or []
        self.labels = labels
        self.annotations = annotations
        self.options = options
        for k in list(self.default_inputs) + list(self.fixed_inputs):
            if k not in workflow.signature.names:
                raise TypeError("LaunchPlan %s: %r is not an input of %s (its inputs: %s)"
                                % (name, k, workflow.__name__, ", ".join(workflow.signature.names) or "none"))
        unapplied = [k for k, v in (("schedule", schedule), ("notifications", notifications)) if v]
        unapplied = [k for k in unapplied if k not in LaunchPlan._warned]
        if unapplied:
            import warnings

            LaunchPlan._warned.update(unapplied)
            warnings.warn("LaunchPlan %s: %s not applied by Hearth: it runs a launch plan only when it is called"
                          % (name, " and ".join(unapplied)), stacklevel=3)

    def _same(self, other):
        """The differences that make two launch plans of one name conflict."""
        for what, a, b in (("workflow", self.workflow.name, other.workflow.name),
                           ("default_inputs", self.default_inputs, other.default_inputs),
                           ("fixed_inputs", self.fixed_inputs, other.fixed_inputs),
                           ("schedule", self.schedule, other.schedule),
                           ("notifications", self.notifications, other.notifications),
                           ("labels", self.labels, other.labels),
                           ("annotations", self.annotations, other.annotations)):
            if a != b:
                return what
        return None

    @classmethod
    def _register(cls, lp):
        """flytekit's rule: one name, one launch plan. The same plan again
        (a module imported again after an edit makes new workflow objects)
        replaces the old; a different one is refused."""
        old = cls._registry.get(lp.name)
        if old is not None:
            what = old._same(lp)
            if what is not None:
                from hearth._flow import WorkflowError

                raise WorkflowError("two launch plans are named %r, for workflow %s and %s, with different %s; "
                                    "give them different names" % (lp.name, old.workflow.name, lp.workflow.name, what))
            if old.workflow is lp.workflow:
                return old
        cls._registry[lp.name] = lp
        return lp

    @classmethod
    def create(cls, name, workflow, default_inputs=None, fixed_inputs=None, schedule=None, notifications=None,
               labels=None, annotations=None, raw_output_data_config=None, max_parallelism=None,
               security_context=None, auth_role=None, trigger=None, overwrite_cache=None, auto_activate=False,
               concurrency=None):
        """flytekit's ``LaunchPlan.create``; the arguments after
        ``annotations`` are accepted and not applied."""
        return cls._register(cls(name, workflow, default_inputs, fixed_inputs, schedule, notifications, labels,
                                 annotations, raw_output_data_config=raw_output_data_config,
                                 max_parallelism=max_parallelism, security_context=security_context,
                                 auth_role=auth_role, trigger=trigger, overwrite_cache=overwrite_cache,
                                 auto_activate=auto_activate, concurrency=concurrency))

    @classmethod
    def get_default_launch_plan(cls, ctx, workflow):
        """The launch plan named after the workflow, with its own defaults."""
        return cls.get_or_create(workflow)

    @classmethod
    def get_or_create(cls, workflow, name=None, default_inputs=None, fixed_inputs=None, schedule=None,
                      notifications=None, labels=None, annotations=None, **options):
        """A launch plan of ``workflow``; the same name with the same inputs
        gives the same object (or, after the module was imported again, a new
        one in its place); the same name with other inputs is refused."""
        if name is None and any(v is not None for v in (default_inputs, fixed_inputs, schedule, notifications,
                                                         labels, annotations)):
            raise ValueError("LaunchPlan.get_or_create(%s): only a named launch plan can have inputs, a schedule "
                             "or notifications; the default one (no name) has none"
                             % getattr(workflow, "name", workflow))
        name = name or getattr(workflow, "name", None) or repr(workflow)
        return cls._register(cls(name, workflow, default_inputs, fixed_inputs, schedule, notifications, labels,
                                 annotations, **options))

    def __call__(self, *args, **kwargs):
        if args:  # positionally, in the workflow's order, as flytekit takes them
            names = self.workflow.signature.names
            if len(args) > len(names):
                raise TypeError("launch plan %s takes %d inputs, got %d positional arguments"
                                % (self.name, len(names), len(args)))
            for n, v in zip(names, args):
                if n in kwargs:
                    raise TypeError("launch plan %s got input %r twice: positionally and by keyword" % (self.name, n))
                kwargs[n] = v
        for k in kwargs:
            if k in self.fixed_inputs:
                raise TypeError("launch plan %s: input %r is fixed to %r" % (self.name, k, self.fixed_inputs[k]))
        inputs = dict(self.default_inputs)
        inputs.update(kwargs)
        inputs.update(self.fixed_inputs)
        return self.workflow(**inputs)

    def __repr__(self):
        return "<hearth launch plan %s>" % self.name


class SecretsManager(object):
    """Reads the secrets an environment requested.

    In a replica: ``/etc/secrets/KEY`` (``HEARTH_SECRETS_DIR`` overrides the
    directory). Outside, for running tasks' code locally: the variable
    ``HEARTH_SECRET_<KEY>`` (upper case, other characters as ``_``), then
    flytekit's ``_FSEC_<GROUP>_<KEY>``."""

    def __init__(self, directory=None):
        self.directory = directory or os.environ.get("HEARTH_SECRETS_DIR") or "/etc/secrets"

    @staticmethod
    def _var(s):
        import re

        return re.sub(r"[^A-Za-z0-9]", "_", s).upper()

    def get(self, group=None, key=None, group_version=None, encode_mode="r"):
        name = key or group
        if not name:
            raise ValueError("secrets.get needs a key")
        if "/" in name or name in (".", ".."):
            raise ValueError("secret key %r is not valid: no '/', not '.' or '..'" % name)
        path = os.path.join(self.directory, name)
        try:
            with open(path, encode_mode) as f:
                return f.read()
        except FileNotFoundError:
            pass
        except PermissionError:
            raise PermissionError("secret %r: cannot read %s" % (name, path))
        for var in ("HEARTH_SECRET_" + self._var(name),
                    "_FSEC_%s_%s" % (self._var(group or ""), self._var(key or "")) if group and key else None):
            if var and var in os.environ:
                value = os.environ[var]
                return value.encode() if "b" in encode_mode else value
        raise ValueError("secret %r is not available: no %s (is it in the environment's secret_requests, and set "
                         "with `hearth secret set %s`?) and no HEARTH_SECRET_%s variable"
                         % (name, path, name, self._var(name)))

    def get_secrets_env_var(self, group=None, key=None, group_version=None):
        return "HEARTH_SECRET_" + self._var(key or group or "")

    def get_secrets_file(self, group=None, key=None, group_version=None):
        return os.path.join(self.directory, key or group or "")


class ExecutionParameters(object):
    """What ``current_context()`` returns: ``secrets``, ``execution_id``
    (the task id inside a replica, else None), ``environment`` and
    ``replica`` (inside a replica), ``logging``, ``working_directory``."""

    def __init__(self):
        from hearth import _worker

        self.secrets = SecretsManager()
        self.execution_id = _worker.current_task_id
        self.environment = os.environ.get("HEARTH_ENVIRONMENT") if _worker.in_worker() else None
        self.replica = os.environ.get("HEARTH_REPLICA") if _worker.in_worker() else None
        self._workdir = None

    @property
    def logging(self):
        import logging

        return logging.getLogger("hearth.task")

    @property
    def working_directory(self):
        if self._workdir is None:
            import tempfile

            self._workdir = tempfile.mkdtemp(prefix="hearth-")
        return self._workdir

    @property
    def execution_date(self):
        import datetime

        return datetime.datetime.now(datetime.timezone.utc)


def current_context():
    return ExecutionParameters()
