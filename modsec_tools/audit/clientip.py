"""Which address is the client, and whether it may be banned.

Section A's address is the client, unless it is a trusted proxy: then the client is read from
the one header the proxies are configured to set (``proxy_header``, as mod_remoteip's
``RemoteIPHeader``), right to left: the right-most address that is not itself a trusted proxy
is the first one nobody we trust made up. Nothing else an attacker sends is ever read.

Banning a trusted proxy would lock out every user behind it, so when a trusted proxy's header
does not name a client (absent, empty, garbage, or only trusted hops) the entry has no
bannable client; nor has an entry whose client is an address no ban can mean
(``unbannable``). The event line then says why (docs/event-log.md).
"""
from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .event import Event

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_HEADER = "X-Forwarded-For"

# Why an entry has no bannable client: the reasons the event line's noban= field holds.
NO_ADDRESS = "no-address"              # section A holds no valid address
PROXY_NO_HEADER = "proxy-no-header"    # a trusted proxy sent no (or an empty) header
PROXY_BAD_HEADER = "proxy-bad-header"  # ... a header element that is not an address
PROXY_ONLY = "proxy-only"              # ... only trusted proxies in its header

#: Addresses that can never have sent a request, wherever they are read: the entry was
#: forged, or the proxy forwards nonsense.
_NEVER = tuple((reason, ipaddress.ip_network(net)) for reason, net in (
    ("unspecified", "0.0.0.0/8"), ("unspecified", "::/128"),
    ("broadcast", "255.255.255.255/32"),
    ("multicast", "224.0.0.0/4"), ("multicast", "ff00::/8")))
#: Addresses that mean a host or link of the proxy's, never one of ours, when a proxy
#: forwards them; as section A's address they are a real peer our own kernel saw (the jail's
#: ignoreip exempts loopback: fail2ban/jail.d/modsec.conf).
_NEVER_FORWARDED = tuple((reason, ipaddress.ip_network(net)) for reason, net in (
    ("loopback", "127.0.0.0/8"), ("loopback", "::1/128"),
    ("link-local", "169.254.0.0/16"), ("link-local", "fe80::/10")))

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")   # an HTTP header name (RFC 9110 token)
_WITH_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}|\[[^\]]*\]):(\d{1,5})")


@dataclass(frozen=True, slots=True)
class Proxies:
    """The proxies whose header is believed, and that header (one: never a fallback)."""

    trusted: tuple[Network, ...] = ()
    header: str = DEFAULT_HEADER


@dataclass(frozen=True, slots=True)
class Client:
    address: str | None          # whom the entry is attributed to (None: nobody known)
    unbannable: str | None = None  # why it must not be banned (None: it may be)


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


def parse_header_name(text: str) -> str:
    """The ``proxy_header`` setting: one header name whose value is a list of addresses."""
    name = text.strip()
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{text!r} is not one header name (e.g. X-Forwarded-For, X-Real-IP)")
    if name.lower() == "forwarded":
        raise ValueError("the RFC 7239 Forwarded header (for=...;proto=...) is not "
                         "supported; name the header that holds bare addresses")
    return name


@functools.lru_cache(maxsize=4096)
def normalize_ip(text: str | None) -> str | None:
    """Canonical text of an address (compressed IPv6, IPv4-mapped unwrapped), None if invalid."""
    address = _address(text)
    return None if address is None else str(address)


def _address(text: str | None) -> Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


def _forwarded_address(hop: str) -> Address | None:
    """A header element: an address, or ``a.b.c.d:port`` / ``[v6]:port`` (the port is
    dropped: Azure Application Gateway writes it, nginx's realip module takes it). A bare
    IPv6 address followed by ``:port`` cannot be told from another address."""
    with_port = _WITH_PORT.fullmatch(hop)
    if with_port is not None:
        if int(with_port.group(2)) > 65535:
            return None
        hop = with_port.group(1)
    return _address(hop)


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


@functools.lru_cache(maxsize=4096)
def unbannable(address: Address, forwarded: bool) -> str | None:
    """Why no ban can mean this address (None: a ban can)."""
    table = (_NEVER + _NEVER_FORWARDED) if forwarded else _NEVER
    reason = next((reason for reason, network in table if address in network), None)
    if reason is None and isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        reason = "scoped"     # fe80::1%eth0: no firewall set takes a zone
    return reason


def _client(address: Address, forwarded: bool) -> Client:
    return Client(str(address), unbannable(address, forwarded))


_peer_address = functools.lru_cache(maxsize=4096)(_address)


def forget_cached() -> None:
    """Drop the addresses kept (a daemon gone idle gives its memory back)."""
    for cached in (normalize_ip, unbannable, _peer_address):
        cached.cache_clear()


def resolve_client(event: Event, proxies: Proxies) -> Client:
    peer = _peer_address(event.peer_ip)
    if peer is None:
        return Client(None, NO_ADDRESS)
    if not _trusted(peer, proxies.trusted):
        return _client(peer, forwarded=False)
    header = proxies.header.lower()
    hops = [hop.strip() for name, value in event.request_headers if name.lower() == header
            for hop in value.split(",")]
    if not any(hops):
        return Client(None, PROXY_NO_HEADER)
    for hop in reversed(hops):
        address = _forwarded_address(hop)
        if address is None:
            return Client(None, PROXY_BAD_HEADER)  # stop trusting the chain here
        if not _trusted(address, proxies.trusted):
            return _client(address, forwarded=True)
    return Client(None, PROXY_ONLY)
