"""Which address is the client: section A's, unless a trusted proxy forwarded the request.

X-Forwarded-For and X-Real-IP are attacker-controlled for everybody but our own proxies, so
they are read only when section A's address is a trusted proxy, and then right to left: the
right-most address that is not itself a trusted proxy is the first one nobody we trust made up.
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from .event import Event

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(specs: Iterable[str]) -> list[Network]:
    """``["127.0.2.0/24", "::1"]`` → networks; raises ValueError naming the bad entry."""
    networks: list[Network] = []
    for spec in specs:
        spec = spec.strip()
        if spec:
            try:
                networks.append(ipaddress.ip_network(spec, strict=False))
            except ValueError:
                raise ValueError(f"not an address or network: {spec!r}") from None
    return networks


@functools.lru_cache(maxsize=4096)
def normalize_ip(text: str | None) -> str | None:
    """Canonical text of an address (compressed IPv6, IPv4-mapped unwrapped), None if invalid."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in networks)


def resolve_client(event: Event, trusted: Sequence[Network]) -> str | None:
    peer = normalize_ip(event.peer_ip)
    if peer is None or not trusted or not _trusted(peer, trusted):
        return peer
    forwarded = [value for name, value in event.request_headers
                 if name.lower() == "x-forwarded-for"]
    hops = [hop.strip() for value in forwarded for hop in value.split(",")]
    for hop in reversed(hops):
        address = normalize_ip(hop)
        if address is None:
            return peer  # garbage in the chain: stop trusting it here
        if not _trusted(address, trusted):
            return address
    real_ip = normalize_ip(event.header("X-Real-IP"))
    if real_ip is not None:
        return real_ip
    return peer
