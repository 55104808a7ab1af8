"""``ActorEnvironment`` with union's signature, over real flytekit.

Each argument is flytekit's (``flytekit.Resources``, ``flytekit.ImageSpec``,
``flytekit.Secret``, ``flytekit.PodTemplate``) or Hearth's own; the
environment becomes a ``hearth.ActorEnvironment`` (the spec hearthd
applies), and its tasks are flytekit tasks (``HearthFunctionTask``) that
run in that environment's warm replicas.

The replica imports the task's module, which imports flytekit, so the image
must have flytekit: an ImageSpec becomes a Hearth build of the same spec
plus ``flytekit==<this process's version>`` (unless it names flytekit
itself), and no image at all is the default image with flytekit added, as
flytekit's own ImageSpec builder adds it. A plain image name is used as
given and must have flytekit.
"""

import copy
import datetime
import warnings

import flytekit
import hearth
from hearth import _packages

from flytekitplugins.hearth._task import HearthActor

__all__ = ["ActorEnvironment", "hearth_image", "hearth_resources"]

# Union's own packages: Hearth stands in for them (hearthd drops them from builds).
_STAND_INS = {"union", "flytekitplugins-pod", "flytekitplugins-hearth"}
_COPIED = ("name", "python_version", "env", "registry", "requirements", "apt_packages", "base_image", "pip_index",
           "pip_extra_index_url", "commands", "pip_extra_args", "conda_packages", "cuda", "cudnn", "platform")


def _project(req):
    """A requirement's PEP 503 name, as hearthd compares them; "" for what is
    not a requirement (the build refuses it by name)."""
    try:
        return _packages.normalize(_packages.parse(req)[0])
    except ValueError:
        return ""


def hearth_image(image, where="container_image"):
    """A flytekit ImageSpec (or None, or a name) as the image hearthd runs:
    a ``hearth.ImageSpec`` whose packages include flytekit."""
    if image is None:
        return hearth.ImageSpec(packages=["flytekit==%s" % flytekit.__version__])
    if isinstance(image, hearth.ImageSpec) or isinstance(image, str):
        return image
    if not isinstance(image, flytekit.ImageSpec):
        raise TypeError("%s: expected a flytekit.ImageSpec or an image name, got %r" % (where, image))
    fields = {f: getattr(image, f, None) for f in _COPIED}
    fields = {k: v for k, v in fields.items() if v is not None}
    if fields.get("platform") == "linux/amd64":
        fields.pop("platform")
    if "base_image" in fields:
        fields["base_image"] = hearth_image(fields["base_image"], where + ".base_image") \
            if not isinstance(fields["base_image"], str) else fields["base_image"]
    packages = [p for p in (image.packages or []) if _project(p) not in _STAND_INS]
    if not any(_project(p) == "flytekit" for p in packages):
        packages.append("flytekit==%s" % flytekit.__version__)
    if image.copy:
        fields["copy"] = list(image.copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flytekit already warned of what it cannot do
        return hearth.ImageSpec(packages=packages, **fields)


def hearth_resources(r, where):
    """flytekit.Resources -> hearth.Resources (a (request, limit) tuple's request)."""
    if r is None or isinstance(r, hearth.Resources):
        return r
    if not isinstance(r, flytekit.Resources):
        raise TypeError("%s: expected flytekit.Resources, got %r" % (where, r))

    def one(v):
        return v[0] if isinstance(v, tuple) else v

    return hearth.Resources(cpu=one(r.cpu), mem=one(r.mem), gpu=one(r.gpu),
                            ephemeral_storage=one(r.ephemeral_storage))


def _secret(s, i):
    if isinstance(s, (str, hearth.Secret)):
        return s
    key, group = getattr(s, "key", None), getattr(s, "group", None)
    if key is None and group is None:
        raise TypeError("secret_requests[%d]: expected flytekit.Secret or a key string, got %r" % (i, s))
    return hearth.Secret(key=key, group=group)


def _pod_template(t, where):
    if t is None or isinstance(t, hearth.PodTemplate):
        return t
    if not isinstance(t, flytekit.PodTemplate):
        raise TypeError("%s: expected flytekit.PodTemplate, got %r" % (where, t))
    spec = copy.copy(t.pod_spec)
    containers = getattr(spec, "containers", None)
    if containers:
        spec.containers = []
        for c in containers:
            c = copy.copy(c)
            if c.image is not None and not isinstance(c.image, str):
                c.image = hearth_image(c.image, "%s container %s image" % (where, c.name))
            spec.containers.append(c)
    return hearth.PodTemplate(pod_spec=spec, primary_container_name=t.primary_container_name, labels=t.labels,
                              annotations=t.annotations)


def _primary_image(template):
    spec = getattr(template, "pod_spec", None)
    for c in getattr(spec, "containers", None) or []:
        if c.name == template.primary_container_name:
            return c.image
    return None


class ActorEnvironment(object):
    """union's ``ActorEnvironment``: ``name``, ``container_image``,
    ``replica_count``, ``ttl_seconds``, ``environment``, ``requests``,
    ``limits``, ``accelerator``, ``secret_requests``, ``pod_template``,
    ``interruptible``, ``parallelism``, ``backlog_length``; Hearth's own
    (``timeout``, ``max_queue``, ``network``, ``replicas``, ``preload``,
    ``mounts``, ``devices``, ``socket``, …) as keywords, as
    ``hearth.ActorEnvironment`` takes them.

    ``@env.task`` takes flytekit's task arguments (``cache``,
    ``cache_version``, ``retries``, ``timeout``, ``requests``, …): the task
    is a flytekit task, and its execution runs in the environment's warm
    replicas."""

    def __init__(self, name, container_image=None, replica_count=1, ttl_seconds=None, environment=None,
                 requests=None, limits=None, accelerator=None, secret_requests=None, pod_template=None,
                 interruptible=False, parallelism=None, backlog_length=None, **hearth_options):
        where = "ActorEnvironment %s" % name
        if isinstance(ttl_seconds, datetime.timedelta):
            ttl_seconds = ttl_seconds.total_seconds()
        self.name = name
        self.container_image = container_image
        template = _pod_template(pod_template, "%s: pod_template" % where)
        if container_image is None and _primary_image(template) is not None:
            image = None  # the pod template's primary container names it
        else:
            image = hearth_image(container_image, "%s: container_image" % where)
        self.hearth = hearth.ActorEnvironment(
            name, container_image=image,
            replica_count=replica_count, ttl_seconds=ttl_seconds, environment=environment,
            requests=hearth_resources(requests, "%s: requests" % where),
            limits=hearth_resources(limits, "%s: limits" % where), accelerator=accelerator,
            secret_requests=[_secret(s, i) for i, s in enumerate(secret_requests or [])],
            pod_template=template, interruptible=interruptible,
            parallelism=parallelism, backlog_length=backlog_length, **hearth_options)
        self._config = HearthActor(environment=self)

    def __repr__(self):
        return "ActorEnvironment(name=%r, replica_count=%r)" % (self.name, self.hearth.replica_count)

    def spec(self):
        """The environment spec hearthd applies (JSON-able)."""
        return self.hearth.spec()

    def task(self, _task_function=None, **kwargs):
        """``@env.task`` or ``@env.task(retries=2, cache=True, ...)``:
        ``flytekit.task`` with this environment as its config."""
        if "task_config" in kwargs:
            raise TypeError("%s.task: task_config is the environment's own; leave it out" % self.name)
        if "container_image" in kwargs:
            raise TypeError("%s.task: container_image is the environment's (ActorEnvironment(container_image=...))"
                            % self.name)

        def decorate(fn):
            return flytekit.task(fn, task_config=self._config, **kwargs)

        if _task_function is None:
            return decorate
        return decorate(_task_function)

    def remove(self):
        """Removes the environment from hearthd (its replicas go)."""
        self.hearth.remove()
