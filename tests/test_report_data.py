"""The report tests' data (no tests here): every entry of the repository's corpus slices
(tests/data/corpus, all seven runs, stored as three nodes), plus entries made hostile from
a real one, stored with the rows ingest stores; and the figures a report must show,
computed here from plain SQL over the same tables (the rows read back whole, then filtered
and counted in Python), independently of modsec_tools.report.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from modsec_tools.db.rows import event_row
from modsec_tools.audit.entry import parse_entry
from modsec_tools.tree.sources import RawEntry, iter_path
from modsec_tools.audit.verdict import VerdictPolicy
from tests import corpus
from tests.ingest_helpers import tree_files_from_tar

#: Each run stored as one node of a fleet.
NODES = {"r1_relevant_concurrent": "web1", "r2_auditengine_on_concurrent": "web1",
         "r3_json_concurrent": "web2", "r4_json_serial": "web2", "r5_serial": "web3",
         "r6_detectiononly_concurrent": "web3", "r7_pl2_concurrent_noremoteip": "web3"}
HOSTILE_NODE = "web1"
#: What an attacker puts where the report shows it: markup, a terminal escape sequence, a
#: bidirectional override, a spreadsheet formula.
SCRIPT = "<script>alert('xss')</script>"
PAYLOADS = {
    "uri": "/<script>alert(1)</script>/\"><img src=x onerror=alert(2)>?q=<svg/onload=alert(3)>",
    "host": "<svg onload=alert(4)>.example",
    "ua": "\"><script>alert(5)</script>\x1b]0;owned\x07\x1b[2J",
    "msg": SCRIPT + "\x1b[31m\u202egnp.exe",
    "formula_host": "=HYPERLINK(\"http://evil.example\",\"x\")",
}
HOSTILE_RULE = "999001"


def _entries(run: str) -> list[bytes]:
    audit = corpus.run_dir(run) / "audit"
    if (audit / "storage.tar.gz").exists():
        return list(tree_files_from_tar(run).values())
    return [item.data for item in iter_path(str(audit / "audit_serial.log"))
            if isinstance(item, RawEntry)]


def _hostile(base: bytes, number: int, host: str, message_id: str = HOSTILE_RULE) -> bytes:
    """A real native entry with its id, request line, Host and User-Agent replaced, and a
    rule message whose msg is the attacker's (as a rule with msg:'%{MATCHED_VAR}' makes)."""
    text = base.decode("utf-8", "surrogateescape")
    old_id = re.search(r"-A--\n\[[^\]]*\] (\S+) ", text).group(1)
    new_id = f"hostile{number:02d}" + old_id[9:]
    text = text.replace(old_id, new_id)
    text = re.sub(r"(-B--\n)[A-Z]+ \S+ (HTTP/[0-9.]+)\n", lambda m: f"{m.group(1)}GET "
                  f"{PAYLOADS['uri']} {m.group(2)}\n", text, count=1)
    text = re.sub(r"\nHost: [^\n]*\n", f"\nHost: {host}\n", text, count=1)
    text = re.sub(r"\nUser-Agent: [^\n]*\n", f"\nUser-Agent: {PAYLOADS['ua']}\n", text, count=1)
    message = (f'Message: Warning. Matched. [id "{message_id}"] [msg "{PAYLOADS["msg"]}"] '
               f'[data "{SCRIPT}"] [severity "CRITICAL"]\n')
    text = re.sub(r"(-H--\n)", lambda m: m.group(1) + message, text, count=1)
    return text.encode("utf-8", "surrogateescape")


@lru_cache(maxsize=None)
def hostile_entries() -> tuple[bytes, ...]:
    base = next(data for data in tree_files_from_tar("r1_relevant_concurrent").values()
                if b"\nUser-Agent: " in data and b"-H--\n" in data and b"\nHost: " in data)
    hosts = (PAYLOADS["host"], PAYLOADS["host"], PAYLOADS["formula_host"])
    return tuple(_hostile(base, number, host) for number, host in enumerate(hosts))


@lru_cache(maxsize=None)
def corpus_rows() -> tuple[tuple[str, tuple], ...]:
    """(node, Row) of every corpus entry and the hostile ones."""
    corpus.require_corpus()
    policy = VerdictPolicy()
    rows = []
    for run, node in NODES.items():
        for data in _entries(run):
            event = parse_entry(data, run)
            rows.append((node, event_row(event, node, policy.verdict(event))))
    for data in hostile_entries():
        event = parse_entry(data, "hostile")
        assert event.uri == PAYLOADS["uri"] and event.user_agent == PAYLOADS["ua"], event
        rows.append((HOSTILE_NODE, event_row(event, HOSTILE_NODE, policy.verdict(event))))
    return tuple(rows)


def store(db) -> int:
    by_node = defaultdict(list)
    for node, row in corpus_rows():
        by_node[node].append(row)
    return sum(db.insert(node, rows) for node, rows in by_node.items())


@contextlib.contextmanager
def database_url(request, directory) -> Iterator[str]:
    """The URL of a new, empty database: ``request.param`` "sqlite" (a file in
    ``directory``) or "mariadb" (on the tests' MariaDB server, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{directory / 'events.db'}"
        return
    server = request.getfixturevalue("mariadb")
    if not server.running:
        server.start()
    name = server.create_database()
    yield server.url_for(name)
    if server.running:
        server.drop_database(name)


def sqlite_with_corpus(path) -> str:
    """The URL of a new SQLite database at ``path`` holding the corpus rows."""
    from modsec_tools.db import open_database, parse_target
    url = f"sqlite:///{path}"
    db = open_database(parse_target(url))
    try:
        store(db)
    finally:
        db.close()
    return url


# -- what the report must show, from plain SQL ---------------------------------------------------
@dataclass(frozen=True)
class Stored:
    id: int
    node: str
    created_at: dt.datetime | None
    client: str | None
    host: bytes
    uri: bytes
    status: int | None
    verdict: str


@dataclass(frozen=True)
class Match:
    event_id: int
    rule_id: str | None
    msg: str
    severity: str


def _time(value) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def _first(times) -> dt.datetime | None:
    return min((t for t in times if t is not None), default=None)


def _last(times) -> dt.datetime | None:
    return max((t for t in times if t is not None), default=None)


def _text(value) -> str:
    return "" if value is None else bytes(value).decode("utf-8", "replace") \
        if isinstance(value, (bytes, bytearray)) else str(value)


def read_back(conn) -> tuple[list[Stored], list[Match]]:
    cursor = conn.cursor()
    cursor.execute("SELECT id, node, created_at, client_ip, host, uri, status, verdict "
                   "FROM events")
    events = [Stored(int(i), n, _time(t), c, bytes(h or b""), bytes(u or b""),
                     None if s is None else int(s), v) for i, n, t, c, h, u, s, v in
              cursor.fetchall()]
    cursor.execute("SELECT event_id, rule_id, msg, severity FROM matches")
    matches = [Match(int(e), r, _text(m), _text(s)) for e, r, m, s in cursor.fetchall()]
    conn.commit()
    return events, matches


def select(events: list[Stored], matches: list[Match], since=None, until=None, vhost=None,
           client=None, rule=None, node=None, verdict=None) -> list[Stored]:
    ruled = {m.event_id for m in matches if m.rule_id == rule}
    network = ipaddress.ip_network(client, strict=False) if client else None

    def keep(e: Stored) -> bool:
        return ((since is None or (e.created_at is not None and e.created_at >= since))
                and (until is None or (e.created_at is not None and e.created_at < until))
                and (vhost is None or e.host == vhost.encode("utf-8", "surrogateescape"))
                and (network is None or (e.client is not None
                                         and ipaddress.ip_address(e.client) in network))
                and (rule is None or e.id in ruled) and (node is None or e.node == node)
                and (verdict is None or e.verdict == verdict))
    return [e for e in events if keep(e)]


def expected(events: list[Stored], matches: list[Match], top: int) -> dict:
    """The figures of ``events`` (already selected), as the JSON report names them."""
    ids = {e.id: e for e in events}
    mine = [m for m in matches if m.event_id in ids and m.rule_id is not None]
    verdicts = Counter(e.verdict for e in events)
    per_client: dict = defaultdict(list)
    for e in events:
        per_client[e.client or "-"].append(e)
    rules_of = defaultdict(set)   # (the row of events without an address counts none)
    for m in mine:
        if ids[m.event_id].client is not None:
            rules_of[ids[m.event_id].client].add(m.rule_id)
    clients = sorted(([address, len(es), sum(e.verdict == "blocked" for e in es),
                       sum(e.verdict == "detected" for e in es), len(rules_of[address]),
                       _first(e.created_at for e in es), _last(e.created_at for e in es)]
                      for address, es in per_client.items()), key=lambda r: (-r[1], r[0]))
    per_rule = Counter(m.rule_id for m in mine)
    texts = Counter((m.rule_id, m.msg, m.severity) for m in mine)
    best = {}
    for (rule, msg, severity), count in texts.items():
        if rule not in best or (-count, msg) < (-best[rule][0], best[rule][1]):
            best[rule] = (count, msg, severity)
    addresses = defaultdict(set)
    for m in mine:
        if ids[m.event_id].client is not None:
            addresses[m.rule_id].add(ids[m.event_id].client)
    rules = sorted(([rule, best[rule][1], best[rule][2], count, len(addresses[rule])]
                    for rule, count in per_rule.items()), key=lambda r: (-r[3], r[0]))
    targets = Counter()
    blocked_targets = Counter()
    for e in events:
        key = (e.host, e.uri.split(b"?", 1)[0])
        targets[key] += 1
        blocked_targets[key] += e.verdict == "blocked"
    target_rows = sorted(([h, p, n, blocked_targets[(h, p)]] for (h, p), n in targets.items()),
                         key=lambda r: (-r[2], r[0], r[1]))
    statuses = sorted(Counter(e.status for e in events).items(),
                      key=lambda i: (-i[1], i[0] or 0))
    per_node = defaultdict(list)
    for e in events:
        per_node[e.node].append(e)
    nodes = sorted(([n, len(es), sum(e.verdict == "blocked" for e in es),
                     sum(e.verdict == "detected" for e in es),
                     sum(e.verdict == "passed" for e in es), _last(e.created_at for e in es)]
                    for n, es in per_node.items()), key=lambda r: (-r[1], r[0]))
    return {
        "totals": [len(events), verdicts["blocked"], verdicts["detected"], verdicts["passed"],
                   len({e.client for e in events if e.client is not None}),
                   _first(e.created_at for e in events), _last(e.created_at for e in events)],
        "clients": clients[:top],
        "rules": rules[:top],
        "targets": [[_text(h), _text(p), n, b] for h, p, n, b in target_rows[:top]],
        "statuses": [list(s) for s in statuses],
        "nodes": nodes,
    }


FLOORS = {"minute": dict(second=0, microsecond=0),
          "hour": dict(minute=0, second=0, microsecond=0),
          "day": dict(hour=0, minute=0, second=0, microsecond=0)}
STEPS = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1),
         "day": dt.timedelta(days=1)}


def timeline(events: list[Stored], first: dt.datetime, last: dt.datetime,
             bucket: str) -> list[list]:
    """[start, blocked, detected, passed] per bucket from first's to last's, zeros kept."""
    floor = FLOORS[bucket]
    counts = Counter((e.created_at.replace(**floor), e.verdict) for e in events
                     if e.created_at is not None)
    out = []
    at = first.replace(**floor)
    while at <= last:
        out.append([at, counts[(at, "blocked")], counts[(at, "detected")],
                    counts[(at, "passed")]])
        at += STEPS[bucket]
    return out


def write_sample(html_path: str, text_path: str | None = None) -> None:
    """docs/sample-report.html (and the README's text sample): the report of the corpus
    alone, no hostile entry. ``python -m tests.test_report_data docs/sample-report.html``"""
    import tempfile
    from pathlib import Path

    from modsec_tools.db import open_database, parse_target
    from modsec_tools.report import build_report, parse_filters
    from modsec_tools.report.html import render_html
    from modsec_tools.report.text import render_text
    with tempfile.TemporaryDirectory(prefix="mt-sample-") as scratch:
        url = f"sqlite:///{Path(scratch) / 'events.db'}"
        db = open_database(parse_target(url))
        try:
            for node in sorted(set(NODES.values())):
                db.insert(node, [row for n, row in corpus_rows()
                                 if n == node and not row.unique_id.startswith("hostile")])
        finally:
            db.close()
        report = build_report(lambda: open_database(parse_target(url), read_only=True),
                              parse_filters(), 10, jails=())
    Path(html_path).write_text(render_html(report))
    if text_path:
        Path(text_path).write_text(render_text(report))


if __name__ == "__main__":
    import sys
    write_sample(*sys.argv[1:3])
