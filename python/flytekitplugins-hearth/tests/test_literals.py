"""Literals and their files across the task channel (_literals): what the
plugin sends, and what it refuses of a replica's answer."""
import base64
import os

import pytest
from flytekit.models.core.types import BlobType
from flytekit.models.literals import (Blob, BlobMetadata, Literal, LiteralCollection, LiteralMap, Primitive,
                                      Scalar)

from flytekitplugins.hearth import _literals


def blob(uri, multipart=False):
    dim = BlobType.BlobDimensionality.MULTIPART if multipart else BlobType.BlobDimensionality.SINGLE
    return Literal(scalar=Scalar(blob=Blob(metadata=BlobMetadata(type=BlobType(format="", dimensionality=dim)),
                                           uri=uri)))


def uri_of(lit):
    return lit.scalar.blob.uri


def test_a_file_and_a_directory_travel_with_the_literals(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("a,b\n1,2\n")
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.txt").write_text("x")
    (d / "empty").mkdir()
    lm = LiteralMap(literals={
        "f": blob(str(f)), "d": blob("file://" + str(d), multipart=True), "remote": blob("s3://bucket/key"),
        "n": Literal(scalar=Scalar(primitive=Primitive(integer=3))),
        "many": Literal(collection=LiteralCollection(literals=[blob(str(f)), blob(str(f))]))})
    sent = _literals.encode(lm)
    assert sorted(sent["files"]) == sorted([str(f), "file://" + str(d)])
    back = _literals.decode(sent, base=str(tmp_path / "recv"))
    got = back.literals
    assert open(uri_of(got["f"])).read() == "a,b\n1,2\n" and uri_of(got["f"]) != str(f)
    assert uri_of(got["f"]).startswith(str(tmp_path / "recv"))
    root = uri_of(got["d"])
    assert os.path.basename(root) == "tree" and open(os.path.join(root, "sub", "x.txt")).read() == "x"
    assert os.path.isdir(os.path.join(root, "empty"))
    assert uri_of(got["remote"]) == "s3://bucket/key"
    assert got["n"].scalar.primitive.integer == 3
    # One file named three times travels and is written once.
    a, b = [uri_of(x) for x in got["many"].collection.literals]
    assert a == b == uri_of(got["f"])


def answer(files, uri="/r/out"):
    lm = LiteralMap(literals={"o0": blob(uri)})
    value = _literals.encode(lm)
    value["files"] = {uri: files}
    return value


@pytest.mark.parametrize("files, says", [
    ({"file": "../escape", "content": ""}, "not allowed"),
    ({"file": "a/b", "content": ""}, "not allowed"),
    ({"file": "ok", "content": "***"}, "not base64"),
    ({"dir": "d", "entries": [["/etc/passwd", ""]]}, "not allowed"),
    ({"dir": "d", "entries": [["a/../../b", ""]]}, "not allowed"),
    ({"dir": "d", "entries": [["a", "eA=="], ["a/b", "eA=="]]}, "not allowed"),
    ({"dir": "d", "entries": "nope"}, "expected"),
    ({"dir": "d", "entries": [["x"]]}, "is not [path, content]"),
    ("text", "expected an object"),
])
def test_a_hostile_answer_is_refused_and_writes_nothing_outside(tmp_path, files, says):
    base = tmp_path / "recv"
    base.mkdir()
    with pytest.raises(_literals.TransferError, match=says.replace("[", r"\[")):
        _literals.decode(answer(files), base=str(base))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "b").exists()


def test_bytes_that_are_not_a_literal_map_are_refused(tmp_path):
    with pytest.raises(_literals.TransferError, match="not a LiteralMap"):
        _literals.decode({"literals": base64.b64encode(b"\xff\xff\xff").decode(), "files": {}}, base=str(tmp_path))
    with pytest.raises(_literals.TransferError, match="literals: expected"):
        _literals.decode([1, 2], base=str(tmp_path))


def test_a_file_over_the_limit_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_FILE_LIMIT", "10")
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 11)
    with pytest.raises(Exception, match="big.bin"):
        _literals.encode(LiteralMap(literals={"f": blob(str(f))}))
