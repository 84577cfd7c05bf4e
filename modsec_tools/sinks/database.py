"""The database sink: rows into the database, or into a durable spool while it is down."""
from __future__ import annotations

import base64
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..db import (Database, DatabaseError, SchemaError, TransientError, UnusableError,
                  open_database, parse_target)
from ..db.rows import Row, event_row, upgraded_match
from ..pipeline.journal import RecordLog
from .base import Plan, Region, Rendering, Sink

log = logging.getLogger(__name__)

#: Under state_dir: rows waiting for the database, and rows it refused.
SPOOL, REJECTED = "db-spool", "db-rejected"


def _encode(value):
    return {"b": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


def _decode(value):
    return base64.b64decode(value["b"]) if isinstance(value, dict) else value


def _encode_rows(rows: list[Row]) -> list:
    return [[r.unique_id, [_encode(v) for v in r.event], [[_encode(v) for v in m]
                                                           for m in r.matches]] for r in rows]


def _rows(records: list[dict]) -> int:
    return sum(len(record.get("rows", ())) for record in records)


def _decode_rows(encoded: list) -> list[Row]:
    return [Row(uid, tuple(_decode(v) for v in event),
                [upgraded_match([_decode(v) for v in m]) for m in matches])
            for uid, event, matches in encoded]


class EventRow:
    """An event as its database rows, made in the workers; they cross back as plain
    values (a tuple pickles in less than the dataclass)."""

    def render(self, entry: Rendering) -> Row:
        return event_row(entry.event, entry.node, entry.verdict)

    def to_wire(self, row: Row) -> tuple:
        return (row.unique_id, row.event, row.matches)

    def from_wire(self, wire: tuple) -> Row:
        return Row(*wire)


class DatabaseSink(Sink):
    """Inserts rows, or spools them durably while the database is unreachable.

    A failure while the database still answers (a row it refuses) is not an outage: the
    rows are then inserted one by one and a refused row goes to ``db-rejected`` with the
    reason, so one bad row never blocks every later one.
    """

    name = "database"
    local = False  # it may wait on the network: written beside the files, not after them

    def __init__(self, db: Database, node: str, spool_path: str) -> None:
        self.db = db
        self.node = node
        self.renderer = EventRow()
        self.spool = RecordLog(spool_path)
        try:
            self.rejected = RecordLog(spool_path.replace(SPOOL, REJECTED))
        except BaseException:
            self.spool.close()
            raise
        self.retry_at = 0.0
        self.backoff = 1.0
        self.down = False
        self.unusable = ""  # why, while the database cannot be used until the admin acts
        self.refused = 0   # rows put in db-rejected (counted as errors: the exit status shows)

    @classmethod
    def open(cls, settings: Settings) -> "DatabaseSink | None":
        target = parse_target(settings.db, settings.db_option_file)
        if target.kind == "none":
            return None
        return cls(open_database(target), settings.node, os.path.join(settings.state_dir, SPOOL))

    def recover(self, mark: Any, regions: list[Region], plan: Plan) -> None:
        """Inserts skip rows already stored: writing the batch again is enough."""
        self.write([row for _, row in regions if row is not None])

    def status(self) -> dict[str, Any]:
        return {"database_down": self.down, "database_unusable": bool(self.unusable),
                "spool_bytes": self.spool.size(), "spool_rows": _rows(self.spool.records),
                "rejected_rows": _rows(self.rejected.records)}

    def write(self, rows: list[Row]) -> int:
        """Returns how many rows went to the spool instead of the database (0 when stored)."""
        if self._available():
            try:
                self._replay()
                self._insert(rows)
                self._up()
                return 0
            except DatabaseError as exc:
                self._failed(exc)
        self.spool.append({"rows": _encode_rows(rows)})
        return len(rows)

    def _insert(self, rows: list[Row]) -> None:
        try:
            self.db.insert(self.node, rows)
        except (SchemaError, UnusableError, TransientError):
            # No row can be stored until it is usable, or the server keeps giving the
            # transaction up (other writers hold the rollup rows; a Galera conflict): that
            # says nothing against the rows, which wait in the spool.
            raise
        except DatabaseError as batch_error:
            try:
                self.db.ping()
            except DatabaseError:
                raise batch_error from None  # unreachable: an outage
            for row in rows:
                try:
                    self.db.insert(self.node, [row])
                except TransientError:
                    raise
                except DatabaseError as exc:
                    self._reject(row, exc)

    def _reject(self, row: Row, exc: DatabaseError) -> None:
        self.db.ping()  # still up? otherwise this is an outage after all (raises)
        log.error("database refused event %r (kept in %s): %s", row.unique_id,
                  self.rejected.path, exc)
        self.rejected.append({"node": self.node, "reason": str(exc),
                              "rows": _encode_rows([row])})
        self.refused += 1

    def _available(self) -> bool:
        return not self.down or time.monotonic() >= self.retry_at

    def _replay(self) -> None:
        if not self.spool.records:
            return
        count = 0
        for record in self.spool.records:
            rows = _decode_rows(record["rows"])
            self._insert(rows)
            count += len(rows)
        self.spool.reset()
        log.warning("database: replayed %d spooled events", count)

    def flush(self) -> None:
        """Try to empty the spool now (the database may be back)."""
        if self.spool.records and self._available():
            try:
                self._replay()
                self._up()
            except DatabaseError as exc:
                self._failed(exc)

    def _up(self) -> None:
        if self.down:
            log.warning("database is back: %s", self.db.target.describe())
        self.down, self.backoff, self.unusable = False, 1.0, ""

    def _failed(self, exc: DatabaseError) -> None:
        if isinstance(exc, UnusableError):
            if not self.unusable:
                log.error("database unusable (%s); its rows are kept in %s and stored once "
                          "it is repaired or replaced", exc, self.spool.path)
            self.unusable = str(exc)
        elif not self.down:
            log.error("database %s, spooling events to %s: %s", _why_down(exc),
                      self.spool.path, exc)
        self.down = True
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, 60.0)

    def close(self) -> None:
        self.db.close()
        self.spool.close()
        self.rejected.close()


def _why_down(exc: DatabaseError) -> str:
    if isinstance(exc, SchemaError):
        return "schema not usable now"
    if isinstance(exc, TransientError):
        return "busy (it kept giving the transaction up)"
    return "unreachable"


@dataclass(slots=True)
class Replayed:
    stored: int = 0     # rows the database took now
    present: int = 0    # rows it already held (a replay interrupted after its commit)
    refused: int = 0    # rows it refused again: kept in db-rejected with the new reason


def replay_rejected(db: Database, node: str, state_dir: str) -> Replayed:
    """Offer every row of ``<state_dir>/db-rejected`` to the database again, row by row;
    the file is then replaced by the rows still refused, each with its new reason.

    Exactly once: inserts skip rows already stored, so a replay interrupted before the
    file is replaced, and run again, stores nothing twice. An outage or an unusable
    database ends it with DatabaseError, the file unchanged. The caller holds the
    instance lock: an ingest or watch appending to the file meanwhile would lose rows."""
    rejected = RecordLog(os.path.join(state_dir, REJECTED))
    done = Replayed()
    kept = []
    try:
        for record in rejected.records:
            for row in _decode_rows(record["rows"]):
                try:
                    new = db.insert(record.get("node", node), [row])
                except (SchemaError, UnusableError):
                    raise
                except DatabaseError as exc:
                    db.ping()  # unreachable: an outage, not a refusal (raises)
                    log.error("database refused event %r again (kept in %s): %s",
                              row.unique_id, rejected.path, exc)
                    kept.append({"node": record.get("node", node), "reason": str(exc),
                                 "rows": _encode_rows([row])})
                    done.refused += 1
                    continue
                done.stored += new
                done.present += 1 - new
        rejected.reset(kept)
    finally:
        rejected.close()
    return done
