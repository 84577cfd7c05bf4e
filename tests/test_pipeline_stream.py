"""``Pipeline.drain(refill=...)``: watch offers newly closed entries to the examiner pool while
it commits; nothing may be taken twice or dropped on the way."""
from __future__ import annotations

import os

import time

import pytest

from modsec_tools import config
from modsec_tools.pipeline import ingest
from modsec_tools.pipeline.examine import ExaminerPool, Proof
from modsec_tools.pipeline.ingest import Pipeline
from modsec_tools.tree.removal import Removal

from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401

R1 = "r1_relevant_concurrent"


@pytest.fixture(autouse=True)
def workers_for_hundreds(monkeypatch):
    """These tests stream hundreds of entries through the worker processes, which a
    pipeline would otherwise start only for thousands (START_WORKERS_FROM)."""
    monkeypatch.setattr(ingest, "START_WORKERS_FROM", ingest.PARALLEL_FROM)


def _backlog(sb: ih.Sandbox, tag: str = "Cp") -> None:
    """Old entries, as many as the full r1 has (the tests take hundreds at a time); another
    ``tag`` gives them other unique ids (a second backlog must not reuse the names of the
    first, which may still be held as being deleted)."""
    ih.replicate(R1, sb.storage, corpus.copies_for(R1, 1224), tag=tag)


def _pipeline(sb: ih.Sandbox, batch_size: int = 100) -> Pipeline:
    values = {**sb.values(), "settle_seconds": "0", "workers": "2",
              "batch_size": str(batch_size)}
    return Pipeline(config.build({}, values)).open()


def _backlogged(root, batch_size: int = 100) -> tuple[ih.Sandbox, Pipeline]:
    """A sandbox holding the backlog, and an open pipeline over it."""
    corpus.require_corpus()
    sb = ih.Sandbox(root, db="none")
    _backlog(sb)
    return sb, _pipeline(sb, batch_size)


def test_more_work_is_examined_and_committed_exactly_once(fast_tmp):
    sb, pipeline = _backlogged(fast_tmp)
    try:
        found = sorted(pipeline.scan(), key=lambda item: item[0].name)
        first, rest = found[:200], found[200:]
        feeds = [rest[n:n + 150] for n in range(0, len(rest), 150)]
        calls = []

        def refill():
            calls.append(len(feeds))
            if not feeds:
                return False
            for ref, proof in feeds.pop(0):
                pipeline.offer(ref, proof)
            return True
        for ref, proof in first:
            pipeline.offer(ref, proof)
        pipeline.drain(refill=refill)
    finally:
        pipeline.close()
    assert pipeline.queue == {}
    assert len(calls) > 1
    assert sb.left() == []
    ids = ih.archive_ids_fast(sb.archive)
    assert len(ids) == len(found) and len(set(ids)) == len(ids)


def test_an_entry_given_again_while_in_flight_is_handed_back(fast_tmp):
    """Its close event came while its scan's examination was under way: the pipeline must
    neither examine it twice at once nor drop it (the scan may have found it incomplete,
    and then only the close event would ever bring it back)."""
    sb, pipeline = _backlogged(fast_tmp, batch_size=500)  # all 300 in flight at the refill
    try:
        found = sorted(pipeline.scan(), key=lambda item: item[0].name)[:300]
        replay = [(found[0][0], Proof.CLOSED)]

        def refill():
            if not replay:
                return False
            pipeline.offer(*replay.pop())
            return True
        for ref, proof in found:
            pipeline.offer(ref, proof)
        pipeline.drain(refill=refill)
    finally:
        pipeline.close()
    assert list(pipeline.queue.values()) == [(found[0][0], Proof.CLOSED)]  # queued again
    ids = ih.archive_ids_fast(sb.archive)
    assert len(ids) == 300 and len(set(ids)) == 300


def test_a_committed_entry_found_again_while_it_is_being_deleted_is_not_taken(fast_tmp,
                                                                              monkeypatch):
    """A batch's files are deleted in the background while the next batch is committed
    (removal.py): until then they are still in the tree, and a rescan finds them. They
    must not be examined and committed a second time."""
    sb, pipeline = _backlogged(fast_tmp)
    real_remove = Removal._remove_all

    def slow_remove(tree, entries):
        time.sleep(0.002 * len(entries))  # 0.2 s a batch: a rescan comes meanwhile
        return real_remove(tree, entries)
    monkeypatch.setattr(Removal, "_remove_all", staticmethod(slow_remove))
    held = []
    try:
        found = sorted(pipeline.scan(), key=lambda item: item[0].name)

        def rescan():
            if pipeline.stats.batches == 0:
                return True
            if held:
                return False
            again = sorted(pipeline.scan(), key=lambda item: item[0].name)
            held.extend(ref.relpath for ref, _ in again if pipeline.removal.holds(ref.relpath))
            for ref, proof in again:
                pipeline.offer(ref, proof)
            return True
        for ref, proof in found[:300]:
            pipeline.offer(ref, proof)
        pipeline.drain(refill=rescan)
        pipeline.rescan()  # what the rescan's examination left
        pipeline.drain()
    finally:
        pipeline.close()
    assert held, "the rescan came after the deletions: nothing was tested"
    assert sb.left() == []
    ids = ih.archive_ids_fast(sb.archive)
    assert len(set(ids)) == len(ids), f"{len(ids) - len(set(ids))} entries archived twice"
    assert len(ids) == len(found)


def _children() -> set[int]:
    """This process's children still alive (not zombies)."""
    me = str(os.getpid())
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(pid))
    return found


def test_worker_processes_are_stopped_once_idle_and_started_again(fast_tmp):
    """They hold most of a daemon's memory: a backlog starts them, idleness stops them."""
    before = _children()                            # the session's servers (MariaDB...)
    sb, pipeline = _backlogged(fast_tmp)
    try:
        pipeline.rescan()
        pipeline.drain()
        workers = list(pipeline.pool.executor._processes.values())
        assert workers and all(worker.is_alive() for worker in workers)
        pipeline.stop_idle_workers(3600.0)
        assert pipeline.pool is not None            # not idle for that long yet
        pipeline.stop_idle_workers(0.0)
        assert pipeline.pool is None
        assert not any(worker.is_alive() for worker in workers)
        assert _children() <= before                # nor the resource tracker they started
        _backlog(sb, tag="Cq")                      # the next backlog starts them again
        pipeline.rescan()
        pipeline.drain()
        assert pipeline.pool is not None
    finally:
        pipeline.close()
    assert sb.left() == []


def _watch_submissions(monkeypatch) -> list[int]:
    """Entries handed to the worker processes, a chunk's count each."""
    sent: list[int] = []
    real_submit = ExaminerPool._submit

    def submit(self, chunk, cutoff):
        sent.append(len(chunk))
        return real_submit(self, chunk, cutoff)
    monkeypatch.setattr(ExaminerPool, "_submit", submit)
    return sent


def _drain_in_feeds(pipeline: Pipeline, found: list, first: int, feed: int) -> None:
    """``first`` entries offered, the rest while the pipeline drains, ``feed`` at a time
    (as watch's close events come)."""
    feeds = [found[n:n + feed] for n in range(first, len(found), feed)]

    def refill():
        if not feeds:
            return False
        for ref, proof in feeds.pop(0):
            pipeline.offer(ref, proof)
        return True
    for ref, proof in found[:first]:
        pipeline.offer(ref, proof)
    pipeline.drain(refill=refill)


def test_a_burst_does_not_wait_for_the_workers_to_start(fast_tmp, monkeypatch):
    """Starting workers costs a backlog's first ~0.3 s (more under the load a flood brings):
    until they are up, entries, the stream's too, are examined in the daemon itself."""
    sent = _watch_submissions(monkeypatch)
    monkeypatch.setattr(ExaminerPool, "ready", property(lambda self: False))
    sb, pipeline = _backlogged(fast_tmp)
    try:
        found = sorted(pipeline.scan(), key=lambda item: item[0].name)[:600]
        _drain_in_feeds(pipeline, found, first=200, feed=150)
        assert pipeline.pool is not None            # the workers were being started
    finally:
        pipeline.close()
    assert sent == []
    ids = ih.archive_ids_fast(sb.archive)
    assert len(ids) == 600 and len(set(ids)) == 600


def test_once_the_workers_are_up_they_take_the_rest_in_order(fast_tmp, monkeypatch):
    sent = _watch_submissions(monkeypatch)
    examined_here = []
    real_examine = ingest.examine

    def counted(*args, **kwargs):
        examined_here.append(args[1].name)
        return real_examine(*args, **kwargs)
    monkeypatch.setattr(ingest, "examine", counted)
    monkeypatch.setattr(ExaminerPool, "ready", property(lambda self: len(examined_here) >= 50))
    sb, pipeline = _backlogged(fast_tmp)
    try:
        found = sorted(pipeline.scan(), key=lambda item: item[0].name)[:600]
        _drain_in_feeds(pipeline, found, first=200, feed=150)
    finally:
        pipeline.close()
    assert examined_here == [ref.name for ref, _ in found[:50]]
    assert sum(sent) >= 550
    archived = ih.archive_ids_fast(sb.archive)
    assert len(archived) == 600 and len(set(archived)) == 600
    assert not {ref.relpath for ref, _ in found} & set(sb.left())


def test_a_burst_the_daemon_examines_alone_does_not_start_the_workers(fast_tmp, monkeypatch):
    monkeypatch.setattr(ingest, "START_WORKERS_FROM", 1000)
    sent = _watch_submissions(monkeypatch)
    sb, pipeline = _backlogged(fast_tmp)
    try:
        found = sorted(pipeline.scan(), key=lambda item: item[0].name)[:600]
        _drain_in_feeds(pipeline, found, first=600, feed=1)
        assert pipeline.pool is None
    finally:
        pipeline.close()
    assert sent == []
    ids = ih.archive_ids_fast(sb.archive)
    assert len(ids) == 600 and len(set(ids)) == 600
