"""Package requirements: what ImageSpec's ``packages`` asks of an image.

Until Hearth builds images, an environment's packages are not installed but
checked: the worker calls ``missing()`` before it says ``ready`` and a replica
whose image lacks one fails to start, naming the package and the image.

A requirement is a distribution name, optionally with one version clause
(``numpy``, ``pandas==2.1.4``, ``torch>=2``, ``scipy~=1.10``, ``x==1.2.*``);
the daemon refuses anything else. Names compare as PEP 503 normalises them
(case, ``-``, ``_`` and ``.`` alike). A distribution is found through its
metadata (``importlib.metadata``: dist-info or egg-info, as pip and Debian's
``python3-*`` packages install them); without metadata, an importable
top-level module of the same name counts, with an unknown version.

Standard library only, and imported only when there is something to check.
"""

import re

__all__ = ["PROVIDED", "normalize", "parse", "missing", "satisfies"]

# Satisfied by Hearth itself: the SDK stands in for union's (see hearth/__init__),
# and the worker package carries the flytekit plugin's replica side. flytekit
# itself is a real package an image has or not.
PROVIDED = frozenset(["hearth", "union", "flytekitplugins-pod", "flytekitplugins-hearth"])

_REQ = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:(==|!=|>=|<=|~=|>|<)\s*([A-Za-z0-9.*+!]+))?$")


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(requirement):
    """``(name, op, version)``; op and version are None without a clause.

    Raises ValueError naming the requirement and the rule."""
    m = _REQ.match(requirement.strip()) if isinstance(requirement, str) else None
    if m is None:
        raise ValueError("%r is not a package requirement; use a distribution name, optionally with one "
                         "version clause such as numpy>=1.24 or pandas==2.1.4" % (requirement,))
    return m.group(1), m.group(2), m.group(3)


def _release(version):
    """Leading numeric release segments: '1.24.2' -> (1, 24, 2); '2.0rc1' -> (2, 0)."""
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group(0)))
        if m.end() != len(part):
            break
    return tuple(out)


def _cmp(a, b):
    n = max(len(a), len(b))
    a = a + (0,) * (n - len(a))
    b = b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def satisfies(installed, op, wanted):
    """Whether version ``installed`` meets ``op wanted`` (release segments only)."""
    if op is None:
        return True
    if installed is None:
        return False
    if wanted.endswith(".*") and op in ("==", "!="):
        prefix = _release(wanted[:-2])
        same = _release(installed)[:len(prefix)] == prefix
        return same if op == "==" else not same
    have, want = _release(installed), _release(wanted)
    c = _cmp(have, want)
    if op == "==":
        return c == 0
    if op == "!=":
        return c != 0
    if op == ">=":
        return c >= 0
    if op == "<=":
        return c <= 0
    if op == ">":
        return c > 0
    if op == "<":
        return c < 0
    if op == "~=":  # compatible release: >= wanted, same prefix but the last segment
        return c >= 0 and len(want) >= 2 and have[:len(want) - 1] == want[:-1]
    return False


def _installed_version(name):
    """The installed version of distribution ``name``; '' when only a module
    of that name is importable; None when neither exists."""
    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        metadata = None
    if metadata is not None:
        for candidate in (name, normalize(name), normalize(name).replace("-", "_")):
            try:
                return metadata.version(candidate)
            except Exception:
                pass
    import importlib.util

    try:
        if importlib.util.find_spec(normalize(name).replace("-", "_")) is not None:
            return ""
    except (ImportError, ValueError):
        pass
    return None


def missing(requirements, image=None):
    """Messages for the requirements ``image`` does not meet ([] when all are met)."""
    label = "image %s" % image if image else "the image"
    problems = []
    for req in requirements:
        try:
            name, op, wanted = parse(req)
        except ValueError as e:
            problems.append(str(e))
            continue
        if normalize(name) in PROVIDED:
            continue
        have = _installed_version(name)
        if have is None:
            problems.append("%s does not provide the Python package %r (ImageSpec packages); "
                            "use an image that has it (Hearth does not build images yet)" % (label, name))
        elif op is not None and have == "":
            problems.append("%s has a module %r but no package metadata, so %s cannot be checked"
                            % (label, name, req))
        elif not satisfies(have, op, wanted):
            problems.append("%s has %s %s, but %s is required (ImageSpec packages)" % (label, name, have, req))
    return problems
