"""Request-derived text made safe for a terminal, and measured in terminal cells.

An address, a Host header or a path comes from the attacker: printed as it is, an escape
sequence in it would drive the admin's terminal (retitle it, move the cursor, hide lines)
and a bidirectional override would make it read differently from what it is. Every
character Python does not call printable is shown as a ``\\x..``/``\\u....`` escape.
"""
from __future__ import annotations

import unicodedata


def escaped(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out)


def width(text: str) -> int:
    """Terminal cells: wide East Asian characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(char) else
               2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def fit(text: str, cells: int) -> str:
    """``text`` cut to ``cells`` cells (a cut shows as a final '…'), padded to them."""
    if width(text) <= cells:
        return text + " " * (cells - width(text))
    out, used = [], 0
    for char in text:
        size = width(char)
        if used + size > cells - 1:
            break
        out.append(char)
        used += size
    return "".join(out) + "…" + " " * (cells - 1 - used)
