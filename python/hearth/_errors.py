"""The SDK's exceptions. Every message says what failed and what to do.

    HearthError
    ├── DaemonUnavailable (also ConnectionError)   nothing answers on the socket
    ├── SocketPermissionError (also PermissionError)
    ├── APIError                                   the daemon refused a request
    │   ├── EnvironmentRefused                     apply failed: the daemon's reason
    │   ├── ImageBuildFailed                       an ImageSpec build failed: the step, its
    │   │                                          exit status and the end of its output
    │   ├── QueueFull                              HTTP 429
    │   └── ResultExpired                          HTTP 410: a finished task's result
    │                                              was dropped over hearthd's result budget
    ├── BundleError (also ValueError)              the code cannot be shipped
    ├── UnsafeResult                               a result would run code here if unpickled
    ├── ResultTypeError (also TypeError)           a result does not fit the return annotation
    └── TaskFailed                                 the task ran and failed
        ├── TaskTimeout (also TimeoutError)
        └── <RemoteType> (also the builtin of that name, e.g. ValueError)
"""

__all__ = [
    "HearthError", "DaemonUnavailable", "SocketPermissionError", "APIError", "EnvironmentRefused",
    "QueueFull", "ImageBuildFailed", "ResultExpired", "BundleError", "UnsafeResult", "ResultTypeError", "TaskFailed", "TaskTimeout", "remote_exception",
]


class HearthError(Exception):
    """Base of every error the SDK raises itself."""


class DaemonUnavailable(HearthError, ConnectionError):
    pass


class DaemonUpgrading(DaemonUnavailable):
    """hearthd is handing over to a new binary (HTTP 503 ``upgrading``): the
    request was not acted on; the SDK sends it again."""


class SocketPermissionError(HearthError, PermissionError):
    pass


class APIError(HearthError):
    """The daemon answered with an error: ``status``, ``code``, ``message``."""

    def __init__(self, status, code, message, what=None):
        self.status = status
        self.code = code
        self.message = message
        text = "%s: %s" % (what, message) if what else message
        HearthError.__init__(self, "%s (hearthd: HTTP %d %s)" % (text, status, code))


class EnvironmentRefused(APIError):
    pass


class QueueFull(APIError):
    pass


class ImageBuildFailed(APIError):
    pass


class ResultExpired(APIError):
    """The task finished, but hearthd dropped its result (or logs) to stay
    within ``--result-budget``/``--result-disk-budget``; ``task`` is what
    is still known of it (state, timing, the error's summary), or None."""

    def __init__(self, status, code, message, what=None, task=None):
        APIError.__init__(self, status, code, message, what)
        self.task = task


class BundleError(HearthError, ValueError):
    pass


class UnsafeResult(HearthError):
    """A task's pickled result names something the caller does not load
    (see hearth._results); nothing of it ran. ``task``, ``what`` (the name,
    call or opcode refused) and ``rule``."""

    def __init__(self, message, task=None, what=None, rule=None):
        self.task, self.what, self.rule = task, what, rule
        HearthError.__init__(self, message)


class ResultTypeError(HearthError, TypeError):
    """A task's result does not fit its return annotation (the worker checks
    it too, so only a replica that skipped that check gets here)."""


class TaskFailed(HearthError):
    """A task raised (or its replica failed). ``remote_type``, ``remote_module``,
    ``remote_message`` and ``remote_traceback`` are the remote exception's;
    ``task_id``, ``replica`` and ``pid`` say where it ran."""

    def __init__(self, task, remote_type, remote_module, remote_message, remote_traceback, task_id=None,
                 replica=None, pid=None):
        self.task = task
        self.remote_type = remote_type
        self.remote_module = remote_module
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback or ""
        self.task_id = task_id
        self.replica = replica
        self.pid = pid
        where = "task %s" % task
        if task_id:
            where += " (%s" % task_id
            if replica:
                where += ", replica %s" % replica
            if pid:
                where += ", pid %s" % pid
            where += ")"
        qual = remote_type if remote_module in (None, "", "builtins", "hearth") else "%s.%s" % (remote_module, remote_type)
        text = "%s failed: %s: %s" % (where, qual, remote_message)
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip("\n")
        self._text = text
        HearthError.__init__(self, text)

    def __str__(self):
        # Not the builtin's __str__ (KeyError would quote the whole text).
        return self._text

    def __reduce__(self):
        return (type(self) if type(self) in (TaskFailed, TaskTimeout) else TaskFailed,
                (self.task, self.remote_type, self.remote_module, self.remote_message, self.remote_traceback,
                 self.task_id, self.replica, self.pid))


class TaskTimeout(TaskFailed, TimeoutError):
    pass


_remote_classes = {}


def remote_exception(task, error, task_id=None, replica=None, pid=None):
    """The exception to raise on the caller for a task's error object.

    A builtin remote type (``ValueError``, ``KeyError``, ...) gives a class
    that is both ``TaskFailed`` and that builtin, so ``except ValueError``
    works as it would have locally; others give a ``TaskFailed`` subclass
    named after the remote type."""
    error = error or {}
    rtype = str(error.get("type") or "Error")
    rmodule = error.get("module")
    args = (task, rtype, rmodule, str(error.get("message") or ""), error.get("traceback"), task_id, replica, pid)
    if rtype == "Timeout" and rmodule is None:  # the daemon's, not a class of the task's
        return TaskTimeout(*args)
    cls = _remote_classes.get((rmodule, rtype))
    if cls is None:
        import builtins

        base = getattr(builtins, rtype, None) if rmodule in (None, "builtins") else None
        bases = (TaskFailed,)
        if isinstance(base, type) and issubclass(base, Exception) and not issubclass(base, HearthError):
            bases = (TaskFailed, base)
        name = rtype if rtype.isidentifier() else "RemoteError"
        try:
            cls = type(name, bases, {"__module__": "hearth.remote"})
        except TypeError:  # a builtin whose layout cannot be combined
            cls = type(name, (TaskFailed,), {"__module__": "hearth.remote"})
        _remote_classes[(rmodule, rtype)] = cls
    return cls(*args)
