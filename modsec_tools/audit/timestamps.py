"""Apache/ModSecurity time stamps (``28/Nov/2026:16:26:42.659421 +0100``), parsed by hand.

ModSecurity 2.9 prints negative UTC offsets with a doubled sign (``--0500``, ``--03-30``);
``strptime`` cannot read those, and this is on the hot path, so the parsing is explicit.
"""
from __future__ import annotations

import datetime as dt
import re

from .errors import ParseError

_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_STAMP = re.compile(
    r"([0-9]{1,2})/([A-Z][a-z]{2})/([0-9]{4}):([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,6}))? ([+-])-?([0-9]{2})-?:?([0-9]{2})$")
_ZONES: dict[str, dt.timezone] = {}


def parse_apache_time(text: str) -> dt.datetime:
    match = _STAMP.match(text)
    if match is None:
        raise ParseError(f"unreadable time stamp {text[:60]!r}")
    day, month, year, hour, minute, second, micro, sign, off_h, off_m = match.groups()
    try:
        return dt.datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute),
                           int(second), int((micro or "0").ljust(6, "0")),
                           _zone(sign, off_h, off_m))
    except (KeyError, ValueError) as exc:
        raise ParseError(f"impossible time stamp {text[:60]!r}: {exc}") from None


def _zone(sign: str, hours: str, minutes: str) -> dt.timezone:
    key = sign + hours + minutes
    zone = _ZONES.get(key)
    if zone is None:
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
        zone = dt.timezone(-delta if sign == "-" else delta)
        _ZONES[key] = zone
    return zone
