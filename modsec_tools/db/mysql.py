"""MySQL and MariaDB (PyMySQL): multi-row INSERTs of the literals the workers made; the new
events' ids from LAST_INSERT_ID() where the server gives consecutive ones; one node at a
time migrating a shared database."""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Database, DatabaseError, SchemaError
from .literals import with_mysql_text
from .rows import EVENT_COLUMNS, LINK_COLUMNS, MESSAGE_COLUMNS, Row

#: MySQL errors only the administrator can end: access denied (user, database), unknown
#: database.
UNUSABLE = frozenset((1044, 1045, 1049))

#: Seconds a MySQL statement's reply may take before the connection is given up.
READ_TIMEOUT = 60
#: Seconds a node waits for another one's schema migration (GET_LOCK; below READ_TIMEOUT,
#: or the wait would end as a lost connection).
SCHEMA_LOCK_WAIT = 50
#: Seconds the migrating node's session may stay idle before the server ends it (and so
#: frees the schema lock of a node that is gone without closing its connection).
SCHEMA_LOCK_IDLE = 300

#: Characters per multi-row INSERT for MySQL (pymysql's executemany uses the same bound).
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
        self._literal_session()
        self.consecutive_ids = self._ids_are_consecutive()

    def _unusable(self, exc: BaseException) -> bool:
        return type(exc).__module__.startswith("pymysql") and bool(exc.args) \
            and exc.args[0] in UNUSABLE

    def _skip_duplicate(self, column: str) -> str:
        return f" ON DUPLICATE KEY UPDATE {column} = {column}"

    def _literal_session(self) -> None:
        """What sql_literal's escaping relies on: utf8mb4 whatever the server's
        (skip-character-set-client-handshake ignores the handshake's), and backslash
        escapes (NO_BACKSLASH_ESCAPES removed from this session's sql_mode if set)."""
        with self.conn.cursor() as cursor:
            cursor.execute("SET NAMES utf8mb4, SESSION sql_mode = TRIM(BOTH ',' FROM REPLACE("
                           "CONCAT(',', @@SESSION.sql_mode, ','), ',NO_BACKSLASH_ESCAPES,', ','))")
        self._check_backslash_escapes()

    def _check_backslash_escapes(self) -> None:
        """pymysql keeps the server's status flags of its last reply: should this session's
        sql_mode have gained NO_BACKSLASH_ESCAPES since connect(), the server would read our
        backslashes literally (a quote would end the string), so nothing is sent then."""
        from pymysql.constants import SERVER_STATUS
        if self.conn.server_status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
            raise DatabaseError(f"{self.target.describe()}: NO_BACKSLASH_ESCAPES is set in "
                                "the session's sql_mode and could not be turned off")

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
            return self._insert_all(cursor, node, rows)
        except Exception as exc:
            if not _is_duplicate_key(exc):
                raise
            self.conn.rollback()
            fresh = self._not_stored(cursor, node, rows)
            if len(fresh) == len(rows):
                raise  # another key (an exhausted id counter, say): as any refusal
            return self._insert_all(cursor, node, fresh) if fresh else 0

    def _insert_all(self, cursor: Any, node: str, rows: list[Row]) -> int:
        """Multi-row INSERTs of literals the workers made (rows replayed from the spool or
        recovered after a crash get theirs here): no per-value work in this process."""
        texts = [(r.mysql or with_mysql_text(r).mysql) for r in rows]
        sent = self._insert_values(cursor, "events", EVENT_COLUMNS, [t.event for t in texts])
        ids = self._inserted_ids(sent, rows) or self._ids(cursor, node,
                                                           (r.unique_id for r in rows))
        wanted = {m[1]: text for r, t in zip(rows, texts)
                  for m, text in zip(r.matches, t.messages)}
        # (another node may store the same message meanwhile: then it is skipped)
        self._insert_values(cursor, "messages", MESSAGE_COLUMNS,
                            [wanted[i] for i in self._unstored(cursor, wanted)],
                            self._skip_duplicate("id"))
        self._insert_values(cursor, "event_messages", LINK_COLUMNS, [
            f"({ids[r.unique_id]},{m[0]},{m[1]})" for r in rows for m in r.matches])
        return len(rows)

    def _inserted_ids(self, sent: list[tuple[int, int, int]],
                      rows: list[Row]) -> dict[str, int] | None:
        """The new rows' ids from the statements' first ids, when consecutive (None: ask)."""
        if not self.consecutive_ids or any(first <= 0 or inserted != count
                                           for first, inserted, count in sent):
            return None
        ids: dict[str, int] = {}
        at = 0
        for first, _, count in sent:
            for offset, row in enumerate(rows[at:at + count]):
                ids[row.unique_id] = first + offset
            at += count
        return ids

    def _insert_values(self, cursor: Any, table: str, columns: Sequence[str],
                       values: list[str], tail: str = "") -> list[tuple[int, int, int]]:
        """INSERT statements of at most ~MYSQL_STATEMENT characters (a row longer than that
        goes alone), far below any server's max_allowed_packet default. Returned, for each
        statement: (LAST_INSERT_ID(), rows it inserted, rows it held)."""
        head = f"INSERT INTO {table} ({','.join(columns)}) VALUES "
        sent = []
        start, size = 0, 0
        for end, text in enumerate(values):
            if size and size + len(text) > MYSQL_STATEMENT:
                sent.append(self._send(cursor, head + ",".join(values[start:end]) + tail,
                                       end - start))
                start, size = end, 0
            size += len(text) + 1
        if start < len(values):
            sent.append(self._send(cursor, head + ",".join(values[start:]) + tail,
                                   len(values) - start))
        return sent

    def _send(self, cursor: Any, statement: str, rows: int) -> tuple[int, int, int]:
        self._check_backslash_escapes()
        cursor.execute(statement)
        return cursor.lastrowid or 0, cursor.rowcount, rows
