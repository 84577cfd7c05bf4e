"""The C extension (modsec_tools/_speedups.c) against its pure-Python twins.

Each C function must give exactly what its twin gives (the twin is the definition): over
every entry of the corpus (tests/corpus.py), through the whole parser, and under fuzzing with
inputs built to reach the corners (false boundaries, CR, Unicode spaces and word characters,
invalid UTF-8, digit runs at the 18-digit limit). CI must test the C path: there a missing
extension fails instead of skipping.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from modsec_tools import http, messages, native, speedups, storage, timestamps
from modsec_tools.storage import GONE, REPLACED
from tests import corpus
from tests.test_fuzz_parser import FUZZ, SEEDS, message_texts, mutated_entries
from tests.test_parse_support import REPO_ROOT
from tests.test_removal import DIRS, entries_in, replace_file


@pytest.fixture(scope="module")
def c_module():
    if speedups.C is None:
        why = f"{speedups.describe()}: `pip install -e .` with gcc and Python's headers builds it"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return speedups.C


def test_the_parser_uses_the_extension_when_it_is_built(c_module) -> None:
    assert native._scan_sections is c_module.split_sections
    assert native._trailer_lines is c_module.trailer_lines
    assert native._stopwatch is c_module.stopwatch
    assert messages._split_fields is c_module.message_fields
    assert messages.modsecurity_part_of_apache_error is c_module.modsecurity_part
    assert http._http_head is c_module.http_head
    assert storage._remove_entries is c_module.remove_entries
    assert speedups.describe() == "C speedups: built"


def test_version_says_whether_the_extension_is_used(c_module) -> None:
    def version(pure: str) -> str:
        env = dict(os.environ, MODSEC_TOOLS_PURE_PYTHON=pure)
        return subprocess.run([sys.executable, "-m", "modsec_tools.cli", "--version"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout
    assert version("").endswith(" (C speedups: built)\n")
    assert version("1").endswith(" (C speedups: off (MODSEC_TOOLS_PURE_PYTHON is set))\n")


# -- the whole parser, both ways, over the corpus ------------------------------------------------

_DUMP = """
import sys
from modsec_tools import speedups
from modsec_tools.entry import parse_entry
from modsec_tools.errors import ParseError
from modsec_tools.serial import split_serial
from pathlib import Path
print(speedups.describe())
for name in sys.argv[1:]:
    path = Path(name)
    if path.is_dir():
        datas = [(str(p), p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()]
    else:
        with open(path, "rb") as stream:
            datas = [(f"{name}@{p.offset}", p.data) for p in split_serial(stream)]
    for source, data in datas:
        try:
            print(repr(parse_entry(data, source)))
        except ParseError as exc:
            print("ParseError", source, exc)
"""


def _dump(paths: list[str], pure: bool) -> list[str]:
    env = dict(os.environ, MODSEC_TOOLS_PURE_PYTHON="1" if pure else "")
    done = subprocess.run([sys.executable, "-c", _DUMP, *paths], cwd=REPO_ROOT, env=env,
                          capture_output=True, check=True, timeout=300)
    return done.stdout.decode("utf-8", "surrogateescape").splitlines()


def test_every_corpus_entry_parses_the_same_with_and_without_c(c_module, tmp_path) -> None:
    paths = []
    for run in corpus.RUNS:
        serial = corpus.run_dir(run) / "audit" / "audit_serial.log"
        paths.append(str(serial if serial.exists() else corpus.extract_storage(run, tmp_path)))
    with_c, pure = _dump(paths, pure=False), _dump(paths, pure=True)
    assert with_c[0] == "C speedups: built"
    assert pure[0] == "C speedups: off (MODSEC_TOOLS_PURE_PYTHON is set)"
    entries = sum(corpus.run_info(run)["audit_entries"] for run in corpus.RUNS)
    assert len(with_c) == 1 + entries
    assert not any(line.startswith("ParseError") for line in with_c)
    assert with_c[1:] == pure[1:]


# -- each function under fuzzing -----------------------------------------------------------------

_SECTION_BYTES = st.lists(st.sampled_from([
    b"\n", b"\r", b"\r\n", b"-", b"--", b"\n--5f3c9a1e-", b"\n--5f3c9a1e-B--\n", b"H--", b"Z--",
    b"z--", b"B--\r\n", b"B--x", b"\n--5f3c9a1e-Q--\n", b"\n--5f3c9a1e-Z--", b"body",
    b"\xff\xc3", b"\xe2\x82", b"\x00"]), max_size=40).map(b"".join)


@FUZZ
@given(st.one_of(mutated_entries(), _SECTION_BYTES.map(lambda b: b"--5f3c9a1e-A--\n" + b),
                 _SECTION_BYTES, st.binary(max_size=300).map(lambda b: b"--" + b)))
@example(b"--5f3c9a1e-A--\nA\n--5f3c9a1e-B\n--5f3c9a1e-C--")
@example(b"--5f3c9a1e-A--\r\n\n--5f3c9a1e-X--\r\r\n--5f3c9a1e-B--\nb")
@example(b"--0123456789abcdef0123456789abcdef-A--\n\n--0123456789abcdef0123456789abcdef-Z--")
@example(b"--0123456789abcdef0123456789abcdef0-A--\n")
@example(b"--1234567-A--\n")
@example(b"--3944ab67-A--\n--3944ab67-A--\n")  # the A line's own newline starts no separator
def test_sections(c_module, data: bytes) -> None:
    ours = c_module.split_sections(data)
    twin = native.scan_sections_py(data)
    assert ours == twin
    if ours is not None:
        assert list(ours[1]) == list(twin[1])  # and in the same order


def _section(entry: bytes, letter: str) -> bytes:
    """A seed's section ``letter`` (the whole seed when it has none: also worth feeding)."""
    scanned = native.scan_sections_py(entry)
    return scanned[1].get(letter, entry) if scanned else entry


_KEYS = ["Message", "Apache-Error", "Stopwatch2", "X-y", "a", "1bad", "", "Ké", "Key_x", "-a"]
_VALUE_BITS = ["v", " ", "\r", "\t", "\x0b", "\x1c", "\x85", "\xa0", "\u2028", "\u3000", "é",
               ": ", ":", "\udcff", "[id \"1\"]"]


@st.composite
def trailer_sections(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        key = draw(st.sampled_from(_KEYS))
        sep = draw(st.sampled_from([": ", ":", " : ", ""]))
        value = "".join(draw(st.lists(st.sampled_from(_VALUE_BITS), max_size=8)))
        lines.append(key + sep + value)
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n", "\r\n"]))
    return text.encode("utf-8", "surrogateescape")


@FUZZ
@given(st.one_of(trailer_sections(), _SECTION_BYTES, st.binary(max_size=200),
                 st.sampled_from(SEEDS).map(lambda e: _section(e, "H"))))
@example(b"Message: a\n   \nmore\r\r\nAction: x\r")
@example(b"\n\nMessage: a\n\x85\nb: c")
def test_trailer_lines(c_module, data: bytes) -> None:
    assert c_module.trailer_lines(data) == native.trailer_lines_py(data)


_WORDISH = st.sampled_from(["[", "]", " ", '"', "\\", "\n", "a", "_", "é", "٣", "\u2028",
                            "id", "file", ' "', '"]', '\\"', "\\\n"])


@FUZZ
@given(st.one_of(message_texts(), st.lists(_WORDISH, max_size=40).map("".join)),
       st.integers(-2, 12))
@example('W. [file"] [id "a "b"]', 0)
@example('W. [fïle "x"] [id٣ "\\\n"] [a "b\\"]', 2)
def test_message_fields(c_module, text: str, start: int) -> None:
    assert c_module.message_fields(text, start) == messages._FIELD.findall(text, max(start, 0))
    assert messages.split_fields_py(text, max(start, 0)) == \
        messages._FIELD.findall(text, max(start, 0))


@FUZZ
@given(st.lists(st.sampled_from(["p1", "=", "0", "7", "123456789", " ", ",", ";", "é", "_",
                                 "٣", "\n", "x", "-", "combined"]), max_size=40).map("".join))
@example("a=123456789012345678 b=1234567890123456789 c=1x d=٣ e=4é f_=5")
@example("1795879630741843 1372; combined=946, p1=409, p2=415, p3=0, gc=0")
def test_stopwatch(c_module, text: str) -> None:
    ours = c_module.stopwatch(text)
    assert ours == native.stopwatch_py(text)
    assert list(ours) == list(native.stopwatch_py(text))


@FUZZ
@given(st.lists(st.sampled_from(["[", "]", " ", "file", '"x"', "level", "3", "ModSecurity: ",
                                 "ModSecurity:", "é", "\n", "_", "٣"]), max_size=24).map("".join))
@example('[file "apache2_util.c"] [line 275] [level 3] [client ::1] ModSecurity: Warning. x')
@example("[a ]] ModSecurity: x")
@example("[a b]ModSecurity: x")
def test_apache_error_prefix(c_module, text: str) -> None:
    assert c_module.modsecurity_part(text) == messages.modsecurity_part_py(text)


_HEAD_BITS = st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\r\n", b" ", b"\t", b":", b": ", b"Host",
                              b"x", b"\xc2\xa0", b"\xc2\x85", b"\xe3\x80\x80", b"\x0b", b"\x1c",
                              b"\xff", b"\xe2\x82", b"GET / HTTP/1.1"])


@FUZZ
@given(st.one_of(st.lists(_HEAD_BITS, max_size=40).map(b"".join), st.binary(max_size=200),
                 st.sampled_from(SEEDS).map(lambda e: _section(e, "B"))))
@example(b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\tc \r\nX:\r\n\r\n")
@example(b" \n folded first\nName: v\n  more\nno colon\n more\r")
def test_http_head(c_module, data: bytes) -> None:
    assert c_module.http_head(data) == http.http_head_py(data)


_STAMP_BITS = st.sampled_from(["28", "7", "/", "Nov", "Feb", "nov", "2026", ":", "16", "26", "42",
                               ".", "659421", "5", "1234567", " ", "+", "-", "--", "0100",
                               "0530", "2400", "99", "00", ":30", "\n", "é", "\udcff", "٣"])


@FUZZ
@given(st.one_of(st.lists(_STAMP_BITS, max_size=16).map("".join),
                 st.builds("{}/{}/{}:{}:{}:{}{} {}{}{}{}".format,
                           st.sampled_from(["1", "09", "31", "30", "0", "123"]),
                           st.sampled_from(["Jan", "Feb", "Dec", "Xyz"]),
                           st.sampled_from(["2026", "0000", "9999", "202"]),
                           st.sampled_from(["00", "23", "24"]), st.sampled_from(["00", "59", "60"]),
                           st.sampled_from(["00", "59", "61"]),
                           st.sampled_from(["", ".1", ".123456", ".1234567", "."]),
                           st.sampled_from(["+", "-", "-"]), st.sampled_from(["", "-"]),
                           st.sampled_from(["00", "05", "23", "24"]),
                           st.sampled_from(["00", "30", "-30", ":30", "-:30", "99", "3"]))))
@example("28/Nov/2026:16:26:42.659421 +0100")
@example("1/Jan/2026:00:00:00 --0500")
@example("29/Feb/2025:00:00:00.5 +0000")
@example("28/Nov/2026:16:26:42.659421 +0100\n")
def test_apache_time(c_module, text: str) -> None:
    ours = c_module.apache_time(text)
    try:
        twin = timestamps.parse_apache_time_py(text)
    except Exception as exc:  # the Python function rejects it: C must leave it to it
        assert ours is None, (ours, exc)
        return
    if ours is not None:
        assert (ours, ours.utcoffset(), ours.tzinfo) == (twin, twin.utcoffset(), twin.tzinfo)


def test_the_usual_time_stamps_take_the_c_path(c_module) -> None:
    for text in ("28/Nov/2026:16:26:42.659421 +0100", "1/Jan/2026:00:00:00 --0530",
                 "28/Nov/2026:16:26:42.5 -03:30"):
        assert c_module.apache_time(text) == timestamps.parse_apache_time_py(text)


def test_wrong_argument_types_raise_type_error(c_module) -> None:
    for call in (lambda: c_module.split_sections("str"), lambda: c_module.trailer_lines("x"),
                 lambda: c_module.stopwatch(b"x"), lambda: c_module.modsecurity_part(b"x"),
                 lambda: c_module.message_fields(b"x", 0), lambda: c_module.http_head("x"),
                 lambda: c_module.apache_time(b"x"),
                 lambda: c_module.remove_entries([(0, "a str name", 1, 2)]),
                 lambda: c_module.remove_entries([[0, b"a list", 1, 2]])):
        with pytest.raises(TypeError):
            call()


def test_remove_entries(c_module, tmp_path) -> None:
    """Deleted, gone, replaced by another file, failing (EISDIR): both twins give the same
    results and leave the same names."""
    results = {}
    for twin, remove in (("py", storage.remove_entries_py), ("c", c_module.remove_entries)):
        root = tmp_path / twin
        leaving = entries_in(root, 5)
        minute = root.joinpath(*DIRS)
        os.unlink(minute / leaving[1][0].name)                      # gone
        replace_file(minute / leaving[2][0].name)                   # replaced
        os.unlink(minute / leaving[3][0].name)
        os.mkdir(minute / leaving[3][0].name)                       # fails: EISDIR
        info = os.stat(minute / leaving[3][0].name)
        leaving[3] = (leaving[3][0], info.st_ino, info.st_dev)
        fd = os.open(minute, os.O_RDONLY | os.O_DIRECTORY)
        try:
            results[twin] = remove([(fd, os.fsencode(ref.name), inode, device)
                                    for ref, inode, device in leaving])
        finally:
            os.close(fd)
        results[twin + " left"] = sorted(os.listdir(minute))
    assert results["py"] == results["c"] == [0, GONE, REPLACED, errno.EISDIR, 0]
    assert results["py left"] == results["c left"]
    assert c_module.remove_entries([]) == []
