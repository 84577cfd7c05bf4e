"""Which kernel entry blocks a ticket's address, or why none may.

fail2ban bans whatever its ticket holds; the kernel sets hold single addresses, and some
addresses must never be blocked.  A refused address is reported on its own and never costs
another ban.
"""
import ipaddress
import socket
import threading
from typing import Callable, Set, Tuple, Union

Key = Tuple[int, str]                # (4|6, canonical address): one kernel entry


class Unbannable(ValueError):
    """An address the kernel sets cannot or must not hold; the message says why."""


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# The addresses a host reaches itself from (a local proxy, health checks). The rest of
# 127.0.0.0/8 is bannable: README's first ban is tried from 127.0.0.2.
_SELF = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
# Sources never blocked: none is a real client, or the ban cuts the host off from itself.
_NEVER = (
    (lambda a: a.is_unspecified, "the unspecified address: no host sends from it"),
    (lambda a: a == _BROADCAST, "the broadcast address: no host sends from it"),
    (lambda a: a.is_multicast, "a multicast address: never the source of a connection"),
    (lambda a: a in _SELF, "the host's own loopback address: blocking it cuts the host off "
                           "from itself"),
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


class Refusals:
    """Reports, once per address, a ban fail2ban lists but the kernel does not hold."""

    LIMIT = 65536                     # bounded: past it, a flood of them is reported again

    def __init__(self, report: Callable[[str, str], None]) -> None:
        self.report = report
        self.seen: Set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, address: str, reason: str) -> None:
        with self.lock:
            if address in self.seen:
                return
            if len(self.seen) >= self.LIMIT:
                self.seen.clear()
            self.seen.add(address)
        self.report(address, reason)
