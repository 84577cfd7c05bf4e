"""The report's SQL, over the schema of modsec_tools.db (``events``, ``messages``,
``event_messages``), the same statements for SQLite and MariaDB/MySQL but for a few
expressions. Every value from the command line is a bound parameter.

Each section is one grouped query over the selected events; what only its top rows need
(the rules a top client hit, the addresses that hit a top rule) is asked for those rows
alone. Sections run side by side on their own connections (``build_report``): SQLite
steps and the MariaDB server sort without holding the GIL, so two cores halve the wait.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .model import (BUCKETS, Bucket, ClientRow, Filters, NodeRow, RuleRow, StatusRow,
                    TargetRow, Totals)


class ReportError(ValueError):
    """A filter the report cannot apply (the message says why)."""


#: Most addresses a ``--client`` network may select (each is one bound parameter).
MAX_NETWORK_ADDRESSES = 30_000
#: The timeline's finest granularity that keeps it at most this many buckets is chosen.
MAX_BUCKETS = {"minute": 180, "hour": 24 * 8}
BLOCKED = "SUM(CASE WHEN e.verdict = 'blocked' THEN 1 ELSE 0 END)"
DETECTED = "SUM(CASE WHEN e.verdict = 'detected' THEN 1 ELSE 0 END)"
#: The request target up to its '?', per dialect (both work on bytes).
PATH = {"sqlite": "CASE WHEN instr(e.uri, X'3F') > 0 THEN substr(e.uri, 1, instr(e.uri, X'3F')"
                  " - 1) ELSE e.uri END",
        "mysql": "SUBSTRING_INDEX(e.uri, X'3F', 1)"}


#: A join its planner must do in the order written (SQLite: CROSS JOIN; MySQL: STRAIGHT_JOIN).
IN_ORDER = {"sqlite": "CROSS JOIN", "mysql": "STRAIGHT_JOIN"}


@dataclass(frozen=True, slots=True)
class Selection:
    """The WHERE clause of the filters, with its parameters, for one dialect."""

    kind: str
    mark: str
    where: str
    params: tuple

    def sql(self, statement: str) -> str:
        """``statement`` with ``{where}`` and ``{join}`` filled and ``?`` as the dialect's
        mark. ``{join}``: from the selected events to their messages, in that order when
        the filters select (a planner left free would start from a rule's messages and
        read every match of it, to keep those of the last hour)."""
        join = IN_ORDER[self.kind] if self.where else "JOIN"
        return statement.format(where=self.where, join=join).replace("?", self.mark)


def time_param(kind: str, stamp: dt.datetime) -> Any:
    """How a UTC time is compared with ``created_at``: SQLite holds ISO text."""
    return stamp.isoformat(sep=" ", timespec="microseconds") if kind == "sqlite" else stamp


def read_time(value: Any) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def text(value: Any) -> str:
    """A stored value as text (bytes that are not UTF-8 as U+FFFD)."""
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def request_bytes(value: str) -> bytes:
    """A command-line value compared with a BLOB column (the bytes the admin typed)."""
    return value.encode("utf-8", "surrogateescape")


def selection(kind: str, mark: str, filters: Filters,
              addresses: Sequence[str] | None = None) -> Selection:
    """``addresses``: what a ``--client`` network selects (see ``network_addresses``)."""
    conditions: list[str] = []
    params: list[Any] = []
    if filters.since is not None:
        conditions.append("e.created_at >= ?")
        params.append(time_param(kind, filters.since))
    if filters.until is not None:
        conditions.append("e.created_at < ?")
        params.append(time_param(kind, filters.until))
    if filters.vhost is not None:
        conditions.append("e.host = ?")
        params.append(request_bytes(filters.vhost))
    if filters.client is not None:
        chosen = [filters.client] if addresses is None else list(addresses)
        if chosen:
            conditions.append(f"e.client_ip IN ({','.join('?' * len(chosen))})")
            params.extend(chosen)
        else:
            conditions.append("1 = 0")
    if filters.rule is not None:
        conditions.append("e.id IN (SELECT em.event_id FROM event_messages em JOIN messages m "
                          "ON m.id = em.message_id WHERE m.rule_id = ?)")
        params.append(filters.rule)
    if filters.node is not None:
        conditions.append("e.node = ?")
        params.append(filters.node)
    if filters.verdict is not None:
        conditions.append("e.verdict = ?")
        params.append(filters.verdict)
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    return Selection(kind, mark, where, tuple(params))


def client_network(client: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network ``--client`` names, or None for a single address."""
    try:
        ipaddress.ip_address(client)
        return None
    except ValueError:
        pass
    try:
        return ipaddress.ip_network(client, strict=False)
    except ValueError:
        raise ReportError(f"--client {client!r} is neither an address nor a network "
                          "(e.g. 192.0.2.7, 2001:db8::1, 192.0.2.0/24)") from None


def network_addresses(cursor: Any, network) -> list[str]:
    """The stored client addresses inside ``network`` (read from the client index)."""
    cursor.execute("SELECT DISTINCT client_ip FROM events WHERE client_ip IS NOT NULL")
    found = []
    for (value,) in cursor.fetchall():
        try:
            if ipaddress.ip_address(value) in network:
                found.append(value)
        except ValueError:
            continue
    if len(found) > MAX_NETWORK_ADDRESSES:
        raise ReportError(f"--client {network}: {len(found):,} stored addresses are in it; "
                          f"name a narrower network (at most {MAX_NETWORK_ADDRESSES:,})")
    return sorted(found)


def canonical_client(client: str) -> str:
    """An address as the database stores it (compressed IPv6), a network as given."""
    try:
        return str(ipaddress.ip_address(client))
    except ValueError:
        return client


# -- the window and its timeline ---------------------------------------------------------------
def window(cursor: Any, sel: Selection, filters: Filters,
           now: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """The span the timeline covers: from --since (else the first event) to --until (else
    now when --since is given, else the last event). Only the time bounds count: the other
    filters do not move the axis."""
    conditions, params = [], []
    if filters.since is not None:
        conditions.append("created_at >= ?")
        params.append(time_param(sel.kind, filters.since))
    if filters.until is not None:
        conditions.append("created_at < ?")
        params.append(time_param(sel.kind, filters.until))
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    bounds = []
    for function in ("MIN", "MAX"):  # two statements: each one look-up in the time index
        cursor.execute(f"SELECT {function}(created_at) FROM events {where}".replace("?", sel.mark),
                       params)
        bounds.append(read_time(cursor.fetchone()[0]))
    first = filters.since or bounds[0]
    if filters.until is not None:
        last = filters.until - dt.timedelta(microseconds=1)
    elif filters.since is not None:
        last = max(now, bounds[1] or now)
    else:
        last = bounds[1]
    if first is None or last is None:
        return None
    return first, max(first, last)


def granularity(first: dt.datetime, last: dt.datetime) -> str:
    for name, most in MAX_BUCKETS.items():
        if _bucket_count(first, last, name) <= most:
            return name
    return "day"


def _floor(stamp: dt.datetime, bucket: str) -> dt.datetime:
    if bucket == "minute":
        return stamp.replace(second=0, microsecond=0)
    if bucket == "hour":
        return stamp.replace(minute=0, second=0, microsecond=0)
    return stamp.replace(hour=0, minute=0, second=0, microsecond=0)


def _bucket_count(first: dt.datetime, last: dt.datetime, bucket: str) -> int:
    size = BUCKETS[bucket][0]
    return int((_floor(last, bucket) - _floor(first, bucket)) / size) + 1


def cube(cursor: Any, sel: Selection, first: dt.datetime | None, last: dt.datetime | None,
         bucket: str) -> tuple[list[Bucket], list[StatusRow], list[NodeRow]]:
    """The timeline, the status codes and the nodes, from one grouping of the selection by
    (bucket, node, verdict, status): one pass over the time index instead of three."""
    chars = BUCKETS[bucket][1]
    cursor.execute(sel.sql(f"SELECT SUBSTR(e.created_at, 1, {chars}), e.node, e.verdict, "
                           "e.status, COUNT(*), MAX(e.created_at) FROM events e {where} "
                           "GROUP BY 1, 2, 3, 4"), sel.params)
    return cube_of([(text(label), *rest) for label, *rest in cursor.fetchall()],
                   first, last, bucket)


def cube_of(grouped: Iterable[tuple], first: dt.datetime | None, last: dt.datetime | None,
            bucket: str) -> tuple[list[Bucket], list[StatusRow], list[NodeRow]]:
    """The timeline, status and node figures of (bucket label, node, verdict, status,
    events, latest time) groups."""
    size, chars = BUCKETS[bucket]
    per_bucket: dict[str, Counter] = defaultdict(Counter)
    per_status: Counter = Counter()
    per_node: dict[str, Counter] = defaultdict(Counter)
    last_seen: dict[str, dt.datetime] = {}
    for label, node, verdict, status, count, latest in grouped:
        count = int(count)
        per_bucket[label][verdict] += count
        per_status[None if status is None else int(status)] += count
        per_node[node][verdict] += count
        stamp = read_time(latest)
        if stamp is not None and (node not in last_seen or stamp > last_seen[node]):
            last_seen[node] = stamp
    buckets = []
    if first is not None and last is not None:
        start = _floor(first, bucket)
        for number in range(_bucket_count(first, last, bucket)):
            at = start + number * size
            found = per_bucket.get(at.isoformat(sep=" ")[:chars], Counter())
            buckets.append(Bucket(at, found["blocked"], found["detected"], found["passed"]))
    statuses = [StatusRow(s, n) for s, n in sorted(per_status.items(),
                                                   key=lambda i: (-i[1], i[0] or 0))]
    nodes = [NodeRow(node, sum(c.values()), c["blocked"], c["detected"], c["passed"],
                     last_seen.get(node))
             for node, c in sorted(per_node.items(), key=lambda i: (-sum(i[1].values()), i[0]))]
    return buckets, statuses, nodes


# -- sections ------------------------------------------------------------------------------------
def _top(items: Iterable, key: Callable, top: int) -> list:
    return sorted(items, key=key)[:top]


def clients(cursor: Any, sel: Selection, top: int) -> tuple[list[ClientRow], Totals]:
    """The top clients by requests (ties: by address), and the totals of the selection."""
    cursor.execute(sel.sql(f"SELECT e.client_ip, COUNT(*), {BLOCKED}, {DETECTED}, "
                           "MIN(e.created_at), MAX(e.created_at) FROM events e {where} "
                           "GROUP BY e.client_ip"), sel.params)
    return clients_of(cursor.fetchall(), top,
                      lambda addresses: _rules_of_clients(cursor, sel, addresses))


def clients_of(grouped: Iterable[tuple], top: int,
               rules_of: Callable[[list[str]], dict[str, int]]) -> tuple[list[ClientRow], Totals]:
    """The top clients and the totals, from (address, events, blocked, detected, first,
    last) per address; ``rules_of``: the distinct rules of some addresses."""
    rows = [(text(a) or "-", int(n), int(b or 0), int(d or 0), read_time(f), read_time(l))
            for a, n, b, d, f, l in grouped]
    events = sum(r[1] for r in rows)
    blocked = sum(r[2] for r in rows)
    detected = sum(r[3] for r in rows)
    firsts = [r[4] for r in rows if r[4] is not None]
    lasts = [r[5] for r in rows if r[5] is not None]
    totals = Totals(events, blocked, detected, events - blocked - detected,
                    sum(1 for r in rows if r[0] != "-"),
                    min(firsts, default=None), max(lasts, default=None))
    chosen = _top(rows, lambda r: (-r[1], r[0]), top)
    hit = rules_of([r[0] for r in chosen if r[0] != "-"])
    return [ClientRow(a, n, b, d, hit.get(a, 0), f, l) for a, n, b, d, f, l in chosen], totals


def _rules_of_clients(cursor: Any, sel: Selection, addresses: list[str]) -> dict[str, int]:
    """Distinct rule ids matched by each of these addresses' selected events."""
    if not addresses:
        return {}
    marks = ",".join("?" * len(addresses))
    extra = ("AND" if sel.where else "WHERE") + f" e.client_ip IN ({marks})"
    cursor.execute(sel.sql("SELECT e.client_ip, COUNT(DISTINCT m.rule_id) FROM events e "
                           "{join} event_messages em ON em.event_id = e.id "
                           "{join} messages m ON m.id = em.message_id {where} " + extra
                           + " GROUP BY e.client_ip"), (*sel.params, *addresses))
    return {text(a): int(n) for a, n in cursor.fetchall()}


def top_rules(cursor: Any, sel: Selection, top: int) -> list[RuleRow]:
    """The top rules by matches (ties: by rule id), their addresses still 0 (see
    ``rule_addresses``); see ``rank_rules`` for its message and severity."""
    if sel.where:
        cursor.execute(sel.sql("SELECT em.message_id, COUNT(*) FROM events e {join} "
                               "event_messages em ON em.event_id = e.id {where} "
                               "GROUP BY em.message_id"), sel.params)
    else:  # every link: the message index alone answers
        cursor.execute("SELECT message_id, COUNT(*) FROM event_messages GROUP BY message_id")
    return rules_of(cursor, sel, {int(i): int(n) for i, n in cursor.fetchall()}, top)


def rules_of(cursor: Any, sel: Selection, per_message: dict[int, int],
             top: int) -> list[RuleRow]:
    """The top rules from the matches of each message (message id → matches)."""
    per_text: Counter = Counter()
    for message, text_of in _messages(cursor, sel, per_message).items():
        per_text[text_of] += per_message[message]
    return rank_rules(per_text, top)


def rank_rules(per_text: dict[tuple, int], top: int) -> list[RuleRow]:
    """The top rules from their matches per (rule id, msg, severity): a rule's message and
    severity are its most frequent pair's (ties: the first msg)."""
    matches: Counter = Counter()
    best: dict[str, tuple[int, str, str]] = {}
    for (rule, msg, severity), count in per_text.items():
        rule, msg, severity = text(rule), text(msg), text(severity)
        matches[rule] += count
        held = best.get(rule)
        if held is None or count > held[0] or (count == held[0] and msg < held[1]):
            best[rule] = (count, msg, severity)
    chosen = _top(matches.items(), lambda item: (-item[1], item[0]), top)
    return [RuleRow(rule, best[rule][1], best[rule][2], count, 0) for rule, count in chosen]


def _messages(cursor: Any, sel: Selection, ids: Iterable[int]) -> dict[int, tuple]:
    """id → (rule id, msg, severity) as stored, of the messages that carry a rule id."""
    wanted = list(ids)
    found: dict[int, tuple] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        cursor.execute(f"SELECT id, rule_id, msg, severity FROM messages WHERE rule_id IS NOT "
                       f"NULL AND id IN ({','.join([sel.mark] * len(chunk))})", chunk)
        found.update((int(i), (r, None if m is None else bytes(m), s))
                     for i, r, m, s in cursor.fetchall())
    return found


def rule_addresses(cursor: Any, sel: Selection, rule_id: str) -> int:
    """Distinct client addresses among the selected events that matched ``rule_id`` (one
    statement per rule: the rules of a report are counted side by side)."""
    extra = ("AND" if sel.where else "WHERE") + " m.rule_id = ?"
    cursor.execute(sel.sql("SELECT COUNT(DISTINCT e.client_ip) FROM events e "
                           "{join} event_messages em ON em.event_id = e.id "
                           "{join} messages m ON m.id = em.message_id {where} " + extra),
                   (*sel.params, rule_id))
    return int(cursor.fetchone()[0])


def rules_addresses(cursor: Any, sel: Selection, rule_ids: list[str]) -> dict[str, int]:
    """``rule_addresses`` of several rules in one statement: where the filters select
    events, each rule's statement would read every match of the selection again."""
    if not rule_ids:
        return {}
    extra = (("AND" if sel.where else "WHERE")
             + f" m.rule_id IN ({','.join('?' * len(rule_ids))})")
    cursor.execute(sel.sql("SELECT m.rule_id, COUNT(DISTINCT e.client_ip) FROM events e "
                           "{join} event_messages em ON em.event_id = e.id "
                           "{join} messages m ON m.id = em.message_id {where} " + extra
                           + " GROUP BY m.rule_id"), (*sel.params, *rule_ids))
    return {text(r): int(n) for r, n in cursor.fetchall()}


def targets(cursor: Any, sel: Selection, top: int) -> list[TargetRow]:
    cursor.execute(sel.sql(f"SELECT e.host, {PATH[sel.kind]}, COUNT(*), {BLOCKED} "
                           "FROM events e {where} GROUP BY 1, 2"), sel.params)
    return targets_of(cursor.fetchall(), top)


def targets_of(grouped: Iterable[tuple], top: int) -> list[TargetRow]:
    """The top targets from (host, path, events, blocked) per target."""
    rows = [(bytes(h or b""), bytes(p or b""), int(n), int(b or 0)) for h, p, n, b in grouped]
    chosen = _top(rows, lambda r: (-r[2], r[0], r[1]), top)
    return [TargetRow(text(h), text(p), n, b) for h, p, n, b in chosen]
