"""Resources, Secret, ImageSpec and PodTemplate, as flytekit spells them,
and their translation into the daemon's environment spec (JSON).

The daemon validates every value (quantities, names, limits) and answers
with the field and the rule; the SDK only translates, and refuses what it
cannot translate (a ``value_from`` env var, a pod spec that is neither a
mapping nor a kubernetes object).
"""

import warnings

# Imported inside replicas too (ImageSpec at module level): keep it light.

__all__ = ["Resources", "Secret", "ImageSpec", "PodTemplate", "DEFAULT_IMAGE",
           "resources_dict", "image_name", "image_packages", "image_builds", "pod_template_dict"]

DEFAULT_IMAGE = "hearth/python:3.11"


def _pk():
    from hearth import _packages

    return _packages


class Resources(object):
    """``Resources(cpu="2", mem="300Mi", gpu="1", ephemeral_storage="1Gi")``;
    numbers are accepted for cpu and gpu."""

    __slots__ = ("cpu", "mem", "gpu", "ephemeral_storage")

    def __init__(self, cpu=None, mem=None, gpu=None, ephemeral_storage=None):
        self.cpu, self.mem, self.gpu, self.ephemeral_storage = cpu, mem, gpu, ephemeral_storage

    def __eq__(self, other):
        return isinstance(other, Resources) and resources_dict(self) == resources_dict(other)

    def __hash__(self):
        return hash(tuple(sorted(resources_dict(self).items())))

    def __repr__(self):
        return "Resources(%s)" % ", ".join("%s=%r" % kv for kv in resources_dict(self).items())


def _quantity(value, field):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError("%s: expected a quantity such as \"2\" or \"500Mi\", got %r" % (field, value))
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


def resources_dict(r, field="resources"):
    if r is None:
        return {}
    if isinstance(r, dict):
        r = Resources(**{("mem" if k == "memory" else k): v for k, v in r.items()})
    if not isinstance(r, Resources):
        raise TypeError("%s: expected hearth.Resources, got %r" % (field, r))
    out = {}
    for k in Resources.__slots__:
        v = _quantity(getattr(r, k), "%s.%s" % (field, k))
        if v is not None:
            out[k] = v
    return out


class Secret(object):
    """A secret request: ``Secret(key="api-token")`` (``group`` is accepted;
    Hearth's store is flat, so the key, else the group, names the secret).
    Set secrets with ``hearth secret set KEY``; a task reads them with
    ``current_context().secrets.get(key=KEY)``."""

    class MountType(object):
        ANY = "ANY"
        ENV_VAR = "ENV_VAR"
        FILE = "FILE"

    def __init__(self, key=None, group=None, group_version=None, mount_requirement=None, env_var=None):
        if not key and not group:
            raise ValueError("Secret needs a key (or a group)")
        self.key, self.group, self.group_version = key, group, group_version
        self.mount_requirement, self.env_var = mount_requirement, env_var

    @property
    def name(self):
        return self.key or self.group

    def __repr__(self):
        return "Secret(key=%r)" % self.name


def secret_keys(requests):
    out = []
    for i, s in enumerate(requests or []):
        if isinstance(s, str):
            out.append(s)
        elif isinstance(s, Secret):
            out.append(s.name)
        else:
            raise TypeError("secret_requests[%d]: expected hearth.Secret or a key string, got %r" % (i, s))
    return out


class ImageSpec(str):
    """flytekit's ImageSpec. A spec that asks for nothing its base image
    lacks (``packages`` Hearth provides: union, flytekitplugins-pod,
    flytekitplugins-hearth, hearth; ``env``; ``registry``) resolves to
    ``base_image`` (a name, or another ImageSpec) or the default image.
    Otherwise (other ``packages``, ``requirements``, ``apt_packages``,
    ``commands``, ``copy``, ``pip_index``/``pip_extra_index_url`` with
    packages, ``pip_extra_args``) it names the image hearthd builds from it,
    ``[registry/]name:<hash of the spec>`` as flytekit tags its images, and
    the first ``apply`` of an environment on it builds it (see
    hearth._images). ``env`` becomes environment variables of the replicas
    (and of a built image). ``conda_packages``, ``cuda`` and ``cudnn`` are
    not built: they warn.

    An ImageSpec *is* the image reference it resolves to (a ``str``), so it
    goes wherever an image name may: kubernetes' own models (which validate
    ``V1Container.image`` as a string and keep a plain copy) included. Such
    a copy still brings the ImageSpec's build and env: ``image_spec`` looks
    a plain name up among the ImageSpecs made in this process."""

    _made = {}  # resolved name -> [ImageSpec], for plain copies (see above)

    def __new__(cls, *args, **kwargs):
        import inspect

        try:
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        except TypeError as e:
            raise TypeError("ImageSpec: %s" % e)
        bound.apply_defaults()
        fields = dict(bound.arguments)
        fields.pop("self", None)
        probe = str.__new__(cls, "")
        probe.__dict__.update(fields)
        plan = _build_plan(probe)
        self = str.__new__(cls, plan[2] if plan is not None else image_name(fields.get("base_image")))
        self._hearth_build = plan
        return self

    def __init__(self, name="flytekit", python_version=None, builder=None, source_root=None, env=None,
                 registry=None, packages=None, conda_packages=None, conda_channels=None, requirements=None,
                 apt_packages=None, cuda=None, cudnn=None, base_image=None, platform="linux/amd64",
                 pip_index=None, pip_extra_index_url=None, registry_config=None, entrypoint=None, commands=None,
                 tag_format=None, source_copy_mode=None, copy=None, python_exec=None, pip_secret_mounts=None,
                 builder_options=None, pip_extra_args=None):
        self.name, self.python_version, self.builder, self.source_root = name, python_version, builder, source_root
        self.env = dict(env or {})
        self.registry, self.packages = registry, list(packages or [])
        self.conda_packages, self.conda_channels = conda_packages, conda_channels
        self.requirements, self.apt_packages, self.cuda, self.cudnn = requirements, apt_packages, cuda, cudnn
        self.base_image, self.platform, self.pip_index = base_image, platform, pip_index
        self.pip_extra_index_url, self.registry_config, self.entrypoint = pip_extra_index_url, registry_config, entrypoint
        self.commands, self.tag_format, self.source_copy_mode, self.copy = commands, tag_format, source_copy_mode, copy
        self.python_exec, self.pip_secret_mounts, self.builder_options = python_exec, pip_secret_mounts, builder_options
        self.pip_extra_args = pip_extra_args
        for field in ("conda_packages", "cuda", "cudnn"):
            if getattr(self, field):
                warnings.warn("ImageSpec.%s: Hearth does not build it (no conda, no CUDA download); use a base "
                              "image that has it (%s)" % (field, image_name(self)), stacklevel=2)
        ImageSpec._made.setdefault(str(self), []).append(self)
        if platform not in (None, "linux/amd64"):
            warnings.warn("ImageSpec.platform %r: Hearth runs replicas on this machine's platform" % (platform,),
                          stacklevel=2)

    @property
    def image_name(self):
        return image_name(self)

    def __repr__(self):
        return "ImageSpec(base_image=%r, packages=%r)" % (self.base_image, self.packages)

    def __reduce__(self):
        return (_rebuild_image_spec, (dict(self.__dict__),))


def _rebuild_image_spec(state):
    plan = state.get("_hearth_build")
    spec = str.__new__(ImageSpec, plan[2] if plan else image_name(state.get("base_image")))
    spec.__dict__.update(state)
    return spec


def _build_plan(spec):
    """``(build request spec, copy bundle, image name)`` when ``spec`` needs
    a build, else None. Inside a replica nothing is read: None."""
    from hearth import _images

    if _images.in_replica() or not _images.needs_build(spec):
        return None
    build, bundle = _images.build_spec(spec, image_name(spec.base_image))
    return build, bundle, _images.image_ref(build, _images.spec_tag(build))


def image_name(image):
    """The image reference an ImageSpec or a name resolves to."""
    seen = 0
    while isinstance(image, ImageSpec):
        if getattr(image, "_hearth_build", None) is not None:
            return str(image)
        seen += 1
        if seen > 16:
            raise ValueError("ImageSpec.base_image chain is too deep (a cycle?)")
        image = getattr(image, "base_image", None)
    if image is None:
        return DEFAULT_IMAGE
    if not isinstance(image, str):
        raise TypeError("container_image: expected an image name or hearth.ImageSpec, got %r" % (image,))
    return image


def image_packages(image):
    """Requirement strings an ImageSpec (and its base ImageSpecs) ask the
    image to have, without the ones Hearth provides, for the worker's check
    at start. An ImageSpec that is built contributes none: its build
    installed them (and its bases'). A plain name brings the packages of the
    ImageSpecs that resolve to it (kubernetes models keep plain copies)."""
    if isinstance(image, str) and not isinstance(image, ImageSpec):
        out = []
        for spec in ImageSpec._made.get(image, []):
            out.extend(p for p in image_packages(spec) if p not in out)
        return out
    out = []
    seen = 0
    while isinstance(image, ImageSpec) and seen < 16:
        if getattr(image, "_hearth_build", None) is not None:
            break
        seen += 1
        for i, req in enumerate(image.packages):
            if not isinstance(req, str):
                raise TypeError("ImageSpec.packages[%d]: expected a string, got %r" % (i, req))
            name, op, version = _pk().parse(req)
            if _pk().normalize(name) in _pk().PROVIDED:
                continue
            text = name + (op + version if op else "")
            if text not in out:
                out.append(text)
        image = getattr(image, "base_image", None)
    return out


def pod_template_images(template):
    """The container images a PodTemplate names (ImageSpecs kept as such)."""
    spec = getattr(template, "pod_spec", None)
    if spec is None or (not isinstance(spec, dict) and not hasattr(spec, "containers")):
        return []
    return [_get(c, "image") for c in (_get(spec, "containers") or []) if _get(c, "image") is not None]


def image_builds(image):
    """The ImageSpecs behind ``image`` (an ImageSpec, or a plain name an
    ImageSpec of this process resolves to) that hearthd must build."""
    specs = [image] if isinstance(image, ImageSpec) else ImageSpec._made.get(image, []) if isinstance(image, str) else []
    return [s for s in specs[-1:] if getattr(s, "_hearth_build", None) is not None]


def image_env(image):
    env = {}
    chain = []
    if isinstance(image, str) and not isinstance(image, ImageSpec):
        specs = ImageSpec._made.get(image, [])
        image = specs[-1] if len(specs) == 1 else None
    while isinstance(image, ImageSpec) and len(chain) < 16:
        chain.append(image)
        image = getattr(image, "base_image", None)
    for spec in reversed(chain):  # the outer spec's variables win
        env.update({str(k): str(v) for k, v in spec.env.items()})
    return env


class PodTemplate(object):
    """``PodTemplate(primary_container_name="primary", pod_spec=..., labels=..., annotations=...)``.

    ``pod_spec`` may be a ``kubernetes.client.models.V1PodSpec`` (read by
    attribute; kubernetes is not a dependency of Hearth) or a plain dict
    (snake_case or camelCase keys). Of the pod spec, Hearth acts on the
    primary container's ``image`` (a name or an ImageSpec), ``env`` and
    ``resources``; other settings are reported with a warning, since a
    replica is not a Kubernetes pod."""

    def __init__(self, pod_spec=None, primary_container_name="primary", labels=None, annotations=None):
        self.pod_spec = pod_spec
        self.primary_container_name = primary_container_name
        self.labels = dict(labels or {})
        self.annotations = dict(annotations or {})

    def __repr__(self):
        return "PodTemplate(primary_container_name=%r)" % self.primary_container_name


def _get(obj, name, camel=None):
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
        return obj.get(camel) if camel else None
    return getattr(obj, name, None)


def _fields(obj):
    """Names of the fields that are set, for warnings about ignored ones."""
    if isinstance(obj, dict):
        return [k for k, v in obj.items() if v not in (None, [], {})]
    names = getattr(obj, "openapi_types", None) or getattr(obj, "attribute_map", None)
    if names is None:
        names = [k.lstrip("_") for k in vars(obj)] if hasattr(obj, "__dict__") else []
    return [n for n in names if getattr(obj, n, None) not in (None, [], {})]


_CAMEL = {"image_pull_policy": "imagePullPolicy", "value_from": "valueFrom"}


def _k8s_quantities(mapping, where):
    if mapping is None:
        return None
    if not isinstance(mapping, dict):
        raise TypeError("%s: expected a mapping of resource names to quantities, got %r" % (where, mapping))
    out = {}
    for k, v in mapping.items():
        out[str(k)] = _quantity(v, "%s[%r]" % (where, k))
    return out


def pod_template_dict(template, where="pod_template"):
    """``(spec dict, packages, image env)`` for a PodTemplate."""
    if not isinstance(template, PodTemplate):
        raise TypeError("%s: expected hearth.PodTemplate, got %r" % (where, template))
    out = {"primary_container_name": template.primary_container_name}
    if template.labels:
        out["labels"] = {str(k): str(v) for k, v in template.labels.items()}
    if template.annotations:
        out["annotations"] = {str(k): str(v) for k, v in template.annotations.items()}
    packages, env = [], {}
    spec = template.pod_spec
    if spec is None:
        return out, packages, env
    if not isinstance(spec, dict) and not hasattr(spec, "containers"):
        raise TypeError("%s.pod_spec: expected a kubernetes V1PodSpec or a dict, got %r" % (where, spec))
    ignored = [f for f in _fields(spec) if f not in ("containers", "volumes")]
    if ignored:
        warnings.warn("%s.pod_spec: %s not applied (a Hearth replica is not a Kubernetes pod)"
                      % (where, ", ".join(sorted(ignored))), stacklevel=3)
    containers = []
    for i, c in enumerate(_get(spec, "containers") or []):
        cw = "%s.pod_spec.containers[%d]" % (where, i)
        name = _get(c, "name")
        cd = {"name": name}
        image = _get(c, "image")
        if image is not None:
            cd["image"] = image_name(image)
            if name == template.primary_container_name:
                packages.extend(image_packages(image))
                env.update(image_env(image))
        env_list = []
        for j, e in enumerate(_get(c, "env") or []):
            if _get(e, "value_from", "valueFrom") is not None:
                raise ValueError("%s.env[%d] (%s): value_from is not supported; give a value, or use a Secret"
                                 % (cw, j, _get(e, "name")))
            value = _get(e, "value")
            env_list.append({"name": _get(e, "name"), "value": "" if value is None else str(value)})
        if env_list:
            cd["env"] = env_list
        res = _get(c, "resources")
        if res is not None:
            rd = {}
            for k in ("requests", "limits"):
                q = _k8s_quantities(_get(res, k), "%s.resources.%s" % (cw, k))
                if q:
                    rd[k] = q
            if rd:
                cd["resources"] = rd
        policy = _get(c, "image_pull_policy", "imagePullPolicy")
        if policy is not None:
            cd["imagePullPolicy"] = _pull_policy(policy, "%s.image_pull_policy" % cw)
        mounts = []
        for vm in _get(c, "volume_mounts", "volumeMounts") or []:
            m = {"name": _get(vm, "name"), "mountPath": _get(vm, "mount_path", "mountPath")}
            ro = _get(vm, "read_only", "readOnly")
            if ro is not None:
                m["readOnly"] = bool(ro)
            mounts.append(m)
        if mounts:
            cd["volumeMounts"] = mounts
        extra = [f for f in _fields(c) if f not in ("name", "image", "env", "resources", "image_pull_policy",
                                                   "imagePullPolicy", "volume_mounts", "volumeMounts")]
        if extra and name == template.primary_container_name:
            warnings.warn("%s (%s): %s not applied" % (cw, name, ", ".join(sorted(extra))), stacklevel=3)
        containers.append(cd)
    out["pod_spec"] = {"containers": containers}
    volumes = []
    for i, v in enumerate(_get(spec, "volumes") or []):
        hp = _get(v, "host_path", "hostPath")
        if hp is None:
            raise ValueError("%s.pod_spec.volumes[%d] (%s): only hostPath volumes are supported"
                             % (where, i, _get(v, "name")))
        volumes.append({"name": _get(v, "name"), "hostPath": {"path": _get(hp, "path")}})
    if volumes:
        out["pod_spec"]["volumes"] = volumes
    return out, packages, env


PULL_POLICIES = ("IfNotPresent", "Always", "Never")


def _pull_policy(value, where):
    if value not in PULL_POLICIES:
        raise ValueError("%s: %r is not a pull policy; expected IfNotPresent, Always or Never" % (where, value))
    return value


def seconds(value, field):
    if value is None:
        return None
    import datetime

    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s: expected seconds (a number) or a datetime.timedelta, got %r" % (field, value))
    return value


class ReusePolicy(object):
    """Flyte 2's ``ReusePolicy``, as ``ActorEnvironment(reusable=...)``.

    ``replicas``: a number (fixed) or ``(min, max)``: the environment scales
    between them on demand; ``idle_ttl``: seconds (or a timedelta) a replica
    may sit idle before it goes while more than ``min`` remain (Hearth's
    ``ttl_seconds``); ``scaledown_ttl``: how long an environment with nothing
    queued or running keeps its ``min`` replicas before going to zero;
    ``concurrency``: tasks one replica runs at once."""

    def __init__(self, replicas=None, idle_ttl=None, scaledown_ttl=None, concurrency=None):
        self.replicas = replicas
        self.idle_ttl = idle_ttl
        self.scaledown_ttl = scaledown_ttl
        self.concurrency = concurrency

    def __repr__(self):
        return "ReusePolicy(replicas=%r, idle_ttl=%r, scaledown_ttl=%r, concurrency=%r)" % (
            self.replicas, self.idle_ttl, self.scaledown_ttl, self.concurrency)


def replica_range(value, field):
    """``N``, ``(min, max)``, ``[min, max]`` or ``{"min": M, "max": N}`` as
    ``(min, max)``; the daemon checks the ranges."""
    def whole(v, what):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError("%s: %s must be an int, got %r" % (field, what, v))
        return v

    if isinstance(value, dict):
        unknown = sorted(set(value) - {"min", "max"})
        if unknown:
            raise TypeError("%s: unknown key %r; expected min and max" % (field, unknown[0]))
        if "max" not in value:
            raise TypeError("%s: needs a max (the most replicas at once)" % field)
        return whole(value.get("min", 0), "min"), whole(value["max"], "max")
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise TypeError("%s: expected (min, max), got %r" % (field, value))
        return whole(value[0], "min"), whole(value[1], "max")
    n = whole(value, "the replica count")
    return n, n


def whole_seconds(value, field):
    s = seconds(value, field)
    if s is not None and s != int(s):
        raise ValueError("%s must be whole seconds, got %r" % (field, s))
    return None if s is None else int(s)


def mounts_list(value, field):
    """``mounts`` as the spec spells it: a list of ``{host_path, path,
    read_only}`` (``read_only`` left out means read-only) or of
    ``(host_path, path[, read_only])``; the daemon checks the paths."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise TypeError("%s: expected a list of mounts, got %r" % (field, value))
    out = []
    for i, m in enumerate(value):
        where = "%s[%d]" % (field, i)
        if isinstance(m, dict):
            unknown = sorted(set(m) - {"host_path", "path", "read_only"})
            if unknown:
                raise TypeError("%s: unknown key %r; expected host_path, path and read_only" % (where, unknown[0]))
            entry = {"host_path": m.get("host_path"), "path": m.get("path")}
            if "read_only" in m:
                entry["read_only"] = m["read_only"]
        elif isinstance(m, (list, tuple)) and len(m) in (2, 3):
            entry = {"host_path": m[0], "path": m[1]}
            if len(m) == 3:
                entry["read_only"] = m[2]
        else:
            raise TypeError("%s: expected {host_path, path, read_only} or (host_path, path), got %r" % (where, m))
        for k in ("host_path", "path"):
            if not isinstance(entry[k], str) or not entry[k]:
                raise TypeError("%s: %s must be a non-empty string, got %r" % (where, k, entry[k]))
        if "read_only" in entry and not isinstance(entry["read_only"], bool):
            raise TypeError("%s: read_only must be True or False, got %r" % (where, entry["read_only"]))
        out.append(entry)
    return out
