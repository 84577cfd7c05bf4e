"""Rollups: the report's whole-range figures kept counted as events are stored.

A report over every event would otherwise read millions of rows (each section a pass
over ``events``, the rules a pass over every match). The counts it needs are additive, so
each insert adds its new events' share to a few small tables, in the transaction that
stores the events (a batch replayed after a crash stores no event twice, so it counts
none twice either):

* ``rollup_hours``   (hour, node, verdict, status): events, first and last time;
* ``rollup_clients`` (client, day): events, blocked, detected, first and last time;
* ``rollup_targets`` (target, day): host and path (the request target up to '?'),
  events, blocked; ``target`` is a 63-bit digest of (host, path), as message ids are;
* ``rollup_rules`` (rule id, text, day): the rule's msg and severity, matches; ``text``
  is a digest of (msg, severity): the report shows each rule's most frequent one;
* ``rollup_rule_clients`` (rule id, client): matches; the distinct addresses of a rule,
  and the distinct rules of an address, over all time.

Hours and days are counted from 1970-01-01 UTC; an event without a time is in hour and
day -1. A missing client address is '', a missing status -1, a missing verdict '' (key
columns cannot be NULL). Every update is an upsert that adds (MySQL: INSERT ... ON
DUPLICATE KEY UPDATE n = n + VALUES(n)): the writers of a fleet commute, and their rows
are sorted so that two of them take the rows' locks in the same order.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Database

log = logging.getLogger(__name__)
EPOCH = dt.date(1970, 1, 1).toordinal()
NO_TIME = -1
#: The schema version that has them.
SCHEMA = 4

TABLES = ("rollup_hours", "rollup_clients", "rollup_targets", "rollup_rules",
          "rollup_rule_clients")

#: Schema 4's statements (formatted with schema.TYPES).
DDL = [
    """CREATE TABLE IF NOT EXISTS rollup_hours (
        hour {int} NOT NULL,
        node VARCHAR(64) NOT NULL,
        verdict VARCHAR(10) NOT NULL,
        status {int} NOT NULL,
        n {bigint} NOT NULL,
        first_at {time},
        last_at {time},
        PRIMARY KEY (hour, node, verdict, status)
    ){engine}{without_rowid}""",
    """CREATE TABLE IF NOT EXISTS rollup_clients (
        client_ip VARCHAR(45) NOT NULL,
        day {int} NOT NULL,
        n {bigint} NOT NULL,
        blocked {bigint} NOT NULL,
        detected {bigint} NOT NULL,
        first_at {time},
        last_at {time},
        PRIMARY KEY (client_ip, day)
    ){engine}{without_rowid}""",
    """CREATE TABLE IF NOT EXISTS rollup_targets (
        target {bigint} NOT NULL,
        day {int} NOT NULL,
        host {blob},
        path {blob},
        n {bigint} NOT NULL,
        blocked {bigint} NOT NULL,
        PRIMARY KEY (target, day)
    ){engine}{without_rowid}""",
    """CREATE TABLE IF NOT EXISTS rollup_rules (
        rule_id VARCHAR(32) NOT NULL,
        text {bigint} NOT NULL,
        day {int} NOT NULL,
        msg {blob},
        severity VARCHAR(10),
        n {bigint} NOT NULL,
        PRIMARY KEY (rule_id, text, day)
    ){engine}{without_rowid}""",
    """CREATE TABLE IF NOT EXISTS rollup_rule_clients (
        rule_id VARCHAR(32) NOT NULL,
        client_ip VARCHAR(45) NOT NULL,
        n {bigint} NOT NULL,
        PRIMARY KEY (rule_id, client_ip)
    ){engine}{without_rowid}""",
    "CREATE INDEX {ifnot}rollup_rule_clients_client ON rollup_rule_clients (client_ip)",
]


@dataclass(frozen=True, slots=True)
class Upsert:
    """One table's upsert: its key columns, the columns added, kept least and greatest."""

    table: str
    key: tuple[str, ...]
    add: tuple[str, ...]
    least: tuple[str, ...] = ()
    greatest: tuple[str, ...] = ()
    same: tuple[str, ...] = ()   # written by the first row, never changed

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.key, *self.same, *self.add, *self.least, *self.greatest)

    def sql(self, kind: str) -> str:
        mark = "?" if kind == "sqlite" else "%s"
        head = (f"INSERT INTO {self.table} ({','.join(self.columns)}) VALUES "
                f"({','.join([mark] * len(self.columns))})")
        if kind == "sqlite":
            sets = ([f"{c} = {c} + excluded.{c}" for c in self.add]
                    + [f"{c} = min({c}, excluded.{c})" for c in self.least]
                    + [f"{c} = max({c}, excluded.{c})" for c in self.greatest])
            return f"{head} ON CONFLICT ({','.join(self.key)}) DO UPDATE SET {', '.join(sets)}"
        sets = ([f"{c} = {c} + VALUES({c})" for c in self.add]
                + [f"{c} = LEAST({c}, VALUES({c}))" for c in self.least]
                + [f"{c} = GREATEST({c}, VALUES({c}))" for c in self.greatest])
        return f"{head} ON DUPLICATE KEY UPDATE {', '.join(sets)}"


UPSERTS = (
    Upsert("rollup_hours", ("hour", "node", "verdict", "status"), ("n",), ("first_at",),
           ("last_at",)),
    Upsert("rollup_clients", ("client_ip", "day"), ("n", "blocked", "detected"),
           ("first_at",), ("last_at",)),
    Upsert("rollup_targets", ("target", "day"), ("n", "blocked"), same=("host", "path")),
    Upsert("rollup_rules", ("rule_id", "text", "day"), ("n",), same=("msg", "severity")),
    Upsert("rollup_rule_clients", ("rule_id", "client_ip"), ("n",)),
)


@lru_cache(maxsize=4096)
def _hour_of_text(prefix: str) -> int:
    """``YYYY-MM-DD HH`` (an ISO time's first 13 characters) as hours since the epoch."""
    return (dt.date.fromisoformat(prefix[:10]).toordinal() - EPOCH) * 24 + int(prefix[11:13])


def hour_of(stamp: Any) -> int:
    """The hour of a stored ``created_at`` (ISO text on SQLite, a datetime on MySQL)."""
    if stamp is None:
        return NO_TIME
    if isinstance(stamp, dt.datetime):
        return (stamp.toordinal() - EPOCH) * 24 + stamp.hour
    return _hour_of_text(str(stamp)[:13])


def day_of_hour(hour: int) -> int:
    return NO_TIME if hour == NO_TIME else hour // 24


def hour_start(hour: int) -> dt.datetime:
    return dt.datetime.fromordinal(EPOCH + hour // 24) + dt.timedelta(hours=hour % 24)


def day_number(stamp: dt.datetime) -> int | None:
    """The day of a midnight, None for any other time (no day table answers it)."""
    if stamp.time() != dt.time(0):
        return None
    return stamp.toordinal() - EPOCH


@lru_cache(maxsize=65536)
def target_id(host: bytes, path: bytes) -> int:
    return _digest((host, path))


@lru_cache(maxsize=65536)
def text_id(msg: Any, severity: str | None) -> int:
    return _digest((None if msg is None else bytes(msg), severity))


def _digest(values: tuple) -> int:
    """63 bits of the BLAKE2b digest of some values (bytes, str or None: their repr is
    unambiguous), as message ids are made."""
    digest = hashlib.blake2b(repr(values).encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") >> 1


def request_path(uri: Any) -> bytes:
    """The request target up to its '?' (the report's path)."""
    uri = bytes(uri or b"")
    cut = uri.find(b"?")
    return uri if cut < 0 else uri[:cut]


@dataclass(slots=True)
class Tally:
    """What some events add to each rollup table (key → [values])."""

    rows: dict[str, dict[tuple, list]] = field(
        default_factory=lambda: {u.table: {} for u in UPSERTS})

    def add_event(self, created_at: Any, node: str, verdict: str | None, status: int | None,
                  client: str | None, host: Any, uri: Any,
                  matches: Iterable[tuple[str | None, str | None, Any]]) -> None:
        """One event; ``matches``: (rule id or None, severity, msg) of each of its rule
        messages."""
        hour = hour_of(created_at)
        day = day_of_hour(hour)
        verdict = verdict or ""
        client = client or ""
        blocked = int(verdict == "blocked")
        detected = int(verdict == "detected")
        hours, clients = self.rows["rollup_hours"], self.rows["rollup_clients"]
        key = (hour, node, verdict, -1 if status is None else int(status))
        held = hours.get(key)
        if held is None:
            hours[key] = [1, created_at, created_at]
        else:
            held[0] += 1
            held[1], held[2] = _least(held[1], created_at), _greatest(held[2], created_at)
        held = clients.get((client, day))
        if held is None:
            clients[(client, day)] = [1, blocked, detected, created_at, created_at]
        else:
            held[0] += 1
            held[1] += blocked
            held[2] += detected
            held[3], held[4] = _least(held[3], created_at), _greatest(held[4], created_at)
        host = bytes(host or b"")
        path = request_path(uri)
        key = (target_id(host, path), day)
        held = self.rows["rollup_targets"].get(key)
        if held is None:
            self.rows["rollup_targets"][key] = [host, path, 1, blocked]
        else:
            held[2] += 1
            held[3] += blocked
        per_text, pairs = self.rows["rollup_rules"], self.rows["rollup_rule_clients"]
        for rule, severity, msg in matches:
            if rule is None:
                continue
            key = (rule, text_id(msg, severity), day)
            held = per_text.get(key)
            if held is None:
                per_text[key] = [msg, severity, 1]
            else:
                held[2] += 1
            held = pairs.setdefault((rule, client), [0])
            held[0] += 1

    def statements(self) -> Iterator[tuple[Upsert, list[tuple]]]:
        """Each table's rows, in key order."""
        for upsert in UPSERTS:
            found = self.rows[upsert.table]
            if found:
                # (no key holds None: sorting compares keys only, each one once)
                yield upsert, [(*key, *values) for key, values in sorted(found.items())]

    def write(self, kind: str, cursor: Any) -> None:
        for upsert, rows in self.statements():
            cursor.executemany(upsert.sql(kind), rows)


def _least(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b < a) else a


def _greatest(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b > a) else a


# -- from the rows being inserted ---------------------------------------------------------
def tally_rows(rows: Iterable[Any]) -> Tally:
    """The rollups' share of these ``rows.Row`` (events about to be stored)."""
    tally = Tally()
    for row in rows:
        e = row.event
        tally.add_event(e[2], e[0], e[18], e[14], e[4], e[12], e[10],
                        ((m[2], m[3], m[4]) for m in row.matches))
    return tally


# -- from what is stored: schema 4's migration, and a recount ----------------------------------
CHUNK = 20_000


def recount(db: Database, cursor: Any, why: str = "schema 4") -> None:
    """Every rollup counted again from ``events`` and the matches, in the caller's
    transaction (schema 4's migration: the one that records the version). The tables are
    emptied first, before anything is read: on MySQL that locks them, so that a node
    storing events meanwhile adds its share after this commit, to a count its events were
    not in (the read's snapshot starts after the DELETE)."""
    for table in TABLES:
        cursor.execute(f"DELETE FROM {table}")
    cursor.execute("SELECT COUNT(*) FROM events")
    total = int(cursor.fetchone()[0])
    if total:
        log.warning("%s: counting the report's rollups over %d stored events", why, total)
    cursor.execute("SELECT id, rule_id, severity, msg FROM messages")
    texts = {int(i): (r, s, None if m is None else bytes(m)) for i, r, s, m in cursor.fetchall()}
    mark = db.mark
    after = 0
    while True:
        cursor.execute("SELECT id, created_at, node, verdict, status, client_ip, host, uri "
                       f"FROM events WHERE id > {mark} ORDER BY id LIMIT {CHUNK}", (after,))
        events = cursor.fetchall()
        if not events:
            break
        last = int(events[-1][0])
        cursor.execute("SELECT event_id, message_id FROM event_messages WHERE event_id > "
                       f"{mark} AND event_id <= {mark}", (after, last))
        links: dict[int, list] = defaultdict(list)
        for event_id, message in cursor.fetchall():
            links[int(event_id)].append(texts.get(int(message), (None, None, None)))
        tally = Tally()
        for event_id, created, node, verdict, status, client, host, uri in events:
            tally.add_event(created, node, verdict, status, client, host, uri,
                            links.get(int(event_id), ()))
        tally.write(db.kind, cursor)
        after = last


def stale(cursor: Any) -> bool:
    """Whether the rollups no longer count ``events`` (rows stored by an older version
    beside this one, or deleted by hand): then they must not be read. (One statement:
    one snapshot, on SQLite too.)"""
    cursor.execute("SELECT (SELECT COUNT(*) FROM events), (SELECT SUM(n) FROM rollup_hours)")
    stored, counted = cursor.fetchone()
    return int(stored) != int(counted or 0)
