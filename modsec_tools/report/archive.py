"""An entry's bytes in the archive (a Serial log) by its unique id, without an index.

The archive is the processed entries one after the other, each whole. It is read through
mmap: the id is first looked for as plain bytes (a file without it costs one memmem over
it); only in a file that has it are the entries walked from the start, boundary to
boundary, so an entry forged inside another one's request body (a fake A boundary and
section A in a POST body) is never taken for a real one. An entry is native (from its A
boundary to its own Z boundary line) or JSON (one line); its archived bytes run to the
start of the next one, the blank line ModSecurity ends an entry with included.

Rotated archives (``archive.log.1``, ``archive.log.2.gz``, ... as logrotate leaves them)
are searched after the current one, newest first.
"""
from __future__ import annotations

import gzip
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..audit.entry import parse_entry
from ..audit.errors import ParseError

_A_LINE = re.compile(rb"--([0-9a-fA-F]{8,32})-A--\r?\n")
_ROTATED = re.compile(r"\.(\d+)(\.gz)?$")
#: A compressed archive is searched in memory up to this size (uncompressed).
MAX_GZ = 4 << 30


@dataclass(frozen=True, slots=True)
class Archived:
    path: str
    offset: int       # in the file (for a .gz file: in its uncompressed content)
    data: bytes


def archive_files(archive: str) -> list[str]:
    """The archive, then its rotations by number (newest first)."""
    directory, name = os.path.split(os.path.abspath(archive))
    rotated = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for other in names:
        if other.startswith(name + "."):
            number = _ROTATED.fullmatch(other[len(name):])
            if number:
                rotated.append((int(number.group(1)), os.path.join(directory, other)))
    current = [os.path.abspath(archive)] if os.path.isfile(archive) else []
    return current + [path for _, path in sorted(rotated)]


def find_entries(paths: list[str], unique_id: str) -> list[Archived]:
    """Every archived entry with this unique id, in the order of ``paths``."""
    wanted = unique_id.encode("utf-8", "surrogateescape")
    found: list[Archived] = []
    for path in paths:
        with _content(path) as content:
            if content is None or content.find(wanted) < 0:
                continue
            found += [Archived(path, offset, bytes(content[offset:end]))
                      for offset, end in _entries_with(content, wanted)
                      if _unique_id(bytes(content[offset:end])) == unique_id]
    return found


class _content:
    """The file's bytes: an mmap, or for .gz its uncompressed content in memory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.view: mmap.mmap | bytes | None = None

    def __enter__(self):
        if self.path.endswith(".gz"):
            with gzip.open(self.path, "rb") as stream:
                self.view = stream.read(MAX_GZ)
            return self.view
        with open(self.path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size:
                self.view = mmap.mmap(stream.fileno(), size, access=mmap.ACCESS_READ)
        return self.view

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.view, mmap.mmap):
            self.view.close()


def _entries_with(content, wanted: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each top-level entry whose bytes contain ``wanted``."""
    hits = []
    at = content.find(wanted)
    while at >= 0:
        hits.append(at)
        at = content.find(wanted, at + 1)
    size = len(content)
    pos, next_hit = 0, 0
    while pos < size and next_hit < len(hits):
        end = _entry_end(content, pos, size)
        while next_hit < len(hits) and hits[next_hit] < pos:
            next_hit += 1
        if next_hit < len(hits) and hits[next_hit] < end:
            yield pos, end
        pos = end


def _line_end(content, pos: int, size: int) -> int:
    newline = content.find(b"\n", pos)
    return size if newline < 0 else newline + 1


def _entry_end(content, pos: int, size: int) -> int:
    """Where the entry (or stray line) starting at ``pos`` ends: its own Z line and the
    blank lines after it for a native one, its line for anything else."""
    head = _A_LINE.match(content[pos:pos + 40])
    if head is None:
        return _line_end(content, pos, size)
    z_line = b"--" + head.group(1) + b"-Z--"
    at = pos
    while True:
        at = content.find(z_line, at + 1)
        if at < 0:  # cut short (it never ended): up to the next entry's start
            return _next_start(content, pos + len(head.group(0)), size)
        after = at + len(z_line)
        if content[at - 1:at] == b"\n" and content[after:after + 1] in (b"\n", b"\r", b""):
            break
    end = _line_end(content, at, size)
    while end < size and content[end:end + 1] in (b"\n", b"\r"):
        end = _line_end(content, end, size)
    return end


def _next_start(content, pos: int, size: int) -> int:
    while pos < size:
        line = _line_end(content, pos, size)
        if _A_LINE.match(content[line:line + 40]) or content[line:line + 1] == b"{":
            return line
        pos = line
    return size


def _unique_id(data: bytes) -> str | None:
    try:
        return parse_entry(data, "archive").unique_id
    except ParseError:
        return None
