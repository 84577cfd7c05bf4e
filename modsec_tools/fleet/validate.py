"""Rows of the shared table are hostile input: another server, or whoever holds its database
account, wrote them. Nothing reaches fail2ban before it is checked here, and nothing that
names one of this server's own addresses, proxies or ignored networks reaches it at all."""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from ..audit.clientip import Network, unbannable
from ..eventline import NODE
from .rows import BAN, FLEET_JAILS, UNBAN, FleetBan, SharedRow

log = logging.getLogger(__name__)

RULES = re.compile(r"\d{1,10}(?:,\d{1,10})*")
RULES_CAP = 255
#: A ban that says it starts further ahead than this is refused: no clock is that wrong.
MAX_SKEW = 300
_INT_MAX = 1 << 62


class Rejected(ValueError):
    """A row that must not reach fail2ban; the text says why."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_prefix_v4: int = 32      # the widest network a row may name: /32 = addresses only
    max_prefix_v6: int = 128
    max_bantime: int = 5 * 7 * 86400

    def widest(self, version: int) -> int:
        return self.max_prefix_v4 if version == 4 else self.max_prefix_v6


def parse_max_prefix(text: str) -> tuple[int, int]:
    """``fleet_max_prefix``: ``32,128`` (addresses only) or e.g. ``24,64``."""
    parts = [part.strip() for part in text.replace("/", ",").split(",") if part.strip()]
    try:
        v4, v6 = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not two prefix lengths 'IPv4,IPv6' (e.g. 32,128)") \
            from None
    if not (8 <= v4 <= 32 and 16 <= v6 <= 128):
        raise ValueError(f"{text!r}: IPv4 prefix 8-32 and IPv6 prefix 16-128")
    return v4, v6


def address(text: object, limits: Limits) -> str:
    """The canonical text of an address or network a row names; Rejected otherwise."""
    if not isinstance(text, str) or not 0 < len(text) <= 64 or not text.isascii():
        raise Rejected("address is not short ASCII text")
    if "%" in text:
        raise Rejected(f"{text}: a scoped address (a kernel set takes no zone)")
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=True)
            if network.prefixlen < limits.widest(network.version):
                raise Rejected(f"{text}: wider than fleet_max_prefix allows "
                               f"(/{limits.widest(network.version)})")
            if network.num_addresses > 1:
                _refuse_special(network)
                return str(network)
            text = str(network.network_address)
        parsed = ipaddress.ip_address(text)
    except ValueError:
        raise Rejected(f"{text!r} is not an address") from None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    reason = unbannable(parsed, forwarded=True)
    if reason:
        raise Rejected(f"{parsed}: {reason} address, never banned")
    return str(parsed)


def _refuse_special(network: Network) -> None:
    for special in _SPECIAL:
        if network.version == special.version and network.overlaps(special):
            raise Rejected(f"{network} overlaps {special}, which is never banned")


_SPECIAL = [ipaddress.ip_network(text) for text in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "fe80::/10", "ff00::/8")]


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > _INT_MAX:
        raise Rejected(f"{what} is not a whole number")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise Rejected(f"{what} is not a number")
    return float(value)


def validate(row: SharedRow, limits: Limits, now: float) -> FleetBan:
    """The row as a FleetBan, its end bounded by ``max_bantime``; Rejected if anything in
    it is not what a modsec-tools node writes."""
    if not isinstance(row.node, str) or not NODE.fullmatch(row.node):
        raise Rejected("node is not a node name")
    if row.kind not in (BAN, UNBAN):
        raise Rejected(f"kind {row.kind!r}")
    if row.jail not in FLEET_JAILS:
        raise Rejected(f"jail {row.jail!r} is not one whose bans a fleet shares")
    seq = _integer(row.seq, "seq")
    ip = address(row.ip, limits)
    time_of_ban = _integer(row.time_of_ban, "time_of_ban")
    if time_of_ban > now + MAX_SKEW:
        raise Rejected(f"{ip}: ban starts {time_of_ban - now:.0f} s in the future")
    bantime = _integer(row.bantime, "bantime")
    if bantime == 0 or bantime < -1:
        raise Rejected(f"{ip}: bantime {bantime}")
    if bantime == -1 or bantime > limits.max_bantime:
        bantime = limits.max_bantime          # permanent or longer: the admin's bound
    rules = row.rules if isinstance(row.rules, str) and len(row.rules) <= RULES_CAP \
        and RULES.fullmatch(row.rules) else ""
    return FleetBan(origin=row.node, seq=seq, kind=str(row.kind), origin_jail=str(row.jail),
                    jail=FLEET_JAILS[str(row.jail)], ip=ip, time_of_ban=time_of_ban,
                    end=float(time_of_ban + bantime), rules=rules,
                    published=_number(row.published, "published"))


class Guard:
    """What this server never bans whatever the fleet says: the fleet jail's ignoreip, its
    own addresses (ignoreself), and modsec-tools' trusted proxies."""

    def __init__(self, trusted_proxies: Iterable[Network] = ()) -> None:
        self.trusted = tuple(trusted_proxies)
        self.networks: tuple[Network, ...] = self.trusted

    def refresh(self, ignoreip: Iterable[str], ignoreself: bool) -> None:
        networks = list(self.trusted)
        for item in ignoreip:
            networks += _networks(str(item))
        if ignoreself:
            networks += own_addresses()
        self.networks = tuple(networks)

    def ignored(self, ip: str) -> Network | None:
        """The ignored network ``ip`` (an address or a network) meets, or None."""
        target = ipaddress.ip_network(ip, strict=False)
        for network in self.networks:
            if network.version == target.version and network.overlaps(target):
                return network
        return None


def _networks(item: str) -> list[Network]:
    """An ignoreip element: an address, a network, or a name (resolved as fail2ban does)."""
    try:
        return [ipaddress.ip_network(item, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(item, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        log.warning("fleet: ignoreip name %s does not resolve (%s): not ignored", item, exc)
        return []
    return [ipaddress.ip_network(info[4][0].split("%")[0]) for info in infos]


def own_addresses() -> list[Network]:
    """This server's interface addresses (``ip -j addr``), as fail2ban's ignoreself."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("fleet: cannot list this server's addresses for ignoreself: %s", exc)
        return []
    return [ipaddress.ip_network(info["local"].split("%")[0])
            for link in links for info in link.get("addr_info", []) if "local" in info]
