"""ModSecurity's audit log formats: bytes of one entry -> Event. Pure: no I/O."""
from __future__ import annotations


def forget_cached() -> None:
    """Drop what the parsers keep between entries (parsed messages, addresses)."""
    from . import clientip, messages
    messages.forget_cached()
    clientip.forget_cached()
