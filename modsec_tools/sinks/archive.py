"""The archive: every entry's bytes as read, one after another (a Serial audit log)."""
from __future__ import annotations

from ..config import Settings
from .base import PlainWire, Rendering
from .files import FileSink


class ArchiveEntry(PlainWire):
    def render(self, entry: Rendering) -> bytes:
        return archived(entry.data)


def archived(data: bytes) -> bytes:
    """Entries go into the archive whole, each ending with a newline (Serial format)."""
    return data if data.endswith(b"\n") else data + b"\n"


class ArchiveSink(FileSink):
    name = "archive"

    @classmethod
    def open(cls, settings: Settings) -> "ArchiveSink":
        return cls(settings.archive, ArchiveEntry())
