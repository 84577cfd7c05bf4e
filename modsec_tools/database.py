"""The event database: SQLite (stdlib, the default) or MySQL/MariaDB (pymysql).

Attacker-controlled values are stored as the bytes they were (BLOB/VARBINARY) with
parameterized queries only: nothing is "sanitized", so a payload round-trips byte-exact.
Inserts are idempotent on (node, unique_id), which is what lets ingest replay a batch
after a crash without duplicating rows.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .event import Event, printable, raw

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1


class DatabaseError(Exception):
    """The database cannot be reached or refused a statement (the message says which)."""


@dataclass(frozen=True, slots=True)
class Row:
    """What one event contributes: the events row and its matches rows."""

    unique_id: str
    event: tuple
    matches: list[tuple]


EVENT_COLUMNS = (
    "node", "unique_id", "created_at", "utc_offset_min", "client_ip", "peer_ip", "peer_port",
    "local_ip", "local_port", "method", "uri", "protocol", "host", "user_agent", "status",
    "response_status_line", "intercepted", "phase", "verdict", "anomaly_score", "sqli_score",
    "xss_score", "scores", "severity", "rule_ids", "primary_seq", "engine_mode", "producer",
    "server", "source", "incomplete")
MATCH_COLUMNS = ("event_id", "seq", "rule_id", "severity", "msg", "data", "text", "ver",
                 "maturity", "accuracy", "file", "line", "tags")


def _utc(stamp: dt.datetime | None) -> tuple[str | None, int | None]:
    if stamp is None:
        return None, None
    offset = stamp.utcoffset() or dt.timedelta()
    utc = (stamp - offset).replace(tzinfo=None)
    return utc.isoformat(sep=" ", timespec="microseconds"), int(offset.total_seconds() // 60)


def event_row(event: Event, node: str, verdict: str) -> Row:
    created, offset = _utc(event.timestamp)
    primary = next((i for i, m in enumerate(event.messages) if "id" in m.first),
                   0 if event.messages else None)
    # Text columns get text any database accepts, cut to the column's size: a hostile
    # entry must not become a row the database refuses forever (it would block the spool).
    unique_id = _fit(event.unique_id, 64)
    row = (node, unique_id, created, offset, _fit(event.client_ip, 45),
           _fit(event.peer_ip, 45), event.peer_port, _fit(event.local_ip, 45), event.local_port,
           raw(event.method), raw(event.uri), _fit(event.protocol, 255), raw(event.host),
           raw(event.user_agent), event.status, raw(event.response_status_line),
           int(event.intercepted), event.phase, verdict, event.anomaly_score,
           event.scores.get("SQLI"), event.scores.get("XSS"),
           _fit(json.dumps(event.scores), 255) if event.scores else None, event.severity,
           raw(",".join(event.rule_ids)), primary, _fit(event.engine_mode, 32),
           _fit(event.producer, 255), _fit(event.server, 255), raw(event.source),
           int(event.incomplete))
    matches = [_match_row(seq, m) for seq, m in enumerate(event.messages)]
    return Row(unique_id, row, matches)


def _match_row(seq: int, message) -> tuple:
    get = message.first.get
    tags = message.tags
    return (seq, _fit(get("id"), 32), _fit(get("severity"), 10), raw(get("msg")),
            raw(get("data")), raw(message.text), _fit(get("ver"), 255), _fit(get("maturity"), 8),
            _fit(get("accuracy"), 8), _fit(get("file"), 255), _fit(get("line"), 16),
            _json_list(tags) if tags else None)


def _fit(text: str | None, size: int) -> str | None:
    text = printable(text)
    return text if text is None or len(text) <= size else text[:size]


_PLAIN = re.compile(r'[ !#-\[\]-~]*')


def _json_list(items: list[str]) -> bytes:
    """JSON of a list of strings; tags are plain ASCII, which is built without json.dumps."""
    if _PLAIN.fullmatch("".join(items)):
        return ('["' + '","'.join(items) + '"]').encode()
    return json.dumps([printable(item) for item in items], ensure_ascii=False).encode()


# -- schema ------------------------------------------------------------------------------------
_TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER",
               "str": "TEXT", "blob": "BLOB", "time": "TEXT", "int": "INTEGER",
               "engine": "", "ifnot": "IF NOT EXISTS ", "view": "CREATE VIEW IF NOT EXISTS"},
    # MariaDB knows CREATE INDEX IF NOT EXISTS; MySQL 8 does not, so a duplicate index
    # (a migration re-run after a failure) is tolerated instead (error 1061).
    "mysql": {"id": "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY",
              "bigint": "BIGINT UNSIGNED", "str": "VARCHAR(255)", "blob": "MEDIUMBLOB",
              "time": "DATETIME(6)", "int": "INT", "engine": " ENGINE=InnoDB", "ifnot": "",
              "view": "CREATE OR REPLACE VIEW"},
}

_SCHEMA_V1 = [
    """CREATE TABLE IF NOT EXISTS schema_version (version {int} NOT NULL){engine}""",
    """CREATE TABLE IF NOT EXISTS events (
        id {id},
        node VARCHAR(64) NOT NULL,
        unique_id VARCHAR(64) NOT NULL,
        created_at {time},
        utc_offset_min {int},
        client_ip VARCHAR(45),
        peer_ip VARCHAR(45),
        peer_port {int},
        local_ip VARCHAR(45),
        local_port {int},
        method {blob},
        uri {blob},
        protocol {str},
        host {blob},
        user_agent {blob},
        status {int},
        response_status_line {blob},
        intercepted {int} NOT NULL,
        phase {int},
        verdict VARCHAR(10),
        anomaly_score {int},
        sqli_score {int},
        xss_score {int},
        scores {str},
        severity VARCHAR(10),
        rule_ids {blob},
        primary_seq {int},
        engine_mode VARCHAR(32),
        producer {str},
        server {str},
        source {blob},
        incomplete {int} NOT NULL,
        UNIQUE (node, unique_id)
    ){engine}""",
    "CREATE INDEX {ifnot}events_client_time ON events (client_ip, created_at)",
    "CREATE INDEX {ifnot}events_time ON events (created_at)",
    """CREATE TABLE IF NOT EXISTS matches (
        event_id {bigint} NOT NULL,
        seq {int} NOT NULL,
        rule_id VARCHAR(32),
        severity VARCHAR(10),
        msg {blob},
        data {blob},
        text {blob},
        ver {str},
        maturity VARCHAR(8),
        accuracy VARCHAR(8),
        file {str},
        line VARCHAR(16),
        tags {blob},
        PRIMARY KEY (event_id, seq)
    ){engine}""",
    "CREATE INDEX {ifnot}matches_rule ON matches (rule_id)",
    # The original tool's table, as a view, so existing queries keep working.
    """{view} logs AS SELECT
        e.method AS REQUEST_METHOD, e.uri AS REQUEST_URI, e.client_ip AS REMOTE_ADDR,
        m.rule_id AS ruleId, e.host AS Host, m.msg AS msg, m.data AS data,
        e.unique_id AS unique_id, m.severity AS severity, m.maturity AS maturity,
        m.accuracy AS accuracy, e.user_agent AS User_Agent,
        e.response_status_line AS responce_header, e.engine_mode AS Engine_Mode,
        e.anomaly_score AS Score, e.sqli_score AS SQLi, e.xss_score AS XSS,
        e.phase AS phase, e.created_at AS created_at
      FROM events e LEFT JOIN matches m ON m.event_id = e.id AND m.seq = e.primary_seq""",
]
MIGRATIONS: dict[int, list[str]] = {1: _SCHEMA_V1}


# -- connection URLs -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    kind: str                  # "sqlite", "mysql" or "none"
    path: str = ""             # sqlite
    params: tuple = ()         # mysql connect() keyword pairs

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite {self.path}"
        if self.kind == "mysql":
            shown = {k: v for k, v in self.params if k != "password"}
            return f"mysql {shown.get('user', '')}@{shown.get('host', shown.get('unix_socket', ''))}" \
                   f"/{shown.get('database', '')}"
        return "no database"


def redact(url: str) -> str:
    """The URL without its password (for anything printed or logged)."""
    parts = urllib.parse.urlsplit(url) if "://" in url else None
    if parts is None or not parts.password:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_target(url: str, option_file: str = "") -> Target:
    """``none``, a path, ``sqlite:///rel``, ``sqlite:////abs``, or
    ``mysql://user[:password]@host[:port]/db[?unix_socket=/path]``."""
    if url in ("", "none"):
        return Target("none")
    if "://" not in url:
        return Target("sqlite", url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"sqlite URL needs a path: {url!r}")
        return Target("sqlite", path)
    if parts.scheme in ("mysql", "mariadb", "mysql+pymysql"):
        params: dict[str, Any] = {"database": parts.path.lstrip("/") or None}
        if parts.hostname:
            params["host"] = parts.hostname
        if parts.port:
            params["port"] = parts.port
        if parts.username:
            params["user"] = urllib.parse.unquote(parts.username)
        if parts.password:
            params["password"] = urllib.parse.unquote(parts.password)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if "unix_socket" in query:
            params["unix_socket"] = query["unix_socket"]
        if option_file:
            params["read_default_file"] = option_file
        if not params["database"]:
            raise ValueError(f"mysql URL needs a database name: {url!r}")
        return Target("mysql", params=tuple(sorted(params.items())))
    raise ValueError(f"unknown database URL scheme {parts.scheme!r} (use sqlite:// or mysql://)")


# -- the database ---------------------------------------------------------------------------------
class Database:
    """One connection; ``insert`` is idempotent; errors surface as DatabaseError."""

    def __init__(self, target: Target, connect_timeout: float = 5.0) -> None:
        self.target = target
        self.kind = target.kind
        self.connect_timeout = connect_timeout
        self.conn: Any = None
        self.mark = "?" if self.kind == "sqlite" else "%s"
        self.schema_ready = False

    # connection ------------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            if self.kind == "sqlite":
                directory = os.path.dirname(os.path.abspath(self.target.path))
                os.makedirs(directory, mode=0o750, exist_ok=True)
                self.conn = sqlite3.connect(self.target.path, timeout=30,
                                            isolation_level=None, check_same_thread=False)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            else:
                import pymysql
                self.conn = pymysql.connect(**dict(self.target.params), autocommit=False,
                                            connect_timeout=self.connect_timeout,
                                            read_timeout=60, write_timeout=60,
                                            charset="utf8mb4")
        except Exception as exc:  # sqlite3.Error, pymysql.Error, OSError
            self.conn = None
            raise DatabaseError(f"{self.target.describe()}: {exc}") from None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def _cursor(self):
        if self.conn is None:
            self.connect()
        return self.conn.cursor()

    def _begin(self, cursor) -> None:
        if self.kind == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")

    def _run(self, work):
        """Run ``work(cursor)`` in one transaction; any failure rolls back and disconnects."""
        try:
            cursor = self._cursor()
            self._begin(cursor)
            result = work(cursor)
            self.conn.commit()
            return result
        except DatabaseError:
            self.close()
            raise
        except Exception as exc:
            try:
                if self.conn is not None:
                    self.conn.rollback()
            except Exception:
                pass
            self.close()
            raise DatabaseError(f"{self.target.describe()}: {exc}") from None

    # schema -------------------------------------------------------------------------------------
    def version(self) -> int:
        """The schema version; 0 for an empty database. DatabaseError when unreachable."""
        cursor = self._cursor()  # connects: raises DatabaseError
        try:
            cursor.execute("SELECT MAX(version) FROM schema_version")
            row = cursor.fetchone()
            return int(row[0] or 0) if row else 0
        except Exception:
            self._end_read()
            return 0  # no schema_version table yet

    def _end_read(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            self.close()

    def migrate(self) -> list[int]:
        """Apply missing schema versions; returns those applied. ``init`` is the same."""
        applied = []
        current = self.version()
        for number in sorted(MIGRATIONS):
            if number <= current:
                continue
            statements = [s.format(**_TYPES[self.kind]) for s in MIGRATIONS[number]]

            def apply(cursor, statements=statements, number=number) -> None:
                for statement in statements:
                    self._ddl(cursor, statement)
                cursor.execute(f"INSERT INTO schema_version (version) VALUES ({self.mark})",
                               (number,))
            self._run(apply)
            applied.append(number)
        return applied

    def _ddl(self, cursor, statement: str) -> None:
        try:
            cursor.execute(statement)
        except Exception as exc:
            duplicate_index = self.kind == "mysql" and getattr(exc, "args", (None,))[0] == 1061
            if not duplicate_index:
                raise

    def ensure_schema(self) -> None:
        current = self.version()
        if current > SCHEMA_VERSION:
            raise DatabaseError(f"database schema {current} is newer than this modsec-tools "
                                f"({SCHEMA_VERSION}); upgrade modsec-tools")
        if current < SCHEMA_VERSION:
            self.migrate()

    # data ---------------------------------------------------------------------------------------
    def insert(self, node: str, rows: Sequence[Row]) -> int:
        """Insert events not already stored for this node; returns how many were new."""
        if not rows:
            return 0
        if not self.schema_ready:
            self.ensure_schema()
            self.schema_ready = True
        return self._run(lambda cursor: self._insert(cursor, node, rows))

    def _ids(self, cursor, node: str, unique_ids: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        unique_ids = list(unique_ids)
        for start in range(0, len(unique_ids), 500):
            chunk = unique_ids[start:start + 500]
            marks = ",".join([self.mark] * len(chunk))
            cursor.execute(f"SELECT unique_id, id FROM events WHERE node = {self.mark} "
                           f"AND unique_id IN ({marks})", (node, *chunk))
            found.update((uid, int(i)) for uid, i in cursor.fetchall())
        return found

    def _insert(self, cursor, node: str, rows: Sequence[Row]) -> int:
        existing = self._ids(cursor, node, (r.unique_id for r in rows))
        seen: set[str] = set(existing)
        fresh = []
        for r in rows:
            if r.unique_id not in seen:
                seen.add(r.unique_id)
                fresh.append(r)
        if not fresh:
            return 0
        marks = ",".join([self.mark] * len(EVENT_COLUMNS))
        cursor.executemany(f"INSERT INTO events ({','.join(EVENT_COLUMNS)}) VALUES ({marks})",
                           [r.event for r in fresh])
        ids = self._ids(cursor, node, (r.unique_id for r in fresh))
        match_rows = [(ids[r.unique_id], *m) for r in fresh for m in r.matches]
        if match_rows:
            marks = ",".join([self.mark] * len(MATCH_COLUMNS))
            cursor.executemany(
                f"INSERT INTO matches ({','.join(MATCH_COLUMNS)}) VALUES ({marks})", match_rows)
        return len(fresh)

    def count(self, table: str = "events") -> int:
        if table not in ("events", "matches", "logs"):
            raise ValueError(table)
        cursor = self._cursor()
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        result = int(cursor.fetchone()[0])
        if self.kind != "sqlite":
            self.conn.commit()  # end the read snapshot
        return result

    def ping(self) -> None:
        self._run(lambda cursor: cursor.execute("SELECT 1"))
