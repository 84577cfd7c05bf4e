"""The report as one self-contained HTML page (``--format html``): inline CSS and SVG
charts, no script, font, image or stylesheet from anywhere, so it opens offline, prints,
and can be mailed or put behind Apache as it is.

Every string that came with a request (addresses, hosts, paths, rule messages, filters) is
escaped exactly once, here, by ``_e`` where it becomes HTML; numbers and times are ours.
A Content-Security-Policy that allows no script and no fetch is a second line of defence.
Each figure carries ``data-key`` (its path in the JSON report) and ``data-value``, so a
test or a scraper can check it against ``--format json``.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

from .model import Report, bucket_label, iso, short_time

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
COLORS = {"blocked": "#b3261e", "detected": "#d9822b", "passed": "#8a949e"}
STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;
max-width:72em;padding:0 1em;color:#1d232a;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}
.meta{color:#555;margin:0}.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}
.card{border:1px solid #d5d9dd;border-radius:4px;padding:.4em .8em;min-width:7em}
.card b{display:block;font-size:1.4em}
table{border-collapse:collapse;width:100%;margin:.3em 0}
th,td{text-align:left;padding:.2em .5em;border-bottom:1px solid #e3e6e9;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.t{overflow-wrap:anywhere}td.d,td.a{white-space:nowrap}
svg{display:block;width:100%;height:auto;margin:.4em 0}
svg text{font:11px system-ui,sans-serif;fill:#333}
.key span{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em;vertical-align:-.05em}
section{break-inside:avoid}
@media print{body{margin:0;max-width:none}.card{border-color:#999}
h2{break-after:avoid}tr{break-inside:avoid}}
"""


def _e(text: str | None) -> str:
    """The one escape of request-derived text (quotes too: it may land in attributes)."""
    return html.escape(text or "", quote=True)


def _num(key: str, value: int) -> str:
    return f'<td class="n" data-key="{key}" data-value="{value}">{value:,}</td>'


def render_html(report: Report) -> str:
    parts = [_head(report), _summary(report)]
    if report.totals.events:
        parts += [_timeline(report), _clients(report), _rules(report), _targets(report),
                  _statuses(report)]
        if report.nodes:
            parts.append(_nodes(report))
    else:
        parts.append("<p>No events match.</p>")
    parts.append(_fail2ban(report))
    parts.append("</body>\n</html>\n")
    return "\n".join(parts)


def _head(report: Report) -> str:
    f = report.filters
    shown = [(name, value) for name, value in (
        ("since", f.since and short_time(f.since) + " UTC"),
        ("until", f.until and short_time(f.until) + " UTC"), ("vhost", f.vhost),
        ("client", f.client), ("rule", f.rule), ("node", f.node), ("verdict", f.verdict))
        if value]
    filters = "; ".join(f"{name} <code>{_e(value)}</code>" for name, value in shown)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">\n'
            f'<meta name="generator" content="modsec-tools report">\n'
            f"<title>ModSecurity report {short_time(report.generated_at)} UTC</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>ModSecurity report</h1>\n"
            f'<p class="meta">Generated <time datetime="{iso(report.generated_at)}">'
            f"{short_time(report.generated_at)} UTC</time> by modsec-tools. "
            f"Filters: {filters or 'none'}.</p>")


def _summary(report: Report) -> str:
    t = report.totals
    cards = "".join(
        f'<div class="card">{label}<b data-key="totals.{key}" data-value="{value}">'
        f"{value:,}</b></div>"
        for label, key, value in (("Events", "events", t.events), ("Blocked", "blocked", t.blocked),
                                  ("Detected", "detected", t.detected),
                                  ("Passed", "passed", t.passed),
                                  ("Client addresses", "clients", t.clients)))
    span = (f"First event {short_time(t.first_seen)} UTC, last {short_time(t.last_seen)} UTC."
            if t.events else "")
    return f'<div class="cards">{cards}</div>\n<p class="meta">{span}</p>'


def _key() -> str:
    return ('<p class="key">' + "".join(f'<span style="background:{color}"></span>{name}'
                                         for name, color in COLORS.items()) + "</p>")


def _timeline(report: Report) -> str:
    """Stacked bars, one group per bucket (empty buckets keep their place)."""
    points = report.timeline
    count = max(len(points), 1)
    width, height, left, bottom = 900, 220, 48, 36
    plot_w, plot_h = width - left - 8, height - bottom - 10
    top = max((b.total for b in points), default=0) or 1
    step = plot_w / count
    bar = max(step * 0.8, 0.5)
    out = [f'<section><h2>Events per {report.bucket} (UTC)</h2>{_key()}',
           f'<svg class="chart timeline" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="events per {report.bucket}" data-points="{len(points)}">',
           f'<line x1="{left}" y1="{10 + plot_h}" x2="{width - 8}" y2="{10 + plot_h}" '
           'stroke="#999"/>',
           f'<text x="{left - 4}" y="14" text-anchor="end">{top:,}</text>',
           f'<text x="{left - 4}" y="{10 + plot_h}" text-anchor="end">0</text>']
    every = max(1, round(count / 8))
    for number, b in enumerate(points):
        x = left + number * step + (step - bar) / 2
        y = 10 + plot_h
        label = bucket_label(b.start, report.bucket)
        out.append(f'<g class="bucket" data-start="{iso(b.start)}">')
        for verdict in ("blocked", "detected", "passed"):
            value = getattr(b, verdict)
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            out.append(f'<rect class="bar {verdict}" x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" '
                       f'height="{h:.2f}" fill="{COLORS[verdict]}" '
                       f'data-key="timeline.points.{number}.{verdict}" data-value="{value}">'
                       f"<title>{label}: {value:,} {verdict}</title></rect>")
        out.append("</g>")
        if number % every == 0:
            out.append(f'<text x="{left + number * step + step / 2:.2f}" y="{height - 20}" '
                       f'text-anchor="middle">{label[5:] if report.bucket != "day" else label}'
                       "</text>")
    out.append("</svg></section>")
    return "\n".join(out)


def _bars(name: str, labels: Sequence[str], values: Sequence[int], key: str) -> str:
    """A horizontal bar per row of a top list (labels already escaped; ``key``: the JSON
    path of the values, ``{}`` for the row's index)."""
    top = max(values, default=0) or 1
    row, left, width = 18, 260, 900
    height = row * len(values) + 4
    out = [f'<svg class="chart {name}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{name}" data-bars="{len(values)}">']
    for number, (label, value) in enumerate(zip(labels, values)):
        y = number * row + 2
        w = max((width - left - 70) * value / top, 1)
        out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{label}</text>'
                   f'<rect class="bar" x="{left}" y="{y}" width="{w:.2f}" height="{row - 5}" '
                   f'fill="#4a6fa5" data-key="{key.format(number)}" data-value="{value}">'
                   f"<title>{label}: {value:,}</title></rect>"
                   f'<text x="{left + w + 4:.2f}" y="{y + 12}">{value:,}</text>')
    out.append("</svg>")
    return "".join(out)


def _short(text: str, size: int = 40) -> str:
    return text if len(text) <= size else text[:size - 1] + "…"


def _clients(report: Report) -> str:
    rows = "".join(
        f'<tr><td class="a" data-key="clients.{i}.address">{_e(c.address)}</td>'
        f'{_num(f"clients.{i}.requests", c.requests)}{_num(f"clients.{i}.blocked", c.blocked)}'
        f'{_num(f"clients.{i}.detected", c.detected)}{_num(f"clients.{i}.rules", c.rules)}'
        f'<td class="d">{short_time(c.first_seen)}</td><td class="d">{short_time(c.last_seen)}</td>'
        f"<td>{'?' if c.banned is None else 'yes' if c.banned else 'no'}</td></tr>"
        for i, c in enumerate(report.clients))
    chart = _bars("clients", [_e(_short(c.address)) for c in report.clients],
                  [c.requests for c in report.clients], "clients.{}.requests")
    return ("<section><h2>Top client addresses</h2>" + chart +
            '<table><tr><th>address</th><th class="n">requests</th><th class="n">blocked</th>'
            '<th class="n">detected</th><th class="n">rules hit</th><th>first seen (UTC)</th>'
            f"<th>last seen (UTC)</th><th>banned now</th></tr>{rows}</table></section>")


def _rules(report: Report) -> str:
    rows = "".join(
        f'<tr><td data-key="rules.{i}.rule_id">{_e(r.rule_id)}</td><td>{_e(r.severity) or "-"}</td>'
        f'{_num(f"rules.{i}.matches", r.matches)}{_num(f"rules.{i}.addresses", r.addresses)}'
        f'<td class="t">{_e(r.message)}</td></tr>' for i, r in enumerate(report.rules))
    chart = _bars("rules", [_e(r.rule_id) + " " + _e(_short(r.message, 30))
                            for r in report.rules],
                  [r.matches for r in report.rules], "rules.{}.matches")
    return ("<section><h2>Top rules</h2>" + chart +
            '<table><tr><th>rule</th><th>severity</th><th class="n">matches</th>'
            f'<th class="n">addresses</th><th>message</th></tr>{rows}</table></section>')


def _targets(report: Report) -> str:
    rows = "".join(
        f'<tr><td class="t">{_e(t.host)}</td><td class="t">{_e(t.path)}</td>'
        f'{_num(f"targets.{i}.requests", t.requests)}{_num(f"targets.{i}.blocked", t.blocked)}'
        "</tr>" for i, t in enumerate(report.targets))
    chart = _bars("targets", [_e(_short(t.host + t.path)) for t in report.targets],
                  [t.requests for t in report.targets], "targets.{}.requests")
    return ("<section><h2>Top targets</h2>" + chart +
            '<table><tr><th>virtual host</th><th>path</th><th class="n">requests</th>'
            f'<th class="n">blocked</th></tr>{rows}</table></section>')


def _statuses(report: Report) -> str:
    labels = ["-" if s.status is None else str(s.status) for s in report.statuses]
    rows = "".join(f"<tr><td>{label}</td>{_num(f'statuses.{i}.requests', s.requests)}</tr>"
                   for i, (label, s) in enumerate(zip(labels, report.statuses)))
    chart = _bars("statuses", labels, [s.requests for s in report.statuses],
                  "statuses.{}.requests")
    return ("<section><h2>Response status codes</h2>" + chart +
            f'<table><tr><th>status</th><th class="n">requests</th></tr>{rows}</table>'
            "</section>")


def _nodes(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{_e(n.node)}</td>{_num(f'nodes.{i}.requests', n.requests)}"
        f"{_num(f'nodes.{i}.blocked', n.blocked)}{_num(f'nodes.{i}.detected', n.detected)}"
        f"{_num(f'nodes.{i}.passed', n.passed)}<td class=\"d\">{short_time(n.last_seen)}</td></tr>"
        for i, n in enumerate(report.nodes))
    return ('<section><h2>Nodes</h2><table><tr><th>node</th><th class="n">requests</th>'
            '<th class="n">blocked</th><th class="n">detected</th><th class="n">passed</th>'
            f"<th>last seen (UTC)</th></tr>{rows}</table></section>")


def _fail2ban(report: Report) -> str:
    state = report.fail2ban
    if not state.jails:
        return ""
    jails = ", ".join(_e(j) for j in state.jails)
    if state.reachable:
        return (f'<p class="meta">fail2ban jails {jails}: {len(state.banned):,} addresses '
                "banned now.</p>")
    return f'<p class="meta">fail2ban ({jails}) not asked: {_e(state.error)}.</p>'
