"""``modsec-tools watch`` end to end: the real daemon (a subprocess) against a ModSecurity
2.9.7 writer mimic (tests/watch_helpers.py), every sink checked for exactly-once."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.eventline import format_event
from modsec_tools.audit.verdict import VerdictPolicy
from tests import corpus
from tests import watch_helpers as wh

pytestmark = pytest.mark.usefixtures("need_corpus")

STATUS_KEYS = {"entries", "bytes", "quarantined", "spooled", "errors", "batches",
               "queue_depth", "overflows", "lag_seconds", "database_down", "updated"}
QUEUED_EVENTS = "/proc/sys/fs/inotify/max_queued_events"


@pytest.fixture
def need_corpus():
    corpus.require_corpus()


@pytest.fixture
def daemons():
    """Make WatchDaemon objects; any still running at the end is killed."""
    made: list[wh.WatchDaemon] = []

    def make(tmp: Path, **kwargs) -> wh.WatchDaemon:
        daemon = wh.WatchDaemon(tmp, **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.__exit__(None, None, None)


def run_writers(commands: list[list[str]], timeout: float = 120.0) -> None:
    wh.wait_writers([subprocess.Popen(c, cwd=wh.REPO, stdout=subprocess.DEVNULL)
                     for c in commands], timeout)


def expected_line(entry: wh.Entry) -> str:
    event = parse_entry(entry.data, entry.relpath)
    return format_event(event, "watchtest", VerdictPolicy("CRITICAL", 5).verdict(event))


def age(storage: Path, entries: list[wh.Entry], seconds: float) -> None:
    """Make entries look written ``seconds`` ago (a backlog from while watch was down)."""
    when = time.time() - seconds
    for entry in entries:
        os.utime(storage.joinpath(*entry.dirs, entry.name), (when, when))


# -- the corpus, live --------------------------------------------------------------------------
def test_corpus_entries_written_live_land_exactly_once_and_whole(tmp_path, daemons):
    """All Concurrent corpus entries (native and JSON, 5 runs), and copies of them up to
    the full corpus's 2,186, written by 3 + 3 concurrent mimic writers with a pause after
    each of their ~40 writes, so the watcher sees many half-written files: each lands once
    in the event log (the exact line `parse` gives), the archive (byte-identical) and the
    DB; nothing quarantined, nothing left behind."""
    originals = wh.original_entries()
    copies = wh.make_entries(max(0, 2186 - len(originals)), "Y")
    third = -(-len(copies) // 3)
    entries = originals + copies
    daemon = daemons(tmp_path).start()
    run_writers([wh.writer_command(daemon.storage, len(originals), "X", originals=True,
                                   shard=f"{k}/3", pause_ms=0.1) for k in range(3)]
                + [wh.writer_command(daemon.storage, len(copies[k * third:(k + 1) * third]),
                                     "Y", start=k * third, pause_ms=0.1) for k in range(3)])
    daemon.wait_events(len(entries), timeout=60)
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(entries))
    lines = set(daemon.events.read_text("ascii").splitlines())
    assert lines == {expected_line(e) for e in entries}
    status = daemon.status()
    assert status["entries"] == len(entries)
    assert status["quarantined"] == 0 and status["errors"] == 0
    assert "Traceback" not in daemon.log_text()


def test_names_that_are_not_utf8_do_not_stop_the_daemon(tmp_path, daemons):
    """The tree is world-writable: anyone can plant names that are not UTF-8 (pyinotify's
    own reader would raise on them and kill the daemon). A stray file and a directory at
    the root, and a vhost directory whose name is not UTF-8: the daemon lives on, that
    vhost's entries land exactly once, and so do entries written after them."""
    daemon = daemons(tmp_path).start()
    root = os.fsencode(daemon.storage)
    os.close(os.open(root + b"/\xff\xfe", os.O_CREAT | os.O_WRONLY, 0o644))
    os.mkdir(root + b"/\xfe-dir")
    odd = wh.make_entries(20, "NU", user=os.fsdecode(b"vhost-\xff"))
    wh.write_all(daemon.storage, odd)
    time.sleep(0.5)
    assert daemon.proc.poll() is None, daemon.log_tail()
    after = wh.make_entries(20, "NA", start=20)
    wh.write_all(daemon.storage, after)
    daemon.wait_events(40, timeout=30)
    assert daemon.proc.poll() is None, daemon.log_tail()
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(odd + after))
    assert "Traceback" not in daemon.log_text()


def test_backlog_present_at_start_is_processed_first(tmp_path, daemons):
    """Entries left while watch was down go out before entries written during start-up."""
    daemon = daemons(tmp_path)
    backlog = wh.make_entries(300, "BK", per_minute=60)
    wh.write_all(daemon.storage, backlog)
    age(daemon.storage, backlog, 3600)
    live_count = 200
    writer = subprocess.Popen(wh.writer_command(daemon.storage, live_count, "LV",
                                                per_minute=50, rate=150), cwd=wh.REPO,
                              stdout=subprocess.DEVNULL)
    try:
        live = wh.make_entries(live_count, "LV", per_minute=50)
        # Start the daemon while live entries are being written (some exist already).
        deadline = time.monotonic() + 20
        while len(wh.entry_files(daemon.storage)) < len(backlog) + 10:
            assert time.monotonic() < deadline, "writer did not start"
            time.sleep(0.02)
        daemon.start(wait_ready=False)
        assert writer.wait(60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    daemon.wait_events(len(backlog) + live_count, timeout=30)
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(backlog + live))
    order = wh.event_ids(daemon.events)
    assert set(order[:len(backlog)]) == {e.uid for e in backlog}


def test_index_log_mode(tmp_path, daemons):
    """--index-log: a fresh indexed backlog is taken at once (the index line proves it),
    live entries with their index lines land exactly once, and a restart re-reads the index
    log from its saved cursor without duplicating anything."""
    daemon = daemons(tmp_path, index_log=True)
    backlog = wh.make_entries(150, "IB", per_minute=50)
    wh.write_all(daemon.storage, backlog, daemon.index_log)  # fresh: no settle wait applies
    daemon.start()
    first = wh.event_ids(daemon.events)
    assert set(first) == {e.uid for e in backlog}, "indexed backlog not done during start-up"
    live = wh.make_entries(400, "IL", per_minute=100)
    run_writers([wh.writer_command(daemon.storage, 200, "IL", start=k * 200, per_minute=100,
                                   index_log=daemon.index_log) for k in range(2)])
    daemon.wait_events(550, timeout=30)
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(backlog + live))

    daemon.start()
    more = wh.make_entries(50, "IR", per_minute=50)
    wh.write_all(daemon.storage, more, daemon.index_log)
    daemon.wait_events(600, timeout=30)
    time.sleep(1.5)  # a rescan and an index re-read: still nothing twice
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(backlog + live + more))
    assert "index line" not in daemon.log_text()  # no size/md5 disagreement reported


# -- signals, status, lock ---------------------------------------------------------------------
def test_sighup_reopens_event_log_and_archive(tmp_path, daemons):
    daemon = daemons(tmp_path).start()
    before = wh.make_entries(60, "HA")
    wh.write_all(daemon.storage, before)
    daemon.wait_events(60)
    rotated_events = daemon.events.with_name("events.log.1")
    rotated_archive = daemon.archive.with_name("archive.log.1")
    os.rename(daemon.events, rotated_events)
    os.rename(daemon.archive, rotated_archive)
    daemon.signal(signal.SIGHUP)
    daemon.wait_log("reopened the archive and the event log", timeout=5)
    assert daemon.events.exists() and daemon.archive.exists()
    after = wh.make_entries(40, "HB")
    wh.write_all(daemon.storage, after)
    daemon._offset = daemon._lines_seen = 0
    daemon.wait_events(40)
    daemon.stop()
    assert sorted(wh.event_ids(daemon.events)) == sorted(e.uid for e in after)
    assert sorted(wh.event_ids(rotated_events)) == sorted(e.uid for e in before)
    ids, problems = wh.archive_entries(daemon.archive, wh.digests(after))
    assert not problems and sorted(ids) == sorted(e.uid for e in after)
    ids, problems = wh.archive_entries(rotated_archive, wh.digests(before))
    assert not problems and sorted(ids) == sorted(e.uid for e in before)
    assert sorted(wh.db_ids(daemon.db_path)) == sorted(e.uid for e in before + after)


def test_sigusr1_logs_statistics_and_status_file(tmp_path, daemons):
    """USR1 logs the statistics (and refreshes status.json at once); status.json carries
    the documented figures and is refreshed every 5 s without any signal."""
    daemon = daemons(tmp_path).start()
    entries = wh.make_entries(25, "US")
    wh.write_all(daemon.storage, entries)
    daemon.wait_events(25)
    daemon.signal(signal.SIGUSR1)
    daemon.wait_log("statistics: ", timeout=5)
    line = next(l for l in daemon.log_text().splitlines() if "statistics: " in l)
    # one readable line, not a Python dict
    assert re.search(r"statistics: 25 entries \(\d+\.\d MB\) in \d+ batches; 0 quarantined, "
                     r"0 spooled, 0 errors; queue 0, lag 0\.000 s, 0 inotify overflows; "
                     r"database up$", line), line

    deadline = time.monotonic() + 2
    while daemon.status()["entries"] != 25:  # USR1 rewrote it immediately
        assert time.monotonic() < deadline, daemon.status()
        time.sleep(0.05)
    status = daemon.status()
    assert STATUS_KEYS <= set(status), f"missing: {STATUS_KEYS - set(status)}"
    assert status["database_down"] is False and status["overflows"] == 0
    assert isinstance(status["lag_seconds"], float) and status["bytes"] > 0
    stamp = status["updated"]
    deadline = time.monotonic() + 7
    while daemon.status()["updated"] == stamp:  # the periodic refresh (every 5 s)
        assert time.monotonic() < deadline, "status.json not refreshed within 7 s"
        time.sleep(0.1)
    daemon.stop()
    assert daemon.status()["entries"] == 25  # final status written on exit


def test_second_instance_fails_with_the_lock_message(tmp_path, daemons):
    daemon = daemons(tmp_path).start()
    env = {**os.environ, "PYTHONPATH": str(wh.REPO)}
    for command in ("watch", "ingest"):
        argv = [sys.executable, "-m", "modsec_tools.cli", command, "--config",
                str(daemon.config)] + (["--foreground"] if command == "watch" else [])
        second = subprocess.run(argv, cwd=wh.REPO, env=env, capture_output=True, text=True,
                                timeout=20)
        assert second.returncode == 1, second.stderr
        assert "another modsec-tools ingest/watch holds" in second.stderr
        assert f"(pid {daemon.pid})" in second.stderr
    entries = wh.make_entries(5, "LK")
    wh.write_all(daemon.storage, entries)  # the first one is unaffected
    daemon.wait_events(5)
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(entries))


# -- inotify queue overflow --------------------------------------------------------------------
@pytest.fixture(scope="module")
def overflow_run(tmp_path_factory):
    """watch with a 64-event inotify queue, 2,000 entries written fast by 2 writers across
    20 minute directories. The sysctl is restored as soon as watch has created its inotify
    instance (the limit is taken at creation), and in any case in the finally."""
    if os.geteuid() != 0:
        pytest.skip("needs root to change fs.inotify.max_queued_events")
    corpus.require_corpus()
    tmp = tmp_path_factory.mktemp("overflow")
    saved = Path(QUEUED_EVENTS).read_text().strip()
    daemon = wh.WatchDaemon(tmp)
    try:
        try:
            Path(QUEUED_EVENTS).write_text("64")
            daemon.start()
        finally:
            Path(QUEUED_EVENTS).write_text(saved)
        run_writers([wh.writer_command(daemon.storage, 1000, tag, per_minute=100)
                     for tag in ("QA", "QB")])
        daemon.wait_events(2000, timeout=60)
        daemon.stop()
        status = daemon.status()  # the final one, written on exit
        expected = wh.digests(wh.make_entries(1000, "QA", per_minute=100)
                              + wh.make_entries(1000, "QB", per_minute=100))
        yield daemon, expected, status
    finally:
        Path(QUEUED_EVENTS).write_text(saved)
        daemon.__exit__(None, None, None)
    assert Path(QUEUED_EVENTS).read_text().strip() == saved


@pytest.mark.root
def test_queue_overflow_loses_nothing(overflow_run):
    daemon, expected, _status = overflow_run
    wh.check_exactly_once(daemon, expected)
    assert re.search(r"(?i)queue overflowed", daemon.log_text()), "no overflow happened"


@pytest.mark.root
def test_queue_overflow_is_noticed_by_watch(overflow_run):
    daemon, _expected, status = overflow_run
    assert "inotify queue overflowed" in daemon.log_text()
    assert status["overflows"] >= 1


# -- regressions (bugs found by these tests, fixed in 483c865) ----------------------------------
def test_rescan_does_not_delay_an_entry_already_closed(tmp_path, daemons):
    """A rescan must not turn a pending IN_CLOSE_WRITE entry into a mere scan find (which
    waits for settle_seconds and another rescan). Deterministic form: a rescan every 0.1 s
    always falls inside the 150 ms flush window. (Before the fix, with the defaults, any
    entry closed in the 20 ms before a rescan, or a whole backlog pending at that moment,
    waited for the next rescan, 10 s later.)"""
    daemon = daemons(tmp_path, rescan_seconds=0.1, flush_ms=150,
                     settings={"settle_seconds": "30"}).start()
    entries = wh.make_entries(3, "DG")
    wh.write_all(daemon.storage, entries)
    try:
        daemon.wait_events(3, timeout=5)  # closed files: due 150 ms after close
    finally:
        daemon.stop()


def test_sigterm_during_backlog_finishes_the_current_batch_only(tmp_path, daemons):
    """'TERM: finish the current batch and exit' holds during the start-up backlog too
    (it used to drain the whole backlog first); the rest is done after a restart."""
    daemon = daemons(tmp_path, settings={"batch_size": "50"})
    backlog = wh.make_entries(1200, "TB", per_minute=300)
    wh.write_all(daemon.storage, backlog, writes=1)  # left from before: how does not matter
    age(daemon.storage, backlog, 3600)
    daemon.start(wait_ready=False)
    deadline = time.monotonic() + 20
    while daemon.event_count() == 0:
        assert time.monotonic() < deadline and daemon.proc.poll() is None
        time.sleep(0.005)
    daemon.signal(signal.SIGTERM)
    began = time.monotonic()
    assert daemon.proc.wait(20) == 0
    took = time.monotonic() - began
    done = daemon.event_count()
    # Restart: the rest is processed, still exactly once (true with or without the bug).
    daemon._close_log()
    daemon.start()
    daemon.wait_events(len(backlog), timeout=30)
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(backlog))
    assert done <= 200, f"SIGTERM after the first batch, yet {done} entries were processed " \
                        f"({took:.1f} s) before exiting"


def test_kill9_leaves_nothing_holding_the_lock(tmp_path, daemons):
    """kill -9 (OOM killer, crash) of the watch process alone, as outside a systemd cgroup:
    a restart must be possible. A start-up backlog of 300 entries (>= 128) is examined by
    the worker pool (workers = 2); its workers used to be forked, inherit the instance
    lock and outlive the daemon, so every restart failed with 'another modsec-tools
    ingest/watch holds ... (pid <the dead pid>)'."""
    daemon = daemons(tmp_path, settings={"workers": "2"})
    backlog = wh.make_entries(300, "KL", per_minute=100)
    wh.write_all(daemon.storage, backlog)
    age(daemon.storage, backlog, 3600)
    daemon.start()
    daemon.wait_events(len(backlog))
    daemon.kill()  # the main process only
    time.sleep(0.2)
    left = daemon.orphans()
    more = wh.make_entries(20, "KM")
    wh.write_all(daemon.storage, more)
    daemon.start()
    daemon.wait_events(len(backlog) + len(more))
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(backlog + more))
    assert not left, f"processes of the killed watch still alive: {left}"


# -- regressions (bugs found by these tests, fixed in 7c07cd7) ----------------------------------
def _in_process_watcher(tmp_path: Path):
    """A Watcher of ``tmp_path/storage`` in this process (for what only its internals show),
    no database, no worker processes, no periodic rescan."""
    from modsec_tools import config
    from modsec_tools.daemon.watch import Watcher, WatchOptions
    settings = config.build({
        "storage_dir": str(tmp_path / "storage"), "archive": str(tmp_path / "archive.log"),
        "event_log": str(tmp_path / "events.log"), "db": "none",
        "state_dir": str(tmp_path / "state"), "quarantine_dir": str(tmp_path / "q"),
        "node": "watchtest", "workers": "0"}, {})
    return Watcher(settings, options=WatchOptions(rescan_seconds=3600))


def test_removed_directories_are_forgotten(tmp_path):
    """In-process (the map is internal): 300 minute directories appear, are watched, and
    are removed again as remove_empty_dirs does; pyinotify drops their watches, and so must
    the watcher's own wd → directory map."""
    day = tmp_path / "storage" / "www-data" / "20310101"
    day.mkdir(parents=True)
    watcher = _in_process_watcher(tmp_path)

    def pump() -> None:
        for _ in range(5):
            watcher.take_events(50)
            watcher._adopt_new_dirs()

    try:
        watcher.start()
        minutes = [day / f"20310101-{m // 60:02d}{m % 60:02d}" for m in range(300)]
        for path in minutes:
            path.mkdir()
        pump()
        assert len(watcher.wm.watches) == 303  # root, user, day + 300 minutes
        for path in minutes:
            path.rmdir()
        pump()
        assert len(watcher.wm.watches) == 3
        assert len(watcher.wd_dirs) <= len(watcher.wm.watches), \
            f"{len(watcher.wd_dirs)} directories still mapped for 3 watches"
    finally:
        watcher.close()


def test_minute_directories_report_closes_only(tmp_path):
    """In-process: a minute directory's watch delivers one event per entry (its close),
    not its creation too (half the events of a flood); directories above still report
    the directories created in them."""
    from modsec_tools.daemon.watch import read_inotify_events
    minute = tmp_path / "storage" / "www-data" / "20310101" / "20310101-0000"
    minute.mkdir(parents=True)
    watcher = _in_process_watcher(tmp_path)
    try:
        watcher.start()
        for n in range(20):
            (minute / f"20310101-000000-entry{n:02d}").write_bytes(b"x" * 10)
        (minute.parent / "20310101-0001").mkdir()
        time.sleep(0.1)
        events = read_inotify_events(watcher.wm.get_fd())
        in_minute = [e for e in events if watcher.wd_dirs.get(e.wd) == (
            "www-data", "20310101", "20310101-0000")]
    finally:
        watcher.close()
    import pyinotify
    assert len(in_minute) == 20
    assert all(e.mask & pyinotify.IN_CLOSE_WRITE and not e.mask & pyinotify.IN_CREATE
               for e in in_minute)
    assert any(e.name == "20310101-0001" and e.mask & pyinotify.IN_CREATE
               and e.mask & pyinotify.IN_ISDIR for e in events)
