"""Where entries go. Each sink is a module of this package behind one interface
(base.py); the registry below is the only place that names them all.

Adding a sink: a module with a ``Sink`` subclass (its ``open`` returns None while the
settings leave it off), and one line in ``REGISTRY``.
"""
from __future__ import annotations

from ..config import Settings
from .archive import ArchiveSink
from .base import Renderer, Rendering, Sink
from .database import DatabaseSink
from .eventlog import EventLogSink
from .jsonlines import JsonLinesSink

__all__ = ["REGISTRY", "Renderer", "Rendering", "Sink", "open_sinks"]

#: In the order a batch is written: the event log first, since fail2ban reads it.
REGISTRY: tuple[type[Sink], ...] = (EventLogSink, ArchiveSink, JsonLinesSink, DatabaseSink)


def open_sinks(settings: Settings) -> list[Sink]:
    """Every sink the settings turn on, opened; none left open if one fails."""
    sinks: list[Sink] = []
    try:
        for kind in REGISTRY:
            sink = kind.open(settings)
            if sink is not None:
                sinks.append(sink)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
