"""Hearth task channel: frames and value encoding (protocol version 1).

Shared by the worker (``hearth._worker``) and the SDK. Standard library only,
CPython >= 3.8, no side effects on import.

Frames
------
A frame is a 4-byte big-endian unsigned length N followed by N bytes: one
UTF-8 JSON object (no BOM; NaN/Infinity literals are refused). Both sides
enforce a maximum N, ``DEFAULT_MAX_FRAME`` (64 MiB) unless the environment
variable ``HEARTH_MAX_FRAME`` gives another number of bytes (decimal; values
below ``MIN_MAX_FRAME`` = 4096 are raised to it, values above 2**32-1 lowered
to it, anything unparsable means the default).

Values
------
``encode_value`` turns a Python value into something ``json.dumps`` writes;
``decode_value`` is its inverse. Rules, applied recursively:

* ``None``, ``bool``, ``str``, ``int`` in [-2**63, 2**63-1] and finite
  ``float`` travel as themselves. Only these exact types: subclasses (IntEnum,
  numpy.float64, a str subclass, ...) are pickled so they come back as what
  they were.
* ``list`` (exact type) travels as a JSON array of encoded items; a
  ``tuple`` (exact type) as ``{"$tuple": [<encoded items>]}`` and comes back
  a tuple. A namedtuple is a tuple subclass and is pickled; one whose class
  cannot be pickled by name (``typing.NamedTuple("Out", x=int)`` written
  inside an annotation is no module attribute) travels as ``$tuple``, and
  the SDK rebuilds it from the task's return annotation.
* ``dict`` (exact type) whose keys are all ``str`` travels as a JSON object of
  encoded values. A dict with any non-str key is pickled whole.
* A dict with exactly one key that starts with ``"$"`` would be mistaken for
  a marker, so it is escaped: ``{"$dict": {<key>: <encoded value>}}``. The
  object inside ``$dict`` is taken literally (its own single ``$`` key is not
  a marker); its values are decoded as usual.
* Anything else (NaN, infinities, big ints, bytes, set, frozenset, complex,
  datetime, Decimal, dataclasses, instances of user classes, numpy arrays,
  ...) travels as ``{"$pickle": "<base64 (standard alphabet, padded) of
  pickle.dumps(value, protocol=4)>"}``.
* A value nested more than ``MAX_DEPTH`` levels deep (which includes every
  self-referencing structure) is pickled whole at the top.

Markers on decode: an object with exactly one key ``"$pickle"`` whose value is a
string is unpickled (only if ``unpickle=True``; otherwise it is left as the
marker dict); exactly one key ``"$tuple"`` whose value is an array is a tuple
of its decoded items; exactly one key ``"$dict"`` whose value is an object is the
escape above. Any other object, including single-key objects with unknown
``"$..."`` keys, is a plain dict (encoders always escape those, so new markers
can be added later).

JSON cannot preserve identity: a list referenced twice comes back as two equal
lists. Pickled parts are pickled one by one, so identity between two separately
pickled parts is lost too.
"""

import os
import struct

# json's C accelerator straight, not the json package: `import json` pulls in
# re (and with it enum, functools, types), which every cold task would pay
# for in the worker's start-up. The pure-Python json is the fallback.
try:
    import _json
except ImportError:  # pragma: no cover - interpreters without the accelerator
    _json = None

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_MAX_FRAME",
    "MIN_MAX_FRAME",
    "MAX_DEPTH",
    "ProtocolError",
    "FrameTooLarge",
    "max_frame_size",
    "encode_value",
    "decode_value",
    "pickle_value",
    "dumps_message",
    "loads_message",
    "loads_value",
    "pack_frame",
    "write_frame",
    "FrameReader",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
MIN_MAX_FRAME = 4096
MAX_FRAME_CEILING = 0xFFFFFFFF
MAX_DEPTH = 200
PICKLE_PROTOCOL = 4

PICKLE_KEY = "$pickle"
DICT_KEY = "$dict"
TUPLE_KEY = "$tuple"

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_INF = float("inf")

_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame or message that breaks the protocol; the channel can't go on."""


class FrameTooLarge(ProtocolError):
    def __init__(self, size, limit):
        self.size = size
        self.limit = limit
        ProtocolError.__init__(
            self,
            "frame of %d bytes exceeds the limit of %d bytes (HEARTH_MAX_FRAME)" % (size, limit),
        )


def max_frame_size(environ=None):
    """The frame size limit from HEARTH_MAX_FRAME (or the default)."""
    env = os.environ if environ is None else environ
    raw = env.get("HEARTH_MAX_FRAME")
    if raw is None or not raw.strip():
        return DEFAULT_MAX_FRAME
    try:
        n = int(raw.strip(), 10)
    except ValueError:
        return DEFAULT_MAX_FRAME
    if n < MIN_MAX_FRAME:
        return MIN_MAX_FRAME
    if n > MAX_FRAME_CEILING:
        return MAX_FRAME_CEILING
    return n


# -- values -----------------------------------------------------------------

class _TooDeep(Exception):
    pass


def pickle_value(value):
    """``{"$pickle": base64}`` for any picklable value."""
    import base64
    import pickle

    data = pickle.dumps(value, protocol=PICKLE_PROTOCOL)
    return {PICKLE_KEY: base64.b64encode(data).decode("ascii")}


def _enc(v, depth):
    t = type(v)
    if t is str or t is bool or v is None:
        return v
    if t is int:
        if _INT_MIN <= v <= _INT_MAX:
            return v
        return pickle_value(v)
    if t is float:
        if v - v == 0.0:  # finite (NaN - NaN and inf - inf are NaN)
            return v
        return pickle_value(v)
    if depth > MAX_DEPTH:
        raise _TooDeep()
    if t is list:
        d = depth + 1
        return [_enc(x, d) for x in v]
    if t is tuple:
        d = depth + 1
        return {TUPLE_KEY: [_enc(x, d) for x in v]}
    if t is dict:
        for k in v:
            if type(k) is not str:
                return pickle_value(v)
        d = depth + 1
        out = {k: _enc(x, d) for k, x in v.items()}
        if len(out) == 1:
            for k in out:
                if k[:1] == "$":
                    return {DICT_KEY: out}
        return out
    if isinstance(v, tuple) and hasattr(t, "_fields"):
        try:
            return pickle_value(v)
        except Exception:  # a class pickle cannot find by name: its fields, as a tuple
            d = depth + 1
            return {TUPLE_KEY: [_enc(x, d) for x in v]}
    return pickle_value(v)


def encode_value(value):
    """Python value -> JSON-writable value (see the module docstring)."""
    try:
        return _enc(value, 0)
    except _TooDeep:
        return pickle_value(value)


def _dec(v, unpickle):
    t = type(v)
    if t is list:
        return [_dec(x, unpickle) for x in v]
    if t is dict:
        if len(v) == 1:
            for k, x in v.items():
                if k == PICKLE_KEY and type(x) is str:
                    if not unpickle:
                        return v
                    import base64

                    raw = base64.b64decode(x.encode("ascii"), validate=True)
                    if callable(unpickle):  # the SDK's restricted loader
                        return unpickle(raw)
                    import pickle

                    return pickle.loads(raw)
                if k == TUPLE_KEY and type(x) is list:
                    return tuple([_dec(xx, unpickle) for xx in x])
                if k == DICT_KEY and type(x) is dict:
                    return {kk: _dec(xx, unpickle) for kk, xx in x.items()}
        return {k: _dec(x, unpickle) for k, x in v.items()}
    return v


def decode_value(value, unpickle=True):
    """JSON value -> Python value; unpickles ``$pickle`` markers when asked
    (``unpickle`` may also be a function of the pickled bytes)."""
    return _dec(value, unpickle)


# -- messages and frames ------------------------------------------------------

def _refuse_constant(name):
    raise ValueError("%s is not valid JSON" % name)


def _not_serializable(o):
    raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)


class _ScanContext(object):
    # What _json.make_scanner reads from a JSONDecoder.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_refuse_constant)
    memo = {}


_WS = " \t\n\r"


def _make_codec():
    """(encode: obj -> str, decode: str -> obj), on the C accelerator when
    it is there and behaves; else on the json package."""
    if _json is not None:
        try:
            # markers=None: no cycle check; encode_value never yields cycles,
            # and a cyclic message fails with RecursionError, not ValueError.
            enc = _json.make_encoder(None, _not_serializable, _json.encode_basestring, None, ":", ",",
                                     False, False, False)
            scan = _json.make_scanner(_ScanContext())

            def encode(obj):
                return "".join(enc(obj, 0))

            def decode(text):
                n = len(text)
                i = 0
                while i < n and text[i] in _WS:
                    i += 1
                try:
                    obj, end = scan(text, i)
                except StopIteration as e:
                    raise ValueError("Expecting value: char %d" % e.value)
                except SystemError:
                    # The accelerator reports a syntax error through
                    # json.decoder's JSONDecodeError, which is not imported
                    # here: let the json package parse it and say what is wrong.
                    import json

                    return json.JSONDecoder(parse_constant=_refuse_constant).decode(text)
                while end < n and text[end] in _WS:
                    end += 1
                if end != n:
                    raise ValueError("Extra data: char %d" % end)
                return obj

            probe = {"a": [1, 2.5, None, True, "\u00e9"]}
            if encode(probe) == '{"a":[1,2.5,null,true,"\u00e9"]}' and decode(' {"a":[1,2.5,null,true,"\u00e9"]} ') == probe:
                return encode, decode
        except Exception:
            pass
    import json

    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    decoder = json.JSONDecoder(parse_constant=_refuse_constant)
    return encoder.encode, decoder.decode


_encode, _decode = _make_codec()


def dumps_message(obj):
    """A message object -> the UTF-8 JSON bytes of a frame body.

    Raises ValueError/TypeError for what JSON can't hold and
    UnicodeEncodeError for strings with lone surrogates.
    """
    return _encode(obj).encode("utf-8")


def loads_message(data):
    """Frame body -> message dict. Raises ProtocolError if it isn't a JSON object."""
    try:
        text = str(data, "utf-8")
        obj = _decode(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("malformed frame: %s" % (e,))
    if type(obj) is not dict:
        raise ProtocolError("malformed frame: not a JSON object")
    return obj


def loads_value(data):
    """UTF-8 JSON bytes -> any value, on the C accelerator when there is one.
    Raises ValueError (UnicodeDecodeError included) for what is not JSON."""
    return _decode(str(data, "utf-8"))


def pack_frame(body, limit=None):
    """Header + body. ``body`` is bytes or a message object."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        body = dumps_message(body)
    if limit is not None and len(body) > limit:
        raise FrameTooLarge(len(body), limit)
    return _HEADER.pack(len(body)) + bytes(body)


def write_frame(fd, body, limit=None):
    """Write one frame to a blocking fd, looping over partial writes.

    ``body`` is bytes (the JSON text) or a message object. Returns the number
    of bytes written (header included).
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        body = dumps_message(body)
    n = len(body)
    if limit is not None and n > limit:
        raise FrameTooLarge(n, limit)
    header = _HEADER.pack(n)
    total = n + 4
    written = os.writev(fd, [header, body]) if n else os.write(fd, header)
    if written < total:
        rest = memoryview(header + bytes(body))[written:]
        while rest:
            k = os.write(fd, rest)
            rest = rest[k:]
    return total


class FrameReader(object):
    """Reads frames from a blocking fd with os.read.

    ``read_body()`` returns the next frame's body (bytes or bytearray), or None on EOF at a
    frame boundary. It raises FrameTooLarge before reading an oversized body,
    and ProtocolError on EOF inside a frame.
    """

    __slots__ = ("fd", "limit", "_buf", "chunk")

    def __init__(self, fd, limit=None, chunk=65536):
        self.fd = fd
        self.limit = DEFAULT_MAX_FRAME if limit is None else limit
        self.chunk = chunk
        self._buf = bytearray()

    def _fill(self, need):
        buf = self._buf
        while len(buf) < need:
            data = os.read(self.fd, max(self.chunk, need - len(buf)))
            if not data:
                return False
            buf += data
        return True

    def read_body(self):
        buf = self._buf
        if len(buf) < 4 and not self._fill(4):
            if buf:
                raise ProtocolError("end of input inside a frame header (%d of 4 bytes)" % len(buf))
            return None
        (n,) = _HEADER.unpack_from(buf, 0)
        if n > self.limit:
            raise FrameTooLarge(n, self.limit)
        end = 4 + n
        if len(buf) >= end:
            body = bytes(buf[4:end])
            del buf[:end]
            return body
        if n - (len(buf) - 4) <= self.chunk:
            if not self._fill(end):
                raise ProtocolError(
                    "end of input inside a frame (%d of %d body bytes)" % (len(buf) - 4, n)
                )
            body = bytes(buf[4:end])
            del buf[:end]
            return body
        # Large body: read straight into a buffer of the right size.
        body = bytearray(n)
        have = len(buf) - 4
        body[:have] = buf[4:]
        del buf[:]
        view = memoryview(body)
        while have < n:
            k = os.readv(self.fd, [view[have:]])
            if not k:
                raise ProtocolError("end of input inside a frame (%d of %d body bytes)" % (have, n))
            have += k
        view.release()
        return body

    def read(self):
        """The next message (a dict), or None on EOF at a frame boundary."""
        body = self.read_body()
        if body is None:
            return None
        return loads_message(body)
