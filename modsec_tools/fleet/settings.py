"""The fleet's settings (keys ``fleet*`` of modsec-tools.conf) and their converters."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .validate import Limits

_TRUE, _FALSE = {"yes", "true", "on", "1"}, {"no", "false", "off", "0"}
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ValueError(f"{text!r} is not yes or no")


def parse_duration(text: str) -> int:
    """``3600``, ``1h``, ``5w``, ``1d 12h`` → seconds (1 or more)."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or _DURATION.sub("", text.strip().lower()).strip():
        raise ValueError(f"{text!r} is not a duration (e.g. 3600, 12h, 5w)")
    seconds = sum(int(number) * _UNIT[unit] for number, unit in parts)
    if seconds < 1:
        raise ValueError(f"{text!r}: a duration of 1 s or more")
    return seconds


@dataclass(frozen=True)
class FleetSettings:
    node: str
    db: str
    option_file: str
    propagate_unban: bool
    limits: Limits
    fail2ban_socket: str
    state_dir: str
    trusted_proxies: tuple
    local_poll: float = 0.05      # how often fail2ban's bans table is read (a local file)
    fleet_poll: float = 0.1       # how often the shared table's heads are read
    heartbeat: float = 5.0        # counters, schema check, purge, ignore lists

    @classmethod
    def of(cls, settings: Any) -> "FleetSettings":
        v4, v6 = settings.fleet_max_prefix
        return cls(node=settings.node, db=settings.fleet_db,
                   option_file=settings.fleet_db_option_file,
                   propagate_unban=settings.fleet_propagate_unban,
                   limits=Limits(v4, v6, settings.fleet_max_bantime),
                   fail2ban_socket=settings.fleet_fail2ban_socket,
                   state_dir=settings.state_dir,
                   trusted_proxies=tuple(settings.trusted_proxies))
