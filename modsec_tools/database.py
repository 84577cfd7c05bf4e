"""The event database: SQLite (stdlib, the default) or MySQL/MariaDB (pymysql).

Attacker-controlled values are stored as the bytes they were (BLOB/VARBINARY): nothing is
"sanitized", so a payload round-trips byte-exact. SQLite gets parameterized queries; MySQL
gets multi-row INSERTs whose values are literals made by ``sql_literal`` (bytes as hex,
text escaped as mysql_real_escape_string does for utf8mb4), written in the worker
processes that build the rows, so the committing process only joins and sends them.
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

from .event import Event, Message, printable, raw

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2


class DatabaseError(Exception):
    """The database cannot be reached or refused a statement (the message says which)."""


@dataclass(frozen=True, slots=True)
class Row:
    """What one event contributes: the events row and its matches rows, and (for MySQL,
    made beforehand by ``with_mysql_text``) the same values as SQL literals."""

    unique_id: str
    event: tuple
    matches: list[tuple]
    mysql: MysqlText | None = None


@dataclass(frozen=True, slots=True)
class MysqlText:
    """``event``: "(v1,...)" for VALUES; ``matches``: ",seq,...)" each, to follow
    "(" + the event's id, which only the database knows."""

    event: str
    matches: tuple[str, ...]


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


def event_row(event: Event, node: str, verdict: str, dialect: str = "") -> Row:
    """``dialect`` "mysql": the row carries its SQL literals too (see ``with_mysql_text``)."""
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
    matches = [(seq, *_match_values(m)) for seq, m in enumerate(event.messages)]
    if dialect != "mysql":
        return Row(unique_id, row, matches)
    return Row(unique_id, row, matches, MysqlText(
        _event_literal(row),
        tuple(f",{seq},{_match_literals(m)})" for seq, m in enumerate(event.messages))))


def _match_values(message: Message) -> tuple:
    """A matches row after its event_id and seq (made once per shared Message)."""
    values = message.renderings.get("row")
    if values is None:
        get = message.first.get
        tags = message.tags
        values = message.renderings["row"] = (
            _fit(get("id"), 32), _fit(get("severity"), 10), raw(get("msg")), raw(get("data")),
            raw(message.text), _fit(get("ver"), 255), _fit(get("maturity"), 8),
            _fit(get("accuracy"), 8), _fit(get("file"), 255), _fit(get("line"), 16),
            _json_list(tags) if tags else None)
    return values  # type: ignore[return-value]


def _match_literals(message: Message) -> str:
    text = message.renderings.get("mysql")
    if text is None:
        text = message.renderings["mysql"] = values_text(_match_values(message))
    return text  # type: ignore[return-value]


def _fit(text: str | None, size: int) -> str | None:
    text = printable(text)
    return text if text is None or len(text) <= size else text[:size]


_PLAIN = re.compile(r'[ !#-\[\]-~]*')


def _json_list(items: list[str]) -> bytes:
    """JSON of a list of strings; tags are plain ASCII, which is built without json.dumps."""
    if _PLAIN.fullmatch("".join(items)):
        return ('["' + '","'.join(items) + '"]').encode()
    return json.dumps([printable(item) for item in items], ensure_ascii=False).encode()


# -- MySQL literals -------------------------------------------------------------------------------
# The escaping of mysql_real_escape_string, valid because Database.connect() makes the
# session's character set utf8mb4 and its sql_mode free of NO_BACKSLASH_ESCAPES (and each
# statement checks the latter is still so). In UTF-8 no multi-byte character contains a
# byte below 0x80, so escaping characters is escaping the bytes the server reads.
_NEEDS_ESCAPE = re.compile(r'[\x00\n\r\x1a\\\'"]')


def _escaped(text: str) -> str:
    # chained str.replace is ~10x faster than str.translate with a dict; backslash first
    return (text.replace("\\", "\\\\").replace("\0", "\\0").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\x1a", "\\Z").replace("'", "\\'")
            .replace('"', '\\"'))


def sql_literal(value: str | bytes | int | None) -> str:
    """A MySQL literal for a row value: bytes as a hex literal (any byte, no escaping
    involved), text quoted and escaped, integers in decimal, None as NULL."""
    return values_text((value,))


def _number_literal(value) -> str:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is bool:
        return "1" if value else "0"
    raise TypeError(f"no MySQL literal for a {kind.__name__} value")


def values_text(values: Iterable) -> str:
    """``",".join(sql_literal(v) for v in values)``, the common types inline rather than a
    call each: ~80 values an entry, where a call each was a fifth of the time."""
    out: list[str] = []
    add = out.append
    search = _NEEDS_ESCAPE.search
    for value in values:
        kind = type(value)
        if kind is bytes:
            add("X'" + value.hex() + "'")
        elif kind is str:
            add("'" + (value if search(value) is None else _escaped(value)) + "'")
        elif value is None:
            add("NULL")
        else:
            add(_number_literal(value))
    return ",".join(out)


def with_mysql_text(row: Row) -> Row:
    """The row with its MySQL literals (what a worker process does for the committer)."""
    if row.mysql is not None:
        return row
    matches = tuple("," + values_text(m) + ")" for m in row.matches)
    return Row(row.unique_id, row.event, row.matches, MysqlText(_event_literal(row.event),
                                                                matches))


def _event_literal(values: tuple) -> str:
    """An events row as a MySQL ``(...)`` tuple literal; a match's is ``,seq,...)``, to follow
    its event id (known only once the event is inserted)."""
    return "(" + values_text(values) + ")"


# -- schema ------------------------------------------------------------------------------------
_TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER",
               "str": "TEXT", "blob": "BLOB", "time": "TEXT", "int": "INTEGER",
               "engine": "", "ifnot": "IF NOT EXISTS ", "view": "CREATE VIEW IF NOT EXISTS",
               "uid_binary": ""},  # TEXT compares byte by byte already
    # MariaDB knows CREATE INDEX IF NOT EXISTS; MySQL 8 does not, so a duplicate index
    # (a migration re-run after a failure) is tolerated instead (error 1061).
    "mysql": {"id": "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY",
              "bigint": "BIGINT UNSIGNED", "str": "VARCHAR(255)", "blob": "MEDIUMBLOB",
              "time": "DATETIME(6)", "int": "INT", "engine": " ENGINE=InnoDB", "ifnot": "",
              "view": "CREATE OR REPLACE VIEW",
              "uid_binary": "ALTER TABLE events MODIFY unique_id VARCHAR(64) CHARACTER SET "
                            "utf8mb4 COLLATE utf8mb4_bin NOT NULL"},
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
# v2: mod_unique_id's ids are case-sensitive (base64), but MySQL's default collation is
# not: an id differing from a stored one only in case was refused as a duplicate.
_SCHEMA_V2 = ["{uid_binary}"]
MIGRATIONS: dict[int, list[str]] = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


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


#: Characters per multi-row INSERT for MySQL (pymysql's executemany uses the same bound).
MYSQL_STATEMENT = 1024000


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
                self._literal_session()
        except DatabaseError:
            self.close()
            raise
        except Exception as exc:  # sqlite3.Error, pymysql.Error, OSError
            self.close()
            raise DatabaseError(f"{self.target.describe()}: {exc}") from None

    def _literal_session(self) -> None:
        """What sql_literal's escaping relies on: utf8mb4 whatever the server's
        (skip-character-set-client-handshake ignores the handshake's), and backslash
        escapes (NO_BACKSLASH_ESCAPES removed from this session's sql_mode if set)."""
        with self.conn.cursor() as cursor:
            cursor.execute("SET NAMES utf8mb4, SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE("
                           "CONCAT(',', @@SESSION.sql_mode, ','), ',NO_BACKSLASH_ESCAPES,', ','))")
        self._check_backslash_escapes()

    def _check_backslash_escapes(self) -> None:
        """pymysql keeps the server's status flags of its last reply: should this session's
        sql_mode have gained NO_BACKSLASH_ESCAPES since connect(), the server would read our
        backslashes literally (a quote would end the string), so nothing is sent then."""
        from pymysql.constants import SERVER_STATUS
        if self.conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
            raise DatabaseError(f"{self.target.describe()}: NO_BACKSLASH_ESCAPES is set in "
                                "the session's sql_mode and could not be turned off")

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
            statements = [text for text in (s.format(**_TYPES[self.kind])
                                            for s in MIGRATIONS[number]) if text]

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
        if self.kind == "mysql":
            self._insert_mysql(cursor, node, fresh)
            return len(fresh)
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

    def _insert_mysql(self, cursor, node: str, fresh: list[Row]) -> None:
        """Multi-row INSERTs of literals the workers made (rows replayed from the spool or
        recovered after a crash get theirs here): no per-value work in this process."""
        texts = [(r.mysql or with_mysql_text(r).mysql) for r in fresh]
        self._insert_values(cursor, "events", EVENT_COLUMNS, [t.event for t in texts])
        ids = self._ids(cursor, node, (r.unique_id for r in fresh))
        self._insert_values(cursor, "matches", MATCH_COLUMNS, [
            "(" + str(ids[r.unique_id]) + m for r, t in zip(fresh, texts) for m in t.matches])

    def _insert_values(self, cursor, table: str, columns: Sequence[str],
                       values: list[str]) -> None:
        """INSERT statements of at most ~MYSQL_STATEMENT characters (a row longer than that
        goes alone), far below any server's max_allowed_packet default."""
        head = f"INSERT INTO {table} ({','.join(columns)}) VALUES "
        start, size = 0, 0
        for end, text in enumerate(values):
            if size and size + len(text) > MYSQL_STATEMENT:
                self._send(cursor, head + ",".join(values[start:end]))
                start, size = end, 0
            size += len(text) + 1
        if start < len(values):
            self._send(cursor, head + ",".join(values[start:]))

    def _send(self, cursor, statement: str) -> None:
        self._check_backslash_escapes()
        cursor.execute(statement)

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
