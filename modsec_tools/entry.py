"""One audit entry's bytes → Event, whichever format ModSecurity wrote it in."""
from __future__ import annotations

from collections.abc import Sequence

from .clientip import Network, resolve_client
from .errors import ParseError
from .event import Event
from .jsonformat import parse_json
from .native import parse_native


def parse_entry(data: bytes, source: str, trusted_proxies: Sequence[Network] = ()) -> Event:
    """Parse a native or JSON entry; raises ParseError with the reason when it cannot."""
    head = data[:64].lstrip()
    if not head:
        raise ParseError("empty entry")
    if head[:1] == b"{":
        event = parse_json(data, source)
    elif head[:2] == b"--":
        event = parse_native(data, source)
    else:
        raise ParseError("neither a native (--xxxxxxxx-A--) nor a JSON audit entry")
    event.client_ip = resolve_client(event, trusted_proxies)
    return event
