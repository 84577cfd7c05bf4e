"""``modsec-tools report``: who attacks, with what, and what the bans did, from the database.

command.py   the ``report`` and ``show`` subcommands (arguments, help, handlers)
filters.py   the command line's filters (relative times too) as a ``Filters``
query.py     the SQL, section by section, for SQLite and MariaDB
rollup.py    the same sections from the rollups (a whole range in a fraction of the time)
indexes.py   the indexes the report wants (proposed as a schema step)
model.py     the report as plain values
fail2ban.py  which addresses fail2ban has banned now
text.py, jsonfmt.py, csvfmt.py, html.py   the renderers: pure functions of the model
cells.py     request-derived text made safe for a terminal, and its width
show.py, archive.py   ``modsec-tools show UNIQUE_ID``
"""
from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from . import query, rollup
from .fail2ban import DEFAULT_JAILS, banned_now
from .filters import parse_filters
from .model import Fail2banState, Filters, Report, RuleRow
from .query import ReportError

__all__ = ["build_report", "parse_filters", "Report", "ReportError", "DEFAULT_JAILS"]

#: Sections run at once, each on a connection of its own (SQLite steps and the MariaDB
#: server's work go on without the GIL), at most this many.
PARALLEL = min(4, os.cpu_count() or 1)


def build_report(open_db: Callable[[], Any], filters: Filters, top: int = 10,
                 jails: Sequence[str] = DEFAULT_JAILS, fail2ban_socket: str = "",
                 now: dt.datetime | None = None, parallel: int = PARALLEL,
                 rollups: bool = True) -> Report:
    """``open_db()`` gives a new read-only database (modsec_tools.db's ``Database``);
    ``rollups``: read the rollups where they answer (False: always the events)."""
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with _Connections(open_db) as connections:
        sel, span, bucket, days = connections.run(lambda cursor, kind, mark: _plan(
            cursor, kind, mark, filters, now, rollups))
        work = _sections(sel, days, top, *(span or (None, None)), bucket)
        with ThreadPoolExecutor(1) as aside, ThreadPoolExecutor(max(1, parallel)) as pool:
            f2b = aside.submit(banned_now, jails, fail2ban_socket)
            futures = {name: pool.submit(connections.run, job) for name, job in work.items()}
            rules = _with_addresses(pool, connections, sel, days, futures["rules"].result())
            results = {name: future.result() for name, future in futures.items()}
            state: Fail2banState = f2b.result()
    clients, totals = results["clients"]
    if state.reachable:
        clients = [replace(row, banned=row.address in state.banned) for row in clients]
    timeline, statuses, nodes = results["cube"]
    return Report(now, filters, top, totals, clients, rules, results["targets"],
                  statuses, bucket, timeline, nodes, state)


def _sections(sel: query.Selection, days: rollup.Days | None, top: int,
              first: dt.datetime | None, last: dt.datetime | None,
              bucket: str) -> dict[str, Callable[..., Any]]:
    """Each section's job (the slowest first: the others fill the connections meanwhile)."""
    if days is None:
        return {"rules": lambda c, *_: query.top_rules(c, sel, top),
                "targets": lambda c, *_: query.targets(c, sel, top),
                "clients": lambda c, *_: query.clients(c, sel, top),
                "cube": lambda c, *_: query.cube(c, sel, first, last, bucket)}
    return {"rules": lambda c, *_: rollup.top_rules(c, days, top),
            "clients": lambda c, *_: rollup.clients(c, days, sel, top),
            "targets": lambda c, *_: rollup.targets(c, days, top),
            "cube": lambda c, *_: rollup.cube(c, days, sel, first, last, bucket)}


def _with_addresses(pool: ThreadPoolExecutor, connections: "_Connections",
                    sel: query.Selection, days: rollup.Days | None,
                    rules: list[RuleRow]) -> list[RuleRow]:
    """The top rules with their distinct addresses. Over every event, a statement per
    rule, side by side on the connections (each reads its rule's matches alone, from the
    message index); else one statement for them all (from the rollups, or one pass over
    the selection's matches instead of one per rule)."""
    ids = [rule.rule_id for rule in rules]
    if days is None and not sel.where:
        counted = [pool.submit(connections.run, lambda c, *_, rule=rule:
                               query.rule_addresses(c, sel, rule)) for rule in ids]
        found = dict(zip(ids, (count.result() for count in counted)))
    elif days is None:
        found = pool.submit(connections.run, lambda c, *_: query.rules_addresses(
            c, sel, ids)).result()
    else:
        found = pool.submit(connections.run, lambda c, *_: rollup.rules_addresses(
            c, days, sel, ids)).result()
    return [replace(rule, addresses=found.get(rule.rule_id, 0)) for rule in rules]


def _plan(cursor: Any, kind: str, mark: str, filters: Filters, now: dt.datetime,
          rollups: bool):
    """The filters as SQL, the timeline's span and its granularity, and the rollups'
    range (None: the report reads the events)."""
    addresses = None
    network = query.client_network(filters.client) if filters.client else None
    if network is not None:
        addresses = query.network_addresses(cursor, network)
    sel = query.selection(kind, mark, filters, addresses)
    span = query.window(cursor, sel, filters, now)
    days = rollup.days(cursor, mark, filters) if rollups else None
    return sel, span, query.granularity(*span) if span else "hour", days


class _Connections:
    """One database connection per thread, opened on first use, all closed at the end."""

    def __init__(self, open_db: Callable[[], Any]) -> None:
        self.open_db = open_db
        self.local = threading.local()
        self.opened: list[Any] = []
        self.lock = threading.Lock()

    def run(self, job: Callable[..., Any]) -> Any:
        db = getattr(self.local, "db", None)
        if db is None:
            db = self.local.db = self.open_db()
            with self.lock:
                self.opened.append(db)
            db.connect()
        try:
            return job(db.conn.cursor(), db.kind, db.mark)
        finally:
            db.conn.commit()  # ends the read's snapshot (MariaDB keeps one per transaction)

    def __enter__(self) -> "_Connections":
        return self

    def __exit__(self, *exc: object) -> None:
        for db in self.opened:
            db.close()
