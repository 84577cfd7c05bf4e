"""Crashes at exact points of the batch protocol (a subprocess that dies with ``os._exit``
right before a given sink write), then what start-up recovery must guarantee: every entry
whose file is gone is in every sink, once; nothing deleted unarchived."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modsec_tools import config
from modsec_tools.appendfile import AppendFile
from modsec_tools.pipeline.ingest import PARALLEL_SINKS_FROM, Pipeline
from modsec_tools.pipeline.journal import Journal
from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)

RUN = "r7_pl2_concurrent_noremoteip"
#: Enough copies of it for as many entries as the full run has (184): one default batch,
#: and more than two of the threaded ones.
COPIES = corpus.copies_for(RUN, 184)

#: Runs the pipeline in-process and dies (like kill -9: no cleanup, no done record) at the
#: first write to the named sink.
CRASHER = r"""
import os, sys
from modsec_tools import config
from modsec_tools.pipeline import ingest
from modsec_tools.appendfile import AppendFile
settings = config.load(sys.argv[1])
sink = {"archive": settings.archive, "events": settings.event_log,
        "json": settings.json_log}[sys.argv[2]]
real_append = AppendFile.append
def append(self, data):
    if self.path == sink:
        os._exit(9)
    return real_append(self, data)
AppendFile.append = append
ingest.Pipeline(settings).open().run_once()
"""


def crash_before(sb: ih.Sandbox, sink: str) -> None:
    done = subprocess.run([sys.executable, "-c", CRASHER, str(sb.config), sink], cwd=ih.REPO,
                          env=ih.cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr[-2000:]


def check_nothing_lost(sb: ih.Sandbox, made: dict[str, ih.Copy],
                       changed: frozenset[str] = frozenset()) -> None:
    """Every entry whose file is gone is in every sink; no sink holds an entry twice, except
    that an entry ``changed`` after it was journaled may be there in both versions."""
    present = {path.rsplit("/", 1)[-1].split("-", 2)[2] for path in sb.left()}
    archived = [ih.uid_of(piece) for piece in sb.archived()]
    logged = [line.id for line in sb.lines()]
    shipped = [record["unique_id"] for record in sb.json_records()]
    conn = ih.sqlite_connect(sb.db_path)
    try:
        stored = [row[0] for row in conn.execute("SELECT unique_id FROM events")]
    finally:
        conn.close()
    for sink, ids in (("archive", archived), ("event log", logged), ("JSON lines", shipped),
                      ("database", stored)):
        twice = set(ih.duplicates(ids)) - changed
        assert not twice, f"{sink}: {len(twice)} duplicated, e.g. {sorted(twice)[:3]}"
        lost = set(made) - present - set(ids)
        assert not lost, (f"{len(lost)} deleted from the tree but not in the {sink}, e.g. "
                          f"{sorted(lost)[:3]}")


@pytest.mark.parametrize("sink", ["archive", "events", "json"])
def test_crash_inside_a_batch_is_completed_exactly_once(fast_tmp, sink):
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    crash_before(sb, sink)
    assert len(sb.left()) == len(made)  # nothing deleted before the batch was done
    done = sb.run()
    assert f"completing batch 1 interrupted by a crash ({len(made)} files)" in done.stderr
    assert sb.left() == []
    check_nothing_lost(sb, made)
    pieces = sb.archived()
    assert [ih.md5(p) for p in pieces] == [made[ih.uid_of(p)].digest for p in pieces]
    assert len(sb.lines()) == len(made)


def _modify_in_place(sb: ih.Sandbox, made) -> tuple[list[str], frozenset[str]]:
    """One byte of the journaled bytes flipped: same inode, another CRC."""
    _flip(sb.storage / sb.left()[0])
    return [], frozenset({_uid(sb.left()[0])})


def _append_in_place(sb: ih.Sandbox, made) -> tuple[list[str], frozenset[str]]:
    """Bytes appended after the journaled ones (those are still there, unchanged)."""
    with open(sb.storage / sb.left()[0], "ab") as stream:
        stream.write(b"\n")
    return [], frozenset({_uid(sb.left()[0])})


def _uid(relpath: str) -> str:
    return relpath.rsplit("/", 1)[-1].split("-", 2)[2]


def _flip(path, offset: int = 100) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)[0]
        stream.seek(offset)
        stream.write(bytes([byte ^ 0x20]))


def _lower_max_entry_size(sb: ih.Sandbox, made) -> tuple[list[str], frozenset[str]]:
    smallest = min(c.size for c in made.values())
    return ["--max-entry-size", str(smallest)], frozenset()  # bigger entries read short


RECOVERY_CASES = [
    pytest.param("archive", _modify_in_place, id="archive-entry-modified-in-place"),
    pytest.param("events", _modify_in_place, id="events-entry-modified-in-place"),
    pytest.param("archive", _append_in_place, id="archive-entry-appended-to"),
    pytest.param("events", _append_in_place, id="events-entry-appended-to"),
    pytest.param("archive", _lower_max_entry_size, id="archive-max-entry-size-lowered"),
    pytest.param("events", _lower_max_entry_size, id="events-max-entry-size-lowered"),
]


@pytest.mark.parametrize("sink, change", RECOVERY_CASES)
def test_recovery_never_deletes_an_entry_it_skipped(fast_tmp, sink, change):
    """Between the crash and the restart, a journaled entry no longer reads as it did.
    (Regression: recovery skipped it, then unlinked every file of the batch, the skipped one
    included: deleted unarchived; and when the crash came after the archive append, the rest
    of the batch was appended again, every other entry archived twice.)"""
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    crash_before(sb, sink)
    assert len(sb.left()) == len(made)
    args, changed = change(sb, made)
    done = sb.run(*args, expect=None)
    assert "Traceback" not in done.stderr
    check_nothing_lost(sb, made, changed)


#: Runs start-up recovery only, and dies at its first unlink (after the done record).
CRASH_AT_FIRST_UNLINK = r"""
import os, sys
from modsec_tools import config
from modsec_tools.pipeline import ingest
from modsec_tools.tree import storage
settings = config.load(sys.argv[1])
def remove(self, entries):
    os._exit(9)
storage.StorageTree.remove = remove
ingest.Pipeline(settings).open()
"""


def test_second_crash_during_recovery_deletions_keeps_skipped_entries(fast_tmp):
    """Crash inside a batch; one of its entries is changed; the recovering run skips it
    (left in place) but dies while unlinking the others; the next run must still not
    delete the skipped entry, which no sink holds. (Regression: the skipped entries were
    kept only in memory, and the next start-up's deletions took them.)"""
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    crash_before(sb, "archive")
    victim = sb.storage / sb.left()[0]
    _flip(victim)
    died = subprocess.run([sys.executable, "-c", CRASH_AT_FIRST_UNLINK, str(sb.config)],
                          cwd=ih.REPO, env=ih.cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert died.returncode == 9, died.stderr[-2000:]
    assert "cannot be read as it was on recovery" in died.stderr and victim.exists()
    sb.run(expect=None)
    check_nothing_lost(sb, made)


def _lock_holders(lock: str) -> list[int]:
    """Processes with ``lock`` open (any descriptor)."""
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == lock:
                    holders.append(int(pid))
                    break
        except OSError:
            continue
    return holders


def test_kill9_of_main_process_lets_the_next_run_start(fast_tmp):
    """kill -9 of the ingest process alone (OOM killer, a crash; no process group kill):
    its examiner workers (a 2,448-entry backlog is examined in worker processes) must not
    live on holding the instance lock, or every later run fails with "another modsec-tools
    ... holds"."""
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp, settings={"workers": "2", "batch_size": "100"})
    made = ih.replicate("r1_relevant_concurrent", sb.storage,
                        corpus.copies_for("r1_relevant_concurrent", 2448))
    proc = sb.popen(log_name="killed.log")
    try:
        deadline = time.monotonic() + 60
        while not (sb.events.exists() and sb.events.stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, \
                (sb.logs / "killed.log").read_text()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # the main process only
        proc.wait()
        time.sleep(0.5)
        holders = _lock_holders(str(sb.state / "modsec-tools.lock"))
        done = sb.run(expect=None, timeout=240)
    finally:
        ih.kill_group(proc)  # whatever survived
    assert not holders, f"processes of the killed ingest still hold the lock: {holders}"
    assert done.returncode == 0, done.stderr[-2000:]
    assert sb.left() == []
    check_nothing_lost(sb, made)


@pytest.mark.parametrize("sink", ["archive", "events"])
def test_crash_then_logrotate_then_restart_loses_nothing(fast_tmp, sink):
    """cron ingest is killed inside a batch; logrotate (create) rotates the archive and the
    event log; the next ingest completes the batch. Across the rotated and the new files,
    every entry is there exactly once. (Regression: a rotated file was taken as proof the
    batch was done, and the whole batch was deleted with no archive entry or event line.)"""
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    crash_before(sb, sink)
    for path in (sb.archive, sb.events):  # logrotate: rename, then create an empty file
        os.rename(path, f"{path}.1")
        open(path, "wb").close()
    sb.run(expect=None)
    assert sb.left() == []
    archived = [ih.uid_of(piece) for path in (sb.archive, Path(f"{sb.archive}.1"))
                for piece in ih.archive_entries(path)]
    logged = [line.id for path in (sb.events, Path(f"{sb.events}.1"))
              for line in ih.event_lines(path)]
    for name, ids in (("archive", archived), ("event log", logged)):
        assert not ih.duplicates(ids), f"{name}: duplicates"
        assert set(ids) == set(made), f"{name}: {len(set(made) - set(ids))} entries lost"


def threaded_sandbox(root) -> ih.Sandbox:
    """Batches large enough for the threads: files written while the database commits,
    entries deleted while the next batch commits (smaller ones do both in line)."""
    return ih.Sandbox(root, settings={"batch_size": str(PARALLEL_SINKS_FROM), "workers": "0"})


def rerun_completes(sb: ih.Sandbox, made: dict[str, ih.Copy], batch: int) -> None:
    """The next run completes the interrupted ``batch``: every entry once in every sink,
    none left in the tree."""
    rerun = sb.run()
    assert f"completing batch {batch} interrupted by a crash ({PARALLEL_SINKS_FROM} files)" \
        in rerun.stderr
    assert sb.left() == []
    check_nothing_lost(sb, made)
    assert len(sb.lines()) == len(made) and len(sb.archived()) == len(made)


#: Like CRASHER, but batch 1's deletions never finish (the removal threads hang on their first
#: slice) and the process dies at batch 2's archive write: the journal holds batch 1 done and
#: batch 2 unfinished.
CRASH_WHILE_LEAVING = r"""
import os, sys, threading
from modsec_tools import config
from modsec_tools.pipeline import ingest
from modsec_tools.tree import removal
from modsec_tools.appendfile import AppendFile
settings = config.load(sys.argv[1])
removal.Removal._remove_all = staticmethod(lambda tree, entries: threading.Event().wait())
real_append = AppendFile.append
appends = []
def append(self, data):
    if self.path == settings.archive:
        appends.append(len(data))
        if len(appends) == 2:
            os._exit(9)
    return real_append(self, data)
AppendFile.append = append
ingest.Pipeline(settings).open().run_once()
"""


def test_crash_while_the_previous_batch_is_being_deleted(fast_tmp):
    """Start-up deletes what is left of the last batches done as well as of the unfinished
    one, after completing it: every entry once in every sink, none left."""
    corpus.require_corpus()
    sb = threaded_sandbox(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    done = subprocess.run([sys.executable, "-c", CRASH_WHILE_LEAVING, str(sb.config)],
                          cwd=ih.REPO, env=ih.cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 9, done.stderr[-2000:]
    assert len(sb.left()) == len(made)  # batch 1's deletion never happened
    journal = Journal(str(sb.state / "journal"))
    records = journal.records
    journal.close()
    # later batches may have been journaled (and their lines written) while batch 2 was
    # finishing; only batch 1 is done
    journaled = sorted(r["seq"] for r in records if r["type"] == "batch")
    assert [r["seq"] for r in records if r["type"] == "done"] == [1]
    assert journaled == list(range(1, len(journaled) + 1)) and len(journaled) >= 2, journaled
    rerun_completes(sb, made, batch=2)


def test_a_failing_archive_write_stops_the_batch_before_any_deletion(fast_tmp, monkeypatch):
    """The archive is written by a second thread while the database commits: its failure
    (here ENOSPC at fdatasync) must still end the batch before its done record and before
    any deletion; the next run completes the batch, everything once."""
    corpus.require_corpus()
    sb = threaded_sandbox(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    settings = config.load(str(sb.config))
    real_sync = AppendFile.sync

    def sync(self):
        if self.path == settings.archive:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_sync(self)
    monkeypatch.setattr(AppendFile, "sync", sync)
    with Pipeline(settings) as pipeline, pytest.raises(OSError, match="No space left"):
        pipeline.run_once()
    assert len(sb.left()) == len(made)
    monkeypatch.undo()
    rerun_completes(sb, made, batch=1)
