"""The Concurrent-mode index log (the ``SecAuditLog`` file): one line per closed entry file.

``host rip ruser luser [time] "request" status bytes "referer" "ua" unique_id "session"
/relpath offset size md5:hex``. ModSecurity writes the line only after the entry file is
closed, so a line means the file is complete, and size + md5 let us prove it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import IntegrityError, ParseError

_Q = r'"((?:[^"\\]|\\.)*)"'
_LINE = re.compile(
    r"(\S+) (\S+) (\S+) (\S+) \[([^\]]+)\] " + _Q + r" ([0-9]{3}|-) (\S+) " + _Q + " " + _Q +
    r" (\S+) " + _Q + r" (/\S+) ([0-9]{1,18}) ([0-9]{1,18}) md5:([0-9a-f]{32})\s*$")


@dataclass(frozen=True, slots=True)
class IndexLine:
    vhost: str
    remote_ip: str
    time: str
    request_line: str
    status: int | None
    unique_id: str
    relpath: str          # relative to SecAuditLogStorageDir, starts with "/"
    offset: int
    size: int
    md5: str


def parse_index_line(line: str) -> IndexLine:
    match = _LINE.match(line.rstrip("\r\n"))
    if match is None:
        raise ParseError(f"not an index-log line: {line[:120]!r}")
    (vhost, rip, _ruser, _luser, time, request, status, _bytes, _ref, _ua, unique_id,
     _session, relpath, offset, size, md5) = match.groups()
    return IndexLine(vhost, rip, time, request, int(status) if status != "-" else None,
                     unique_id, relpath, int(offset), int(size), md5)


def verify(entry: bytes, index: IndexLine) -> None:
    """Raise IntegrityError unless ``entry`` is exactly the file the index line describes."""
    if len(entry) != index.size:
        raise IntegrityError(f"size {len(entry)} differs from index log's {index.size}")
    digest = hashlib.md5(entry, usedforsecurity=False).hexdigest()
    if digest != index.md5:
        raise IntegrityError(f"md5 {digest} differs from index log's {index.md5}")
