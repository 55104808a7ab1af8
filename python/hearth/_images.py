"""Image builds from ImageSpec, on first use.

An ImageSpec that asks for more than its base image holds (``packages``
Hearth does not provide, ``requirements``, ``apt_packages``, ``commands``,
``copy``, pip index settings) names the image hearthd builds from it:
``[registry/]name:tag``, the tag a hash of the spec (the rule below, which
``POST /v1/images/build`` applies too). The first ``apply`` of an
environment on it asks hearthd to build it (``POST /v1/images/build``),
prints a line per step to stderr as the build goes (``HEARTH_BUILD_VERBOSE=1``:
the steps' own output too) and raises ``ImageBuildFailed`` with the step,
its exit status and the end of its output when a step fails. A spec built
before is a cache hit: no step runs, nothing is printed.

Tag rule: the build spec (every key present: name, registry, base_image,
python_version, packages, requirements (the file's text), apt_packages,
pip_index, pip_extra_index_url, pip_extra_args, env, commands, copy) as
JSON with sorted keys, no whitespace and non-ASCII escaped
(``json.dumps(sort_keys=True, separators=(",", ":"))``), SHA-256, the first
16 bytes in URL-safe base64 without padding, ``-`` replaced by ``_``.

Inside a replica (the user's module is imported there too) nothing is read
or built: the spec's files may not exist there.
"""

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import threading
import time

__all__ = ["build_spec", "spec_tag", "ensure_built", "in_replica", "apply_streaming"]

_BUILD_KEYS = ("name", "registry", "base_image", "python_version", "packages", "requirements", "apt_packages",
               "pip_index", "pip_extra_index_url", "pip_extra_args", "env", "commands", "copy")


def in_replica():
    # The worker's own flag, not whether hearth._worker is imported: the
    # caller imports it too (a task call asks it, current_context() reads it).
    worker = sys.modules.get("hearth._worker")
    return (worker is not None and worker.in_worker()) or bool(os.environ.get("HEARTH_IMAGE"))


def _provided(req):
    from hearth import _packages

    name = req.split(";", 1)[0].strip()
    for i, ch in enumerate(name):
        if not (ch.isalnum() or ch in "._-"):
            name = name[:i]
            break
    return _packages.normalize(name) in _packages.PROVIDED


def needs_build(spec):
    """Whether ``spec`` (an ImageSpec) asks for anything its base lacks."""
    if spec.apt_packages or spec.commands or spec.copy or spec.requirements or spec.pip_extra_args:
        return True
    return any(not _provided(p) for p in (spec.packages or []) if isinstance(p, str))


def _str_list(value, field):
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    out = []
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise TypeError("ImageSpec.%s[%d]: expected a string, got %r" % (field, i, v))
        out.append(v)
    return out


def _read_text(path, field):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ValueError("ImageSpec.%s: cannot read %s: %s" % (field, path, e.strerror))


def _copy_bundle(paths):
    """A deterministic tar of ``paths`` (relative to the working directory,
    kept as given below ``/root``, as flytekit copies them)."""
    from hearth._bundle import SKIP_DIRS

    buf = io.BytesIO()
    entries = []
    for p in paths:
        if os.path.isabs(p) or ".." in p.split(os.sep):
            raise ValueError("ImageSpec.copy: %r must be a relative path below the working directory "
                             "(it is copied to the same path below /root)" % (p,))
        if not os.path.lexists(p):
            raise ValueError("ImageSpec.copy: %s does not exist (relative to %s)" % (p, os.getcwd()))
        stack = [os.path.normpath(p)]
        while stack:
            rel = stack.pop()
            st = os.lstat(rel)
            entries.append((rel, st))
            if os.path.isdir(rel) and not os.path.islink(rel):
                for name in sorted(os.listdir(rel), reverse=True):
                    if name not in SKIP_DIRS and not name.endswith((".pyc", ".pyo")):
                        stack.append(os.path.join(rel, name))
    seen = set()
    parents = []
    for rel, _ in entries:  # the directories above each path, so the tar is self-contained
        d = os.path.dirname(rel)
        while d and d not in seen:
            seen.add(d)
            parents.append(d)
            d = os.path.dirname(d)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        names = set()
        for rel in sorted(parents):
            info = tarfile.TarInfo(rel)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
            names.add(rel)
        for rel, st in sorted(entries, key=lambda e: e[0]):
            if rel in names:
                continue
            names.add(rel)
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if os.path.islink(rel):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(rel), 0o777
                tar.addfile(info)
            elif os.path.isdir(rel):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif os.path.isfile(rel):
                with open(rel, "rb") as f:
                    data = f.read()
                info.size = len(data)
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def build_spec(spec, base_name):
    """``(request spec for POST /v1/images/build, copy bundle (sha, bytes) or None)``."""
    from hearth._spec import DEFAULT_IMAGE

    env = spec.env or {}
    if not isinstance(env, dict):
        raise TypeError("ImageSpec.env: expected a dict of strings, got %r" % (env,))
    requirements = None
    if spec.requirements:
        requirements = _read_text(spec.requirements, "requirements")
    bundle = None
    copy = None
    paths = _str_list(spec.copy, "copy")
    if paths:
        bundle = _copy_bundle(paths)
        copy = {"bundle": bundle[0], "dest": "/root"}
    extra = spec.pip_extra_args
    if extra is not None and not isinstance(extra, str):
        raise TypeError("ImageSpec.pip_extra_args: expected a string, got %r" % (extra,))
    out = {
        "name": spec.name or "flytekit",
        "registry": spec.registry or None,
        "base_image": base_name or DEFAULT_IMAGE,
        "python_version": str(spec.python_version) if spec.python_version else None,
        "packages": _str_list(spec.packages, "packages"),
        "requirements": requirements,
        "apt_packages": _str_list(spec.apt_packages, "apt_packages"),
        "pip_index": spec.pip_index or None,
        "pip_extra_index_url": _str_list(spec.pip_extra_index_url, "pip_extra_index_url"),
        "pip_extra_args": extra or None,
        "env": {str(k): str(v) for k, v in env.items()},
        "commands": _str_list(spec.commands, "commands"),
        "copy": copy,
    }
    assert tuple(sorted(out)) == tuple(sorted(_BUILD_KEYS))
    return out, bundle


def spec_tag(build):
    canonical = json.dumps(build, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(canonical.encode("ascii")).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=").replace("-", "_")


def image_ref(build, tag):
    name = "%s:%s" % (build["name"], tag)
    return "%s/%s" % (build["registry"].rstrip("/"), name) if build["registry"] else name


# -- building -------------------------------------------------------------------

_lock = threading.Lock()
_built = {}  # (socket path, image name) -> True: checked with the daemon in this process


def _say(line):
    sys.stderr.write("hearth: %s\n" % line)
    sys.stderr.flush()


def ensure_built(spec, client):
    """Builds ``spec`` (an ImageSpec that needs a build) and its base
    ImageSpecs with ``client``'s daemon, once per process."""
    from hearth._errors import ImageBuildFailed

    plan = getattr(spec, "_hearth_build", None)
    if plan is None:
        return
    base = getattr(spec, "base_image", None)
    if getattr(base, "_hearth_build", None) is not None:
        ensure_built(base, client)
    build, bundle, name = plan
    key = (client.path, name)
    with _lock:
        if _built.get(key):
            return
    if bundle is not None:
        sha, data = bundle
        if client.call("GET", "/v1/code/" + sha, what="code bundle", not_found=False) is False:
            client.call("PUT", "/v1/code/" + sha, data, what="upload of ImageSpec.copy files",
                        content_type="application/x-tar", timeout=300)
    verbose = os.environ.get("HEARTH_BUILD_VERBOSE", "") not in ("", "0")
    body = {"spec": dict(build, tag=name.rsplit(":", 1)[1]), "verbose": verbose}
    started = time.monotonic()
    announced = False
    steps = 0
    for event in client.stream("POST", "/v1/images/build", body, what="image build of %s" % name):
        kind = event.get("event")
        if kind == "start":
            steps = event.get("steps", 0)
        elif kind == "step":
            if event.get("cached"):
                continue
            if not announced:
                _say("building image %s (%d step%s; later runs reuse it)" % (name, steps, "" if steps == 1 else "s"))
                announced = True
            _say("  [%s/%s] %s ..." % (event.get("index"), event.get("total"), event.get("description", "")))
        elif kind == "pull":
            _say(event.get("line", ""))
        elif kind == "output":
            sys.stderr.write("    %s\n" % event.get("line", ""))
        elif kind == "step_done":
            if announced and not event.get("cached"):
                _say("  [%s/%s] done in %.1f s" % (event.get("index"), steps, event.get("seconds", 0.0)))
        elif kind == "error":
            err = event.get("error") or {}
            raise ImageBuildFailed(500, err.get("code", "build_failed"), err.get("message", "the build failed"),
                                   "image build of %s" % name)
        elif kind == "done":
            if announced:
                _say("image %s built in %.1f s" % (name, time.monotonic() - started))
            with _lock:
                _built[key] = True
            return
    raise ImageBuildFailed(500, "internal", "hearthd ended the build stream without a result",
                           "image build of %s" % name)


# -- applying: a pull on apply ----------------------------------------------------

# The HTTP status of each error code (docs/protocol.md, "Error codes"): an
# error inside an NDJSON stream carries the code only.
_STATUS = {"invalid_argument": 400, "invalid_image": 400, "unsafe_layer": 400, "forbidden": 403,
           "image_not_found": 404, "not_found": 404, "environment_not_found": 404, "conflict": 409,
           "spec_changed": 409, "result_expired": 410,
           "build_failed": 422, "queue_full": 429, "unavailable": 503}


def apply_streaming(client, body, env_name):
    """``POST /v1/environments`` as NDJSON: when hearthd pulls the
    environment's image first (``image_pull_policy``), says so on stderr
    (the image, its layers, the time) rather than wait in silence. Returns
    the apply results; a refusal raises EnvironmentRefused."""
    from hearth._errors import APIError, EnvironmentRefused

    what = "environment %s refused" % env_name
    started = pulled = None
    try:
        for event in client.stream("POST", "/v1/environments", body, what=what, timeout=600,
                                   accept="application/x-ndjson"):
            kind = event.get("event")
            if kind == "pull":
                p = event.get("pull") or {}
                if p.get("event") == "resolved":
                    started, pulled = time.monotonic(), p.get("reference")
                    n = p.get("layers") or 0
                    _say("pulling %s (%d layer%s) for %s" % (pulled, n, "" if n == 1 else "s", env_name))
            elif kind == "applied":
                if started is not None:
                    _say("pulled %s in %.1f s" % (pulled, time.monotonic() - started))
                return event.get("results") or []
            elif kind == "error":
                err = event.get("error") or {}
                code = err.get("code", "internal")
                raise EnvironmentRefused(_STATUS.get(code, 500), code, err.get("message", ""), what)
    except EnvironmentRefused:
        raise
    except APIError as e:
        raise EnvironmentRefused(e.status, e.code, e.message, what)
    raise EnvironmentRefused(500, "internal", "hearthd ended the apply stream without a result", what)
