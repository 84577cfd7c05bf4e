"""Sinks that are append-only files (archive, event log, JSON lines)."""
from __future__ import annotations

from typing import Any

from ..appendfile import AppendFile, Position
from .base import Plan, Region, Renderer, Sink


class FileSink(Sink):
    def __init__(self, path: str, renderer: Renderer) -> None:
        self.file = AppendFile(path)
        self.renderer = renderer

    def mark(self) -> list[int]:
        position = self.file.position()
        return [position.inode, position.size]

    def mark_after(self, mark: list[int], pieces: list[bytes]) -> list[int]:
        return [mark[0], mark[1] + sum(map(len, pieces))]

    def length(self, piece: bytes) -> int:
        return len(piece)

    def write(self, pieces: list[bytes]) -> int:
        self.file.append(pieces)
        return 0

    def sync(self) -> None:
        self.file.sync()

    def recover(self, mark: list[int] | None, regions: list[Region], plan: Plan) -> None:
        if mark is None:  # nothing of the batch was written here before the crash
            lacking = [(n, 0) for n in range(len(regions))]
        else:
            lacking = self.file.lacking(Position(*mark), regions)
        missing = [(n, skip, regions[n][1][skip:]) for n, skip in lacking
                   if regions[n][1] is not None]
        if missing:
            if missing[0][1] == 0 and not self.file.ends_line():
                # a fragment stays (its entry cannot be completed): what follows must begin
                # a line, where readers (fail2ban, the Serial reader) look for it
                self.write([b"\n"])
            plan(self.mark(), [(n, skip, len(piece)) for n, skip, piece in missing],
                 [n for n, _ in lacking if regions[n][1] is None])
            self.write([piece for _, _, piece in missing])
        self.sync()  # also what was there already: its files are deleted next

    def reopen(self) -> None:
        self.file.reopen()

    def close(self) -> None:
        self.file.close()
