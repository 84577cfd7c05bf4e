"""An event as database rows: what the examining workers make, and every dialect stores.

Attacker-controlled values are kept as the bytes they were (BLOB columns): nothing is
"sanitized", so a payload round-trips byte-exact. Text columns get text any database
accepts, cut to the column's size.

A flood repeats a few rule messages thousands of times, so each distinct message is stored
once, in ``messages``, under an id derived from its content (``message_id``): the workers
know it without asking the database, and every node of a fleet derives the same one.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..audit.derive import decisive_message
from ..audit.event import Event, Message, printable, raw


@dataclass(frozen=True, slots=True)
class Row:
    """What one event contributes: the events row (values of EVENT_COLUMNS) and, per rule
    message, ``(seq, message_id, *values of MESSAGE_COLUMNS after id)``."""

    unique_id: str
    event: tuple
    matches: list[tuple]


EVENT_COLUMNS = (
    "node", "unique_id", "created_at", "utc_offset_min", "client_ip", "peer_ip", "peer_port",
    "local_ip", "local_port", "method", "uri", "protocol", "host", "user_agent", "status",
    "response_status_line", "intercepted", "phase", "verdict", "anomaly_score", "sqli_score",
    "xss_score", "scores", "severity", "rule_ids", "primary_seq", "engine_mode", "producer",
    "server", "source", "incomplete")
MESSAGE_COLUMNS = ("id", "rule_id", "severity", "msg", "data", "text", "ver", "maturity",
                   "accuracy", "file", "line", "tags")
LINK_COLUMNS = ("event_id", "seq", "message_id")
#: The columns of the ``matches`` view (schema 2's table): event_id, seq, then the message's.
MATCH_COLUMNS = ("event_id", "seq", *MESSAGE_COLUMNS[1:])


def _utc(stamp: dt.datetime | None) -> tuple[str | None, int | None]:
    if stamp is None:
        return None, None
    offset = stamp.utcoffset() or dt.timedelta()
    utc = (stamp - offset).replace(tzinfo=None)
    return utc.isoformat(sep=" ", timespec="microseconds"), int(offset.total_seconds() // 60)


def event_row(event: Event, node: str, verdict: str) -> Row:
    created, offset = _utc(event.timestamp)
    primary = decisive_message(event)      # the message the logs view shows
    # Text columns get text any database accepts, cut to the column's size: a hostile
    # entry must not become a row the database refuses forever (it would block the spool).
    unique_id = stored_unique_id(event.unique_id)
    row = (node, unique_id, created, offset, _fit(event.client_ip, 45),
           _fit(event.peer_ip, 45), event.peer_port, _fit(event.local_ip, 45), event.local_port,
           raw(event.method), raw(event.uri), _fit(event.protocol, 255), raw(event.host),
           raw(event.user_agent), event.status, raw(event.response_status_line),
           int(event.intercepted), event.phase, verdict, event.anomaly_score,
           event.scores.get("SQLI"), event.scores.get("XSS"),
           _fit(scores_json(event.scores), 255) if event.scores else None, event.severity,
           raw(",".join(event.rule_ids)), primary, _fit(event.engine_mode, 32),
           _fit(event.producer, 255), _fit(event.server, 255), raw(event.source),
           int(event.incomplete))
    return Row(unique_id, row, [(seq, *_message_row(m)) for seq, m in enumerate(event.messages)])


#: Characters of ``events.unique_id``.
UNIQUE_ID_CHARS = 64
#: Hex digits of the digest that stands for the rest of an id the column cannot hold.
_ID_DIGEST = 16


def stored_unique_id(unique_id: str) -> str:
    """The key an entry's id is stored under: the id itself when it is text that fits the
    column (mod_unique_id's always is); else its start, '~' and 16 hex digits of the
    digest of the whole id, so that two entries are never taken for one (and the second
    skipped as stored) because the column cut them or their differing bytes were no text."""
    fitted = printable(unique_id)
    if fitted == unique_id and len(unique_id) <= UNIQUE_ID_CHARS:
        return unique_id
    digest = hashlib.blake2b(raw(unique_id), digest_size=_ID_DIGEST // 2).hexdigest()
    return f"{fitted[:UNIQUE_ID_CHARS - _ID_DIGEST - 1]}~{digest}"


def _message_row(message: Message) -> tuple:
    """A messages row, id first (made once per shared Message)."""
    values = message.renderings.get("row")
    if values is None:
        get = message.first.get
        tags = message.tags
        values = (
            _fit(get("id"), 32), _fit(get("severity"), 10), raw(get("msg")), raw(get("data")),
            raw(message.text), _fit(get("ver"), 255), _fit(get("maturity"), 8),
            _fit(get("accuracy"), 8), _fit(get("file"), 255), _fit(get("line"), 16),
            _json_list(tags) if tags else None)
        values = message.renderings["row"] = (message_id(values), *values)
    return values  # type: ignore[return-value]


def message_id(values: tuple) -> int:
    """The id of a messages row with these values (MESSAGE_COLUMNS after id): 63 bits of
    their BLAKE2b digest, so equal messages share a row whoever inserts them. (Values are
    str, bytes or None, whose repr is unambiguous. At 10^7 distinct messages the chance
    that any two share an id is about 10^-5.)"""
    digest = hashlib.blake2b(repr(values).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


def upgraded_match(match: Sequence) -> tuple:
    """A match as ``Row.matches`` holds it, from one that may predate schema 3 (a spool
    record or a schema-2 row: seq and the values, no message id)."""
    if len(match) == len(MESSAGE_COLUMNS):
        return (match[0], message_id(tuple(match[1:])), *match[1:])
    return tuple(match)


def first_of_each(rows: Sequence[Row]) -> list[Row]:
    """The rows in order, each unique id once (its first row)."""
    seen: set[str] = set()
    first = []
    for row in rows:
        if row.unique_id not in seen:
            seen.add(row.unique_id)
            first.append(row)
    return first


def scores_json(scores: dict[str, int]) -> str:
    """json.dumps of the per-category scores, at a fifth of its cost: the names are
    ``[A-Z_]+`` (messages._categories) and the values ints, so nothing needs escaping."""
    return "{" + ", ".join([f'"{name}": {value}' for name, value in scores.items()]) + "}"


def _fit(text: str | None, size: int) -> str | None:
    text = printable(text)
    return text if text is None or len(text) <= size else text[:size]


_PLAIN = re.compile(r'[ !#-\[\]-~]*')


def _json_list(items: list[str]) -> bytes:
    """JSON of a list of strings; tags are plain ASCII, which is built without json.dumps."""
    if _PLAIN.fullmatch("".join(items)):
        return ('["' + '","'.join(items) + '"]').encode()
    return json.dumps([printable(item) for item in items], ensure_ascii=False).encode()
