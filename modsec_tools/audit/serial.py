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
    # Found inside another entry that never ended: after a crash that is a real entry, but
    # it may as well be one forged in a request body, so it is not to be trusted.
    nested: bool = False


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
                for piece in self.close():
                    piece.nested = True
                    yield piece

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
        # Far longer than one entry may be, with an entry start inside: it was cut short.
        self._open = None
        piece, rest = entry.cut()
        yield piece
        yield from self._refeed(rest)

    def _refeed(self, chunks: list[tuple[int, bytes]]) -> Iterator[Piece]:
        """Read again chunks of an entry that turned out to be cut short; what they hold is
        flagged nested."""
        end = self._offset
        self._line_start = True  # the first one starts with an A boundary
        for at, chunk in chunks:
            self._offset = at
            for piece in self.feed(chunk):
                piece.nested = True
                yield piece
        self._offset = end

    def _json_more(self, chunk: bytes) -> Iterator[Piece]:
        assert self._json is not None
        self._json.add(chunk)
        if chunk.endswith(b"\n"):
            yield self._json.piece()
            self._json = None


class _OpenEntry:
    """A native entry being gathered: its first ``max_entry`` bytes, and, from the first A
    boundary seen inside it, the chunks that follow (up to ``REST_CAP`` times max_entry), to
    be read again should the entry turn out to be cut short. Its own Z line proves the
    boundary forged (it is then dropped with the rest); the end of the log, or more than the
    cap of chunks without that Z, proves it real."""

    REST_CAP = 4

    def __init__(self, at: int, z_line: bytes, max_entry: int) -> None:
        self.at = at
        self.z_line = z_line
        self.max_entry = max_entry
        self.kept: list[bytes] = []
        self.kept_size = 0
        self.size = 0
        self.restart_size: int | None = None     # entry bytes before the first A boundary
        self.rest: list[tuple[int, bytes]] = []
        self.rest_size = 0

    @property
    def restart(self) -> int | None:
        return self.restart_size

    def add(self, at: int, chunk: bytes, boundary_at: int | None) -> bool:
        """Take ``chunk``; False when the chunks kept since the A boundary exceed the cap
        (the entry must then be cut there)."""
        if boundary_at is not None and self.restart_size is None:
            self.restart_size = self.size + boundary_at
            self._keep(chunk)
            self.rest.append((at + boundary_at, chunk[boundary_at:]))
            self.rest_size += len(chunk) - boundary_at
            return True
        self._keep(chunk)
        if self.restart_size is not None:
            self.rest.append((at, chunk))
            self.rest_size += len(chunk)
            return self.rest_size <= self.REST_CAP * self.max_entry
        return True

    def _keep(self, chunk: bytes) -> None:
        room = self.max_entry - self.kept_size
        if room > 0:
            piece = chunk[:room]
            self.kept.append(piece)
            self.kept_size += len(piece)
        self.size += len(chunk)

    def whole(self) -> Piece:
        return Piece(self.at, b"".join(self.kept), self.size > self.max_entry)

    def cut(self) -> tuple[Piece, list[tuple[int, bytes]]]:
        """The entry up to its first A boundary, and the chunks to read again from there."""
        assert self.restart_size is not None
        data = b"".join(self.kept)[:self.restart_size]
        return (Piece(self.at, data, self.restart_size > self.max_entry, nested=False),
                self.rest)


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
