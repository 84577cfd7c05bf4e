"""ModSecurity 2.x native audit-log entries (``--xxxxxxxx-A--`` … ``--xxxxxxxx-Z--``).

Pure functions over bytes: no I/O. ``parse_native`` turns one entry into an ``Event``
(``serial.split_serial`` cuts Serial logs into entries).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ParseError
from .event import Event
from .derive import finish_event
from .http import apply_request_head, apply_response_head
from .messages import modsecurity_part_of_apache_error, parse_message
from .timestamps import parse_apache_time

_BOUNDARY = re.compile(rb"--([0-9a-fA-F]{8,32})-A--\r?\n")
_SECTION_A = re.compile(
    r"\[([^\]]+)\] (\S+) (\S+) ([0-9]{1,5}) (\S+) ([0-9]{1,5})\b")
_TIMING = re.compile(r"\b(\w+)=([0-9]{1,18})\b")
_INTERCEPTED = re.compile(r"Intercepted \(phase ([0-9])\)")
#: Sections whose bytes are kept in the Event in full; bodies are capped (see BODY_CAP).
BODY_CAP = 64 * 1024


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


@dataclass(slots=True)
class Sections:
    boundary: bytes
    parts: dict[str, bytes]
    complete: bool       # a Z boundary was found
    unknown: list[str]   # section letters ModSecurity 2 does not write


_KNOWN = set("ABCDEFGHIJKZ")


def split_sections(entry: bytes) -> Sections:
    """Cut an entry at its own boundary lines (a body cannot forge them: the boundary is random)."""
    scanned = _scan_sections(entry)
    if scanned is None:
        raise ParseError("no section A boundary at the start of the entry")
    return Sections(*scanned)


def _scan_sections(entry: bytes) -> tuple[bytes, dict[str, bytes], bool, list[str]] | None:
    """``(boundary, parts, complete, unknown)``, or None without an A boundary line.

    A line that starts like the separator but does not end like a boundary (a body can hold
    many) stays in the section's bytes; section A is kept as a line, its newline included.
    """
    match = _BOUNDARY.match(entry)
    if match is None:
        return None
    boundary = match.group(1)
    separator = b"\n--" + boundary + b"-"
    parts: dict[str, bytes] = {}
    unknown: list[str] = []
    letter, body_from = "A", match.end()
    hit = entry.find(separator, body_from)
    while hit != -1:
        tail = hit + len(separator)
        following = entry.find(separator, tail)
        piece_end = len(entry) if following == -1 else following
        if _boundary_tail(entry[tail:min(tail + 4, piece_end)]):
            parts[letter] = _section_bytes(letter, entry[body_from:hit])
            letter = chr(entry[tail])
            if letter == "Z":
                return boundary, parts, True, unknown
            newline = entry.find(b"\n", tail, min(tail + 6, piece_end))
            body_from = piece_end if newline == -1 else newline + 1
            if letter not in _KNOWN:
                unknown.append(letter)
        hit = following
    parts[letter] = _section_bytes(letter, entry[body_from:])
    return boundary, parts, False, unknown


def _boundary_tail(head: bytes) -> bool:
    """``X--`` then end of line: what follows ``\\n--boundary-`` on a real boundary line."""
    return (len(head) >= 3 and 65 <= head[0] <= 90 and head[1:3] == b"--"
            and head[3:4] in (b"\n", b"\r", b""))


def _section_bytes(letter: str, body: bytes) -> bytes:
    return body + b"\n" if letter == "A" else body


def parse_native(entry: bytes, source: str) -> Event:
    """Parse one native-format entry. Raises ParseError when not even section A is readable."""
    sections = split_sections(entry)
    event = _event_from_section_a(_text(sections.parts["A"]), source)
    parts = sections.parts
    if "B" in parts:
        apply_request_head(event, parts["B"])
    if "C" in parts:
        event.request_body = _capped_body(event, parts["C"], "C")
    elif "I" in parts:
        event.request_body = _capped_body(event, parts["I"], "I")
    if "F" in parts:
        apply_response_head(event, parts["F"])
    if "H" in parts:
        _apply_trailer(event, parts["H"])
    finish_event(event)
    if not sections.complete:
        event.incomplete = True
        event.problems.append("entry has no Z boundary (truncated or still being written)")
    for letter in sections.unknown:
        event.problems.append(f"unknown section {letter!r} ignored")
    return event


def _capped_body(event: Event, body: bytes, letter: str) -> str:
    if len(body) > BODY_CAP:
        event.problems.append(f"section {letter} is {len(body)} bytes; kept the first {BODY_CAP}")
        body = body[:BODY_CAP]
    return _text(body)


def _event_from_section_a(text: str, source: str) -> Event:
    match = _SECTION_A.match(text.strip())
    if match is None:
        raise ParseError(f"section A is not '[time] id ip port ip port': {text[:120]!r}")
    stamp, unique_id, peer_ip, peer_port, local_ip, local_port = match.groups()
    return Event(unique_id=unique_id, timestamp=parse_apache_time(stamp), client_ip=peer_ip,
                 peer_ip=peer_ip, peer_port=int(peer_port), local_ip=local_ip,
                 local_port=int(local_port), source=source)


_TRAILER_KEY = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z").match
# What ModSecurity 2.9 writes: a set lookup spares the key regex on the hot path.
_USUAL_KEYS = frozenset((
    "Message", "Apache-Error", "Action", "Stopwatch", "Stopwatch2", "Producer", "Server",
    "Engine-Mode", "Response-Body-Transformed", "WebApp-Info", "Apache-Handler",
    "Sanitised-Args", "Sanitised-Request-Headers", "Sanitised-Response-Headers"))


def _trailer_lines(section: bytes) -> list[tuple[str, str]]:
    """``Key: value`` lines; a line that is not one continues the previous value (a
    message may contain a newline)."""
    text = _text(section)
    trailer: list[tuple[str, str]] = []
    continued: dict[int, list[str]] = {}  # index in trailer → its continuation lines
    for line in text.split("\n"):
        key, sep, value = line.partition(": ")
        if sep and (key in _USUAL_KEYS or _TRAILER_KEY(key)):
            trailer.append((key, value[:-1] if value[-1:] == "\r" else value))
        elif trailer and line.strip():
            continued.setdefault(len(trailer) - 1, []).append(line.rstrip("\r"))
    for at, more in continued.items():
        key, value = trailer[at]
        trailer[at] = (key, "\n".join([value, *more]))
    return trailer


def _stopwatch(value: str) -> dict[str, int]:
    """The ``name=microseconds`` pairs of a ``Stopwatch2`` line."""
    return {name: int(number) for name, number in _TIMING.findall(value)}


def _apply_trailer(event: Event, section: bytes) -> None:
    trailer = _trailer_lines(section)
    event.trailer = trailer
    apache_modsec: list[str] = []
    for key, value in trailer:
        if key == "Message":
            event.messages.append(parse_message(value))
        elif key == "Apache-Error":
            inner = modsecurity_part_of_apache_error(value)
            if inner is None:
                event.apache_errors.append(value)
            else:
                apache_modsec.append(inner)
        elif key == "Action":
            match = _INTERCEPTED.search(value)
            if match:
                event.intercepted = True
                event.phase = int(match.group(1))
        elif key == "Engine-Mode":
            event.engine_mode = value.strip('"')
        elif key == "Producer":
            event.producer = value
        elif key == "Server":
            event.server = value
        elif key == "Stopwatch":
            first = value.split(" ", 1)[0]
            event.stopwatch_start_us = int(first) if first.isascii() and first.isdigit() \
                and len(first) <= 18 else None
        elif key == "Stopwatch2":
            event.stopwatch = _stopwatch(value)
    if not event.messages and apache_modsec:
        # Every Message: line is repeated as Apache-Error:; only use these when the
        # Message: lines are missing (e.g. a hand-trimmed entry).
        event.messages = [parse_message(text) for text in apache_modsec]
