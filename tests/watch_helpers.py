#!/usr/bin/env python3
"""Helpers for the ``modsec-tools watch`` tests and bench: a ModSecurity 2.9.7 writer mimic,
a daemon runner, and exactly-once checks over every sink.

The writer does what an Apache worker does for one Concurrent entry (see the corpus
README, "How ModSecurity 2.9.7 writes a Concurrent entry"):

1. mkdir ``<user>/YYYYMMDD/YYYYMMDD-HHMM`` parent first (EEXIST is fine: other workers);
2. open the final name ``O_WRONLY|O_CREAT|O_TRUNC`` mode 0600 (no temp name, no rename);
3. about 40 small ``write()`` calls (line-aligned, optionally with a pause after each);
4. ``close()``;
5. then the whole index line in one ``write()`` to the index log (``O_APPEND``).

Entries come from the corpus (``tests.corpus``): either the originals (their real names and
index lines) or synthetic copies with a fresh unique id (``make_entries``), which is how the
burst tests get 20,000 distinct entries out of a few hundred.

Command line (for concurrent writer processes; the repository root must be importable)::

    python tests/watch_helpers.py --storage DIR [--index-log FILE] --count N --tag A \
        [--start 0] [--per-minute 500] [--base YYYYmmddHHMM] [--rate 1000] [--writes 40] \
        [--pause-ms 0] [--times FILE] [--start-at EPOCH] [--originals --shard 0/2]

``--times`` gets one ``<unique_id> <close time (time.time())>`` line per entry.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``tests`` and ``modsec_tools`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import corpus  # noqa: E402
from tests.ingest_helpers import quarantined  # noqa: E402

REPO = corpus.REPO
CONCURRENT_RUNS = ("r1_relevant_concurrent", "r2_auditengine_on_concurrent",
                   "r3_json_concurrent", "r6_detectiononly_concurrent",
                   "r7_pl2_concurrent_noremoteip")
_INDEX_TAIL = re.compile(r"^(.*) (/\S+) (\d+) (\d+) md5:([0-9a-f]{32})\s*$")
_NATIVE_ID = re.compile(rb"--[0-9a-fA-F]{8,32}-A--\r?\n\[[^\]\n]*\] (\S+) ")
_JSON_ID = re.compile(rb'"transaction_id":"([^"]+)"')


# -- entries ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Source:
    """One corpus entry: its id, bytes, relpath, and its index line up to the relpath."""

    uid: str
    data: bytes
    relpath: str
    index_head: str


@dataclass(frozen=True, slots=True)
class Entry:
    uid: str
    dirs: tuple[str, ...]
    name: str
    data: bytes
    index_line: bytes

    @property
    def relpath(self) -> str:
        return "/" + "/".join((*self.dirs, self.name))

    @property
    def digest(self) -> tuple[int, str]:
        return len(self.data), hashlib.md5(self.data).hexdigest()


@lru_cache(maxsize=None)
def load_pool(runs: tuple[str, ...] = CONCURRENT_RUNS) -> tuple[Source, ...]:
    """Every entry of the given Concurrent corpus runs, read straight from the tarballs,
    in index-log order."""
    pool: list[Source] = []
    for run in runs:
        audit = corpus.run_dir(run) / "audit"
        heads: list[tuple[str, str, str]] = []
        for raw in (audit / "index.log").read_text("utf-8", "surrogateescape").splitlines():
            match = _INDEX_TAIL.match(raw)
            if match:
                head, relpath = match.group(1), match.group(2)
                heads.append((head.split()[-2], relpath, head))
        with tarfile.open(audit / "storage.tar.gz") as archive:
            files = {m.name[len("storage"):]: archive.extractfile(m).read()
                     for m in archive.getmembers() if m.isfile()}
        for uid, relpath, head in heads:
            pool.append(Source(uid, files[relpath], relpath, head))
    return tuple(pool)


def _index_line(head: str, relpath: str, data: bytes) -> bytes:
    return (f"{head} {relpath} 0 {len(data)} md5:{hashlib.md5(data).hexdigest()} \n"
            ).encode("utf-8", "surrogateescape")


def original_entries(runs: tuple[str, ...] = CONCURRENT_RUNS) -> list[Entry]:
    """The corpus entries exactly as ModSecurity wrote them (names, bytes, index lines)."""
    out = []
    for src in load_pool(runs):
        *dirs, name = src.relpath.strip("/").split("/")
        out.append(Entry(src.uid, tuple(dirs), name, src.data,
                         _index_line(src.index_head, src.relpath, src.data)))
    return out


def synthetic_uid(tag: str, number: int) -> str:
    """27 characters like ModSecurity's, unique per (tag, number)."""
    return (f"{tag}{number:010d}" + "WatchTestEntryAAAAAAAAAAAAAAAAAA")[:27]


BASE_MINUTE = dt.datetime(2031, 1, 1, 0, 0)


def make_entries(count: int, tag: str = "A", start: int = 0, per_minute: int = 1_000_000,
                 user: str | None = "www-data", base: dt.datetime = BASE_MINUTE,
                 runs: tuple[str, ...] = CONCURRENT_RUNS) -> list[Entry]:
    """``count`` distinct entries numbered ``start``…: corpus entries (native and JSON) with
    a new unique id, entry ``i`` in minute directory ``base + i // per_minute``.
    Deterministic, so a test can rebuild what a writer process wrote."""
    if not re.fullmatch(r"[A-Za-z0-9]{1,6}", tag):
        raise ValueError("tag: 1-6 letters/digits")
    pool = load_pool(runs)
    shift = zlib.crc32(tag.encode())
    entries = []
    for number in range(start, start + count):
        src = pool[(number + shift) % len(pool)]
        uid = synthetic_uid(tag, number)
        minute = base + dt.timedelta(minutes=number // per_minute)
        day = minute.strftime("%Y%m%d")
        minute_dir = minute.strftime("%Y%m%d-%H%M")
        name = f"{minute_dir}{number % 60:02d}-{uid}"
        dirs = ((user,) if user else ()) + (day, minute_dir)
        data = src.data.replace(src.uid.encode(), uid.encode())
        relpath = "/" + "/".join((*dirs, name))
        head = src.index_head.replace(src.uid, uid)
        entries.append(Entry(uid, dirs, name, data, _index_line(head, relpath, data)))
    return entries


# -- the ModSecurity mimic --------------------------------------------------------------------
def split_writes(data: bytes, writes: int = 40) -> list[bytes]:
    """About ``writes`` line-aligned pieces (byte pieces for a one-line JSON entry); the
    last line (the Z boundary of a native entry) is always the last write on its own."""
    lines = data.splitlines(keepends=True)
    if len(lines) <= 1:
        step = max(1, -(-len(data) // writes))
        return [data[i:i + step] for i in range(0, len(data), step)]
    body, last = lines[:-1], lines[-1]
    groups = max(1, writes - 1)
    per = -(-len(body) // groups)
    return [b"".join(body[i:i + per]) for i in range(0, len(body), per)] + [last]


class IndexLog:
    """The SecAuditLog index file: opened once (by Apache's root parent), O_APPEND, and each
    line written whole in one write()."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, line: bytes) -> None:
        os.write(self.fd, line)

    def close(self) -> None:
        os.close(self.fd)


def make_dirs(path: str, mode: int) -> None:
    """apr_dir_make_recursive: mkdir the leaf; on ENOENT make the parent first, then retry;
    EEXIST (another worker was first) is success."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        make_dirs(os.path.dirname(path), mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass


def write_entry(storage: str | os.PathLike, entry: Entry, index: IndexLog | None = None,
                writes: int = 40, pause: float = 0.0, dir_mode: int = 0o777) -> float:
    """Write one entry as ModSecurity does; returns time.time() right after close()."""
    path = os.path.join(os.fspath(storage), *entry.dirs)
    make_dirs(path, dir_mode)
    fd = os.open(os.path.join(path, entry.name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for piece in split_writes(entry.data, writes):
            os.write(fd, piece)
            if pause:
                time.sleep(pause)
    finally:
        os.close(fd)
    closed = time.time()
    if index is not None:
        index.write(entry.index_line)
    return closed


def write_all(storage: str | os.PathLike, entries: list[Entry],
              index_log: str | os.PathLike | None = None, rate: float | None = None,
              writes: int = 40, pause: float = 0.0,
              start_at: float | None = None) -> dict[str, float]:
    """Write ``entries`` in order, open loop at ``rate`` entries/s (None: as fast as
    possible), from ``start_at`` (a time.time(); lets several writer processes start
    together). Returns {unique_id: close time}."""
    index = IndexLog(index_log) if index_log else None
    closed: dict[str, float] = {}
    if start_at is not None and start_at > time.time():
        time.sleep(start_at - time.time())
    started = time.monotonic()
    try:
        for number, entry in enumerate(entries):
            if rate:
                delay = started + number / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            closed[entry.uid] = write_entry(storage, entry, index, writes, pause)
    finally:
        if index is not None:
            index.close()
    return closed


def wait_writers(procs: list[subprocess.Popen], timeout: float) -> None:
    """Each writer must exit 0 within ``timeout``; any left running is killed."""
    try:
        for proc in procs:
            assert proc.wait(timeout) == 0, f"writer failed: {proc.args}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def writer_command(storage: str | os.PathLike, count: int, tag: str, *, start: int = 0,
                   per_minute: int = 1_000_000, index_log: str | os.PathLike | None = None,
                   rate: float | None = None, writes: int = 40, pause_ms: float = 0.0,
                   times: str | os.PathLike | None = None, user: str = "www-data",
                   originals: bool = False, shard: str = "0/1",
                   base: dt.datetime = BASE_MINUTE,
                   start_at: float | None = None) -> list[str]:
    """argv of a writer process (run it with cwd=REPO or anywhere: the path is absolute)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--storage", os.fspath(storage),
            "--count", str(count), "--tag", tag, "--start", str(start),
            "--per-minute", str(per_minute), "--writes", str(writes),
            "--pause-ms", str(pause_ms), "--user", user,
            "--base", base.strftime("%Y%m%d%H%M")]
    if index_log:
        argv += ["--index-log", os.fspath(index_log)]
    if rate:
        argv += ["--rate", str(rate)]
    if times:
        argv += ["--times", os.fspath(times)]
    if start_at:
        argv += ["--start-at", f"{start_at:.6f}"]
    if originals:
        argv += ["--originals", "--shard", shard]
    return argv


def shard_of(entries: list[Entry], shard: str) -> list[Entry]:
    k, n = (int(x) for x in shard.split("/"))
    return entries[k::n]


def read_times(path: str | os.PathLike) -> dict[str, float]:
    out = {}
    with open(path, encoding="ascii") as stream:
        for line in stream:
            uid, when = line.split()
            out[uid] = float(when)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ModSecurity 2.9.7 Concurrent-entry writer")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--index-log")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--tag", default="A")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--per-minute", type=int, default=1_000_000)
    parser.add_argument("--user", default="www-data")
    parser.add_argument("--base", default=BASE_MINUTE.strftime("%Y%m%d%H%M"),
                        help="minute directory of entry 0 (YYYYmmddHHMM)")
    parser.add_argument("--rate", type=float, default=None, help="entries/s (default: max)")
    parser.add_argument("--writes", type=int, default=40)
    parser.add_argument("--pause-ms", type=float, default=0.0, help="pause after each write")
    parser.add_argument("--times", help="file for '<unique_id> <close time>' lines")
    parser.add_argument("--start-at", type=float, help="begin at this time.time()")
    parser.add_argument("--originals", action="store_true",
                        help="write the corpus entries themselves (names, ids, index lines)")
    parser.add_argument("--shard", default="0/1", help="k/n: every n-th entry from k")
    args = parser.parse_args(argv)
    if args.originals:
        entries = shard_of(original_entries(), args.shard)[:args.count]
    else:
        entries = make_entries(args.count, args.tag, args.start, args.per_minute,
                               args.user or None,
                               dt.datetime.strptime(args.base, "%Y%m%d%H%M"))
    began = time.monotonic()
    closed = write_all(args.storage, entries, args.index_log, args.rate, args.writes,
                       args.pause_ms / 1000, args.start_at)
    elapsed = time.monotonic() - began
    if args.times:
        with open(args.times, "w", encoding="ascii") as stream:
            stream.writelines(f"{uid} {when:.6f}\n" for uid, when in closed.items())
    print(json.dumps({"entries": len(closed), "seconds": round(elapsed, 3),
                      "rate": round(len(closed) / max(elapsed, 1e-9), 1)}), flush=True)
    return 0


# -- the daemon -------------------------------------------------------------------------------
class WatchDaemon:
    """``modsec-tools watch --foreground`` as a subprocess, with its own temp config and
    sinks (SQLite under ``tmp``). Its stderr (the log) goes to ``tmp/watch.log``."""

    def __init__(self, tmp: Path, *, index_log: bool = False, rescan_seconds: float = 1.0,
                 flush_ms: float | None = None, extra_args: tuple[str, ...] = (),
                 settings: dict[str, str] | None = None, db: bool = True,
                 storage: Path | None = None) -> None:
        self.tmp = Path(tmp)
        self.storage = Path(storage) if storage else self.tmp / "storage"
        self.state = self.tmp / "state"
        self.events = self.tmp / "out" / "events.log"
        self.archive = self.tmp / "out" / "archive.log"
        self.db_path = self.tmp / "state" / "events.db"
        self.quarantine = self.tmp / "quarantine"
        self.index_log = self.tmp / "index.log" if index_log else None
        self.log_path = self.tmp / "watch.log"
        self.config = self.tmp / "modsec-tools.conf"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        os.chmod(self.storage, 0o777)
        values = {
            "storage_dir": str(self.storage), "archive": str(self.archive),
            "event_log": str(self.events), "state_dir": str(self.state),
            "quarantine_dir": str(self.quarantine), "node": "watchtest",
            "db": f"sqlite:///{self.db_path}" if db else "none",
            "index_log": str(self.index_log) if self.index_log else "",
        }
        values.update(settings or {})
        self.config.write_text("[modsec-tools]\n" + "".join(
            f"{key} = {value}\n" for key, value in values.items()))
        self.args = ["--rescan-seconds", str(rescan_seconds), *extra_args]
        if flush_ms is not None:
            self.args += ["--flush-ms", str(flush_ms)]
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._lines_seen = 0
        self._offset = 0
        self._log_mark = 0
        self.groups: list[int] = []   # process group ids of every daemon started

    # process control -----------------------------------------------------------------------
    def command(self) -> list[str]:
        return [sys.executable, "-m", "modsec_tools.cli", "watch", "--foreground",
                "--config", str(self.config), *self.args]

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> "WatchDaemon":
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        self._log_file = open(self.log_path, "ab")
        self._log_mark = self._log_file.tell()  # wait_log looks only at this run's lines
        # Its own process group (like a systemd unit's cgroup): kill(group=True) and the
        # cleanup reach any worker processes it forked, even orphaned ones.
        self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(self.proc.pid)
        if wait_ready:
            self.wait_log("watching ", timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; asserts a clean exit (status 0) within ``timeout`` seconds."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"watch did not exit within {timeout} s of SIGTERM\n"
                                 + self.log_tail())
        self._close_log()
        assert code == 0, f"watch exited {code}\n{self.log_tail()}"
        return code

    def kill(self, group: bool = False) -> None:
        """kill -9 of the daemon, as a crash or the OOM killer would; ``group=True`` kills its
        whole process group at once (what systemd's KillMode=control-group does)."""
        assert self.proc is not None
        if group:
            _killpg(self.proc.pid)
        self.proc.kill()
        self.proc.wait()
        self._close_log()

    def orphans(self) -> list[int]:
        """Live processes left in the process groups of daemons we started before the
        current one (their forked workers, when the daemon died without reaping them)."""
        current = self.proc.pid if self.proc is not None and self.proc.poll() is None else -1
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == current:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as stream:
                    fields = stream.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            group = int(fields[2])
            if fields[0] != b"Z" and group in self.groups and group != current:
                found.append(int(entry))
        return found

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "WatchDaemon":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for group in self.groups:  # orphaned workers of killed daemons, if any
            _killpg(group)
        self._close_log()

    # observation ---------------------------------------------------------------------------
    def log_text(self, this_run: bool = False) -> str:
        """The whole log (every run), or only what the current run wrote."""
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_mark if this_run else 0:].decode("utf-8", "replace")

    def log_tail(self, lines: int = 40) -> str:
        return "--- watch.log (tail) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text(this_run=True):
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"watch exited ({self.proc.returncode}) before logging "
                                     f"{text!r}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout} s\n"
                                     + self.log_tail())
            time.sleep(0.05)

    def event_count(self) -> int:
        """Lines in the event log (incremental: cheap to poll)."""
        try:
            with open(self.events, "rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                if size < self._offset:
                    self._offset, self._lines_seen = 0, 0
                stream.seek(self._offset)
                data = stream.read(size - self._offset)
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        self._lines_seen += data.count(b"\n")
        return self._lines_seen

    def wait_events(self, count: int, timeout: float = 30.0) -> float:
        """Wait (bounded) until the event log has ``count`` lines; returns the seconds taken."""
        began = time.monotonic()
        deadline = began + timeout
        while (have := self.event_count()) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"watch exited ({self.proc.returncode}) with {have}/"
                                     f"{count} events\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"only {have}/{count} event lines after {timeout} s\n"
                                     + self.log_tail())
            time.sleep(0.02)
        return time.monotonic() - began

    def status(self) -> dict:
        return json.loads((self.state / "status.json").read_text())

    def vm_hwm_kib(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0


def _killpg(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- the sinks --------------------------------------------------------------------------------
def event_ids(path: str | os.PathLike) -> list[str]:
    from modsec_tools.eventline import parse_line
    try:
        with open(path, encoding="ascii") as stream:
            return [parse_line(line).id for line in stream]
    except FileNotFoundError:
        return []


def db_ids(path: str | os.PathLike) -> list[str]:
    if not os.path.exists(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [row[0] for row in conn.execute("SELECT unique_id FROM events")]
    finally:
        conn.close()


def archive_entries(path: str | os.PathLike,
                    expected: dict[str, tuple[int, str]]) -> tuple[list[str], list[str]]:
    """Walk the archive entry by entry: at each offset read the entry's id, take as many
    bytes as the original had, and compare their md5 with the original's.

    Returns (ids in archive order, problems). Every byte must belong to a known entry."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], []
    ids: list[str] = []
    problems: list[str] = []
    offset = 0
    while offset < len(data):
        head = data[offset:offset + 4096]
        match = _NATIVE_ID.match(head) if head.startswith(b"--") else _JSON_ID.search(head)
        if match is None:
            problems.append(f"offset {offset}: not an entry start: {head[:80]!r}")
            break
        uid = match.group(1).decode("ascii", "replace")
        if uid not in expected:
            problems.append(f"offset {offset}: unexpected entry {uid}")
            break
        size, digest = expected[uid]
        size_in_archive = size if data[offset + size - 1:offset + size] == b"\n" else size + 1
        chunk = data[offset:offset + size]
        if hashlib.md5(chunk).hexdigest() != digest:
            problems.append(f"{uid}: archived bytes differ from what was written "
                            f"(half-written read?)")
            break
        ids.append(uid)
        offset += size_in_archive
    return ids, problems


def entry_files(storage: str | os.PathLike) -> list[str]:
    from modsec_tools.tree.layout import ENTRY_NAME
    found = []
    for dirpath, _dirs, files in os.walk(storage):
        found += [os.path.join(dirpath, f) for f in files if ENTRY_NAME.fullmatch(f)]
    return found


def duplicates(ids: list[str]) -> dict[str, int]:
    return {uid: n for uid, n in Counter(ids).items() if n > 1}


def check_exactly_once(daemon: WatchDaemon, expected: dict[str, tuple[int, str]],
                       allow_quarantine: bool = False) -> dict[str, list[str]]:
    """Every expected entry exactly once in the event log, the archive (byte-identical) and
    the DB; nothing else in them; nothing quarantined; no entry file left behind.
    Returns the ids per sink; raises AssertionError with the first differences."""
    want = set(expected)
    sinks = {"event log": event_ids(daemon.events),
             "database": db_ids(daemon.db_path)}
    archived, problems = archive_entries(daemon.archive, expected)
    sinks["archive"] = archived
    errors = list(problems)
    for name, ids in sinks.items():
        dup = duplicates(ids)
        if dup:
            errors.append(f"{name}: {len(dup)} duplicated ids, e.g. {list(dup.items())[:3]}")
        missing = want - set(ids)
        if missing:
            errors.append(f"{name}: {len(missing)} missing, e.g. {sorted(missing)[:3]}")
        extra = set(ids) - want
        if extra:
            errors.append(f"{name}: {len(extra)} unexpected, e.g. {sorted(extra)[:3]}")
    left = entry_files(daemon.storage)
    if left:
        errors.append(f"{len(left)} entry files left in the tree, e.g. {left[:3]}")
    held = quarantined(daemon.quarantine)
    if held and not allow_quarantine:
        errors.append(f"quarantined: {list(held)[:6]}")
    if errors:
        raise AssertionError("exactly-once violated:\n  " + "\n  ".join(errors)
                             + "\n" + daemon.log_tail())
    return sinks


def digests(entries: list[Entry]) -> dict[str, tuple[int, str]]:
    return {e.uid: e.digest for e in entries}


if __name__ == "__main__":
    sys.exit(main())
