"""Code bundles: the caller's project, shipped to replicas by content.

The root of a task's module is the directory that holds its top-level
package (``/p/app/tasks.py`` as ``app.tasks`` -> ``/p``; a script run as
``/p/job.py`` -> ``/p``). Everything under it goes into a tar, except what
never belongs to the code: VCS and cache directories (``.git``, ``.hg``,
``.svn``, ``__pycache__``, ``.mypy_cache``, ``.pytest_cache``, ``.ruff_cache``,
``.tox``, ``.nox``, ``.ipynb_checkpoints``, ``node_modules``), virtualenvs
(any directory holding ``pyvenv.cfg``), ``*.pyc``/``*.pyo``, sockets and other
special files, and symbolic links that point outside the root.

The tar is deterministic (sorted names, mtime 0, owner 0:0, modes 0644/0755),
so its SHA-256 is a function of the content: the same code is uploaded once
(``GET /v1/code/{sha}`` first), and an edit makes a new version, which the
worker switches to on the next task without restarting the interpreter.

Limits: ``HEARTH_MAX_BUNDLE_BYTES`` (default 64 MiB, the daemon's upload
limit) and 20,000 entries; over them, ``BundleError`` names the root and its
biggest files. The tree is re-scanned (a stat walk) at most once a second
per root, and tarred again only when a file changed.
"""

import hashlib
import io
import os
import stat
import sys
import tarfile
import threading
import time

from hearth._errors import BundleError

__all__ = ["Bundle", "module_root", "bundle_for", "ensure_uploaded", "SKIP_DIRS"]

SKIP_DIRS = frozenset([".git", ".hg", ".svn", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                       ".tox", ".nox", ".ipynb_checkpoints", "node_modules", ".eggs"])
MAX_ENTRIES = 20000
RESCAN_SECONDS = 1.0


def max_bytes():
    try:
        return int(os.environ.get("HEARTH_MAX_BUNDLE_BYTES", 64 << 20))
    except ValueError:
        raise BundleError("HEARTH_MAX_BUNDLE_BYTES=%r is not a number of bytes" % os.environ["HEARTH_MAX_BUNDLE_BYTES"])


def module_root(module_name, module_file):
    """``(import name, root directory)`` for a module the replica must import.

    ``__main__`` (a script, or ``python -m pkg.mod``) is imported in the
    replica under its real name, so that its ``if __name__ == "__main__"``
    block does not run there."""
    if not module_file:
        raise BundleError("module %s has no source file (defined in an interactive session?); "
                          "put tasks in a .py file" % module_name)
    path = os.path.abspath(module_file)
    if path.endswith((".pyc", ".pyo")):
        path = path[:-1]
    name = module_name
    if name == "__main__":
        # `python -m pkg.mod` keeps the real name in __spec__; a script has none.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.name if spec is not None and spec.name not in (None, "", "__main__") else None
        if name is None:
            name = os.path.splitext(os.path.basename(path))[0]
            if not name.isidentifier():
                raise BundleError("script %s cannot be imported as a module in a replica: %r is not a Python "
                                  "identifier; rename the file" % (path, name))
    root = os.path.dirname(path)
    depth = name.count(".")
    if os.path.basename(path) == "__init__.py":
        depth += 1
    for _ in range(depth):
        root = os.path.dirname(root)
    return name, root


class Bundle(object):
    __slots__ = ("root", "sha256", "data", "files", "size")

    def __init__(self, root, sha256, data, files, size):
        self.root, self.sha256, self.data, self.files, self.size = root, sha256, data, files, size


def _is_venv(path):
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def _scan(root):
    """Sorted ``[(relative path, lstat)]`` of what goes into the bundle."""
    out = []
    limit = max_bytes()
    total = 0
    real_root = os.path.realpath(root)
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            entries = sorted(os.listdir(full))
        except OSError as e:
            raise BundleError("cannot read %s while bundling %s: %s" % (full, root, os.strerror(e.errno or 0)))
        for name in entries:
            r = os.path.join(rel, name) if rel else name
            p = os.path.join(root, r)
            try:
                st = os.lstat(p)
            except OSError:
                continue  # vanished while we walked
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if name in SKIP_DIRS or _is_venv(p):
                    continue
                out.append((r, st))
                stack.append(r)
            elif stat.S_ISREG(mode):
                if name.endswith((".pyc", ".pyo")):
                    continue
                out.append((r, st))
                total += st.st_size
            elif stat.S_ISLNK(mode):
                target = os.path.realpath(p)
                if target == real_root or target.startswith(real_root + os.sep):
                    out.append((r, st))
            if len(out) > MAX_ENTRIES:
                raise BundleError("code bundle of %s has more than %d files and directories; tasks ship the "
                                  "directory that holds their module, so keep data and other projects out of it"
                                  % (root, MAX_ENTRIES))
    if total > limit:
        biggest = sorted((st.st_size, r) for r, st in out if stat.S_ISREG(st.st_mode))[-3:]
        listing = ", ".join("%s (%.1f MiB)" % (r, n / 1048576.0) for n, r in reversed(biggest))
        raise BundleError("code bundle of %s is %.1f MiB, over the %.1f MiB limit (HEARTH_MAX_BUNDLE_BYTES); "
                          "biggest files: %s. Keep data out of the code directory." % (
                              root, total / 1048576.0, limit / 1048576.0, listing))
    out.sort(key=lambda e: e[0])
    return out


def _signature(entries):
    return tuple((r, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino) for r, st in entries)


def _tar(root, entries):
    buf = io.BytesIO()
    files = size = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, st in entries:
            full = os.path.join(root, rel)
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                try:
                    with open(full, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise BundleError("cannot read %s while bundling %s: %s" % (full, root, os.strerror(e.errno or 0)))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                files += 1
                size += len(data)
    data = buf.getvalue()
    return Bundle(root, hashlib.sha256(data).hexdigest(), data, files, size)


_lock = threading.Lock()
_cache = {}  # root -> [checked_at, signature, Bundle]


def bundle_for(root):
    """The current bundle of ``root`` (cached; see the module docstring)."""
    now = time.monotonic()
    with _lock:
        hit = _cache.get(root)
        if hit is not None and now - hit[0] < RESCAN_SECONDS:
            return hit[2]
    entries = _scan(root)
    sig = _signature(entries)
    with _lock:
        hit = _cache.get(root)
        if hit is not None and hit[1] == sig:
            hit[0] = now
            return hit[2]
    b = _tar(root, entries)
    with _lock:
        _cache[root] = [now, sig, b]
    return b


_uploaded = set()


def ensure_uploaded(client, bundle):
    """Uploads ``bundle`` unless the daemon has it (asked once per process)."""
    if bundle.sha256 in _uploaded:
        return
    path = "/v1/code/" + bundle.sha256
    if client.call("GET", path, not_found=False) is False:
        client.call("PUT", path, bundle.data, what="upload code bundle of %s" % bundle.root,
                    content_type="application/x-tar", timeout=300)
    _uploaded.add(bundle.sha256)
