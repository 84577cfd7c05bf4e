"""The shared table → this server's fail2ban: validate, apply in the fleet jails, unban at
the origin's end.

Each origin numbers its rows; we keep a cursor per origin and read only past it, after a
cheap look at ``fleet_nodes`` says there is something. An address may be held by several
origins' bans at once: it stays banned until the last of them ends. On (re)connecting we
read every row still in force instead (catch-up): what expired while we were away is never
applied, and fail2ban ignores a ban of an address it already bans, so nothing is applied
twice. At start, fleet bans fail2ban restored that are no longer in force are unbanned.
"""
from __future__ import annotations

import heapq
import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .f2bsocket import Fail2BanError, Fail2BanSocket
from .rows import BAN, FLEET_JAILS, FleetBan, SharedRow
from .store import FETCH_LIMIT, Store
from .validate import Guard, Limits, Rejected, validate

log = logging.getLogger(__name__)

CHUNK = 2000          # addresses per banip/unbanip command
LOGGED_REFUSALS = 20  # refused rows logged one by one; after that, one in 1000


class Applier:
    def __init__(self, node: str, sock: Fail2BanSocket, guard: Guard, limits: Limits,
                 honor_unban: bool) -> None:
        self.node = node
        self.sock = sock
        self.guard = guard
        self.limits = limits
        self.honor_unban = honor_unban
        self.cursors: dict[str, int] = {}
        # (fleet jail, ip) -> {(origin, origin jail, time of ban): end}
        self.held: dict[tuple[str, str], dict[tuple[str, str, int], float]] = {}
        self.ends: list[tuple[float, str, str]] = []
        self.to_ban: dict[str, dict[str, float]] = defaultdict(dict)   # jail -> ip -> published
        self.to_unban: dict[str, set[str]] = defaultdict(set)
        self.applied = self.rejected = self.ignored = self.expired = 0
        self.lags: list[float] = []
        self.missing_jails: set[str] = set()
        self._reapply = False

    # -- reading the shared table ---------------------------------------------------------
    def catch_up(self, store: Store, now: float) -> None:
        """Everything still in force, then follow each origin from where it was."""
        heads = store.heads()
        self.take(store.in_force(now), now)
        for origin, seq in heads.items():
            self.cursors[origin] = max(self.cursors.get(origin, 0), seq)

    def poll(self, store: Store, now: float) -> int:
        """Rows published since the last poll; how many were read."""
        read = 0
        for origin, head in store.heads().items():
            while head > self.cursors.get(origin, 0):
                after = self.cursors.get(origin, 0)
                rows = store.fetch(origin, after)
                self.take(rows, now)
                read += len(rows)
                last = max((row.seq for row in rows if isinstance(row.seq, int)), default=head)
                self.cursors[origin] = max(after, last if len(rows) == FETCH_LIMIT else head)
        return read

    def take(self, rows: Iterable[SharedRow], now: float) -> None:
        for row in rows:
            try:
                ban = validate(row, self.limits, now)
            except Rejected as exc:
                self.rejected += 1
                # every one is counted; a node writing garbage must not flood the log
                if self.rejected <= LOGGED_REFUSALS or self.rejected % 1000 == 0:
                    log.warning("fleet: row %s/%s refused: %s (%d refused so far)",
                                _printable(row.node), _printable(row.seq), exc, self.rejected)
                continue
            self.cursors[ban.origin] = max(self.cursors.get(ban.origin, 0), ban.seq)
            if ban.origin == self.node:
                continue
            if ban.kind == BAN:
                self._ban(ban, now)
            elif self.honor_unban:
                self._unban(ban)

    def _ban(self, ban: FleetBan, now: float) -> None:
        if ban.end <= now:
            self.expired += 1
            return
        ignored = self.guard.ignored(ban.ip)
        if ignored is not None:
            self.ignored += 1
            log.info("fleet: %s (banned by %s) not banned here: in %s (ignoreip, this "
                     "server's addresses or trusted_proxies)", ban.ip, ban.origin, ignored)
            return
        holders = self.held.setdefault((ban.jail, ban.ip), {})
        if ban.key not in holders:
            holders[ban.key] = ban.end
            heapq.heappush(self.ends, (ban.end, ban.jail, ban.ip))
            self.to_ban[ban.jail][ban.ip] = ban.published

    def _unban(self, ban: FleetBan) -> None:
        holders = self.held.get((ban.jail, ban.ip))
        if holders is not None and holders.pop(ban.key, None) is not None and not holders:
            del self.held[(ban.jail, ban.ip)]
            self.to_ban[ban.jail].pop(ban.ip, None)
            self.to_unban[ban.jail].add(ban.ip)
            log.info("fleet: %s unbanned by %s: unbanned here", ban.ip, ban.origin)

    # -- time ------------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Unban what the last of its origins' bans stopped holding."""
        while self.ends and self.ends[0][0] <= now:
            _, jail, ip = heapq.heappop(self.ends)
            holders = self.held.get((jail, ip))
            if holders is None:
                continue
            live = {key: end for key, end in holders.items() if end > now}
            if live:
                self.held[(jail, ip)] = live
                continue
            del self.held[(jail, ip)]
            self.to_ban[jail].pop(ip, None)
            self.to_unban[jail].add(ip)

    def refresh_guard(self) -> None:
        """Re-read the fleet jails' ignoreip / ignoreself; release what they now cover."""
        ignoreip: list[str] = []
        ignoreself = False
        for jail in FLEET_JAILS.values():
            try:
                ignoreip += [str(item) for item in self.sock.send("get", jail, "ignoreip")]
                ignoreself |= bool(self.sock.send("get", jail, "ignoreself"))
            except Fail2BanError:
                continue                      # jail not enabled: reported when used
        self.guard.refresh(ignoreip, ignoreself)
        for (jail, ip) in list(self.held):
            if self.guard.ignored(ip) is not None:
                del self.held[(jail, ip)]
                self.to_unban[jail].add(ip)

    # -- fail2ban --------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Unban fleet bans fail2ban holds that no origin holds any more (they ended while
        this daemon was not running); ban what it lost (its own database purged them)."""
        for jail in FLEET_JAILS.values():
            try:
                current = {str(ip) for ip in self.sock.send("get", jail, "banip")}
            except Fail2BanError as exc:
                self._jail_missing(jail, exc)
                continue
            mine = {ip for (held_jail, ip) in self.held if held_jail == jail}
            self.to_unban[jail] |= current - mine
            stale = len(current - mine)
            if stale:
                log.info("fleet: %d ban(s) of %s ended while the fleet daemon was away: "
                         "unbanned", stale, jail)

    def flush(self) -> None:
        """Hand the pending bans and unbans to fail2ban; kept for later if it is away."""
        try:
            if self._reapply:
                for jail, ip in self.held:
                    self.to_ban[jail].setdefault(ip, 0.0)
                self._reapply = False
            for jail in list(self.to_unban):
                self._send(jail, "unbanip", sorted(self.to_unban.pop(jail)))
            for jail in list(self.to_ban):
                pending = self.to_ban.pop(jail)
                count = self._send(jail, "banip", list(pending))
                self.applied += count
                done = time.time()
                self.lags += [done - published for published in pending.values() if published]
        except OSError as exc:
            if not self._reapply:
                log.warning("fleet: fail2ban is not answering (%s): bans wait for it", exc)
            self._reapply = True                     # it may come back without them

    def _send(self, jail: str, command: str, ips: Sequence[str]) -> int:
        count = 0
        for start in range(0, len(ips), CHUNK):
            chunk = ips[start:start + CHUNK]
            try:
                answer = self.sock.send("set", jail, command, *chunk)
            except Fail2BanError as exc:
                self._jail_missing(jail, exc)
                return count
            except OSError:
                # what was not sent yet goes back to wait for fail2ban
                rest = ips[start:]
                if command == "banip":
                    self.to_ban[jail].update(dict.fromkeys(rest, 0.0))
                else:
                    self.to_unban[jail].update(rest)
                raise
            count += answer if isinstance(answer, int) else len(chunk)
        return count

    def _jail_missing(self, jail: str, exc: Exception) -> None:
        if jail not in self.missing_jails:
            self.missing_jails.add(jail)
            log.error("fleet: fail2ban refused %s (%s): enable [%s] (jail.d/modsec-fleet.conf, "
                      "docs/fleet.md)", jail, exc, jail)

    def take_lag_ms(self) -> int | None:
        """Median time from publication to fail2ban since the last call."""
        lags, self.lags = self.lags, []
        return int(statistics.median(lags) * 1000) if lags else None


def _printable(value: object) -> str:
    return repr(value)[:80]
