"""What ``modsec-tools config check`` says of the fleet settings (read-only).

``fleet run`` would find each of these at start and exit; the check finds them before the
unit is enabled: the URL and its option file, fail2ban's socket through which fleet bans are
applied, and the shared tables as this node's user sees them.
"""
from __future__ import annotations

import os
from typing import Any

Problem = tuple[str, str]


def problems(settings: Any) -> list[Problem]:
    if not settings.fleet:
        return []
    from .target import TargetError, parse
    if not settings.fleet_db:
        return [("error", "fleet = yes but fleet_db is not set "
                          "(mysql://NODE@host:port/database, docs/fleet.md)")]
    try:
        target = parse(settings.fleet_db, settings.fleet_db_option_file)
    except TargetError as exc:
        return [("error", str(exc))]
    found = _socket_problems(settings.fleet_fail2ban_socket)
    return found + _table_problems(target, settings.node)


def _socket_problems(path: str) -> list[Problem]:
    if os.path.exists(path):
        return []
    return [("warning", f"fleet_fail2ban_socket {path} does not exist: fleet bans are applied "
                        "through fail2ban, which is not running or uses another socket")]


def _table_problems(target: Any, node: str) -> list[Problem]:
    import pymysql
    from . import schema
    from .target import connect
    try:
        conn = connect(target)
    except ConnectionError as exc:
        return [("error", f"fleet database {target.where}: {exc}")]
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT SUBSTRING_INDEX(USER(), '@', 1)")
            user = cursor.fetchone()[0]
            if user != node:
                return [("error", f"fleet database {target.where}: this node is {node!r} but "
                                  f"connects as {user!r}; each node writes as the database user "
                                  "named after it (docs/fleet.md)")]
            schema.spoken(schema.state(cursor), schema.CODE_SCHEMA)
    except (schema.SchemaError, pymysql.err.MySQLError) as exc:
        return [("error", f"fleet database {target.where}: {exc}")]
    finally:
        conn.close()
    return []
