"""kill -9 of ``modsec-tools ingest`` at random moments over a 20,000-entry backlog: after
the final run every entry is exactly once in every sink, byte-exact in the archive, and no
file was ever deleted before it was durable in all three sinks.

Every kill takes the ingest's whole process group (the process and the examiner workers it
started), as a crashed cron job's cgroup would; killing the main process alone is
test_ingest_recovery.py::test_kill9_of_main_process_lets_the_next_run_start. Exact crash
points (before a given sink write, during recovery) are in test_ingest_recovery.py.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from modsec_tools.audit.entry import parse_entry
from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

RUN = "r1_relevant_concurrent"
SEED = 20261128
_A_HEAD = re.compile(rb"--[0-9a-fA-F]{8,32}-A--\r?\n\[[^\]\n]*\] (\S+) ")
_LINE_ID = re.compile(rb" id=(\S+) ")


class SinkWatcher:
    """Reads the sinks between runs (ingest is dead then) and checks the invariant that
    makes kill -9 safe: an entry whose file is gone is in every sink (archive, event log,
    JSON lines, database). Also checks that the files only ever grow (fail2ban follows the
    event log: a line must never change or vanish)."""

    def __init__(self, sandbox: ih.Sandbox, expected: dict[str, ih.Copy], db_ids) -> None:
        self.sb = sandbox
        self.expected = expected
        self.db_ids = db_ids
        self.archive_ids: dict[int, str] = {}   # offset of an A boundary → id
        self.archive_scanned = 0
        self.archive_tail = b""
        self.events = b""
        self.json = b""
        self.checks = 0

    def _scan_archive(self) -> set[str]:
        try:
            with open(self.sb.archive, "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                assert size >= self.archive_scanned, "the archive shrank"
                if self.archive_tail:
                    stream.seek(self.archive_scanned - len(self.archive_tail))
                    assert stream.read(len(self.archive_tail)) == self.archive_tail, \
                        "bytes already in the archive changed"
                start = max(0, self.archive_scanned - 512)
                stream.seek(start)
                data = stream.read(size - start)
        except FileNotFoundError:
            return set()
        for match in _A_HEAD.finditer(data):
            self.archive_ids[start + match.start()] = match.group(1).decode()
        self.archive_scanned = size
        self.archive_tail = data[-4096:]
        return set(self.archive_ids.values())

    @staticmethod
    def _grown(path, before: bytes, what: str) -> bytes:
        """The file now; what it held before must still be there, unchanged."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return before
        assert data.startswith(before), f"{what} changed or vanished"
        return data

    def _scan_events(self) -> set[str]:
        self.events = self._grown(self.sb.events, self.events, "an event-log line")
        complete = self.events[:self.events.rfind(b"\n") + 1]
        return {m.group(1).decode() for m in _LINE_ID.finditer(complete)}

    def _scan_json(self) -> set[str]:
        self.json = self._grown(self.sb.json, self.json, "a JSON line")
        complete = self.json[:self.json.rfind(b"\n") + 1]
        return {json.loads(line)["unique_id"] for line in complete.splitlines()}

    def check(self) -> int:
        """Returns how many entries are done (file gone)."""
        self.checks += 1
        present = {name.rsplit("/", 1)[-1].split("-", 2)[2] for name in self.sb.left()}
        unknown = present - set(self.expected)
        assert not unknown, f"unexpected entry files: {sorted(unknown)[:5]}"
        gone = set(self.expected) - present
        archived, logged, stored = self._scan_archive(), self._scan_events(), set(self.db_ids())
        shipped = self._scan_json()
        for sink, ids in (("archive", archived), ("event log", logged),
                          ("JSON lines", shipped), ("database", stored)):
            lost = gone - ids
            assert not lost, (f"check {self.checks}: {len(lost)} entries deleted from the "
                              f"tree but not in the {sink}, e.g. {sorted(lost)[:3]}")
            foreign = ids - set(self.expected)
            assert not foreign, f"{sink}: unknown ids {sorted(foreign)[:3]}"
        assert not self.sb.quarantined(), f"quarantined: {list(self.sb.quarantined())[:5]}"
        return len(gone)


def message_counts() -> dict[str, int]:
    """Rule messages per original entry of RUN, by the original's relpath."""
    counts = {}
    for relpath, data in ih.tree_files_from_tar(RUN).items():
        counts[relpath] = len(parse_entry(data, relpath).messages)
    return counts


def verify_final(sb: ih.Sandbox, expected: dict[str, ih.Copy], conn) -> None:
    """Exactly once everywhere, byte-exact archive, matches complete, nothing left."""
    assert sb.left() == [], f"{len(sb.left())} entry files left, e.g. {sb.left()[:3]}"
    assert not sb.quarantined(), list(sb.quarantined())[:5]
    want = set(expected)

    # archive: split by the Serial reader; the file must be exactly the entries' bytes
    pieces = ih.archive_entries(sb.archive)
    order = [ih.uid_of(piece) for piece in pieces]
    assert not ih.duplicates(order), f"archive duplicates: {list(ih.duplicates(order))[:5]}"
    assert set(order) == want, (f"archive: {len(want - set(order))} missing, "
                                f"{len(set(order) - want)} unexpected")
    for piece, uid in zip(pieces, order):
        assert ih.md5(piece) == expected[uid].digest and len(piece) == expected[uid].size, \
            f"archive: {uid} differs from its file"
    assert os.path.getsize(sb.archive) == sum(c.size for c in expected.values()), \
        "archive holds bytes besides the entries"

    # event log: every line parses, one per entry
    ids = [line.id for line in sb.lines()]
    assert not ih.duplicates(ids), f"event-log duplicates: {list(ih.duplicates(ids))[:5]}"
    assert set(ids) == want, (f"event log: {len(want - set(ids))} missing, "
                              f"{len(set(ids) - want)} unexpected")

    # JSON lines: one whole object per entry
    shipped = [record["unique_id"] for record in sb.json_records()]
    assert not ih.duplicates(shipped), f"JSON duplicates: {list(ih.duplicates(shipped))[:5]}"
    assert set(shipped) == want, (f"JSON lines: {len(want - set(shipped))} missing, "
                                  f"{len(set(shipped) - want)} unexpected")

    # database: one events row per entry, all its matches rows, no orphans
    rows = ih.query(conn, "SELECT e.unique_id, COUNT(m.seq) FROM events e "
                          "LEFT JOIN matches m ON m.event_id = e.id GROUP BY e.id, e.unique_id")
    stored = [uid for uid, _ in rows]
    assert not ih.duplicates(stored), f"DB duplicates: {list(ih.duplicates(stored))[:5]}"
    assert set(stored) == want, (f"database: {len(want - set(stored))} missing, "
                                 f"{len(set(stored) - want)} unexpected")
    counts = message_counts()
    wrong = [uid for uid, n in rows if n != counts[expected[uid].original]]
    assert not wrong, f"{len(wrong)} events with a wrong number of matches rows: {wrong[:3]}"
    orphans = ih.query(conn, "SELECT COUNT(*) FROM matches m LEFT JOIN events e "
                             "ON e.id = m.event_id WHERE e.id IS NULL")[0][0]
    assert orphans == 0, f"{orphans} matches rows without their event"
    assert os.path.getsize(sb.state / "db-spool") == 0, "spool not empty at the end"


def kill_loop(sb: ih.Sandbox, watcher: SinkWatcher, kills_wanted: int, hits_wanted: int,
              rng: random.Random, top_up) -> dict:
    """Start ingest, SIGKILL it (whole group) at a random moment, check the sinks; again,
    until ``kills_wanted`` kills. A quarter of the kills come at a random time after the
    start (imports, recovery of the interrupted batch, the scan); the others a random
    0-0.5 s after the run began to commit (the event log grew), i.e. inside its batches.
    When the backlog runs dry first, ``top_up()`` adds more entries.
    Which kills land inside a batch is chance (about a third do); the loop goes on, up to
    four times ``kills_wanted``, until ``hits_wanted`` of them did, as the next run's
    recovery shows."""
    kills = finished = early = 0
    runs = 0
    while kills < kills_wanted or (_hits(sb) < hits_wanted and kills < 4 * kills_wanted):
        if not sb.left():
            top_up()
        size = _size(sb.events)
        # Every 4th run examines in worker processes (the default for backlogs); the others
        # in-process, which starts faster (the commit protocol is the same).
        args = () if runs % 4 == 3 else ("--workers", "0")
        proc = sb.popen(*args, log_name=f"run{runs:03d}.log")
        runs += 1
        if rng.random() < 0.25:
            early += 1
            deadline = time.monotonic() + rng.uniform(0.02, 1.0)
        else:
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and proc.poll() is None:
                if _size(sb.events) > max(size, 0):
                    break
                time.sleep(0.005)
            deadline = time.monotonic() + rng.uniform(0.0, 0.5)
        try:
            code = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            ih.kill_group(proc)
            kills += 1
        else:
            finished += 1
            assert code == 0, f"ingest exited {code}: " + log_tail(sb, runs - 1)
        watcher.check()
    return {"kills": kills, "early kills": early, "runs finished": finished, "runs": runs}


def _hits(sb: ih.Sandbox) -> int:
    return all_logs(sb).count("interrupted by a crash")


def _size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return -1


def log_tail(sb: ih.Sandbox, run: int) -> str:
    return (sb.logs / f"run{run:03d}.log").read_text(errors="replace")[-3000:]


def all_logs(sb: ih.Sandbox) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(sb.logs.glob("run*.log")))


def crash_scenario(tmp_path: Path, db: str, db_ids, connect, copies: int, kills_wanted: int,
                   index: bool, settings: dict[str, str],
                   launcher: tuple[str, ...] = ("-m", "modsec_tools.cli")) -> ih.Sandbox:
    corpus.require_corpus()
    print(f"\nseed={SEED} copies={copies} kills={kills_wanted} index={index} "
          f"db={db.split(':', 1)[0]}")
    rng = random.Random(SEED)
    sb = ih.Sandbox(tmp_path, db=db, index_log=tmp_path / "index.log" if index else None,
                    settings=settings, launcher=launcher)
    if index:
        (tmp_path / "index.log").touch()
    began = time.monotonic()
    expected = ih.replicate(RUN, sb.storage, copies, tag="K",
                            index_path=sb.index_log)
    made = time.monotonic()
    assert len(expected) >= copies * corpus.run_info(RUN)["audit_entries"]
    top_ups = itertools.count(1)

    def top_up() -> None:  # a fresh copy of r1 arrives
        expected.update(ih.replicate(RUN, sb.storage, 1, tag=f"T{next(top_ups)}",
                                     index_path=sb.index_log))

    watcher = SinkWatcher(sb, expected, db_ids)
    hits_wanted = max(3, kills_wanted // 10)
    stats = kill_loop(sb, watcher, kills_wanted, hits_wanted, rng, top_up)
    looped = time.monotonic()
    final = sb.run(timeout=240)
    ran = time.monotonic()
    assert watcher.check() == len(expected)
    conn = connect()
    try:
        verify_final(sb, expected, conn)
    finally:
        conn.close()
    logs = all_logs(sb) + final.stderr
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 200:][:3000]
    recovered = _hits(sb) + final.stderr.count("interrupted by a crash")
    print(f"{len(expected)} entries, {stats}, {recovered} interrupted batches completed; "
          f"replicate {made - began:.1f} s, kill loop {looped - made:.1f} s, final run "
          f"{ran - looped:.1f} s, total {time.monotonic() - began:.1f} s")
    # Some kills must have hit a batch in flight (between its journal record and its done
    # record), or the test proves little; about a third do.
    assert recovered >= hits_wanted, f"only {recovered} of {stats['kills']} kills hit a batch"
    return sb


def _sqlite(tmp_path: Path):
    db_path = tmp_path / "out" / "events.db"

    def db_ids():
        if not db_path.exists():
            return []
        conn = ih.sqlite_connect(db_path)
        try:
            return [row[0] for row in conn.execute("SELECT unique_id FROM events")]
        except Exception as exc:  # no table yet
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    return f"sqlite:///{db_path}", db_ids, lambda: ih.sqlite_connect(db_path)


#: The CLI with the journal compacted at 16 KB instead of 4 MB (every few batches).
SMALL_JOURNAL = ("-c", "import sys; import modsec_tools.pipeline.journal as j; j.COMPACT_AT = 16384; "
                 "from modsec_tools.cli import main; sys.argv[0] = 'modsec-tools'; "
                 "sys.exit(main())")


def test_kill9_during_journal_compaction(fast_tmp):
    """Copies of r1 (at least 2,448 entries), batches of 50, the journal compacted every few
    batches (write the checkpoint, fsync, rename): >= 20 kills, SQLite, index mode."""
    db, db_ids, connect = _sqlite(fast_tmp)
    sb = crash_scenario(fast_tmp, db, db_ids, connect, copies=corpus.copies_for(RUN, 2448),
                        kills_wanted=20, index=True,
                        settings={"batch_size": "50"}, launcher=SMALL_JOURNAL)
    journal = (sb.state / "journal").read_bytes()
    assert b'"type":"checkpoint"' in journal, "the journal was never compacted"
    assert len(journal) < 16384 + 20000


def test_kill9_sqlite_tree_mode(fast_tmp):
    """Copies of r1 (at least 20,000 entries), batch size 200, >= 50 kills, SQLite, tree mode."""
    db, db_ids, connect = _sqlite(fast_tmp)
    crash_scenario(fast_tmp, db, db_ids, connect, copies=corpus.copies_for(RUN, 20_000),
                   kills_wanted=50, index=False,
                   settings={"batch_size": "200"})


def test_kill9_mariadb_index_mode(fast_tmp, mariadb, mariadb_db):
    """Copies of r1 (at least 4,896 entries) announced by an index log (size + md5 checked, the
    cursor journaled), batch size 200, >= 15 kills, MariaDB."""

    def db_ids():
        return ih.mariadb_unique_ids(lambda: mariadb.connect(mariadb_db))

    crash_scenario(fast_tmp, mariadb.url_for(mariadb_db), db_ids,
                   lambda: mariadb.connect(mariadb_db), copies=corpus.copies_for(RUN, 4896),
                   kills_wanted=15, index=True,
                   settings={"batch_size": "200"})
