"""The report as terminal tables (the default output): ``width`` columns at most (80 by
default), one small table per concern, numbers right-aligned. A text column that cannot fit
is cut with '…'; an address that cannot fit gets a line of its own above its numbers
(a cut address would be a wrong one)."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from .cells import escaped, fit, width as cells
from .model import Report, bucket_label, short_time

SPARKS = " ▁▂▃▄▅▆▇█"


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    size: int = 0          # cells; 0: this column takes what the others leave
    right: bool = True     # numbers right-aligned
    own_line: bool = False  # a value too long goes on a line of its own (never cut)


def render_text(report: Report, width: int = 80) -> str:
    width = max(width, 60)
    parts = [_wrap(_heading(report), width), _wrap(_summary(report), width)]
    if report.totals.events:
        parts += [_clients(report, width), _rules(report, width), _targets(report, width),
                  _statuses(report, width), _timeline(report, width)]
        if len(report.nodes) > 1:
            parts.append(_nodes(report, width))
    else:
        parts.append("No events match.\n")
    parts.append(_wrap(_fail2ban(report), width))
    return "\n".join(part for part in parts if part)


def _wrap(text: str, width: int) -> str:
    """Prose lines folded at ``width`` (a long value is broken, never left to overflow)."""
    return "".join(textwrap.fill(line, width, subsequent_indent="  ") + "\n"
                   for line in text.splitlines())


def _heading(report: Report) -> str:
    f = report.filters
    lines = [f"modsec-tools report, generated {short_time(report.generated_at)} UTC"]
    span = (f"{short_time(report.totals.first_seen)} to {short_time(report.totals.last_seen)}"
            " UTC" if report.totals.events else "no events")
    lines.append(f"Events seen: {span}")
    shown = [f"{name} {escaped(str(value))}" for name, value in (
        ("since", f.since and short_time(f.since) + " UTC"),
        ("until", f.until and short_time(f.until) + " UTC"),
        ("vhost", f.vhost), ("client", f.client), ("rule", f.rule), ("node", f.node),
        ("verdict", f.verdict)) if value]
    if shown:
        lines.append("Filters: " + ", ".join(shown))
    return "\n".join(lines) + "\n"


def _summary(report: Report) -> str:
    t = report.totals
    return (f"{t.events:,} events: {t.blocked:,} blocked, {t.detected:,} detected, "
            f"{t.passed:,} passed; {t.clients:,} client addresses\n")


def _table(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]],
           width: int) -> str:
    fixed = sum(c.size for c in columns if c.size) + len(columns) - 1
    flex = max(width - fixed, 8)
    sizes = [c.size or flex for c in columns]
    lines = [title, _line([c.title for c in columns], columns, sizes)]
    for row in rows:
        spilled = [i for i, (c, value) in enumerate(zip(columns, row))
                   if c.own_line and cells(value) > sizes[i]]
        if spilled:
            lines.append(row[spilled[0]])
            row = [("" if i == spilled[0] else value) for i, value in enumerate(row)]
        lines.append(_line(row, columns, sizes))
    return "\n".join(lines) + "\n"


def _line(values: Sequence[str], columns: Sequence[Column], sizes: Sequence[int]) -> str:
    out = []
    for value, column, size in zip(values, columns, sizes):
        text = fit(value, size)
        out.append(" " * (size - cells(value)) + value if column.right and cells(value) <= size
                   else text)
    return " ".join(out).rstrip()


def _n(number: int) -> str:
    return f"{number:,}"


def _clients(report: Report, width: int) -> str:
    columns = (Column("address", right=False, own_line=True), Column("requests", 9),
               Column("blocked", 9), Column("detected", 8), Column("rules", 5),
               Column("last seen", 11, right=False), Column("f2b", 3, right=False))
    rows = [(escaped(c.address), _n(c.requests), _n(c.blocked), _n(c.detected), _n(c.rules),
             short_time(c.last_seen)[5:16], _banned(c.banned)) for c in report.clients]
    return _table("Top client addresses (f2b: banned now)", columns, rows, width)


def _banned(banned: bool | None) -> str:
    return "?" if banned is None else "yes" if banned else "no"


def _rules(report: Report, width: int) -> str:
    columns = (Column("rule", 7, right=False), Column("severity", 8, right=False),
               Column("matches", 9), Column("addresses", 9), Column("message", right=False))
    rows = [(escaped(r.rule_id), escaped(r.severity) or "-", _n(r.matches), _n(r.addresses),
             escaped(r.message)) for r in report.rules]
    return _table("Top rules", columns, rows, width)


def _targets(report: Report, width: int) -> str:
    columns = (Column("requests", 9), Column("blocked", 9), Column("host", 24, right=False),
               Column("path", right=False))
    rows = [(_n(t.requests), _n(t.blocked), escaped(t.host), escaped(t.path))
            for t in report.targets]
    return _table("Top targets", columns, rows, width)


def _statuses(report: Report, width: int) -> str:
    top = max((s.requests for s in report.statuses), default=0)
    columns = (Column("status", 6), Column("requests", 9), Column("", right=False))
    bar = width - 6 - 9 - 2
    rows = [("-" if s.status is None else str(s.status), _n(s.requests),
             "#" * max(1, round(bar * s.requests / top)) if top else "")
            for s in report.statuses]
    return _table("Response status codes", columns, rows, width)


def _timeline(report: Report, width: int) -> str:
    """One character a bucket, its height the bucket's events (▁ to █; blank: none)."""
    points = report.timeline
    top = max((b.total for b in points), default=0)
    label = len(bucket_label(points[0].start, report.bucket)) if points else 0
    per_line = max(width - label - 2, 10)
    lines = [f"Events per {report.bucket} (UTC; █ = {top:,})"]
    for start in range(0, len(points), per_line):
        chunk = points[start:start + per_line]
        marks = "".join(SPARKS[0] if not b.total else
                        SPARKS[max(1, round(8 * b.total / top))] for b in chunk)
        lines.append(f"{bucket_label(chunk[0].start, report.bucket)}  {marks}")
    busiest = max(points, key=lambda b: b.total, default=None)
    if busiest is not None and busiest.total:
        lines.append(f"busiest {report.bucket}: {bucket_label(busiest.start, report.bucket)}, "
                     f"{busiest.blocked:,} blocked, {busiest.detected:,} detected, "
                     f"{busiest.passed:,} passed")
    return "\n".join(lines) + "\n"


def _nodes(report: Report, width: int) -> str:
    columns = (Column("node", right=False), Column("requests", 10), Column("blocked", 10),
               Column("detected", 10), Column("passed", 10), Column("last seen", 11, right=False))
    rows = [(escaped(n.node), _n(n.requests), _n(n.blocked), _n(n.detected), _n(n.passed),
             short_time(n.last_seen)[5:16]) for n in report.nodes]
    return _table("Nodes", columns, rows, width)


def _fail2ban(report: Report) -> str:
    state = report.fail2ban
    if not state.jails:
        return ""
    jails = ", ".join(state.jails)
    if state.reachable:
        return f"fail2ban: banned now in {jails}: {len(state.banned):,} addresses\n"
    return f"fail2ban ({jails}) not asked: {escaped(state.error)}\n"
