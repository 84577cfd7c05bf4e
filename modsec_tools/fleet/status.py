"""``modsec-tools fleet status``: the fleet as the shared tables show it (read-only).

One line per node: its version and schema, how long ago its last heartbeat was written (as
the database server we read from sees it: on Galera this includes replication delay), what
it published and applied, its bans in force, and the lag it measured from a ban's
publication to its own fail2ban. Then this server's daemon, from its status file, and on
Galera the replication state of the node we read from.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from . import schema


@dataclass
class NodeStatus:
    node: str
    version: str
    speaks: int
    heartbeat_age: float
    published: int
    applied: int
    rejected: int
    in_force: int
    lag_ms: int | None


def read(conn: Any) -> dict[str, Any]:
    with conn.cursor() as cursor:
        found = schema.state(cursor)
        cursor.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
        now = float(cursor.fetchone()[0])
        lag = "lag_ms" if found.version >= 2 else "NULL"
        cursor.execute(
            f"SELECT n.node, n.version, n.speaks, n.heartbeat, n.published, n.applied, "
            f"n.rejected, n.{lag} AS lag_ms, (SELECT COUNT(*) FROM fleet_bans b WHERE "
            f"b.node = n.node AND b.kind = 'ban' AND b.end_time > %s) FROM fleet_nodes n "
            f"ORDER BY n.node", (now,))
        nodes = [NodeStatus(node, version, int(speaks), round(now - float(beat), 3),
                            int(published), int(applied), int(rejected), int(in_force),
                            None if lag_ms is None else int(lag_ms))
                 for node, version, speaks, beat, published, applied, rejected, lag_ms,
                 in_force in cursor.fetchall()]
        cursor.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', "
                       "'wsrep_local_state_comment', 'wsrep_local_recv_queue', "
                       "'wsrep_local_recv_queue_avg', 'wsrep_flow_control_paused', "
                       "'wsrep_cluster_status')")
        galera = {name: value for name, value in cursor.fetchall()}
    return {"schema_version": found.version, "readable_by": found.readable_by,
            "nodes": [asdict(node) for node in nodes], "galera": galera}


def local(state_dir: str) -> dict[str, Any] | None:
    """This server's daemon, as its last status file says (None: it never ran here)."""
    path = os.path.join(state_dir, "fleet", "status.json")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


def render(shared: dict[str, Any] | None, own: dict[str, Any] | None, error: str) -> str:
    lines = []
    if shared is None:
        lines.append(f"fleet database: unreachable ({error})")
    else:
        lines.append(f"fleet database: schema {shared['schema_version']} (nodes speaking "
                     f"{shared['readable_by']} or later can use it)")
        header = ("node", "version", "schema", "heartbeat", "published", "applied",
                  "rejected", "in force", "apply lag")
        rows = [header] + [(n["node"], n["version"], str(n["speaks"]),
                            f"{n['heartbeat_age']:.1f} s ago", str(n["published"]),
                            str(n["applied"]), str(n["rejected"]), str(n["in_force"]),
                            "-" if n["lag_ms"] is None else f"{n['lag_ms']} ms")
                           for n in shared["nodes"]]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                                   for i, (cell, width) in enumerate(zip(row, widths))))
        galera = shared["galera"]
        if galera:
            lines.append(f"galera: {galera.get('wsrep_cluster_status', '?')}, cluster size "
                         f"{galera.get('wsrep_cluster_size', '?')}, this node "
                         f"{galera.get('wsrep_local_state_comment', '?')}, receive queue "
                         f"{galera.get('wsrep_local_recv_queue', '?')} (avg "
                         f"{galera.get('wsrep_local_recv_queue_avg', '?')}), flow control "
                         f"paused {galera.get('wsrep_flow_control_paused', '?')}")
    if own is None:
        lines.append("this server: no fleet daemon has run here")
    else:
        age = time.time() - float(own.get("updated", 0))
        state = "up" if own.get("database_up") else f"DOWN ({own.get('last_error', '')})"
        lines.append(f"this server ({own.get('node')}): database {state}, holding "
                     f"{own.get('held', 0)} fleet ban(s), {own.get('ignored', 0)} ignored, "
                     f"{own.get('expired', 0)} expired on arrival; status {age:.0f} s old")
    return "\n".join(lines)
