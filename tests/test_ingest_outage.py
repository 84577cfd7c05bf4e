"""MariaDB outages during ``modsec-tools ingest``: the archive and the event log keep
advancing, database rows go to ``<state_dir>/db-spool`` (durably, before the files are
deleted), and are replayed once the server is back: nothing lost, nothing duplicated, one
clear log line when it goes down and one when it comes back."""
from __future__ import annotations

import os
import time

import pytest

from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)

DOWN = "database unreachable, spooling events to "


def _db(server) -> ih.DB:
    return ih.DB("mariadb", server.url, server.connect)


def _stored(server) -> list[str]:
    return ih.mariadb_unique_ids(server.connect)


def _no_secret(server, text: str) -> None:
    assert server.password not in text, "the database password appears in the log"


def test_outage_between_runs_spools_then_replays(fast_tmp, mariadb_private):
    """cron runs: one with the server up, two while it is stopped (entries keep arriving),
    one after it is back."""
    corpus.require_corpus()
    server = mariadb_private
    sb = ih.Sandbox(fast_tmp, db=server.url)
    spool = sb.state / "db-spool"
    stages = {"up": ("r2_auditengine_on_concurrent",), "down1": ("r7_pl2_concurrent_noremoteip",),
              "down2": ("r3_json_concurrent",)}
    want: dict[str, ih.Original] = {}
    arrived: dict[str, set[str]] = {}

    def arrive(stage: str) -> None:
        ih.merge_runs(fast_tmp / stage, sb.storage, stages[stage])
        found = ih.originals(sb.storage)
        arrived[stage] = set(found)
        want.update(found)

    arrive("up")
    first = sb.run()
    assert DOWN not in first.stderr
    assert sorted(_stored(server)) == sorted(arrived["up"])
    assert ih.spool_ids(spool) == []

    server.stop()
    logs = []
    for stage in ("down1", "down2"):
        arrive(stage)
        done = sb.run()  # spooling is not an error: exit 0
        logs.append(done.stderr)
        assert done.stderr.count(DOWN) == 1, done.stderr  # one line per outage and run
        assert f"{DOWN}{spool}: mysql modsec@127.0.0.1/" in done.stderr
        assert f"{len(arrived[stage])} spooled for the database" in done.stderr
        ih.check_tree_empty(sb)  # deleted ...
        spooled = ih.spool_ids(spool)  # ... only once their rows were in the spool
        assert not ih.duplicates(spooled)
        assert set(spooled) == arrived["down1"] | (arrived["down2"] if stage == "down2"
                                                   else set())
        ih.check_archive(sb, want)  # archive and event log kept advancing
        ih.check_event_log(sb, want)

    server.start()
    back = sb.run()
    logs.append(back.stderr)
    replayed = len(arrived["down1"]) + len(arrived["down2"])
    assert f"database: replayed {replayed} spooled events" in back.stderr, back.stderr
    assert DOWN not in back.stderr
    assert os.path.getsize(spool) == 0
    ih.check_database(_db(server), want, tuple(r for runs in stages.values() for r in runs))
    ih.check_archive(sb, want)
    ih.check_event_log(sb, want)
    for text in logs:
        _no_secret(server, text)

    again = sb.run()  # nothing is replayed twice
    assert "replayed" not in again.stderr
    assert sorted(_stored(server)) == sorted(want)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_server_down_mid_run(fast_tmp, mariadb_private, how):
    """mariadbd stopped (SIGTERM, clean shutdown) or killed (SIGKILL, then InnoDB recovery)
    while ingest works through some 7,400 entries in batches of 50; while it is down, entries are
    still archived, logged and deleted, their rows spooled first; it comes back and the
    spool is replayed, by the same run when it retries in time, else by the next one."""
    corpus.require_corpus()
    server = mariadb_private
    batch = 50
    sb = ih.Sandbox(fast_tmp, db=server.url, settings={"batch_size": str(batch),
                                                        "workers": "0"})
    spool = sb.state / "db-spool"
    expected = ih.replicate("r1_relevant_concurrent", sb.storage,
                            corpus.copies_for("r1_relevant_concurrent", 7344), tag="Out")
    proc = sb.popen(log_name="ingest.log")
    try:
        _wait(lambda: _lines(sb) >= 600 or proc.poll() is not None, 60, "600 event lines")
        assert proc.poll() is None, "ingest finished before the outage"
        server.stop() if how == "stop" else server.kill()
        # From here the server is gone: whatever leaves the tree now had its rows spooled,
        # except at most the one batch whose insert committed just before.
        present_at_kill = set(sb.left())
        down_at = _lines(sb)
        # While it is down: files keep going (archived, logged), their rows spooled first.
        samples = 0
        while _lines(sb) < down_at + 800 and proc.poll() is None:
            left = set(sb.left())
            spooled = set(ih.spool_ids(spool))
            archived = set(ih.archive_ids_fast(sb.archive))
            gone = {_uid(p) for p in present_at_kill - left}
            # at most the batch in flight at the kill went to the database instead
            unspooled = gone - spooled
            assert len(unspooled) <= batch, f"{len(unspooled)} deleted, not spooled"
            assert gone <= archived, "deleted before archived"
            samples += 1
            time.sleep(0.05)
        advanced = _lines(sb) - down_at
        server.start()
        code = proc.wait(240)
    finally:
        if proc.poll() is None:
            ih.kill_group(proc)
    log = (sb.logs / "ingest.log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert advanced >= 800 or samples > 0, f"event log advanced by {advanced} while down"
    assert log.count(DOWN) == 1, log[-3000:]
    same_run = "database is back: mysql modsec@127.0.0.1/" in log
    if not same_run:  # the run ended before its next retry: the next run replays
        nxt = sb.run()
        log += nxt.stderr
        assert "database: replayed" in nxt.stderr, nxt.stderr
    else:
        assert "database: replayed" in log
    print(f"\n{advanced} events while down ({samples} samples); replayed by the "
          f"{'same' if same_run else 'next'} run")
    _no_secret(server, log)
    assert os.path.getsize(spool) == 0
    stored = _stored(server)
    assert not ih.duplicates(stored), list(ih.duplicates(stored))[:5]
    assert set(stored) == set(expected), (len(set(expected) - set(stored)),
                                          len(set(stored) - set(expected)))
    ih.check_tree_empty(sb)
    ids = [line.id for line in sb.lines()]
    assert not ih.duplicates(ids) and set(ids) == set(expected)
    archived = [ih.uid_of(piece) for piece in sb.archived()]
    assert not ih.duplicates(archived) and set(archived) == set(expected)


def _uid(relpath: str) -> str:
    return relpath.rsplit("/", 1)[-1].split("-", 2)[2]


def _lines(sb: ih.Sandbox) -> int:
    try:
        with open(sb.events, "rb") as stream:
            return stream.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_server_down_from_the_first_run(fast_tmp, mariadb_private):
    """The database is down before ingest ever created its schema: everything is spooled,
    and the first run after it is back creates the schema and replays the spool."""
    corpus.require_corpus()
    server = mariadb_private
    run = "r7_pl2_concurrent_noremoteip"
    sb = ih.Sandbox(fast_tmp, db=server.url)
    ih.merge_runs(fast_tmp, sb.storage, (run,))
    want = ih.originals(sb.storage)
    server.stop()
    down = sb.run()
    assert down.stderr.count(DOWN) == 1 and f"{len(want)} spooled" in down.stderr
    assert sorted(ih.spool_ids(sb.state / "db-spool")) == sorted(want)
    ih.check_tree_empty(sb)
    server.start()
    assert _stored(server) == []  # no schema yet
    back = sb.run()
    assert f"database: replayed {len(want)} spooled events" in back.stderr, back.stderr
    ih.check_database(_db(server), want, (run,))
    _no_secret(server, down.stderr + back.stderr)


BUSY = "database busy (it kept giving the transaction up), spooling events to "


def test_a_transaction_the_server_keeps_giving_up_is_spooled_not_rejected(fast_tmp,
                                                                          mariadb_private):
    """Another session holds the rollup rows a batch adds to (as another server of a fleet
    can, or a report's recount): each attempt ends in a lock wait timeout. That says nothing
    against the rows: they wait in the spool, as in an outage, and are stored once the
    lock is gone; none goes to db-rejected."""
    corpus.require_corpus()
    server = mariadb_private
    server.sql("SET GLOBAL innodb_lock_wait_timeout = 1")
    sb = ih.Sandbox(fast_tmp, db=server.url)
    first = ih.replicate("r3_json_concurrent", sb.storage, 1, tag="Ca")
    sb.run()
    second = ih.replicate("r3_json_concurrent", sb.storage, 1, tag="Cb")  # the same hours
    blocker = server.connect()
    try:
        with blocker.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT * FROM rollup_hours FOR UPDATE")
            assert cursor.fetchall()
            held = sb.run()
    finally:
        blocker.rollback()
        blocker.close()
    assert held.stderr.count(BUSY) == 1, held.stderr
    assert f"{len(second)} spooled for the database" in held.stderr
    assert "refused" not in held.stderr
    assert set(ih.spool_ids(sb.state / "db-spool")) == set(second)
    assert not (sb.state / "db-rejected").exists() or \
        (sb.state / "db-rejected").stat().st_size == 0
    back = sb.run()
    assert f"database: replayed {len(second)} spooled events" in back.stderr, back.stderr
    assert sorted(_stored(server)) == sorted({**first, **second})
