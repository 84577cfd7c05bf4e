"""The command line around ingest: one instance at a time, ``config check``, ``db init`` /
``db status``, the ``.local`` override, and usage errors (exit 2, the key named)."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from modsec_tools.db import Database, open_database, parse_target, schema
from modsec_tools.db.rows import EVENT_COLUMNS, MATCH_COLUMNS, Row, upgraded_match
from modsec_tools.pipeline.ingest import Stats
from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(sb: ih.Sandbox) -> ih.Sandbox:
    """Every directory the config names exists (config check then has nothing to warn about
    but the missing schema)."""
    for path in (sb.storage, sb.out, sb.state, sb.quarantine):
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
    return sb


# -- one instance at a time ---------------------------------------------------------------------
def test_second_ingest_at_once_fails_clearly(fast_tmp):
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp, settings={"batch_size": "50"})
    made = ih.replicate("r2_auditengine_on_concurrent", sb.storage, 1)
    lock = sb.state / "modsec-tools.lock"
    first = sb.popen(log_name="first.log")
    try:
        # the first one holds the lock once its pid is in the lock file; freeze it there
        deadline = time.monotonic() + 30
        while True:
            try:
                if lock.read_text().strip() == str(first.pid):
                    break
            except FileNotFoundError:
                pass
            assert first.poll() is None, "the first ingest ended before the test"
            assert time.monotonic() < deadline, "the first ingest never took the lock"
            time.sleep(0.005)
        os.kill(first.pid, signal.SIGSTOP)
        second = sb.run(expect=1)
        assert (f"another modsec-tools ingest/watch holds {lock} (pid {first.pid})"
                in second.stderr), second.stderr
        assert "ingest:" not in second.stderr  # it did nothing
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(120) == 0, (sb.logs / "first.log").read_text()
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            ih.kill_group(first)
    third = sb.run()  # the lock went with the first process
    assert "ingest: 0 entries" in third.stderr
    assert len(sb.lines()) == len(made)


def _storage_error(report: str, path: Path) -> bool:
    """``config check`` printed an error line about storage_dir naming ``path``."""
    return any(line.startswith("error: storage_dir ") and str(path) in line
               for line in report.splitlines())


# -- config check -------------------------------------------------------------------------------
def test_config_check_good_config(fast_tmp):
    sb = _ready(ih.Sandbox(fast_tmp))
    done = sb.run(action="config check")
    assert "configuration: 0 error(s)" in done.stdout, done.stdout
    assert "error:" not in done.stdout


def test_config_check_good_mariadb(fast_tmp, mariadb, mariadb_db):
    sb = _ready(ih.Sandbox(fast_tmp, db=mariadb.url_for(mariadb_db)))
    done = sb.run(action="config check")
    assert "configuration: 0 error(s)" in done.stdout, done.stdout
    assert mariadb.password not in done.stdout + done.stderr


def test_config_check_unreachable_database(fast_tmp):
    port = free_port()  # nothing listens there
    sb = _ready(ih.Sandbox(fast_tmp, db=f"mysql://modsec:secretpw@127.0.0.1:{port}/modsec"))
    done = sb.run(action="config check", expect=1)
    assert "error: database: mysql modsec@127.0.0.1/modsec" in done.stdout, done.stdout
    assert "configuration: 1 error(s)" in done.stdout
    assert "secretpw" not in done.stdout + done.stderr


def test_config_check_unusable_sqlite(fast_tmp):
    blocker = fast_tmp / "not-a-directory"
    blocker.write_text("x")
    sb = _ready(ih.Sandbox(fast_tmp, db=f"sqlite:///{blocker}/events.db"))
    done = sb.run(action="config check", expect=1)
    assert f"error: db directory {blocker} is not a directory" in done.stdout, done.stdout


def test_config_check_index_log_not_created_yet_is_a_warning(fast_tmp):
    """Apache creates SecAuditLog when it starts: right after install it may not exist."""
    index = fast_tmp / "apache" / "modsec_audit.log"
    index.parent.mkdir()
    sb = _ready(ih.Sandbox(fast_tmp, settings={"index_log": str(index)}))
    done = sb.run(action="config check")
    assert f"warning: index_log {index} does not exist yet" in done.stdout, done.stdout
    assert "configuration: 0 error(s)" in done.stdout
    # its directory missing, or something else than a file there: errors
    index.parent.rmdir()
    done = sb.run(action="config check", expect=1)
    assert f"error: index_log {index}: its directory does not exist" in done.stdout, done.stdout
    index.mkdir(parents=True)
    done = sb.run(action="config check", expect=1)
    assert f"error: index_log {index} is not a file" in done.stdout, done.stdout


def test_config_check_storage_dir_missing_with_its_parent(fast_tmp):
    sb = _ready(ih.Sandbox(fast_tmp, settings={"storage_dir": str(fast_tmp / "no" / "such")}))
    done = sb.run(action="config check", expect=1)
    assert _storage_error(done.stdout, fast_tmp / "no" / "such"), done.stdout


def test_config_check_storage_dir_missing(fast_tmp):
    """A typo'd SecAuditLogStorageDir whose parent exists and is writable: nothing creates
    it (Apache does), so it is an error, not a warning. (Regression: it was reported as
    'does not exist yet (it will be created)' with exit 0.)"""
    missing = fast_tmp / "modsec_audit"
    sb = _ready(ih.Sandbox(fast_tmp, settings={"storage_dir": str(missing)}))
    assert not missing.exists() and os.access(fast_tmp, os.W_OK)
    done = sb.run(action="config check", expect=None)
    assert _storage_error(done.stdout, missing), done.stdout
    assert done.returncode == 1


def test_ingest_with_missing_storage_dir_fails(fast_tmp):
    """(Regression: ingest only logged 'cannot open storage directory' and exited 0, so a
    cron job never reported a broken storage_dir.)"""
    sb = _ready(ih.Sandbox(fast_tmp))
    os.rmdir(sb.storage)
    done = sb.run(expect=None)
    assert "storage directory" in done.stderr and str(sb.storage) in done.stderr
    assert done.returncode == 1


# -- db init / status ---------------------------------------------------------------------------
def _db_status_cycle(sb: ih.Sandbox, describe: str) -> None:
    if sb.db.startswith("sqlite"):   # (status is read-only: it does not create the file)
        before = sb.run(action="db status", expect=1)
        assert f"{describe}: no such database file" in before.stderr, before.stderr
    else:
        before = sb.run(action="db status")
        assert f"{describe}: schema 0 (this modsec-tools: 4)" in before.stdout, before.stdout
    init = sb.run(action="db init")
    assert f"{describe}: applied schema [1, 2, 3, 4]" in init.stdout, init.stdout
    status = sb.run(action="db status")
    assert f"{describe}: schema 4 (this modsec-tools: 4)" in status.stdout, status.stdout
    again = sb.run(action="db init")
    assert f"{describe}: schema 4 is current" in again.stdout
    migrate = sb.run(action="db migrate")
    assert f"{describe}: schema 4 is current" in migrate.stdout


def test_db_init_then_status_sqlite(fast_tmp):
    sb = ih.Sandbox(fast_tmp)
    _db_status_cycle(sb, f"sqlite {sb.db_path}")
    conn = ih.sqlite_connect(sb.db_path)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {"events", "matches", "logs", "schema_version"} <= names


def test_db_init_then_status_mariadb(fast_tmp, mariadb, mariadb_db):
    sb = ih.Sandbox(fast_tmp, db=mariadb.url_for(mariadb_db))
    _db_status_cycle(sb, f"mysql modsec@127.0.0.1/{mariadb_db}")
    conn = mariadb.connect(mariadb_db)
    try:
        tables = {r[0] for r in ih.query(conn, "SHOW FULL TABLES")}
    finally:
        conn.close()
    assert {"events", "matches", "logs", "schema_version"} <= tables


def _schema_1(url: str, monkeypatch) -> Database:
    """A database as version 1 of modsec-tools made it."""
    db = open_database(parse_target(url))
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", {1: schema.MIGRATIONS[1]})
        assert db.migrate() == [1]
    return db


# Rows as schema 1/2 stored them: seq, then rule_id ... tags. Two events share a message
# (schema 3 stores it once); the values are hostile bytes and text.
_OLD_MESSAGE = ("942100", "CRITICAL", b"SQL Injection Attack Detected via libinjection",
                b"Matched Data: s&1c found within ARGS:id: 1' or '1'='1", b"\x00'\"\\\n\xff",
                "OWASP_CRS/3.3.4", "", "", "/etc/crs/REQUEST-942.conf", "45",
                b'["attack-sqli","OWASP_CRS"]')
_OLD_MATCHES = {"AbC": [(0, *_OLD_MESSAGE), (1, "949110", "CRITICAL", b"Inbound Anomaly",
                                             None, b"x", None, None, None, None, None, None)],
                "dEf": [(0, *_OLD_MESSAGE)]}


def _fill_schema_1(db: Database) -> None:
    def fill(cursor):
        for uid, matches in _OLD_MATCHES.items():
            cursor.execute(f"INSERT INTO events (node, unique_id, intercepted, incomplete, "
                           f"primary_seq, uri) VALUES ('n', {db.mark}, 1, 0, 0, {db.mark})",
                           (uid, b"/?id=1' or '1'='1"))
            cursor.execute(f"SELECT id FROM events WHERE unique_id = {db.mark}", (uid,))
            event_id = cursor.fetchone()[0]
            for match in matches:
                cursor.execute(f"INSERT INTO matches ({','.join(MATCH_COLUMNS)}) VALUES "
                               f"({','.join([db.mark] * len(MATCH_COLUMNS))})",
                               (event_id, *match))
    db._run(fill)


def _views(db: Database) -> tuple[list, list]:
    def read(cursor):
        cursor.execute(f"SELECT {','.join(MATCH_COLUMNS)} FROM matches "
                       "ORDER BY event_id, seq")
        matches = [tuple(row) for row in cursor.fetchall()]
        cursor.execute("SELECT * FROM logs ORDER BY unique_id")
        return matches, [tuple(row) for row in cursor.fetchall()]
    return db._run(read)


@pytest.mark.parametrize("kind", ["sqlite", "mariadb"])
def test_db_migrate_from_schema_1(kind, fast_tmp, monkeypatch, request):
    """A version-1 database with rows is brought to version 3 by `db migrate`: the
    ``matches`` and ``logs`` views show exactly what the tables showed, a message shared by
    two events is stored once, and (version 2) ids differing only in case are two rows."""
    if kind == "mariadb":
        mariadb, name = request.getfixturevalue("mariadb"), request.getfixturevalue("mariadb_db")
        url = mariadb.url_for(name)
    else:
        url = f"sqlite:///{fast_tmp / 'old.db'}"
    sb = ih.Sandbox(fast_tmp, db=url)
    db = _schema_1(url, monkeypatch)
    try:
        _fill_schema_1(db)
        before = _views(db)
        assert [m[1:] for m in before[0]] == [m for ms in _OLD_MATCHES.values() for m in ms]
        db.close()
        assert "schema 1 (this modsec-tools: 4)" in sb.run(action="db status").stdout
        migrated = sb.run(action="db migrate")
        assert "applied schema [2, 3, 4]" in migrated.stdout
        assert "schema 3: moving 3 rows of the matches table" in migrated.stderr
        assert _views(db) == before
        assert db.count("messages") == 2 and db.count("event_messages") == 3
        assert db.table_type("matches") == "view"
        # what schema 3 inserts for the same message is the row the migration made
        values = [None] * len(EVENT_COLUMNS)
        values[:2] = ["n", "ghI"]
        values[EVENT_COLUMNS.index("intercepted")] = 0
        values[EVENT_COLUMNS.index("incomplete")] = 0
        new = Row("ghI", tuple(values), [upgraded_match((0, *_OLD_MESSAGE))])
        assert db.insert("n", [new]) == 1
        assert db.count("messages") == 2 and db.count("matches") == 4
        if kind == "mariadb":  # version 2: unique_id compared byte by byte
            values[1] = "GHI"
            assert db.insert("n", [Row("GHI", tuple(values), [])]) == 1
            assert db.count("events") == 4
    finally:
        db.close()


def test_db_status_unreachable_database_fails(fast_tmp):
    """(Regression: version() turned every error into 0, so this printed 'schema 0 (this
    modsec-tools: 1)' with exit 0, exactly as for an empty database.)"""
    sb = ih.Sandbox(fast_tmp, db=f"mysql://modsec:pw@127.0.0.1:{free_port()}/modsec")
    done = sb.run(action="db status", expect=None)
    assert "schema 0" not in done.stdout, done.stdout
    assert done.returncode == 1
    assert "Can't connect" in done.stderr


def test_db_without_database(fast_tmp):
    sb = ih.Sandbox(fast_tmp, db="none")
    done = sb.run(action="db status", expect=2)
    assert "no database configured" in done.stderr


# -- the .local override ------------------------------------------------------------------------
def test_local_file_overrides_the_config_file(fast_tmp):
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp, settings={"node": "fromconf", "batch_size": "7"})
    local = sb.config.with_suffix(".local")
    local.write_text("[modsec-tools]\nnode = fromlocal\n")
    shown = sb.run(action="config show")
    assert "node = fromlocal\n" in shown.stdout
    assert "batch_size = 7\n" in shown.stdout  # not overridden: the .conf value
    assert f"# read from: {sb.config}, {local}" in shown.stdout
    flagged = sb.run("--node", "fromflag", action="config show")
    assert "node = fromflag\n" in flagged.stdout  # a flag beats both files

    ih.merge_runs(fast_tmp, sb.storage, ("r7_pl2_concurrent_noremoteip",))
    sb.run()
    nodes = {line.node for line in sb.lines()}
    assert nodes == {"fromlocal"}
    conn = ih.sqlite_connect(sb.db_path)
    try:
        assert {r[0] for r in conn.execute("SELECT DISTINCT node FROM events")} == {"fromlocal"}
    finally:
        conn.close()


def test_config_show_does_not_print_the_database_password(fast_tmp):
    """Like every other output (Target.describe(), config check, logs). (Regression: the db
    URL was printed as written, password included.)"""
    sb = ih.Sandbox(fast_tmp, db="mysql://modsec:S3cretPw@db1.example:3306/modsec")
    shown = sb.run(action="config show")
    assert "db = mysql://modsec" in shown.stdout and "db1.example" in shown.stdout
    assert "S3cretPw" not in shown.stdout


# -- usage errors: exit 2, the key named --------------------------------------------------------
BAD_FLAGS = [
    ("--batch-size", "x", "batch_size"),
    ("--batch-size", "0", "batch_size"),
    ("--batch-size", "-5", "batch_size"),
    ("--max-entry-size", "0", "max_entry_size"),
    ("--max-entry-size", "lots", "max_entry_size"),
    ("--workers", "-1", "workers"),
    ("--quarantine-after", "soon", "quarantine_after"),
    ("--quarantine-after", "nan", "quarantine_after"),
    ("--quarantine-after", "-1", "quarantine_after"),
    ("--settle-seconds", "inf", "settle_seconds"),
    ("--settle-seconds", "two", "settle_seconds"),
    ("--node", "bad node!", "node"),
    ("--detect-min-severity", "HUGE", "detect_min_severity"),
    ("--detect-min-score", "5.5", "detect_min_score"),
    ("--trusted-proxies", "10.0.0.300", "trusted_proxies"),
]


@pytest.mark.parametrize("flag, value, key", BAD_FLAGS, ids=[f"{f}={v}" for f, v, _ in BAD_FLAGS])
def test_bad_flag_value_exits_2_naming_the_key(fast_tmp, flag, value, key):
    sb = _ready(ih.Sandbox(fast_tmp))
    done = sb.run(flag, value, expect=2)
    assert f"ERROR: {key} (command line): " in done.stderr, done.stderr
    assert not sb.events.exists()  # nothing ran


def test_bad_value_in_config_file_exits_2_naming_key_and_file(fast_tmp):
    sb = _ready(ih.Sandbox(fast_tmp, settings={"batch_size": "ten"}))
    done = sb.run(expect=2)
    assert f"ERROR: batch_size ({sb.config}): " in done.stderr, done.stderr


def test_unknown_key_in_config_file_exits_2_naming_it(fast_tmp):
    sb = _ready(ih.Sandbox(fast_tmp, settings={"batch_sise": "100"}))
    for action in ("ingest", "config check", "db status"):
        done = sb.run(action=action, expect=2)
        # (config check reports it on stdout, with every other problem)
        assert f"{sb.config}: unknown key 'batch_sise' in [modsec-tools]" in (
            done.stdout if action == "config check" else done.stderr)


def test_unknown_key_in_local_file_exits_2_naming_it(fast_tmp):
    sb = _ready(ih.Sandbox(fast_tmp))
    sb.config.with_suffix(".local").write_text("[modsec-tools]\nstorage_dri = /tmp\n")
    done = sb.run(expect=2)
    assert "unknown key 'storage_dri' in [modsec-tools]" in done.stderr, done.stderr


def test_missing_config_file_exits_2(fast_tmp):
    missing = fast_tmp / "nope.conf"
    done = ih.run_cli([*ih.Sandbox(fast_tmp).command()[:4], "ingest", "--config", str(missing)])
    assert done.returncode == 2
    assert f"{missing}: no such configuration file" in done.stderr


def test_unknown_flag_exits_2(fast_tmp):
    sb = ih.Sandbox(fast_tmp)
    done = sb.run("--batch-sizes", "5", expect=2)
    assert "unrecognized arguments: --batch-sizes" in done.stderr, done.stderr


def test_config_check_warns_when_apache_cannot_reach_the_storage_tree(fast_tmp):
    """The tree under a directory Apache's user cannot enter (as /var/log/apache2 is on
    Debian): ModSecurity writes no entry at all, so config check says which directory."""
    from modsec_tools.configcheck import apache_user
    user = apache_user()
    if user is None or user.pw_uid == os.geteuid():
        pytest.skip("needs an Apache user (www-data, apache, ...) other than this one")
    fast_tmp.chmod(0o755)
    locked = fast_tmp / "logs"
    storage = locked / "modsec_audit"
    storage.mkdir(parents=True)
    storage.chmod(0o777)
    locked.chmod(0o750)
    sb = _ready(ih.Sandbox(fast_tmp, settings={"storage_dir": str(storage)}))
    done = sb.run(action="config check")
    assert (f"warning: storage_dir {storage}: Apache's user {user.pw_name} cannot enter "
            f"{locked} (") in done.stdout, done.stdout
    assert "configuration: 0 error(s)" in done.stdout
    locked.chmod(0o755)
    storage.chmod(0o755)  # enters it, cannot create the day directories in it
    done = sb.run(action="config check")
    assert f"cannot write {storage} (" in done.stdout, done.stdout
    storage.chmod(0o777)
    done = sb.run(action="config check")
    assert "Apache's user" not in done.stdout, done.stdout


def test_summary_counts_in_words():
    """The end-of-run line a cron mail shows: singular and plural as English has them."""
    one = Stats(entries=1, bytes=5_300, errors=1).summary()
    assert one.startswith("1 entry (0.0 MB) in ") and one.endswith("; 1 error")
    many = Stats(entries=12, bytes=2_500_000, quarantined=2, spooled=3).summary()
    assert many.startswith("12 entries (2.5 MB) in ")
    assert many.endswith("; 2 quarantined; 3 spooled for the database; 0 errors")
