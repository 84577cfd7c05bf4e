"""MySQL/MariaDB: the ids of a batch's new events, for their event_messages links, come from
LAST_INSERT_ID() when the server gives a multi-row INSERT consecutive ids, from a SELECT
otherwise. Against the real server: both ways link every message to its own event."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from modsec_tools.db import Database, SchemaError, open_database, parse_target, schema
from modsec_tools.db import mysql as mysql_db_module
from modsec_tools.db.rows import Row, event_row
from modsec_tools.audit.entry import parse_entry
from modsec_tools.sinks.database import DatabaseSink
from tests import corpus
from tests.ingest_helpers import mysql_db, tree_files_from_tar  # noqa: F401  (fixture)
from tests.realparts.fixtures import require
from tests.realparts.mariadb import MariaDB
from tests.test_db_messages import _matches_view


def _rows(node: str, count: int, prefix: str = "") -> list[Row]:
    corpus.require_corpus()
    rows = []
    for data in list(tree_files_from_tar("r1_relevant_concurrent").values())[:count]:
        event = parse_entry(data, "test")
        event.unique_id = prefix + event.unique_id[len(prefix):]
        rows.append(event_row(event, node, "blocked"))
    return rows


def _expected(rows) -> list[tuple]:
    return sorted((r.unique_id, *m) for r in rows for m in r.matches)


def _counting_selects(db: Database, monkeypatch) -> list[int]:
    calls = []
    real = db._ids

    def counted(cursor, node, unique_ids):
        found = real(cursor, node, unique_ids)
        calls.append(len(found))
        return found
    monkeypatch.setattr(db, "_ids", counted)
    return calls




def test_ids_from_last_insert_id(mysql_db, monkeypatch):
    """MariaDB's defaults (lock mode 1, increment 1): no SELECT after the insert, even when
    the batch takes several statements; every link goes to its own event."""
    assert mysql_db.consecutive_ids
    monkeypatch.setattr(mysql_db_module, "MYSQL_STATEMENT", 20_000)  # ~20-40 events a statement
    selects = _counting_selects(mysql_db, monkeypatch)
    sent: list[int] = []                           # rows of each INSERT INTO events
    inserted_ids = mysql_db._inserted_ids
    monkeypatch.setattr(mysql_db, "_inserted_ids", lambda statements, rows: (
        sent.extend(count for _, count in statements), inserted_ids(statements, rows))[1])
    rows = _rows("n", 150)
    assert mysql_db.insert("n", rows[:60]) == 60   # new: no SELECT at all
    assert mysql_db.insert("n", rows[40:]) == 90   # 20 already stored: a duplicate key
    assert selects == [20]                          # ... then the look-up, that once
    assert len(sent) >= 4 and sum(sent) == 150      # several statements a batch
    assert _matches_view(mysql_db) == _expected(rows)


def test_stored_events_found_by_a_later_statement(mysql_db, monkeypatch):
    """A batch done again after a crash may hold stored events anywhere: when the server
    finds one in the third statement, the first two statements' new events are undone
    with the rest, so that they are inserted once, with their links. A unique id twice in
    one batch is stored once."""
    monkeypatch.setattr(mysql_db_module, "MYSQL_STATEMENT", 20_000)  # ~20-40 events a statement
    selects = _counting_selects(mysql_db, monkeypatch)
    rows = _rows("n", 150)
    assert mysql_db.insert("n", rows[40:60]) == 20
    again = rows[60:100] + rows[40:60] + rows[:40] + rows[100:] + rows[:5]
    assert mysql_db.insert("n", again) == 130
    assert selects == [20]
    assert _matches_view(mysql_db) == _expected(rows)
    assert mysql_db.count() == 150


def test_ids_from_a_select_when_not_consecutive(mysql_db, monkeypatch):
    mysql_db.consecutive_ids = False
    selects = _counting_selects(mysql_db, monkeypatch)
    rows = _rows("n", 80)
    assert mysql_db.insert("n", rows) == 80
    assert selects == [80]
    assert _matches_view(mysql_db) == _expected(rows)


def test_an_increment_other_than_one_is_detected(mysql_db):
    """With auto_increment_increment 2 (as Galera sets it) the ids of one statement are
    first, first + 2, ...: taking them as consecutive would link messages to other
    events; the check sees it and the SELECT gives the right ones."""
    with mysql_db.conn.cursor() as cursor:
        cursor.execute("SET SESSION auto_increment_increment = 2")
    assert mysql_db._ids_are_consecutive() is False
    rows = _rows("n", 60)
    mysql_db.consecutive_ids = True                 # what not checking would do
    mysql_db.insert("n", rows[:30])
    assert _matches_view(mysql_db) != _expected(rows[:30])
    mysql_db.consecutive_ids = mysql_db._ids_are_consecutive()
    mysql_db.insert("n", rows[30:])
    view = _matches_view(mysql_db)
    assert [v for v in view if v[0] in {r.unique_id for r in rows[30:]}] == _expected(rows[30:])


def test_two_nodes_inserting_at_once(mariadb, mariadb_db, monkeypatch):
    """Two nodes start on a new database: one waits for the other's schema migration, then
    their inserts interleave (each statement still gets its block of ids)."""
    monkeypatch.setattr(mysql_db_module, "MYSQL_STATEMENT", 40_000)
    nodes = {name: (open_database(parse_target(mariadb.url_for(mariadb_db))), _rows(name, 200))
             for name in ("a", "b")}
    errors = []

    def insert(name):
        db, rows = nodes[name]
        try:
            for start in range(0, len(rows), 25):
                db.insert(name, rows[start:start + 25])
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(name,)) for name in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors
    db, _ = nodes["a"]
    assert db.consecutive_ids

    def view(cursor):
        cursor.execute("SELECT e.node, e.unique_id, m.seq, m.message_id FROM matches m "
                       "JOIN events e ON e.id = m.event_id")
        return sorted(cursor.fetchall())
    assert db._run(view) == sorted((name, r.unique_id, m[0], m[1])
                                   for name, (_, rows) in nodes.items()
                                   for r in rows for m in r.matches)
    for db, _ in nodes.values():
        db.close()


def test_lock_mode_2_means_a_select(tmp_path):
    """innodb_autoinc_lock_mode 2 (MySQL 8's default, Galera's requirement) promises no
    consecutive ids: the SELECT is used, and the links are right."""
    with require(lambda: MariaDB(tmp_path / "server", extra_args=[
            "--innodb-autoinc-lock-mode=2"])) as server:
        db = open_database(parse_target(server.url))
        try:
            db.connect()
            assert db.consecutive_ids is False
            selects = _counting_selects(db, pytest.MonkeyPatch())
            rows = _rows("n", 50)
            assert db.insert("n", rows) == 50
            assert selects == [50]                      # the SELECT after the insert
            assert _matches_view(db) == _expected(rows)
        finally:
            db.close()


def test_a_migration_waits_for_another_nodes(mariadb, mariadb_db, monkeypatch, tmp_path):
    """While another session holds the database's schema lock, a migration waits, then
    says why it gives up; the sink then spools the batch as in an outage (no row is
    rejected: no row could be stored), and stores it once the lock is free."""
    monkeypatch.setattr(mysql_db_module, "SCHEMA_LOCK_WAIT", 1)
    assert mysql_db_module.SCHEMA_LOCK_WAIT < mysql_db_module.READ_TIMEOUT
    url = mariadb.url_for(mariadb_db)
    other = open_database(parse_target(url))
    sink = DatabaseSink(open_database(parse_target(url)), "n", str(tmp_path / "db-spool"))
    rows = _rows("n", 20)
    try:
        with other._schema_lock():
            with pytest.raises(SchemaError, match="another node has been changing"):
                open_database(parse_target(url)).migrate()
            assert sink.write(rows) == 20                  # spooled
        assert sink.refused == 0 and not sink.rejected.records
        sink.retry_at = 0
        sink.flush()
        assert sink.db.count() == 20 and not sink.spool.records
        assert other.migrate() == []
    finally:
        sink.close()
        other.close()


def test_the_schema_lock_is_the_servers_name_for_the_database(tmp_path, monkeypatch):
    """Under lower_case_table_names=1, "modsec" and "MODSEC" name one database: two nodes
    set up with either take turns at migrating it."""
    monkeypatch.setattr(mysql_db_module, "SCHEMA_LOCK_WAIT", 1)
    with require(lambda: MariaDB(tmp_path / "server", extra_args=[
            "--lower-case-table-names=1"])) as server:
        lower = open_database(parse_target(server.url_for(server.database.lower())))
        upper = open_database(parse_target(server.url_for(server.database.upper())))
        try:
            with lower._schema_lock():
                with pytest.raises(SchemaError, match="another node has been changing"):
                    upper.migrate()
            assert upper.migrate() == sorted(schema.MIGRATIONS)
            assert lower.migrate() == []
        finally:
            lower.close()
            upper.close()


class _Relay:
    """A TCP relay to the server that can fall silent: what a node cut off by a power
    failure looks like from the server (its connection still open, nothing more on it)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = target
        self.silent = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.silent.is_set():
                    sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_a_node_gone_silent_frees_the_schema_lock(mariadb, mariadb_db, monkeypatch):
    """A node that vanishes mid-migration without closing its connection holds the schema
    lock only until the server ends its idle session (SCHEMA_LOCK_IDLE), not for
    wait_timeout's default 8 hours: the next node then migrates."""
    monkeypatch.setattr(mysql_db_module, "SCHEMA_LOCK_IDLE", 2)
    monkeypatch.setattr(mysql_db_module, "SCHEMA_LOCK_WAIT", 20)
    relay = _Relay((mariadb.host, mariadb.port))
    gone = open_database(parse_target(f"mysql://{mariadb.user}:{mariadb.password}@127.0.0.1:"
                                 f"{relay.port}/{mariadb_db}"))
    other = open_database(parse_target(mariadb.url_for(mariadb_db)))
    try:
        with gone._schema_lock():
            relay.silent.set()
            started = time.monotonic()
            try:
                assert other.migrate() == sorted(schema.MIGRATIONS)
                assert time.monotonic() - started < 10
            finally:
                relay.close()  # its release then fails at once (the lock is long gone)
        assert gone.conn is None
        with other._cursor() as cursor:
            cursor.execute("SELECT @@SESSION.wait_timeout = @@GLOBAL.wait_timeout")
            assert cursor.fetchone() == (1,)  # the migrating session's is restored
    finally:
        relay.close()
        gone.close()
        other.close()
