"""Bursts: 20,000 entries from 2 concurrent ModSecurity-mimic writers, then kill -9 of the
daemon in the middle of another burst. Exactly-once on every sink, by unique id."""
from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import corpus
from tests import watch_helpers as wh

pytestmark = pytest.mark.slow

PER_MINUTE = 200          # entries per minute directory and writer (10,000 = 50 minutes)
TAGS = ("WA", "WB")


def digests(count: int, start: int = 0) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for tag in TAGS:
        for begin in range(start, start + count, 2000):  # in slices: bounded memory
            size = min(2000, start + count - begin)
            out.update(wh.digests(wh.make_entries(size, tag, begin, PER_MINUTE)))
    return out


def writers(daemon: wh.WatchDaemon, count: int, start: int,
            rate: float | None = None) -> list[subprocess.Popen]:
    return [subprocess.Popen(wh.writer_command(daemon.storage, count, tag, start=start,
                                               per_minute=PER_MINUTE, rate=rate),
                             cwd=wh.REPO, stdout=subprocess.DEVNULL) for tag in TAGS]


def test_burst_then_kill9_mid_burst_exactly_once(tmp_path):
    """workers = 2: large batches (rescans, start-up backlogs) go through the examiner pool.
    kill -9 hits the daemon process only (its workers must die with it, see
    test_watch_live.py::test_kill9_leaves_nothing_holding_the_lock); restarts follow at
    once, sometimes during the previous restart's recovery."""
    corpus.require_corpus()
    with wh.WatchDaemon(tmp_path, settings={"workers": "2"}) as daemon:
        # 1. 20,000 entries (2 writers x 10,000, both in the same 50 minute directories).
        daemon.start()
        began = time.monotonic()
        wh.wait_writers(writers(daemon, 10_000, 0), timeout=240)
        written = time.monotonic() - began
        daemon.wait_events(20_000, timeout=120)
        drained = time.monotonic() - began
        status = daemon.status()
        daemon.stop()
        expected = digests(10_000)
        wh.check_exactly_once(daemon, expected)
        assert status["errors"] == 0 and status["quarantined"] == 0
        print(f"burst: 20000 written in {written:.1f} s, all durable after {drained:.1f} s "
              f"({status['batches']} batches)")

        # 2. Another 2 x 6,000, with kill -9 of the daemon every ~0.5-1.5 s during it. The
        # writers are paced (at most 2 x 1,000/s, >= 6 s) so that a fast machine, which
        # writes an unpaced burst in ~2 s, still gets its kills in mid-burst.
        daemon.start()
        procs = writers(daemon, 6_000, 10_000, rate=1000)
        rng = random.Random(7)
        kills = 0
        try:
            while any(p.poll() is None for p in procs) and kills < 10:
                time.sleep(rng.uniform(0.3, 0.9))
                if kills % 2:
                    # Right after the event log grew: most likely before the batch's
                    # journal 'done' record, so the restart has to complete the batch.
                    seen = daemon.event_count()
                    deadline = time.monotonic() + 1.5
                    while daemon.event_count() == seen and time.monotonic() < deadline:
                        time.sleep(0.001)
                daemon.kill()
                kills += 1
                daemon.start(wait_ready=False)
                time.sleep(rng.uniform(0.2, 0.6))  # let it get into its start-up batches
        finally:
            wh.wait_writers(procs, timeout=240)
        assert kills >= 3, "the burst ended before the daemon could be killed 3 times"
        if daemon.proc.poll() is None and "watching " not in daemon.log_text(this_run=True):
            daemon.wait_log("watching ", timeout=60)
        daemon.wait_events(32_000, timeout=120)
        time.sleep(1.5)  # one more rescan: nothing may come twice
        daemon.stop()
        expected.update(digests(6_000, 10_000))
        wh.check_exactly_once(daemon, expected)
        recovered = daemon.log_text().count("interrupted by a crash")
        print(f"kill -9 x{kills}; batches completed on restart: {recovered}")


def _backlog_peak_mb(tmp_path: Path, make) -> float:
    """Peak RSS (MB) of a watch daemon (2 workers) taking in the backlog ``make()`` returns,
    written before it starts (an hour old, on tmpfs); exactly-once is checked as well."""
    corpus.require_corpus()
    shm = Path("/dev/shm")
    storage = Path(tempfile.mkdtemp(dir=shm)) / "storage" if shm.is_dir() else None
    try:
        with wh.WatchDaemon(tmp_path, settings={"workers": "2"}, storage=storage,
                            rescan_seconds=10) as daemon:
            entries = make()
            wh.write_all(daemon.storage, entries, writes=1)  # a backlog: written earlier
            when = time.time() - 3600
            for entry in entries:
                path = daemon.storage.joinpath(*entry.dirs, entry.name)
                os.utime(path, (when, when))
            expected = wh.digests(entries)
            del entries
            daemon.start(timeout=120)
            daemon.wait_events(len(expected), timeout=180)
            peak_mb = daemon.vm_hwm_kib() / 1024
            daemon.stop()
            wh.check_exactly_once(daemon, expected)
            return peak_mb
    finally:
        if storage is not None:
            shutil.rmtree(storage.parent, ignore_errors=True)


def test_backlog_memory_is_bounded(tmp_path):
    """A 10,000-entry backlog (50 MB) through the worker pool: the daemon's peak RSS must
    stay as with workers = 0 (~56 MB), bounded by the batch, not by the backlog."""
    peak_mb = _backlog_peak_mb(tmp_path, lambda: wh.make_entries(10_000, "MB", per_minute=1000))
    assert peak_mb < 100, f"peak RSS {peak_mb:.0f} MB for a 50 MB backlog"


def _with_body(entry: wh.Entry, size: int) -> wh.Entry:
    """The entry with a request body section (C) of ``size`` bytes before its Z boundary,
    as ModSecurity writes one when SecAuditLogParts has C and the body is that large."""
    boundary = re.search(rb"^--([0-9a-f]{8})-Z--", entry.data, re.M)
    assert boundary is not None, entry.relpath
    tag = boundary.group(1)
    body = b"--" + tag + b"-C--\n" + b"q=" + b"A" * size + b"\n\n"
    return dataclasses.replace(entry, data=entry.data[:boundary.start()] + body
                               + entry.data[boundary.start():])


def test_large_entries_memory_is_bounded(tmp_path):
    """300 entries of 2 MB (the body size is the sender's choice; max_entry_size is 64 MB)
    through the worker pool: batches and the workers' results are bounded in bytes, not
    only in entries. (Before: every entry of a batch held at once; 120 entries of 8 MB took
    the daemon to 2 GB.)"""
    peak_mb = _backlog_peak_mb(tmp_path, lambda: [_with_body(e, 2 << 20) for e in wh.make_entries(
        300, "BIG", per_minute=100, runs=("r1_relevant_concurrent",))])
    print(f"peak RSS {peak_mb:.0f} MB for 300 entries of 2 MB")
    assert peak_mb < 200, f"peak RSS {peak_mb:.0f} MB for 300 entries of 2 MB"
