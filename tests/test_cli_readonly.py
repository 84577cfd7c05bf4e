"""The commands that look (``parse``, ``config check``, ``config show``, ``db status``) never
create or change a file or directory: not a mistyped database path, not its directories,
not a WAL database's -wal and -shm files."""
from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests import ingest_helpers as ih


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every name under ``root`` with its type, size, mode and times."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            found[path] = (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return found


@pytest.fixture
def sandbox(tmp_path):
    """Entries planted, nothing written yet: the database, out/ and state/ do not exist."""
    sb = ih.Sandbox(tmp_path, db=f"sqlite:///{tmp_path / 'db' / 'events.db'}")
    ih.plant_data_entries(sb.storage, ["Look1x", "Look2x"])
    return sb


def _look(sb: ih.Sandbox, *extra: str) -> list:
    """Run every read-only command; returns their results."""
    return [sb.run(*extra, action=action, expect=None) for action in (
        "config check", "config show", "db status")] + [
        sb.run("--format", "line", str(sb.storage), action="parse", expect=0),
        sb.run(str(ih.DATA_ENTRY), action="parse", expect=0)]


def test_nothing_is_created_for_a_database_not_made_yet(sandbox):
    before = _snapshot(sandbox.root)
    check, show, status, *_ = _look(sandbox)
    assert _snapshot(sandbox.root) == before
    db_file = sandbox.root / "db" / "events.db"
    assert status.returncode == 1
    assert (f"sqlite {db_file}: no such database file (ingest, watch or 'db init' create it)"
            in status.stderr), status.stderr
    assert f"warning: db directory {db_file.parent} does not exist yet" in check.stdout
    assert show.returncode == 0


def test_a_mistyped_path_is_not_created(sandbox, tmp_path):
    typo = tmp_path / "zz" / "yy" / "typo.db"
    status = sandbox.run("--db", str(typo), action="db status", expect=1)
    assert f"sqlite {typo}: no such database file" in status.stderr
    assert not (tmp_path / "zz").exists()
    nope = Path(f"/nope-modsec-tools-{uuid.uuid4().hex[:8]}")
    check = sandbox.run("--db", f"sqlite:///{nope}/x.db", action="config check", expect=None)
    assert not nope.exists(), check.stdout
    assert f"db directory {nope} does not exist yet" in check.stdout


def test_a_wal_database_gets_no_wal_or_shm_files(sandbox):
    sandbox.run(action="db init")
    sandbox.run()  # (ingest) the entries are stored; every connection is closed again
    db_file = sandbox.root / "db" / "events.db"
    assert not os.path.exists(f"{db_file}-wal")
    before = _snapshot(sandbox.root)
    check, show, status, *_ = _look(sandbox)
    assert _snapshot(sandbox.root) == before
    assert status.returncode == 0 and f"sqlite {db_file}: schema 4" in status.stdout
    assert "error" not in check.stdout.replace("0 error(s)", ""), check.stdout


def _contents(root: Path) -> dict[str, tuple]:
    """Names, and the size and mtime of all but a -shm (a reader of a WAL database takes
    its read lock in that shared memory, as any reader must)."""
    return {path: info[:3] if not path.endswith("-shm") else ()
            for path, info in _snapshot(root).items()}


def test_status_reads_a_database_a_writer_has_open(sandbox):
    """With a writer at work its -wal and -shm exist: they are used, not recreated."""
    sandbox.run(action="db init")
    db_file = sandbox.root / "db" / "events.db"
    writer = sqlite3.connect(db_file)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("INSERT INTO schema_version (version) VALUES (99)")
        writer.commit()
        before = _contents(sandbox.root / "db")
        status = sandbox.run(action="db status", expect=0)
        assert "schema 99" in status.stdout   # the commit is in the -wal file only
        assert _contents(sandbox.root / "db") == before
    finally:
        writer.close()
