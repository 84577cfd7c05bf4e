"""Crash-safe record files: the ingest journal and the database spool.

The journal makes ingest exactly-once across kill -9. Before a batch touches any sink, a
``batch`` record (its files, the sinks' sizes before it, or a ``marks`` record for those it
could not know yet) is appended and fsync'd; once every sink has the batch, a ``done`` record
follows, and only then are the files deleted. On start-up only the last UNFINISHED_BATCHES
batches can lack their ``done``; their files still exist, so they are completed from them
(ingest.py), after a ``plan`` record for each file sink that gets something (where, which
entries), from which a crash during start-up is completed in turn.

The spool holds database rows while the database is unreachable, replayed when it returns.

Framing: ``MTJ1`` + payload length (u32) + CRC-32 (u32) + JSON payload. A torn tail (crash
mid-write) fails its CRC and is cut off: it never took effect.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..owned import OwnedDir

MAGIC = b"MTJ1"
HEADER = struct.Struct("<4sII")
COMPACT_AT = 4 * 1024 * 1024


def _frame(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":")).encode()
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


class RecordLog:
    """Append-only file of framed JSON records, all loaded into ``records`` on open."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.dir, self.name = OwnedDir.of(path, 0o700)
        try:
            self.fd = self.dir.open(self.name, os.O_RDWR | os.O_CREAT)
        except BaseException:
            self.dir.close()
            raise
        self.records, good_end = self._load()
        if good_end != os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, good_end)
            os.fsync(self.fd)
        os.lseek(self.fd, 0, os.SEEK_END)

    def _load(self) -> tuple[list[dict[str, Any]], int]:
        data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
        records: list[dict[str, Any]] = []
        offset = 0
        while offset + HEADER.size <= len(data):
            magic, length, crc = HEADER.unpack_from(data, offset)
            payload = data[offset + HEADER.size:offset + HEADER.size + length]
            if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
                break
            records.append(json.loads(payload))
            offset += HEADER.size + length
        return records, offset

    def append(self, record: dict[str, Any], sync: bool = True) -> None:
        view = memoryview(_frame(record))
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except BaseException:
            # A torn record (the disk filled up) must not stay: one appended after it once
            # there is room would be cut off with it at the next load.
            os.ftruncate(self.fd, end)
            os.lseek(self.fd, end, os.SEEK_SET)
            raise
        if sync:
            os.fdatasync(self.fd)
        self.records.append(record)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def reset(self, records: list[dict[str, Any]] = ()) -> None:
        """Atomically replace the whole file with ``records`` (write, fsync, rename)."""
        self.dir.replace(self.name, b"".join(_frame(r) for r in records))
        os.close(self.fd)
        self.fd = self.dir.open(self.name, os.O_RDWR)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.records = list(records)

    def close(self) -> None:
        os.close(self.fd)
        self.dir.close()


class Journal(RecordLog):
    def append(self, record: dict[str, Any], sync: bool = True) -> None:
        super().append(record, sync)
        if record["type"] == "done":
            self._forget_finished()

    def _forget_finished(self) -> None:
        """Keep in memory only what can still be asked of: the first batch not done (the
        last one when all are), the one it names as ``leaving`` (see removal.py), and what
        follows (recovery looks no further back)
        after a summary holding ``seq`` and the index cursor. Every batch's file list used
        to stay until the file was compacted, ~0.4 KB an entry: a daemon's memory grew by
        ~16 MB between compactions."""
        batches = [n for n, r in enumerate(self.records) if r["type"] == "batch"]
        done = {r["seq"] for r in self.records if r["type"] == "done"}
        first = next((n for n in batches if self.records[n]["seq"] not in done),
                     batches[-1] if batches else len(self.records) - 1)
        leaving = self.records[first].get("leaving") if batches else None
        if leaving is not None:
            first = next((n for n in batches if self.records[n]["seq"] == leaving), first)
        summary: dict[str, Any] = {"type": "checkpoint", "seq": self.last("seq")}
        index = self.last("index")
        if index is not None:
            summary["index"] = index
        self.records = [summary, *self.records[first:]]

    def batch(self, seq: int | None = None) -> dict[str, Any] | None:
        """The batch record ``seq`` (the last one when None), if the journal holds it."""
        for record in reversed(self.records):
            if record["type"] == "batch" and (seq is None or record["seq"] == seq):
                return record
        return None

    def kept(self, seq: int) -> set[str]:
        """The entries recovery left in place for batch ``seq`` (its ``done`` says)."""
        for record in reversed(self.records):
            if record["type"] == "done" and record["seq"] == seq:
                return set(record.get("kept", ()))
        return set()

    def unfinished(self) -> dict[str, Any] | None:
        """The last batch record without a ``done`` (the done records of a group of batches
        follow all of their batch records)."""
        done = {r["seq"] for r in self.records if r["type"] == "done"}
        for record in reversed(self.records):
            if record["type"] == "batch" and record["seq"] not in done:
                return record
        return None

    def last(self, key: str) -> Any:
        """The most recent value of ``key`` in any record (e.g. the index-log cursor)."""
        for record in reversed(self.records):
            if key in record:
                return record[key]
        return None

    def next_seq(self) -> int:
        return (self.last("seq") or 0) + 1

    def compact(self, keep: dict[str, Any]) -> None:
        """When large and nothing is unfinished, start over with one checkpoint record."""
        if self.size() >= COMPACT_AT and self.unfinished() is None:
            self.reset([{"type": "checkpoint", **keep}])


@dataclass(slots=True)
class JournaledEntry:
    """One entry of a ``batch`` record: the file as it was read, and its length in each
    sink (by sink name) so recovery can tell entry by entry what a sink already holds."""

    path: str               # relative to the storage dir, as the index log writes it
    inode: int
    dev: int
    size: int               # bytes read (a later read takes exactly these)
    crc: int                # CRC-32 of them
    status: int | None      # the index line's status (an HTTP/0.9 entry may have no other)
    mtime: int = -1         # st_mtime_ns and st_ctime_ns as read: deleted only while the
    ctime: int = -1         # same (-1: a journal written before they were kept)
    lengths: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "inode": self.inode, "dev": self.dev, "size": self.size,
                "crc": self.crc, "status": self.status, "mtime": self.mtime,
                "ctime": self.ctime, "lengths": self.lengths}

    @classmethod
    def from_json(cls, raw: Any, times: Any = None) -> "JournaledEntry":
        if isinstance(raw, dict):
            return cls(**raw)
        # the positional rows of earlier versions, whose sinks were the archive and the
        # event log, and whose times (when kept) stood in a list beside the rows
        path, inode, dev, size, crc, status, archived, line = raw
        mtime, ctime = times or (-1, -1)
        return cls(path, inode, dev, size, crc, status, mtime, ctime,
                   {"archive": archived, "events": line})


def batch_entries(record: dict[str, Any]) -> list[JournaledEntry]:
    times = record.get("times") or [None] * len(record["files"])
    return [JournaledEntry.from_json(raw, when) for raw, when in zip(record["files"], times)]


def batch_marks(record: dict[str, Any]) -> dict[str, Any]:
    """Each sink's mark before the batch (earlier versions kept two, under their names)."""
    if "marks" in record:
        return record["marks"]
    return {"archive": record["archive"], "events": record["events"]}
