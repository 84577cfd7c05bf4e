"""A crash while start-up completes what an earlier crash interrupted, and the failures that
can make that layout differ from the journaled one: an entry that can no longer be read as
it was journaled (its owner, the web user, changed it), a batch's sinks never marked, a
finishing failure that a status read caught. The next start-up must still leave every entry
once in every sink."""
from __future__ import annotations

import os

import pytest

from modsec_tools.appendfile import AppendFile, Position
from modsec_tools.pipeline.journal import Journal, RecordLog, batch_entries
from modsec_tools.sinks.eventlog import EventLine, EventLogSink
from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)
from tests.test_ingest_ahead import (BATCH, COPIES, CRASH_AHEAD, CRASH_IN_RECOVERY,
                                     crash_in_group, crash_in_recovery_at, journaled,
                                     run_script, small_batches)
from tests.test_ingest_recovery import RUN, check_nothing_lost


def change_entry(sb: ih.Sandbox, seq: int, which: int) -> str:
    """The web user rewrites one entry of batch ``seq`` after it was journaled: recovery
    can no longer take it (its CRC differs) and leaves it in the tree, where it stays (its
    A and Z boundaries differ now: it looks like an entry still being written)."""
    record = next(r for r in journaled(sb) if r["type"] == "batch" and r["seq"] == seq)
    entry = batch_entries(record)[which]
    path = sb.storage / entry.path.lstrip("/")
    data = bytearray(path.read_bytes())
    data[5] ^= 1
    path.write_bytes(bytes(data))
    return entry.path


def check_kept_whole(sb: ih.Sandbox, made: dict[str, ih.Copy], changed: str) -> None:
    """Every other entry once in every sink; the changed one in the tree."""
    assert sb.left() == [changed.lstrip("/")]
    check_nothing_lost(sb, made)
    pieces = sb.archived()
    assert len(pieces) == len({ih.uid_of(piece) for piece in pieces}) == len(made) - 1
    for piece in pieces:
        original = made[ih.uid_of(piece)]
        assert ih.md5(piece) == original.digest and len(piece) == original.size
    assert sb.archive.stat().st_size == sum(map(len, pieces)), "bytes besides the entries"


@pytest.mark.parametrize("which", [0, -3, -1])
def test_an_entry_changed_then_a_crash_during_recovery(fast_tmp, which):
    """Batch 2 (its lines written, nothing else) loses one entry; start-up writes the others
    to the archive without it and dies there. The archive then differs from batch 2's
    journaled layout: the next start-up goes by what the first one planned."""
    corpus.require_corpus()
    sb = small_batches(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    run_script(CRASH_AHEAD, sb)
    changed = change_entry(sb, 2, which)
    run_script(CRASH_IN_RECOVERY, sb)
    assert len(sb.archived()) == 2 * BATCH - 1
    sb.run()
    check_kept_whole(sb, made, changed)


#: Start-up whose read of one entry of batch 2 fails once (EIO, EMFILE...): it writes the
#: others to the archive without it, and dies right after that.
UNREADABLE_ONCE_THEN_CRASH = r"""
import errno, os, sys
from modsec_tools.pipeline.journal import Journal, batch_entries
from modsec_tools.tree.storage import StorageTree
state = sys.argv[2]
journal = Journal(os.path.join(state, "journal"))
batch = next(r for r in journal.records if r["type"] == "batch" and r["seq"] == 2)
journal.close()
victim = batch_entries(batch)[3].path
real_read = StorageTree.read
def read(self, ref, max_size):
    if ref.relpath == victim:
        raise OSError(errno.EIO, "Input/output error")
    return real_read(self, ref, max_size)
StorageTree.read = read
""" + crash_in_recovery_at("archive", 2)


def test_an_entry_unreadable_once_then_a_crash_during_recovery(fast_tmp):
    """The plan names the entry it left out: the next start-up, which can read it again,
    appends it after the others, instead of taking the plan as the whole batch (and
    deleting an entry the archive never got)."""
    corpus.require_corpus()
    sb = small_batches(fast_tmp)
    made = ih.replicate(RUN, sb.storage, COPIES)
    run_script(CRASH_AHEAD, sb)
    done = run_script(UNREADABLE_ONCE_THEN_CRASH, sb, str(sb.state))
    assert "cannot be read as it was on recovery" in done.stderr
    plans = [r for r in journaled(sb) if r["type"] == "plan" and r["sink"] == "archive"]
    assert len(plans[-1]["left"]) == 1
    sb.run()
    assert sb.left() == []
    check_nothing_lost(sb, made)
    assert len(sb.archived()) == len(made)


def test_a_fragment_that_stays_is_followed_by_a_new_line(tmp_path):
    """An entry cut by the crash whose rest cannot be produced (its file is unreadable now):
    the next entry must still begin a line, or fail2ban would read one merged line and the
    Serial reader would miss the next entry's boundary."""
    lines = [b"line a\n", b"line b\n", b"line c\n"]
    sink = EventLogSink(str(tmp_path / "events.log"), EventLine())
    start = sink.mark()
    sink.write([lines[0], lines[1][:2]])
    plans = []
    sink.recover(start, [(7, lines[0]), (7, None), (7, lines[2])],
                 lambda *planned: plans.append(planned))
    sink.close()
    assert (tmp_path / "events.log").read_bytes() == b"line a\nli\nline c\n"
    assert plans == [([start[0], 10], [(2, 0, 7)], [1])]


def test_a_group_after_a_changed_entry_then_a_crash_during_recovery(fast_tmp):
    """Batch 3's archive mark was counted with batch 2's entry that recovery then could not
    take: batch 3 begins earlier in the archive than journaled. A crash right after start-up
    wrote it must not make the next one write it again."""
    corpus.require_corpus()
    sb = small_batches(fast_tmp, 10 * BATCH)
    made = ih.replicate(RUN, sb.storage, COPIES)
    run_script(crash_in_group(0.0), sb)                # dies before the group's archive
    records = journaled(sb)
    assert [r["seq"] for r in records if r["type"] == "marks"][:2] == [2, 3]
    changed = change_entry(sb, 2, 0)
    run_script(crash_in_recovery_at("archive", 3), sb)
    assert len(sb.archived()) == 3 * BATCH - 1
    sb.run()
    check_kept_whole(sb, made, changed)


#: Batch 1's archive write fills the disk halfway. A status read (as watch makes every few
#: seconds, catching OSError) takes that failure; then batch 2 comes.
FAIL_THEN_READ_STATUS = r"""
import errno, os, sys
from modsec_tools import config
from modsec_tools.appendfile import AppendFile
from modsec_tools.pipeline import ingest
settings = config.load(sys.argv[1])
real_append = AppendFile.append
def append(self, data):
    if self.path == settings.archive:
        joined = b"".join(data)
        real_append(self, joined[:len(joined) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    real_append(self, data)
AppendFile.append = append
pipeline = ingest.Pipeline(settings).open()
found = sorted(pipeline.scan(), key=lambda item: item[0].name)[:20]
for ref, proof in found[:10]:
    pipeline.offer(ref, proof)
pipeline.drain()
try:
    pipeline.status()
    sys.exit("the status read did not raise the failure")
except OSError:
    pass
pipeline.status()
for ref, proof in found[10:]:
    pipeline.offer(ref, proof)
try:
    pipeline.drain()
except OSError:
    os._exit(7)
os._exit(8)
"""


def test_no_batch_is_journaled_after_a_finishing_failure_someone_caught(fast_tmp):
    """Its marks would fall inside the half-written batch. The next commit raises the
    failure again instead, and start-up completes batch 1 alone."""
    corpus.require_corpus()
    sb = small_batches(fast_tmp, 100)
    made = ih.replicate(RUN, sb.storage, COPIES)
    run_script(FAIL_THEN_READ_STATUS, sb, code=7)
    assert [(r["type"], r["seq"]) for r in journaled(sb)] == [("batch", 1)]
    sb.run()
    assert sb.left() == []
    check_nothing_lost(sb, made)
    assert len(sb.archived()) == len(made)


def test_recovery_plans_from_the_rotated_file(tmp_path):
    """A crash cut a batch's archive write, then logrotate renamed the file: the entries the
    rotated file holds whole are not written again; the one it cut goes whole to the new
    file, then the rest."""
    path = tmp_path / "archive.log"
    entries = [bytes([65 + n]) * (10 + n) for n in range(4)]
    file = AppendFile(str(path))
    file.append(b"old\n")
    start = file.position()
    file.append(entries[0] + entries[1] + entries[2][:5])
    file.close()
    os.rename(path, tmp_path / "archive.log.1")
    file = AppendFile(str(path))
    regions = [(len(e), e) for e in entries]
    assert file.lacking(start, regions) == [(2, 0), (3, 0)]
    assert file.lacking(Position(start.inode + 10**9, start.size), regions) == \
        [(n, 0) for n in range(4)]                 # the rotated file is gone
    file.close()


def test_recovery_plans_from_the_bytes_not_only_the_lengths(tmp_path):
    """A torn entry's rest is appended (fail2ban may have read its start); an entry whose
    bytes differ from what the mark points at is written whole, after what is there."""
    path = tmp_path / "events.log"
    entries = [b"line one\n", b"line two\n", b"line three\n"]
    file = AppendFile(str(path))
    start = file.position()
    file.append(entries[0] + entries[1][:4])
    regions = [(len(e), e) for e in entries]
    assert file.lacking(start, regions) == [(1, 4), (2, 0)]
    assert file.lacking(start, [(len(entries[0]), None), *regions[1:]]) == [(1, 4), (2, 0)]
    assert file.lacking(start, [(9, b"line 1!!\n"), *regions[1:]]) == [(0, 0), (1, 0), (2, 0)]
    file.append(entries[1][4:] + entries[2] + b"next batch\n")
    assert file.lacking(start, regions) == []
    file.close()


def test_a_torn_journal_record_is_cut_before_the_next_one(tmp_path, monkeypatch):
    """A record whose write failed halfway (disk full) would otherwise stay, and the next
    load would stop there, losing every record appended after it."""
    log = RecordLog(str(tmp_path / "journal"))
    log.append({"type": "batch", "seq": 1})
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        log.append({"type": "batch", "seq": 2, "files": ["x" * 100]})
    monkeypatch.setattr(os, "write", real_write)
    log.append({"type": "done", "seq": 1})
    log.close()
    again = RecordLog(str(tmp_path / "journal"))
    assert again.records == [{"type": "batch", "seq": 1}, {"type": "done", "seq": 1}]
    again.close()


def test_a_group_s_first_done_leaves_its_later_batches_unfinished(tmp_path):
    """Batches 2 and 3 journaled, then batch 2's done: batch 3 is still unfinished (the
    journal must not be compacted) and is kept in memory."""
    journal = Journal(str(tmp_path / "journal"))
    for record in ({"type": "batch", "seq": 1, "files": []}, {"type": "done", "seq": 1},
                   {"type": "batch", "seq": 2, "files": []},
                   {"type": "batch", "seq": 3, "files": []}, {"type": "done", "seq": 2}):
        journal.append(record)
    assert journal.unfinished()["seq"] == 3
    assert [r.get("seq") for r in journal.records if r["type"] == "batch"] == [3]
    journal.append({"type": "done", "seq": 3})
    assert journal.unfinished() is None
    journal.close()
