"""The report's filters from the command line: ``--since 1h``, ``--until 2026-11-28``,
``--client 192.0.2.0/24``, ... Times are UTC unless they carry an offset; a relative time
(``90s``, ``30m``, ``1h``, ``7d``, ``2w``) counts back from now."""
from __future__ import annotations

import datetime as dt
import re

from .model import VERDICTS, Filters
from .query import ReportError, canonical_client, client_network

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: dt.datetime) -> dt.datetime:
    """A UTC time (naive, as the database compares them)."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - dt.timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
    try:
        stamp = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"not a time: {text!r} (use e.g. 1h, 7d, 2026-11-28, "
                          "'2026-11-28 15:30', 2026-11-28T15:30:00+01:00)") from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return stamp


def parse_filters(since: str | None = None, until: str | None = None,
                  vhost: str | None = None, client: str | None = None,
                  rule: str | None = None, node: str | None = None,
                  verdict: str | None = None, now: dt.datetime | None = None) -> Filters:
    now = now or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    start = parse_time(since, now) if since else None
    end = parse_time(until, now) if until else None
    if start is not None and end is not None and end <= start:
        raise ReportError(f"--until ({end} UTC) is not after --since ({start} UTC)")
    if verdict is not None and verdict not in VERDICTS:
        raise ReportError(f"--verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    if client is not None:
        client_network(client)  # raises for what is neither an address nor a network
        client = canonical_client(client)
    return Filters(start, end, vhost, client, rule, node, verdict)
