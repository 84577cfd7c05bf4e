"""Facts that depend on several parts of an entry, shared by the native and JSON parsers."""
from __future__ import annotations

import re

from .event import SEVERITIES, SEVERITY_RANK, Event
from .messages import anomaly_scores, derived_inbound_score

_UNRANKED = len(SEVERITIES)
_DENIED_CODE = re.compile(r"Access denied with (?:code ([0-9]{3})|.*?status ([0-9]{3}))")
_PHASE = re.compile(r"\(phase ([0-9])\)")


def finish_event(event: Event) -> None:
    """Scores from the CRS messages; status and phase from the denial when F/H lack them
    (HTTP/0.9 requests have an empty section F)."""
    event.host = event.header("Host")
    event.user_agent = event.header("User-Agent")
    rules = [m.first.get("id") for m in event.messages]
    event.rule_ids = [rule for rule in rules if rule is not None] if None in rules else rules
    rank = min([SEVERITY_RANK.get(m.first.get("severity"), _UNRANKED) for m in event.messages],
               default=_UNRANKED)
    event.severity = SEVERITIES[rank] if rank != _UNRANKED else None
    event.anomaly_score, event.scores, event.score_source = anomaly_scores(event.messages)
    if event.anomaly_score is None and _crs_scored(event):
        event.anomaly_score = derived_inbound_score(event.messages)
        event.score_source = "derived"
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


def decisive_message(event: Event) -> int | None:
    """The position of the message that decided, the one to show for the event in one row
    (the original tool's table, now the ``logs`` view): the first of the most severe; among
    messages without a severity, the denial; else the first with a rule id. With the CRS the
    attack's own rule (942100 "SQL Injection Attack Detected", CRITICAL) comes before the
    scoring rule that denied (949110, CRITICAL too) and after incidental warnings (920350
    "Host header is a numeric IP address", WARNING)."""
    messages = event.messages
    ranked = [(SEVERITY_RANK[m.first["severity"]], i) for i, m in enumerate(messages)
              if m.first.get("severity") in SEVERITY_RANK]
    if ranked:
        return min(ranked)[1]
    return next((i for i, m in enumerate(messages) if m.is_denial),
                next((i for i, m in enumerate(messages) if "id" in m.first),
                     0 if messages else None))


def _crs_scored(event: Event) -> bool:
    """CRS ran its phase-2 scoring: the producer names OWASP_CRS and phase 2 took time.
    (Requests stopped in phase 1 never reached the scoring rules: no score, not zero.)"""
    return bool(event.producer and "OWASP_CRS" in event.producer
                and event.stopwatch.get("p2", 0) > 0)
