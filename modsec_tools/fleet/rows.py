"""The records the fleet moves: a local fail2ban ban, a row of the shared table as read, and
that row once validated (the only shape that reaches fail2ban)."""
from __future__ import annotations

from dataclasses import dataclass

BAN, UNBAN = "ban", "unban"

#: The local jails whose bans are published, and the jail each lands in on the other servers.
FLEET_JAILS = {"modsec": "modsec-fleet", "modsec-recidive": "modsec-fleet-recidive"}


@dataclass(frozen=True, slots=True)
class LocalBan:
    """A row of fail2ban's ``bans`` table (its rowid is our cursor)."""

    rowid: int
    jail: str
    ip: str
    time_of_ban: int
    bantime: int          # escalated, as fail2ban stored it; -1: permanent
    bancount: int
    rules: str            # rule ids from the matched event lines, comma-separated

    @property
    def end(self) -> float:
        return float("inf") if self.bantime < 0 else self.time_of_ban + self.bantime


@dataclass(frozen=True, slots=True)
class SharedRow:
    """A row of ``fleet_bans`` as the database returned it: hostile until validated."""

    node: object
    seq: object
    kind: object
    jail: object
    ip: object
    time_of_ban: object
    bantime: object
    end_time: object
    bancount: object
    rules: object
    published: object


@dataclass(frozen=True, slots=True)
class FleetBan:
    """A validated row: what this server may hand to its fail2ban."""

    origin: str
    seq: int
    kind: str
    origin_jail: str
    jail: str             # this server's fleet jail
    ip: str               # canonical address (or network) text
    time_of_ban: int
    end: float            # bounded by fleet_max_bantime
    rules: str
    published: float

    @property
    def key(self) -> tuple[str, str, int]:
        """One ban of one origin: what an unban row of that origin cancels."""
        return (self.origin, self.origin_jail, self.time_of_ban)
