"""Append-only output files (the archive and the event log) that survive kill -9.

Each batch is appended with as few write() calls as possible and fdatasync'd. The journal
records the file's size before the batch; after a crash ``lacking`` compares what is
already there with what should be, so that only the missing part is appended: nothing is
written twice, and fail2ban, which follows the event log, never sees a line disappear.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .owned import OwnedDir

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


@dataclass(frozen=True, slots=True)
class Position:
    inode: int
    size: int


class AppendFile:
    def __init__(self, path: str, mode: int = 0o640) -> None:
        self.path = path
        self.mode = mode
        self.fd = -1
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the path, e.g. after logrotate moved the old file away (SIGHUP)."""
        owned, name = OwnedDir.of(self.path)
        with owned:
            fd = owned.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def position(self) -> Position:
        info = os.fstat(self.fd)
        return Position(info.st_ino, info.st_size)

    def append(self, data: bytes | list[bytes]) -> None:
        """``data``, or a list of pieces written in order with writev: a batch's entries
        are appended without first being joined into one more copy of them all."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = [data]
        pieces = [memoryview(piece) for piece in data if piece]
        start = 0
        while start < len(pieces):
            written = os.writev(self.fd, pieces[start:start + _IOV_MAX])
            while written:
                first = pieces[start]
                if written < len(first):
                    pieces[start] = first[written:]
                    break
                written -= len(first)
                start += 1

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def lacking(self, start: Position, regions: list[tuple[int, bytes | None]]
                ) -> list[tuple[int, int]]:
        """What the file lacks of a batch written from ``start`` on, whose entries have
        these lengths and bytes (None: they can no longer be produced, only their length
        counts): ``(index, bytes of that entry already there)`` for each entry missing, in
        order. Everything after the first entry missing is missing whole: a batch is
        written in order. An entry whose bytes differ from what is there (should not
        happen) is missing whole too: what is there is kept, never overwritten.

        A file rotated since ``start`` (another inode at the path) is looked for beside it
        by inode: what it holds counts; an entry the rotation cut is written again whole,
        to the new file, which is what readers follow."""
        held, rotated = self._held(start, sum(length for length, _ in regions))
        cursor = 0
        for index, (length, data) in enumerate(regions):
            there = held[cursor:cursor + length]
            if len(there) < length or (data is not None and there != data):
                keep = 0 if rotated or data is None or not data.startswith(there) else len(there)
                return [(index, keep)] + [(n, 0) for n in range(index + 1, len(regions))]
            cursor += length
        return []

    def ends_line(self) -> bool:
        """Whether the file is empty or ends with a newline (no torn line at its end)."""
        size = self.position().size
        return size == 0 or _read(self.path, 1, size - 1) == b"\n"

    def _held(self, start: Position, length: int) -> tuple[bytes, bool]:
        """Up to ``length`` bytes from ``start`` on, in this file or in the rotated file of
        ``start``'s inode beside it (b"" when it is gone); and whether it was rotated."""
        rotated = self.position().inode != start.inode
        path = self._rotated(start.inode) if rotated else self.path
        try:
            return (_read(path, length, start.size) if path else b""), rotated
        except OSError:
            return b"", rotated

    def _rotated(self, inode: int) -> str | None:
        directory = os.path.dirname(self.path) or "."
        base = os.path.basename(self.path)
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    if entry.name.startswith(base) and entry.inode() == inode \
                            and entry.is_file(follow_symlinks=False):
                        return entry.path
        except OSError:
            pass
        return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read(path: str, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (the descriptor written to is append-only)."""
    reader = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(reader, length, offset)
    finally:
        os.close(reader)
