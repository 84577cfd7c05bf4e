"""The shared tables, versioned from the first release so that a fleet can upgrade one
server at a time.

``fleet_meta`` holds two rows: ``schema_version`` (what the tables are) and
``readable_by`` (the oldest schema a node may speak and still work with them). Every
migration is additive (new tables, new columns with defaults, views re-made), so nodes one
version behind keep publishing and applying while the others move on; a node speaks
``min(what it knows, what the database has)`` and moves up by itself once the database was
migrated. Migrations run under ``GET_LOCK`` named after ``DATABASE()`` (never after how a
URL spells the server), each statement idempotent, so two servers migrating at once, or a
migration interrupted half-way, end in the same tables. Galera replicates DDL in total order
but not GET_LOCK: there too, every statement may run twice.

Least privilege: each server's database user is named after its node and writes only
through the ``fleet_own_*`` views, whose ``WITH CHECK OPTION`` refuses any row of another
node (docs/fleet.md has the GRANTs).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

CODE_SCHEMA = 2          # the newest schema this code knows
OLDEST_SPOKEN = 1        # the oldest it can still speak
LOCK_TIMEOUT = 60

_OWN = "SUBSTRING_INDEX(USER(), '@', 1)"

_VIEWS = (
    f"CREATE OR REPLACE SQL SECURITY DEFINER VIEW fleet_own_bans AS SELECT * FROM fleet_bans "
    f"WHERE node = {_OWN} WITH CASCADED CHECK OPTION",
    f"CREATE OR REPLACE SQL SECURITY DEFINER VIEW fleet_own_node AS SELECT * FROM fleet_nodes "
    f"WHERE node = {_OWN} WITH CASCADED CHECK OPTION",
)

#: version -> (statements, readable_by after it)
MIGRATIONS: dict[int, tuple[tuple[str, ...], int]] = {
    1: ((
        "CREATE TABLE IF NOT EXISTS fleet_meta ("
        " name VARCHAR(64) NOT NULL PRIMARY KEY,"
        " value VARCHAR(255) NOT NULL"
        ") ENGINE=InnoDB DEFAULT CHARSET=ascii",
        # one row per server, written by that server alone (heartbeat, counters, and the
        # sequence number of its last published row: readers poll this small table)
        "CREATE TABLE IF NOT EXISTS fleet_nodes ("
        " node VARCHAR(64) NOT NULL PRIMARY KEY,"
        " last_seq BIGINT UNSIGNED NOT NULL DEFAULT 0,"
        " f2b_cursor BIGINT UNSIGNED NOT NULL DEFAULT 0,"
        " started DOUBLE NOT NULL DEFAULT 0,"
        " heartbeat DOUBLE NOT NULL DEFAULT 0,"
        " published BIGINT UNSIGNED NOT NULL DEFAULT 0,"
        " applied BIGINT UNSIGNED NOT NULL DEFAULT 0,"
        " rejected BIGINT UNSIGNED NOT NULL DEFAULT 0,"
        " version VARCHAR(32) NOT NULL DEFAULT '',"
        " speaks INT NOT NULL DEFAULT 0"
        ") ENGINE=InnoDB DEFAULT CHARSET=ascii",
        # bans and early unbans, numbered per node: (node, seq) grows in commit order, as
        # each node publishes from one connection, one transaction at a time
        "CREATE TABLE IF NOT EXISTS fleet_bans ("
        " node VARCHAR(64) NOT NULL,"
        " seq BIGINT UNSIGNED NOT NULL,"
        " kind ENUM('ban','unban') NOT NULL DEFAULT 'ban',"
        " jail VARCHAR(64) NOT NULL,"
        " ip VARCHAR(64) NOT NULL,"
        " time_of_ban BIGINT NOT NULL,"
        " bantime BIGINT NOT NULL,"
        " end_time BIGINT NOT NULL,"
        " bancount INT NOT NULL DEFAULT 1,"
        " published TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
        " PRIMARY KEY (node, seq),"
        " UNIQUE KEY one_ban (node, kind, jail, ip, time_of_ban),"
        " KEY by_end (end_time)"
        ") ENGINE=InnoDB DEFAULT CHARSET=ascii",
        *_VIEWS,
    ), 1),
    # 2: the rule ids behind each ban, and each node's measured apply lag
    2: ((
        "ALTER TABLE fleet_bans ADD COLUMN IF NOT EXISTS"
        " rules VARCHAR(255) NOT NULL DEFAULT ''",
        "ALTER TABLE fleet_nodes ADD COLUMN IF NOT EXISTS lag_ms INT UNSIGNED NULL",
        *_VIEWS,                # SELECT * was expanded when the views were made
    ), 1),
}


class SchemaError(RuntimeError):
    """The shared tables cannot be used by this node; says what to do."""


@dataclass(frozen=True)
class SchemaState:
    version: int          # 0: no fleet tables yet
    readable_by: int


def code_schema() -> int:
    """The newest schema this process speaks. MODSEC_TOOLS_FLEET_SCHEMA pins an older one,
    as a node not yet upgraded speaks it (the rolling-upgrade test runs such nodes)."""
    pinned = os.environ.get("MODSEC_TOOLS_FLEET_SCHEMA", "")
    if pinned.isdigit() and OLDEST_SPOKEN <= int(pinned) <= CODE_SCHEMA:
        return int(pinned)
    return CODE_SCHEMA


def state(cursor: Any) -> SchemaState:
    cursor.execute("SELECT COUNT(*) FROM information_schema.tables "
                   "WHERE table_schema = DATABASE() AND table_name = 'fleet_meta'")
    if not cursor.fetchone()[0]:
        return SchemaState(0, 0)
    cursor.execute("SELECT name, value FROM fleet_meta "
                   "WHERE name IN ('schema_version', 'readable_by')")
    values = {name: int(value) for name, value in cursor.fetchall()}
    return SchemaState(values.get("schema_version", 0), values.get("readable_by", 0))


def spoken(found: SchemaState, knows: int) -> int:
    """The schema a node that knows ``knows`` speaks with these tables; SchemaError if none."""
    if found.version < OLDEST_SPOKEN:
        raise SchemaError("the fleet tables do not exist yet: run 'modsec-tools fleet "
                          "migrate' once, as a database user allowed to create them")
    if found.readable_by > knows:
        raise SchemaError(f"the fleet tables are at schema {found.version}, which nodes "
                          f"speaking schema {knows} or older cannot use: upgrade modsec-tools")
    return min(found.version, knows)


def migrate(conn: Any, upto: int = CODE_SCHEMA) -> tuple[int, int]:
    """Bring the tables to ``upto`` under the database's schema lock: (before, after)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(CONCAT('modsec-tools-fleet-schema:', DATABASE()), %s)",
                       (LOCK_TIMEOUT,))
        if cursor.fetchone()[0] != 1:
            raise SchemaError(f"another migration held the schema lock for {LOCK_TIMEOUT} s")
        try:
            before = state(cursor).version
            for version in range(before + 1, upto + 1):
                statements, readable_by = MIGRATIONS[version]
                for statement in statements:
                    cursor.execute(statement)
                cursor.executemany(
                    "INSERT INTO fleet_meta (name, value) VALUES (%s, %s) "
                    "ON DUPLICATE KEY UPDATE value = VALUES(value)",
                    [("schema_version", str(version)), ("readable_by", str(readable_by))])
            return before, max(before, upto)
        finally:
            cursor.execute("SELECT RELEASE_LOCK(CONCAT('modsec-tools-fleet-schema:', "
                           "DATABASE()))")


_HOST = re.compile(r"[A-Za-z0-9.%_:-]{1,255}")
_DATABASE = re.compile(r"[A-Za-z0-9_$]{1,64}")


def grants(node: str, host: str, database: str) -> list[str]:
    """The GRANTs of a node's user (named after the node): read every row, write its own
    through the views. The names are checked, as GRANT takes no placeholders."""
    from ..eventline import NODE
    if not NODE.fullmatch(node) or not _HOST.fullmatch(host) or not _DATABASE.fullmatch(database):
        raise ValueError("node, host or database name with characters a GRANT cannot quote")
    user = f"'{node}'@'{host}'"
    return [f"GRANT SELECT ON `{database}`.`{table}` TO {user}"
            for table in ("fleet_meta", "fleet_nodes", "fleet_bans")] + [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.`fleet_own_bans` TO {user}",
        f"GRANT SELECT, INSERT, UPDATE ON `{database}`.`fleet_own_node` TO {user}"]
