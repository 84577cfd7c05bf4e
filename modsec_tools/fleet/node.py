"""``modsec-tools fleet run``: one loop that publishes this server's bans and applies the
others', and keeps doing the half it can when the database or fail2ban is away.

Every ``local_poll`` it reads fail2ban's bans table (a local file), every ``fleet_poll`` the
other nodes' heads; every heartbeat it writes its counters, re-reads the schema version and
purges its own expired rows. Bans in force end on time even while the database is down.
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field

from ..daemon import process as daemon
from ..owned import OwnedDir
from .apply import Applier
from .f2bdb import Fail2BanDb
from .f2bsocket import Fail2BanError, Fail2BanSocket
from .publish import CursorFile, Publisher
from .schema import SchemaError
from .settings import FleetSettings
from .store import DatabaseDown, NotPermitted, Store, wait_seconds
from .target import Target
from .validate import Guard

log = logging.getLogger(__name__)

GUARD_REFRESH = 60.0       # ignoreip / own addresses re-read this often
UNBAN_CHECK = 1.0          # early unbans looked for this often (fleet_propagate_unban)
REFUSED_RETRY = 30.0       # grants or schema wrong: ask again this much later


class AlreadyRunning(RuntimeError):
    pass


@dataclass
class Clock:
    """When each periodic job is next due."""

    fleet: float = 0.0
    heartbeat: float = 0.0
    guard: float = 0.0
    unbans: float = 0.0
    connect: float = 0.0
    failures: int = 0
    down_since: float | None = None
    last_error: str = ""
    f2b_error: str = ""
    status: dict = field(default_factory=dict)


class FleetNode:
    def __init__(self, settings: FleetSettings, target: Target) -> None:
        self.settings = settings
        self.sock = Fail2BanSocket(settings.fail2ban_socket)
        self.store = Store(target, settings.node)
        self.applier = Applier(settings.node, self.sock, Guard(settings.trusted_proxies),
                               settings.limits, settings.propagate_unban)
        self.publisher: Publisher | None = None
        self.clock = Clock()
        self.lock_fd = -1
        self.reconciled = False

    # -- start ---------------------------------------------------------------------------
    def start(self, stopping) -> bool:
        """Lock, then wait for fail2ban and learn its database file; False if stopped first."""
        self.lock_fd = _lock(os.path.join(self.settings.state_dir, "fleet"))
        dbfile = self._fail2ban_dbfile(stopping)
        if dbfile is None:
            return False
        self.publisher = Publisher(Fail2BanDb(dbfile), CursorFile(self.settings.state_dir),
                                   self.settings.propagate_unban)
        self.applier.refresh_guard()
        self.clock.guard = time.monotonic() + GUARD_REFRESH
        log.info("fleet: node %s, fail2ban database %s, fleet database %s", self.settings.node,
                 dbfile, self.store.target.where)
        return True

    def _fail2ban_dbfile(self, stopping) -> str | None:
        waited = False
        while not stopping():
            try:
                dbfile = self.sock.send("get", "dbfile")
            except OSError as exc:
                if not waited:
                    log.warning("fleet: waiting for fail2ban at %s (%s)", self.sock.path, exc)
                    waited = True
                time.sleep(1.0)
                continue
            if not dbfile:
                raise Fail2BanError("fail2ban runs without a database (dbfile = :memory: or "
                                    "none): the fleet publishes the bans it records there")
            return str(dbfile)
        return None

    # -- the loop ------------------------------------------------------------------------
    def step(self) -> None:
        """One turn: whatever is due."""
        now, mono = time.time(), time.monotonic()
        assert self.publisher is not None
        if not self.store.up and mono >= self.clock.connect:
            self._connect(now, mono)
        if self.store.up:
            try:
                self._exchange(now, mono)
            except DatabaseDown as exc:
                self._lost(exc, mono)
            except (NotPermitted, SchemaError) as exc:
                self._refused(exc, mono)
        self.applier.expire(now)
        if mono >= self.clock.guard:
            self.clock.guard = mono + GUARD_REFRESH
            self._guarded(self.applier.refresh_guard)
        self.applier.flush()

    def _exchange(self, now: float, mono: float) -> None:
        assert self.publisher is not None
        try:
            self.publisher.poll(self.store, now)
        except (sqlite3.Error, OSError) as exc:
            if str(exc) != self.clock.f2b_error:
                log.error("fleet: cannot read fail2ban's database %s: %s",
                          self.publisher.f2b.path, exc)
            self.clock.f2b_error = str(exc)
        if mono >= self.clock.fleet:
            self.clock.fleet = mono + self.settings.fleet_poll
            self.applier.poll(self.store, now)
        if mono >= self.clock.unbans:
            self.clock.unbans = mono + UNBAN_CHECK
            self.publisher.unbans(self.store, now)
        if mono >= self.clock.heartbeat:
            self.clock.heartbeat = mono + self.settings.heartbeat
            self._heartbeat(now)

    def _connect(self, now: float, mono: float) -> None:
        assert self.publisher is not None
        try:
            row = self.store.open()
            self.publisher.resume(row, self.store, now)
            self.applier.catch_up(self.store, now)
        except DatabaseDown as exc:
            self._lost(exc, mono)
            return
        except (NotPermitted, SchemaError) as exc:
            self._refused(exc, mono)
            return
        if not self.reconciled:
            self._guarded(self.applier.reconcile)
            self.reconciled = True
        outage = "" if self.clock.down_since is None else \
            f" after {mono - self.clock.down_since:.1f} s away"
        log.info("fleet: connected to %s (schema %d)%s", self.store.server, self.store.speaks,
                 outage)
        self.clock.failures, self.clock.down_since, self.clock.last_error = 0, None, ""
        self.clock.heartbeat = mono

    def _lost(self, exc: Exception, mono: float) -> None:
        self.store.close()
        if self.clock.down_since is None:
            self.clock.down_since = mono
            log.warning("fleet: database unreachable (%s): fail2ban keeps banning here; "
                        "bans are published once it is back", exc)
        self.clock.last_error = str(exc)
        self.clock.connect = mono + wait_seconds(self.clock.failures)
        self.clock.failures += 1

    def _refused(self, exc: Exception, mono: float) -> None:
        self.store.close()
        if str(exc) != self.clock.last_error:
            log.error("fleet: %s", exc)
        self.clock.last_error = str(exc)
        self.clock.down_since = self.clock.down_since or mono
        self.clock.connect = mono + REFUSED_RETRY

    def _heartbeat(self, now: float) -> None:
        applier = self.applier
        self.store.heartbeat(applier.applied - self.clock.status.get("applied", 0),
                             applier.rejected - self.clock.status.get("rejected", 0),
                             applier.take_lag_ms())
        self.store.purge(now)  # an ended ban is ignored by every reader anyway
        self.clock.status = self.status()
        daemon.write_status(os.path.join(self.settings.state_dir, "fleet", "status.json"),
                            self.clock.status)

    def _guarded(self, job) -> None:
        try:
            job()
        except OSError as exc:
            log.warning("fleet: fail2ban is not answering (%s)", exc)

    def status(self) -> dict:
        applier, publisher = self.applier, self.publisher
        return {"node": self.settings.node, "database_up": self.store.up,
                "database": self.store.server, "last_error": self.clock.last_error,
                "schema": self.store.speaks, "published": publisher.published if publisher else 0,
                "applied": applier.applied, "rejected": applier.rejected,
                "ignored": applier.ignored, "expired": applier.expired,
                "held": len(applier.held), "f2b_cursor": publisher.rowid if publisher else 0,
                "origins": dict(applier.cursors)}

    def close(self) -> None:
        if self.store.up:
            try:
                self._heartbeat(time.time())
            except (DatabaseDown, NotPermitted, SchemaError):
                pass
        self.store.close()
        self.sock.close()
        if self.publisher is not None:
            self.publisher.f2b.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def run(settings: FleetSettings, target: Target, signals: daemon.Signals) -> int:
    node = FleetNode(settings, target)
    try:
        if not node.start(lambda: signals.stop):
            return 0
        daemon.sd_notify("READY=1")
        while not signals.stop:
            node.step()
            if signals.report:
                signals.report = False
                log.info("fleet: %s", node.status())
            time.sleep(settings.local_poll)
    finally:
        node.close()
    return 0


def _lock(directory: str) -> int:
    with OwnedDir(directory, 0o700) as owned:
        fd = owned.open("fleet.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another 'modsec-tools fleet run' holds {directory}/fleet.lock") \
            from None
    return fd
