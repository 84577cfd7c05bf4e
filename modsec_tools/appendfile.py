"""Append-only output files (the archive and the event log) that survive kill -9.

Each batch is appended with as few write() calls as possible and fdatasync'd. The journal
records the file's size before the batch; after a crash ``complete_batch`` compares what is
already there with what should be and appends only the missing part, so nothing is written
twice and fail2ban, which follows the event log, never sees a line disappear.
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

    def complete_regions(self, start: Position, regions: list[tuple[int, bytes | None]]) -> str:
        """Like ``complete_batch``, entry by entry: ``regions`` are each entry's length and
        bytes (None when they can no longer be produced). Entries already written whole are
        left alone; the rest are appended, so an entry whose bytes are gone costs only itself
        (at worst a torn fragment of it stays), never a second copy of the others."""
        if all(data is not None for _, data in regions):
            return self.complete_batch(start, b"".join(data for _, data in regions))
        now = self.position()
        written_end = now.size if now.inode == start.inode else start.size
        cursor = start.size
        missing: list[bytes] = []
        for length, data in regions:
            if cursor + length <= written_end:
                cursor += length
                continue
            if data is not None:
                missing.append(data[max(0, written_end - cursor):])
            cursor = written_end = -1  # everything after the first gap is missing whole
        if missing:
            self.append(b"".join(missing))
            self.sync()
            return "rest"
        return "nothing"

    def complete_batch(self, start: Position, expected: bytes) -> str:
        """Make the bytes after ``start`` equal ``expected`` by appending what is missing.

        Returns what was done ("whole", "rest", "nothing", "rotated"). A file rotated since
        the batch began (other inode) means the batch was finished before the rotation.
        """
        now = self.position()
        if now.inode != start.inode:
            return self._complete_rotated(start, expected)
        present = now.size - start.size
        if present <= 0:
            self.append(expected)
            self.sync()
            return "whole"
        reader = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            written = os.pread(reader, min(present, len(expected)), start.size)
        finally:
            os.close(reader)
        # More than expected: the next batches' bytes follow (an event log runs batches ahead)
        if expected.startswith(written):
            if present >= len(expected):
                return "nothing"
            self.append(expected[present:])
            self.sync()
            return "rest"
        # Not our bytes after the mark (should not happen): keep them, and add ours whole.
        self.append(b"\n" + expected if not written.endswith(b"\n") else expected)
        self.sync()
        return "whole"

    def _complete_rotated(self, start: Position, expected: bytes) -> str:
        """The file was rotated since the batch began (logrotate's ``create``): if the
        rotated file (found by its inode beside ours) already holds the whole batch, nothing
        is missing; otherwise the batch goes to the new file, which is what readers follow."""
        directory = os.path.dirname(self.path) or "."
        base = os.path.basename(self.path)
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    if entry.name.startswith(base) and entry.inode() == start.inode \
                            and entry.is_file(follow_symlinks=False):
                        with open(entry.path, "rb") as old:
                            old.seek(start.size)
                            if old.read(len(expected)) == expected:
                                return "rotated"
                        break
        except OSError:
            pass
        self.append(expected)
        self.sync()
        return "whole"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

