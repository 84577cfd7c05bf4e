"""What an event means for banning: blocked, detected or passed.

fail2ban's filter only counts verdict words, so the policy (which severity or score turns a
non-intercepted match into ``detected``) lives here, in modsec-tools' configuration.
"""
from __future__ import annotations

from dataclasses import dataclass

from .event import SEVERITY_RANK, Event

BLOCKED, DETECTED, PASSED = "blocked", "detected", "passed"


@dataclass(frozen=True, slots=True)
class VerdictPolicy:
    detect_min_severity: str = "CRITICAL"   # a rule at least this severe makes it `detected`
    detect_min_score: int = 5               # or an inbound anomaly score at least this high

    def __post_init__(self) -> None:
        if self.detect_min_severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {self.detect_min_severity!r}; "
                             f"use one of {', '.join(SEVERITY_RANK)}")

    def verdict(self, event: Event) -> str:
        if event.intercepted:
            return BLOCKED
        if event.anomaly_score is not None and event.anomaly_score >= self.detect_min_score:
            return DETECTED
        limit = SEVERITY_RANK[self.detect_min_severity]
        for message in event.messages:
            if message.rule_id is not None and SEVERITY_RANK.get(message.severity or "", 99) <= limit:
                return DETECTED
        return PASSED
