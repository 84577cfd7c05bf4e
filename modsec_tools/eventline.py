"""The one-line event format fail2ban reads (see docs/event-log.md), and its reader.

Every attacker-controlled byte is escaped so the line stays one line of printable ASCII
whose fixed prefix, up to ``id=``, is ours alone. An entry without a bannable client
(clientip.py) is written ``client=-`` with the reason and the address, which the filter's
``<ADDR>`` cannot match.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .audit.clientip import NO_ADDRESS, normalize_ip
from .audit.event import Event, raw

CAPS = {"method": 32, "host": 255, "uri": 2048, "ua": 512}
ID_CAP = 64     # raw bytes; mod_unique_id writes 24 or 27 characters, the database keeps 64
QUOTED = tuple(CAPS)
NODE = re.compile(r"[A-Za-z0-9._-]{1,64}")

_QUOTED_SAFE = re.compile(rb'[\x20\x21\x23-\x5b\x5d-\x7e]*')
_QUOTED_TABLE = [chr(b) if 0x20 <= b < 0x7f else f"\\x{b:02x}" for b in range(256)]
_QUOTED_TABLE[ord('"')] = '\\"'
_QUOTED_TABLE[ord("\\")] = "\\\\"
_BARE_SAFE = re.compile(r"[A-Za-z0-9@_.:,-]+")


@dataclass(slots=True)
class EventLine:
    time: str
    node: str
    client: str
    verdict: str
    status: str
    phase: str
    score: str
    severity: str
    rules: list[str]
    id: str
    method: bytes | None
    host: bytes | None
    uri: bytes | None
    ua: bytes | None
    truncated: list[str] = field(default_factory=list)
    noban: str | None = None     # why client is "-" although the entry came from somewhere
    addr: str = "-"              # ... and from where (written only with noban)


def from_event(event: Event, node: str, verdict: str) -> EventLine:
    def text(value: object) -> str:
        return "-" if value is None else str(value)

    client = normalize_ip(event.client_ip)
    noban, addr = _noban(event, client)
    line = EventLine(
        time=event.timestamp.isoformat(timespec="microseconds") if event.timestamp else "-",
        node=node, client="-" if noban else client, verdict=verdict,
        status=text(event.status), phase=text(event.phase), score=text(event.anomaly_score),
        severity=text(event.severity), rules=event.rule_ids, id=_capped_id(event.unique_id),
        method=raw(event.method), host=raw(event.host), uri=raw(event.uri),
        ua=raw(event.user_agent), noban=noban, addr=addr)
    if line.id != event.unique_id:
        line.truncated.append("id")
    for name in QUOTED:
        value = getattr(line, name)
        if value is not None and len(value) > CAPS[name]:
            setattr(line, name, value[:CAPS[name]])
            line.truncated.append(name)
    return line


def _noban(event: Event, client: str | None) -> tuple[str | None, str]:
    """Why the line has no bannable client (None: it has one), and the address concerned:
    the proxy itself when its header named nobody."""
    if event.client_unbannable:
        return event.client_unbannable, client or normalize_ip(event.peer_ip) or "-"
    return (None, "-") if client else (NO_ADDRESS, "-")


def _capped_id(unique_id: str) -> str:
    if unique_id.isascii() and len(unique_id) <= ID_CAP:
        return unique_id
    data = raw(unique_id)
    return unique_id if len(data) <= ID_CAP else data[:ID_CAP].decode("utf-8", "surrogateescape")


def escape_bare(value: str) -> str:
    if _BARE_SAFE.fullmatch(value):
        return value
    return "".join(ch if _BARE_SAFE.fullmatch(ch) else
                   "".join(f"\\x{b:02x}" for b in raw(ch))
                   for ch in value) or "-"


def escape_quoted(value: bytes) -> str:
    if _QUOTED_SAFE.fullmatch(value):
        return value.decode("ascii")
    return "".join([_QUOTED_TABLE[b] for b in value])


def format_line(line: EventLine) -> str:
    if not NODE.fullmatch(line.node):
        raise ValueError(f"node name {line.node!r} must match {NODE.pattern}")
    rules = ",".join(line.rules) if line.rules else "-"
    bare = [line.client, line.verdict, line.status, line.phase, line.score, line.severity,
            rules, line.id, line.noban or "-", line.addr]
    if not all(bare) or not _BARE_SAFE.fullmatch("".join(bare)):  # usually nothing to escape
        bare = [escape_bare(value) for value in bare]
    client, verdict, status, phase, score, severity, rules, unique_id, noban, addr = bare
    noban = f" noban={noban} addr={addr}" if line.noban else ""
    cut = "+" if "id" in line.truncated else ""
    head = (f"{line.time} modsec[{line.node}]: client={client}{noban} verdict={verdict}"
            f" status={status} phase={phase} score={score} severity={severity}"
            f" rules={rules} id={unique_id}{cut}")
    tail = []
    for name in QUOTED:
        value = getattr(line, name)
        cut = "+" if name in line.truncated else ""
        tail.append(f'{name}=-' if value is None else f'{name}="{escape_quoted(value)}"{cut}')
    return head + " " + " ".join(tail)


def format_event(event: Event, node: str, verdict: str) -> str:
    return format_line(from_event(event, node, verdict))


_Q = r'(?:-|"((?:[^"\\]|\\.)*)"(\+?))'
_LINE = re.compile(
    r"(\S+) modsec\[([A-Za-z0-9._-]{1,64})\]: client=(\S+)(?: noban=(\S+) addr=(\S+))?"
    r" verdict=(\S+) status=(\S+) phase=(\S+) score=(\S+) severity=(\S+) rules=(\S+)"
    rf" id=([^\s+]+)(\+?) method={_Q} host={_Q} uri={_Q} ua={_Q}$")
_UNESCAPE = re.compile(rb'\\(?:x([0-9a-f]{2})|(["\\]))')


def _unescape_bytes(text: str) -> bytes:
    return _UNESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]) if m.group(1) else m.group(2),
                         text.encode("ascii"))


def _unescape_bare(text: str) -> str:
    return _unescape_bytes(text).decode("utf-8", "surrogateescape")


def parse_line(text: str) -> EventLine:
    """Read a line written by format_line; raises ValueError for anything else."""
    match = _LINE.match(text.rstrip("\n"))
    if match is None:
        raise ValueError(f"not a modsec-tools event line: {text[:120]!r}")
    groups = match.groups()
    client, noban, addr, verdict, status, phase, score, severity, rules, unique_id = [
        None if value is None else _unescape_bare(value) for value in groups[2:12]]
    line = EventLine(groups[0], groups[1], client, verdict, status, phase, score, severity,
                     [] if rules == "-" else rules.split(","), unique_id,
                     None, None, None, None, noban=noban, addr=addr or "-")
    if groups[12]:
        line.truncated.append("id")
    for index, name in enumerate(QUOTED):
        value, cut = groups[13 + 2 * index], groups[14 + 2 * index]
        setattr(line, name, None if value is None else _unescape_bytes(value))
        if cut:
            line.truncated.append(name)
    return line
