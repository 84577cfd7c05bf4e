"""Schema 3: each distinct rule message is stored once (``messages``), linked to its events
in order (``event_messages``); the ``matches`` view shows them as schema 2's table did.
Against SQLite and the real MariaDB server."""
from __future__ import annotations

import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modsec_tools.db import Database, DatabaseError, open_database, parse_target
from modsec_tools.db.rows import (LINK_COLUMNS, MESSAGE_COLUMNS, Row, event_row, message_id,
                                  scores_json)
from modsec_tools.audit.entry import parse_entry
from modsec_tools.sinks.database import DatabaseSink, _encode
from tests import corpus
from tests.ingest_helpers import fast_tmp, tree_files_from_tar  # noqa: F401  (fixture)

NODE = "n"


@pytest.fixture(params=["sqlite", "mariadb"])
def db(request, fast_tmp):
    if request.param == "mariadb":
        mariadb, name = request.getfixturevalue("mariadb"), request.getfixturevalue("mariadb_db")
        url = mariadb.url_for(name)
    else:
        url = f"sqlite:///{fast_tmp / 'events.db'}"
    database = open_database(parse_target(url))
    yield database
    database.close()


def _corpus_rows(count: int) -> list[Row]:
    corpus.require_corpus()
    entries = list(tree_files_from_tar("r1_relevant_concurrent").values())[:count]
    return [event_row(parse_entry(data, "test"), NODE, "blocked") for data in entries]


def _matches_view(db: Database) -> list[tuple]:
    def read(cursor):
        cursor.execute("SELECT e.unique_id, m.seq, m.message_id, "
                       f"{','.join('m.' + c for c in MESSAGE_COLUMNS[1:])} "
                       "FROM matches m JOIN events e ON e.id = m.event_id")
        return sorted(tuple(bytes(v) if isinstance(v, bytearray) else v for v in row)
                      for row in cursor.fetchall())
    return db._run(read)


def test_equal_messages_stored_once(db):
    """200 corpus entries in two batches, the second sharing most of the first's
    messages: one messages row per distinct message, every event's matches as parsed."""
    rows = _corpus_rows(200)
    assert db.insert(NODE, rows[:120]) == 120
    assert db.insert(NODE, rows[100:]) == 80  # 20 already stored: skipped
    distinct = {m[1]: m[2:] for r in rows for m in r.matches}
    assert len(distinct) < 0.6 * sum(len(r.matches) for r in rows)  # the corpus repeats them
    assert db.count("messages") == len(distinct)
    assert _matches_view(db) == sorted((r.unique_id, *m) for r in rows for m in r.matches)
    assert db.count("logs") == 200


def test_message_stored_meanwhile_by_another_node(db, monkeypatch):
    """Between the look-up and the insert another node may store the same message (same
    content, same id): the insert skips it instead of failing the batch."""
    rows = _corpus_rows(40)
    other = [Row(r.unique_id + "-other", (NODE, r.unique_id + "-other", *r.event[2:]),
                 r.matches) for r in rows]
    db.insert(NODE, other)
    monkeypatch.setattr(db, "_unstored", lambda cursor, ids: sorted(set(ids)))
    assert db.insert(NODE, rows) == 40
    assert db.count("messages") == len({m[1] for r in rows for m in r.matches})
    assert db.count("matches") == 2 * sum(len(r.matches) for r in rows)


def test_only_a_duplicate_key_is_skipped(db):
    """The skip is for the key alone: a row the database refuses for another reason (here
    a NULL in a NOT NULL column) still fails the statement."""
    db.ensure_schema()
    sql = db.insert_sql("event_messages", LINK_COLUMNS)
    db._run(lambda cursor: cursor.execute(sql, (1, 0, 5)))
    db._run(lambda cursor: cursor.execute(sql, (1, 0, 6)))  # the key (1, 0) is taken
    with pytest.raises(DatabaseError):
        db._run(lambda cursor: cursor.execute(sql, (2, 0, None)))
    assert db.count("event_messages") == 1


def test_message_id_is_the_content():
    """Equal values, equal id; any difference (a byte, str against bytes, None against
    empty) another; and always a positive 63-bit integer (SQLite's rowid, MySQL BIGINT)."""
    values = ("942100", "CRITICAL", b"SQLi", b"data", b"text", "v", "", "", "f", "1", None)
    same = message_id(tuple(list(values)))
    assert message_id(values) == same
    for changed in (values[:3] + (b"datA",) + values[4:], ("942100".encode(),) + values[1:],
                    values[:6] + (None,) + values[7:], values[:10] + (b"",)):
        assert message_id(changed) != same
    assert 0 < same < 2 ** 63


def _spool_frame(record: dict) -> bytes:
    payload = json.dumps(record, separators=(",", ":")).encode()
    return struct.pack("<4sII", b"MTJ1", len(payload), zlib.crc32(payload)) + payload


def test_spool_written_before_schema_3_replays(db, fast_tmp):
    """A spool left by the previous version (matches without message ids) is replayed
    after the upgrade: its rows are stored with the messages an upgraded ingest makes."""
    rows = _corpus_rows(30)
    old = [[r.unique_id, [_encode(v) for v in r.event],
            [[_encode(v) for v in (m[0], *m[2:])] for m in r.matches]] for r in rows]
    spool = fast_tmp / "state" / "db-spool"
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(_spool_frame({"rows": old[:10]}) + _spool_frame({"rows": old[10:]}))
    sink = DatabaseSink(db, NODE, str(spool))
    try:
        sink.flush()
        assert sink.spool.records == [] and not sink.down
    finally:
        sink.spool.close()
        sink.rejected.close()
    assert _matches_view(db) == sorted((r.unique_id, *m) for r in rows for m in r.matches)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Z_]{1,12}", fullmatch=True),
                       st.integers(0, 999_999_999), max_size=10))
def test_scores_json_is_what_json_dumps_makes(scores):
    """The ``scores`` column is built without json.dumps (workers make it for every entry):
    for the category names the parser can produce, it must be the same text."""
    assert scores_json(scores) == json.dumps(scores)
