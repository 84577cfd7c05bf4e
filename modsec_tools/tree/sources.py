"""Where entries come from: entry files, storage trees, Serial logs and index logs.

This is the I/O edge of the read path. It yields raw entries (bytes plus where they came
from) and read failures with their reason; parsing happens elsewhere.
"""
from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ..audit.errors import IntegrityError, ParseError
from ..audit.indexlog import IndexLine, parse_index_line, verify
from .layout import ENTRY_NAME, EntryRef, is_minute_dir, position_of, walk
from .safefs import open_dir_path, read_file_at
from ..audit.serial import split_serial

MAX_ENTRY = 64 * 1024 * 1024
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
    gone: bool = False      # no such file: removed once processed (the watcher), or never there


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
    """Entry files of a Concurrent storage tree (with or without the <user> level), or of
    one of its user, day or minute directories, found as ingest finds them (layout.walk:
    no link followed, only the layout entered); every other name is reported, not read."""
    at = position_of(root)
    unlisted: list[ReadFailure] = []

    def where(dirs: tuple[str, ...], *name: str) -> str:
        return os.path.join(root, *dirs[len(at):], *name)

    def failed(dirs: tuple[str, ...], exc: OSError) -> None:
        unlisted.append(ReadFailure(where(dirs), exc.strerror or str(exc)))

    for listing in walk(root, at, failed):
        yield from unlisted
        unlisted.clear()
        in_minute = is_minute_dir(listing.dirs)
        for name in listing.odd_dirs:
            yield ReadFailure(where(listing.dirs, name), "directory outside the storage "
                                                         "layout; not read")
        for entry in listing.others:
            path = where(listing.dirs, entry.name)
            if not in_minute:
                yield ReadFailure(path, "not in a minute directory "
                                        "([<user>/]YYYYMMDD/YYYYMMDD-HHMM); not read")
            elif not ENTRY_NAME.fullmatch(entry.name):
                yield ReadFailure(path, "name is not YYYYMMDD-HHMMSS-<unique_id>; not read")
            else:
                yield from _read_entry_file(listing.fd, entry.name, path, max_entry)
    yield from unlisted


def _read_entry_file(dir_fd: int | None, name: str, path: str, max_entry: int,
                     index: IndexLine | None = None) -> Iterator[Item]:
    try:
        file = read_file_at(dir_fd, name, max_entry, require_single_link=False)
    except ParseError as exc:
        yield ReadFailure(path, str(exc))
        return
    except OSError as exc:
        yield ReadFailure(path, exc.strerror or str(exc), exc.errno == errno.ENOENT)
        return
    yield RawEntry(file.data, path, index, oversized=file.truncated)


def iter_index_log(path: str, storage_dir: str, max_entry: int = MAX_ENTRY) -> Iterator[Item]:
    """Entries named by an index log, checked against its size and md5."""
    if not os.path.isdir(storage_dir):
        yield ReadFailure(storage_dir, f"the storage directory of {path} does not exist "
                                       "(name it with --storage-dir)")
        return
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
    ref = EntryRef.from_relpath(index.relpath)
    if not ref.in_layout:
        yield ReadFailure(index.relpath, "index line names a path outside the storage layout")
        return
    path = os.path.join(storage_dir, *ref.dirs, ref.name)
    try:
        dir_fd = open_dir_path(storage_dir, list(ref.dirs))
    except OSError as exc:
        yield ReadFailure(path, f"cannot open its directory: {exc.strerror or exc}",
                          exc.errno == errno.ENOENT)
        return
    try:
        items = list(_read_entry_file(dir_fd, ref.name, path, max_entry, index))
    finally:
        os.close(dir_fd)
    for item in items:
        if isinstance(item, RawEntry):
            try:
                verify(item.data, index)
            except IntegrityError as exc:
                item = ReadFailure(path, str(exc))
        yield item
