"""A database that cannot be used fails the run (exit 1, the file named), its rows kept in
the spool; rows the database refused (``<state_dir>/db-rejected``) are replayed by
``modsec-tools db replay-rejected`` once the cause is fixed: exactly once, and a row refused
again stays in db-rejected with its new reason."""
from __future__ import annotations

import fcntl
import os
import shutil

import pytest

from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)

REFUSE = ("Refuse1x", "Refuse2x")
KEEP = "KeepMe"


def _uid(tag: str) -> str:
    return (tag + "A" * 27)[:27]


@pytest.fixture(params=["sqlite", "mariadb"])
def any_database(request, fast_tmp) -> ih.DB:
    return ih.database_param(request, fast_tmp)


def _stored(db: ih.DB) -> list[str]:
    conn = db.connect()
    try:
        return sorted(ih._text(r[0]) for r in ih.query(conn, "SELECT unique_id FROM events"))
    finally:
        conn.close()


def _replay(sb: ih.Sandbox, expect: int) -> str:
    return sb.run(action="db replay-rejected", expect=expect).stdout


def test_rejected_rows_are_replayed_exactly_once(fast_tmp, any_database):
    db = any_database
    sb = ih.Sandbox(fast_tmp, db=db.url)
    rejected = sb.state / "db-rejected"
    sb.run(action="db init")
    ih.refuse_rows(db, True)
    ih.plant_data_entries(sb.storage, [*REFUSE, KEEP])
    sb.run(expect=1)
    assert sorted(ih.spool_ids(rejected)) == [_uid(t) for t in REFUSE]

    again = sb.run(action="db replay-rejected", expect=1)   # the cause is still there
    assert f"{rejected}: 0 stored, 0 already stored, 2 refused again" in again.stdout
    assert again.stderr.count("refused by a trigger") == 2, again.stderr
    assert sorted(ih.spool_ids(rejected)) == [_uid(t) for t in REFUSE]
    assert rejected.read_bytes().count(b"refused by a trigger") == 2

    ih.refuse_rows(db, False)
    interrupted = fast_tmp / "db-rejected.before"
    shutil.copy(rejected, interrupted)
    assert f"{rejected}: 2 stored, 0 already stored, 0 refused again" in _replay(sb, 0)
    assert ih.spool_ids(rejected) == []
    assert _stored(db) == sorted(_uid(t) for t in (*REFUSE, KEEP))

    # A replay killed after its commit, before it replaced the file: nothing twice.
    shutil.copy(interrupted, rejected)
    assert f"{rejected}: 0 stored, 2 already stored, 0 refused again" in _replay(sb, 0)
    assert _stored(db) == sorted(_uid(t) for t in (*REFUSE, KEEP))
    assert f"{rejected}: 0 stored, 0 already stored, 0 refused again" in _replay(sb, 0)


def test_replay_waits_for_the_lock_of_ingest_and_watch(fast_tmp):
    """db-rejected is replaced at the end: an ingest or watch appending to it meanwhile
    would lose its rows, so the replay takes their lock or refuses to run."""
    sb = ih.Sandbox(fast_tmp)
    sb.state.mkdir(mode=0o700)
    (sb.state / "db-rejected").write_bytes(b"")
    fd = os.open(sb.state / "modsec-tools.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"4242\n")
        fcntl.flock(fd, fcntl.LOCK_EX)
        busy = sb.run(action="db replay-rejected", expect=1)
    finally:
        os.close(fd)
    assert "(pid 4242); stop it first (systemctl stop modsec-tools)" in busy.stderr


def test_a_corrupted_sqlite_file_fails_the_run_and_keeps_the_rows(fast_tmp):
    """Not an outage: waiting will not mend it. ingest exits 1 and names the file; the
    entries still reach the archive and the event log, their rows wait in the spool and
    are stored once the file is replaced."""
    sb = ih.Sandbox(fast_tmp)
    sb.run(action="db init")
    with open(sb.db_path, "r+b") as stream:
        stream.write(b"this is no SQLite header at all")
    planted = ih.plant_data_entries(sb.storage, ["Corrupt1x", "Corrupt2x"])
    done = sb.run(expect=1)
    assert (f"database unusable (sqlite {sb.db_path}: file is not a database); its rows are "
            f"kept in {sb.state / 'db-spool'}") in done.stderr, done.stderr
    assert sorted(ih.spool_ids(sb.state / "db-spool")) == sorted(planted)
    assert sorted(line.id for line in sb.lines()) == sorted(planted)

    sb.run(expect=1)   # still unusable: still an error, nothing lost
    os.rename(sb.db_path, sb.db_path.with_suffix(".corrupt"))
    sb.run()
    assert ih.spool_ids(sb.state / "db-spool") == []
    db = ih.DB("sqlite", sb.db, lambda: ih.sqlite_connect(sb.db_path))
    assert _stored(db) == sorted(planted)
