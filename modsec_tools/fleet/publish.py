"""Local bans → the shared table: follow fail2ban's ``bans`` table by rowid, publish what is
still in force, keep the cursor where a crash cannot lose or repeat a ban.

The cursor lives twice: in this node's row of ``fleet_nodes``, moved in the same transaction
as the rows it covers, and in ``<state_dir>/fleet/cursor`` (written after the commit, with
OwnedDir.replace). On start the larger wins: a crash between commit and file costs nothing,
and a database that was replaced starts from the file. While the database is away the
cursor stays put, so whatever fail2ban banned meanwhile is published once it is back (what
expired meanwhile is skipped).
"""
from __future__ import annotations

import logging
import os

from ..owned import OwnedDir
from .f2bdb import Fail2BanDb
from .rows import BAN, FLEET_JAILS, UNBAN, LocalBan
from .store import NodeRow, Store

log = logging.getLogger(__name__)
CURSOR = "cursor"


class CursorFile:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "fleet")

    def load(self) -> int:
        try:
            with OwnedDir(self.path, 0o700) as owned:
                fd = owned.open(CURSOR, os.O_RDONLY)
                with os.fdopen(fd, "rb") as stream:
                    return int(stream.read(64).decode().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("fleet: %s/%s is not a number: starting from the database's cursor",
                        self.path, CURSOR)
            return 0

    def save(self, rowid: int) -> None:
        with OwnedDir(self.path, 0o700) as owned:
            owned.replace(CURSOR, f"{rowid}\n".encode(), 0o600)


class Publisher:
    def __init__(self, f2b: Fail2BanDb, cursor_file: CursorFile, propagate_unban: bool) -> None:
        self.f2b = f2b
        self.cursor_file = cursor_file
        self.propagate_unban = propagate_unban
        self.rowid = cursor_file.load()
        self.last_seq = 0
        self.in_force: dict[tuple[str, str, int], LocalBan] = {}
        self.published = 0

    def resume(self, row: NodeRow, store: Store, now: float) -> None:
        """After (re)connecting: the database's view of what this node published."""
        self.rowid = max(self.rowid, row.f2b_cursor)
        self.last_seq = row.last_seq
        self.in_force = store.own_in_force(now)

    def poll(self, store: Store, now: float) -> int:
        """Publish the bans fail2ban made since the cursor; how many."""
        rowid, bans = self.f2b.new_bans(self.rowid, FLEET_JAILS)
        if rowid == self.rowid and not bans:
            return 0
        fresh = [ban for ban in bans if ban.end > now and 0 < len(ban.ip) <= 64]
        self.last_seq = store.publish(fresh, [BAN] * len(fresh), self.last_seq, rowid)
        self.rowid = rowid
        self.cursor_file.save(rowid)
        for ban in fresh:
            self.in_force[(ban.jail, ban.ip, ban.time_of_ban)] = ban
        if fresh:
            log.debug("fleet: published %d ban(s)", len(fresh))
        self.published += len(fresh)
        return len(fresh)

    def unbans(self, store: Store, now: float) -> int:
        """Publish the early unbans of our published bans (fleet_propagate_unban): fail2ban
        deletes an address's ``bips`` row when it is unbanned, not when its ban expires."""
        self.in_force = {key: ban for key, ban in self.in_force.items() if ban.end > now}
        if not self.propagate_unban or not self.in_force:
            return 0
        held = self.f2b.latest(FLEET_JAILS)
        gone = [ban for (jail, ip, time_of_ban), ban in self.in_force.items()
                if held.get((jail, ip), -1) < time_of_ban]
        if not gone:
            return 0
        self.last_seq = store.publish(gone, [UNBAN] * len(gone), self.last_seq, self.rowid)
        for ban in gone:
            self.in_force.pop((ban.jail, ban.ip, ban.time_of_ban), None)
            log.info("fleet: %s unbanned early from %s here: unbanned fleet-wide", ban.ip,
                     ban.jail)
        return len(gone)
