"""Helpers for the ``modsec-tools ingest`` tests: a sandbox (storage tree, sinks, state,
config file) driven through the real command line, and readers that check every sink
independently of the pipeline (archive by ``modsec_tools.tree.sources``, event log by
``modsec_tools.eventline.parse_line``, database by plain SQL).

Entries come from the corpus (``tests.corpus``); ``replicate`` makes many valid
copies of a run's tree with fresh unique ids (file name, section A, ``[unique_id "..."]``
in section H, index line), which is how the crash test gets 20,000 distinct entries.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pytest

from modsec_tools.db import open_database, parse_target
from modsec_tools.audit.derive import decisive_message
from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.event import Event, raw
from modsec_tools.eventline import CAPS
from modsec_tools.audit.indexlog import IndexLine, parse_index_line
from modsec_tools.jsonout import event_to_dict
from modsec_tools.audit.verdict import VerdictPolicy

from tests import corpus

REPO = corpus.REPO
CONCURRENT_RUNS = ("r1_relevant_concurrent", "r2_auditengine_on_concurrent",
                   "r3_json_concurrent", "r6_detectiononly_concurrent",
                   "r7_pl2_concurrent_noremoteip")
NODE = "ingesttest"
#: The original tool's table, now the ``logs`` view: its 19 columns, in order.
LOGS_COLUMNS = ("REQUEST_METHOD", "REQUEST_URI", "REMOTE_ADDR", "ruleId", "Host", "msg",
                "data", "unique_id", "severity", "maturity", "accuracy", "User_Agent",
                "responce_header", "Engine_Mode", "Score", "SQLi", "XSS", "phase",
                "created_at")
ENTRY_NAME = re.compile(r"\d{8}-\d{6}-[A-Za-z0-9@_.-]{8,64}")
_NATIVE_ID = re.compile(rb"--[0-9a-fA-F]{8,32}-A--\r?\n\[[^\]\n]*\] (\S+) ")
_A_HEAD = re.compile(rb"--[0-9a-fA-F]{8,32}-A--\r?\n\[[^\]\n]*\] (\S+) ")
_JSON_ID = re.compile(rb'"transaction_id":\s*"([^"]+)"')
_INDEX_TAIL = re.compile(r"^(.*) (/\S+) (\d+) (\d+) md5:([0-9a-f]{32})\s*$")
OLD = 3 * 3600  # seconds: entries this old are settled and not "in progress"
POLICY = VerdictPolicy()  # the default verdict thresholds: CRITICAL, 5


# -- scratch space ------------------------------------------------------------------------------
@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch directory on tmpfs (/dev/shm) when there is one, else ``tmp_path``.

    What these tests check (order of writes, what is deleted when, what each sink holds
    after kill -9) does not depend on fsync reaching a disk: a killed process's writes are
    in the page cache either way. tmpfs keeps their run time independent of the disk's
    load (ingest fsyncs ~5 times per batch). Import it into a test module to use it."""
    base = Path("/dev/shm")
    if not (base.is_dir() and os.access(base, os.W_OK | os.X_OK)):
        yield tmp_path
        return
    import shutil
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="modsec-ingest-test-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)

@pytest.fixture
def mysql_db(mariadb, mariadb_db):
    """A connected Database on a fresh database of the session's MariaDB server. Import it
    into a test module to use it."""
    db = open_database(parse_target(mariadb.url_for(mariadb_db)))
    db.connect()
    yield db
    db.close()


# -- the sandbox --------------------------------------------------------------------------------
@dataclass
class Sandbox:
    """Everything one ``ingest`` needs, under ``root``; ``db`` is a URL (SQLite by default)."""

    root: Path
    db: str = ""
    index_log: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    #: how Python starts the CLI (a test may put a ``-c`` wrapper here)
    launcher: tuple[str, ...] = ("-m", "modsec_tools.cli")

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.storage = self.root / "storage"
        self.out = self.root / "out"
        self.archive = self.out / "archive.log"
        self.events = self.out / "events.log"
        self.json = self.out / "events.jsonl"   # the fourth sink: on in every sandbox
        self.db_path = self.out / "events.db"
        self.state = self.root / "state"
        self.quarantine = self.root / "quarantine"
        self.config = self.root / "modsec-tools.conf"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        if not self.db:
            self.db = f"sqlite:///{self.db_path}"
        self.write_config()

    def values(self) -> dict[str, str]:
        values = {
            "storage_dir": str(self.storage), "archive": str(self.archive),
            "event_log": str(self.events), "json_log": str(self.json),
            "state_dir": str(self.state),
            "quarantine_dir": str(self.quarantine), "node": NODE, "db": self.db,
            "index_log": str(self.index_log) if self.index_log else "",
        }
        values.update(self.settings)
        return values

    def write_config(self, path: Path | None = None, **extra: str) -> Path:
        path = path or self.config
        values = {**self.values(), **extra}
        path.write_text("[modsec-tools]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
        return path

    def command(self, *args: str, action: str = "ingest") -> list[str]:
        """``-v`` always: the INFO summary line ("ingest: N entries ...") is on stderr."""
        return [sys.executable, *self.launcher, "-v", *action.split(),
                "--config", str(self.config), *args]

    def run(self, *args: str, action: str = "ingest", timeout: float = 180.0,
            expect: int | None = 0) -> subprocess.CompletedProcess:
        """Run ``modsec-tools <action>`` to completion; asserts the exit status unless
        ``expect`` is None."""
        done = run_cli(self.command(*args, action=action), timeout)
        if expect is not None:
            assert done.returncode == expect, (
                f"{action} exited {done.returncode}, expected {expect}\n"
                f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-6000:]}")
        assert "Traceback" not in done.stderr, done.stderr[-6000:]
        return done

    def popen(self, *args: str, log_name: str = "run.log") -> subprocess.Popen:
        """Start ingest in its own process group (kill_group reaches its workers)."""
        log = open(self.logs / log_name, "ab")
        try:
            return subprocess.Popen(self.command(*args), cwd=REPO, env=cli_env(),
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    # what the sinks hold ------------------------------------------------------------------------
    def archived(self) -> list[bytes]:
        return archive_entries(self.archive)

    def lines(self):
        return event_lines(self.events)

    def json_records(self) -> list[dict]:
        """The JSON-lines sink's records; every line must be one whole JSON object."""
        if not self.json.exists():
            return []
        data = self.json.read_bytes()
        assert not data or data.endswith(b"\n"), "a JSON line is cut"
        return [json.loads(line) for line in data.splitlines()]

    def left(self) -> list[str]:
        return entry_files(self.storage)

    def quarantined(self) -> dict[str, Path]:
        """Each quarantined name's path in the tree (as its reason says) → its directory
        in quarantine (holding ``reason`` and, unless it held no data, ``entry``)."""
        return quarantined(self.quarantine)


def quarantined(where: Path) -> dict[str, Path]:
    held = {}
    for directory in sorted(where.iterdir()) if where.exists() else ():
        first = (directory / "reason").read_text().split("\n", 1)[0]
        assert first.startswith("path: "), first
        path = first[len("path: "):].encode("ascii").decode("unicode_escape")
        assert path not in held, f"{path} quarantined twice"
        held[path] = directory
    return held


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NOTIFY_SOCKET", None)
    return env


def run_cli(command: list[str], timeout: float = 180.0,
            stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=cli_env(), stdin=stdin, capture_output=True,
                          text=True, errors="replace", timeout=timeout)


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 of the process and every worker it forked (its process group), then reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# -- corpus trees -------------------------------------------------------------------------------
def extract(run: str, scratch: Path, storage: Path) -> Path:
    """A Concurrent run's storage tree unpacked at ``storage`` (ownership and modes kept)."""
    unpacked = corpus.extract_storage(run, scratch)
    storage.parent.mkdir(parents=True, exist_ok=True)
    os.rename(unpacked, storage)
    return storage


def index_log(run: str) -> Path:
    return corpus.run_dir(run) / "audit" / "index.log"


def tree_files(storage: Path) -> dict[str, bytes]:
    """relpath ("/www-data/2026.../name", as the index log writes it) → bytes, of every
    entry file under ``storage``."""
    found = {}
    for dirpath, _dirs, files in os.walk(storage):
        for name in files:
            if ENTRY_NAME.fullmatch(name):
                path = os.path.join(dirpath, name)
                found["/" + os.path.relpath(path, storage)] = Path(path).read_bytes()
    return found


def entry_files(storage: Path) -> list[str]:
    """Names in the tree shaped like entries (any file type, directories included),
    relative to ``storage``."""
    found = []
    top = len(str(storage)) + 1
    for dirpath, dirs, files in os.walk(storage):
        prefix = dirpath[top:] + "/" if len(dirpath) >= top else ""
        found += [prefix + name for name in files + dirs if ENTRY_NAME.fullmatch(name)]
    return sorted(found)


def directories(storage: Path) -> list[str]:
    return sorted(os.path.relpath(d, storage) for d, _s, _f in os.walk(storage)
                  if d != str(storage))


def age_tree(storage: Path, seconds: float = OLD) -> None:
    """Give every file and directory under ``storage`` an mtime ``seconds`` ago."""
    stamp = time.time() - seconds
    for dirpath, dirs, files in os.walk(storage):
        for name in files + dirs:
            os.utime(os.path.join(dirpath, name), (stamp, stamp), follow_symlinks=False)


def uid_of(data: bytes) -> str | None:
    """The unique id of an entry (native section A, or JSON transaction_id)."""
    match = _NATIVE_ID.match(data) if data.lstrip()[:1] == b"-" else _JSON_ID.search(data)
    return match.group(1).decode("utf-8", "surrogateescape") if match else None


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# -- sinks, read independently ------------------------------------------------------------------
def archive_entries(path: Path) -> list[bytes]:
    """The archive split into entries by ``modsec_tools.tree.sources.iter_path`` (a Serial log);
    every piece must be a whole entry."""
    from modsec_tools.tree.sources import RawEntry, iter_path
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return []
    pieces = []
    for item in iter_path(str(path)):
        assert isinstance(item, RawEntry), f"archive: {item}"
        assert not item.oversized, f"archive: oversized piece at {item.source}"
        pieces.append(item.data)
    return pieces


def archive_ids_fast(path: Path) -> list[str]:
    """Ids of the native entries in the archive by their section A lines alone (cheap
    enough to poll while ingest appends; the final checks split the archive properly)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [m.group(1).decode() for m in _A_HEAD.finditer(data)]


def event_lines(path: Path):
    """Every event-log line parsed with ``parse_line`` (raises on any other line); the file
    must end with a newline."""
    from modsec_tools.eventline import parse_line
    if not os.path.exists(path):
        return []
    data = Path(path).read_bytes()
    if not data:
        return []
    assert data.endswith(b"\n"), f"{path}: last line has no newline: {data[-200:]!r}"
    return [parse_line(line) for line in data.decode("ascii").split("\n")[:-1]]


def sqlite_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def query(conn, sql: str, params: tuple = (), with_columns: bool = False):
    """Rows of ``sql`` on a DB-API connection (sqlite3 or pymysql), ``?`` placeholders;
    with ``with_columns``: (column names, rows)."""
    cursor = conn.cursor()
    if not isinstance(conn, sqlite3.Connection):
        sql = sql.replace("?", "%s")
    cursor.execute(sql, params)
    rows = [tuple(bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in row)
            for row in cursor.fetchall()]
    description = [d[0] for d in cursor.description] if cursor.description else []
    if not isinstance(conn, sqlite3.Connection):
        conn.commit()  # end the read snapshot
    return (description, rows) if with_columns else rows


def database_param(request, tmp: Path) -> "DB":
    """The database of a fixture parametrized with "sqlite" / "mariadb" (the latter from the
    session's MariaDB server, a fresh database)."""
    if request.param == "sqlite":
        path = tmp / "out" / "events.db"
        return DB("sqlite", f"sqlite:///{path}", lambda: sqlite_connect(path))
    server = request.getfixturevalue("mariadb")
    name = request.getfixturevalue("mariadb_db")
    return DB("mariadb", server.url_for(name), lambda: server.connect(name))


def mariadb_unique_ids(connect) -> list[str]:
    """Every unique_id in the events table ([] before the schema exists)."""
    conn = connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW TABLES LIKE 'events'")
            if not cursor.fetchall():
                return []
            cursor.execute("SELECT unique_id FROM events")
            return [row[0] for row in cursor.fetchall()]
    finally:
        conn.close()


def duplicates(ids) -> dict[str, int]:
    return {uid: n for uid, n in Counter(ids).items() if n > 1}


@lru_cache(maxsize=None)
def _tar_files(run: str) -> tuple[tuple[str, bytes], ...]:
    with tarfile.open(corpus.run_dir(run) / "audit" / "storage.tar.gz") as archive:
        return tuple((m.name[len("storage"):], archive.extractfile(m).read())
                     for m in archive.getmembers() if m.isfile())


def tree_files_from_tar(run: str) -> dict[str, bytes]:
    """relpath → bytes of every entry of a Concurrent run, straight from its tarball."""
    return dict(_tar_files(run))


def merge_runs(tmp_path: Path, storage: Path, runs: tuple[str, ...]) -> None:
    """Several corpus runs in one tree (their minute directories do not overlap)."""
    for run in runs:
        unpacked = extract(run, tmp_path / "x", tmp_path / "x" / f"{run}-storage")
        for dirpath, _dirs, files in os.walk(unpacked):
            for name in files:
                source = Path(dirpath) / name
                target = storage / source.relative_to(unpacked)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(source, target)
    age_tree(storage)


# -- many valid entries -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Copy:
    uid: str
    relpath: str
    size: int
    digest: str
    original: str   # relpath of the corpus entry it was made from


def fresh_uid(tag: str, copy: int, number: int, original: str) -> str:
    """An id as long as ModSecurity's (27 characters), unique per (tag, copy, number)."""
    head = f"{tag}{copy:03d}x{number:05d}"
    return (head + original[len(head):])[:len(original)] if len(original) > len(head) + 2 \
        else head + original


def replicate(run: str, storage: Path, copies: int, tag: str = "Cp",
              index_path: Path | None = None, mtime: float | None = None) -> dict[str, Copy]:
    """``copies`` copies of every entry of ``run`` under ``storage`` (same user/day/minute
    directories), each with a fresh unique id in its name, section A, the H
    ``[unique_id "..."]`` fields and (if ``index_path``) a valid index line (size, md5).
    Returns uid → Copy. Files get ``mtime`` (default: 3 hours ago)."""
    audit = corpus.run_dir(run) / "audit"
    heads: dict[str, str] = {}
    for text in (audit / "index.log").read_text("utf-8", "surrogateescape").splitlines():
        match = _INDEX_TAIL.match(text)
        if match:
            heads[match.group(2)] = match.group(1)
    sources = sorted(tree_files_from_tar(run).items())
    stamp = time.time() - OLD if mtime is None else mtime
    made: dict[str, Copy] = {}
    made_dirs: set[str] = set()
    index_out = open(index_path, "ab") if index_path else None
    try:
        for copy in range(copies):
            for number, (relpath, data) in enumerate(sources):
                *dirs, name = relpath.strip("/").split("/")
                old_uid = name.split("-", 2)[2]
                uid = fresh_uid(tag, copy, number, old_uid)
                new = data.replace(old_uid.encode(), uid.encode())
                assert uid_of(new) == uid, relpath
                new_name = name[:16] + uid
                directory = os.path.join(storage, *dirs)
                if directory not in made_dirs:
                    os.makedirs(directory, exist_ok=True)
                    made_dirs.add(directory)
                fd = os.open(os.path.join(directory, new_name),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, new)
                    os.utime(fd, (stamp, stamp))
                finally:
                    os.close(fd)
                new_relpath = "/" + "/".join((*dirs, new_name))
                made[uid] = Copy(uid, new_relpath, len(new), md5(new), relpath)
                if index_out is not None:
                    head = heads[relpath].replace(old_uid, uid)
                    index_out.write(f"{head} {new_relpath} 0 {len(new)} md5:{md5(new)} \n"
                                    .encode("utf-8", "surrogateescape"))
    finally:
        if index_out is not None:
            index_out.close()
    for dirpath, _dirs, _files in os.walk(storage):
        os.utime(dirpath, (stamp, stamp))
    return made


# -- checks against the original files ---------------------------------------------------------
# -- the two databases --------------------------------------------------------------------------
@dataclass
class DB:
    kind: str
    url: str
    connect: Callable[[], object]


def _text(value):
    """A text column as str whether the driver gives str or bytes (BLOB under MySQL)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value


def _time(value):
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="microseconds")
    return value


def _utc(stamp: dt.datetime | None) -> tuple[str | None, int | None]:
    if stamp is None:
        return None, None
    offset = stamp.utcoffset() or dt.timedelta()
    return ((stamp - offset).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds"),
            int(offset.total_seconds() // 60))


def expected_event(event: Event) -> dict:
    created, offset = _utc(event.timestamp)
    return {
        "node": NODE, "unique_id": event.unique_id, "created_at": created,
        "utc_offset_min": offset, "client_ip": event.client_ip, "peer_ip": event.peer_ip,
        "peer_port": event.peer_port, "local_ip": event.local_ip,
        "local_port": event.local_port, "method": raw(event.method), "uri": raw(event.uri),
        "protocol": event.protocol, "host": raw(event.host),
        "user_agent": raw(event.user_agent), "status": event.status,
        "response_status_line": raw(event.response_status_line),
        "intercepted": int(event.intercepted), "phase": event.phase,
        "verdict": POLICY.verdict(event), "anomaly_score": event.anomaly_score,
        "sqli_score": event.scores.get("SQLI"), "xss_score": event.scores.get("XSS"),
        "scores": event.scores or None, "severity": event.severity,
        "rule_ids": ",".join(event.rule_ids), "engine_mode": event.engine_mode,
        "incomplete": 0,
    }


EVENT_QUERY = ("SELECT " + ", ".join(
    ("node", "unique_id", "created_at", "utc_offset_min", "client_ip", "peer_ip", "peer_port",
     "local_ip", "local_port", "method", "uri", "protocol", "host", "user_agent", "status",
     "response_status_line", "intercepted", "phase", "verdict", "anomaly_score", "sqli_score",
     "xss_score", "scores", "severity", "rule_ids", "engine_mode", "incomplete"))
    + " FROM events")


def stored_events(conn) -> dict[str, dict]:
    columns, rows = query(conn, EVENT_QUERY, with_columns=True)
    found: dict[str, dict] = {}
    for row in rows:
        record = dict(zip(columns, row))
        for name in ("node", "unique_id", "client_ip", "peer_ip", "local_ip", "protocol",
                     "verdict", "severity", "rule_ids", "engine_mode", "scores"):
            record[name] = _text(record[name])
        record["created_at"] = _time(record["created_at"])
        record["scores"] = json.loads(record["scores"]) if record["scores"] else None
        assert record["unique_id"] not in found, f"{record['unique_id']} stored twice"
        found[record["unique_id"]] = record
    return found


def stored_matches(conn) -> dict[str, list[tuple]]:
    rows = query(conn, "SELECT e.unique_id, m.seq, m.rule_id, m.severity, m.msg, m.data, "
                          "m.text, m.tags FROM matches m JOIN events e ON e.id = m.event_id "
                          "ORDER BY e.unique_id, m.seq")
    found: dict[str, list[tuple]] = {}
    for uid, seq, rule, severity, msg, data, text, tags in rows:
        found.setdefault(_text(uid), []).append(
            (seq, _text(rule), _text(severity), msg, data, text,
             json.loads(_text(tags)) if tags is not None else None))
    return found


def expected_matches(event: Event) -> list[tuple]:
    return [(seq, m.first.get("id"), m.first.get("severity"), raw(m.first.get("msg")),
             raw(m.first.get("data")), raw(m.text), m.tags or None)
            for seq, m in enumerate(event.messages)]


@dataclass
class Original:
    relpath: str
    data: bytes
    event: Event


def originals(storage: Path, index: dict[str, IndexLine] | None = None) -> dict[str, Original]:
    """Every entry file of the tree (before ingest), parsed, by unique id."""
    found = {}
    for relpath, data in tree_files(storage).items():
        line = index.get(relpath) if index else None
        event = parse_entry(data, relpath, index=line)
        assert not event.incomplete, (relpath, event.problems)
        assert event.unique_id not in found
        found[event.unique_id] = Original(relpath, data, event)
    return found


def read_index(path: Path) -> dict[str, IndexLine]:
    lines = {}
    for text in path.read_text("utf-8", "surrogateescape").splitlines():
        if text.strip():
            line = parse_index_line(text)
            lines[line.relpath] = line
    return lines


# -- the checks, one per sink -------------------------------------------------------------------
def check_database(db: DB, want: dict[str, Original], runs: tuple[str, ...]) -> None:
    conn = db.connect()
    try:
        events = stored_events(conn)
        matches = stored_matches(conn)
        columns, logs = query(conn, "SELECT * FROM logs", with_columns=True)
    finally:
        conn.close()
    assert len(events) == len(want), f"{len(events)} rows for {len(want)} entries"
    assert set(events) == set(want)
    wrong = {}
    for uid, original in want.items():
        expected = expected_event(original.event)
        diff = {k: (events[uid][k], v) for k, v in expected.items() if events[uid][k] != v}
        if diff:
            wrong[uid] = diff
    assert not wrong, f"{len(wrong)} events differ from their files, e.g. " \
                      f"{list(wrong.items())[:2]}"
    bad_matches = [uid for uid, original in want.items()
                   if matches.get(uid, []) != expected_matches(original.event)]
    assert not bad_matches, (f"{len(bad_matches)} events' matches differ, e.g. "
                             f"{bad_matches[0]}: {matches.get(bad_matches[0])[:2]} vs "
                             f"{expected_matches(want[bad_matches[0]].event)[:2]}")
    # Independent of the parser: what Apache's logs say (corpus truth).
    truth = {}
    for run in runs:
        truth.update(corpus.truth(run))
    for uid, record in events.items():
        row = truth[uid]
        # (an HTTP/0.9 entry under DetectionOnly holds no status; only its index line does)
        status = row["status"] if want[uid].event.status is not None else None
        assert (record["status"], bool(record["intercepted"]), record["client_ip"]) == \
            (status, row["intercepted"], row["client_ip"]), uid
        assert set(filter(None, record["rule_ids"].split(","))) == set(row["rule_ids"]), uid
        assert [m[1] for m in matches.get(uid, []) if m[1]] == original_ids(want[uid]), uid

    # The original tool's table, as the ``logs`` view: its 19 columns, one row per event.
    assert tuple(columns) == LOGS_COLUMNS
    assert len(logs) == len(want)
    by_uid = {}
    for row in logs:
        record = dict(zip(columns, row))
        uid = _text(record["unique_id"])
        assert uid not in by_uid, f"logs: {uid} twice"
        by_uid[uid] = record
    for uid, original in want.items():
        event, record = original.event, by_uid[uid]
        decisive = decisive_message(event)        # the message that decided (its row's)
        first = event.messages[decisive] if decisive is not None else None
        expected = {
            "REQUEST_METHOD": raw(event.method), "REQUEST_URI": raw(event.uri),
            "REMOTE_ADDR": event.client_ip, "ruleId": first.first.get("id") if first else None,
            "Host": raw(event.host), "msg": raw(first.first.get("msg")) if first else None,
            "data": raw(first.first.get("data")) if first else None,
            "severity": first.first.get("severity") if first else None,
            "User_Agent": raw(event.user_agent),
            "responce_header": raw(event.response_status_line),
            "Engine_Mode": event.engine_mode, "Score": event.anomaly_score,
            "SQLi": event.scores.get("SQLI"), "XSS": event.scores.get("XSS"),
            "phase": event.phase, "created_at": _utc(event.timestamp)[0]}
        got = {k: (_text(record[k]) if k in ("REMOTE_ADDR", "ruleId", "severity",
                                              "Engine_Mode") else _time(record[k]))
               for k in expected}
        assert got == expected, f"logs row of {uid}: " + str(
            {k: (got[k], v) for k, v in expected.items() if got[k] != v})


def original_ids(original: Original) -> list[str]:
    return [m.first["id"] for m in original.event.messages if "id" in m.first]


def archived_form(data: bytes) -> bytes:
    return data if data.endswith(b"\n") else data + b"\n"


def check_archive(sb: Sandbox, want: dict[str, Original]) -> None:
    pieces = sb.archived()
    order = [uid_of(piece) for piece in pieces]
    assert len(order) == len(want), f"archive: {len(order)} entries for {len(want)}"
    assert not duplicates(order), duplicates(order)
    assert set(order) == set(want)
    for piece, uid in zip(pieces, order):
        assert piece.rstrip(b"\r\n") == want[uid].data.rstrip(b"\r\n"), uid
    # byte-exact: the archive is the entries' bytes, whole, one after the other
    assert sb.archive.read_bytes() == b"".join(archived_form(want[uid].data) for uid in order)


def check_event_log(sb: Sandbox, want: dict[str, Original]) -> None:
    raw_lines = sb.events.read_bytes().split(b"\n")
    assert raw_lines[-1] == b"" and len(raw_lines) - 1 == len(want), \
        f"{len(raw_lines) - 1} event lines for {len(want)} entries"
    lines = sb.lines()
    ids = [line.id for line in lines]
    assert not duplicates(ids) and set(ids) == set(want)
    for line in lines:
        event = want[line.id].event
        assert line.node == NODE
        assert line.time == event.timestamp.isoformat(timespec="microseconds")
        assert line.client == event.client_ip
        assert line.verdict == POLICY.verdict(event)
        assert line.status == ("-" if event.status is None else str(event.status))
        assert line.rules == event.rule_ids
        for name, value in (("method", event.method), ("host", event.host),
                            ("uri", event.uri), ("ua", event.user_agent)):
            expected = raw(value)
            if expected is not None and len(expected) > CAPS[name]:
                assert name in line.truncated
                expected = expected[:CAPS[name]]
            assert getattr(line, name) == expected, (line.id, name)


def check_json_lines(sb: Sandbox, want: dict[str, Original]) -> None:
    """One object per entry, each the event as ``parse --format json`` gives it, with its
    node: the entries parsed again here, from the originals."""
    records = sb.json_records()
    ids = [record["unique_id"] for record in records]
    assert not duplicates(ids) and set(ids) == set(want), \
        f"JSON lines: {len(ids)} records for {len(want)} entries"
    for record in records:
        event = want[record["unique_id"]].event
        expected = {"node": NODE, **event_to_dict(event, POLICY.verdict(event))}
        assert record == json.loads(json.dumps(expected)), record["unique_id"]


def check_tree_empty(sb: Sandbox) -> None:
    assert sb.left() == [], f"entry files left: {sb.left()[:5]}"
    assert not sb.quarantined(), sb.quarantined()


def check_all(sb: Sandbox, db: DB, want: dict[str, Original], runs: tuple[str, ...]):
    check_tree_empty(sb)
    check_archive(sb, want)
    check_event_log(sb, want)
    check_json_lines(sb, want)
    check_database(db, want, runs)




# -- the database spool ---------------------------------------------------------------------------
def spool_ids(path: Path) -> list[str]:
    """Unique ids of the rows held in ``<state_dir>/db-spool``, read frame by frame
    (``MTJ1``, length, CRC-32, JSON) without the product's reader; a torn tail is ignored."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    ids, offset = [], 0
    while offset + 12 <= len(data):
        magic, length, crc = struct.unpack_from("<4sII", data, offset)
        payload = data[offset + 12:offset + 12 + length]
        if magic != b"MTJ1" or len(payload) != length or zlib.crc32(payload) != crc:
            break
        ids += [row[0] for row in json.loads(payload)["rows"]]
        offset += 12 + length
    return ids


# -- entries without the corpus -------------------------------------------------------------------
DATA_ENTRY = REPO / "tests" / "data" / "native_request_body.log"
_DATA_UID = b"awrzAQgx7z821rWArgDqTQAAABE"


def plant_data_entries(storage: Path, tags: list[str], age: float = OLD) -> dict[str, bytes]:
    """One complete entry per tag (the repository's own tests/data sample, its unique id
    made from the tag) in a Concurrent tree under ``storage``, older than ``settle_seconds``;
    returned by unique id. Needs nothing beside the clone."""
    sample = DATA_ENTRY.read_bytes()
    minute = storage / "20261128" / "20261128-1628"
    minute.mkdir(parents=True, exist_ok=True)
    planted = {}
    for tag in tags:
        uid = (tag + "A" * len(_DATA_UID))[:len(_DATA_UID)]
        data = sample.replace(_DATA_UID, uid.encode())
        path = minute / f"20261128-162801-{uid}"
        path.write_bytes(data)
        os.utime(path, (time.time() - age, time.time() - age))
        planted[uid] = data
    return planted


def refuse_rows(db: DB, on: bool, prefix: str = "Refuse") -> None:
    """A trigger (``on``) makes the database itself refuse the events whose unique_id
    starts with ``prefix``, with the message "refused by a trigger"; ``on=False`` drops it."""
    # (sqlite_connect's connections are read-only)
    conn = sqlite3.connect(db.url[len("sqlite:///"):]) if db.kind == "sqlite" else db.connect()
    try:
        cursor = conn.cursor()
        if not on:
            cursor.execute("DROP TRIGGER refuse")
        elif db.kind == "sqlite":
            cursor.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.unique_id "
                           f"LIKE '{prefix}%' BEGIN SELECT RAISE(ABORT, 'refused by a "
                           "trigger'); END")
        else:
            cursor.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW IF "
                           f"NEW.unique_id LIKE '{prefix}%' THEN SIGNAL SQLSTATE '45000' "
                           "SET MESSAGE_TEXT = 'refused by a trigger'; END IF")
        conn.commit()
    finally:
        conn.close()
