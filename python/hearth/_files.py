"""FlyteFile and FlyteDirectory: local files as task inputs and outputs.

As in flytekit, a task takes or returns a ``FlyteFile`` (one file) or a
``FlyteDirectory`` (a tree of files) and reads it through its local path
(``.path``, ``os.fspath``, ``open(f)``, ``.download()``, ``.open(mode)``).
Hearth has no blob store: the bytes travel with the value through the task
channel. Pickling one reads the file (or every file of the directory) and
reduces it to ``_rebuild_file(format, name, content)`` or
``_rebuild_dir(format, name, entries)``; unpickling writes them into a fresh
private temporary directory (``mkdtemp``) under the same base name (and
relative paths), and the new object's path points there. That happens in
both directions: caller -> replica for inputs, replica -> caller for
results.

Limits: at most ``HEARTH_FILE_LIMIT`` bytes of content per file or directory
(default 16 MiB; base64 makes it 4/3 larger in the 64 MiB task channel) and
``MAX_ENTRIES`` entries per directory. A directory that holds a symbolic
link, a device, a FIFO or a socket is refused, not followed. Remote paths
(``s3://``, ``gs://``, ``http(s)://``, ...) are refused: Hearth moves local
files only.

A result is untrusted (see ``hearth._results``): the caller's restricted
unpickler calls the two rebuild functions only after ``check_rebuild_file``
/ ``check_rebuild_dir`` accept their arguments (plain base names, normalized
relative paths, bytes, bounded count and size), so nothing is written
outside the new temporary directory. The functions check again themselves.

Inside a replica, inputs go to a store named by their content
(``<tmp>/hearth-inputs/<sha256>/<name>``, read-only), so the same file sent
to many tasks has one path: an ``actor_cache`` keyed on it (a model's
weights) hits from the second task on. A copy is checked against the sent
bytes before it is reused (a task may have written to it), and once a
task's result is encoded (``task_done``, called by the worker) copies not
used by that task go, least recently used first, while the store holds
more than ``HEARTH_INPUT_CACHE`` bytes (default 256 MiB; 0 keeps none).
"""

import os
import stat

from hearth._errors import HearthError

__all__ = ["FlyteFile", "FlyteDirectory", "FileTransferError", "Refused", "DEFAULT_LIMIT", "MAX_ENTRIES",
           "file_limit", "check_name", "check_relpath", "check_rebuild_file", "check_rebuild_dir"]

DEFAULT_LIMIT = 16 * 1024 * 1024
MAX_ENTRIES = 10000     # files and directories in one FlyteDirectory
MAX_NAME_BYTES = 255    # one path component (NAME_MAX)
MAX_PATH_BYTES = 4096   # a relative path inside a directory (PATH_MAX)
MAX_DEPTH = 100         # components of a relative path
MAX_FORMAT = 32
_FORMAT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
_REMOTE_HINT = ("Hearth moves local files only: download it first (in a task of an environment with "
                "network=\"egress\", for instance) and pass the local path")


class FileTransferError(HearthError, ValueError):
    """A file or directory that cannot be sent to or from a task."""


class Refused(Exception):
    """Arguments of a rebuild function that break a rule (``what``, ``rule``)."""

    def __init__(self, what, rule):
        Exception.__init__(self, "%s: %s" % (what, rule))
        self.what, self.rule = what, rule


# -- limits ----------------------------------------------------------------------------

_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000 ** 2, "MB": 1000 ** 2, "G": 1000 ** 3, "GB": 1000 ** 3,
          "KI": 1024, "KIB": 1024, "MI": 1024 ** 2, "MIB": 1024 ** 2, "GI": 1024 ** 3, "GIB": 1024 ** 3}


def file_limit(environ=None):
    """Bytes of content one FlyteFile or FlyteDirectory may hold:
    ``HEARTH_FILE_LIMIT`` (bytes, or with a unit: 32MiB, 32Mi, 32MB) or 16 MiB."""
    raw = (os.environ if environ is None else environ).get("HEARTH_FILE_LIMIT")
    if raw is None or not raw.strip():
        return DEFAULT_LIMIT
    text = raw.strip()
    i = len(text)
    while i and not text[i - 1].isdigit():
        i -= 1
    number, unit = text[:i].strip(), text[i:].strip().upper()
    if not number.isdigit() or unit not in _UNITS:
        raise FileTransferError("HEARTH_FILE_LIMIT=%r is not a size: give bytes, or a number with KiB, MiB or GiB "
                                "(e.g. 32MiB)" % raw)
    return int(number) * _UNITS[unit]


def _size(n):
    return "%d bytes (%.1f MiB)" % (n, n / 1048576.0)


def _too_large(kind, path, size, limit):
    return FileTransferError(
        "%s %s holds %s, over the limit of %s for a file or directory sent to or from a task; set "
        "HEARTH_FILE_LIMIT to raise it (the 64 MiB task channel carries about 47 MiB of content, base64 "
        "adds a third) or send less" % (kind, path, _size(size), _size(limit)))


# -- names (what a received value may create) ----------------------------------------------

def check_name(name, what="name"):
    """Raises Refused unless ``name`` is one plain path component."""
    if type(name) is not str:
        raise Refused("the %s %s" % (what, _show(name)), "a name is a str")
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise Refused("the %s %r" % (what, name[:80]), "a name is one plain path component: not empty, not '.' "
                      "or '..', without '/' or NUL")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refused("the %s %r" % (what, name[:80]), "a name is valid UTF-8")
    if size > MAX_NAME_BYTES:
        raise Refused("the %s %r... (%d bytes)" % (what, name[:40], size),
                      "a name is at most %d bytes" % MAX_NAME_BYTES)


def check_relpath(path):
    """Raises Refused unless ``path`` is a normalized relative path
    ('a/b.txt': components joined by single '/', none empty, '.' or '..')."""
    if type(path) is not str:
        raise Refused("the path %s" % _show(path), "a path is a str")
    if path.startswith("/"):
        raise Refused("the path %r" % path[:80], "a path inside a directory is relative, never absolute")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise Refused("the path %r..." % path[:40], "a path is at most %d bytes" % MAX_PATH_BYTES)
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise Refused("the path %r..." % path[:40], "a path has at most %d components" % MAX_DEPTH)
    for part in parts:
        try:
            check_name(part, "component")
        except Refused as e:
            raise Refused("the path %r (%s)" % (path[:120], e.what), "a path inside a directory is normalized and "
                          "relative: components that are plain names joined by single '/', none empty, '.' or '..'")
    return parts


def _check_format(fmt):
    if type(fmt) is not str or len(fmt) > MAX_FORMAT or not set(fmt) <= _FORMAT_CHARS:
        raise Refused("the format %s" % _show(fmt), "a format is a short extension such as 'csv' (letters, digits, "
                      "'.', '_', '+', '-')")


def _show(value):
    text = repr(value)
    return "%s %s" % (type(value).__name__, text if len(text) <= 60 else text[:57] + "...")


def check_rebuild_file(args, limit=None):
    """The arguments of ``_rebuild_file``: (format, name, content bytes)."""
    if len(args) != 3:
        raise Refused("%d arguments" % len(args), "it takes (format, name, content)")
    fmt, name, content = args
    _check_format(fmt)
    check_name(name, "file name")
    if type(content) is not bytes:
        raise Refused("content %s for %r" % (_describe_type(content), name), "a file's content is bytes")
    limit = file_limit() if limit is None else limit
    if len(content) > limit:
        raise Refused("%s of content for %r" % (_size(len(content)), name),
                      "a file holds at most %s (HEARTH_FILE_LIMIT)" % _size(limit))


def check_rebuild_dir(args, limit=None):
    """The arguments of ``_rebuild_dir``: (format, name, entries), entries a
    tuple of (relative path, bytes, or None for a directory)."""
    if len(args) != 3:
        raise Refused("%d arguments" % len(args), "it takes (format, name, entries)")
    fmt, name, entries = args
    _check_format(fmt)
    check_name(name, "directory name")
    if type(entries) is not tuple:
        raise Refused("entries %s" % _describe_type(entries), "a directory's entries are a tuple")
    if len(entries) > MAX_ENTRIES:
        raise Refused("%d entries" % len(entries), "a directory holds at most %d entries" % MAX_ENTRIES)
    limit = file_limit() if limit is None else limit
    total = 0
    files, seen, checked = set(), set(), []
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 2:
            raise Refused("the entry %s" % _describe_type(entry), "an entry is a (path, content) tuple")
        path, content = entry
        parts = check_relpath(path)
        if content is not None and type(content) is not bytes:
            raise Refused("content %s for %r" % (_describe_type(content), path),
                          "an entry's content is bytes (a file) or None (a directory)")
        if path in seen:
            raise Refused("the path %r twice" % path, "each path appears once")
        seen.add(path)
        if content is not None:
            files.add(path)
            total += len(content)
            if total > limit:
                raise Refused("more than %s of content" % _size(limit),
                              "a directory holds at most %s (HEARTH_FILE_LIMIT)" % _size(limit))
        checked.append(parts)
    for parts in checked:  # a second pass, so the order of entries does not matter
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if above in files:
                raise Refused("the path %r under the file %r" % ("/".join(parts), above),
                              "a file holds no entries")


def _describe_type(value):
    return "of type %s" % type(value).__name__


# -- rebuilding (the receiving side) ---------------------------------------------------------

_received = []  # inside a replica: the store entries the running task's inputs use
_store = {}  # inside a replica: entry directory -> bytes, least recently used first
DEFAULT_INPUT_CACHE = 256 * 1024 * 1024


def _in_worker():
    import sys

    w = sys.modules.get("hearth._worker")
    return w is not None and w.in_worker()


def _fresh(kind):
    import tempfile

    return tempfile.mkdtemp(prefix="hearth-%s-" % kind)


def input_cache_limit(environ=None):
    env = os.environ if environ is None else environ
    raw = (env.get("HEARTH_INPUT_CACHE") or "").strip()
    try:
        return max(0, int(raw)) if raw else DEFAULT_INPUT_CACHE
    except ValueError:
        return DEFAULT_INPUT_CACHE


def _digest(kind, fmt, name, entries):
    import hashlib

    h = hashlib.sha256()
    for part in (kind, fmt, name):
        h.update(("%d:%s" % (len(part), part)).encode("utf-8", "surrogatepass"))
    for path, content in entries:
        h.update(("%d:%s" % (len(path), path)).encode("utf-8", "surrogatepass"))
        h.update(b"d" if content is None else b"%d:" % len(content))
        if content is not None:
            h.update(content)
    return h.hexdigest()


def _matches(root, entries, single):
    """Whether the copy at ``root`` still holds exactly ``entries``."""
    try:
        if single:
            path, content = entries[0]
            with open(root, "rb") as f:
                return f.read(len(content) + 1) == content
        seen = set()
        for path, content in entries:
            full = os.path.join(root, path)
            if content is None:
                if not os.path.isdir(full) or os.path.islink(full):
                    return False
            else:
                if os.path.islink(full):
                    return False
                with open(full, "rb") as f:
                    if f.read(len(content) + 1) != content:
                        return False
            seen.add(path)
        for where, dirs, files in os.walk(root):
            rel = os.path.relpath(where, root)
            for n in dirs + files:
                if (n if rel == "." else os.path.join(rel, n)) not in seen:
                    return False
        return True
    except OSError:
        return False


def _stored(kind, fmt, name, entries, size, make):
    """Inside a replica: the store's copy of these inputs (made by
    ``make(directory)`` when missing or changed). Elsewhere: a fresh copy."""
    if not _in_worker():
        d = _fresh(kind)
        try:
            return make(d)
        except BaseException:
            import shutil

            shutil.rmtree(d, ignore_errors=True)
            raise
    import shutil
    import tempfile

    base = os.path.join(tempfile.gettempdir(), "hearth-inputs")
    os.makedirs(base, 0o700, exist_ok=True)
    entry = os.path.join(base, _digest(kind, fmt, name, entries))
    target = os.path.join(entry, name)
    if entry in _store and _matches(target, entries, kind == "file"):
        _store[entry] = _store.pop(entry)  # most recently used
    else:
        _store.pop(entry, None)
        shutil.rmtree(entry, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=".hearth-in-", dir=base)
        try:
            target = make(tmp)
            _read_only(tmp)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        target = os.path.join(entry, name)
        _store[entry] = size
    _received.append(entry)
    return target


def _read_only(root):
    # A task that writes to its input changes what the next one gets: discourage it
    # (root may still write; _matches checks before a copy is reused).
    for where, dirs, files in os.walk(root):
        for n in files:
            os.chmod(os.path.join(where, n), 0o444)
        for n in dirs:
            os.chmod(os.path.join(where, n), 0o555)


def _write(path, content):
    # O_EXCL|O_NOFOLLOW in a directory this process just made: nothing there to follow or overwrite.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def make_tree(root, entries):
    """Creates directory ``root`` holding ``entries`` (checked by
    ``check_rebuild_dir``: (relative path, bytes or None for a
    directory)); returns ``root``."""
    os.mkdir(root, 0o755)
    made = {""}
    for path, content in entries:
        parts = path.split("/")
        for i in range(1, len(parts) + (content is None)):
            sub = "/".join(parts[:i])
            if sub not in made:
                os.mkdir(os.path.join(root, sub), 0o755)
                made.add(sub)
        if content is not None:
            _write(os.path.join(root, path), content)
    return root


def _rebuild_file(fmt, name, content):
    """A FlyteFile (of ``fmt``) whose path is a new copy of ``content``."""
    try:
        check_rebuild_file((fmt, name, content))
    except Refused as e:
        raise FileTransferError("a FlyteFile was sent with %s, which is not allowed: %s" % (e.what, e.rule))
    def make(d):
        path = os.path.join(d, name)
        _write(path, content)
        return path

    path = _stored("file", fmt, name, [(name, content)], len(content), make)
    return _received_object(_format_class(FlyteFile, fmt), path)


def _rebuild_dir(fmt, name, entries):
    """A FlyteDirectory (of ``fmt``) whose path is a new copy of ``entries``."""
    try:
        check_rebuild_dir((fmt, name, entries))
    except Refused as e:
        raise FileTransferError("a FlyteDirectory was sent with %s, which is not allowed: %s" % (e.what, e.rule))
    def make(d):
        return make_tree(os.path.join(d, name), entries)

    size = sum(len(c) for _, c in entries if c is not None)
    root = _stored("dir", fmt, name, list(entries), size, make)
    return _received_object(_format_class(FlyteDirectory, fmt), root)


def _received_object(cls, path):
    obj = cls.__new__(cls)
    obj._init(path)
    return obj


def _remove(entry):
    import shutil

    for where, dirs, files in os.walk(entry):
        os.chmod(where, 0o700)  # read-only directories would keep their files
    shutil.rmtree(entry, ignore_errors=True)


def task_done():
    """Inside a replica, after a task's result is encoded: drops the least
    recently used inputs not used by that task while the store holds more
    than ``HEARTH_INPUT_CACHE`` bytes."""
    keep = set(_received)
    del _received[:]
    limit = input_cache_limit()
    total = sum(_store.values())
    for entry in list(_store):
        if total <= limit:
            break
        if entry in keep and limit > 0:
            continue
        total -= _store.pop(entry)
        _remove(entry)


# -- reading (the sending side) -------------------------------------------------------------

def _local_path(path, kind):
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if type(path) is not str and isinstance(path, str):
        path = str(path)
    if not isinstance(path, str):
        raise TypeError("%s: path must be a str or os.PathLike, got %s" % (kind, _show(path)))
    if not path:
        raise FileTransferError("%s: the path is empty" % kind)
    if path.startswith("file://"):
        path = path[len("file://"):]
    scheme, sep, _ = path.partition("://")
    if sep and scheme and all(c.isalnum() or c in "+-." for c in scheme):
        raise FileTransferError("%s %r: a remote path (%s://); %s" % (kind, path, scheme, _REMOTE_HINT))
    return path


def _read_regular(path, shown, kind, budget, limit, nofollow):
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO does not hang the open
    except OSError as e:
        import errno

        if nofollow and e.errno == errno.ELOOP:
            raise FileTransferError("%s: %s became a symbolic link while it was sent; Hearth follows no links"
                                    % (kind, shown))
        raise FileTransferError("%s %s cannot be read: %s" % (kind, shown, e.strerror or e))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileTransferError("%s %s is a directory; send it as a FlyteDirectory" % (kind, shown))
        if not stat.S_ISREG(st.st_mode):
            raise FileTransferError("%s %s is not a regular file (a device, FIFO or socket); Hearth sends regular "
                                    "files only" % (kind, shown))
        os.set_blocking(fd, True)
        chunks, have = [], 0
        while have <= budget:
            chunk = os.read(fd, min(1 << 20, budget + 1 - have))
            if not chunk:
                break
            chunks.append(chunk)
            have += len(chunk)
        if have > budget:  # it grew while it was read
            raise _too_large(kind, shown, limit - budget + max(have, st.st_size), limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _base_name(path, default):
    name = os.path.basename(os.path.normpath(os.path.abspath(path)))
    return name if name not in ("", ".", "..", "/") else default


def _check_sent_name(name, kind, path):
    try:
        check_name(name)
    except Refused as e:
        raise FileTransferError("%s %s cannot be sent: %s, which is not allowed: %s" % (kind, path, e.what, e.rule))


def _read_file(path, kind="FlyteFile"):
    """(name, content) of a local file."""
    limit = file_limit()
    try:
        st = os.stat(path)
    except OSError as e:
        raise FileTransferError("%s %s cannot be sent: %s" % (kind, path, e.strerror or e))
    if st.st_size > limit and stat.S_ISREG(st.st_mode):
        raise _too_large(kind, path, st.st_size, limit)
    name = _base_name(path, "file")
    _check_sent_name(name, kind, path)
    return name, _read_regular(path, path, kind, limit, limit, nofollow=False)


def _read_dir(path, kind="FlyteDirectory"):
    """(name, entries) of a local directory, walked without following links."""
    limit = file_limit()
    if not os.path.isdir(path):
        what = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise FileTransferError("%s %s cannot be sent: it %s" % (kind, path, what))
    name = _base_name(path, "dir")
    _check_sent_name(name, kind, path)
    found = []  # (relative path, full path or None for a directory, size)
    total = 0
    todo = [("", path)]
    while todo:
        rel, full = todo.pop()
        try:
            with os.scandir(full) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise FileTransferError("%s %s: %s cannot be listed: %s" % (kind, path, rel or ".", e.strerror or e))
        subdirs = []
        for e in items:
            r = rel + "/" + e.name if rel else e.name
            try:
                check_relpath(r)
            except Refused as err:
                raise FileTransferError("%s %s cannot be sent: %s, which is not allowed: %s"
                                        % (kind, path, err.what, err.rule))
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                raise FileTransferError("%s %s: %s cannot be read: %s" % (kind, path, r, err.strerror or err))
            if stat.S_ISLNK(st.st_mode):
                raise FileTransferError("%s %s holds a symbolic link, %s; Hearth sends regular files and directories "
                                        "only and follows no links: copy what it points to instead" % (kind, path, r))
            if stat.S_ISDIR(st.st_mode):
                found.append((r, None, 0))
                subdirs.append((r, e.path))
            elif stat.S_ISREG(st.st_mode):
                found.append((r, e.path, st.st_size))
                total += st.st_size
            else:
                raise FileTransferError("%s %s holds %s, which is not a regular file or directory (a device, FIFO "
                                        "or socket); Hearth sends regular files and directories only" % (kind, path, r))
            if len(found) > MAX_ENTRIES:
                raise FileTransferError("%s %s holds more than %d files and directories, the most one value may hold"
                                        % (kind, path, MAX_ENTRIES))
        todo.extend(reversed(subdirs))
    if total > limit:
        raise _too_large(kind, path, total, limit)
    entries = []
    budget = limit
    for r, full, _ in sorted(found):
        if full is None:
            entries.append((r, None))
            continue
        content = _read_regular(full, "%s/%s" % (path.rstrip("/"), r), kind, budget, limit, nofollow=True)
        budget -= len(content)
        entries.append((r, content))
    # Directories that hold entries need no entry of their own.
    parents = {r.rsplit("/", 1)[0] for r, _ in entries if "/" in r}
    return name, tuple(e for e in entries if e[1] is not None or e[0] not in parents)


# -- the classes -------------------------------------------------------------------------

_formats = {}


def _format_of(item, kind):
    import typing

    if item is None:
        return ""
    if isinstance(item, typing.TypeVar):
        item = item.__name__
    if not isinstance(item, str):
        raise TypeError("%s[...]: expected a format such as \"csv\" or typing.TypeVar(\"csv\"), got %r" % (kind, item))
    fmt = item.strip().lstrip("~").lstrip(".")
    try:
        _check_format(fmt)
    except Refused as e:
        raise TypeError("%s[%r]: %s" % (kind, item, e.rule))
    return fmt


def _format_class(base, fmt):
    """``base`` itself, or its subclass for the format ``fmt``."""
    if not fmt:
        return base
    key = (base, fmt)
    cls = _formats.get(key)
    if cls is None:
        cls = _formats[key] = _PathMeta(base.__name__, (base,), {
            "__module__": base.__module__, "__qualname__": "%s[%r]" % (base.__qualname__, fmt),
            "_hearth_format": fmt, "_hearth_base": base, "__doc__": base.__doc__})
    return cls


class _PathMeta(type):
    # FlyteFile["csv"] is an annotation more than a type: every FlyteFile is
    # an instance of it, so type checks of inputs and results pass.
    def __instancecheck__(cls, inst):
        return type.__instancecheck__(cls.__dict__.get("_hearth_base") or cls, inst)

    def __subclasscheck__(cls, sub):
        return type.__subclasscheck__(cls.__dict__.get("_hearth_base") or cls, sub)


class _LocalPath(object, metaclass=_PathMeta):
    _hearth_format = ""
    _kind = "path"

    def _init(self, path):
        self.path = path
        self._downloader = None
        self._downloaded = False
        self._remote_source = None

    @classmethod
    def extension(cls):
        return cls._hearth_format

    def __class_getitem__(cls, item):
        base = cls.__dict__.get("_hearth_base") or cls
        return _format_class(base, _format_of(item, base.__name__))

    def __fspath__(self):
        if not self._downloaded:
            if self._downloader is not None:
                self._downloader()
            self._downloaded = True
        return self.path

    def download(self):
        """The local path (the content is already here)."""
        return self.__fspath__()

    @property
    def downloaded(self):
        return self._downloaded

    @property
    def remote_source(self):
        return self._remote_source

    def __repr__(self):
        return str(self.path)

    def __str__(self):
        return str(self.path)

    def __hash__(self):
        return hash(str(self.path))

    def __copy__(self):
        # Not the pickle protocol: that would read and rewrite the content.
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        return self.__copy__()

    @classmethod
    def _hearth_accepts(cls, value):
        """Whether ``value`` (a path) is taken where ``cls`` is expected."""
        return isinstance(value, (str, os.PathLike)) and not isinstance(value, _LocalPath)

    @classmethod
    def _hearth_parse(cls, text):
        """A command-line value: a local path that exists."""
        path = _local_path(text, cls.__name__)
        want = os.path.isdir if issubclass(cls, FlyteDirectory) else os.path.isfile
        if not want(path):
            raise ValueError("%s: no such %s" % (path, "directory" if issubclass(cls, FlyteDirectory) else "file"))
        return cls(path)


def _new_local(name=None):
    """A fresh path under a new private directory (for the new_* constructors)."""
    import tempfile
    import uuid

    d = tempfile.mkdtemp(prefix="hearth-new-")
    if name is not None:
        check = os.path.normpath(str(name))
        if os.path.isabs(check) or check.startswith(".."):
            raise ValueError("%r: expected a relative name" % (name,))
        return os.path.join(d, check)
    return os.path.join(d, uuid.uuid4().hex)


class FlyteFile(_LocalPath):
    """A local file as a task input or output (flytekit's ``FlyteFile``);
    ``FlyteFile["csv"]`` names its format. Its content travels with it."""

    _kind = "FlyteFile"

    def __init__(self, path, downloader=None, remote_path=None, metadata=None):
        path = _local_path(path, "FlyteFile")
        if remote_path:
            raise FileTransferError("FlyteFile %r: remote_path=%r asks for an upload to a blob store, which Hearth "
                                    "does not have; leave it out" % (path, remote_path))
        self._init(path)
        self._downloader = downloader if callable(downloader) else None
        self._remote_path = remote_path
        self.metadata = metadata

    def _init(self, path):
        _LocalPath._init(self, path)
        self._remote_path = None
        self.metadata = None

    @property
    def remote_path(self):
        return self._remote_path

    def open(self, mode="r", cache_type=None, cache_options=None, **kwargs):
        """The file, opened (a file object, also a context manager);
        writing creates its directory."""
        if any(c in mode for c in "wax+"):
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        return open(self.download(), mode, **kwargs)

    def __eq__(self, other):
        if isinstance(other, FlyteFile):
            return self.path == other.path and self.extension() == other.extension()
        return self.path == other

    __hash__ = _LocalPath.__hash__

    @classmethod
    def new_remote_file(cls, name=None, alt=None):
        """A new local path to write to (flytekit's points into the blob store)."""
        return cls(_new_local(name))

    @classmethod
    def new(cls, filename):
        """A new file path (``filename`` relative) in a fresh working directory."""
        if os.path.isabs(os.fspath(filename)):
            raise ValueError("FlyteFile.new(%r): the path should be relative" % (filename,))
        return cls(_new_local(filename))

    @classmethod
    def from_source(cls, source):
        return cls(source)

    def __reduce__(self):
        name, content = _read_file(self.download())
        return (_rebuild_file, (self.extension(), name, content))


class FlyteDirectory(_LocalPath):
    """A local directory as a task input or output (flytekit's
    ``FlyteDirectory``). Its files travel with it."""

    _kind = "FlyteDirectory"

    def __init__(self, path, downloader=None, remote_directory=None):
        path = _local_path(path, "FlyteDirectory")
        if remote_directory:
            raise FileTransferError("FlyteDirectory %r: remote_directory=%r asks for an upload to a blob store, "
                                    "which Hearth does not have; leave it out" % (path, remote_directory))
        self._init(path)
        self._downloader = downloader if callable(downloader) else None
        self._remote_directory = remote_directory

    def _init(self, path):
        _LocalPath._init(self, path)
        self._remote_directory = None

    @property
    def remote_directory(self):
        return self._remote_directory

    @property
    def sep(self):
        return os.sep

    def __eq__(self, other):
        if isinstance(other, FlyteDirectory):
            return self.path == other.path and self.extension() == other.extension()
        return self.path == other

    __hash__ = _LocalPath.__hash__

    def __truediv__(self, other):
        import pathlib

        return pathlib.Path(self.path) / other

    @classmethod
    def new_remote(cls, stem=None, alt=None):
        """A new, empty local directory (flytekit's points into the blob store)."""
        if stem and os.path.splitext(stem)[1]:
            raise ValueError("FlyteDirectory.new_remote(%r): the stem should not have a file extension" % (stem,))
        path = _new_local(stem)
        os.makedirs(path, exist_ok=True)
        return cls(path)

    @classmethod
    def new(cls, dirname):
        """A new, empty directory (``dirname`` relative) in a fresh working directory."""
        if os.path.isabs(os.fspath(dirname)):
            raise ValueError("FlyteDirectory.new(%r): the path should be relative" % (dirname,))
        path = _new_local(dirname)
        os.makedirs(path, exist_ok=False)
        return cls(path)

    @classmethod
    def from_source(cls, source):
        return cls(source)

    def new_file(self, name=None):
        """A FlyteFile for a new file in this directory (a random name by default)."""
        import uuid

        return FlyteFile(os.path.join(self.path, name or uuid.uuid4().hex))

    def new_dir(self, name=None):
        """A new directory in this one (created), as a FlyteDirectory."""
        import uuid

        path = os.path.join(self.path, name or uuid.uuid4().hex)
        os.makedirs(path, exist_ok=True)
        return FlyteDirectory(path)

    @classmethod
    def listdir(cls, directory):
        """The entries of ``directory``, sorted by name: a FlyteFile for each
        file, a FlyteDirectory for each directory."""
        base = os.fspath(directory)
        out = []
        for name in sorted(os.listdir(base)):
            p = os.path.join(base, name)
            out.append(FlyteFile(p) if os.path.isfile(p) else FlyteDirectory(p))
        return out

    def crawl(self, maxdepth=None, topdown=True, **kwargs):
        """(this directory's path, relative path) for each file below it."""
        base = self.download()
        start = base.rstrip(os.sep).count(os.sep)
        for where, dirs, files in os.walk(base, topdown=topdown):
            if maxdepth is not None and where.rstrip(os.sep).count(os.sep) - start >= maxdepth:
                dirs[:] = []
                if where.rstrip(os.sep).count(os.sep) - start > maxdepth:
                    continue
            rel = os.path.relpath(where, base)
            for f in sorted(files):
                yield base, f if rel == "." else os.path.join(rel, f)

    def __reduce__(self):
        name, entries = _read_dir(self.download())
        return (_rebuild_dir, (self.extension(), name, entries))
