"""MySQL rows are sent as multi-row INSERTs of literals made by ``sql_literal`` (in the
examining worker processes), not as parameterized queries: hostile values must still reach
the real MariaDB server exactly as they were, whatever its sql_mode says about backslashes.

Documented storage: BLOB columns hold the exact bytes (any byte, invalid UTF-8 included);
text columns hold text as given (``printable`` made lone surrogates U+FFFD beforehand).
"""
from __future__ import annotations

import datetime as dt
import random

import pymysql.converters
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modsec_tools.db import Database, DatabaseError, open_database, parse_target
from modsec_tools.db import literals as dbm
from modsec_tools.db import mysql as mysql_db_module
from modsec_tools.db.literals import (sql_literal, values_from_text, values_text, values_text_py,
                                      with_mysql_text)
from modsec_tools.db.rows import EVENT_COLUMNS, MATCH_COLUMNS, Row, event_row, upgraded_match
from modsec_tools.event import printable, raw
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


# -- the literal itself (no server) -------------------------------------------------------------
def test_literals_of_each_type():
    assert sql_literal(None) == "NULL"
    assert sql_literal(0) == "0" and sql_literal(-12) == "-12"
    assert sql_literal(True) == "1" and sql_literal(False) == "0"
    assert sql_literal(b"") == "X''"
    assert sql_literal(b"\x00'\xff") == "X'0027ff'"
    assert sql_literal("") == "''"
    assert sql_literal("a'b\\c\0d\x1ae\"f\ng\rh") == "'a\\'b\\\\c\\0d\\Ze\\\"f\\ng\\rh'"
    with pytest.raises(TypeError):
        sql_literal(1.5)
    with pytest.raises(TypeError):
        sql_literal(bytearray(b"x"))


@given(st.text())
@example("\\'\0\x1a\"\n\r")
def test_text_literal_is_mysql_real_escape_string(text):
    """The same escaping as pymysql's (mysql_real_escape_string's table) for any text."""
    assert sql_literal(text) == "'" + pymysql.converters.escape_string(text) + "'"


@given(st.binary())
def test_bytes_literal_is_hex(data):
    assert sql_literal(data) == "X'" + data.hex() + "'"


@given(st.lists(st.one_of(st.none(), st.integers(), st.booleans(), st.text(), st.binary())))
def test_values_text_is_the_literals_joined(values):
    """The inlined loop the workers use (C or its Python twin) says what sql_literal says,
    value for value."""
    joined = ",".join(sql_literal(v) for v in values)
    assert values_text(values) == values_text_py(values) == joined


@given(st.lists(st.one_of(st.none(), st.integers(), st.booleans(), st.text(), st.binary())))
@example([None, -1, True, False, 0, 10**30, -10**30, ",", "','", "NULL", "X'41'", "1,2",
          *HOSTILE_TEXT, *HOSTILE_BYTES])
def test_values_from_text_reads_back_what_values_text_wrote(values):
    """A row that crossed from a worker with its literals only has its values read back
    from them for the spool and db-rejected: exactly (a bool as the integer it is stored as)."""
    expected = tuple(int(v) if type(v) is bool else v for v in values)
    assert values_from_text(values_text(values)) == expected
    assert values_from_text(values_text_py(values)) == expected


@pytest.mark.parametrize("text", ["1,", ",1", "1,,2", "'x", "x'", "X'4'", "X'AB'", "null",
                                  "'\\q'", "1 ,2", "(1)", "--1", "'a''b'"])
def test_values_from_text_refuses_what_values_text_never_writes(text):
    with pytest.raises(ValueError):
        values_from_text(text)



def test_a_tuple_literal_is_read_back_only_in_its_parentheses():
    assert dbm._tuple_values("(" + values_text((1, None, "a")) + ")") == (1, None, "a")
    for text in ("1,2", "(1,2", "1,2)", ""):
        with pytest.raises(ValueError):
            dbm._tuple_values(text)

# -- against the real server --------------------------------------------------------------------


def _round_trip(db: Database, texts: list[str], blobs: list[bytes]) -> tuple[list, list]:
    """Insert the values as literals in one multi-row INSERT; read them back."""
    with db.conn.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS lit (n INT PRIMARY KEY, t MEDIUMTEXT, "
                       "b MEDIUMBLOB) CHARACTER SET utf8mb4")
        cursor.execute("DELETE FROM lit")
        size = max(len(texts), len(blobs))
        values = [f"({n},{sql_literal(texts[n] if n < len(texts) else None)},"
                  f"{sql_literal(blobs[n] if n < len(blobs) else None)})" for n in range(size)]
        db._send(cursor, "INSERT INTO lit (n, t, b) VALUES " + ",".join(values), len(values))
        cursor.execute("SELECT t, b FROM lit ORDER BY n")
        rows = cursor.fetchall()
    db.conn.commit()
    return [t for t, _ in rows[:len(texts)]], [bytes(b) for _, b in rows[:len(blobs)]]


def _long_values() -> tuple[str, bytes]:
    rng = random.Random(7)
    text = "".join(rng.choice("ab'\"\\\0\x1a\n\r\u00e9\U0001f600") for _ in range(300_000))
    return text, bytes(rng.randrange(256) for _ in range(3_000_000))


def test_hostile_values_round_trip_byte_exact(mysql_db):
    long_text, long_bytes = _long_values()
    texts = HOSTILE_TEXT + ["".join(HOSTILE_TEXT), long_text]
    blobs = HOSTILE_BYTES + [b"".join(HOSTILE_BYTES), long_bytes]
    assert _round_trip(mysql_db, texts, blobs) == (texts, blobs)


def test_lone_surrogates_as_the_rows_carry_them(mysql_db):
    """Rows never hold lone surrogates in text (printable: U+FFFD); the bytes columns
    get the original bytes back (raw, surrogateescape)."""
    decoded = b"a\xff'\xc3\\".decode("utf-8", "surrogateescape")
    texts = [printable(decoded), printable("x\ud800'y")]
    blobs = [raw(decoded)]
    assert texts == ["a\ufffd'\ufffd\\", "x\ufffd\ufffd\ufffd'y"]  # its UTF-8 bytes, replaced
    assert _round_trip(mysql_db, texts, blobs) == (texts, [b"a\xff'\xc3\\"])


def test_a_lone_surrogate_in_text_is_refused_not_mangled(mysql_db):
    """Not made by event_row, but if it came: an error for that row (the sink rejects it
    and keeps it), never a statement with other bytes than the value's."""
    with pytest.raises(DatabaseError):
        mysql_db.insert(NODE, [_row("lone", text="\ud800'")])
    assert mysql_db.count() == 0


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(blacklist_categories=["Cs"])), min_size=1, max_size=8),
       st.lists(st.binary(), min_size=1, max_size=8))
def test_arbitrary_values_round_trip(mysql_db, texts, blobs):
    assert _round_trip(mysql_db, texts, blobs) == (texts, blobs)


def test_no_backslash_escapes_server_mode_is_turned_off_for_our_session(mariadb, mariadb_db):
    """A server whose sql_mode has NO_BACKSLASH_ESCAPES would read \\' as a backslash and the
    end of the string: connect() removes it from the session."""
    admin = mariadb.connect(root=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT @@GLOBAL.sql_mode")
            before = cursor.fetchone()[0]
            cursor.execute("SET GLOBAL sql_mode = 'STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES,"
                           "ERROR_FOR_DIVISION_BY_ZERO'")
        db = open_database(parse_target(mariadb.url_for(mariadb_db)))
        try:
            db.connect()
            with db.conn.cursor() as cursor:
                cursor.execute("SELECT @@SESSION.sql_mode")
                assert cursor.fetchone()[0] == "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO"
            assert _round_trip(db, HOSTILE_TEXT, HOSTILE_BYTES) == (HOSTILE_TEXT, HOSTILE_BYTES)
        finally:
            db.close()
    finally:
        with admin.cursor() as cursor:
            cursor.execute("SET GLOBAL sql_mode = %s", (before,))
        admin.close()


def test_no_backslash_escapes_set_later_stops_the_insert(mysql_db):
    mysql_db.insert(NODE, [_row("first")])
    with mysql_db.conn.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    with pytest.raises(DatabaseError, match="NO_BACKSLASH_ESCAPES"):
        mysql_db.insert(NODE, [_row("second", text="\\'")])
    assert mysql_db.count() == 1  # reconnected (clean session) for the count


# -- whole rows: MariaDB (literals) and SQLite (parameters) store the same ------------------------
NODE = "node'\\\0\x1a\""
_SIZES = {"node": 64, "unique_id": 64, "client_ip": 45, "peer_ip": 45, "local_ip": 45,
          "protocol": 255, "verdict": 10, "scores": 255, "severity": 10, "engine_mode": 32,
          "producer": 255, "server": 255}
_BLOBS = {"method", "uri", "host", "user_agent", "response_status_line", "rule_ids", "source"}
_INTS = {"utc_offset_min", "peer_port", "local_port", "status", "intercepted", "phase",
         "anomaly_score", "sqli_score", "xss_score", "primary_seq", "incomplete"}


def _row(unique_id: str, text: str = "'\\\0\x1a\"", blob: bytes = bytes(range(256)),
         matches: int = 3) -> Row:
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


def _stored(conn, cursor) -> tuple[list, list]:
    cursor.execute(f"SELECT {','.join(EVENT_COLUMNS)} FROM events")
    events = sorted(tuple(_plain(v) for v in row) for row in cursor.fetchall())
    cursor.execute(f"SELECT e.unique_id, {','.join('m.' + c for c in MATCH_COLUMNS[1:])} FROM "
                   "matches m JOIN events e ON e.id = m.event_id")
    matches = sorted(tuple(_plain(v) for v in row) for row in cursor.fetchall())
    conn.commit()
    return events, matches


def _plain(value):
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return bytes(value) if isinstance(value, bytearray) else value


def _expected(rows: list[Row]) -> tuple[list, list]:
    events = sorted(r.event for r in rows)
    matches = sorted((r.unique_id, m[0], *m[2:]) for r in rows for m in r.matches)
    return events, matches


@pytest.mark.parametrize("prebuilt", [True, False], ids=["worker-literals", "replayed-rows"])
def test_rows_with_hostile_values_stored_as_given(mysql_db, tmp_path, prebuilt):
    rows = [_row(f"uid-{n}-" + t[:20].replace("\0", "0"), text=t) for n, t in
            enumerate(HOSTILE_TEXT)]
    if prebuilt:
        rows = [with_mysql_text(r) for r in rows]
    assert mysql_db.insert(NODE, rows) == len(rows)
    assert mysql_db.insert(NODE, rows) == 0  # idempotent: nothing twice
    with mysql_db.conn.cursor() as cursor:
        stored = _stored(mysql_db.conn, cursor)
    assert stored == _expected(rows)
    lite = open_database(parse_target(str(tmp_path / "x.db")))
    lite.insert(NODE, rows)
    assert _stored(lite.conn, lite.conn.cursor()) == stored
    lite.close()


def test_statements_split_by_size(mysql_db, monkeypatch):
    """Many rows, and one row larger than the bound (sent alone): all stored, in order."""
    monkeypatch.setattr(mysql_db_module, "MYSQL_STATEMENT", 4000)
    sent: list[int] = []
    send = mysql_db._send
    monkeypatch.setattr(mysql_db, "_send", lambda cursor, text, count: (
        sent.append(len(text)), send(cursor, text, count))[1])
    rows = [with_mysql_text(_row(f"r{n:04d}", matches=n % 4)) for n in range(120)]
    rows.insert(50, with_mysql_text(_row("big", blob=b"\\'" * 20000)))
    assert mysql_db.insert(NODE, rows) == len(rows)
    assert len(sent) > 20 and max(sent) > 80000  # split; the big row went alone
    with mysql_db.conn.cursor() as cursor:
        assert _stored(mysql_db.conn, cursor) == _expected(rows)


def test_sqlite_rows_unchanged(tmp_path):
    """SQLite keeps its parameterized path: rows with literals attached store the same."""
    db = open_database(parse_target(str(tmp_path / "y.db")))
    rows = [with_mysql_text(_row("a")), _row("b")]
    db.insert(NODE, rows)
    assert _stored(db.conn, db.conn.cursor()) == _expected(rows)
    db.close()


def test_rows_made_with_literals_match_the_literals_made_later():
    """event_row(..., "mysql") takes each message's literals from the Message it shares
    with every entry that repeats it: the result must be what with_mysql_text makes."""
    from modsec_tools.entry import parse_entry
    from tests import corpus
    from tests.ingest_helpers import tree_files_from_tar
    corpus.require_corpus()
    entries = list(tree_files_from_tar("r1_relevant_concurrent").values())[:200]
    for data in entries * 2:  # the second pass finds every message's renderings made
        event = parse_entry(data, "test")
        made = event_row(event, "n", "blocked", "mysql")
        later = with_mysql_text(event_row(event, "n", "blocked"))
        assert made == later
        assert made.matches == [(seq, *m[1:]) for seq, m in enumerate(later.matches)]
