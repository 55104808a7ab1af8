"""Flyte literals across the task channel, with the files they point to.

A task's inputs and outputs travel as flytekit's ``LiteralMap`` (protobuf
bytes, base64 in the channel's JSON), so flytekit's type engine converts
them on both sides exactly as between Flyte containers. On Flyte a blob
(``FlyteFile``, ``FlyteDirectory``) or a structured dataset (a pandas
DataFrame as parquet) is a URI in a blob store both sides reach. Hearth
has none: a blob whose URI is a local path of the sending side is read
(``hearth._files``' readers and limits: regular files and directories, no
links, ``HEARTH_FILE_LIMIT`` bytes, 16 MiB by default) and travels with the
literals; the receiving side writes it into a fresh private directory and
rewrites the URI to point there. Remote URIs (``s3://`` …) travel as they
are. Blobs inside a dataclass or other binary literal are not followed.

What a replica sends back is untrusted: names and relative paths are
checked (``hearth._files.check_rebuild_*``) before anything is written,
and nothing is written outside the new directory.
"""

import base64
import os
import tempfile

from hearth import _files

__all__ = ["encode", "decode", "TransferError"]


class TransferError(_files.FileTransferError):
    """A literal's file that cannot be sent or received."""


def _local(uri):
    """The local path a URI names on this side, or None (remote)."""
    if not isinstance(uri, str) or not uri:
        return None
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    scheme, sep, _ = uri.partition("://")
    if sep and scheme:
        return None
    return uri


def _blobs(lit, out):
    """Appends (message, field) for every blob or dataset URI under ``lit`` (a protobuf Literal)."""
    if lit.HasField("scalar"):
        s = lit.scalar
        if s.HasField("blob"):
            out.append(s.blob)
        elif s.HasField("structured_dataset"):
            out.append(s.structured_dataset)
        elif s.HasField("union"):
            _blobs(s.union.value, out)
    elif lit.HasField("collection"):
        for x in lit.collection.literals:
            _blobs(x, out)
    elif lit.HasField("map"):
        for x in lit.map.literals.values():
            _blobs(x, out)
    return out


def encode(literal_map):
    """``{"literals": base64, "files": {uri: file}}`` for a flytekit
    LiteralMap model; local blobs read (``TransferError`` names one that
    cannot be)."""
    pb = literal_map.to_flyte_idl()
    files = {}
    for lit in pb.literals.values():
        for holder in _blobs(lit, []):
            path = _local(holder.uri)
            if path is None or holder.uri in files:
                continue
            if os.path.isdir(path):
                name, entries = _files._read_dir(path, "FlyteDirectory")
                files[holder.uri] = {"dir": name, "entries": [
                    [r, None if c is None else base64.b64encode(c).decode("ascii")] for r, c in entries]}
            elif os.path.exists(path):
                name, content = _files._read_file(path, "FlyteFile")
                files[holder.uri] = {"file": name, "content": base64.b64encode(content).decode("ascii")}
            # A path that does not exist here (yet) travels as it is: flytekit reports it where it is read.
    return {"literals": base64.b64encode(pb.SerializeToString()).decode("ascii"), "files": files}


def _bytes(text, what):
    if not isinstance(text, str):
        raise TransferError("%s: expected base64 text, got %s" % (what, type(text).__name__))
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise TransferError("%s: not base64" % what)


def _receive(uri, f, base):
    """Writes one sent blob under a new directory in ``base``; its new path."""
    if not isinstance(f, dict):
        raise TransferError("file %r: expected an object" % (uri,))
    d = tempfile.mkdtemp(prefix="hearth-", dir=base)
    try:
        if "file" in f:
            args = ("file", f["file"], _bytes(f.get("content"), "file %r content" % (uri,)))
            _files.check_rebuild_file(args)
            path = os.path.join(d, args[1])
            _files._write(path, args[2])
            return path
        entries = f.get("entries")
        if not isinstance(entries, list):
            raise TransferError("file %r: expected \"file\" or \"dir\" with \"entries\"" % (uri,))
        decoded = []
        for i, e in enumerate(entries):
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)):
                raise TransferError("file %r: entries[%d] is not [path, content]" % (uri, i))
            decoded.append((e[0], None if e[1] is None else _bytes(e[1], "file %r entries[%d]" % (uri, i))))
        args = ("dir", f.get("dir"), tuple(decoded))
        _files.check_rebuild_dir(args)
        return _files.make_tree(os.path.join(d, args[1]), args[2])
    except _files.Refused as e:
        raise TransferError("file %r was sent with %s, which is not allowed: %s" % (uri, e.what, e.rule))


def decode(value, base=None):
    """The flytekit LiteralMap model ``encode`` made, its files written
    under ``base`` (a new temporary directory each) and their URIs
    rewritten; ``TransferError`` for anything malformed."""
    from flyteidl.core import literals_pb2
    from flytekit.models.literals import LiteralMap

    if not isinstance(value, dict) or not isinstance(value.get("files", {}), dict):
        raise TransferError("literals: expected {\"literals\": base64, \"files\": {...}}, got %s" % type(value).__name__)
    pb = literals_pb2.LiteralMap()
    try:
        pb.ParseFromString(_bytes(value.get("literals"), "literals"))
    except TransferError:
        raise
    except Exception as e:  # protobuf's DecodeError
        raise TransferError("literals: not a LiteralMap (%s)" % e)
    files = value.get("files") or {}
    if files and base is not None:
        os.makedirs(base, exist_ok=True)
    written = {}
    for lit in pb.literals.values():
        for holder in _blobs(lit, []):
            f = files.get(holder.uri)
            if f is None:
                continue
            if holder.uri not in written:
                written[holder.uri] = _receive(holder.uri, f, base)
            holder.uri = written[holder.uri]
    return LiteralMap.from_flyte_idl(pb)
