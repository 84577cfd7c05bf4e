"""Where entries come from: entry files, storage trees, Serial logs and index logs.

This is the I/O edge of the read path. It yields raw entries (bytes plus where they came
from) and read failures with their reason; parsing happens elsewhere.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import IntegrityError, ParseError
from .indexlog import IndexLine, parse_index_line, verify
from .safefs import open_dir_path, read_file_at
from .serial import split_serial

MAX_ENTRY = 64 * 1024 * 1024
#: YYYYMMDD-HHMMSS-<unique_id>: the names ModSecurity 2 gives Concurrent entry files.
ENTRY_NAME = re.compile(r"[0-9]{8}-[0-9]{6}-[A-Za-z0-9@_.-]{8,64}")
DAY_DIR = re.compile(r"[0-9]{8}")
MINUTE_DIR = re.compile(r"[0-9]{8}-[0-9]{4}")
_INDEX_HINT = re.compile(rb'^\S+ \S+ \S+ \S+ \[[^\]]+\] "')


@dataclass(slots=True)
class RawEntry:
    data: bytes
    source: str                     # path, or path:offset inside a Serial log
    index: IndexLine | None = None  # the index line that announced it, if any
    oversized: bool = False


@dataclass(slots=True)
class ReadFailure:
    source: str
    reason: str


Item = RawEntry | ReadFailure


def detect_kind(path: str) -> str:
    """``tree``, ``index``, ``log`` (entry file or Serial log, native or JSON) or ``unknown``."""
    if os.path.isdir(path):
        return "tree"
    with open(path, "rb") as stream:
        head = stream.read(4096).lstrip()
    if head.startswith(b"--") or head.startswith(b"{"):
        return "log"
    if _INDEX_HINT.match(head):
        return "index"
    return "unknown"


def iter_path(path: str, storage_dir: str | None = None,
              max_entry: int = MAX_ENTRY) -> Iterator[Item]:
    """Every entry under ``path`` (``-`` = standard input), in the order ModSecurity wrote them."""
    if path == "-":
        yield from iter_log_stream(sys.stdin.buffer, "<stdin>", max_entry)
        return
    try:
        kind = detect_kind(path)
    except OSError as exc:
        yield ReadFailure(path, exc.strerror or str(exc))
        return
    if kind == "tree":
        yield from iter_tree(path, max_entry)
    elif kind == "index":
        base = storage_dir or os.path.dirname(os.path.abspath(path))
        yield from iter_index_log(path, base, max_entry)
    elif kind == "log":
        with open(path, "rb") as stream:
            yield from iter_log_stream(stream, path, max_entry)
    else:
        yield ReadFailure(path, "not an audit log, index log or storage directory")


def iter_log_stream(stream, name: str, max_entry: int = MAX_ENTRY) -> Iterator[Item]:
    """Entries of one entry file or Serial log (native or JSON lines)."""
    for piece in split_serial(stream, max_entry):
        if piece.nested:
            yield ReadFailure(f"{name}:{piece.offset}", "entry found inside an earlier entry "
                              "that never ended (a crash, or a boundary forged in a request "
                              "body); not trusted")
            continue
        yield RawEntry(piece.data, name if piece.offset == 0 else f"{name}:{piece.offset}",
                       oversized=piece.oversized)


def iter_tree(root: str, max_entry: int = MAX_ENTRY) -> Iterator[Item]:
    """Entry files of a Concurrent storage tree, with or without the <user> level.

    Symlinks are never followed (``os.fwalk`` with ``follow_symlinks=False``, files opened with
    O_NOFOLLOW); names that do not look like entries are reported, not read.
    """
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if not ENTRY_NAME.fullmatch(name):
                yield ReadFailure(path, "name is not YYYYMMDD-HHMMSS-<unique_id>; not read")
                continue
            yield from _read_entry_file(dir_fd, name, path, max_entry)


def _read_entry_file(dir_fd: int | None, name: str, path: str, max_entry: int,
                     index: IndexLine | None = None) -> Iterator[Item]:
    try:
        file = read_file_at(dir_fd, name, max_entry, require_single_link=False)
    except ParseError as exc:
        yield ReadFailure(path, str(exc))
        return
    except OSError as exc:
        yield ReadFailure(path, exc.strerror or str(exc))
        return
    yield RawEntry(file.data, path, index, oversized=file.truncated)


def relpath_is_layout(relpath: str) -> bool:
    """``/<user>/YYYYMMDD/YYYYMMDD-HHMM/<entry>`` or the pre-2.9.3 form without <user>."""
    parts = relpath.strip("/").split("/")
    if len(parts) not in (3, 4) or any(p in ("", ".", "..") for p in parts):
        return False
    day, minute, entry = parts[-3:]
    return bool(DAY_DIR.fullmatch(day) and MINUTE_DIR.fullmatch(minute)
                and ENTRY_NAME.fullmatch(entry))


def iter_index_log(path: str, storage_dir: str, max_entry: int = MAX_ENTRY) -> Iterator[Item]:
    """Entries named by an index log, checked against its size and md5."""
    with open(path, "rb") as stream:
        for number, raw_line in enumerate(stream, 1):
            where = f"{path}:{number}"
            line = raw_line.decode("utf-8", "surrogateescape")
            if not line.strip():
                continue
            try:
                index = parse_index_line(line)
            except ParseError as exc:
                yield ReadFailure(where, str(exc))
                continue
            yield from read_indexed_entry(storage_dir, index, max_entry)


def read_indexed_entry(storage_dir: str, index: IndexLine,
                       max_entry: int = MAX_ENTRY) -> Iterator[Item]:
    if not relpath_is_layout(index.relpath):
        yield ReadFailure(index.relpath, "index line names a path outside the storage layout")
        return
    *dirs, name = index.relpath.strip("/").split("/")
    path = os.path.join(storage_dir, *dirs, name)
    try:
        dir_fd = open_dir_path(storage_dir, dirs)
    except OSError as exc:
        yield ReadFailure(path, f"cannot open its directory: {exc.strerror or exc}")
        return
    try:
        items = list(_read_entry_file(dir_fd, name, path, max_entry, index))
    finally:
        os.close(dir_fd)
    for item in items:
        if isinstance(item, RawEntry):
            try:
                verify(item.data, index)
            except IntegrityError as exc:
                item = ReadFailure(path, str(exc))
        yield item
