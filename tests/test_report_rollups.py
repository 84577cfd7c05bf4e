"""The rollups (schema 4, modsec_tools/db/rollups.py): what inserts add to them equals a
recount from the events, through replays, a kill -9 inside the transaction and two writers
at once; a schema-3 database migrates in place; and the report they serve equals the one
read from the events and plain SQL's figures, on SQLite and MariaDB."""
from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading

import pytest

from modsec_tools.db import open_database, parse_target, schema
from modsec_tools.db import rollups
from modsec_tools.db.rows import Row
from modsec_tools.report import build_report, parse_filters, rollup
from tests import test_report_data as data
from tests.ingest_helpers import REPO, cli_env
from tests.test_report import figures

START = dt.datetime(2026, 11, 20, 7, 30)


@pytest.fixture(params=["sqlite", "mariadb"])
def url(request, tmp_path):
    with data.database_url(request, tmp_path) as made:
        yield made


def spread_rows() -> list[tuple[str, Row]]:
    """The corpus's rows spread over ten days (the corpus itself spans minutes), every
    50th without a time, every 40th without a client address, every 30th without a status."""
    out = []
    for number, (node, row) in enumerate(data.corpus_rows()):
        event = list(row.event)
        stamp = START + dt.timedelta(minutes=61 * number)
        event[2] = None if number % 50 == 7 else stamp.isoformat(sep=" ",
                                                                 timespec="microseconds")
        event[4] = None if number % 40 == 3 else event[4]
        event[14] = None if number % 30 == 5 else event[14]
        out.append((node, Row(row.unique_id, tuple(event), row.matches)))
    return out


def insert(db, rows: list[tuple[str, Row]], batch: int = 37) -> None:
    for node in sorted({node for node, _ in rows}):
        mine = [row for n, row in rows if n == node]
        for start in range(0, len(mine), batch):
            db.insert(node, mine[start:start + batch])


def dump(db) -> dict[str, list[tuple]]:
    """Every rollup table's rows, comparable across a recount."""
    cursor = db._cursor()
    out = {}
    for upsert in rollups.UPSERTS:
        cursor.execute(f"SELECT {','.join(upsert.columns)} FROM {upsert.table}")
        out[upsert.table] = sorted(tuple(_plain(v) for v in row) for row in cursor.fetchall())
    db.conn.commit()
    return out


def _plain(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return value


def recounted(db) -> dict[str, list[tuple]]:
    db._run(lambda cursor: rollups.recount(db, cursor))
    return dump(db)


def report_of(url: str, use: bool, top: int = 10, **filters):
    return build_report(lambda: open_database(parse_target(url), read_only=True),
                        parse_filters(**filters), top, jails=(), rollups=use)


def serves(url: str, **filters) -> bool:
    db = open_database(parse_target(url), read_only=True)
    try:
        return rollup.days(db._cursor(), db.mark, parse_filters(**filters)) is not None
    finally:
        db.close()


# -- what inserts add --------------------------------------------------------------------------
def test_inserts_and_replays_add_what_a_recount_finds(url):
    rows = spread_rows()
    db = open_database(parse_target(url))
    try:
        insert(db, rows[: len(rows) // 2])
        insert(db, rows, batch=53)              # half of it a replay: stored rows are skipped
        insert(db, rows[10:40], batch=7)
        incremental = dump(db)
        assert sum(n for _, _, _, _, n, _, _ in incremental["rollup_hours"]) == len(rows)
        assert incremental == recounted(db)
        assert db.count("events") == len(rows)
    finally:
        db.close()


#: Inserts batches with the database sink and dies (kill -9) inside the transaction of the
#: batch numbered argv[3], either before its rollups are written or after, before COMMIT.
KILLER = r"""
import os, signal, sys
from modsec_tools.db import open_database, parse_target, rollups
from modsec_tools.sinks.database import DatabaseSink
from tests.test_report_rollups import batches
url, point, victim = sys.argv[1], sys.argv[2], int(sys.argv[4])
written = rollups.Tally.write
calls = [0]
def write(self, kind, cursor):
    calls[0] += 1
    if calls[0] == victim and point == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    written(self, kind, cursor)
    if calls[0] == victim and point == "after":
        os.kill(os.getpid(), signal.SIGKILL)
rollups.Tally.write = write
sink = DatabaseSink(open_database(parse_target(url)), "web1", sys.argv[3])
for rows in batches():
    assert sink.write(rows) == 0
sink.close()
"""


def batches() -> list[list[Row]]:
    rows = [row for node, row in spread_rows() if node == "web1"]
    return [rows[start:start + 29] for start in range(0, len(rows), 29)]


@pytest.mark.parametrize("point", ["before", "after"])
def test_killed_inside_a_batch_counts_it_once(url, point, tmp_path):
    """kill -9 inside a batch's transaction, then recovery writes the batches again (as
    the journal makes it): every event once, and rollups equal to a recount."""
    for victim in (1, 3):
        done = subprocess.run([sys.executable, "-c", KILLER, url, point,
                               str(tmp_path / f"db-spool-{victim}"), str(victim)],
                              cwd=REPO, env=cli_env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    db = open_database(parse_target(url))
    try:
        assert db.count("events") == 29 * 2    # the batches before the second kill's
        for rows in batches():
            db.insert("web1", rows)
        assert db.count("events") == sum(len(rows) for rows in batches())
        assert dump(db) == recounted(db)
    finally:
        db.close()


def as_node(node: str, rows: list[Row]) -> list[Row]:
    return [Row(row.unique_id, (node, *row.event[1:]), row.matches) for row in rows]


def test_two_writers_at_once(mariadb):
    """Two nodes store the same traffic at once (every rollup row is contended): their
    upserts commute, and a deadlock or lock wait is run again rather than lost."""
    if not mariadb.running:
        mariadb.start()
    name = mariadb.create_database()
    url = mariadb.url_for(name)
    rows = [row for node, row in spread_rows() if node == "web1"]
    try:
        open_database(parse_target(url)).migrate()
        failures: list[BaseException] = []

        def write(node: str) -> None:
            db = open_database(parse_target(url))
            try:
                mine = as_node(node, rows)
                for start in range(0, len(mine), 11):
                    db.insert(node, mine[start:start + 11])
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)
            finally:
                db.close()

        writers = [threading.Thread(target=write, args=(node,)) for node in ("web1", "web2")]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert not failures, failures
        db = open_database(parse_target(url))
        try:
            assert db.count("events") == 2 * len(rows)
            together = dump(db)
            assert sum(r[4] for r in together["rollup_hours"]) == 2 * len(rows)
            assert together == recounted(db)
        finally:
            db.close()
    finally:
        mariadb.drop_database(name)


# -- schema 3 to 4 -----------------------------------------------------------------------------
def test_schema_3_migrates_in_place(url, monkeypatch):
    rows = spread_rows()
    with monkeypatch.context() as old:       # this version as it was at schema 3
        old.setattr(schema, "SCHEMA_VERSION", 3)
        old.setattr(schema, "MIGRATIONS", {n: s for n, s in schema.MIGRATIONS.items() if n < 4})
        old.setattr(rollups, "tally_rows", lambda rows: rollups.Tally())
        db = open_database(parse_target(url))
        try:
            insert(db, rows[:-20])
            assert db.version() == 3 and db.table_type("rollup_hours") is None
        finally:
            db.close()
    assert not serves(url)                   # a schema-3 database: the events answer
    db = open_database(parse_target(url))
    try:
        assert db.migrate() == [4]
        insert(db, rows[-20:])               # and later inserts add to what it counted
        counted = dump(db)
        assert counted == recounted(db)
    finally:
        db.close()
    assert serves(url)
    assert figures(report_of(url, True)) == figures(report_of(url, False))


# -- the report from the rollups ---------------------------------------------------------------
SERVED = [{}, {"since": "2026-11-22", "until": "2026-11-27"}, {"since": "2026-11-25"},
          {"until": "2026-11-24T01:00:00+01:00"}]
NOT_SERVED = [{"since": "2026-11-22 12:00"}, {"until": "2026-11-27 00:00:01"},
              {"node": "web1"}, {"verdict": "blocked"}, {"client": "127.0.0.1"},
              {"rule": "942100"}, {"vhost": "localhost"},
              {"since": "2026-11-22", "vhost": "localhost"}]


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def spread(request, tmp_path_factory):
    """(URL, events and matches read back) of the spread rows, once per dialect."""
    with data.database_url(request, tmp_path_factory.mktemp("rollups")) as url:
        db = open_database(parse_target(url))
        try:
            insert(db, spread_rows())
            events, matches = data.read_back(db.conn)
        finally:
            db.close()
        yield url, events, matches


@pytest.mark.parametrize("chosen", SERVED, ids=["all", "days", "since-day", "until-day"])
@pytest.mark.parametrize("top", [3, 1000])
def test_rollup_report_equals_the_events(spread, chosen, top):
    url, events, matches = spread
    assert serves(url, **chosen)
    fast, slow = report_of(url, True, top, **chosen), report_of(url, False, top, **chosen)
    f = parse_filters(**chosen)
    selected = data.select(events, matches, f.since, f.until)
    assert figures(fast) == figures(slow) == data.expected(selected, matches, top)
    assert fast.bucket == slow.bucket and fast.bucket in ("hour", "day")
    timeline = [[b.start, b.blocked, b.detected, b.passed] for b in fast.timeline]
    assert timeline == [[b.start, b.blocked, b.detected, b.passed] for b in slow.timeline]
    first, last = fast.timeline[0].start, fast.timeline[-1].start
    assert timeline == data.timeline(selected, first, last, fast.bucket)


@pytest.mark.parametrize("chosen", NOT_SERVED, ids=lambda f: ",".join(f))
def test_other_filters_read_the_events(spread, chosen):
    url, events, matches = spread
    assert not serves(url, **chosen)
    assert figures(report_of(url, True, **chosen)) == figures(report_of(url, False, **chosen))


def test_rollups_missing_rows_are_not_read(tmp_path):
    """Rows stored beside the rollups (an older version's node, a hand-made DELETE): the
    report reads the events, and its figures stay those of the events; ``db migrate``
    counts the rollups again."""
    url = f"sqlite:///{tmp_path / 'events.db'}"
    db = open_database(parse_target(url))
    try:
        insert(db, spread_rows())
        db._run(lambda cursor: cursor.execute("DELETE FROM events WHERE id % 5 = 0"))
    finally:
        db.close()
    assert not serves(url)
    assert figures(report_of(url, True)) == figures(report_of(url, False))
    db = open_database(parse_target(url))
    try:
        assert db.migrate() == []               # counts them again
        assert dump(db) == recounted(db)
    finally:
        db.close()
    assert serves(url)


def test_report_command_over_rollups(spread, tmp_path):
    url, events, _ = spread
    (tmp_path / "empty.conf").write_text("[modsec-tools]\n")
    done = subprocess.run([sys.executable, "-m", "modsec_tools.cli", "report", "--config",
                           str(tmp_path / "empty.conf"), "--db", url, "--jails", "",
                           "--format", "json"], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f'"events": {len(events)}' in done.stdout
