"""The report from the rollups (modsec_tools/db/rollups.py) instead of every event.

They answer a report whose only filters are --since/--until on whole UTC days (or none):
the other filters (a client, a rule, a vhost, a node, a verdict) and a time inside a day
select events the rollups do not tell apart, and the report then reads the events (query.py).
A few figures still come from the events when the range is bounded: the distinct rules of
each top address and the distinct addresses of each top rule (counted over all time), and
a timeline by the minute (the rollups count hours).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..db.rollups import NO_TIME, SCHEMA, day_number, hour_start, stale
from . import query
from .model import Bucket, ClientRow, Filters, NodeRow, RuleRow, StatusRow, TargetRow, Totals
from .query import Selection, text

@dataclass(frozen=True, slots=True)
class Days:
    """The whole days a report covers, [first, end) counted from 1970-01-01 (None: open)."""

    mark: str
    first: int | None
    end: int | None

    @property
    def bounded(self) -> bool:
        return self.first is not None or self.end is not None

    def where(self, column: str, per_day: int = 1) -> tuple[str, tuple]:
        """The condition on a day (or hour: ``per_day`` 24) column, and its parameters."""
        if not self.bounded:
            return "", ()
        # an event without a time (day -1) is in no bounded range
        first = max(0, self.first or 0) * per_day
        conditions, params = [f"{column} >= {self.mark}"], [first]
        if self.end is not None:
            conditions.append(f"{column} < {self.mark}")
            params.append(self.end * per_day)
        return "WHERE " + " AND ".join(conditions), tuple(params)


def days(cursor: Any, mark: str, filters: Filters) -> Days | None:
    """The rollups' range for these filters, or None when they cannot answer them (other
    filters, a time inside a day, a database without rollups or with rows they missed)."""
    if any(value is not None for value in (filters.vhost, filters.client, filters.rule,
                                           filters.node, filters.verdict)):
        return None
    first = None if filters.since is None else day_number(filters.since)
    end = None if filters.until is None else day_number(filters.until)
    if (filters.since is not None and first is None) or \
            (filters.until is not None and end is None):
        return None
    if _schema(cursor) < SCHEMA or stale(cursor):
        return None
    return Days(mark, first, end)


def _schema(cursor: Any) -> int:
    cursor.execute("SELECT MAX(version) FROM schema_version")
    return int(cursor.fetchone()[0] or 0)


def clients(cursor: Any, span: Days, sel: Selection, top: int) -> tuple[list[ClientRow], Totals]:
    where, params = span.where("day")
    cursor.execute("SELECT client_ip, SUM(n), SUM(blocked), SUM(detected), MIN(first_at), "
                   f"MAX(last_at) FROM rollup_clients {where} GROUP BY client_ip", params)
    grouped = [(address or None, *rest) for address, *rest in cursor.fetchall()]
    if span.bounded:
        return query.clients_of(grouped, top,
                                lambda chosen: query._rules_of_clients(cursor, sel, chosen))
    return query.clients_of(grouped, top, lambda chosen: _rules_of_clients(cursor, span, chosen))


def _rules_of_clients(cursor: Any, span: Days, addresses: list[str]) -> dict[str, int]:
    if not addresses:
        return {}
    cursor.execute("SELECT client_ip, COUNT(*) FROM rollup_rule_clients WHERE client_ip IN "
                   f"({','.join([span.mark] * len(addresses))}) GROUP BY client_ip", addresses)
    return {text(a): int(n) for a, n in cursor.fetchall()}


def top_rules(cursor: Any, span: Days, top: int) -> list[RuleRow]:
    where, params = span.where("day")
    cursor.execute(f"SELECT rule_id, MIN(msg), MIN(severity), SUM(n) FROM rollup_rules {where} "
                   "GROUP BY rule_id, text", params)
    return query.rank_rules({(r, None if m is None else bytes(m), s): int(n)
                             for r, m, s, n in cursor.fetchall()}, top)


def rules_addresses(cursor: Any, span: Days, sel: Selection,
                    rule_ids: list[str]) -> dict[str, int]:
    """The distinct addresses of each of these rules (over all time: a bounded range reads
    the events)."""
    if span.bounded:
        return query.rules_addresses(cursor, sel, rule_ids)
    if not rule_ids:
        return {}
    cursor.execute("SELECT rule_id, COUNT(*) FROM rollup_rule_clients WHERE rule_id IN "
                   f"({','.join([span.mark] * len(rule_ids))}) AND client_ip <> '' "
                   "GROUP BY rule_id", rule_ids)
    return {text(r): int(n) for r, n in cursor.fetchall()}


def targets(cursor: Any, span: Days, top: int) -> list[TargetRow]:
    where, params = span.where("day")
    cursor.execute(f"SELECT MIN(host), MIN(path), SUM(n), SUM(blocked) FROM rollup_targets "
                   f"{where} GROUP BY target", params)
    return query.targets_of(cursor.fetchall(), top)


def cube(cursor: Any, span: Days, sel: Selection, first: dt.datetime | None,
         last: dt.datetime | None,
         bucket: str) -> tuple[list[Bucket], list[StatusRow], list[NodeRow]]:
    if bucket == "minute":
        return query.cube(cursor, sel, first, last, bucket)
    chars = query.BUCKETS[bucket][1]
    where, params = span.where("hour", 24)
    cursor.execute(f"SELECT hour, node, verdict, status, n, last_at FROM rollup_hours {where}",
                   params)
    return query.cube_of(
        [("" if hour == NO_TIME else hour_start(hour).isoformat(sep=" ")[:chars], node,
          verdict or None, None if status == -1 else status, count, latest)
         for hour, node, verdict, status, count, latest in cursor.fetchall()],
        first, last, bucket)
