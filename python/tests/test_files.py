"""FlyteFile and FlyteDirectory (hearth._files): the flytekit API on local
paths, content that travels through pickling, the size cap, and the checks
a received value passes before anything is written (forged pickles built by
hand, loaded by the caller's restricted unpickler)."""
import copy
import os
import pickle
import tempfile
import typing

import pytest

import hearth
from hearth import _files, _results, _runner
from hearth._errors import UnsafeResult
from hearth._files import FileTransferError, FlyteDirectory, FlyteFile
from hearth._typecheck import InputError, check_value

P = pickle


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Received copies go under tmp_path/recv, so a test can see what was written."""
    recv = tmp_path / "recv"
    recv.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(recv))
    monkeypatch.delenv("HEARTH_FILE_LIMIT", raising=False)
    return recv


def written(recv):
    return sorted(str(p.relative_to(recv)) for p in recv.rglob("*"))


# -- pickles built by hand ---------------------------------------------------------------

def s(text):
    b = text.encode("utf-8", "surrogatepass")
    return (P.SHORT_BINUNICODE + bytes([len(b)]) if len(b) < 256 else P.BINUNICODE + len(b).to_bytes(4, "little")) + b


def by(data):
    return P.BINBYTES + len(data).to_bytes(4, "little") + data


def tup(*items):
    return P.MARK + b"".join(items) + P.TUPLE


def forged(fn, *args):
    return P.PROTO + b"\x04" + s("hearth._files") + s(fn) + P.STACK_GLOBAL + tup(*args) + P.REDUCE + P.STOP


def load(data):
    return _results.loads(data, {}, "tasks.files")


# -- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.csv", ".hidden", "x y", "é.txt", "a" * 255, "..a", "a..", "-"])
def test_plain_names_are_accepted(name):
    _files.check_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "/etc/x", "a/b", "a\0b", "a" * 256, "\udcff", 7, b"a"])
def test_other_names_are_refused(name):
    with pytest.raises(_files.Refused):
        _files.check_name(name)


@pytest.mark.parametrize("path", ["a", "a/b.txt", "a/b/c", ".x/y"])
def test_normalized_relative_paths_are_accepted(path):
    assert _files.check_relpath(path) == path.split("/")


@pytest.mark.parametrize("path", ["", "/a", "a//b", "a/", "./a", "a/./b", "a/../b", "..", "a\0", "/".join("a" * 101)])
def test_other_paths_are_refused(path):
    with pytest.raises(_files.Refused):
        _files.check_relpath(path)


# -- the limit -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,n", [(None, 16 << 20), ("", 16 << 20), ("1000", 1000), ("32MiB", 32 << 20),
                                    ("32Mi", 32 << 20), ("2 GiB", 2 << 30), ("5K", 5000), ("0", 0)])
def test_file_limit(text, n):
    assert _files.file_limit({} if text is None else {"HEARTH_FILE_LIMIT": text}) == n


@pytest.mark.parametrize("text", ["lots", "-1", "1.5MiB", "10 parsecs"])
def test_a_bad_file_limit_is_named(text):
    with pytest.raises(FileTransferError, match="HEARTH_FILE_LIMIT=%r is not a size" % text):
        _files.file_limit({"HEARTH_FILE_LIMIT": text})


def test_a_file_over_the_limit_is_refused_with_its_path_size_and_the_limit(tmp_path, monkeypatch, private_tmp):
    monkeypatch.setenv("HEARTH_FILE_LIMIT", "100")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 101)
    with pytest.raises(FileTransferError) as e:
        pickle.dumps(FlyteFile(str(big)))
    assert str(e.value).startswith("FlyteFile %s holds 101 bytes (0.0 MiB), over the limit of 100 bytes (0.0 MiB) "
                                   "for a file or directory sent to or from a task; set HEARTH_FILE_LIMIT" % big)
    big.write_bytes(b"x" * 100)
    assert open(pickle.loads(pickle.dumps(FlyteFile(str(big)))), "rb").read() == b"x" * 100


def test_a_directory_over_the_limit_counts_all_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTH_FILE_LIMIT", "100")
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a").write_bytes(b"x" * 60)
    (d / "sub" / "b").write_bytes(b"x" * 60)
    with pytest.raises(FileTransferError, match=r"^FlyteDirectory %s holds 120 bytes .*over the limit of 100 bytes"
                       % d):
        pickle.dumps(FlyteDirectory(str(d)))


# -- the API -----------------------------------------------------------------------------------

def test_a_file_round_trips_with_its_name_and_content(tmp_path, private_tmp):
    src = tmp_path / "data.csv"
    src.write_text("a,b\n1,2\n")
    f = FlyteFile(str(src))
    assert f.path == str(src) and os.fspath(f) == str(src) and str(f) == str(src) and f.download() == str(src)
    g = pickle.loads(pickle.dumps(f))
    assert type(g) is FlyteFile and os.path.basename(g.path) == "data.csv" and g.path != f.path
    assert g.path.startswith(str(private_tmp) + "/hearth-file-")
    with g.open("r") as fh:
        assert fh.read() == "a,b\n1,2\n"
    assert oct(os.stat(os.path.dirname(g.path)).st_mode & 0o777) == "0o700"


def test_subscripted_forms_are_one_class_and_pass_type_checks(tmp_path):
    csv = FlyteFile["csv"]
    assert csv is FlyteFile[typing.TypeVar("csv")] is FlyteFile[".csv"] and csv.extension() == "csv"
    assert FlyteFile[""] is FlyteFile and FlyteFile.extension() == ""
    plain = FlyteFile(str(tmp_path / "x"))
    assert isinstance(plain, csv) and issubclass(csv, FlyteFile)
    check_value(plain, csv, "input 'f'")
    check_value([plain], typing.List[csv], "input 'fs'")
    check_value("some/path.csv", csv, "input 'f'")  # a path, as flytekit takes it
    with pytest.raises(InputError, match="input 'f': expected hearth._files.FlyteFile\\['csv'\\], got int 3"):
        check_value(3, csv, "input 'f'")
    with pytest.raises(InputError):
        check_value(FlyteDirectory(str(tmp_path)), FlyteFile, "input 'f'")
    (tmp_path / "x").write_text("1")
    back = pickle.loads(pickle.dumps(csv(str(tmp_path / "x"))))
    assert type(back) is csv and back.extension() == "csv"
    assert isinstance(FlyteDirectory(str(tmp_path)), FlyteDirectory["svg"])
    with pytest.raises(TypeError, match="a format is a short extension"):
        FlyteFile["../x"]


def test_hearth_exports_the_names():
    assert hearth.FlyteFile is FlyteFile and hearth.FlyteDirectory is FlyteDirectory
    assert hearth.FileTransferError is FileTransferError


def test_new_files_and_directories_are_fresh_local_paths():
    f = FlyteFile.new_remote_file("out.txt")
    with f.open("w") as fh:
        fh.write("hi")
    assert os.path.basename(f.path) == "out.txt" and open(f).read() == "hi"
    assert FlyteFile.new_remote_file().path != FlyteFile.new_remote_file().path
    d = FlyteDirectory.new_remote()
    assert os.path.isdir(d.path) and os.listdir(d) == []
    d.new_file("a.txt").open("w").close()
    sub = d.new_dir("sub")
    with sub.new_file("b.txt").open("w") as fh:
        fh.write("b")
    assert [type(e).__name__ + ":" + os.path.basename(e.path) for e in FlyteDirectory.listdir(d)] == \
        ["FlyteFile:a.txt", "FlyteDirectory:sub"]
    assert list(d.crawl()) == [(d.path, "a.txt"), (d.path, "sub/b.txt")]
    assert str(d / "sub") == os.path.join(d.path, "sub")
    n = FlyteDirectory.new("made")
    assert os.path.isdir(n.path) and os.path.basename(n.path) == "made"
    with pytest.raises(ValueError, match="relative"):
        FlyteDirectory.new("/abs")
    with pytest.raises(ValueError, match="relative"):
        FlyteFile.new("/abs")


@pytest.mark.parametrize("path", ["s3://bucket/x.csv", "gs://b/x", "https://example.com/x.csv", "http://h/x"])
def test_remote_paths_are_refused(path):
    with pytest.raises(FileTransferError, match="a remote path .*Hearth moves local files only"):
        FlyteFile(path)
    with pytest.raises(FileTransferError, match="Hearth moves local files only"):
        FlyteDirectory(path)


def test_remote_upload_targets_are_refused_and_file_urls_are_local(tmp_path):
    with pytest.raises(FileTransferError, match="remote_path='s3://b/x' asks for an upload"):
        FlyteFile(str(tmp_path / "x"), remote_path="s3://b/x")
    assert FlyteFile("file:///tmp/x").path == "/tmp/x"


def test_a_directory_round_trips_with_nested_and_empty_directories(tmp_path, private_tmp):
    d = tmp_path / "results"
    (d / "a" / "b").mkdir(parents=True)
    (d / "empty").mkdir()
    (d / "top.txt").write_text("top")
    (d / "a" / "b" / "deep.bin").write_bytes(bytes(range(256)))
    back = load(pickle.dumps(FlyteDirectory(str(d))))  # the caller's restricted loader
    assert os.path.basename(back.path) == "results"
    got = sorted(os.path.relpath(os.path.join(w, n), back.path) for w, ds, fs in os.walk(back.path) for n in ds + fs)
    assert got == ["a", "a/b", "a/b/deep.bin", "empty", "top.txt"]
    assert open(os.path.join(back.path, "a/b/deep.bin"), "rb").read() == bytes(range(256))


def test_links_devices_and_fifos_are_refused_not_followed(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.txt").write_text("ok")
    os.symlink("/etc/passwd", d / "link")
    with pytest.raises(FileTransferError, match="FlyteDirectory %s holds a symbolic link, link; .*follows no links"
                       % d):
        pickle.dumps(FlyteDirectory(str(d)))
    os.unlink(d / "link")
    os.mkfifo(d / "fifo")
    with pytest.raises(FileTransferError, match="holds fifo, which is not a regular file or directory"):
        pickle.dumps(FlyteDirectory(str(d)))
    with pytest.raises(FileTransferError, match="is not a regular file"):
        pickle.dumps(FlyteFile(str(d / "fifo")))  # and the open does not hang
    with pytest.raises(FileTransferError, match="/dev/zero is not a regular file"):
        pickle.dumps(FlyteFile("/dev/zero"))
    with pytest.raises(FileTransferError, match="is a directory; send it as a FlyteDirectory"):
        pickle.dumps(FlyteFile(str(tmp_path)))
    with pytest.raises(FileTransferError, match="cannot be sent: No such file"):
        pickle.dumps(FlyteFile(str(tmp_path / "missing")))


def test_copies_do_not_read_or_write_content(tmp_path, private_tmp):
    f = FlyteFile(str(tmp_path / "not-there"))
    assert copy.deepcopy(f).path == f.path and copy.copy(f) == f
    assert written(private_tmp) == []


def test_paths_become_files_for_annotated_inputs_and_results(tmp_path):
    def task(f: FlyteFile, d: typing.Optional[FlyteDirectory], n: int) -> FlyteFile["csv"]:
        pass

    from hearth._typecheck import Signature, conform

    kw = Signature(task).bind((), {"f": str(tmp_path / "x"), "d": tmp_path, "n": 3})
    assert type(kw["f"]) is FlyteFile and type(kw["d"]) is FlyteDirectory and kw["n"] == 3
    out = conform(str(tmp_path / "y.csv"), typing.get_type_hints(task)["return"], "out")
    assert type(out) is FlyteFile["csv"] and out.path == str(tmp_path / "y.csv")
    assert conform([str(tmp_path)], typing.List[FlyteDirectory], "ds")[0].path == str(tmp_path)


def test_command_line_paths(tmp_path):
    (tmp_path / "in.csv").write_text("x")
    f = _runner.parse_value(str(tmp_path / "in.csv"), FlyteFile["csv"], "csv_file")
    assert type(f) is FlyteFile["csv"] and f.path == str(tmp_path / "in.csv")
    assert type(_runner.parse_value(str(tmp_path), FlyteDirectory, "d")) is FlyteDirectory
    with pytest.raises(_runner.UsageError, match="--csv-file: .*/missing.csv: no such file"):
        _runner.parse_value(str(tmp_path / "missing.csv"), FlyteFile, "csv_file")
    with pytest.raises(_runner.UsageError, match="no such directory"):
        _runner.parse_value(str(tmp_path / "in.csv"), FlyteDirectory, "d")


def test_a_replica_keeps_inputs_by_content_within_its_budget(tmp_path, monkeypatch, private_tmp):
    monkeypatch.setattr(_files, "_in_worker", lambda: True)
    monkeypatch.setattr(_files, "_store", {})
    monkeypatch.setenv("HEARTH_INPUT_CACHE", "10")
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("weights")
    (src / "y").write_text("other")
    g = pickle.loads(pickle.dumps(FlyteFile(str(src / "x"))))
    _files.task_done()
    # The same content in a later task: the same path (an actor_cache keyed on it hits).
    again = pickle.loads(pickle.dumps(FlyteFile(str(src / "x"))))
    assert again.path == g.path and open(g.path).read() == "weights"
    assert not os.access(g.path, os.W_OK) or os.geteuid() == 0
    _files.task_done()
    # A task that wrote to its copy: the next one gets the sent bytes again.
    os.chmod(g.path, 0o644)
    with open(g.path, "w") as f:
        f.write("changed")
    fixed = pickle.loads(pickle.dumps(FlyteFile(str(src / "x"))))
    assert fixed.path == g.path and open(fixed.path).read() == "weights"
    _files.task_done()
    # Over the budget (10 bytes), the least recently used copy goes once a task ends.
    other = pickle.loads(pickle.dumps(FlyteFile(str(src / "y"))))
    _files.task_done()
    assert os.path.exists(other.path) and not os.path.exists(g.path)
    # HEARTH_INPUT_CACHE=0: nothing is kept past its task.
    monkeypatch.setenv("HEARTH_INPUT_CACHE", "0")
    _files.task_done()
    assert not os.path.exists(other.path)
    d = pickle.loads(pickle.dumps(FlyteDirectory(str(src))))
    assert sorted(os.listdir(d.path)) == ["x", "y"]
    _files.task_done()
    assert not os.path.exists(d.path) and written(private_tmp) == ["hearth-inputs"]


# -- forged results -------------------------------------------------------------------------------

FILE_CASES = [
    ("../x", "the file name '../x'", "a name is one plain path component"),
    ("/etc/x", "the file name '/etc/x'", "a name is one plain path component"),
    ("", "the file name ''", "not empty"),
    ("..", "the file name '..'", "not '.' or '..'"),
    ("a\0b", "the file name 'a\\x00b'", "without '/' or NUL"),
    ("\udcff", "the file name '\\udcff'", "a name is valid UTF-8"),
]


@pytest.mark.parametrize("name,what,rule", FILE_CASES)
def test_forged_file_names_are_refused_and_nothing_is_written(name, what, rule, private_tmp):
    with pytest.raises(UnsafeResult) as e:
        load(forged("_rebuild_file", s(""), s(name), by(b"pwned")))
    assert "the result of task tasks.files calls hearth._files._rebuild_file with %s, which is not allowed" % what \
        in str(e.value)
    assert rule in str(e.value)
    assert written(private_tmp) == []


def test_forged_content_over_the_callers_limit_is_refused(monkeypatch, private_tmp):
    monkeypatch.setenv("HEARTH_FILE_LIMIT", "1000")
    with pytest.raises(UnsafeResult, match=r"with 1001 bytes \(0.0 MiB\) of content for 'x', which is not allowed: "
                       r"a file holds at most 1000 bytes"):
        load(forged("_rebuild_file", s(""), s("x"), by(b"a" * 1001)))
    with pytest.raises(UnsafeResult, match="more than 1000 bytes .* a directory holds at most 1000 bytes"):
        load(forged("_rebuild_dir", s(""), s("d"), tup(tup(s("a"), by(b"a" * 600)), tup(s("b"), by(b"b" * 600)))))
    assert written(private_tmp) == []


@pytest.mark.parametrize("args,what", [
    ((s(""), s("x"), s("text")), "content of type str for 'x'"),
    ((s(""), s("x"), P.BININT + (1 << 30).to_bytes(4, "little")), "content of type int for 'x'"),
    ((s("../csv"), s("x"), by(b"")), "the format str '../csv'"),
    ((s(""), s("x")), "2 arguments"),
])
def test_forged_file_arguments_are_refused(args, what, private_tmp):
    with pytest.raises(UnsafeResult, match="calls hearth._files._rebuild_file with %s, which is not allowed"
                       % what.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load(forged("_rebuild_file", *args))
    assert written(private_tmp) == []


DIR_CASES = [
    ([("../evil", b"x")], "the path '../evil'"),
    ([("/etc/cron.d/x", b"x")], "the path '/etc/cron.d/x'"),
    ([("a/../../x", b"x")], "the path 'a/../../x'"),
    ([("a//b", b"x")], "the path 'a//b'"),
    ([("", b"x")], "the path ''"),
    ([("ok", b"x"), ("ok", b"y")], "the path 'ok' twice"),
    ([("f", b"x"), ("f/g", b"y")], "the path 'f/g' under the file 'f'"),
    ([("f/g", b"y"), ("f", b"x")], "the path 'f/g' under the file 'f'"),
    ([("a", 5)], "content of type int for 'a'"),
]


@pytest.mark.parametrize("entries,what", DIR_CASES)
def test_forged_directory_entries_are_refused_and_nothing_is_written(entries, what, private_tmp):
    body = tup(*(tup(s(p), by(c) if isinstance(c, bytes) else P.BININT1 + bytes([c])) for p, c in entries))
    with pytest.raises(UnsafeResult) as e:
        load(forged("_rebuild_dir", s(""), s("d"), body))
    assert "calls hearth._files._rebuild_dir with %s" % what in str(e.value), str(e.value)
    assert written(private_tmp) == []


def test_forged_directory_name_and_entry_count_are_refused(private_tmp):
    with pytest.raises(UnsafeResult, match="with the directory name '..'"):
        load(forged("_rebuild_dir", s(""), s(".."), tup()))
    many = tup(*(tup(s("f%d" % i), P.NONE) for i in range(_files.MAX_ENTRIES + 1)))
    with pytest.raises(UnsafeResult, match="with 10001 entries, which is not allowed: a directory holds at most 10000"):
        load(forged("_rebuild_dir", s(""), s("d"), many))
    with pytest.raises(UnsafeResult, match="with entries of type list"):
        load(forged("_rebuild_dir", s(""), s("d"), P.EMPTY_LIST))
    assert written(private_tmp) == []


def test_the_rebuild_functions_check_when_called_directly(private_tmp):
    with pytest.raises(FileTransferError, match="a FlyteFile was sent with the file name '../x', which is not "
                       "allowed"):
        _files._rebuild_file("", "../x", b"")
    with pytest.raises(FileTransferError, match="a FlyteDirectory was sent with the path '/x'"):
        _files._rebuild_dir("", "d", (("/x", b""),))
    assert written(private_tmp) == []
