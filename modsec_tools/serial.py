"""Cutting a Serial audit log (native or JSON) into entries: a pure state machine fed lines.

Feeding lines keeps memory bounded by the largest entry (capped at ``max_entry``), whatever
the log's size, and lets the same code serve files, pipes and tests.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

# An A boundary ends the line; it may be glued to a line a crash left unfinished.
_A_AT_END = re.compile(rb"--([0-9a-fA-F]{8,32})-A--\r?\n?\Z")


@dataclass(slots=True)
class Piece:
    offset: int          # byte offset of the entry in the log
    data: bytes          # the entry; when oversized, only its first max_entry bytes
    oversized: bool = False


class SerialSplitter:
    """Feed lines (bytes ending in ``\\n``; a longer line may come in several chunks) in
    order; entries come out as they complete.

    Native entries run from their A boundary to their own Z boundary, so an A boundary forged
    inside a body cannot cut an entry. Should the entry not end (the writer crashed), an A
    boundary seen inside it was a real entry start after all: the entry is cut there and the
    rest is read again, so one truncated entry costs only itself. That is decided at the end
    of the log, or as soon as the open entry outgrows ``max_entry``. An entry larger than
    ``max_entry`` with no A boundary inside is kept as its first ``max_entry`` bytes and
    flagged oversized. Lines starting with ``{`` outside a native entry are JSON entries.
    Anything else between entries is ignored.
    """

    def __init__(self, max_entry: int = 64 * 1024 * 1024) -> None:
        self.max_entry = max_entry
        self._offset = 0
        self._line_start = True                 # the next chunk starts a line
        self._open: _OpenEntry | None = None
        self._json: _OpenJson | None = None

    def feed(self, chunk: bytes) -> Iterator[Piece]:
        at = self._offset
        self._offset += len(chunk)
        line_start, self._line_start = self._line_start, chunk.endswith(b"\n")
        if self._json is not None:
            yield from self._json_more(chunk)
        elif self._open is not None:
            yield from self._open_more(at, chunk, line_start)
        elif boundary := _A_AT_END.search(chunk):
            start = boundary.start()
            self._open = _OpenEntry(at + start, b"--" + boundary.group(1) + b"-Z--",
                                    self.max_entry)
            self._open.add(at + start, chunk[start:], None)
        elif line_start and chunk[:1] == b"{":
            self._json = _OpenJson(at, self.max_entry)
            yield from self._json_more(chunk)

    def close(self) -> Iterator[Piece]:
        """What is left when the log ends inside an entry (a crash cut it short)."""
        if self._json is not None:
            yield self._json.piece()
            self._json = None
        if self._open is not None:
            entry, self._open = self._open, None
            if entry.restart is None:
                yield entry.whole()
            else:
                piece, rest = entry.cut()
                yield piece
                yield from self._refeed(rest)
                yield from self.close()

    def _open_more(self, at: int, chunk: bytes, line_start: bool) -> Iterator[Piece]:
        entry = self._open
        assert entry is not None
        if line_start and chunk.rstrip(b"\r\n") == entry.z_line:
            entry.add(at, chunk, None)
            self._open = None
            yield entry.whole()
            return
        boundary = _A_AT_END.search(chunk)
        if entry.add(at, chunk, boundary.start() if boundary else None):
            return
        # Too long to be one entry, and an entry started inside it: it was cut short.
        self._open = None
        piece, rest = entry.cut()
        yield piece
        yield from self._refeed([*rest, (at, chunk)])

    def _refeed(self, chunks: list[tuple[int, bytes]]) -> Iterator[Piece]:
        """Read again chunks of an entry that turned out to be cut short."""
        end = self._offset
        self._line_start = True  # the first one starts with an A boundary
        for at, chunk in chunks:
            self._offset = at
            yield from self.feed(chunk)
        self._offset = end

    def _json_more(self, chunk: bytes) -> Iterator[Piece]:
        assert self._json is not None
        self._json.add(chunk)
        if chunk.endswith(b"\n"):
            yield self._json.piece()
            self._json = None


class _OpenEntry:
    """A native entry being gathered, whole (at most ``max_entry`` bytes are kept), with the
    first place an A boundary appeared inside it."""

    def __init__(self, at: int, z_line: bytes, max_entry: int) -> None:
        self.at = at
        self.z_line = z_line
        self.max_entry = max_entry
        self.chunks: list[tuple[int, bytes]] = []
        self.size = 0
        self.restart: int | None = None     # index in chunks where an A boundary begins
        self.oversized = False

    def add(self, at: int, chunk: bytes, boundary_at: int | None) -> bool:
        """Keep ``chunk``; False when it does not fit and the entry must be cut at its restart."""
        if self.oversized:
            return True  # only the prefix is kept; the rest is read past, to the Z line
        if self.size + len(chunk) > self.max_entry:
            if self.restart is not None:
                return False
            self.chunks.append((at, chunk[:self.max_entry - self.size]))
            self.size = self.max_entry
            self.oversized = True
            return True
        if boundary_at is not None and self.restart is None:
            if boundary_at:
                self.chunks.append((at, chunk[:boundary_at]))  # the unfinished line
            self.restart = len(self.chunks)
            self.chunks.append((at + boundary_at, chunk[boundary_at:]))
        else:
            self.chunks.append((at, chunk))
        self.size += len(chunk)
        return True

    def whole(self) -> Piece:
        return Piece(self.at, b"".join(c for _, c in self.chunks), self.oversized)

    def cut(self) -> tuple[Piece, list[tuple[int, bytes]]]:
        assert self.restart is not None
        before = b"".join(c for _, c in self.chunks[:self.restart])
        return Piece(self.at, before), self.chunks[self.restart:]


class _OpenJson:
    """A JSON entry line being gathered (it may come in several chunks)."""

    def __init__(self, at: int, max_entry: int) -> None:
        self.at = at
        self.max_entry = max_entry
        self.kept: list[bytes] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        room = self.max_entry - self.size
        if room > 0:
            self.kept.append(chunk[:room])
        self.size += len(chunk.rstrip(b"\r\n"))

    def piece(self) -> Piece:
        return Piece(self.at, b"".join(self.kept).rstrip(b"\r\n"), self.size > self.max_entry)


def split_serial(source: BinaryIO | Iterable[bytes],
                 max_entry: int = 64 * 1024 * 1024) -> Iterator[Piece]:
    """Entries of a Serial log: ``source`` is a binary stream (read a line at a time, a line
    longer than ``max_entry`` in pieces, so memory stays bounded) or an iterable of lines."""
    splitter = SerialSplitter(max_entry)
    readline = getattr(source, "readline", None)
    chunks = iter(lambda: readline(max_entry + 2), b"") if readline else source
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.close()
