"""One audit entry's bytes → Event, whichever format ModSecurity wrote it in."""
from __future__ import annotations

from .clientip import Proxies, resolve_client
from .errors import ParseError
from .event import Event
from .indexlog import IndexLine
from .jsonformat import parse_json
from .native import parse_native


def parse_entry(data: bytes, source: str, proxies: Proxies = Proxies(),
                index: IndexLine | None = None) -> Event:
    """Parse a native or JSON entry; raises ParseError with the reason when it cannot.

    ``index`` is the index-log line that announced the entry: it supplies the status when
    the entry has none (HTTP/0.9 under DetectionOnly: empty section F, no denial message).
    """
    head = data[:64].lstrip()
    if not head:
        raise ParseError("empty entry")
    if head[:1] == b"{":
        event = parse_json(data, source)
    elif head[:2] == b"--":
        event = parse_native(data, source)
    else:
        raise ParseError("neither a native (--xxxxxxxx-A--) nor a JSON audit entry")
    client = resolve_client(event, proxies)
    event.client_ip, event.client_unbannable = client.address, client.unbannable
    if index is not None:
        if index.unique_id != event.unique_id:
            raise ParseError(f"entry id {event.unique_id!r} differs from the index line's "
                             f"{index.unique_id!r}")
        if event.status is None:
            event.status = index.status
    return event
