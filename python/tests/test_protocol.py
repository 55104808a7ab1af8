"""Unit tests of hearth._protocol: value encoding and frames."""

import base64
import collections
import datetime
import decimal
import enum
import json
import math
import os
import pickle
import struct
import sys
import threading
import time

import pytest

PY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if PY_DIR not in sys.path:
    sys.path.insert(0, PY_DIR)

from hearth import _protocol as P  # noqa: E402
from hearth._protocol import decode_value, encode_value  # noqa: E402


def unpickled(marker):
    assert isinstance(marker, dict) and set(marker) == {"$pickle"}, marker
    return pickle.loads(base64.b64decode(marker["$pickle"]))


def wire(value):
    """What actually travels: encode, then through JSON text and back."""
    return json.loads(P.dumps_message(encode_value(value)).decode("utf-8"))


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class MyFloat(float):
    pass


Pair = collections.namedtuple("Pair", "a b")


# -- encoding -------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    None, True, False, 0, 1, -1, 2 ** 63 - 1, -2 ** 63, 0.5, -0.0, 1e-300, 1e300, "", "x", "\u00e9\u2713\U0001f600",
    [], {}, [1, "a", None], {"a": [1, {"b": 2.5}]}, {"$": 1, "$x": 2}, {"$pickle": "x", "y": 1}, {"pickle": "x"},
])
def test_json_values_travel_as_themselves(value):
    assert encode_value(value) == value
    assert wire(value) == value
    assert decode_value(wire(value)) == value


def test_tuples_stay_tuples():
    assert encode_value((1, (2, 3))) == {"$tuple": [1, {"$tuple": [2, 3]}]}
    back = decode_value(wire((1, (2, 3.0), [()])))
    assert back == (1, (2, 3.0), [()]) and type(back[1]) is tuple and type(back[1][1]) is float
    assert decode_value(wire({"$tuple": 1})) == {"$tuple": 1}  # escaped like any single-$ key


def test_namedtuple_without_a_module_name_travels_as_fields():
    import typing

    Out = typing.NamedTuple("NotAModuleAttribute", [("x", int)])
    assert encode_value(Out(1)) == {"$tuple": [1]}


@pytest.mark.parametrize("value", [
    float("inf"), float("-inf"), 2 ** 63, -2 ** 63 - 1, 10 ** 100, b"bytes", bytearray(b"x"), {1, 2},
    frozenset(), 1 + 2j, datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.timedelta(days=1), decimal.Decimal("1.1"),
    {1: "a"}, {"a": 1, (1, 2): "b"}, {None: 1}, Color.RED, MyStr("s"), MyFloat(1.5), Pair(1, 2), range(3),
])
def test_other_values_are_pickled_whole(value):
    enc = encode_value(value)
    back = unpickled(enc)
    assert back == value and type(back) is type(value)
    assert decode_value(wire(value)) == value


def test_nan():
    assert math.isnan(unpickled(encode_value(float("nan"))))
    assert math.isnan(decode_value(wire([float("nan")]))[0])


def test_pickled_parts_inside_json():
    value = {"a": [1, {2, 3}], "b": {"c": b"x", "d": (1.5, float("inf"))}}
    enc = encode_value(value)
    assert enc["a"][0] == 1 and unpickled(enc["a"][1]) == {2, 3}
    assert unpickled(enc["b"]["c"]) == b"x"
    assert enc["b"]["d"]["$tuple"][0] == 1.5 and unpickled(enc["b"]["d"]["$tuple"][1]) == float("inf")
    assert decode_value(wire(value)) == {"a": [1, {2, 3}], "b": {"c": b"x", "d": (1.5, float("inf"))}}


def test_pickle_protocol_4():
    enc = encode_value({1, 2})
    raw = base64.b64decode(enc["$pickle"])
    assert raw[:2] == b"\x80\x04"


@pytest.mark.parametrize("value", [
    {"$pickle": "not base64"}, {"$pickle": 1}, {"$dict": {"a": 1}}, {"$dict": 5}, {"$other": [1]},
    {"$pickle": {"$pickle": "x"}}, {"$dict": {"$pickle": "x"}},
])
def test_marker_like_dicts_are_escaped(value):
    enc = encode_value(value)
    assert set(enc) == {"$dict"}
    assert decode_value(wire(value)) == value


def test_escape_shape():
    assert encode_value({"$pickle": "x"}) == {"$dict": {"$pickle": "x"}}
    assert encode_value({"$pickle": {"$dict": 1}}) == {"$dict": {"$pickle": {"$dict": {"$dict": 1}}}}
    assert encode_value({"$pickle": {1}})["$dict"]["$pickle"].keys() == {"$pickle"}
    assert decode_value({"$dict": {"$pickle": "x"}}) == {"$pickle": "x"}


def test_decode_markers():
    marker = P.pickle_value({9})
    assert decode_value(marker) == {9}
    assert decode_value(marker, unpickle=False) == marker
    assert decode_value({"$pickle": 5}) == {"$pickle": 5}  # not a string: not a marker
    assert decode_value({"$pickle": "eA==", "x": 1}) == {"$pickle": "eA==", "x": 1}
    assert decode_value({"$unknown": 1}) == {"$unknown": 1}
    assert decode_value({"$dict": [1]}) == {"$dict": [1]}
    with pytest.raises(Exception):
        decode_value({"$pickle": "!!!"})


def test_deep_and_cyclic_values_are_pickled_whole():
    a = [1]
    a.append(a)
    back = unpickled(encode_value(a))
    assert back[0] == 1 and back[1] is back
    d = {}
    d["self"] = d
    back = unpickled(encode_value(d))
    assert back["self"] is back
    deep = []
    cur = deep
    for _ in range(P.MAX_DEPTH + 10):
        cur.append([])
        cur = cur[0]
    assert set(encode_value(deep)) == {"$pickle"}
    shallow = []
    cur = shallow
    for _ in range(P.MAX_DEPTH - 10):
        cur.append([])
        cur = cur[0]
    assert encode_value(shallow) == shallow


def test_unpicklable_raises():
    with pytest.raises(Exception):
        encode_value({"f": lambda: 1})


# -- messages ---------------------------------------------------------------------

def test_dumps_message_is_compact_utf8():
    body = P.dumps_message({"type": "x", "s": "\u00e9", "l": [1, 2]})
    assert body == '{"type":"x","s":"\u00e9","l":[1,2]}'.encode("utf-8")
    with pytest.raises(ValueError):
        P.dumps_message({"f": float("nan")})
    with pytest.raises(UnicodeEncodeError):
        P.dumps_message({"s": "\udcff"})


def test_loads_message():
    assert P.loads_message(b'{"type":"ping","id":1}') == {"type": "ping", "id": 1}
    assert P.loads_message(bytearray(b' {"a": "\xc3\xa9"} ')) == {"a": "\u00e9"}
    for bad in (b"", b"{", b"[]", b"1", b'"s"', b"\xff{}", b'{"a":NaN}', b'{"a":Infinity}', b"{} {}", b"{}x"):
        with pytest.raises(P.ProtocolError):
            P.loads_message(bad)


def test_max_frame_size():
    assert P.max_frame_size({}) == 64 * 1024 * 1024 == P.DEFAULT_MAX_FRAME
    assert P.max_frame_size({"HEARTH_MAX_FRAME": "1048576"}) == 1048576
    assert P.max_frame_size({"HEARTH_MAX_FRAME": " 70000 "}) == 70000
    assert P.max_frame_size({"HEARTH_MAX_FRAME": "10"}) == P.MIN_MAX_FRAME
    assert P.max_frame_size({"HEARTH_MAX_FRAME": str(1 << 40)}) == 0xFFFFFFFF
    assert P.max_frame_size({"HEARTH_MAX_FRAME": "lots"}) == P.DEFAULT_MAX_FRAME
    assert P.max_frame_size({"HEARTH_MAX_FRAME": ""}) == P.DEFAULT_MAX_FRAME


# -- frames ------------------------------------------------------------------------

def test_pack_frame():
    frame = P.pack_frame({"type": "ping", "id": 1})
    body = b'{"type":"ping","id":1}'
    assert frame == struct.pack(">I", len(body)) + body
    assert P.pack_frame(b"{}") == b"\x00\x00\x00\x02{}"
    with pytest.raises(P.FrameTooLarge) as e:
        P.pack_frame(b"x" * 10, limit=5)
    assert str(e.value) == "frame of 10 bytes exceeds the limit of 5 bytes (HEARTH_MAX_FRAME)"


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_write_and_read_frames(pipe):
    r, w = pipe
    reader = P.FrameReader(r)
    msgs = [{"type": "run", "id": "t-%d" % i, "kwargs": {"x": i}} for i in range(5)]
    for m in msgs:
        P.write_frame(w, m)
    P.write_frame(w, b"{}")
    os.close(w)
    assert [reader.read() for _ in msgs] == msgs
    assert reader.read() == {}
    assert reader.read() is None
    assert reader.read() is None


def test_reader_handles_byte_by_byte_and_large_frames(pipe):
    r, w = pipe
    small = P.pack_frame({"type": "ping", "id": "slow"})
    big_msg = {"type": "run", "blob": "q" * (3 << 20)}
    big = P.pack_frame(big_msg)

    def writer():
        for i in range(len(small)):
            os.write(w, small[i:i + 1])
            time.sleep(0.001)
        view = memoryview(big)
        while view:
            n = os.write(w, view[:100000])
            view = view[n:]
        os.close(w)

    t = threading.Thread(target=writer)
    t.start()
    reader = P.FrameReader(r, chunk=4096)
    assert reader.read() == {"type": "ping", "id": "slow"}
    assert reader.read() == big_msg
    assert reader.read() is None
    t.join()


def test_write_frame_large_body_through_a_pipe(pipe):
    r, w = pipe
    body = P.dumps_message({"blob": "z" * (2 << 20)})
    got = []

    def read_all():
        reader = P.FrameReader(r)
        got.append(reader.read_body())

    t = threading.Thread(target=read_all)
    t.start()
    assert P.write_frame(w, body) == len(body) + 4
    t.join()
    assert bytes(got[0]) == body


def test_reader_refuses_oversize_before_reading_body(pipe):
    r, w = pipe
    os.write(w, struct.pack(">I", 5000) + b"{")
    reader = P.FrameReader(r, limit=4096)
    with pytest.raises(P.FrameTooLarge) as e:
        reader.read_body()
    assert (e.value.size, e.value.limit) == (5000, 4096)
    assert str(e.value) == "frame of 5000 bytes exceeds the limit of 4096 bytes (HEARTH_MAX_FRAME)"


@pytest.mark.parametrize("data", [b"\x00\x00", b"\x00\x00\x00\x09{}", b"\x00\x00\x00\x02{}\x00"])
def test_reader_eof_inside_a_frame(pipe, data):
    r, w = pipe
    os.write(w, data)
    os.close(w)
    reader = P.FrameReader(r)
    if data.startswith(b"\x00\x00\x00\x02{}"):
        assert reader.read() == {}
    with pytest.raises(P.ProtocolError):
        reader.read_body()


def test_write_frame_enforces_limit(pipe):
    r, w = pipe
    with pytest.raises(P.FrameTooLarge):
        P.write_frame(w, {"s": "x" * 5000}, limit=4096)
