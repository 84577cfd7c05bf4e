"""iptables-legacy through python-iptables (libiptc): a chain of one rule per address, one
commit per batch, on hosts whose iptables is the legacy flavour.

Each rule carries its ban's end as a time match, so it is inert after the ban even if
fail2ban is dead.  Per-packet cost grows with the number of bans here only (a packet on a
blocked port walks the chain); the set backends cost one hash lookup.
"""
import fcntl
import os
import threading
import time
from typing import Dict, List, Optional, Set, Tuple

from ..addresses import Key
from .base import Backend, BackendError

_LIBIPTC_LOCK = threading.Lock()     # python-iptables is not thread-safe (process-wide)


class XtablesLock:
    """The lock iptables-legacy -w takes, so our libiptc commit never races the iptables tools."""

    PATH = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")

    def __enter__(self) -> "XtablesLock":
        _LIBIPTC_LOCK.acquire()
        try:
            self.fd = os.open(self.PATH, os.O_CREAT | os.O_RDWR, 0o600)
            deadline = time.monotonic() + 30
            while True:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return self
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BackendError(f"{self.PATH} held for 30 s")
                    time.sleep(0.01)
        except BaseException:
            _LIBIPTC_LOCK.release()
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)                  # closing releases the flock
        _LIBIPTC_LOCK.release()


class LegacyBackend(Backend):
    kind = "iptables-legacy"
    how = "libiptc via python-iptables"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        import iptc                       # python3-iptables; imported only when used
        self.iptc = iptc
        self.table_name = "raw" if settings.rawdrop else "filter"
        self.hook = "PREROUTING" if settings.rawdrop else settings.chain
        self.index: Dict[Key, Optional[str]] = {}          # address -> datestop of its rule
        self._ready = False                              # setup() done by this instance
        self._templates: Dict[Tuple[int, Optional[str]], object] = {}

    @property
    def max_timeout(self) -> Optional[int]:
        return None                       # the time match takes any end date

    def _table(self, family: int):
        iptc = self.iptc
        table = (iptc.Table(self.table_name) if family == 4 else iptc.Table6(self.table_name))
        table.autocommit = False
        return table

    def _new_rule(self, family: int):
        return self.iptc.Rule() if family == 4 else self.iptc.Rule6()

    def _jump(self, family: int):
        rule = self._new_rule(family)
        if self.s.ports is not None:
            rule.protocol = self.s.protocol
            rule.create_match("multiport").dports = self.s.port_list(":")
        rule.create_match("comment").comment = f"modsec-tools {self.s.name}"
        rule.target = self.iptc.Target(rule, self.s.name)
        return rule

    def _template(self, family: int, datestop: Optional[str]):
        """(rule, mask) per (family, end second): only .src changes per address (python-iptables'
        own append_rule re-parses every match for every rule)."""
        key = (family, datestop)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) > 512:
                self._templates.clear()
            rule = self._new_rule(family)
            if datestop is not None:
                rule.create_match("time").datestop = datestop
            rule.target = self.iptc.Target(rule, self.s.blocktype)
            rule.src = "127.0.0.1" if family == 4 else "::1"
            rule.final_check()
            rule.rule                       # sets the offsets the mask is computed from
            template = self._templates[key] = (rule, rule.mask)   # the mask does not depend on src
        return template

    def _drop_jumps(self, table, keep=None) -> bool:
        """Delete jumps to our chain from any hook chain we may have used; True if `keep` was seen."""
        kept = False
        for hook in {self.hook, "INPUT", "PREROUTING", "FORWARD", self.s.chain}:
            if not table.is_chain(hook):
                continue
            for rule in self.iptc.Chain(table, hook).rules:
                if rule.target.name != self.s.name:
                    continue
                if keep is not None and hook == self.hook and not kept and rule == keep:
                    kept = True
                    continue
                table.delete_entry(hook, rule.rule, rule.mask)
        return kept

    def setup(self) -> None:
        with XtablesLock():
            for family in (4, 6):
                table = self._table(family)
                table.refresh()
                if not table.is_chain(self.s.name):
                    table.create_chain(self.s.name)
                elif not self._ready:
                    # rules left by an earlier fail2ban process: fail2ban restores the
                    # current bans right after start, so start from an empty chain
                    table.flush_entries(self.s.name)
                jump = self._jump(family)
                if not self._drop_jumps(table, keep=jump):
                    self.iptc.Chain(table, self.hook).insert_rule(jump)
                table.commit()
            if not self._ready:
                self.index.clear()
            self._ready = True

    def teardown(self) -> None:
        with XtablesLock():
            for family in (4, 6):
                table = self._table(family)
                table.refresh()
                self._drop_jumps(table)
                if table.is_chain(self.s.name):
                    table.flush_entries(self.s.name)
                    table.delete_chain(self.s.name)
                table.commit()
            self.index.clear()
            self._ready = False

    def _rule_bytes(self, family: int, address: str, datestop: Optional[str]):
        rule, mask = self._template(family, datestop)
        rule.src = address
        return rule.rule, mask

    def apply(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> None:
        now = time.time()
        with XtablesLock():
            for family in (4, 6):
                mine = [k for k in list(adds) + removes if k[0] == family]
                if not mine:
                    continue
                table = self._table(family)
                table.refresh()                     # never commit a stale snapshot
                added: Dict[Key, Optional[str]] = {}
                for key in mine:
                    if key in self.index:
                        rule, mask = self._rule_bytes(family, key[1], self.index[key])
                        try:
                            table.delete_entry(self.s.name, rule, mask)
                        except self.iptc.IPTCError:
                            pass                    # already gone (flushed by someone)
                    if key in adds:
                        timeout = adds[key]
                        datestop = None if timeout is None else time.strftime(
                            "%Y-%m-%dT%H:%M:%S", time.gmtime(now + timeout))
                        rule, _ = self._rule_bytes(family, key[1], datestop)
                        table.append_entry(self.s.name, rule)
                        added[key] = datestop
                table.commit()
                # the index follows the kernel: a refused commit changed nothing
                for key in mine:
                    self.index.pop(key, None)
                self.index.update(added)

    def clear(self) -> None:
        with XtablesLock():
            for family in (4, 6):
                table = self._table(family)
                table.refresh()
                if table.is_chain(self.s.name):
                    table.flush_entries(self.s.name)
                    table.commit()
            self.index.clear()

    def elements(self) -> Set[Key]:
        return set(self.index)                # setup() empties the chain a crash left
