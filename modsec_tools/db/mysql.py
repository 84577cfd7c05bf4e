"""MySQL and MariaDB (PyMySQL): parameterized multi-row INSERTs (PyMySQL escapes each value);
the new events' ids from LAST_INSERT_ID() where the server gives consecutive ones; one node
at a time migrating a shared database."""
from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from typing import Any

from . import rollups
from .base import Database, DatabaseError, SchemaError
from .rows import EVENT_COLUMNS, LINK_COLUMNS, MESSAGE_COLUMNS, Row

#: MySQL errors only the administrator can end: access denied (user, database), unknown
#: database.
UNUSABLE = frozenset((1044, 1045, 1049))
#: Transactions the server gave up, to be run again: a deadlock (also Galera's certification
#: failure: another node committed a row this one changed) and a lock wait timeout.
TRANSIENT = frozenset((1213, 1205))

#: Seconds a MySQL statement's reply may take before the connection is given up.
READ_TIMEOUT = 60
#: Seconds a node waits for another one's schema migration (GET_LOCK; below READ_TIMEOUT,
#: or the wait would end as a lost connection).
SCHEMA_LOCK_WAIT = 50
#: Seconds the migrating node's session may stay idle before the server ends it (and so
#: frees the schema lock of a node that is gone without closing its connection).
SCHEMA_LOCK_IDLE = 300

#: Bytes per multi-row INSERT (PyMySQL's default), far below any server's max_allowed_packet
#: default; a row longer than that goes alone.
MYSQL_STATEMENT = 1024000


def _is_duplicate_key(exc: Exception) -> bool:
    """pymysql's IntegrityError for ER_DUP_ENTRY (1062)."""
    return type(exc).__name__ == "IntegrityError" and exc.args[:1] == (1062,)


class MysqlDatabase(Database):
    kind = "mysql"
    mark = "%s"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consecutive_ids = False  # see _ids_are_consecutive

    def _open(self) -> None:
        import pymysql  # here: SQLite users need not have it
        self.conn = pymysql.connect(**dict(self.target.params), autocommit=False,
                                    connect_timeout=self.connect_timeout,
                                    read_timeout=READ_TIMEOUT, write_timeout=60,
                                    charset="utf8mb4")
        self._utf8_session()
        self.consecutive_ids = self._ids_are_consecutive()

    def _unusable(self, exc: BaseException) -> bool:
        return type(exc).__module__.startswith("pymysql") and bool(exc.args) \
            and exc.args[0] in UNUSABLE

    def _transient(self, exc: BaseException) -> bool:
        return type(exc).__module__.startswith("pymysql") and bool(exc.args) \
            and exc.args[0] in TRANSIENT

    def _skip_duplicate(self, column: str) -> str:
        return f" ON DUPLICATE KEY UPDATE {column} = {column}"

    def _utf8_session(self) -> None:
        """The session reads what PyMySQL sends as utf8mb4, as PyMySQL escapes it, whatever
        the server's character set (skip-character-set-client-handshake ignores the
        handshake's; in a multi-byte set such as GBK, a byte of a character can be a
        backslash, and an escape would then be read as part of a character)."""
        with self.conn.cursor() as cursor:
            cursor.execute("SET NAMES utf8mb4")

    def _ids_are_consecutive(self) -> bool:
        """Whether the rows of one multi-row INSERT get consecutive ids, so that they can
        be told from LAST_INSERT_ID() (the first row's) instead of a SELECT: InnoDB's
        "simple inserts" with innodb_autoinc_lock_mode 0 or 1 take their ids as one
        block, and auto_increment_increment 1 makes that block first, first + 1, ...
        (Galera needs lock mode 2, and sets the increment: there, the SELECT.)"""
        try:
            with self.conn.cursor() as cursor:
                cursor.execute("SELECT @@GLOBAL.innodb_autoinc_lock_mode, "
                               "@@SESSION.auto_increment_increment")
                mode, increment = cursor.fetchone()
        except Exception:  # a server without InnoDB's variable
            return False
        return mode is not None and int(mode) <= 1 and int(increment) == 1

    # schema -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Nodes starting together on a new database would otherwise run the same steps
        at once, and one would fail."""
        cursor = self._cursor()
        try:
            # The database's name as the server knows it: under lower_case_table_names=1,
            # "modsec" and "MODSEC" in two nodes' settings are one database, and one lock.
            cursor.execute("SELECT DATABASE()")
            (database,), = cursor.fetchall()
            name = "modsec-tools schema " + hashlib.blake2b((database or "").encode(),
                                                             digest_size=8).hexdigest()
            cursor.execute("SELECT GET_LOCK(%s, %s)", (name, SCHEMA_LOCK_WAIT))
            (taken,), = cursor.fetchall()
            if taken == 1:
                # A node that vanishes while it holds the lock (power cut, no FIN) leaves an
                # idle session: the server ends it, and frees the lock, after this long
                # instead of wait_timeout's default 8 hours.
                cursor.execute(f"SET SESSION wait_timeout = {int(SCHEMA_LOCK_IDLE)}")
            self.conn.commit()  # the version is then read in a transaction of its own
        except Exception as exc:
            self.close()
            raise DatabaseError(f"{self.target.describe()}: {exc}") from None
        if taken != 1:
            raise SchemaError(f"{self.target.describe()}: another node has been changing the "
                              f"schema for {SCHEMA_LOCK_WAIT} s (lock {name!r})")
        try:
            yield
        finally:
            try:
                if self.conn is not None:
                    with self.conn.cursor() as release:
                        release.execute("SELECT RELEASE_LOCK(%s)", (name,))
                        release.execute("SET SESSION wait_timeout = @@GLOBAL.wait_timeout")
            except Exception:
                self.close()  # a session's named locks end with it

    def _ddl(self, cursor: Any, statement: str) -> None:
        """MariaDB knows CREATE INDEX IF NOT EXISTS, MySQL 8 does not: a duplicate index
        (a migration run again after a failure) is tolerated instead (error 1061)."""
        try:
            cursor.execute(statement)
        except Exception as exc:
            if getattr(exc, "args", (None,))[0] != 1061:
                raise

    def commit_part(self) -> None:
        self.conn.commit()

    def table_type(self, name: str) -> str | None:
        cursor = self.conn.cursor()
        cursor.execute("SELECT IF(TABLE_TYPE = 'VIEW', 'view', 'table') FROM "
                       "information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND "
                       "TABLE_NAME = %s", (name,))
        row = cursor.fetchone()
        return row[0] if row else None

    # data ---------------------------------------------------------------------------------------
    def _insert_new(self, cursor: Any, node: str, rows: list[Row]) -> int:
        """Inserted at once, as new events usually are; only when the server finds one
        already stored (a batch done again after a crash) is it all undone, the stored
        ones looked up and left out (on a new batch, that look-up cost 2.3 ms)."""
        try:
            return self._insert_all(node, rows)
        except Exception as exc:
            if not _is_duplicate_key(exc):
                raise
            self.conn.rollback()
            fresh = self._not_stored(cursor, node, rows)
            if len(fresh) == len(rows):
                raise  # another key (an exhausted id counter, say): as any refusal
            return self._insert_all(node, fresh) if fresh else 0

    def _insert_all(self, node: str, rows: list[Row]) -> int:
        """PyMySQL's executemany: one multi-row INSERT per MYSQL_STATEMENT bytes, each
        value escaped by PyMySQL for this session."""
        with self.conn.cursor(_statements_cursor()) as cursor:
            cursor.max_stmt_length = MYSQL_STATEMENT
            cursor.executemany(self.insert_sql("events", EVENT_COLUMNS, skip_stored=False),
                               [r.event for r in rows])
            ids = self._inserted_ids(cursor.statements, rows) or self._ids(
                cursor, node, (r.unique_id for r in rows))
            wanted = {m[1]: m for r in rows for m in r.matches}
            # (another node may store the same message meanwhile: then it is skipped)
            new = [wanted[i][1:] for i in self._unstored(cursor, wanted)]
            if new:
                cursor.executemany(self.insert_sql("messages", MESSAGE_COLUMNS), new)
            links = [(ids[r.unique_id], m[0], m[1]) for r in rows for m in r.matches]
            if links:
                cursor.executemany(self.insert_sql("event_messages", LINK_COLUMNS,
                                                   skip_stored=False), links)
            rollups.tally_rows(rows).write(self.kind, cursor)
        return len(rows)

    def _inserted_ids(self, statements: list[tuple[int, int]],
                      rows: list[Row]) -> dict[str, int] | None:
        """The new rows' ids from each statement's first id and row count, when
        consecutive (None: ask)."""
        if not self.consecutive_ids or sum(count for _, count in statements) != len(rows) \
                or any(first <= 0 for first, _ in statements):
            return None
        ids: dict[str, int] = {}
        at = 0
        for first, count in statements:
            for offset, row in enumerate(rows[at:at + count]):
                ids[row.unique_id] = first + offset
            at += count
        return ids


@functools.cache
def _statements_cursor() -> type:
    """A PyMySQL cursor that keeps, for each statement it sends, (LAST_INSERT_ID(), rows
    inserted): executemany sends a long batch as several statements, and each one's
    first id is the first of its own block."""
    import pymysql.cursors

    class StatementsCursor(pymysql.cursors.Cursor):
        def __init__(self, connection: Any) -> None:
            super().__init__(connection)
            self.statements: list[tuple[int, int]] = []

        def execute(self, query: Any, args: Any = None) -> int:
            result = super().execute(query, args)
            self.statements.append((self.lastrowid or 0, self.rowcount))
            return result

    return StatementsCursor
