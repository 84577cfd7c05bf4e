"""modsec-block - fail2ban Python action: bans in kernel sets/chains with per-ban timeouts.

SYNOPSIS
    [modsec]
    action = modsec-block.py[backend=auto, blocktype=DROP, port="http,https", protocol=tcp]

DESCRIPTION
    Loaded by fail2ban into its own process (no fork per ban); written for Python >= 3.6,
    the interpreter of RHEL 8's fail2ban.  This file is the glue to fail2ban; the work is done
    by the package beside it, modsec_blocker/ (installed with it, found through this file's
    own directory).

    When the jail's filter queues a ticket, the jail's own ban check runs at once instead of
    at its actions thread's next look (0.2-0.8 s later): the ban reaches the kernel before
    the attacker's next request (modsec_blocker/fastban.py; fail2ban stays the authority).
    ban() and unban() queue the change; a worker thread applies the queue to the kernel: a
    lone ban at once, a flood in a few transactions.  Each kernel entry expires when fail2ban will unban it (the
    ticket's time plus its possibly escalated bantime: prolong() moves it), so bans end even
    if fail2ban dies.  start() and stop() are idempotent; start() keeps the entries a crashed
    process left and removes those fail2ban's database does not hold.

OPTIONS
    backend        auto | nftables | ipset | iptables-legacy (auto: from `iptables -V`)
    blocktype      DROP | REJECT
    port           ports, service names, ranges 8000:8100 (at most 15), or "all"
    protocol       tcp | udp (ignored with port=all)
    rawdrop        true: drop in the raw table's PREROUTING, before conntrack (DROP only)
    chain          INPUT | FORWARD (any iptables chain for ipset / iptables-legacy)
    name           base name of the kernel objects (default "mt-<jail>")
    maxtimeout     longest kernel timeout (default 2147483, ipset's limit); longer bans
                   are re-written every maxtimeout/2
    maxelem        ipset maxelem (default 1048576)
    batchdelay, batchinterval, batchmax
                   batching of kernel transactions
    fastban        true (default) | false: wake the jail's ban check when a ticket is queued

    Addresses a kernel set cannot or must not hold (subnets, scoped IPv6, loopback,
    multicast, broadcast, unspecified) are refused one by one, each logged once at ERROR.

SEE ALSO
    docs/fail2ban.md (every option, the kernel objects, the refused addresses), jail.conf(5)
"""
import importlib.machinery
import importlib.util
import os
import sys
import threading
import time
from typing import Dict, Optional, Set

from fail2ban.server.actions import ActionBase

PACKAGE = "modsec_blocker"


class _SourceOnly(importlib.machinery.SourceFileLoader):
    """Compiles the package's sources without writing __pycache__ beside them (in
    /etc/fail2ban/action.d: nothing there that the packages and install.sh did not put)."""

    def set_data(self, path, data, *, _mode=0o666):
        pass


def _load_package() -> None:
    """Import modsec_blocker from this file's directory.  fail2ban loads this file by path
    (again for every jail and reload), so no sys.path entry leads to the package; it is loaded
    once per process, which keeps its process-wide state (the libiptc lock) shared."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), PACKAGE)
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None and list(getattr(loaded, "__path__", ())) == [here]:
        return
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]                  # another tree's copy: never mix the two
    for directory, _, _ in os.walk(here):      # the finders of the package's own directories
        sys.path_importer_cache[directory] = importlib.machinery.FileFinder(
            directory, (_SourceOnly, importlib.machinery.SOURCE_SUFFIXES))
    init = os.path.join(here, "__init__.py")
    spec = importlib.util.spec_from_file_location(PACKAGE, init, loader=_SourceOnly(PACKAGE, init),
                                                  submodule_search_locations=[here])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)


_load_package()
from modsec_blocker.addresses import Key, Refusals, Unbannable, kernel_key  # noqa: E402
from modsec_blocker.backends import backend_class, detect_backend  # noqa: E402
from modsec_blocker.batcher import REMOVE, Batcher  # noqa: E402
from modsec_blocker.fastban import attach  # noqa: E402
from modsec_blocker.options import Settings  # noqa: E402


def _ban_end(aInfo) -> Optional[float]:
    """When fail2ban will unban this ticket (its time + bantime); None for a permanent ban."""
    bantime = int(aInfo["bantime"])
    if bantime < 0:
        return None
    return float(aInfo["time"]) + bantime


class ModsecBlock(ActionBase):
    """See the module docstring."""

    # fail2ban compares action.banEpoch with tickets' epochs to decide on rebans.
    banEpoch = 0
    # ban() never blocks (it queues or applies one kernel change): the fast ban path may run
    # the jail's ban check in the filter's own thread
    fastban_inline = True

    def __init__(self, jail, name, **opts):
        super().__init__(jail, name)
        self._settings = Settings.parse(jail.name, dict(opts))
        self._bans: Dict[Key, Optional[float]] = {}            # what we asked the kernel to hold
        self._lock = threading.Lock()
        self._refuse = Refusals(lambda address, reason: self._logSys.error(
            "modsec-block: %s not blocked: %s (fail2ban lists it as banned)", address, reason))
        self._backend, self._batcher = self._make(self._settings)
        self._waker = None                                      # the fast ban path, once attached

    def _make(self, settings: Settings):
        kind = settings.backend if settings.backend != "auto" else detect_backend()
        backend = backend_class(kind)(settings)
        return backend, Batcher(backend, settings.batchdelay, settings.batchinterval, settings.batchmax,
                                self._logSys, self._kernel_refused)

    @property
    def backend(self) -> str:
        return self._backend.kind

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._backend.setup()
        self._drop_unlisted(self._backend.elements())
        self._batcher.start()
        s = self._settings
        self._logSys.info("modsec-block: %s backend (%s), objects %r, %s on %s", self._backend.kind,
                          self._backend.how, s.name, s.blocktype,
                          "all ports" if s.ports is None else f"{s.protocol} {s.port_list(':')}")
        self._fast_path(s.fastban)

    def _fast_path(self, wanted: bool) -> None:
        """Attach (or detach) the jail's fast ban path, once per action."""
        if wanted and self._waker is None:
            self._waker = attach(self._jail, self._logSys)
        elif not wanted and self._waker is not None:
            self._waker.detach()
            self._waker = None

    def _drop_unlisted(self, inherited: Set[Key]) -> None:
        """Remove the kernel entries left by an earlier fail2ban process that fail2ban will not
        restore: they would block addresses fail2ban neither lists nor can unban.  fail2ban
        writes a ban to its database a moment after banning, so a kill -9 loses the last
        ones (and without a database it restores none); its restore re-adds all the others."""
        if not inherited:
            return
        try:
            listed = self._restorable()
        except Exception as e:                      # an unreadable database: keep the bans
            self._logSys.error("modsec-block: fail2ban's database unreadable (%s); the %d kernel "
                               "entries found at start are kept", e, len(inherited))
            return
        with self._lock:
            stale = inherited - listed - set(self._bans)     # _bans: banned since
        for key in stale:
            self._batcher.put(key, REMOVE)
        if stale:
            self._logSys.warning("modsec-block: %d kernel entries found at start are not in fail2ban's "
                                 "database (lost by a crash): removed", len(stale))

    def _restorable(self) -> Set[Key]:
        """The kernel entries of the current bans in fail2ban's database (what it restores)."""
        database = getattr(self._jail, "database", None)
        keys: Set[Key] = set()
        for ticket in database.getCurrentBans(jail=self._jail) if database is not None else ():
            try:
                keys.add(kernel_key(str(ticket.getID())))
            except Unbannable:
                pass
        return keys

    def stop(self) -> None:
        self._fast_path(False)
        self._batcher.close()
        self._batcher.discard_all()
        with self._lock:
            self._bans.clear()
        self._backend.teardown()

    def flush(self) -> bool:
        """Remove every ban at once (fail2ban calls this on stop and `unban --all`)."""
        self._batcher.drain()
        self._batcher.discard_all()
        with self._lock:
            self._bans.clear()
        self._backend.clear()
        return True

    def clearAllParams(self) -> None:
        """Part of fail2ban's reload protocol (together with reload())."""

    def reload(self, **opts) -> None:
        """Keep the bans; re-create the kernel objects only if the options changed."""
        settings = Settings.parse(self._jail.name, dict(opts))
        self._fast_path(settings.fastban)
        if settings._replace(fastban=self._settings.fastban) == self._settings:
            self._settings = settings
            return
        self._logSys.info("modsec-block: options changed, re-creating kernel objects")
        self._batcher.close()
        self._backend.teardown()
        self._settings = settings
        self._backend, self._batcher = self._make(settings)
        self._backend.setup()
        self._batcher.start()
        with self._lock:
            bans = list(self._bans.items())
        for key, end in bans:
            self._batcher.put(key, end)

    # -- bans -----------------------------------------------------------------------------
    def _kernel_refused(self, key: Key, reason: str) -> None:
        with self._lock:
            self._bans.pop(key, None)
        self._refuse(key[1], reason)

    def ban(self, aInfo) -> None:
        try:
            key = kernel_key(str(aInfo["ip"]))
        except Unbannable as e:
            self._refuse(str(aInfo["ip"]), str(e))
            return
        end = _ban_end(aInfo)
        with self._lock:
            self._bans[key] = end
        self._batcher.put(key, end)
        if self._logSys.isEnabledFor(10):
            tags = aInfo.get("F-*") or {}
            self._logSys.debug("modsec-block: ban %s until %s (rules=%s id=%s)", key[1],
                               "forever" if end is None else time.strftime("%F %T", time.localtime(end)),
                               tags.get("rules", "-"), tags.get("uniqueid", "-"))

    def reban(self, aInfo) -> None:
        self.ban(aInfo)

    @property
    def _prolongable(self) -> bool:
        return True

    def prolong(self, aInfo) -> None:
        """bantime.increment: the ticket's bantime grew; move the kernel expiry."""
        self.ban(aInfo)

    def unban(self, aInfo) -> None:
        try:
            key = kernel_key(str(aInfo["ip"]))
        except Unbannable:                          # never queued (reported by ban())
            return
        with self._lock:
            self._bans.pop(key, None)
        self._batcher.put(key, REMOVE)

    # -- for tests and benchmarks -----------------------------------------------------------
    def drain(self, timeout: float = 30) -> bool:
        return self._batcher.drain(timeout)


Action = ModsecBlock
