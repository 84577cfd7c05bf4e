"""The event database: SQLite (stdlib, the default) or MySQL/MariaDB (pymysql).

Attacker-controlled values are stored as the bytes they were (BLOB/VARBINARY): nothing is
"sanitized", so a payload round-trips byte-exact. SQLite gets parameterized queries; MySQL
gets multi-row INSERTs whose values are literals made by ``sql_literal`` (bytes as hex,
text escaped as mysql_real_escape_string does for utf8mb4), written in the worker
processes that build the rows, so the committing process only joins and sends them.
Inserts are idempotent on (node, unique_id), which is what lets ingest replay a batch
after a crash without duplicating rows.

A flood repeats a few rule messages thousands of times, so each distinct message is stored
once, in ``messages``, under an id derived from its content (``message_id``): the workers
know it without asking the database, and every node of a fleet derives the same one.
``event_messages`` links an event's messages in order; the ``matches`` view joins them back
into the one-row-per-message shape of schema 2.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .event import Event, Message, printable, raw
from .owned import OwnedDir, UnsafePath
from .speedups import C

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3


class DatabaseError(Exception):
    """The database cannot be reached or refused a statement (the message says which)."""


class SchemaError(DatabaseError):
    """The database answers but its schema cannot be used now (newer than this version,
    another node migrating it, a migration that failed): no row can be stored, whichever."""


class UnusableError(DatabaseError):
    """No row can be stored until the administrator acts, and waiting will not change it:
    a SQLite file that is not a database or is corrupt, or that cannot be opened; a MySQL
    account refused or a database that does not exist."""


#: SQLite result codes (sqlite3.Error.sqlite_errorname) that only the administrator can end.
UNUSABLE_SQLITE = frozenset(("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CANTOPEN",
                             "SQLITE_READONLY", "SQLITE_PERM"))
#: MySQL errors of the same kind: access denied (user, database), unknown database.
UNUSABLE_MYSQL = frozenset((1044, 1045, 1049))


def _unusable(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None) or ""
        return any(name == code or name.startswith(code + "_") for code in UNUSABLE_SQLITE)
    return type(exc).__module__.startswith("pymysql") and bool(exc.args) \
        and exc.args[0] in UNUSABLE_MYSQL


@dataclass(frozen=True, slots=True)
class Row:
    """What one event contributes: the events row and, per rule message, ``(seq,
    message_id, *values of MESSAGE_COLUMNS after id)``; and (for MySQL, made beforehand by
    ``with_mysql_text``) the same values as SQL literals.

    A row with literals may come without its values (``event`` None, ``matches`` as
    ``(seq, message_id)``): the insert needs only the literals, and a worker process need
    not send the values too; ``full_row`` makes them again from the literals."""

    unique_id: str
    event: tuple | None
    matches: list[tuple]
    mysql: MysqlText | None = None


@dataclass(frozen=True, slots=True)
class MysqlText:
    """``event``: "(v1,...)" for VALUES; ``messages``: each match's messages row as
    "(id,...)", in the order of ``Row.matches``."""

    event: str
    messages: tuple[str, ...]


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
           _fit(scores_json(event.scores), 255) if event.scores else None, event.severity,
           raw(",".join(event.rule_ids)), primary, _fit(event.engine_mode, 32),
           _fit(event.producer, 255), _fit(event.server, 255), raw(event.source),
           int(event.incomplete))
    matches = [(seq, *_message_row(m)) for seq, m in enumerate(event.messages)]
    if dialect != "mysql":
        return Row(unique_id, row, matches)
    return Row(unique_id, row, matches, MysqlText(
        _tuple_literal(row), tuple(_message_literal(m) for m in event.messages)))


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


def _message_literal(message: Message) -> str:
    text = message.renderings.get("mysql")
    if text is None:
        text = message.renderings["mysql"] = _tuple_literal(_message_row(message))
    return text  # type: ignore[return-value]


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
    kind = type(value)
    if kind is bytes:
        return "X'" + value.hex() + "'"  # type: ignore[union-attr]
    if kind is str:
        return "'" + _escaped(value) + "'"  # type: ignore[arg-type]
    if value is None:
        return "NULL"
    if kind is bool:
        return "1" if value else "0"
    if kind is int:
        return str(value)
    raise TypeError(f"no MySQL literal for a {kind.__name__} value")


def values_text_py(values: Iterable) -> str:
    """``",".join(sql_literal(v) for v in values)``, the types inline rather than a call
    each: ~80 values an entry, where a call each was a fifth of the time. (The C twin,
    used when the extension is built, takes a tenth of this one's.)"""
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
        elif kind is int:
            add(str(value))
        else:
            add(sql_literal(value))
    return ",".join(out)


values_text = C.values_text if C else values_text_py


def with_mysql_text(row: Row) -> Row:
    """The row with its MySQL literals (what a worker process does for the committer)."""
    if row.mysql is not None:
        return row
    messages = tuple(_tuple_literal(m[1:]) for m in row.matches)
    return Row(row.unique_id, row.event, row.matches, MysqlText(_tuple_literal(row.event),
                                                                messages))


def _first_of_each(rows: Sequence[Row]) -> list[Row]:
    """The rows in order, each unique id once (its first row)."""
    seen: set[str] = set()
    first = []
    for row in rows:
        if row.unique_id not in seen:
            seen.add(row.unique_id)
            first.append(row)
    return first


def _is_duplicate_key(exc: Exception) -> bool:
    """pymysql's IntegrityError for ER_DUP_ENTRY (1062)."""
    return type(exc).__name__ == "IntegrityError" and exc.args[:1] == (1062,)


def _tuple_literal(values: tuple) -> str:
    """A row as a MySQL ``(...)`` tuple literal."""
    return "(" + values_text(values) + ")"


def without_values(row: Row) -> Row:
    """The row as a worker sends it when it carries its literals (see ``Row``)."""
    if row.mysql is None or row.event is None:
        return row
    return Row(row.unique_id, None, [m[:2] for m in row.matches], row.mysql)


def full_row(row: Row) -> Row:
    """The row with its values, read back from its literals when it came without them."""
    if row.event is not None or row.mysql is None:
        return row
    matches = [(seq, *_message_values(text))
               for (seq, _), text in zip(row.matches, row.mysql.messages, strict=True)]
    return Row(row.unique_id, _tuple_values(row.mysql.event), matches, row.mysql)


def _tuple_values(text: str) -> tuple:
    """The values a ``_tuple_literal`` was made from (its inverse)."""
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"not a tuple literal: {text[:20]!r}")
    return values_from_text(text[1:-1])


# A message's literal recurs in many rows (in a flood most of a batch's are repeats), but
# its data may be large: only short ones are kept, ~8 MB at most.
_short_message_values = functools.lru_cache(maxsize=1024)(_tuple_values)


def _message_values(text: str) -> tuple:
    return _tuple_values(text) if len(text) > 4096 else _short_message_values(text)


# What values_text writes: NULL, an integer, a hex literal, or a quoted string whose
# backslash escapes are the seven of _escaped; each followed by a comma or the end.
# (possessive: re would otherwise keep ~190 bytes of backtracking state per character)
_LITERAL = re.compile(r"(?:NULL|(-?[0-9]+)|X'([0-9a-f]*)'|'((?:[^\\']++|\\.)*+)')(?:,|\Z)",
                      re.S)
_UNESCAPED = {"\\": "\\", "0": "\0", "n": "\n", "r": "\r", "Z": "\x1a", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"\\(.)", re.S)


def _unescaped(escape: re.Match) -> str:
    try:
        return _UNESCAPED[escape.group(1)]
    except KeyError:
        raise ValueError(f"not an escape values_text writes: {escape.group()!r}") from None


def values_from_text(text: str) -> tuple:
    """The values ``values_text`` made ``text`` from (its inverse)."""
    values: list = []
    at = 0
    for found in _LITERAL.finditer(text):
        if found.start() != at:
            break
        number, hexed, quoted = found.groups()  # all None: NULL
        if quoted is not None:
            values.append(_ESCAPE.sub(_unescaped, quoted) if "\\" in quoted else quoted)
        elif hexed is not None:
            values.append(bytes.fromhex(hexed))
        elif number is not None:
            values.append(int(number))
        else:
            values.append(None)
        at = found.end()
    if at != len(text) or text.endswith(","):
        raise ValueError(f"not literals written by values_text at {at}: {text[at:at + 20]!r}")
    return tuple(values)


# -- schema ------------------------------------------------------------------------------------
_TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER",
               "str": "TEXT", "blob": "BLOB", "time": "TEXT", "int": "INTEGER",
               "engine": "", "ifnot": "IF NOT EXISTS ", "view": "CREATE VIEW IF NOT EXISTS",
               "uid_binary": "",  # TEXT compares byte by byte already
               "message_id": "INTEGER PRIMARY KEY", "without_rowid": " WITHOUT ROWID"},
    # MariaDB knows CREATE INDEX IF NOT EXISTS; MySQL 8 does not, so a duplicate index
    # (a migration re-run after a failure) is tolerated instead (error 1061).
    "mysql": {"id": "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY",
              "bigint": "BIGINT UNSIGNED", "str": "VARCHAR(255)", "blob": "MEDIUMBLOB",
              "time": "DATETIME(6)", "int": "INT", "engine": " ENGINE=InnoDB", "ifnot": "",
              "view": "CREATE OR REPLACE VIEW",
              "uid_binary": "ALTER TABLE events MODIFY unique_id VARCHAR(64) CHARACTER SET "
                            "utf8mb4 COLLATE utf8mb4_bin NOT NULL",
              "message_id": "BIGINT UNSIGNED NOT NULL PRIMARY KEY", "without_rowid": ""},
}

# A rule message's columns: schema 1's matches table held them, schema 3's messages table
# holds them (its migration moves them from one to the other).
_MESSAGE_FIELDS = """
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
        tags {blob}"""
# The original tool's table, as a view, so existing queries keep working: the event and
# (to be joined as ``m``) its first rule message.
_LOGS_VIEW = """{view} logs AS SELECT
        e.method AS REQUEST_METHOD, e.uri AS REQUEST_URI, e.client_ip AS REMOTE_ADDR,
        m.rule_id AS ruleId, e.host AS Host, m.msg AS msg, m.data AS data,
        e.unique_id AS unique_id, m.severity AS severity, m.maturity AS maturity,
        m.accuracy AS accuracy, e.user_agent AS User_Agent,
        e.response_status_line AS responce_header, e.engine_mode AS Engine_Mode,
        e.anomaly_score AS Score, e.sqli_score AS SQLi, e.xss_score AS XSS,
        e.phase AS phase, e.created_at AS created_at
      FROM events e """

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
        seq {int} NOT NULL,""" + _MESSAGE_FIELDS + """,
        PRIMARY KEY (event_id, seq)
    ){engine}""",
    "CREATE INDEX {ifnot}matches_rule ON matches (rule_id)",
    _LOGS_VIEW + "LEFT JOIN matches m ON m.event_id = e.id AND m.seq = e.primary_seq",
]
# v2: mod_unique_id's ids are case-sensitive (base64), but MySQL's default collation is
# not: an id differing from a stored one only in case was refused as a duplicate.
_SCHEMA_V2 = ["{uid_binary}"]


def _normalize_matches(db: Database, cursor) -> None:
    """Schema 2's ``matches`` table into ``messages`` + ``event_messages``, in chunks in key
    order (committed one by one on MySQL, whose DDL commits anyway; every step is
    idempotent, so a migration cut short is simply run again), then dropped."""
    if db.table_type("matches") != "table":
        return
    cursor.execute("SELECT COUNT(*) FROM matches")
    total = int(cursor.fetchone()[0])
    if total:
        log.warning("schema 3: moving %d rows of the matches table into messages and "
                    "event_messages", total)
    mark = db.mark
    after = (-1, -1)
    moved = 0
    while True:
        cursor.execute(f"SELECT {','.join(MATCH_COLUMNS)} FROM matches WHERE event_id > {mark} "
                       f"OR (event_id = {mark} AND seq > {mark}) ORDER BY event_id, seq "
                       f"LIMIT 5000", (after[0], after[0], after[1]))
        rows = cursor.fetchall()
        if not rows:
            break
        messages: dict[int, tuple] = {}
        links = []
        for event_id, seq, *values in rows:
            match = upgraded_match((seq, *values))
            messages[match[1]] = match[1:]
            links.append((event_id, seq, match[1]))
        cursor.executemany(db.insert_sql("messages", MESSAGE_COLUMNS), list(messages.values()))
        cursor.executemany(db.insert_sql("event_messages", LINK_COLUMNS), links)
        if db.kind == "mysql":
            db.conn.commit()
        after = rows[-1][:2]
        moved += len(rows)
        if moved // 100_000 != (moved - len(rows)) // 100_000:
            log.info("schema 3: %d of %d matches rows moved", moved, total)
    cursor.execute("DROP TABLE matches")


# v3: each distinct rule message once (see the module's docstring). Schema 2's matches
# table becomes a view with its name and columns, so queries written for it still work.
_SCHEMA_V3 = [
    """CREATE TABLE IF NOT EXISTS messages (
        id {message_id},""" + _MESSAGE_FIELDS + """
    ){engine}""",
    "CREATE INDEX {ifnot}messages_rule ON messages (rule_id)",
    """CREATE TABLE IF NOT EXISTS event_messages (
        event_id {bigint} NOT NULL,
        seq {int} NOT NULL,
        message_id {bigint} NOT NULL,
        PRIMARY KEY (event_id, seq)
    ){engine}{without_rowid}""",
    "CREATE INDEX {ifnot}event_messages_message ON event_messages (message_id)",
    "DROP VIEW IF EXISTS logs",
    _normalize_matches,
    """{view} matches AS SELECT
        em.event_id AS event_id, em.seq AS seq, m.rule_id AS rule_id, m.severity AS severity,
        m.msg AS msg, m.data AS data, m.text AS text, m.ver AS ver, m.maturity AS maturity,
        m.accuracy AS accuracy, m.file AS file, m.line AS line, m.tags AS tags,
        em.message_id AS message_id
      FROM event_messages em JOIN messages m ON m.id = em.message_id""",
    _LOGS_VIEW + """LEFT JOIN event_messages em ON em.event_id = e.id AND em.seq = e.primary_seq
      LEFT JOIN messages m ON m.id = em.message_id""",
]
#: Each version's steps: SQL (formatted with _TYPES) or a function(database, cursor).
MIGRATIONS: dict[int, list] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3}


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
        if "unix_socket" in params and not _tls_configured(option_file):
            # PyMySQL >= 1.2 tries TLS whenever the server offers it, and builds a context
            # from the system's CA store at every connect (~0.1 s of CPU); over a Unix
            # socket it would protect nothing. (Not so for a loopback address: it may be a
            # forwarder to another host.)
            params["ssl_disabled"] = True
        return Target("mysql", params=tuple(sorted(params.items())))
    raise ValueError(f"unknown database URL scheme {parts.scheme!r} (use sqlite:// or mysql://)")


def _tls_configured(option_file: str) -> bool:
    """Whether the option file's [client] section sets any ssl-* option (then TLS is the
    administrator's choice, even over a Unix socket)."""
    if not option_file:
        return False
    import configparser  # here: the examiner workers import this module, never need it
    parser = configparser.RawConfigParser(allow_no_value=True, strict=False)
    try:
        parser.read(os.path.expanduser(option_file), encoding="utf-8")  # as PyMySQL does
    except (configparser.Error, UnicodeDecodeError):
        return True  # PyMySQL will say what is wrong with it; assume nothing
    return parser.has_section("client") and any(
        key.replace("_", "-").startswith("ssl") for key in parser.options("client"))


_SKIP_DUPLICATE = {"sqlite": lambda column: " ON CONFLICT DO NOTHING",
                   "mysql": lambda column: f" ON DUPLICATE KEY UPDATE {column} = {column}"}

#: Seconds a MySQL statement's reply may take before the connection is given up.
READ_TIMEOUT = 60
#: Seconds a node waits for another one's schema migration (GET_LOCK; below READ_TIMEOUT,
#: or the wait would end as a lost connection).
SCHEMA_LOCK_WAIT = 50
#: Seconds the migrating node's session may stay idle before the server ends it (and so
#: frees the schema lock of a node that is gone without closing its connection).
SCHEMA_LOCK_IDLE = 300

#: Characters per multi-row INSERT for MySQL (pymysql's executemany uses the same bound).
MYSQL_STATEMENT = 1024000


# -- the database ---------------------------------------------------------------------------------
class Database:
    """One connection; ``insert`` is idempotent; errors surface as DatabaseError.
    ``read_only``: for the commands that look (db status, config check), which must not
    create or change anything, not even a missing SQLite file or its -wal and -shm."""

    def __init__(self, target: Target, connect_timeout: float = 5.0,
                 read_only: bool = False) -> None:
        self.target = target
        self.kind = target.kind
        self.read_only = read_only
        self.connect_timeout = connect_timeout
        self.conn: Any = None
        self.mark = "?" if self.kind == "sqlite" else "%s"
        self.schema_ready = False
        self.consecutive_ids = False  # MySQL: see _ids_are_consecutive

    # connection ------------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            if self.kind == "sqlite" and self.read_only:
                self.conn = self._open_read_only()
            elif self.kind == "sqlite":
                # SQLite opens by path: its directory must be ours, and the name ours too.
                owned, name = OwnedDir.of(self.target.path)
                with owned:
                    os.close(owned.open(name, os.O_RDWR | os.O_CREAT))
                self.conn = sqlite3.connect(self.target.path, timeout=30,
                                            isolation_level=None, check_same_thread=False)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            else:
                import pymysql
                self.conn = pymysql.connect(**dict(self.target.params), autocommit=False,
                                            connect_timeout=self.connect_timeout,
                                            read_timeout=READ_TIMEOUT, write_timeout=60,
                                            charset="utf8mb4")
                self._literal_session()
                self.consecutive_ids = self._ids_are_consecutive()
        except (DatabaseError, UnsafePath):  # an unsafe path is no outage to wait out
            self.close()
            raise
        except Exception as exc:  # sqlite3.Error, pymysql.Error, OSError
            self.close()
            raise self._failure(exc) from None

    def _open_read_only(self) -> sqlite3.Connection:
        """SQLite's mode=ro still creates a WAL database's -wal and -shm files where they
        are missing (and leaves them). Missing, they mean that no writer has it open and
        that the main file holds every commit: it is then read as immutable (no locks, no
        shared memory), which creates nothing (a writer that starts meanwhile can at worst
        make this read fail)."""
        path = os.path.abspath(self.target.path)
        if not os.path.isfile(path):
            raise UnusableError(f"{self.target.describe()}: no such database file "
                                "(ingest, watch or 'db init' create it)")
        shared = all(os.path.exists(path + suffix) for suffix in ("-wal", "-shm"))
        uri = f"file:{urllib.parse.quote(path)}?mode=ro" + ("" if shared else "&immutable=1")
        return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                               check_same_thread=False)

    def _failure(self, exc: Exception) -> DatabaseError:
        kind = UnusableError if _unusable(exc) else DatabaseError
        return kind(f"{self.target.describe()}: {exc}")

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

    def _ids_are_consecutive(self) -> bool:
        """Whether the rows of one multi-row INSERT get consecutive ids, so that they can
        be told from LAST_INSERT_ID() (the first row's) instead of a SELECT: InnoDB's
        "simple inserts" with innodb_autoinc_lock_mode 0 or 1 take their ids as one
        block, and auto_increment_increment 1 makes that block first, first + 1, ...
        (Galera needs lock mode 2, and sets the increment: there, the SELECT.)"""
        try:
            with self.conn.cursor() as cursor:
                cursor.execute("SELECT @@GLOBAL.innodb_autoinc_lock_mode, "
                               "@@SESSION.auto_increment_increment")
                mode, increment = cursor.fetchone()
        except Exception:  # a server without InnoDB's variable
            return False
        return mode is not None and int(mode) <= 1 and int(increment) == 1

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
            raise self._failure(exc) from None

    # schema -------------------------------------------------------------------------------------
    def version(self) -> int:
        """The schema version; 0 for an empty database. DatabaseError when unreachable."""
        cursor = self._cursor()  # connects: raises DatabaseError
        try:
            cursor.execute("SELECT MAX(version) FROM schema_version")
            row = cursor.fetchone()
            return int(row[0] or 0) if row else 0
        except Exception as exc:
            if _unusable(exc):
                self.close()
                raise self._failure(exc) from None
            self._end_read()
            return 0  # no schema_version table yet

    def _end_read(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            self.close()

    def migrate(self) -> list[int]:
        """Apply missing schema versions; returns those applied. ``init`` is the same.
        (MySQL: one node at a time; nodes starting together on a new database would
        otherwise run the same steps at once, and one would fail.)"""
        with self._schema_lock():
            return self._migrate()

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[None]:
        if self.kind != "mysql":
            yield
            return
        cursor = self._cursor()
        try:
            # The database's name as the server knows it: under lower_case_table_names=1,
            # "modsec" and "MODSEC" in two nodes' settings are one database, and one lock.
            cursor.execute("SELECT DATABASE()")
            (database,), = cursor.fetchall()
            name = "modsec-tools schema " + hashlib.blake2b((database or "").encode(),
                                                             digest_size=8).hexdigest()
            cursor.execute("SELECT GET_LOCK(%s, %s)", (name, SCHEMA_LOCK_WAIT))
            (taken,), = cursor.fetchall()
            if taken == 1:
                # A node that vanishes while it holds the lock (power cut, no FIN) leaves an
                # idle session: the server ends it, and frees the lock, after this long
                # instead of wait_timeout's default 8 hours.
                cursor.execute(f"SET SESSION wait_timeout = {int(SCHEMA_LOCK_IDLE)}")
            self.conn.commit()  # the version is then read in a transaction of its own
        except Exception as exc:
            self.close()
            raise DatabaseError(f"{self.target.describe()}: {exc}") from None
        if taken != 1:
            raise SchemaError(f"{self.target.describe()}: another node has been changing the "
                              f"schema for {SCHEMA_LOCK_WAIT} s (lock {name!r})")
        try:
            yield
        finally:
            try:
                if self.conn is not None:
                    with self.conn.cursor() as release:
                        release.execute("SELECT RELEASE_LOCK(%s)", (name,))
                        release.execute("SET SESSION wait_timeout = @@GLOBAL.wait_timeout")
            except Exception:
                self.close()  # a session's named locks end with it

    def _migrate(self) -> list[int]:
        applied = []
        current = self.version()
        for number in sorted(MIGRATIONS):
            if number <= current:
                continue
            steps = [step if callable(step) else step.format(**_TYPES[self.kind])
                     for step in MIGRATIONS[number]]

            def apply(cursor, steps=steps, number=number) -> None:
                for step in steps:
                    if callable(step):
                        step(self, cursor)
                    elif step:
                        self._ddl(cursor, step)
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

    def table_type(self, name: str) -> str | None:
        """"table", "view" or None (no such name) in this database."""
        cursor = self.conn.cursor()
        if self.kind == "sqlite":
            cursor.execute("SELECT type FROM sqlite_master WHERE name = ?", (name,))
        else:
            cursor.execute("SELECT IF(TABLE_TYPE = 'VIEW', 'view', 'table') FROM "
                           "information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND "
                           "TABLE_NAME = %s", (name,))
        row = cursor.fetchone()
        return row[0] if row else None

    def insert_sql(self, table: str, columns: Sequence[str], skip_stored: bool = True) -> str:
        """INSERT of one parameterized row; ``skip_stored``: a row whose key is already
        stored is skipped (only that: any other error still fails it)."""
        marks = ",".join([self.mark] * len(columns))
        return (f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})"
                + (_SKIP_DUPLICATE[self.kind](columns[0]) if skip_stored else ""))

    def ensure_schema(self) -> None:
        current = self.version()
        if current > SCHEMA_VERSION:
            raise SchemaError(f"database schema {current} is newer than this modsec-tools "
                              f"({SCHEMA_VERSION}); upgrade modsec-tools")
        if current < SCHEMA_VERSION:
            try:
                self.migrate()
            except (SchemaError, UnusableError):
                raise
            except DatabaseError as exc:
                raise SchemaError(f"schema migration failed: {exc}") from None

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
        rows = _first_of_each(rows)
        if self.kind == "mysql":
            return self._insert_mysql(cursor, node, rows)
        fresh = [full_row(r) for r in self._not_stored(cursor, node, rows)]
        if not fresh:
            return 0
        cursor.executemany(self.insert_sql("events", EVENT_COLUMNS, skip_stored=False),
                           [r.event for r in fresh])
        ids = self._ids(cursor, node, (r.unique_id for r in fresh))
        links = [(ids[r.unique_id], m[0], m[1]) for r in fresh for m in r.matches]
        if links:
            wanted = {m[1]: m for r in fresh for m in r.matches}
            new = [wanted[i][1:] for i in self._unstored(cursor, wanted)]
            if new:
                cursor.executemany(self.insert_sql("messages", MESSAGE_COLUMNS), new)
            cursor.executemany(self.insert_sql("event_messages", LINK_COLUMNS,
                                               skip_stored=False), links)
        return len(fresh)

    def _not_stored(self, cursor, node: str, rows: list[Row]) -> list[Row]:
        existing = self._ids(cursor, node, (r.unique_id for r in rows))
        return [r for r in rows if r.unique_id not in existing]

    def _unstored(self, cursor, message_ids: Iterable[int]) -> list[int]:
        """Which of these messages the database does not hold yet."""
        missing = set(message_ids)
        wanted = list(missing)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            cursor.execute(f"SELECT id FROM messages WHERE id IN "
                           f"({','.join([self.mark] * len(chunk))})", chunk)
            missing.difference_update(int(found) for found, in cursor.fetchall())
        return sorted(missing)

    def _insert_mysql(self, cursor, node: str, rows: list[Row]) -> int:
        """Inserted at once, as new events usually are; only when the server finds one
        already stored (a batch done again after a crash) is it all undone, the stored
        ones looked up and left out (on a new batch, that look-up cost 2.3 ms)."""
        try:
            return self._insert_mysql_new(cursor, node, rows)
        except Exception as exc:
            if not _is_duplicate_key(exc):
                raise
            self.conn.rollback()
            fresh = self._not_stored(cursor, node, rows)
            if len(fresh) == len(rows):
                raise  # another key (an exhausted id counter, say): as any refusal
            return self._insert_mysql_new(cursor, node, fresh) if fresh else 0

    def _insert_mysql_new(self, cursor, node: str, rows: list[Row]) -> int:
        """Multi-row INSERTs of literals the workers made (rows replayed from the spool or
        recovered after a crash get theirs here): no per-value work in this process."""
        texts = [(r.mysql or with_mysql_text(r).mysql) for r in rows]
        sent = self._insert_values(cursor, "events", EVENT_COLUMNS, [t.event for t in texts])
        ids = self._inserted_ids(sent, rows) or self._ids(cursor, node,
                                                           (r.unique_id for r in rows))
        wanted = {m[1]: text for r, t in zip(rows, texts)
                  for m, text in zip(r.matches, t.messages)}
        # (another node may store the same message meanwhile: then it is skipped)
        self._insert_values(cursor, "messages", MESSAGE_COLUMNS,
                            [wanted[i] for i in self._unstored(cursor, wanted)],
                            _SKIP_DUPLICATE["mysql"]("id"))
        self._insert_values(cursor, "event_messages", LINK_COLUMNS, [
            f"({ids[r.unique_id]},{m[0]},{m[1]})" for r in rows for m in r.matches])
        return len(rows)

    def _inserted_ids(self, sent: list[tuple[int, int, int]],
                      rows: list[Row]) -> dict[str, int] | None:
        """The new rows' ids from the statements' first ids, when consecutive (None: ask)."""
        if not self.consecutive_ids or any(first <= 0 or inserted != count
                                           for first, inserted, count in sent):
            return None
        ids: dict[str, int] = {}
        at = 0
        for first, _, count in sent:
            for offset, row in enumerate(rows[at:at + count]):
                ids[row.unique_id] = first + offset
            at += count
        return ids

    def _insert_values(self, cursor, table: str, columns: Sequence[str],
                       values: list[str], tail: str = "") -> list[tuple[int, int, int]]:
        """INSERT statements of at most ~MYSQL_STATEMENT characters (a row longer than that
        goes alone), far below any server's max_allowed_packet default. Returned, for each
        statement: (LAST_INSERT_ID(), rows it inserted, rows it held)."""
        head = f"INSERT INTO {table} ({','.join(columns)}) VALUES "
        sent = []
        start, size = 0, 0
        for end, text in enumerate(values):
            if size and size + len(text) > MYSQL_STATEMENT:
                sent.append(self._send(cursor, head + ",".join(values[start:end]) + tail,
                                       end - start))
                start, size = end, 0
            size += len(text) + 1
        if start < len(values):
            sent.append(self._send(cursor, head + ",".join(values[start:]) + tail,
                                   len(values) - start))
        return sent

    def _send(self, cursor, statement: str, rows: int) -> tuple[int, int, int]:
        self._check_backslash_escapes()
        cursor.execute(statement)
        return cursor.lastrowid or 0, cursor.rowcount, rows

    def count(self, table: str = "events") -> int:
        if table not in ("events", "matches", "logs", "messages", "event_messages"):
            raise ValueError(table)
        cursor = self._cursor()
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        result = int(cursor.fetchone()[0])
        if self.kind != "sqlite":
            self.conn.commit()  # end the read snapshot
        return result

    def ping(self) -> None:
        self._run(lambda cursor: cursor.execute("SELECT 1"))
