"""The action's options, as fail2ban hands them over (raw strings), checked strictly."""
import hashlib
import re
import socket
from typing import Dict, NamedTuple, Optional, Tuple

from .backends import BACKENDS

IPSET_MAX_TIMEOUT = 2147483          # ipset's own limit (seconds)
OPTIONS = ("backend", "blocktype", "port", "protocol", "rawdrop", "chain", "name", "maxtimeout",
           "maxelem", "batchdelay", "batchinterval", "batchmax", "fastban")
PortRanges = Optional[Tuple[Tuple[int, int], ...]]      # None: every port and protocol


def as_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_ports(text: str, protocol: str) -> PortRanges:
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


def object_name(base: str) -> str:
    """A name valid for nft, ipset (31 chars with -4/-6) and iptables chains (28)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", base)
    if not name[:1].isalpha():
        name = "mt" + name
    if len(name) > 24:
        name = name[:19] + "-" + hashlib.sha1(base.encode()).hexdigest()[:4]
    return name


def _interval(text: Optional[str]) -> Optional[float]:
    """batchinterval: seconds, or None for auto (the batcher's default for the backend)."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    return float(text)


class Settings(NamedTuple):
    backend: str
    blocktype: str
    ports: PortRanges
    protocol: str
    rawdrop: bool
    chain: str
    name: str
    maxtimeout: int
    maxelem: int
    batchdelay: float
    batchinterval: Optional[float]
    batchmax: int
    fastban: bool

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
        rawdrop = as_bool(opts.get("rawdrop", "false"))
        if rawdrop and blocktype != "DROP":
            raise ValueError("rawdrop works with blocktype=DROP only (REJECT is not valid in the raw table)")
        backend = str(opts.get("backend", "auto")).strip().lower()
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r} (auto, {', '.join(BACKENDS)})")
        chain = str(opts.get("chain", "INPUT")).strip()
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,28}", chain):
            raise ValueError(f"bad chain {chain!r}")
        return cls(
            backend=backend, blocktype=blocktype, ports=parse_ports(opts.get("port", "http,https"), protocol),
            protocol=protocol, rawdrop=rawdrop, chain=chain,
            name=object_name(str(opts.get("name") or f"mt-{jail_name}")),
            maxtimeout=max(1, min(int(opts.get("maxtimeout", IPSET_MAX_TIMEOUT)), IPSET_MAX_TIMEOUT)),
            maxelem=int(opts.get("maxelem", 1048576)), batchdelay=float(opts.get("batchdelay", 0)),
            batchinterval=_interval(opts.get("batchinterval")), batchmax=max(1, int(opts.get("batchmax", 20000))),
            fastban=as_bool(opts.get("fastban", "true")))

    def port_list(self, range_sep: str, sep: str = ",") -> str:
        """The ports as each tool spells them: '80,443,8000:8100' (iptables) or '80, 8000-8100' (nft)."""
        return sep.join(str(a) if a == b else f"{a}{range_sep}{b}" for a, b in self.ports or ())
