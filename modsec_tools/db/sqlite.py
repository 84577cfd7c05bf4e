"""SQLite (the stdlib's sqlite3, the default): a file in a directory only root can change."""
from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import Any

from ..owned import OwnedDir
from . import rollups
from .base import Database, UnusableError
from .rows import EVENT_COLUMNS, LINK_COLUMNS, MESSAGE_COLUMNS, Row

#: SQLite result codes (sqlite3.Error.sqlite_errorname) that only the administrator can end.
UNUSABLE = frozenset(("SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_CANTOPEN",
                      "SQLITE_READONLY", "SQLITE_PERM"))


class SqliteDatabase(Database):
    kind = "sqlite"
    mark = "?"

    def _open(self) -> None:
        if self.read_only:
            self.conn = self._open_read_only()
            return
        # SQLite opens by path: its directory must be ours, and the name ours too.
        owned, name = OwnedDir.of(self.target.path)
        with owned:
            os.close(owned.open(name, os.O_RDWR | os.O_CREAT))
        self.conn = sqlite3.connect(self.target.path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")

    def _open_read_only(self) -> sqlite3.Connection:
        """SQLite's mode=ro still creates a WAL database's -wal and -shm files where they
        are missing (and leaves them). Missing, they mean that no writer has it open and
        that the main file holds every commit: it is then read as immutable (no locks, no
        shared memory), which creates nothing (a writer that starts meanwhile can at worst
        make this read fail)."""
        path = os.path.abspath(self.target.path)
        if not os.path.isfile(path):
            raise UnusableError(f"{self.target.describe()}: no such database file "
                                "(ingest, watch or 'db init' create it)")
        shared = all(os.path.exists(path + suffix) for suffix in ("-wal", "-shm"))
        uri = f"file:{urllib.parse.quote(path)}?mode=ro" + ("" if shared else "&immutable=1")
        return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                               check_same_thread=False)

    def _unusable(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.Error):
            return False
        name = getattr(exc, "sqlite_errorname", None) or ""
        return any(name == code or name.startswith(code + "_") for code in UNUSABLE)

    def _skip_duplicate(self, column: str) -> str:
        return " ON CONFLICT DO NOTHING"

    def _begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def table_type(self, name: str) -> str | None:
        row = self.conn.execute("SELECT type FROM sqlite_master WHERE name = ?",
                                (name,)).fetchone()
        return row[0] if row else None

    def _insert_new(self, cursor: Any, node: str, rows: list[Row]) -> int:
        """Parameterized inserts, after a look-up of the stored events (cheap here: the
        database is in this process)."""
        fresh = self._not_stored(cursor, node, rows)
        if not fresh:
            return 0
        cursor.executemany(self.insert_sql("events", EVENT_COLUMNS, skip_stored=False),
                           [r.event for r in fresh])
        ids = self._ids(cursor, node, (r.unique_id for r in fresh))
        links = [(ids[r.unique_id], m[0], m[1]) for r in fresh for m in r.matches]
        if links:
            wanted = {m[1]: m for r in fresh for m in r.matches}
            new = [wanted[i][1:] for i in self._unstored(cursor, wanted)]
            if new:
                cursor.executemany(self.insert_sql("messages", MESSAGE_COLUMNS), new)
            cursor.executemany(self.insert_sql("event_messages", LINK_COLUMNS,
                                               skip_stored=False), links)
        rollups.tally_rows(fresh).write(self.kind, cursor)
        return len(fresh)
