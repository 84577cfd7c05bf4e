"""The indexes the report wants, proposed as a schema step (the schema belongs to
modsec_tools/db/schema.py; until a migration there creates them, ``bench/report.py`` does,
with ``create``). The report is correct without them, only slower over large ranges.

* ``events_report_time``: the timeline, status and node figures of a range read this index
  alone instead of the table's rows (and a --since range only its part of it);
* ``events_report_client``: the clients' figures stream from it in address order, with
  no sort. It starts like schema 1's ``events_client_time (client_ip, created_at)``, which a
  migration adding it can drop.
"""
from __future__ import annotations

from typing import Any

from ..db.schema import TYPES

STATEMENTS = (
    "CREATE INDEX {ifnot}events_report_time ON events (created_at, verdict, node, status, "
    "client_ip)",
    "CREATE INDEX {ifnot}events_report_client ON events (client_ip, created_at, verdict)",
)
#: MySQL's "duplicate key name": the index exists already (MySQL 8 has no IF NOT EXISTS).
DUPLICATE_INDEX = 1061


def create(db: Any) -> None:
    """Create the indexes that are missing (a connected, writable ``Database``)."""
    cursor = db.conn.cursor()
    for statement in STATEMENTS:
        try:
            cursor.execute(statement.format(**TYPES[db.kind]))
        except Exception as exc:
            if getattr(exc, "args", (None,))[0] != DUPLICATE_INDEX:
                raise
    db.conn.commit()
