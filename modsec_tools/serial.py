"""Cutting a Serial audit log (native or JSON) into entries: a pure state machine fed lines.

Feeding lines keeps memory bounded by the largest entry (capped at ``max_entry``), whatever
the log's size, and lets the same code serve files, pipes and tests.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_A_LINE = re.compile(rb"--([0-9a-fA-F]{8,32})-A--\r?\n?$")


@dataclass(slots=True)
class Piece:
    offset: int          # byte offset of the entry in the log
    data: bytes          # the entry (may be cut short when oversized)
    oversized: bool = False


class SerialSplitter:
    """Feed ``line`` (bytes ending in ``\\n``) in order; entries come out as they complete.

    Native entries run from their A boundary to their own Z boundary, so an A boundary forged
    inside a body cannot cut an entry. Lines starting with ``{`` outside a native entry are
    JSON entries. Anything else between entries is ignored.
    """

    def __init__(self, max_entry: int = 64 * 1024 * 1024) -> None:
        self.max_entry = max_entry
        self._offset = 0
        self._start = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._z_line: bytes | None = None
        self._oversized = False
        self._restarts: list[int] = []  # indexes of A boundary lines inside the open entry

    def feed(self, line: bytes) -> Iterator[Piece]:
        at = self._offset
        self._offset += len(line)
        if self._z_line is None:
            match = _A_LINE.match(line)
            if match:
                self._begin(at, line, match.group(1))
            elif line[:1] == b"{":
                yield Piece(at, line.rstrip(b"\r\n"))
            return
        if line.rstrip(b"\r\n") == self._z_line:
            self._append(line)
            yield self._take()
            return
        if _A_LINE.match(line) and not self._oversized:
            self._restarts.append(len(self._parts))
        self._append(line)

    def close(self) -> Iterator[Piece]:
        """What is left when the log ends inside an entry (a crash cut it short).

        The open entry had no Z, so an A boundary seen inside it was a real entry start after
        all: cut there and read the rest again, so one truncated entry costs only itself.
        """
        if self._z_line is None:
            return
        if not self._restarts:
            yield self._take()
            return
        cut = self._restarts[0]
        rest = self._parts[cut:]
        offset = self._start + sum(map(len, self._parts[:cut]))
        self._parts = self._parts[:cut]
        yield self._take()
        self._offset = offset
        for line in rest:
            yield from self.feed(line)
        yield from self.close()

    def _begin(self, at: int, line: bytes, boundary: bytes) -> None:
        self._start, self._parts, self._size = at, [line], len(line)
        self._z_line = b"--" + boundary + b"-Z--"
        self._oversized = False
        self._restarts = []

    def _append(self, line: bytes) -> None:
        if self._size + len(line) > self.max_entry:
            self._oversized = True
            return
        self._parts.append(line)
        self._size += len(line)

    def _take(self) -> Piece:
        piece = Piece(self._start, b"".join(self._parts), self._oversized)
        self._parts, self._size, self._z_line = [], 0, None
        return piece


def split_serial(lines: Iterable[bytes], max_entry: int = 64 * 1024 * 1024) -> Iterator[Piece]:
    splitter = SerialSplitter(max_entry)
    for line in lines:
        yield from splitter.feed(line)
    yield from splitter.close()
