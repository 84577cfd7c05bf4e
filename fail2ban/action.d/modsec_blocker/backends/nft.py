"""nftables: a table of its own with one set per family (per-element timeouts) and one rule.

Scripts go through libnftables inside fail2ban's process, by the library's own binding
(python3-nftables: `import nftables`); without it, through `nft -f -`.
"""
import ipaddress
import re
import threading
from typing import Dict, List, Optional, Set

from ..addresses import Key
from .base import Backend, BackendError, run


class _Library:
    """libnftables in-process (its calls release the GIL): a batch costs no fork."""

    how = "libnftables via python3-nftables"

    def __init__(self, binding) -> None:
        self.nft = binding.Nftables()
        self.lock = threading.Lock()          # one context: one script at a time

    def run(self, script: str) -> str:
        with self.lock:
            rc, output, error = self.nft.cmd(script)
        if rc != 0:
            raise BackendError(f"nft: {error.strip() or 'failed'}")
        return output


class _Command:
    how = "nft -f -"

    def run(self, script: str) -> str:
        return run(["nft", "-f", "-"], stdin=script).stdout


def nft_runner():
    """The library when its binding loads, else the nft program."""
    try:
        import nftables
        return _Library(nftables)
    except (ImportError, OSError, AttributeError):
        return _Command()


class NftBackend(Backend):
    kind = "nftables"
    SETS = {4: "v4", 6: "v6"}

    def __init__(self, settings, runner=None) -> None:
        super().__init__(settings)
        self._chains()                     # validate the hook now, not at start
        self.nft = runner or nft_runner()
        # Elements we know the kernel holds: only those need the delete + re-add dance to
        # get a new timeout; a new address is one plain "add".  Filled from the kernel by
        # setup() (bans that survived a crash), kept by apply().
        self.present: Set[Key] = set()

    @property
    def how(self) -> str:
        return self.nft.how

    @property
    def cheap(self) -> bool:
        return isinstance(self.nft, _Library)

    def _match(self, family: int) -> str:
        addr = f"{'ip' if family == 4 else 'ip6'} saddr @{self.SETS[family]}"
        if self.s.ports is None:
            return addr
        return f"{addr} {self.s.protocol} dport {{ {self.s.port_list('-', ', ')} }}"

    def _chains(self) -> Dict[str, str]:
        hook = {"INPUT": "input", "FORWARD": "forward"}.get(self.s.chain)
        if hook is None:
            raise ValueError("nftables backend: chain must be INPUT or FORWARD")
        return {"filter": f"type filter hook {hook} priority filter - 10; policy accept;",
                "raw": "type filter hook prerouting priority raw; policy accept;"}

    def setup(self) -> None:
        t = f"inet {self.s.name}"
        verdict = "drop" if self.s.blocktype == "DROP" else "reject"
        used = "raw" if self.s.rawdrop else "filter"
        lines = [f"add table {t}",
                 f"add set {t} v4 {{ type ipv4_addr; flags timeout; }}",
                 f"add set {t} v6 {{ type ipv6_addr; flags timeout; }}"]
        for chain, spec in self._chains().items():
            lines += [f"add chain {t} {chain} {{ {spec} }}", f"flush chain {t} {chain}"]
            if chain != used:                       # left over from other options: remove
                lines.append(f"delete chain {t} {chain}")
        lines += [f"add rule {t} {used} {self._match(f)} counter {verdict}" for f in (4, 6)]
        self.nft.run("\n".join(lines) + "\n")
        self.present = self._listed()

    def _listed(self) -> Set[Key]:
        found: Set[Key] = set()
        for family, set_name in self.SETS.items():
            out = self.nft.run(f"list set inet {self.s.name} {set_name}")
            body = out.split("elements = {", 1)[1] if "elements = {" in out else ""
            pattern = r"(\d+\.\d+\.\d+\.\d+)" if family == 4 else r"([0-9a-f]*:[0-9a-f:.]+)"
            found.update((family, str(ipaddress.ip_address(a))) for a in re.findall(pattern, body))
        return found

    def teardown(self) -> None:
        self.nft.run(f"add table inet {self.s.name}\ndelete table inet {self.s.name}\n")
        self.present = set()

    def apply(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> None:
        # "add" is a no-op for an element that exists (it keeps its old timeout), and
        # "delete" of a missing element fails the whole transaction (elements also vanish
        # on their own when they time out).  So an element that may exist is first added
        # (making the delete safe), deleted, then added again with its new timeout.
        lines = []
        for family, set_name in self.SETS.items():
            redo = [a for f, a in removes if f == family]
            redo += [a for (f, a) in adds if f == family and (f, a) in self.present]
            items = [a if t is None else f"{a} timeout {t}s" for (f, a), t in adds.items() if f == family]
            target = f"inet {self.s.name} {set_name}"
            if redo:
                lines.append(f"add element {target} {{ {', '.join(redo)} }}")
                lines.append(f"delete element {target} {{ {', '.join(redo)} }}")
            if items:
                lines.append(f"add element {target} {{ {', '.join(items)} }}")
        if lines:
            self.nft.run("\n".join(lines) + "\n")
        self.present.difference_update(removes)
        self.present.update(adds)

    def clear(self) -> None:
        t = f"inet {self.s.name}"
        self.nft.run(f"flush set {t} v4\nflush set {t} v6\n")
        self.present = set()

    def elements(self) -> Set[Key]:
        return set(self.present)
