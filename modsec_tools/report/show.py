"""``modsec-tools show UNIQUE_ID``: the event as stored, its rule messages in order, and the
entry exactly as archived, so that an auditor sees why an address was banned.

The stored row is read with ``SELECT *`` and shown column by column under the names the
database gives, so the command shows what is there whatever the schema version. The text
output escapes every control character of a stored value (it came from the request); the
archived entry is written as its bytes, except to a terminal, where control characters
other than tab and newline are shown as ``\\xNN`` (an escape sequence in a request must not
drive the auditor's terminal): redirect the output, or use ``--entry-only``, for the bytes.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ..db.rows import stored_unique_id
from .archive import Archived
from .cells import escaped
from .query import text as as_text

_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    fields: list[tuple[str, Any]]                # (column, value) in the table's order
    messages: list[list[tuple[str, Any]]]        # each message's (column, value)

    def get(self, name: str) -> Any:
        return dict(self.fields).get(name)


def stored_events(db: Any, unique_id: str, node: str | None = None) -> list[StoredEvent]:
    cursor = db.conn.cursor()
    mark = db.mark
    sql = f"SELECT * FROM events WHERE unique_id = {mark}"
    params: list[Any] = [stored_unique_id(unique_id)]
    if node is not None:
        sql += f" AND node = {mark}"
        params.append(node)
    cursor.execute(sql + " ORDER BY node", params)
    names = [d[0] for d in cursor.description]
    rows = [list(zip(names, row)) for row in cursor.fetchall()]
    found = []
    for row in rows:
        event_id = dict(row)["id"]
        cursor.execute("SELECT em.seq, m.* FROM event_messages em JOIN messages m ON "
                       f"m.id = em.message_id WHERE em.event_id = {mark} ORDER BY em.seq",
                       (event_id,))
        columns = [d[0] for d in cursor.description]
        found.append(StoredEvent(row, [list(zip(columns, m)) for m in cursor.fetchall()]))
    db.conn.commit()  # end the read snapshot
    return found


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return escaped(as_text(value))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render_text(events: list[StoredEvent], archived: list[Archived], terminal: bool) -> bytes:
    out: list[bytes] = []
    for event in events:
        out.append(f"event {event.get('id')} of node {_value(event.get('node'))} (database; "
                   "times UTC)\n".encode())
        width = max(len(name) for name, _ in event.fields)
        out += [f"  {name:<{width}}  {_value(value)}\n".encode() for name, value in event.fields]
        out.append(f"rule messages: {len(event.messages)}\n".encode())
        for message in event.messages:
            fields = dict(message)
            out.append(f"  [{fields.get('seq')}] {_value(fields.get('rule_id'))} "
                       f"{_value(fields.get('severity'))}: {_value(fields.get('msg'))}\n"
                       .encode())
            for name in ("data", "text"):
                if fields.get(name) is not None:
                    out.append(f"      {name}: {_value(fields.get(name))}\n".encode())
    for entry in archived:
        shown = _CONTROL.sub(lambda m: b"\\x%02x" % m.group()[0], entry.data) \
            if terminal else entry.data
        note = "; control characters shown as \\xNN" if terminal and shown != entry.data else ""
        out.append(f"archived entry: {escaped(entry.path)} at byte {entry.offset:,}, "
                   f"{len(entry.data):,} bytes, sha256 {_digest(entry.data)}{note}\n".encode())
        out.append(shown if shown.endswith(b"\n") else shown + b"\n")
    return b"".join(out)


def render_json(events: list[StoredEvent], archived: list[Archived]) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            return value.isoformat(sep=" ")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return as_text(value)
        return value
    document = {
        "events": [{"fields": {name: plain(value) for name, value in e.fields},
                    "messages": [{name: plain(value) for name, value in m}
                                 for m in e.messages]} for e in events],
        "archived": [{"path": a.path, "offset": a.offset, "length": len(a.data),
                      "sha256": _digest(a.data),
                      "entry_base64": base64.b64encode(a.data).decode()} for a in archived],
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"
