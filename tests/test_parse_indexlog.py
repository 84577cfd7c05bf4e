"""The Concurrent index log: every real line, integrity checks, and paths it may name."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from modsec_tools.audit.clientip import normalize_ip
from modsec_tools.audit.errors import IntegrityError, ParseError
from modsec_tools.audit.indexlog import IndexLine, parse_index_line, verify
from modsec_tools.tree.layout import relpath_is_layout
from modsec_tools.tree.sources import RawEntry, ReadFailure, iter_index_log, read_indexed_entry
from tests import corpus
from tests.test_parse_support import fixture

CONCURRENT = [run for run in corpus.RUNS if "concurrent" in run]
RELPATH = "/www-data/20261128/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA"


def line(relpath: str = RELPATH, size: int = 6835, md5: str = "0" * 32,
         request: str = "GET / HTTP/1.1", status: str = "403",
         uid: str = "awrysggx7z821rWArgDkswAAABA",
         stamp: str = "28/Nov/2026:16:26:42.543607 +0100") -> str:
    return (f'www.lab.test 127.0.1.103 - - [{stamp}] "{request}" {status} 239 "-" "-" {uid} '
            f'"-" {relpath} 0 {size} md5:{md5} \n')


@pytest.mark.parametrize("run", CONCURRENT)
def test_every_corpus_index_line_parses(run: str) -> None:
    text = (corpus.run_dir(run) / "audit" / "index.log").read_text("utf-8", "surrogateescape")
    lines = text.splitlines()
    assert len(lines) == corpus.run_info(run)["audit_entries"]
    truth = corpus.truth(run)
    for raw_line in lines:
        index = parse_index_line(raw_line)
        assert relpath_is_layout(index.relpath), index.relpath
        assert index.relpath.endswith("-" + index.unique_id)
        assert index.unique_id in truth
        assert index.size > 0 and index.offset == 0 and len(index.md5) == 32
        assert index.status == truth[index.unique_id]["status"]
        assert index.vhost and " " not in index.vhost
        assert normalize_ip(index.remote_ip) == truth[index.unique_id]["client_ip"]


def test_index_line_fields() -> None:
    index = parse_index_line(line(status="302", md5="ab" * 16,
                                  stamp="28/Nov/2026:10:29:47.003115 --0500"))
    assert index == IndexLine("www.lab.test", "127.0.1.103", "28/Nov/2026:10:29:47.003115 --0500",
                              "GET / HTTP/1.1", 302, "awrysggx7z821rWArgDkswAAABA", RELPATH, 0,
                              6835, "ab" * 16)


def test_index_line_with_escaped_quotes_and_http09_request() -> None:
    index = parse_index_line(line(request='GET /a\\"b\\\\ c HTTP/1.1'))
    assert index.request_line == 'GET /a\\"b\\\\ c HTTP/1.1'
    assert parse_index_line(line(request="GET /index.html")).request_line == "GET /index.html"


def test_index_line_without_status() -> None:
    assert parse_index_line(line(status="-")).status is None


@pytest.mark.parametrize("text", [
    "", "\n", "garbage", line().replace("md5:", "sha1:"), line().replace(" 0 6835 ", " 0 x "),
    line(md5="XYZ"), line(relpath="relative/path"), line()[:80],
    line().replace('"GET / HTTP/1.1"', '"GET / HTTP/1.1'),
])
def test_bad_index_lines_are_parse_errors(text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_index_line(text)
    assert "index-log line" in str(info.value)


def test_huge_or_non_ascii_size_is_a_parse_error() -> None:
    """Regression (fixed in b99618a): int() on an unbounded \\d+ raised ValueError."""
    for size in ("9" * 5000, "\u0665\u0667"):
        with pytest.raises(ParseError):
            parse_index_line(line().replace(" 0 6835 ", f" 0 {size} "))


# --- verify: size and md5 ------------------------------------------------------------------------


def indexed(data: bytes, **kw) -> IndexLine:
    return parse_index_line(line(size=len(data), md5=hashlib.md5(data).hexdigest(), **kw))


def test_verify_accepts_the_exact_file() -> None:
    data = fixture("native_detectiononly_http09.log")
    verify(data, parse_index_line(fixture("native_detectiononly_http09.index").decode()))
    verify(data, indexed(data))


def test_verify_catches_a_size_mismatch() -> None:
    data = fixture("native_http09_blocked.log")
    index = indexed(data)
    for wrong in (data[:-1], data + b"\n", b""):
        with pytest.raises(IntegrityError, match="size"):
            verify(wrong, index)


def test_verify_catches_an_md5_mismatch_of_the_same_size() -> None:
    data = bytearray(fixture("native_http09_blocked.log"))
    index = indexed(bytes(data))
    data[100] ^= 0x01
    with pytest.raises(IntegrityError, match="md5") as info:
        verify(bytes(data), index)
    assert isinstance(info.value, ParseError)


# --- relpath: only the storage layout ----------------------------------------------------------


@pytest.mark.parametrize("relpath", [
    RELPATH,
    "/20261128/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA",  # before 2.9.3
    "/www-data/20261128/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA/",
    "/vhost_user.1/20261128/20261128-1626/20261128-162642-X@Y_Z.abcdefgh",
])
def test_relpath_in_the_layout_is_accepted(relpath: str) -> None:
    assert relpath_is_layout(relpath)


@pytest.mark.parametrize("relpath", [
    "/../20261128/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/www-data/../20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/www-data/20261128/../20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/www-data/20261128/20261128-1626/..",
    "/www-data/./20261128/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/www-data//20261128/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/etc/passwd", "/", "", "/a/b/c/d/e",
    "/x/www-data/20261128/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/www-data/2026112/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/www-data/20261128/20261128-16260/20261128-162642-awrysggx7z821rWArgDkswAAABA",
    "/www-data/20261128/20261128-1626/20261128-162642-short",
    "/www-data/20261128/20261128-1626/20261128-162642-awry sggx7z821rWArgDkswAAABA",
    "/www-data/20261128/20261128-1626/20261128-162642-../../../../etc/shadow",
])
def test_relpath_outside_the_layout_is_refused(relpath: str) -> None:
    assert not relpath_is_layout(relpath)


def _tree(root: Path, relpath: str, data: bytes) -> Path:
    path = root / relpath.strip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def test_read_indexed_entry_reads_and_verifies(tmp_path: Path) -> None:
    data = fixture("native_http09_blocked.log")
    _tree(tmp_path, RELPATH, data)
    (item,) = read_indexed_entry(str(tmp_path), indexed(data))
    assert isinstance(item, RawEntry) and item.data == data and item.index is not None


def test_read_indexed_entry_reports_a_changed_file(tmp_path: Path) -> None:
    data = fixture("native_http09_blocked.log")
    _tree(tmp_path, RELPATH, data + b"appended")
    (item,) = read_indexed_entry(str(tmp_path), indexed(data))
    assert isinstance(item, ReadFailure) and "size" in item.reason


def test_read_indexed_entry_refuses_a_path_outside_the_layout(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    secret = tmp_path / "20261128-162642-awrysggx7z821rWArgDkswAAABA"
    secret.write_bytes(b"secret")
    relpath = "/www-data/20261128/../../20261128-162642-awrysggx7z821rWArgDkswAAABA"
    (item,) = read_indexed_entry(str(storage), indexed(b"secret", relpath=relpath))
    assert isinstance(item, ReadFailure) and "outside the storage layout" in item.reason


def test_read_indexed_entry_does_not_follow_a_symlinked_directory(tmp_path: Path) -> None:
    storage, elsewhere = tmp_path / "storage", tmp_path / "elsewhere"
    data = fixture("native_http09_blocked.log")
    _tree(elsewhere, "/20261128-1626/20261128-162642-awrysggx7z821rWArgDkswAAABA", data)
    (storage / "www-data").mkdir(parents=True)
    os.symlink(elsewhere, storage / "www-data" / "20261128")
    (item,) = read_indexed_entry(str(storage), indexed(data))
    assert isinstance(item, ReadFailure)


def test_read_indexed_entry_does_not_follow_a_symlinked_file(tmp_path: Path) -> None:
    data = fixture("native_http09_blocked.log")
    target = tmp_path / "target"
    target.write_bytes(data)
    path = tmp_path / RELPATH.strip("/")
    path.parent.mkdir(parents=True)
    os.symlink(target, path)
    (item,) = read_indexed_entry(str(tmp_path), indexed(data))
    assert isinstance(item, ReadFailure) and "symbolic link" in item.reason


def test_iter_index_log_reports_bad_lines_with_their_number(tmp_path: Path) -> None:
    data = fixture("native_http09_blocked.log")
    _tree(tmp_path, RELPATH, data)
    good = line(size=len(data), md5=hashlib.md5(data).hexdigest())
    index = tmp_path / "index.log"
    index.write_text(good + "garbage line\n\n" + good.replace(RELPATH, "/../x"))
    items = list(iter_index_log(str(index), str(tmp_path)))
    assert isinstance(items[0], RawEntry) and items[0].data == data
    assert isinstance(items[1], ReadFailure) and items[1].source == f"{index}:2"
    assert isinstance(items[2], ReadFailure) and "layout" in items[2].reason
    assert len(items) == 3


def test_corpus_index_verifies_every_entry_of_a_run(tmp_path_factory) -> None:
    run = "r7_pl2_concurrent_noremoteip"
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    storage = corpus.extract_storage(run, scratch)
    items = list(iter_index_log(str(corpus.run_dir(run) / "audit" / "index.log"),
                                str(storage)))
    assert len(items) == corpus.run_info(run)["audit_entries"]
    failures = [item for item in items if isinstance(item, ReadFailure)]
    assert not failures, failures[:3]
