"""Every statement a node runs on the shared database (PyMySQL, parameterised only).

A node writes through the ``fleet_own_*`` views (its own rows) and reads the tables. One
connection, used by one thread; any error of the connection raises ``DatabaseDown`` and the
caller reconnects later (another Galera node, when the URL names several).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import __version__
from . import schema
from .rows import BAN, UNBAN, LocalBan, SharedRow
from .target import Target

log = logging.getLogger(__name__)

FETCH_LIMIT = 5000


class DatabaseDown(RuntimeError):
    """The fleet database cannot be reached or stopped answering; nothing was half-done."""


class NotPermitted(RuntimeError):
    """The database refused this node's user something it needs (grants, node name)."""


_COLUMNS = ("node, seq, kind, jail, ip, time_of_ban, bantime, end_time, bancount, "
            "{rules}, UNIX_TIMESTAMP(published) + 0e0")


@dataclass
class NodeRow:
    last_seq: int
    f2b_cursor: int


class Store:
    def __init__(self, target: Target, node: str, knows: int | None = None) -> None:
        self.target = target
        self.node = node
        self.knows = schema.code_schema() if knows is None else knows
        self.speaks = 0
        self.conn: Any = None
        self.server = ""          # host:port (or socket) of the connection, for the log

    # -- connection ----------------------------------------------------------------------
    def open(self) -> NodeRow:
        """Connect to the first place that answers and serves (a Galera node outside the
        primary component answers, but refuses queries: the next one is tried), check who
        we are and which schema we speak, register the node; its row."""
        import pymysql
        self.close()
        errors = []
        for host, port in self.target.places():
            place = self.target.unix_socket or f"{host}:{port}"
            try:
                self.conn = pymysql.connect(**self.target.connect_args(host, port))
            except pymysql.err.OperationalError as exc:
                if _refused(exc):
                    raise NotPermitted(f"fleet database {self.target.where}: {exc}") from None
                errors.append(f"{place}: {exc.args[-1]}")
                continue
            except pymysql.err.MySQLError as exc:
                raise NotPermitted(f"fleet database {self.target.where}: {exc}") from None
            self.server = place
            try:
                return self._register()
            except DatabaseDown as exc:
                errors.append(str(exc))
            except BaseException:
                self.close()
                raise
        raise DatabaseDown("; ".join(errors))

    def _register(self) -> NodeRow:
        with self._cursor() as cursor:
            cursor.execute("SELECT SUBSTRING_INDEX(USER(), '@', 1)")
            user = cursor.fetchone()[0]
            if user != self.node:
                raise NotPermitted(f"this node is {self.node!r} but connects as database user "
                                   f"{user!r}: each node writes as the user named after it "
                                   "(docs/fleet.md)")
            self.speaks = schema.spoken(schema.state(cursor), self.knows)
            cursor.execute("INSERT INTO fleet_own_node (node, started, heartbeat, version, "
                           "speaks) VALUES (%s, UNIX_TIMESTAMP(NOW(6)), UNIX_TIMESTAMP(NOW(6)),"
                           " %s, %s) ON DUPLICATE KEY UPDATE started = VALUES(started), "
                           "heartbeat = VALUES(heartbeat), version = VALUES(version), "
                           "speaks = VALUES(speaks)",
                           (self.node, __version__, self.speaks))
            cursor.execute("SELECT last_seq, f2b_cursor FROM fleet_nodes WHERE node = %s",
                           (self.node,))
            last_seq, f2b_cursor = cursor.fetchone()
        return NodeRow(int(last_seq), int(f2b_cursor))

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # a dead connection may fail to say goodbye
                pass
            self.conn = None

    @property
    def up(self) -> bool:
        return self.conn is not None

    def _cursor(self) -> "_Guarded":
        if self.conn is None:
            raise DatabaseDown("not connected")
        return _Guarded(self)

    # -- publishing ----------------------------------------------------------------------
    def publish(self, bans: Sequence[LocalBan], kinds: Sequence[str], last_seq: int,
                f2b_cursor: int) -> int:
        """Insert ``bans`` (each with its kind) as seq last_seq+1..., and move this node's
        row to the new seq and fail2ban cursor, in one transaction. A ban already published
        (same jail, address and time) is skipped by the unique key. The new last seq."""
        rules = self.speaks >= 2
        columns = "node, seq, kind, jail, ip, time_of_ban, bantime, end_time, bancount" + \
            (", rules" if rules else "")
        marks = ", ".join(["%s"] * (10 if rules else 9))
        rows = []
        for offset, (ban, kind) in enumerate(zip(bans, kinds), 1):
            end = ban.time_of_ban + ban.bantime if ban.bantime >= 0 else _FOREVER
            row = (self.node, last_seq + offset, kind, ban.jail, ban.ip, ban.time_of_ban,
                   ban.bantime, end, ban.bancount)
            rows.append(row + ((ban.rules,) if rules else ()))
        seq = last_seq + len(rows)
        with self._cursor() as cursor:
            cursor.execute("BEGIN")
            if rows:
                cursor.executemany(f"INSERT INTO fleet_own_bans ({columns}) VALUES ({marks}) "
                                   "ON DUPLICATE KEY UPDATE seq = seq", rows)
            cursor.execute("UPDATE fleet_own_node SET last_seq = %s, f2b_cursor = %s, "
                           "published = published + %s WHERE node = %s",
                           (seq, f2b_cursor, sum(kind == BAN for kind in kinds), self.node))
            cursor.execute("COMMIT")
        return seq

    def own_in_force(self, now: float) -> dict[tuple[str, str, int], LocalBan]:
        """This node's published bans still in force and not unbanned, by (jail, ip, time)."""
        with self._cursor() as cursor:
            cursor.execute("SELECT kind, jail, ip, time_of_ban, bantime, bancount FROM "
                           "fleet_bans WHERE node = %s AND end_time > %s ORDER BY seq",
                           (self.node, now))
            held: dict[tuple[str, str, int], LocalBan] = {}
            for kind, jail, ip, time_of_ban, bantime, bancount in cursor.fetchall():
                ban = LocalBan(0, jail, ip, int(time_of_ban), int(bantime), int(bancount), "")
                if kind == UNBAN:
                    held.pop((jail, ip, ban.time_of_ban), None)
                else:
                    held[(jail, ip, ban.time_of_ban)] = ban
        return held

    # -- receiving -----------------------------------------------------------------------
    def heads(self) -> dict[str, int]:
        """Every other node's last published seq (the cheap poll)."""
        with self._cursor() as cursor:
            cursor.execute("SELECT node, last_seq FROM fleet_nodes WHERE node <> %s",
                           (self.node,))
            return {str(node): int(seq) for node, seq in cursor.fetchall()}

    def fetch(self, origin: str, after: int) -> list[SharedRow]:
        with self._cursor() as cursor:
            cursor.execute(f"SELECT {self._columns()} FROM fleet_bans WHERE node = %s AND "
                           "seq > %s ORDER BY seq LIMIT %s", (origin, after, FETCH_LIMIT))
            return [SharedRow(*row) for row in cursor.fetchall()]

    def in_force(self, now: float) -> list[SharedRow]:
        """Every other node's rows still in force, in each node's order (catch-up)."""
        with self._cursor() as cursor:
            cursor.execute(f"SELECT {self._columns()} FROM fleet_bans WHERE node <> %s AND "
                           "end_time > %s ORDER BY node, seq", (self.node, now))
            return [SharedRow(*row) for row in cursor.fetchall()]

    def _columns(self) -> str:
        return _COLUMNS.format(rules="rules" if self.speaks >= 2 else "''")

    # -- housekeeping --------------------------------------------------------------------
    def heartbeat(self, applied: int, rejected: int, lag_ms: int | None) -> None:
        """Counters since the last heartbeat; re-reads the schema (a migration since)."""
        with self._cursor() as cursor:
            lag = ", lag_ms = %s" if self.speaks >= 2 else ""
            cursor.execute("UPDATE fleet_own_node SET heartbeat = UNIX_TIMESTAMP(NOW(6)), "
                           f"applied = applied + %s, rejected = rejected + %s{lag} "
                           "WHERE node = %s",
                           (applied, rejected, *((lag_ms,) if lag else ()), self.node))
            speaks = schema.spoken(schema.state(cursor), self.knows)
            if speaks != self.speaks:
                log.info("fleet: the database was migrated; now speaking schema %d", speaks)
                self.speaks = speaks
                cursor.execute("UPDATE fleet_own_node SET speaks = %s WHERE node = %s",
                               (speaks, self.node))

    def purge(self, before: float) -> int:
        """Delete this node's rows that ended before ``before`` (a bounded batch)."""
        with self._cursor() as cursor:
            return cursor.execute("DELETE FROM fleet_own_bans WHERE end_time < %s LIMIT 5000",
                                  (before,))


# A permanent ban's end in the table: receivers bound it by their fleet_max_bantime anyway.
_FOREVER = (1 << 62)


class _Guarded:
    """A cursor whose connection errors become DatabaseDown (and drop the connection)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursor = store.conn.cursor()

    def __enter__(self) -> Any:
        return self.cursor

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        import pymysql
        try:
            self.cursor.close()
        except Exception:
            pass
        if exc is None:
            return False
        if isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError,
                            OSError)) and not _refused(exc):
            self.store.close()
            raise DatabaseDown(f"{self.store.server}: {exc}") from exc
        if isinstance(exc, pymysql.err.MySQLError):
            self.store.close()
            raise NotPermitted(f"fleet database {self.store.target.where}: {exc}") from exc
        return False


# Errors that are the database saying no (grants), not the database being away.
_REFUSALS = {1044, 1045, 1142, 1143, 1369, 1370}


def _refused(exc: BaseException) -> bool:
    return bool(exc.args) and exc.args[0] in _REFUSALS


def wait_seconds(failures: int) -> float:
    """Back-off between reconnection attempts: 0.5 s doubling to 5 s."""
    return min(5.0, 0.5 * (1 << min(failures, 4)))


def now() -> float:
    return time.time()
