"""The normalized transaction record every parser produces and every sink consumes.

Text fields hold the bytes ModSecurity wrote, decoded as UTF-8 with ``surrogateescape``:
valid UTF-8 reads naturally, and any other byte survives as a lone surrogate, so
``value.encode("utf-8", "surrogateescape")`` gives back the exact original bytes.
"""
from __future__ import annotations

import codecs
import datetime as dt
from dataclasses import dataclass, field

#: ModSecurity severities, most severe first (index = syslog level).
SEVERITIES = ("EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}


def _raw_errors(error: UnicodeError) -> tuple[bytes, int]:
    """surrogateescape for U+DC80..U+DCFF (bytes that were not UTF-8), and the surrogate's
    own UTF-8-style bytes for any other lone surrogate (a JSON entry can hold \\ud800)."""
    assert isinstance(error, UnicodeEncodeError)
    chunk = error.object[error.start:error.end]
    out = bytearray()
    for char in chunk:
        point = ord(char)
        out += bytes([point - 0xDC00]) if 0xDC80 <= point <= 0xDCFF else \
            char.encode("utf-8", "surrogatepass")
    return bytes(out), error.end


codecs.register_error("modsec-raw", _raw_errors)


def raw(text: str | None) -> bytes | None:
    """The original bytes of a field (decoded with surrogateescape); never fails."""
    return None if text is None else text.encode("utf-8", "modsec-raw")


def printable(text: str | None) -> str | None:
    """Text that any database or terminal accepts: lone surrogates become U+FFFD."""
    if text is None or text.isascii():
        return text
    return text.encode("utf-8", "modsec-raw").decode("utf-8", "replace")


class Message:
    """One rule message (a ``Message:`` line of section H, or an entry of ``audit_data.messages``).

    ``fields`` holds every ``[key "value"]`` in order, duplicates included, values exactly as
    logged; the named properties read the first occurrence of their key.
    """

    __slots__ = ("text", "fields", "first", "renderings")

    def __init__(self, text: str, fields: list[tuple[str, str]] | None = None) -> None:
        self.text = text            # the head, e.g. "Warning. Pattern match ... at ARGS:q."
        self.fields = fields or []
        self.first = dict(reversed(self.fields))  # key → its first value
        # What the parser and the sinks derive from this message, kept with it: the parser
        # shares one Message among all the entries that repeat it (a flood repeats a few),
        # so each is made once.
        self.renderings: dict[str, object] = {}

    def get(self, key: str) -> str | None:
        return self.first.get(key)

    rule_id = property(lambda self: self.first.get("id"))
    msg = property(lambda self: self.first.get("msg"))
    data = property(lambda self: self.first.get("data"))
    severity = property(lambda self: self.first.get("severity"))
    ver = property(lambda self: self.first.get("ver"))
    maturity = property(lambda self: self.first.get("maturity"))
    accuracy = property(lambda self: self.first.get("accuracy"))
    file = property(lambda self: self.first.get("file"))
    line = property(lambda self: self.first.get("line"))
    hostname = property(lambda self: self.first.get("hostname"))
    uri = property(lambda self: self.first.get("uri"))
    unique_id = property(lambda self: self.first.get("unique_id"))

    @property
    def tags(self) -> list[str]:
        return [value for key, value in self.fields if key == "tag"]

    @property
    def is_denial(self) -> bool:
        return self.text.startswith("Access denied")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Message) and self.text == other.text
                and self.fields == other.fields)

    def __repr__(self) -> str:
        return f"Message({self.text!r}, {self.fields!r})"


@dataclass(slots=True)
class Event:
    """One audited transaction."""

    unique_id: str
    timestamp: dt.datetime | None            # section A / transaction.time, aware, microseconds
    client_ip: str | None                    # after trusted-proxy resolution
    peer_ip: str | None                      # section A address
    peer_port: int | None
    local_ip: str | None
    local_port: int | None
    source: str                              # file, serial log + offset, or index log it came from
    client_unbannable: str | None = None     # why client_ip must not be banned (clientip.py)
    request_line: str | None = None
    method: str | None = None
    uri: str | None = None                   # raw request-target
    protocol: str | None = None
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: str | None = None
    response_status_line: str | None = None
    response_protocol: str | None = None
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    apache_errors: list[str] = field(default_factory=list)  # non-ModSecurity error lines
    trailer: list[tuple[str, str]] = field(default_factory=list)  # every section H line
    intercepted: bool = False
    phase: int | None = None
    anomaly_score: int | None = None
    scores: dict[str, int] = field(default_factory=dict)  # SQLI, XSS, ... when reported
    engine_mode: str | None = None
    producer: str | None = None
    server: str | None = None
    stopwatch_start_us: int | None = None
    # Derived once by derive.finish_event (the parsers call it), read many times by sinks:
    host: str | None = None                  # Host header
    user_agent: str | None = None            # User-Agent header
    rule_ids: list[str] = field(default_factory=list)   # in order of appearance
    severity: str | None = None              # most severe among the messages
    stopwatch: dict[str, int] = field(default_factory=dict)  # Stopwatch2 phase timings (µs)
    score_source: str | None = None          # "980130", "949110", ... or "derived"
    incomplete: bool = False                 # no Z boundary / truncated JSON: partial data
    problems: list[str] = field(default_factory=list)  # non-fatal oddities noticed while parsing

    def header(self, name: str) -> str | None:
        """First request header called ``name`` (case-insensitive)."""
        wanted = name.lower()
        for key, value in self.request_headers:
            if key.lower() == wanted:
                return value
        return None

    @property
    def first_message(self) -> Message | None:
        """The message the original tool stored: the first one that carries a rule id."""
        for message in self.messages:
            if message.rule_id is not None:
                return message
        return self.messages[0] if self.messages else None
