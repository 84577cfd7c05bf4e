"""modsec-block - fail2ban Python action: bans in kernel sets/chains with per-ban timeouts.

NAME
    modsec-block.py - block banned addresses in the kernel, inside fail2ban, in batches

SYNOPSIS
    [modsec]
    action = modsec-block.py[backend=auto, blocktype=DROP, port="http,https", protocol=tcp]

DESCRIPTION
    A Python action (loaded by fail2ban into its own process: no fork per ban; written
    for Python >= 3.6, the interpreter of RHEL 8's fail2ban, hence typing.List & co).  ban()
    and unban() only queue the change; a worker thread coalesces the queue and applies it
    to the kernel in one transaction per batch (one libnftables call in-process, one
    `ipset restore`, or one libiptc commit), so a flood of bans reaches the kernel at
    thousands per second and a single ban within a few milliseconds.

    Every kernel entry carries its own expiry: the ticket's (possibly escalated) bantime,
    counted from the ticket's time, i.e. exactly when fail2ban itself will unban.  Bans
    therefore expire even if fail2ban dies.  With bantime.increment, fail2ban first bans
    with the base bantime and later calls prolong() with the increased one; prolong()
    rewrites the entry's timeout (this action overrides _prolongable).  unban() removes
    the entry at once.

    start() and stop() are idempotent.  start() creates the set/chain and the one rule
    that matches it (keeping existing set entries, so bans survive a crash and a restart;
    fail2ban's restore then re-adds current bans, and an address is never duplicated).
    stop() removes everything this action created.  `fail2ban-client reload` keeps the
    bans (reload() re-creates the kernel objects only if the options changed).

    fail2ban writes a ban to its database a moment after making it, so after a kill -9 it
    may not restore every entry the kernel still holds: start() removes those its database
    does not hold, and the kernel holds exactly fail2ban's ban list again.

OPTIONS
    backend     auto (default) | nftables | ipset | iptables-legacy
                auto reads `iptables -V`:
                  "(legacy)" (or no flavour, iptables < 1.8)  -> iptables-legacy
                  "(nf_tables)"                                -> nftables, or ipset if
                                                                  nft is missing
                python-iptables drives libiptc, which only sees the *legacy* tables; on an
                nf_tables host its rules would be invisible to `iptables -S` and to the
                host's firewall tooling, hence never chosen there.
    blocktype   DROP (default) | REJECT
    port        comma-separated ports, service names or ranges (8000:8100), or "all"
                (default "http,https").  With "all" every protocol is blocked.
    protocol    tcp (default) | udp   (ignored with port=all)
    rawdrop     false (default) | true: drop in the raw table's PREROUTING (before
                conntrack: cheapest for floods).  DROP only.
    chain       INPUT (default) | FORWARD (or any iptables chain for ipset/legacy):
                where the match rule / jump is inserted (first position).
    name        base name of the kernel objects (default "mt-<jail>").
    maxtimeout  longest timeout given to the kernel, seconds (default 2147483, the ipset
                limit; also used for nftables for portability).  A longer ban is written
                with this timeout and refreshed by the action every maxtimeout/2.
    maxelem     ipset maxelem (default 1048576).
    batchdelay  seconds the worker waits to gather more changes after a quiet spell
                (default 0.002).
    batchinterval  least seconds between two kernel transactions during a flood
                (default 0.2): bigger batches, far fewer tool runs.
    batchmax    largest batch (default 20000 changes).

KERNEL OBJECTS (name = mt-modsec for the jail "modsec")
    nftables         table inet mt-modsec: sets v4/v6 (flags timeout), chain "filter"
                     (hook input, priority filter - 10) or "raw" (hook prerouting,
                     priority raw) with one rule per family:
                       ip saddr @v4 tcp dport { 80, 443 } counter drop
    ipset            sets mt-modsec-4 (hash:ip family inet) and mt-modsec-6 (family inet6),
                     entries with timeout; one iptables and one ip6tables rule, tagged
                     with the comment "modsec-tools mt-modsec":
                       -I INPUT -p tcp -m multiport --dports 80,443 -m set --match-set mt-modsec-4 src -j DROP
    iptables-legacy  chain mt-modsec in filter (raw with rawdrop) for IPv4 and IPv6, one
                     jump from INPUT (PREROUTING), one rule per address:
                       -A mt-modsec -s 192.0.2.7/32 -m time --datestop 2026-11-28T17:00:00 -j DROP
                     The time match makes the rule inert after the ban's end even if
                     fail2ban is dead; start() flushes the chain (fail2ban restores the
                     current bans).  Per-packet cost grows with the number of bans in this
                     mode only (a packet from a non-banned address on a blocked port walks
                     the chain); the set backends cost one hash lookup per packet.

REFUSED ADDRESSES
    A ticket the kernel cannot or must not hold is refused on its own, logged once per
    address at ERROR ("modsec-block: <address> not blocked: <reason> (fail2ban lists it as
    banned)"); every other ban is applied:
      not an address   a subnet, a host name, text inet_pton refuses (leading zeros)
      scoped IPv6      fe80::2%eth0: a kernel set holds no zone, and without it the ban
                       would hit that address on every link
      unspecified      0.0.0.0, ::              broadcast   255.255.255.255
      multicast        224.0.0.0/4, ff00::/8 (never a connection's source)
      loopback         127.0.0.0/8, ::1 (blocking it cuts the host off from itself)
    An IPv4-mapped address (::ffff:192.0.2.1) is the IPv4 client: banned in the IPv4 set.
    A batch the kernel refuses anyway is split in halves down to the one change it refuses;
    only that change is dropped (and reported).

CAVEATS
    ban() returns before the kernel is updated (a few ms later); a failed kernel update
    is logged as an error by fail2ban's logger (fail2ban.ModsecBlock).

SEE ALSO
    docs/fail2ban.md, jail.conf(5), nft(8), ipset(8), iptables(8)
"""
import ctypes
import ctypes.util
import fcntl
import hashlib
import ipaddress
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from typing import Callable, Dict, List, NamedTuple, Optional, Set, Tuple, Type, Union

from fail2ban.server.actions import ActionBase

IPSET_MAX_TIMEOUT = 2147483          # ipset's own limit (seconds)
OPTIONS = ("backend", "blocktype", "port", "protocol", "rawdrop", "chain", "name", "maxtimeout",
           "maxelem", "batchdelay", "batchinterval", "batchmax")
Key = Tuple[int, str]                # (4|6, canonical address)
# subprocess.run(capture_output=True, text=True), spelt as Python 3.6 (RHEL 8's fail2ban) takes it
_CAPTURE = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "universal_newlines": True}
# A queued change: the ban's end (epoch seconds; None = permanent) or _REMOVE.
_REMOVE = "remove"

# fail2ban loads this file with SourceFileLoader(...).load_module(), re-executing it into
# the same module object for every jail: keep process-wide state across re-executions.
_LIBIPTC_LOCK = globals().get("_LIBIPTC_LOCK") or threading.Lock()   # python-iptables is not thread-safe


class BackendError(RuntimeError):
    """The kernel (or its tool) refused a change."""


# ---------------------------------------------------------------------------------------
# settings

def _as_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_ports(text: str, protocol: str) -> Optional[Tuple[Tuple[int, int], ...]]:
    """'http,https,8000:8100' -> ((80, 80), (443, 443), (8000, 8100)); 'all' -> None."""
    text = str(text).strip()
    if text.lower() in ("all", "any", ""):
        return None
    ranges = []
    for item in text.replace(" ", "").split(","):
        # ranges are a:b (iptables) or a-b with digits only: service names may hold "-"
        low, _, high = item.partition(":") if ":" in item else (
            item.partition("-") if re.fullmatch(r"\d+-\d+", item) else (item, "", ""))
        bounds = tuple(int(p) if p.isdigit() else socket.getservbyname(p, protocol) for p in (low, high or low))
        if not all(0 < p < 65536 for p in bounds) or bounds[0] > bounds[1]:
            raise ValueError(f"bad port {item!r}")
        ranges.append(bounds)
    if len(ranges) > 15:              # iptables multiport's limit; keep the backends alike
        raise ValueError("at most 15 ports or ranges (use port=all)")
    return tuple(ranges)


def _object_name(base: str) -> str:
    """A name valid for nft, ipset (31 chars with -4/-6) and iptables chains (28)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", base)
    if not name[:1].isalpha():
        name = "mt" + name
    if len(name) > 24:
        name = name[:19] + "-" + hashlib.sha1(base.encode()).hexdigest()[:4]
    return name


class Settings(NamedTuple):
    backend: str
    blocktype: str
    ports: Optional[Tuple[Tuple[int, int], ...]]
    protocol: str
    rawdrop: bool
    chain: str
    name: str
    maxtimeout: int
    maxelem: int
    batchdelay: float
    batchinterval: float
    batchmax: int

    @classmethod
    def parse(cls, jail_name: str, opts: Dict[str, str]) -> "Settings":
        unknown = set(opts) - set(OPTIONS)        # a typo must not silently change behaviour
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
        protocol = str(opts.get("protocol", "tcp")).strip().lower()
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, not {protocol!r}")
        blocktype = str(opts.get("blocktype", "DROP")).strip().upper()
        if blocktype not in ("DROP", "REJECT"):
            raise ValueError(f"blocktype must be DROP or REJECT, not {blocktype!r}")
        rawdrop = _as_bool(opts.get("rawdrop", "false"))
        if rawdrop and blocktype != "DROP":
            raise ValueError("rawdrop works with blocktype=DROP only (REJECT is not valid in the raw table)")
        backend = str(opts.get("backend", "auto")).strip().lower()
        if backend not in ("auto", "nftables", "ipset", "iptables-legacy"):
            raise ValueError(f"unknown backend {backend!r}")
        chain = str(opts.get("chain", "INPUT")).strip()
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,28}", chain):
            raise ValueError(f"bad chain {chain!r}")
        return cls(
            backend=backend, blocktype=blocktype, ports=_parse_ports(opts.get("port", "http,https"), protocol),
            protocol=protocol, rawdrop=rawdrop, chain=chain,
            name=_object_name(str(opts.get("name") or f"mt-{jail_name}")),
            maxtimeout=max(1, min(int(opts.get("maxtimeout", IPSET_MAX_TIMEOUT)), IPSET_MAX_TIMEOUT)),
            maxelem=int(opts.get("maxelem", 1048576)), batchdelay=float(opts.get("batchdelay", 0.002)),
            batchinterval=float(opts.get("batchinterval", 0.2)), batchmax=max(1, int(opts.get("batchmax", 20000))))


def detect_backend() -> str:
    """The backend the host really uses, from `iptables -V` (see OPTIONS)."""
    iptables = shutil.which("iptables")
    version = ""
    if iptables:
        version = subprocess.run([iptables, "-V"], timeout=30, **_CAPTURE).stdout
    if iptables and "nf_tables" not in version:
        try:
            import iptc  # noqa: F401  (python-iptables, the in-process path)
            return "iptables-legacy"
        except Exception:                  # pragma: no cover - depends on the host
            return "ipset"
    return "nftables" if shutil.which("nft") else "ipset"


def _run(argv: List[str], stdin: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=stdin, timeout=120, **_CAPTURE)
    if check and proc.returncode != 0:
        raise BackendError(f"{' '.join(argv[:4])}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class _LibNftables:
    """nft scripts run by libnftables inside fail2ban's process (ctypes; the GIL is released
    during the call), so a batch costs no fork: forking the fail2ban process blocks its
    other threads, fail2ban's own ban handling included.  Falls back to `nft -f -`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ctx = None
        path = ctypes.util.find_library("nftables")
        if not path:
            return
        try:
            lib = ctypes.CDLL(path)
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
                getattr(lib, name).restype = ctypes.c_char_p
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            ctx = lib.nft_ctx_new(0)
            if not ctx or lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
                return
            self.lib, self.ctx = lib, ctx
        except (OSError, AttributeError):
            self.ctx = None

    def run(self, script: str) -> str:
        if self.ctx is None:
            return _run(["nft", "-f", "-"], stdin=script).stdout
        with self.lock:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode())
            output = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode(errors="replace")
            error = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise BackendError(f"nft: {error.strip() or 'failed'}")
        return output


# ---------------------------------------------------------------------------------------
# backends: apply a coalesced batch in one kernel transaction

class Backend(ABC):
    kind = ""

    def __init__(self, settings: Settings):
        self.s = settings

    @property
    def max_timeout(self) -> Optional[int]:
        return self.s.maxtimeout

    @abstractmethod
    def setup(self) -> None:
        """Create the kernel objects (idempotent; keeps existing entries where possible)."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove everything setup() created (idempotent)."""

    @abstractmethod
    def apply(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> None:
        """One transaction: add/refresh entries (timeout seconds, None = permanent), remove others."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every entry, keep the objects."""

    @abstractmethod
    def elements(self) -> Set[Key]:
        """The entries the kernel holds (right after setup(): those a crashed process left)."""


class NftBackend(Backend):
    kind = "nftables"
    SETS = {4: "v4", 6: "v6"}

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self._chains()                     # validate the hook now, not at start
        self.nft = _LibNftables()
        # Elements we know the kernel holds: only those need the delete + re-add dance to
        # get a new timeout; a new address is one plain "add".  Filled from the kernel by
        # setup() (bans that survived a crash), kept by apply().
        self.present: Set[Key] = set()


    def _match(self, family: int) -> str:
        addr = f"{'ip' if family == 4 else 'ip6'} saddr @{self.SETS[family]}"
        if self.s.ports is None:
            return addr
        ports = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self.s.ports)
        return f"{addr} {self.s.protocol} dport {{ {ports} }}"

    def _chains(self) -> Dict[str, str]:
        hook = {"INPUT": "input", "FORWARD": "forward"}.get(self.s.chain)
        if hook is None:
            raise ValueError("nftables backend: chain must be INPUT or FORWARD")
        return {"filter": f"type filter hook {hook} priority filter - 10; policy accept;",
                "raw": "type filter hook prerouting priority raw; policy accept;"}

    def _nft(self, script: str) -> str:
        return self.nft.run(script)

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
        self._nft("\n".join(lines) + "\n")
        self.present = self._elements()

    def _elements(self) -> Set[Key]:
        found: Set[Key] = set()
        for family, set_name in self.SETS.items():
            out = self._nft(f"list set inet {self.s.name} {set_name}")
            body = out.split("elements = {", 1)[1] if "elements = {" in out else ""
            pattern = r"(\d+\.\d+\.\d+\.\d+)" if family == 4 else r"([0-9a-f]*:[0-9a-f:.]+)"
            found.update((family, str(ipaddress.ip_address(a))) for a in re.findall(pattern, body))
        return found

    def teardown(self) -> None:
        self._nft(f"add table inet {self.s.name}\ndelete table inet {self.s.name}\n")
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
            self._nft("\n".join(lines) + "\n")
        self.present.difference_update(removes)
        self.present.update(adds)

    def clear(self) -> None:
        t = f"inet {self.s.name}"
        self._nft(f"flush set {t} v4\nflush set {t} v6\n")
        self.present = set()

    def elements(self) -> Set[Key]:
        return set(self.present)


class IptablesRules:
    """The match rules of the ipset backend, tagged with a comment so we find them again."""

    def __init__(self, settings: Settings):
        self.s = settings
        self.comment = f"modsec-tools {settings.name}"

    def _where(self) -> Tuple[str, str]:
        return ("raw", "PREROUTING") if self.s.rawdrop else ("filter", self.s.chain)

    def wanted(self, family: int, set_name: str) -> List[str]:
        spec: List[str] = []
        if self.s.ports is not None:
            ports = ",".join(str(a) if a == b else f"{a}:{b}" for a, b in self.s.ports)
            spec = ["-p", self.s.protocol, "-m", "multiport", "--dports", ports]
        spec += ["-m", "set", "--match-set", set_name, "src", "-m", "comment", "--comment", self.comment,
                 "-j", self.s.blocktype]
        if self.s.blocktype == "REJECT":       # spelled out as `iptables -S` prints it back
            spec += ["--reject-with", "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"]
        return spec

    @staticmethod
    def tool(family: int) -> str:
        return "iptables" if family == 4 else "ip6tables"

    def _ours(self, family: int, table: str, chain: str) -> List[List[str]]:
        proc = _run([self.tool(family), "-w", "-t", table, "-S", chain], check=False)
        rules = []
        for line in proc.stdout.splitlines():
            words = shlex.split(line)
            if words[:1] == ["-A"] and self.comment in words:
                rules.append(words[2:])
        return rules

    def ensure(self, family: int, set_name: str) -> None:
        table, chain = self._where()
        wanted = self.wanted(family, set_name)
        ours = self._ours(family, table, chain)
        if ours == [wanted]:
            return
        self.remove(family)
        _run([self.tool(family), "-w", "-t", table, "-I", chain, "1", *wanted])

    def remove(self, family: int) -> None:
        """Delete every rule carrying our comment, in both places (options may have changed)."""
        for table, chain in (("filter", self.s.chain), ("raw", "PREROUTING"), ("filter", "INPUT")):
            for spec in self._ours(family, table, chain):
                _run([self.tool(family), "-w", "-t", table, "-D", chain, *spec], check=False)


class IpsetBackend(Backend):
    kind = "ipset"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.sets = {4: f"{settings.name}-4", 6: f"{settings.name}-6"}
        self.rules = IptablesRules(settings)

    def setup(self) -> None:
        for family, set_name in self.sets.items():
            _run(["ipset", "create", set_name, "hash:ip", "family", "inet" if family == 4 else "inet6",
                  "timeout", "0", "maxelem", str(self.s.maxelem), "-exist"])
            self.rules.ensure(family, set_name)

    def teardown(self) -> None:
        for family, set_name in self.sets.items():
            self.rules.remove(family)
            proc = _run(["ipset", "destroy", set_name], check=False)
            if proc.returncode != 0 and "does not exist" not in proc.stderr:
                raise BackendError(f"ipset destroy {set_name}: {proc.stderr.strip()}")

    def apply(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> None:
        lines = [f"add {self.sets[f]} {a} timeout {0 if t is None else t}\n" for (f, a), t in adds.items()]
        lines += [f"del {self.sets[f]} {a}\n" for f, a in removes]
        if lines:
            _run(["ipset", "restore", "-exist"], stdin="".join(lines))

    def clear(self) -> None:
        for set_name in self.sets.values():
            _run(["ipset", "flush", set_name], check=False)

    def elements(self) -> Set[Key]:
        found: Set[Key] = set()
        for family, set_name in self.sets.items():
            for line in _run(["ipset", "list", set_name, "-o", "save"]).stdout.splitlines():
                words = line.split()
                if words[:2] == ["add", set_name] and len(words) > 2:
                    found.add((family, str(ipaddress.ip_address(words[2]))))
        return found


class _XtablesLock:
    """The lock iptables-legacy -w takes, so our libiptc commit never races the iptables tools."""

    PATH = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")

    def __enter__(self) -> "_XtablesLock":
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
    """python-iptables (libiptc) on the legacy tables: one rule per address, one commit per batch."""

    kind = "iptables-legacy"

    def __init__(self, settings: Settings):
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
            match = rule.create_match("multiport")
            match.dports = ",".join(str(a) if a == b else f"{a}:{b}" for a, b in self.s.ports)
        rule.create_match("comment").comment = f"modsec-tools {self.s.name}"
        rule.target = self.iptc.Target(rule, self.s.name)
        return rule

    def _template(self, family: int, datestop: Optional[str]):
        """(rule, mask) per (family, end second): only .src changes per address (fast path;
        python-iptables' own append_rule re-parses every match, ~10x slower)."""
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
        with _XtablesLock():
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
        with _XtablesLock():
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
        with _XtablesLock():
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
        with _XtablesLock():
            for family in (4, 6):
                table = self._table(family)
                table.refresh()
                if table.is_chain(self.s.name):
                    table.flush_entries(self.s.name)
                    table.commit()
            self.index.clear()

    def elements(self) -> Set[Key]:
        return set(self.index)                # setup() empties the chain a crash left


BACKENDS: Dict[str, Type[Backend]] = {"nftables": NftBackend, "ipset": IpsetBackend,
                                      "iptables-legacy": LegacyBackend}


# ---------------------------------------------------------------------------------------
# the batching worker

class Batcher:
    """Coalescing queue and worker thread between fail2ban's calls and the kernel.

    The queue maps each address to its latest wanted state (an end time or _REMOVE), so a
    ban followed by a prolong or an unban in the same batch costs one change.  Timeouts
    are computed when the batch is applied.  Bans longer than the backend's maximum
    timeout are re-written every max_timeout/2 until they end.
    """

    # failed transactions in a row that make the failure the kernel's (objects gone, set full)
    # rather than one bad element's: splitting further would only multiply the failures
    MAX_FAILED_IN_A_ROW = 32

    def __init__(self, backend: Backend, delay: float, interval: float, batchmax: int, log,
                 refused: Callable[[Key, str], None]):
        self.backend, self.delay, self.interval, self.batchmax, self.log = backend, delay, interval, batchmax, log
        self.refused = refused                     # called with a ban the kernel refused on its own
        self.last_apply = 0.0                      # monotonic start of the last transaction
        self.cond = threading.Condition()
        self.pending: Dict[Key, Union[float, None, str]] = {}
        self.long: Dict[Key, float] = {}           # bans beyond max_timeout -> end
        self.next_refresh = math.inf
        self.busy = False
        self.closing = False
        self.thread: Optional[threading.Thread] = None
        self.applied = 0

    def start(self) -> None:
        with self.cond:
            if self.thread is not None and self.thread.is_alive():
                return
            self.closing = False
            self.thread = threading.Thread(target=self._run, name=f"f2b/modsec-block.{self.backend.s.name}",
                                           daemon=True)
            self.thread.start()

    def put(self, key: Key, end: Union[float, None, str]) -> None:
        """Queue a change; applied once start() ran (fail2ban may ban before the action started)."""
        with self.cond:
            self.pending.pop(key, None)             # re-insert: keeps arrival order roughly
            self.pending[key] = end
            self.cond.notify()

    def discard_all(self) -> None:
        with self.cond:
            self.pending.clear()
            self.long.clear()
            self.next_refresh = math.inf

    def drain(self, timeout: float = 30) -> bool:
        """Wait until everything queued so far reached the kernel."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while (self.pending or self.busy) and self.thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(30)
        self.thread = None

    # -- worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closing and time.time() < self.next_refresh:
                    self.cond.wait(min(60.0, max(0.01, self.next_refresh - time.time())))
                if self.closing:
                    self.cond.notify_all()
                    return
                self._queue_refreshes()
                self.busy = True
            self._gather()
            self.last_apply = time.monotonic()
            with self.cond:
                batch = dict(list(self.pending.items())[: self.batchmax])
                for key in batch:
                    del self.pending[key]
            try:
                self._apply(batch)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def _gather(self) -> None:
        """Let a burst pile up before a transaction.

        The first change after a quiet spell waits `delay` (2 ms).  While changes keep
        arriving, transactions start at most every `interval` (0.2 s), so the kernel tools
        run a few times a second instead of once per handful of bans (fail2ban itself hands
        bans to actions 0.2-0.8 s after the failure) -- but a big waiting batch goes at
        once, and so does the tail of a burst once nothing new arrived for 10 ms.
        """
        time.sleep(self.delay)
        big = max(1, self.batchmax // 20)
        deadline = self.last_apply + self.interval
        seen = len(self.pending)
        while seen < big and time.monotonic() < deadline:
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            now_pending = len(self.pending)
            if now_pending == seen:
                return                              # the burst is over
            seen = now_pending

    def _queue_refreshes(self) -> None:
        """(under cond) Re-queue long bans when their shortened kernel timeout runs low."""
        now = time.time()
        if now < self.next_refresh:
            return
        for key, end in list(self.long.items()):
            if end <= now:
                del self.long[key]
            elif key not in self.pending:
                self.pending[key] = end
        self.next_refresh = now + self._refresh_interval() if self.long else math.inf

    def _refresh_interval(self) -> float:
        return max(1.0, (self.backend.max_timeout or IPSET_MAX_TIMEOUT) / 2)

    def _apply(self, batch: Dict[Key, Union[float, None, str]]) -> None:
        if not batch:
            return
        now = time.time()
        cap = self.backend.max_timeout
        adds: Dict[Key, Optional[int]] = {}
        removes: List[Key] = []
        with self.cond:
            for key, end in batch.items():
                if end == _REMOVE:
                    removes.append(key)
                    self.long.pop(key, None)
                    continue
                timeout = None if end is None else max(1, math.ceil(end - now))
                if cap is not None and timeout is not None and timeout > cap:
                    timeout = cap
                    self.long[key] = end
                    self.next_refresh = min(self.next_refresh, now + self._refresh_interval())
                else:
                    self.long.pop(key, None)
                adds[key] = timeout
        started = time.monotonic()
        self.applied += self._transact(adds, removes)
        self.log.debug("modsec-block %s: %d ban(s), %d unban(s) in %.1f ms", self.backend.kind,
                       len(adds), len(removes), 1000 * (time.monotonic() - started))

    def _transact(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> int:
        """Apply a batch; returns how many changes reached the kernel.

        A batch the kernel refuses (twice: the first failure may be transient) is split in
        halves, down to the one change it refuses, which alone is dropped and reported: one
        bad element never costs another change.
        """
        todo = [(adds, removes)]
        applied = failed_in_a_row = 0
        retries = 1                                 # for the whole batch only
        while todo:
            part = todo.pop()
            error = self._try(part[0], part[1], retries)
            retries = 0
            size = len(part[0]) + len(part[1])
            if error is None:
                applied += size
                failed_in_a_row = 0
                continue
            failed_in_a_row += 1
            if size == 1:
                self._refuse_one(part[0], part[1], error)
            elif failed_in_a_row > self.MAX_FAILED_IN_A_ROW:
                lost = size + sum(len(a) + len(r) for a, r in todo)
                self.log.error("modsec-block %s: %d change(s) not applied: %s", self.backend.kind, lost, error)
                return applied
            else:
                todo.extend(_halves(part[0], part[1]))
        return applied

    def _try(self, adds: Dict[Key, Optional[int]], removes: List[Key], retries: int) -> Optional[Exception]:
        """Apply; the error if the kernel refused (after `retries` more tries), else None."""
        for attempt in range(retries + 1):
            try:
                self.backend.apply(adds, removes)
                return None
            except Exception as e:                  # keep the worker alive whatever happens
                error = e
                if attempt < retries:
                    time.sleep(0.2)                 # transient (lock, busy)
        return error

    def _refuse_one(self, adds: Dict[Key, Optional[int]], removes: List[Key], error: Exception) -> None:
        if removes:
            self.log.error("modsec-block %s: unban of %s not applied: %s", self.backend.kind, removes[0][1], error)
            return
        key = next(iter(adds))
        with self.cond:
            self.long.pop(key, None)
        self.refused(key, f"the kernel refused it ({error})")


def _halves(adds: Dict[Key, Optional[int]], removes: List[Key]) -> List[Tuple[Dict[Key, Optional[int]], List[Key]]]:
    """A batch split in two (adds and removes alike), the first half last: it is applied first."""
    changes: List[Tuple[Key, Union[int, None, str]]] = list(adds.items()) + [(k, _REMOVE) for k in removes]
    middle = len(changes) // 2
    return [({k: t for k, t in half if t != _REMOVE}, [k for k, t in half if t == _REMOVE])
            for half in (changes[middle:], changes[:middle])]


# ---------------------------------------------------------------------------------------
# the fail2ban action

class Unbannable(ValueError):
    """An address the kernel sets cannot or must not hold; the message says why."""


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# Sources never blocked: none is a real client, and a loopback ban cuts the host off from
# itself (a local proxy, health checks) on the blocked ports.
_NEVER = (
    (lambda a: a.is_unspecified, "the unspecified address: no host sends from it"),
    (lambda a: a == _BROADCAST, "the broadcast address: no host sends from it"),
    (lambda a: a.is_multicast, "a multicast address: never the source of a connection"),
    (lambda a: a.is_loopback, "a loopback address: blocking it cuts the host off from itself"),
)


def _parse_address(text: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    """What fail2ban itself takes for an address (inet_pton): no zone, no leading zeros, so
    two tickets fail2ban keeps apart never share one kernel entry."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return ipaddress.ip_address(socket.inet_pton(family, text))
        except (OSError, ValueError):
            continue
    address, _, zone = text.partition("%")
    if zone and ":" in address:
        # the kernel sets hold no zone; without it the ban would hit that address on every link
        raise Unbannable(f"a scoped IPv6 address (zone {zone!r}): a kernel set cannot hold a zone")
    raise Unbannable("not a single IP address (a subnet or a host name)")


def kernel_key(text: str) -> Key:
    """fail2ban's ticket id -> the kernel entry that blocks it, or Unbannable (with the reason)."""
    address = _parse_address(text.strip())
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped          # an IPv4 client seen through an IPv6 socket
    for test, reason in _NEVER:
        if test(address):
            raise Unbannable(reason)
    return address.version, str(address)


def _ban_end(aInfo) -> Optional[float]:
    """When fail2ban will unban this ticket (its time + bantime); None for a permanent ban."""
    bantime = int(aInfo["bantime"])
    if bantime < 0:
        return None
    return float(aInfo["time"]) + bantime


class ModsecBlock(ActionBase):
    """See the module docstring (man page)."""

    # fail2ban compares action.banEpoch with tickets' epochs to decide on rebans.
    banEpoch = 0

    def __init__(self, jail, name, **opts):
        super().__init__(jail, name)
        self._opts = dict(opts)
        self._settings = Settings.parse(jail.name, self._opts)
        self._bans: Dict[Key, Optional[float]] = {}            # what we asked the kernel to hold
        self._refused: Set[str] = set()                         # addresses reported as not blocked
        self._lock = threading.Lock()
        self._backend, self._batcher = self._make(self._settings)

    def _make(self, settings: Settings) -> Tuple[Backend, Batcher]:
        kind = settings.backend if settings.backend != "auto" else detect_backend()
        backend = BACKENDS[kind](settings)
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
        self._logSys.info("modsec-block: %s backend, objects %r, %s on %s", self._backend.kind,
                          self._settings.name, self._settings.blocktype,
                          "all ports" if self._settings.ports is None else f"{self._settings.protocol} "
                          + ",".join(str(a) if a == b else f"{a}:{b}" for a, b in self._settings.ports))

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
            self._batcher.put(key, _REMOVE)
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
        if settings == self._settings:
            return
        self._logSys.info("modsec-block: options changed, re-creating kernel objects")
        self._batcher.close()
        self._backend.teardown()
        self._opts, self._settings = dict(opts), settings
        self._backend, self._batcher = self._make(settings)
        self._backend.setup()
        self._batcher.start()
        with self._lock:
            for key, end in self._bans.items():
                self._batcher.put(key, end)

    # -- bans -----------------------------------------------------------------------------
    def _refuse(self, address: str, reason: str) -> None:
        """Report, once per address, a ban fail2ban lists but the kernel does not hold."""
        with self._lock:
            if address in self._refused:
                return
            if len(self._refused) >= 65536:           # bounded: a flood of them is logged again
                self._refused.clear()
            self._refused.add(address)
        self._logSys.error("modsec-block: %s not blocked: %s (fail2ban lists it as banned)", address, reason)

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
        self._batcher.put(key, _REMOVE)

    # -- for tests and benchmarks -----------------------------------------------------------
    def drain(self, timeout: float = 30) -> bool:
        return self._batcher.drain(timeout)


Action = ModsecBlock
