"""What both dialects share: one connection, transactions, schema migration, the inserts'
common steps. Errors surface as DatabaseError (or a kind of it that says what to do)."""
from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from ..owned import UnsafePath
from . import rollups, schema
from .rows import Row, first_of_each
from .target import Target


class DatabaseError(Exception):
    """The database cannot be reached or refused a statement (the message says which)."""


class SchemaError(DatabaseError):
    """The database answers but its schema cannot be used now (newer than this version,
    another node migrating it, a migration that failed): no row can be stored, whichever."""


class TransientError(DatabaseError):
    """The server gave the transaction up (a deadlock, a conflict with another node's
    commit): running it again is expected to succeed."""


#: Times an insert the server gave up is run again.
TRANSIENT_ATTEMPTS = 4


class UnusableError(DatabaseError):
    """No row can be stored until the administrator acts, and waiting will not change it:
    a SQLite file that is not a database or is corrupt, or that cannot be opened; a MySQL
    account refused or a database that does not exist."""


class Database(ABC):
    """One connection; ``insert`` is idempotent on (node, unique_id), which is what lets
    ingest replay a batch after a crash without duplicating rows. ``read_only``: for the
    commands that look (db status, config check), which must not create or change
    anything."""

    kind: ClassVar[str]   # its key in schema.TYPES
    mark: ClassVar[str]   # the parameter placeholder of its driver

    def __init__(self, target: Target, connect_timeout: float = 5.0,
                 read_only: bool = False) -> None:
        self.target = target
        self.read_only = read_only
        self.connect_timeout = connect_timeout
        self.conn: Any = None
        self.schema_ready = False

    # the dialect's part ---------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Connect (``self.conn``) and set the session up."""

    @abstractmethod
    def _unusable(self, exc: BaseException) -> bool:
        """Whether this driver error is one only the administrator can end."""

    @abstractmethod
    def _skip_duplicate(self, column: str) -> str:
        """The INSERT's tail that skips a row whose key is stored (``column``: a key's)."""

    @abstractmethod
    def table_type(self, name: str) -> str | None:
        """"table", "view" or None (no such name) in this database."""

    @abstractmethod
    def _insert_new(self, cursor: Any, node: str, rows: list[Row]) -> int:
        """Insert the events of ``rows`` (each unique id once) not already stored."""

    def _transient(self, exc: BaseException) -> bool:
        """Whether this driver error ended a transaction that may simply run again."""
        return False

    def _begin(self, cursor: Any) -> None:
        """Start the transaction ``_run`` commits (the driver may start one by itself)."""

    def _schema_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while migrating: one node at a time where several share the database."""
        return contextlib.nullcontext()

    def _ddl(self, cursor: Any, statement: str) -> None:
        cursor.execute(statement)

    def commit_part(self) -> None:
        """A long migration step's chunk is done (committed where DDL commits anyway)."""

    # connection ------------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            self._open()
        except (DatabaseError, UnsafePath):  # an unsafe path is no outage to wait out
            self.close()
            raise
        except Exception as exc:  # the driver's errors, OSError
            self.close()
            raise self._failure(exc) from None

    def _failure(self, exc: Exception) -> DatabaseError:
        kind = UnusableError if self._unusable(exc) else \
            TransientError if self._transient(exc) else DatabaseError
        return kind(f"{self.target.describe()}: {exc}")

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def _cursor(self) -> Any:
        if self.conn is None:
            self.connect()
        return self.conn.cursor()

    def _run(self, work):
        """Run ``work(cursor)`` in one transaction; any failure rolls back and disconnects."""
        try:
            cursor = self._cursor()
            self._begin(cursor)
            result = work(cursor)
            self.conn.commit()
            return result
        except DatabaseError:
            self.close()
            raise
        except Exception as exc:
            try:
                if self.conn is not None:
                    self.conn.rollback()
            except Exception:
                pass
            self.close()
            raise self._failure(exc) from None

    # schema -------------------------------------------------------------------------------------
    def version(self) -> int:
        """The schema version; 0 for an empty database. DatabaseError when unreachable."""
        cursor = self._cursor()  # connects: raises DatabaseError
        try:
            cursor.execute("SELECT MAX(version) FROM schema_version")
            row = cursor.fetchone()
            return int(row[0] or 0) if row else 0
        except Exception as exc:
            if self._unusable(exc):
                self.close()
                raise self._failure(exc) from None
            self._end_read()
            return 0  # no schema_version table yet

    def _end_read(self) -> None:
        try:
            self.conn.rollback()
        except Exception:
            self.close()

    def migrate(self) -> list[int]:
        """Apply missing schema versions; returns those applied. ``init`` is the same.
        On a current schema, rollups that no longer count the stored events (rows an
        older version stored, or deleted by hand) are counted again."""
        with self._schema_lock():
            applied = self._migrate()
            if not applied and self.version() >= rollups.SCHEMA:
                if self._run(rollups.stale):
                    self._run(lambda cursor: rollups.recount(self, cursor, "stale rollups"))
            return applied

    def _migrate(self) -> list[int]:
        applied = []
        current = self.version()
        for number in sorted(schema.MIGRATIONS):
            if number <= current:
                continue
            steps = [step if callable(step) else step.format(**schema.TYPES[self.kind])
                     for step in schema.MIGRATIONS[number]]

            def apply(cursor, steps=steps, number=number) -> None:
                for step in steps:
                    if callable(step):
                        step(self, cursor)
                    elif step:
                        self._ddl(cursor, step)
                cursor.execute(f"INSERT INTO schema_version (version) VALUES ({self.mark})",
                               (number,))
            self._run(apply)
            applied.append(number)
        return applied

    def ensure_schema(self) -> None:
        current = self.version()
        if current > schema.SCHEMA_VERSION:
            raise SchemaError(f"database schema {current} is newer than this modsec-tools "
                              f"({schema.SCHEMA_VERSION}); upgrade modsec-tools")
        if current < schema.SCHEMA_VERSION:
            try:
                self.migrate()
            except (SchemaError, UnusableError):
                raise
            except DatabaseError as exc:
                raise SchemaError(f"schema migration failed: {exc}") from None

    def insert_sql(self, table: str, columns: Sequence[str], skip_stored: bool = True) -> str:
        """INSERT of one parameterized row; ``skip_stored``: a row whose key is already
        stored is skipped (only that: any other error still fails it)."""
        marks = ",".join([self.mark] * len(columns))
        return (f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})"
                + (self._skip_duplicate(columns[0]) if skip_stored else ""))

    # data ---------------------------------------------------------------------------------------
    def insert(self, node: str, rows: Sequence[Row]) -> int:
        """Insert events not already stored for this node; returns how many were new."""
        if not rows:
            return 0
        if not self.schema_ready:
            self.ensure_schema()
            self.schema_ready = True
        rows = first_of_each(rows)
        attempt = 1
        while True:
            try:
                return self._run(lambda cursor: self._insert_new(cursor, node, rows))
            except TransientError:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)  # the other writer's transaction ends meanwhile
                attempt += 1

    def _ids(self, cursor: Any, node: str, unique_ids: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        unique_ids = list(unique_ids)
        for start in range(0, len(unique_ids), 500):
            chunk = unique_ids[start:start + 500]
            marks = ",".join([self.mark] * len(chunk))
            cursor.execute(f"SELECT unique_id, id FROM events WHERE node = {self.mark} "
                           f"AND unique_id IN ({marks})", (node, *chunk))
            found.update((uid, int(i)) for uid, i in cursor.fetchall())
        return found

    def _not_stored(self, cursor: Any, node: str, rows: list[Row]) -> list[Row]:
        existing = self._ids(cursor, node, (r.unique_id for r in rows))
        return [r for r in rows if r.unique_id not in existing]

    def _unstored(self, cursor: Any, message_ids: Iterable[int]) -> list[int]:
        """Which of these messages the database does not hold yet."""
        missing = set(message_ids)
        wanted = list(missing)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            cursor.execute(f"SELECT id FROM messages WHERE id IN "
                           f"({','.join([self.mark] * len(chunk))})", chunk)
            missing.difference_update(int(found) for found, in cursor.fetchall())
        return sorted(missing)

    def count(self, table: str = "events") -> int:
        if table not in ("events", "matches", "logs", "messages", "event_messages"):
            raise ValueError(table)
        cursor = self._cursor()
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        result = int(cursor.fetchone()[0])
        self.conn.commit()  # end the read snapshot (SQLite, in autocommit, has none)
        return result

    def ping(self) -> None:
        self._run(lambda cursor: cursor.execute("SELECT 1"))
