"""A JSON-lines file of events, for log shippers (Vector, Fluent Bit, Filebeat)."""
from __future__ import annotations

import json

from ..config import Settings
from ..jsonout import event_to_dict
from .base import PlainWire, Rendering
from .files import FileSink


class JsonLine(PlainWire):
    def render(self, entry: Rendering) -> bytes:
        record = {"node": entry.node, **event_to_dict(entry.event, entry.verdict)}
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class JsonLinesSink(FileSink):
    name = "json"

    @classmethod
    def open(cls, settings: Settings) -> "JsonLinesSink | None":
        return cls(settings.json_log, JsonLine()) if settings.json_log else None
