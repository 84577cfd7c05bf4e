"""Rule messages: ``Message:`` text with its ``[key "value"]`` fields, and CRS anomaly scores.

Pure functions over str. Field values are kept exactly as ModSecurity logged them (its own
escaping included), so nothing is lost or reinterpreted.
"""
from __future__ import annotations

import re

from .event import Message

# A field is `[key "value"]`; ModSecurity escapes `"` and `\` inside values. Possessive loops
# keep hostile values linear-time.
_FIELD = re.compile(r'\[(\w+) "((?:[^"\\]++|\\.)*+)"\]')
_FIRST_FIELD = re.compile(r'\[\w+ "')
_APACHE_PREFIX = re.compile(r"(?:\[\w+ [^\]]*\] )*ModSecurity: ")


def parse_message(text: str) -> Message:
    """Split one message into its head and its fields."""
    # ModSecurity always logs [file "..."] first; the regex is only a fallback.
    start = text.find(' [file "')
    if start == -1:
        head_end = _FIRST_FIELD.search(text)
        if head_end is None:
            return Message(text.rstrip())
        start = head_end.start()
    return Message(text[:start].rstrip(), _split_fields(text, start))


def _split_fields(text: str, start: int) -> list[tuple[str, str]]:
    """The ``[key "value"]`` list by splitting on ``"] [``, several times faster than the
    regex; anything unusual (an escaped quote before ``] [``, a piece that is not
    ``key "value``) falls back to the regex, which is the definition."""
    body = text[start:].strip()
    if body[:1] != "[" or body[-2:] != '"]' or '\\"] [' in body:
        return _FIELD.findall(text, start)
    parts = [piece.partition(' "') for piece in body[1:-2].split('"] [')]
    fields = [(key, value) for key, sep, value in parts if sep and " " not in key]
    return fields if len(fields) == len(parts) else _FIELD.findall(text, start)


def modsecurity_part_of_apache_error(line: str) -> str | None:
    """The ModSecurity message inside an ``Apache-Error:`` line, or None for other modules' lines."""
    match = _APACHE_PREFIX.match(line)
    return line[match.end():] if match else None


# CRS 3.x: 949110 "Inbound Anomaly Score Exceeded (Total Score: 13)",
#          980130 "... (Total Inbound Score: 13 - SQLI=10,XSS=0,...)"
# CRS 4.x: 949110 as above, 980170 "Anomaly Scores: (Inbound Scores: blocking=5, detection=5, ..."
# CRS 2.x: "Inbound Anomaly Score Exceeded (Total Score: 5, SQLi=0, XSS=0)" /
#          "(Total Inbound Score: 5, SQLi=0, XSS=0)"
_TOTAL = re.compile(r"Total (?:Inbound )?Score: ([0-9]{1,9})\b")
_CRS4_INBOUND = re.compile(r"Inbound Scores: blocking=([0-9]{1,9})\b")
_CATEGORY = re.compile(r"\b([A-Za-z_]+)=([0-9]{1,9})\b")
_SCORE_RULE_PREFERENCE = ("980130", "980170", "949110")


def anomaly_scores(messages: list[Message]) -> tuple[int | None, dict[str, int], str | None]:
    """Inbound anomaly score, per-category scores and the rule id they were read from."""
    best: tuple[int, int, dict[str, int], str | None] | None = None
    for message in messages:
        text = message.first.get("msg")
        if text is None or "Inbound" not in text:
            continue
        total = _TOTAL.search(text) or _CRS4_INBOUND.search(text)
        if total is None:
            continue
        rule = message.rule_id
        rank = (_SCORE_RULE_PREFERENCE.index(rule)
                if rule in _SCORE_RULE_PREFERENCE else len(_SCORE_RULE_PREFERENCE))
        if best is None or rank < best[0]:
            best = (rank, int(total.group(1)), _categories(text[total.end():]), rule)
    if best is None:
        return None, {}, None
    return best[1], best[2], best[3]


# CRS's default points per severity (tx.critical_anomaly_score etc. in crs-setup.conf).
SEVERITY_POINTS = {"CRITICAL": 5, "ERROR": 4, "WARNING": 3, "NOTICE": 2}


def derived_inbound_score(messages: list[Message]) -> int:
    """The inbound score CRS accumulated, for entries below the reporting threshold: the
    points of every logged inbound CRS detection rule (911000-948999)."""
    total = 0
    for message in messages:
        rule = message.rule_id
        if rule is not None and len(rule) == 6 and rule.isascii() and rule.isdigit() \
                and 911000 <= int(rule) < 949000:
            total += SEVERITY_POINTS.get(message.severity or "", 0)
    return total


def _categories(text: str) -> dict[str, int]:
    found = {name.upper(): int(value) for name, value in _CATEGORY.findall(text)}
    for not_a_category in ("BLOCKING", "DETECTION", "THRESHOLD", "PER_PL"):
        found.pop(not_a_category, None)
    return found
