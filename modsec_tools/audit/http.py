"""HTTP request and response heads as ModSecurity records them (sections B and F)."""
from __future__ import annotations

import re

from .event import Event

_STATUS_LINE = re.compile(r"(\S+) ([0-9]{3})\b")


def _http_head(section: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The first line and the ``Name: value`` pairs of a head (section B or F)."""
    head = section.decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
    return head[0], headers(head[1:])


def headers(head_lines: list[str]) -> list[tuple[str, str]]:
    """``Name: value`` pairs in order, duplicates kept, folded lines joined."""
    found: list[tuple[str, str]] = []
    folded: dict[int, list[str]] = {}  # index in found → its continuation lines
    for line in head_lines:
        if not line:
            continue
        if line[0] in " \t" and found:  # obsolete line folding
            folded.setdefault(len(found) - 1, []).append(line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep:
            found.append((name.strip(), value.strip()))
    for at, more in folded.items():
        name, value = found[at]
        found[at] = (name, " ".join([value, *more]))
    return found


def apply_request_line(event: Event, request_line: str) -> None:
    event.request_line = request_line
    words = request_line.split(" ")
    event.method = words[0] or None
    if len(words) >= 3:
        event.uri = " ".join(words[1:-1])
        event.protocol = words[-1]
    elif len(words) == 2:   # HTTP/0.9: "GET /path"
        event.uri = words[1]
        event.protocol = "HTTP/0.9"


def apply_request_head(event: Event, section: bytes) -> None:
    request_line, event.request_headers = _http_head(section)
    apply_request_line(event, request_line)


def apply_response_head(event: Event, section: bytes) -> None:
    status_line, response_headers = _http_head(section)
    if not status_line:
        return  # HTTP/0.9: ModSecurity writes an empty section F
    event.response_status_line = status_line
    match = _STATUS_LINE.match(status_line)
    if match:
        event.response_protocol = match.group(1)
        event.status = int(match.group(2))
    event.response_headers = response_headers
