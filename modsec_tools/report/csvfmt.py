"""The report as CSV (``--format csv``): one block per section, each a header row and its
rows, the first column naming the section, blocks separated by an empty line;
``sections`` keeps some (one section alone is a plain table for a spreadsheet).

Quoting is the csv module's (RFC 4180). A request-derived cell that a spreadsheet would
take for a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return)
gets a leading apostrophe, as OWASP advises against CSV injection; numbers are written
as numbers.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from .model import Report, iso

SECTIONS = ("totals", "clients", "rules", "targets", "statuses", "timeline", "nodes")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    if value is None:
        return ""
    return "'" + value if value.startswith(_FORMULA) else value


def _blocks(report: Report) -> dict[str, tuple[Sequence[str], Iterable[Sequence[Any]]]]:
    t = report.totals
    return {
        "totals": (("events", "blocked", "detected", "passed", "clients", "first_seen",
                    "last_seen"),
                   [(t.events, t.blocked, t.detected, t.passed, t.clients, iso(t.first_seen),
                     iso(t.last_seen))]),
        "clients": (("address", "requests", "blocked", "detected", "rules", "first_seen",
                     "last_seen", "banned"),
                    [(_text(c.address), c.requests, c.blocked, c.detected, c.rules,
                      iso(c.first_seen), iso(c.last_seen),
                      "" if c.banned is None else str(c.banned).lower())
                     for c in report.clients]),
        "rules": (("rule_id", "message", "severity", "matches", "addresses"),
                  [(_text(r.rule_id), _text(r.message), _text(r.severity), r.matches,
                    r.addresses) for r in report.rules]),
        "targets": (("host", "path", "requests", "blocked"),
                    [(_text(x.host), _text(x.path), x.requests, x.blocked)
                     for x in report.targets]),
        "statuses": (("status", "requests"),
                     [("" if s.status is None else s.status, s.requests)
                      for s in report.statuses]),
        "timeline": (("start", "blocked", "detected", "passed"),
                     [(iso(b.start), b.blocked, b.detected, b.passed)
                      for b in report.timeline]),
        "nodes": (("node", "requests", "blocked", "detected", "passed", "last_seen"),
                  [(_text(n.node), n.requests, n.blocked, n.detected, n.passed,
                    iso(n.last_seen)) for n in report.nodes]),
    }


def render_csv(report: Report, sections: Sequence[str] = SECTIONS) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    blocks = _blocks(report)
    for number, name in enumerate(sections):
        header, rows = blocks[name]
        if number:
            out.write("\r\n")
        writer.writerow(("section", *header))
        writer.writerows((name, *row) for row in rows)
    return out.getvalue()
