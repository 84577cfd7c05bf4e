"""ipset: two hash:ip sets (per-element timeouts) matched by one iptables and one ip6tables rule.

A batch is one `ipset restore`; the rules are placed with the iptables tools the host uses.
"""
import ipaddress
import shlex
from typing import Dict, List, Optional, Set, Tuple

from ..addresses import Key
from .base import Backend, BackendError, run


class IptablesRules:
    """The match rules, tagged with a comment so that we find them again."""

    def __init__(self, settings) -> None:
        self.s = settings
        self.comment = f"modsec-tools {settings.name}"

    def _where(self) -> Tuple[str, str]:
        return ("raw", "PREROUTING") if self.s.rawdrop else ("filter", self.s.chain)

    def wanted(self, family: int, set_name: str) -> List[str]:
        spec: List[str] = []
        if self.s.ports is not None:
            spec = ["-p", self.s.protocol, "-m", "multiport", "--dports", self.s.port_list(":")]
        spec += ["-m", "set", "--match-set", set_name, "src", "-m", "comment", "--comment", self.comment,
                 "-j", self.s.blocktype]
        if self.s.blocktype == "REJECT":       # spelled out as `iptables -S` prints it back
            spec += ["--reject-with", "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"]
        return spec

    @staticmethod
    def tool(family: int) -> str:
        return "iptables" if family == 4 else "ip6tables"

    def _ours(self, family: int, table: str, chain: str) -> List[List[str]]:
        proc = run([self.tool(family), "-w", "-t", table, "-S", chain], check=False)
        rules = []
        for line in proc.stdout.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and self.comment in words:
                rules.append(words[2:])
        return rules

    def ensure(self, family: int, set_name: str) -> None:
        table, chain = self._where()
        wanted = self.wanted(family, set_name)
        if self._ours(family, table, chain) == [wanted]:
            return
        self.remove(family)
        run([self.tool(family), "-w", "-t", table, "-I", chain, "1", *wanted])

    def remove(self, family: int) -> None:
        """Delete every rule carrying our comment, in both places (options may have changed)."""
        for table, chain in (("filter", self.s.chain), ("raw", "PREROUTING"), ("filter", "INPUT")):
            for spec in self._ours(family, table, chain):
                run([self.tool(family), "-w", "-t", table, "-D", chain, *spec], check=False)


class IpsetBackend(Backend):
    kind = "ipset"
    how = "ipset restore"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.sets = {4: f"{settings.name}-4", 6: f"{settings.name}-6"}
        self.rules = IptablesRules(settings)

    def setup(self) -> None:
        for family, set_name in self.sets.items():
            run(["ipset", "create", set_name, "hash:ip", "family", "inet" if family == 4 else "inet6",
                 "timeout", "0", "maxelem", str(self.s.maxelem), "-exist"])
            self.rules.ensure(family, set_name)

    def teardown(self) -> None:
        for family, set_name in self.sets.items():
            self.rules.remove(family)
            proc = run(["ipset", "destroy", set_name], check=False)
            if proc.returncode != 0 and "does not exist" not in proc.stderr:
                raise BackendError(f"ipset destroy {set_name}: {proc.stderr.strip()}")

    def apply(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> None:
        lines = [f"add {self.sets[f]} {a} timeout {0 if t is None else t}\n" for (f, a), t in adds.items()]
        lines += [f"del {self.sets[f]} {a}\n" for f, a in removes]
        if lines:
            run(["ipset", "restore", "-exist"], stdin="".join(lines))

    def clear(self) -> None:
        for set_name in self.sets.values():
            run(["ipset", "flush", set_name], check=False)

    def elements(self) -> Set[Key]:
        found: Set[Key] = set()
        for family, set_name in self.sets.items():
            for line in run(["ipset", "list", set_name, "-o", "save"]).stdout.splitlines():
                words = line.split()
                if words[:2] == ["add", set_name] and len(words) > 2:
                    found.add((family, str(ipaddress.ip_address(words[2]))))
        return found
