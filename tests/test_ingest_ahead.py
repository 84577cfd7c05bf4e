"""The event log runs ahead: a batch's lines are written as soon as it is journaled, while
the batches before it are still being made durable in the other sinks (the database's
commit is the slow one), so an attack that closes meanwhile reaches fail2ban at once. Up to
UNFINISHED_BATCHES batches can be unfinished; a crash then leaves them so, and start-up
completes them, exactly once."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

from modsec_tools import config
import pytest

from modsec_tools.pipeline import ingest as ingest_module
from modsec_tools.pipeline.ingest import Pipeline
from modsec_tools.pipeline.journal import Journal
from modsec_tools.sinks.database import DatabaseSink
from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)
from tests.test_ingest_recovery import RUN, check_nothing_lost

BATCH = 10
#: three batches of BATCH entries, at least
COPIES = corpus.copies_for(RUN, 3 * BATCH)


def small_batches(root, batch_size: int = BATCH) -> ih.Sandbox:
    return ih.Sandbox(root, settings={"batch_size": str(batch_size), "workers": "0",
                                      "settle_seconds": "0"})


def run_script(script: str, sb: ih.Sandbox, *args: str,
               code: int = 9) -> subprocess.CompletedProcess:
    """Run a crash script (``python -c``) on the sandbox's configuration; it must exit
    ``code`` (9: it died like kill -9)."""
    done = subprocess.run([sys.executable, "-c", script, str(sb.config), *args], cwd=ih.REPO,
                          env=ih.cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-3000:]
    return done


def journaled(sb: ih.Sandbox) -> list[dict]:
    journal = Journal(str(sb.state / "journal"))
    try:
        return journal.records
    finally:
        journal.close()


def every_sink_once(sb: ih.Sandbox, made: dict[str, ih.Copy]) -> None:
    """Nothing left in the tree, and every entry once in every sink."""
    assert sb.left() == []
    check_nothing_lost(sb, made)
    assert len(sb.lines()) == len(made) and len(sb.archived()) == len(made)
    assert len(sb.json_records()) == len(made)


#: What watch does in a flood: batches of what closed meanwhile, here BATCH entries each,
#: far fewer than batch_size.
DRIVE_IN_BATCHES = f"""
found = sorted(pipeline.scan(), key=lambda item: item[0].name)
for n in range(0, len(found), {BATCH}):
    for ref, proof in found[n:n + {BATCH}]:
        pipeline.offer(ref, proof)
    pipeline.drain()
pipeline.finish()
"""


def drive_in_batches(pipeline: Pipeline) -> None:
    exec(DRIVE_IN_BATCHES, {"pipeline": pipeline})


@pytest.mark.parametrize("how", ["ingest", "watch"])
def test_next_batches_reach_the_event_log_while_the_database_commits(fast_tmp, monkeypatch, how):
    """Lines of the batches after the first while its database commit hangs: those of one
    more full batch (ingest: at most two batches' entries are unfinished), or of every
    small batch (watch in a flood: up to UNFINISHED_BATCHES)."""
    corpus.require_corpus()
    sb = small_batches(fast_tmp, BATCH if how == "ingest" else 10 * BATCH)
    made = ih.replicate(RUN, sb.storage, COPIES)
    expected = 2 * BATCH if how == "ingest" else \
        min(len(made), ingest_module.UNFINISHED_BATCHES * BATCH)
    release, entered = threading.Event(), threading.Event()
    real_write = DatabaseSink.write

    def slow_write(self, rows):
        entered.set()
        release.wait(30)
        return real_write(self, rows)
    monkeypatch.setattr(DatabaseSink, "write", slow_write)
    failure: list[BaseException] = []

    def ingest() -> None:
        try:
            with Pipeline(config.load(str(sb.config))) as pipeline:
                if how == "ingest":
                    pipeline.run_once()
                else:
                    drive_in_batches(pipeline)
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            failure.append(exc)
    runner = threading.Thread(target=ingest)
    runner.start()
    try:
        assert entered.wait(30)
        deadline = time.monotonic() + 10
        while len(sb.lines()) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)                             # (and no more than that)
        ahead = len(sb.lines())
    finally:
        release.set()
        runner.join(60)
    assert not failure, failure
    assert len(made) > 2 * BATCH
    assert ahead == expected
    assert sb.left() == []
    check_nothing_lost(sb, made)
    assert len(sb.lines()) == len(made)


#: The database's first commit never ends; the process dies (like kill -9) right after the
#: second batch's lines are written: batch 1 has its lines, archive and JSON lines but no
#: rows, batch 2 only its lines, and the event log holds both batches past batch 1's mark.
CRASH_AHEAD = r"""
import os, sys, threading
from modsec_tools import config
from modsec_tools.appendfile import AppendFile
from modsec_tools.pipeline import ingest
from modsec_tools.sinks.database import DatabaseSink
settings = config.load(sys.argv[1])
DatabaseSink.write = lambda self, rows: threading.Event().wait()
real_append = AppendFile.append
appends = []
def append(self, data):
    real_append(self, data)
    if self.path == settings.event_log:
        appends.append(1)
        if len(appends) == 2:
            os._exit(9)
AppendFile.append = append
ingest.Pipeline(settings).open().run_once()
"""


def test_crash_with_two_batches_unfinished_completes_both_exactly_once(fast_tmp):
    corpus.require_corpus()
    sb = small_batches(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    run_script(CRASH_AHEAD, sb)
    assert len(sb.left()) == len(made) and len(sb.lines()) == 2 * BATCH
    assert [(r["type"], r["seq"]) for r in journaled(sb)] == [("batch", 1), ("batch", 2)]
    rerun = sb.run()
    for seq in (1, 2):
        assert f"completing batch {seq} interrupted by a crash ({BATCH} files)" in rerun.stderr
    every_sink_once(sb, made)


#: Batch 1's database commit waits until five batches' lines are written; batches 2-5 (at
#: least) then make one group, whose archive write dies after writing FRACTION of it (like
#: kill -9): their marks records were journaled before it, each where its batch begins once
#: those before it are written.
CRASH_IN_GROUP_AT = r"""
import os, sys, threading
from modsec_tools import config
from modsec_tools.appendfile import AppendFile
from modsec_tools.pipeline import ingest
from modsec_tools.sinks.database import DatabaseSink
settings = config.load(sys.argv[1])
five = threading.Event()
real_write = DatabaseSink.write
def write(self, rows):
    five.wait(60)
    return real_write(self, rows)
DatabaseSink.write = write
real_append = AppendFile.append
lines, archived = [], []
def append(self, data):
    if self.path == settings.event_log:
        real_append(self, data)
        lines.append(1)
        if len(lines) == 5:
            five.set()
        return
    if self.path == settings.archive:
        archived.append(1)
        if len(archived) == 2:
            blob = b"".join(data) if isinstance(data, list) else data
            real_append(self, blob[:int(len(blob) * FRACTION)])
            os._exit(9)
    real_append(self, data)
AppendFile.append = append
pipeline = ingest.Pipeline(settings).open()
""" + DRIVE_IN_BATCHES


def crash_in_group(fraction: float) -> str:
    return CRASH_IN_GROUP_AT.replace("FRACTION", repr(fraction))


CRASH_IN_GROUP = crash_in_group(0.5)


def test_crash_while_a_group_of_batches_is_written_completes_each_exactly_once(fast_tmp):
    corpus.require_corpus()
    sb = small_batches(fast_tmp, 10 * BATCH)
    made = ih.replicate(RUN, sb.storage, corpus.copies_for(RUN, 8 * BATCH))
    run_script(CRASH_IN_GROUP, sb)
    records = journaled(sb)
    assert [r["seq"] for r in records if r["type"] == "done"] == [1]
    unfinished = [r["seq"] for r in records if r["type"] == "batch"][1:]
    late = [r["seq"] for r in records if r["type"] == "marks"]
    assert len(unfinished) >= 4 and late[:4] == [2, 3, 4, 5], (unfinished, late)
    assert BATCH < len(sb.archived()) < len(made)           # batch 1 and part of the group
    rerun = sb.run()
    for seq in unfinished:
        assert f"completing batch {seq} interrupted by a crash" in rerun.stderr
    every_sink_once(sb, made)


#: Start-up that dies (like kill -9) right after an append to the sink whose path setting
#: is SINK that holds an entry of batch SEQ.
CRASH_IN_RECOVERY_AT = r"""
import os, sys
from modsec_tools import config
from modsec_tools.appendfile import AppendFile
from modsec_tools.pipeline import ingest
from modsec_tools.pipeline.journal import Journal, batch_entries
settings = config.load(sys.argv[1])
journal = Journal(os.path.join(settings.state_dir, "journal"))
batch = next(r for r in journal.records if r["type"] == "batch" and r["seq"] == SEQ)
journal.close()
ids = [e.path.rsplit("/", 1)[-1].split("-", 2)[2].encode() for e in batch_entries(batch)]
real_append = AppendFile.append
def append(self, data):
    real_append(self, data)
    blob = data if isinstance(data, bytes) else b"".join(data)
    if self.path == settings.SINK and any(i in blob for i in ids):
        os._exit(9)
AppendFile.append = append
ingest.Pipeline(settings).open()
"""


def crash_in_recovery_at(sink: str, seq: int) -> str:
    return CRASH_IN_RECOVERY_AT.replace("SINK", sink).replace("SEQ", str(seq))


#: After CRASH_AHEAD, start-up dies right after appending batch 2's entries to the archive:
#: batch 2 had no mark there (it was journaled while batch 1 was writing it).
CRASH_IN_RECOVERY = crash_in_recovery_at("archive", 2)


def test_crash_while_completing_a_batch_without_marks_completes_it_exactly_once(fast_tmp):
    """Recovery journals what it is about to write to such a batch's sinks (a plan) before
    writing: a second crash then finds the batch's entries there, and does not append them
    again."""
    corpus.require_corpus()
    sb = small_batches(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    run_script(CRASH_AHEAD, sb)
    done = run_script(CRASH_IN_RECOVERY, sb)
    assert "completing batch 2 interrupted by a crash" in done.stderr
    assert len(sb.archived()) == 2 * BATCH
    rerun = sb.run()
    assert "completing batch 2 interrupted by a crash" in rerun.stderr
    every_sink_once(sb, made)


def test_a_sink_configured_after_a_crash_gets_the_unfinished_batches_once(fast_tmp):
    """JSON lines turned on between the crash and the start-up: its file has none of the
    unfinished batches (nor their lengths in the journal), and a crash while they are written
    there does not make the next start-up write them again."""
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp, settings={"batch_size": str(BATCH), "workers": "0",
                                        "settle_seconds": "0", "json_log": ""})
    made = ih.replicate(RUN, sb.storage, COPIES)
    crash_in_json = crash_in_recovery_at("json_log", 2)
    for script, json_log in ((CRASH_AHEAD, ""), (crash_in_json, str(sb.json))):
        sb.write_config(json_log=json_log)
        run_script(script, sb)
    assert len(sb.json_records()) == 2 * BATCH              # batches 1 and 2, when it died
    sb.run()
    every_sink_once(sb, made)
