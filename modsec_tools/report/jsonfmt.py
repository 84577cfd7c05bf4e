"""The report as one JSON document (``--format json``), for jq and scripts.

Its keys are stable (docs/report.md lists them; ``format`` changes only if one changes
meaning). Times are UTC, ISO 8601 with a ``Z``; request-derived strings are JSON strings
(json.dumps escapes every control character, and ``<``, ``>`` and ``&`` as well, so that
the document can be inlined in a page without becoming markup).
"""
from __future__ import annotations

import json
from typing import Any

from .model import Report, iso

FORMAT = 1


def report_dict(report: Report) -> dict[str, Any]:
    f, t = report.filters, report.totals
    return {
        "format": FORMAT,
        "generated_at": iso(report.generated_at),
        "filters": {"since": iso(f.since), "until": iso(f.until), "vhost": f.vhost,
                    "client": f.client, "rule": f.rule, "node": f.node,
                    "verdict": f.verdict},
        "top": report.top,
        "totals": {"events": t.events, "blocked": t.blocked, "detected": t.detected,
                   "passed": t.passed, "clients": t.clients, "first_seen": iso(t.first_seen),
                   "last_seen": iso(t.last_seen)},
        "clients": [{"address": c.address, "requests": c.requests, "blocked": c.blocked,
                     "detected": c.detected, "rules": c.rules,
                     "first_seen": iso(c.first_seen), "last_seen": iso(c.last_seen),
                     "banned": c.banned} for c in report.clients],
        "rules": [{"rule_id": r.rule_id, "message": r.message, "severity": r.severity,
                   "matches": r.matches, "addresses": r.addresses}
                  for r in report.rules],
        "targets": [{"host": x.host, "path": x.path, "requests": x.requests,
                     "blocked": x.blocked} for x in report.targets],
        "statuses": [{"status": s.status, "requests": s.requests} for s in report.statuses],
        "timeline": {"bucket": report.bucket,
                     "points": [{"start": iso(b.start), "blocked": b.blocked,
                                 "detected": b.detected, "passed": b.passed}
                                for b in report.timeline]},
        "nodes": [{"node": n.node, "requests": n.requests, "blocked": n.blocked,
                   "detected": n.detected, "passed": n.passed, "last_seen": iso(n.last_seen)}
                  for n in report.nodes],
        "fail2ban": {"jails": list(report.fail2ban.jails),
                     "reachable": report.fail2ban.reachable,
                     "error": report.fail2ban.error or None},
    }


def render_json(report: Report) -> str:
    text = json.dumps(report_dict(report), indent=1, ensure_ascii=False)
    return _inert(text) + "\n"


def _inert(text: str) -> str:
    """``<``, ``>`` and ``&`` as \\u escapes (the same JSON value)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
