"""The event log fail2ban reads: one escaped line per transaction (docs/event-log.md)."""
from __future__ import annotations

from ..config import Settings
from ..eventline import format_event
from .base import PlainWire, Rendering
from .files import FileSink


class EventLine(PlainWire):
    def render(self, entry: Rendering) -> bytes:
        return format_event(entry.event, entry.node, entry.verdict).encode("ascii") + b"\n"


class EventLogSink(FileSink):
    name = "events"
    ahead = True

    @classmethod
    def open(cls, settings: Settings) -> "EventLogSink":
        return cls(settings.event_log, EventLine())
