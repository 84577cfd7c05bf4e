"""Facts that depend on several parts of an entry, shared by the native and JSON parsers."""
from __future__ import annotations

import re

from .event import Event
from .messages import anomaly_scores

_DENIED_CODE = re.compile(r"Access denied with (?:code (\d{3})|.*?status (\d{3}))")
_PHASE = re.compile(r"\(phase (\d)\)")


def finish_event(event: Event) -> None:
    """Scores from the CRS messages; status and phase from the denial when F/H lack them
    (HTTP/0.9 requests have an empty section F)."""
    event.anomaly_score, event.scores = anomaly_scores(event.messages)
    for message in event.messages:
        if not message.is_denial:
            continue
        if event.status is None:
            code = _DENIED_CODE.match(message.text)
            if code:
                event.status = int(code.group(1) or code.group(2))
        if event.phase is None:
            phase = _PHASE.search(message.text)
            if phase:
                event.phase = int(phase.group(1))
        break
