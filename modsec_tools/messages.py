"""Rule messages: ``Message:`` text with its ``[key "value"]`` fields, and CRS anomaly scores.

Pure functions over str. Field values are kept exactly as ModSecurity logged them (its own
escaping included), so nothing is lost or reinterpreted.
"""
from __future__ import annotations

import re

from .event import Message

# A field is `[key "value"]`; ModSecurity escapes `"` and `\` inside values, and Apache's own
# prefix uses unquoted ones (`[line 275]`). Possessive loops keep hostile values linear-time.
_FIELD = re.compile(r'\[(\w+) (?:"((?:[^"\\]++|\\.)*+)"|([^\]"]*+))\]')
_FIRST_FIELD = re.compile(r'\s*\[(\w+) "')
_SINGLE = {"id": "rule_id", "msg": "msg", "data": "data", "severity": "severity", "ver": "ver",
           "maturity": "maturity", "accuracy": "accuracy", "file": "file", "line": "line",
           "hostname": "hostname", "uri": "uri", "unique_id": "unique_id"}
_APACHE_PREFIX = re.compile(r"(?:\[\w+ [^\]]*\] )*ModSecurity: ")


def parse_message(text: str) -> Message:
    """Split one message into its head and fields; every field is kept, tags in order."""
    head_end = _FIRST_FIELD.search(text)
    if head_end is None:
        return Message(text=text.rstrip())
    message = Message(text=text[:head_end.start()].rstrip())
    fields = message.fields
    for key, quoted, bare in _FIELD.findall(text, head_end.start()):
        value = quoted if quoted or not bare else bare
        fields.append((key, value))
        if key == "tag":
            message.tags.append(value)
        else:
            attr = _SINGLE.get(key)
            if attr is not None and getattr(message, attr) is None:
                setattr(message, attr, value)
    return message


def modsecurity_part_of_apache_error(line: str) -> str | None:
    """The ModSecurity message inside an ``Apache-Error:`` line, or None for other modules' lines."""
    match = _APACHE_PREFIX.match(line)
    return line[match.end():] if match else None


# CRS 3.x: 949110 "Inbound Anomaly Score Exceeded (Total Score: 13)",
#          980130 "... (Total Inbound Score: 13 - SQLI=10,XSS=0,...)"
# CRS 4.x: 949110 as above, 980170 "Anomaly Scores: (Inbound Scores: blocking=5, detection=5, ..."
# CRS 2.x: "Inbound Anomaly Score Exceeded (Total Score: 5, SQLi=0, XSS=0)" /
#          "(Total Inbound Score: 5, SQLi=0, XSS=0)"
_TOTAL = re.compile(r"Total (?:Inbound )?Score: (\d+)")
_CRS4_INBOUND = re.compile(r"Inbound Scores: blocking=(\d+)")
_CATEGORY = re.compile(r"\b([A-Za-z_]+)=(\d+)")
_SCORE_RULE_PREFERENCE = ("980130", "980170", "949110")


def anomaly_scores(messages: list[Message]) -> tuple[int | None, dict[str, int]]:
    """Inbound anomaly score and per-category scores from the CRS reporting messages."""
    best: tuple[int, int, dict[str, int]] | None = None  # (preference, total, categories)
    for message in messages:
        text = message.msg or ""
        if "Score" not in text:
            continue
        total = _TOTAL.search(text) or _CRS4_INBOUND.search(text)
        if total is None:
            continue
        rank = (_SCORE_RULE_PREFERENCE.index(message.rule_id)
                if message.rule_id in _SCORE_RULE_PREFERENCE else len(_SCORE_RULE_PREFERENCE))
        if best is None or rank < best[0]:
            categories = _categories(text[total.end():])
            best = (rank, int(total.group(1)), categories)
    if best is None:
        return None, {}
    return best[1], best[2]


def _categories(text: str) -> dict[str, int]:
    found = {name.upper(): int(value) for name, value in _CATEGORY.findall(text)}
    for not_a_category in ("BLOCKING", "DETECTION", "THRESHOLD", "PER_PL"):
        found.pop(not_a_category, None)
    return found
