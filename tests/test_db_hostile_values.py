"""Rows go to MySQL/MariaDB as parameters (PyMySQL's executemany, one multi-row INSERT per
statement, each value escaped by PyMySQL for the session): hostile values must reach the
real server exactly as they were, whatever its sql_mode says about backslashes, and be
what SQLite stores from the same rows.

Documented storage: BLOB columns hold the exact bytes (any byte, invalid UTF-8 included);
text columns hold text as given (``printable`` made lone surrogates U+FFFD beforehand).
"""
from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modsec_tools.db import DatabaseError, open_database, parse_target
from modsec_tools.db import mysql as mysql_dialect
from modsec_tools.db.rows import EVENT_COLUMNS, MATCH_COLUMNS, Row, upgraded_match
from modsec_tools.audit.event import printable, raw
from tests.ingest_helpers import mysql_db  # noqa: F401  (fixture)

HOSTILE_TEXT = [
    "", "'", '"', "\\", "\\'", "'\\", "\\\\'", "x\\", "''", "\\\\", "\0", "a\0b", "\x1a",
    "\n", "\r", "\r\n", "\t\b\x7f\x01", "%s", "%(x)s", "%%", "?", "' OR '1'='1", "'; DROP TABLE "
    "events; --", "\\'; DROP TABLE events; -- ", "x'41'", "_binary'x'", "caf\u00e9",
    "\u00e9\\'\u00e9", "\U0001f600'\\\0", "\ufffd", "\u2028\u2029", "\uff07\uff3c",  # fullwidth
    "\u00bf'", "\u00a5\\", "\u0130", "N'x'", "`", "/*!50000 x*/", "\\Z", "\\0", "\\n",
]
HOSTILE_BYTES = [
    b"", b"'", b"\\", b"\\'", b"\0", b"\x1a", b"\xff\xfe", b"\xbf'", b"\xbf\\'", b"\xc3'",
    b"\xed\xa0\x80", b"\x80", b"%s", b"' OR 1=1 -- ", bytes(range(256)), bytes(range(255, -1, -1)),
]
NODE = "node'\\\0\x1a\""
_SIZES = {"node": 64, "unique_id": 64, "client_ip": 45, "peer_ip": 45, "local_ip": 45,
          "protocol": 255, "verdict": 10, "scores": 255, "severity": 10, "engine_mode": 32,
          "producer": 255, "server": 255}
_BLOBS = {"method", "uri", "host", "user_agent", "response_status_line", "rule_ids", "source"}
_INTS = {"utc_offset_min", "peer_port", "local_port", "status", "intercepted", "phase",
         "anomaly_score", "sqli_score", "xss_score", "primary_seq", "incomplete"}


def _row(unique_id: str, text: str = "'\\\0\x1a\"", blob: bytes = bytes(range(256)),
         matches: int = 3) -> Row:
    """Every text column holds ``text`` (cut to its size), every BLOB ``blob``."""
    event = []
    for n, column in enumerate(EVENT_COLUMNS):
        if column == "node":
            event.append(NODE)
        elif column == "unique_id":
            event.append(unique_id)
        elif column == "created_at":
            event.append("2026-11-28 18:47:00.123456")
        elif column in _INTS:
            event.append(n)
        elif column in _BLOBS:
            event.append(blob + column.encode())
        else:
            event.append((text + column)[:_SIZES[column]])
    match_rows = [(seq, (text + "id")[:32], text[:10], blob, blob[::-1], b"\\'" + blob,
                   text[:255], text[:8], text[:8], text[:255], text[:16], b'["a\\\\\'"]')
                  for seq in range(matches)]
    return Row(unique_id, tuple(event), [upgraded_match(m) for m in match_rows])


def _hostile_rows() -> list[Row]:
    rows = [_row(f"t{n}-" + t[:20].replace("\0", "0"), text=t) for n, t in
            enumerate(HOSTILE_TEXT)]
    return rows + [_row(f"b{n}", blob=b) for n, b in enumerate(HOSTILE_BYTES)]


def _stored(db) -> tuple[list, list]:
    def read(cursor):
        cursor.execute(f"SELECT {','.join(EVENT_COLUMNS)} FROM events")
        events = sorted(tuple(_plain(v) for v in row) for row in cursor.fetchall())
        cursor.execute(f"SELECT e.unique_id, {','.join('m.' + c for c in MATCH_COLUMNS[1:])} "
                       "FROM matches m JOIN events e ON e.id = m.event_id")
        return events, sorted(tuple(_plain(v) for v in row) for row in cursor.fetchall())
    return db._run(read)


def _plain(value):
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return bytes(value) if isinstance(value, bytearray) else value


def _expected(rows: list[Row]) -> tuple[list, list]:
    events = sorted(r.event for r in rows)
    matches = sorted((r.unique_id, m[0], *m[2:]) for r in rows for m in r.matches)
    return events, matches


def test_rows_with_hostile_values_stored_as_given(mysql_db, tmp_path):
    """Every hostile text in every text column, every hostile byte string in every BLOB,
    a node name of quotes, backslashes and NUL: stored as given, nothing twice on a
    second insert, and what SQLite stores from the same rows."""
    rows = _hostile_rows()
    assert mysql_db.insert(NODE, rows) == len(rows)
    assert mysql_db.insert(NODE, rows) == 0  # idempotent: nothing twice
    stored = _stored(mysql_db)
    assert stored == _expected(rows)
    lite = open_database(parse_target(str(tmp_path / "x.db")))
    try:
        lite.insert(NODE, rows)
        assert _stored(lite) == stored
    finally:
        lite.close()


def test_statements_split_by_size(mysql_db, monkeypatch):
    """Many rows over several statements, and rows larger than the bound (one of 200 KB of
    random bytes in each BLOB column), each sent alone: all stored, each event with its own messages (their
    ids told from each statement's first id)."""
    monkeypatch.setattr(mysql_dialect, "MYSQL_STATEMENT", 20_000)  # ~4 rows a statement
    statements: list[int] = []
    inserted_ids = mysql_db._inserted_ids
    monkeypatch.setattr(mysql_db, "_inserted_ids", lambda sent, rows: (
        statements.extend(count for _, count in sent), inserted_ids(sent, rows))[1])
    rng = random.Random(7)
    rows = [_row(f"r{n:04d}", matches=n % 4) for n in range(120)]
    rows.insert(50, _row("big", blob=b"\\'" * 20000))
    rows.insert(90, _row("huge", blob=rng.randbytes(200_000),
                         matches=1))
    assert mysql_db.consecutive_ids
    assert mysql_db.insert(NODE, rows) == len(rows)
    assert len(statements) > 10 and sum(statements) == len(rows)
    assert _stored(mysql_db) == _expected(rows)


def test_lone_surrogates_as_the_rows_carry_them(mysql_db):
    """Rows never hold lone surrogates in text (printable: U+FFFD); the bytes columns
    get the original bytes back (raw, surrogateescape)."""
    decoded = b"a\xff'\xc3\\".decode("utf-8", "surrogateescape")
    text = printable(decoded)
    assert text == "a\ufffd'\ufffd\\"
    assert printable("x\ud800'y") == "x\ufffd\ufffd\ufffd'y"  # its UTF-8 bytes, replaced
    rows = [_row("s", text=text, blob=raw(decoded))]
    mysql_db.insert(NODE, rows)
    assert _stored(mysql_db) == _expected(rows)
    assert rows[0].event[EVENT_COLUMNS.index("uri")] == b"a\xff'\xc3\\uri"


def test_a_lone_surrogate_in_text_is_refused_not_mangled(mysql_db):
    """Not made by event_row, but if it came: an error for that row (the sink rejects it
    and keeps it), never a statement with other bytes than the value's."""
    with pytest.raises(DatabaseError):
        mysql_db.insert(NODE, [_row("lone", text="\ud800'")])
    assert mysql_db.count() == 0


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(st.characters(blacklist_categories=["Cs"]), max_size=40),
                          st.binary(max_size=300)), min_size=1, max_size=6))
def test_arbitrary_values_round_trip(mysql_db, values):
    rows = [_row(f"h{n}", text=text, blob=blob) for n, (text, blob) in enumerate(values)]
    mysql_db.insert(NODE, rows)
    try:
        assert _stored(mysql_db) == _expected(rows)
    finally:
        mysql_db._run(lambda cursor: [cursor.execute(f"DELETE FROM {table}") for table in
                                      ("event_messages", "messages", "events")])


def _with_global_sql_mode(mariadb, mode: str):
    admin = mariadb.connect(root=True)
    with admin.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.sql_mode")
        before = cursor.fetchone()[0]
        cursor.execute("SET GLOBAL sql_mode = %s", (mode,))

    def restore() -> None:
        with admin.cursor() as cursor:
            cursor.execute("SET GLOBAL sql_mode = %s", (before,))
        admin.close()
    return restore


def test_a_server_with_no_backslash_escapes(mariadb, mariadb_db):
    """A server whose sql_mode has NO_BACKSLASH_ESCAPES reads \\' as a backslash and the
    end of the string: PyMySQL sees the mode in the server's status and escapes for it."""
    restore = _with_global_sql_mode(
        mariadb, "STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES,ERROR_FOR_DIVISION_BY_ZERO")
    try:
        db = open_database(parse_target(mariadb.url_for(mariadb_db)))
        try:
            rows = _hostile_rows()
            assert db.insert(NODE, rows) == len(rows)
            assert _stored(db) == _expected(rows)
        finally:
            db.close()
    finally:
        restore()


def test_no_backslash_escapes_set_in_the_session_later(mysql_db):
    """The session's sql_mode gains NO_BACKSLASH_ESCAPES after connect (a trigger, a
    proxy's init command): the next insert is escaped for it, and stored as given."""
    first = [_row("first")]
    mysql_db.insert(NODE, first)
    with mysql_db.conn.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    rows = _hostile_rows()
    assert mysql_db.insert(NODE, rows) == len(rows)
    with mysql_db.conn.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.sql_mode LIKE '%NO_BACKSLASH_ESCAPES%'")
        assert cursor.fetchone() == (1,)  # the same session: the mode was in force
    assert _stored(mysql_db) == _expected(first + rows)

