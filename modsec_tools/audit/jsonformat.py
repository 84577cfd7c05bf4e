"""ModSecurity 2.9 JSON audit entries (``SecAuditLogFormat JSON``): pure, no I/O.

ModSecurity copies raw request bytes into the JSON, so an entry may be invalid UTF-8; it is
decoded with surrogateescape, which keeps every byte. Header objects may repeat a name, so
objects are read as lists of pairs.
"""
from __future__ import annotations

import json
from typing import Any

from .errors import ParseError
from .event import Event
from .derive import finish_event
from .http import apply_request_line
from .messages import modsecurity_part_of_apache_error, parse_message
from .native import BODY_CAP
from .timestamps import parse_apache_time


class _Pairs(list):
    """A JSON object kept as its (key, value) pairs, duplicates included."""

    def get(self, key: str, default: Any = None) -> Any:
        for name, value in self:
            if name == key:
                return value
        return default


def _load(entry: bytes) -> _Pairs:
    try:
        document = json.loads(entry.decode("utf-8", "surrogateescape"), object_pairs_hook=_Pairs)
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"not a JSON audit entry: {exc}") from None
    if not isinstance(document, _Pairs):
        raise ParseError("JSON audit entry is not an object")
    return document


def _section(document: _Pairs, name: str) -> _Pairs:
    value = document.get(name)
    return value if isinstance(value, _Pairs) else _Pairs()


def _int(value: Any, limit: int = 2**31) -> int | None:
    """A number ModSecurity wrote, as an int or a string of ASCII digits; None if it is
    anything else or too large for the database (hostile input can hold anything)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit:
        return value
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _header_pairs(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, _Pairs):
        return []
    return [(str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in value]


def parse_json(entry: bytes, source: str) -> Event:
    """Parse one JSON entry. Raises ParseError when it has no usable transaction object."""
    document = _load(entry)
    transaction = _section(document, "transaction")
    unique_id = _str(transaction.get("transaction_id"))
    stamp = _str(transaction.get("time"))
    if not unique_id or not stamp:
        raise ParseError("JSON entry lacks transaction.transaction_id or transaction.time")
    peer_ip = _str(transaction.get("remote_address"))
    event = Event(unique_id=unique_id, timestamp=parse_apache_time(stamp), client_ip=peer_ip,
                  peer_ip=peer_ip, peer_port=_int(transaction.get("remote_port")),
                  local_ip=_str(transaction.get("local_address")),
                  local_port=_int(transaction.get("local_port")), source=source)
    _apply_json_request(event, _section(document, "request"))
    _apply_json_response(event, _section(document, "response"))
    _apply_audit_data(event, _section(document, "audit_data"))
    finish_event(event)
    for required in ("request", "response", "audit_data"):
        if not isinstance(document.get(required), _Pairs):
            event.incomplete = True
            event.problems.append(f"JSON entry has no {required} object")
    return event


def _apply_json_request(event: Event, request: _Pairs) -> None:
    line = _str(request.get("request_line"))
    if line is not None:
        apply_request_line(event, line)
    event.request_headers = _header_pairs(request.get("headers"))
    body = request.get("body")
    if isinstance(body, list):
        body = "".join(part for part in body if isinstance(part, str))
    if isinstance(body, str):
        if len(body) > BODY_CAP:
            event.problems.append(f"request body is {len(body)} characters; kept {BODY_CAP}")
            body = body[:BODY_CAP]
        event.request_body = body


def _apply_json_response(event: Event, response: _Pairs) -> None:
    event.response_protocol = _str(response.get("protocol"))
    event.status = _int(response.get("status"))
    event.response_headers = _header_pairs(response.get("headers"))
    if event.status is not None:
        event.response_status_line = f"{event.response_protocol or ''} {event.status}".strip()


def _apply_audit_data(event: Event, audit: _Pairs) -> None:
    messages = audit.get("messages")
    if isinstance(messages, list):
        event.messages = [parse_message(m) for m in messages if isinstance(m, str)]
    errors = audit.get("error_messages")
    if isinstance(errors, list):
        for text in errors:
            if isinstance(text, str) and modsecurity_part_of_apache_error(text) is None:
                event.apache_errors.append(text)
    action = _section(audit, "action")
    if action.get("intercepted") is True:
        event.intercepted = True
        event.phase = _int(action.get("phase"))
    stopwatch = _section(audit, "stopwatch")
    event.stopwatch = {str(k): v for k, v in stopwatch if isinstance(v, int)}
    event.engine_mode = _str(audit.get("engine_mode"))
    producer = audit.get("producer")
    event.producer = "; ".join(p for p in producer if isinstance(p, str)) \
        if isinstance(producer, list) else _str(producer)
    event.server = _str(audit.get("server"))
