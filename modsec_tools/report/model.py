"""What a report holds: plain values, built by ``query`` and read by the renderers.

Request-derived strings (hosts, paths, rule messages) are kept as the database holds them,
decoded as UTF-8 with U+FFFD for anything else; each renderer escapes them for its format.
Times are UTC (the database stores UTC).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

VERDICTS = ("blocked", "detected", "passed")
#: Timeline granularities: their length, and how many characters of an ISO time name one.
BUCKETS = {"minute": (dt.timedelta(minutes=1), 16), "hour": (dt.timedelta(hours=1), 13),
           "day": (dt.timedelta(days=1), 10)}


@dataclass(frozen=True, slots=True)
class Filters:
    since: dt.datetime | None = None     # UTC, naive, inclusive
    until: dt.datetime | None = None     # UTC, naive, exclusive
    vhost: str | None = None             # the Host header as stored (port included)
    client: str | None = None            # an address or a network (ipaddress form)
    rule: str | None = None              # a rule id
    node: str | None = None
    verdict: str | None = None           # one of VERDICTS


@dataclass(frozen=True, slots=True)
class Totals:
    events: int = 0
    blocked: int = 0
    detected: int = 0
    passed: int = 0
    clients: int = 0
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ClientRow:
    address: str
    requests: int
    blocked: int
    detected: int
    rules: int                           # distinct rule ids its requests matched
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None
    banned: bool | None = None           # None: fail2ban was not asked or did not answer


@dataclass(frozen=True, slots=True)
class RuleRow:
    rule_id: str
    message: str                         # its most frequent msg in the selection
    severity: str
    matches: int                         # rule messages (an event may match a rule twice)
    addresses: int                       # distinct client addresses among them


@dataclass(frozen=True, slots=True)
class TargetRow:
    host: str
    path: str                            # the request target up to '?'
    requests: int
    blocked: int


@dataclass(frozen=True, slots=True)
class StatusRow:
    status: int | None                   # None: no response status recorded
    requests: int


@dataclass(frozen=True, slots=True)
class Bucket:
    start: dt.datetime
    blocked: int = 0
    detected: int = 0
    passed: int = 0

    @property
    def total(self) -> int:
        return self.blocked + self.detected + self.passed


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    requests: int
    blocked: int
    detected: int
    passed: int
    last_seen: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Fail2banState:
    jails: tuple[str, ...] = ()
    reachable: bool = False
    error: str = ""                      # why it could not be asked ("" when it answered)
    banned: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: dt.datetime
    filters: Filters
    top: int
    totals: Totals
    clients: list[ClientRow] = field(default_factory=list)
    rules: list[RuleRow] = field(default_factory=list)
    targets: list[TargetRow] = field(default_factory=list)
    statuses: list[StatusRow] = field(default_factory=list)
    bucket: str = "hour"
    timeline: list[Bucket] = field(default_factory=list)
    nodes: list[NodeRow] = field(default_factory=list)
    fail2ban: Fail2banState = Fail2banState()


def iso(stamp: dt.datetime | None) -> str | None:
    """A UTC time as the JSON and CSV outputs write it: 2026-11-28T15:26:43.528909Z."""
    return None if stamp is None else stamp.isoformat(timespec="microseconds") + "Z"


def short_time(stamp: dt.datetime | None) -> str:
    """A UTC time for a table cell: 2026-11-28 15:26:43."""
    return "-" if stamp is None else stamp.strftime("%Y-%m-%d %H:%M:%S")


def bucket_label(start: dt.datetime, bucket: str) -> str:
    return start.isoformat(sep=" ")[:BUCKETS[bucket][1]]
