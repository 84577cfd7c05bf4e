"""Rule messages: ``Message:`` text with its ``[key "value"]`` fields, and CRS anomaly scores.

Pure functions over str. Field values are kept exactly as ModSecurity logged them (its own
escaping included), so nothing is lost or reinterpreted.
"""
from __future__ import annotations

import functools
import re

from .event import Message

# A field is `[key "value"]`; ModSecurity escapes `"` and `\` inside values. Possessive loops
# keep hostile values linear-time.
_FIELD = re.compile(r'\[(\w+) "((?:[^"\\]++|\\.)*+)"\]')
_FIRST_FIELD = re.compile(r'\[\w+ "')
_PLAIN_FIELD = re.compile(r'\[(\w+) "([^"]*+)"\]')  # _FIELD where no backslash can occur
_APACHE_PREFIX = re.compile(r"(?:\[\w+ [^\]]*\] )*ModSecurity: ")


def parse_message(text: str) -> Message:
    """Split one message into its head and its fields (a shared, immutable Message)."""
    return _cached_message(text)


def _parse_message(text: str) -> Message:
    # ModSecurity always logs [file "..."] first; the regex is only a fallback.
    start = text.find(' [file "')
    if start == -1:
        head_end = _FIRST_FIELD.search(text)
        if head_end is None:
            return Message(text.rstrip())
        start = head_end.start()
    return Message(text[:start].rstrip(), _split_fields(text, start))


# A flood repeats the same few messages (same rule, same payload, same score line) across
# thousands of entries; Message is immutable, so one parsed instance serves all of them,
# with what each sink made of it (Message.renderings: ~5 KB a message in all).
_cached_message = functools.lru_cache(maxsize=1024)(_parse_message)


def keep_messages(count: int) -> None:
    """Cache this many parsed messages (1,024 by default: a daemon's memory budget counts
    them). An examiner worker keeps more: a scanner cycling through its payloads makes
    more distinct messages than that, and an LRU cache smaller than a cycle hits nothing."""
    global _cached_message
    _cached_message = functools.lru_cache(maxsize=count)(_parse_message)


def forget_cached() -> None:
    """Drop the parsed messages kept (a daemon gone idle gives its memory back)."""
    _cached_message.cache_clear()


def _split_fields(text: str, start: int) -> list[tuple[str, str]]:
    """The ``[key "value"]`` list. Without a backslash there is no escape, and the simpler
    pattern finds exactly what the definition does, with half the work."""
    if text.find("\\", start) == -1:
        return _PLAIN_FIELD.findall(text, start)
    return _FIELD.findall(text, start)


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
_SCORE_RANK = {rule: rank for rank, rule in enumerate(("980130", "980170", "949110"))}


def anomaly_scores(messages: list[Message]) -> tuple[int | None, dict[str, int], str | None]:
    """Inbound anomaly score, per-category scores and the rule id they were read from."""
    best: _Inbound | None = None
    for message in messages:
        found = message.renderings.get("inbound", _UNREAD)
        if found is _UNREAD:  # a Message is shared by the entries that repeat it: read once
            found = message.renderings["inbound"] = _inbound(message)
        if found is not None and (best is None or found[0] < best[0]):
            best = found  # type: ignore[assignment]
    if best is None:
        return None, {}, None
    _, total, categories, rule = best
    return total, dict(categories), rule


_Inbound = tuple[int, int, dict[str, int], str | None]  # rank, total, categories, rule id
_UNREAD = object()


def _inbound(message: Message) -> _Inbound | None:
    """The inbound score a message reports, ranked by how trustworthy its rule is."""
    text = message.first.get("msg")
    if text is None or "Inbound" not in text:
        return None
    total = _TOTAL.search(text) or _CRS4_INBOUND.search(text)
    if total is None:
        return None
    rule = message.rule_id
    rank = _SCORE_RANK.get(rule, len(_SCORE_RANK))  # type: ignore[arg-type]
    return rank, int(total.group(1)), _categories(text[total.end():]), rule


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
