"""Sinks that are append-only files (archive, event log, JSON lines)."""
from __future__ import annotations

from typing import Any

from ..appendfile import AppendFile, Position
from .base import Region, Renderer, Sink


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

    def recover(self, mark: list[int], regions: list[Region]) -> None:
        # A sink configured after the crash has no journaled lengths: the batch is new to
        # it, and what it gets is the pieces rendered now.
        self.file.complete_regions(Position(*mark), [
            (len(piece) if length is None and piece is not None else length or 0, piece)
            for length, piece in regions])

    def reopen(self) -> None:
        self.file.reopen()

    def close(self) -> None:
        self.file.close()
