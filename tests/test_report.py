"""``modsec-tools report``: its figures are those of plain SQL over the same tables, on
SQLite and on the real MariaDB server, for every filter and for an empty range; hostile
strings from requests stay inert in the text, JSON and CSV outputs. (The HTML page:
test_report_html.py; ``show``: test_report_show.py.)"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import subprocess
import sys

import pytest

from modsec_tools.db import open_database, parse_target
from modsec_tools.report import ReportError, build_report, parse_filters
from modsec_tools.report.cells import width
from modsec_tools.report.csvfmt import render_csv
from modsec_tools.report.jsonfmt import render_json
from modsec_tools.report.text import render_text
from tests import test_report_data as data
from tests.ingest_helpers import REPO, cli_env

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 28, 15, 28)
T1 = dt.datetime(2026, 11, 28, 15, 30, 30)


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def stored(request, tmp_path_factory):
    """(database URL, events and matches read back) of the corpus, once per dialect."""
    with data.database_url(request, tmp_path_factory.mktemp("report")) as url:
        db = open_database(parse_target(url))
        try:
            assert data.store(db) == len(data.corpus_rows())
            events, matches = data.read_back(db.conn)
        finally:
            db.close()
        yield url, events, matches


def report_of(url: str, top: int = 10, **filters):
    return build_report(lambda: open_database(parse_target(url), read_only=True),
                        parse_filters(**filters), top, jails=())


def figures(report) -> dict:
    t = report.totals
    return {
        "totals": [t.events, t.blocked, t.detected, t.passed, t.clients, t.first_seen,
                   t.last_seen],
        "clients": [[c.address, c.requests, c.blocked, c.detected, c.rules, c.first_seen,
                     c.last_seen] for c in report.clients],
        "rules": [[r.rule_id, r.message, r.severity, r.matches, r.addresses]
                  for r in report.rules],
        "targets": [[x.host, x.path, x.requests, x.blocked] for x in report.targets],
        "statuses": [[s.status, s.requests] for s in report.statuses],
        "nodes": [[n.node, n.requests, n.blocked, n.detected, n.passed, n.last_seen]
                  for n in report.nodes],
    }


FILTERS = [
    {},
    {"since": "2026-11-28 15:28", "until": "2026-11-28T16:30:30+01:00"},
    {"vhost": "www.lab.test:8080"},
    {"client": "127.0.1.0/24"},
    {"client": "2001:DB8:0::A645"},        # as typed; stored compressed
    {"client": "2001:db8::/32", "verdict": "blocked"},
    {"rule": "942100"},
    {"node": "web3", "verdict": "detected"},
    {"verdict": "passed", "since": "2026-11-28 15:29"},
    {"vhost": data.PAYLOADS["host"], "rule": data.HOSTILE_RULE},
]


@pytest.mark.parametrize("chosen", FILTERS, ids=lambda f: ",".join(f) or "all")
@pytest.mark.parametrize("top", [5, 1000])
def test_figures_equal_plain_sql(stored, chosen, top):
    url, events, matches = stored
    report = report_of(url, top, **chosen)
    window = {key: parse_filters(**chosen).__getattribute__(key) for key in ("since", "until")}
    client = chosen.get("client")
    selected = data.select(events, matches, window["since"], window["until"],
                           chosen.get("vhost"), client, chosen.get("rule"), chosen.get("node"),
                           chosen.get("verdict"))
    assert selected, "each filter selects some of the corpus"
    assert figures(report) == data.expected(selected, matches, top)


@pytest.mark.parametrize("chosen", FILTERS[:2] + FILTERS[7:8], ids=["all", "window", "node"])
def test_timeline_equals_plain_sql(stored, chosen):
    """Every bucket from the window's first to its last, empty ones included; the corpus
    spans minutes, so minutes are the buckets."""
    url, events, matches = stored
    report = report_of(url, **chosen)
    f = parse_filters(**chosen)
    everything = data.select(events, matches, f.since, f.until)  # the axis: time bounds only
    first = f.since or min(e.created_at for e in everything)
    last = (f.until - dt.timedelta(microseconds=1)) if f.until else max(e.created_at
                                                                        for e in everything)
    selected = data.select(events, matches, f.since, f.until, node=chosen.get("node"),
                           verdict=chosen.get("verdict"))
    assert report.bucket == "minute"
    assert [[b.start, b.blocked, b.detected, b.passed] for b in report.timeline] == \
        data.timeline(selected, first, last, "minute")
    assert sum(b.total for b in report.timeline) == report.totals.events


def test_buckets_follow_the_span(stored):
    url, _, _ = stored
    assert report_of(url, since="2026-11-28 12:00", until="2026-11-28 15:00").bucket == "minute"
    day = report_of(url, since="2026-11-28", until="2026-11-29")
    assert day.bucket == "hour" and len(day.timeline) == 24
    month = report_of(url, since="2026-11-01", until="2026-12-01")
    assert month.bucket == "day" and len(month.timeline) == 30
    assert [b.start.day for b in month.timeline if b.total] == [28]


@pytest.mark.parametrize("chosen", [{"since": "1h"}, {"client": "10.99.0.0/16"},
                                    {"rule": "1"}, {"until": "2020-01-01"}],
                         ids=["last-hour", "no-client", "no-rule", "long-ago"])
def test_empty_selection(stored, chosen):
    """The corpus is older than an hour: nothing, and every output says so."""
    url, _, _ = stored
    report = report_of(url, **chosen)
    assert figures(report) == {"totals": [0, 0, 0, 0, 0, None, None], "clients": [],
                               "rules": [], "targets": [], "statuses": [], "nodes": []}
    if "since" in chosen:
        # minutes from the one an hour ago to the current one, both partly covered
        assert len(report.timeline) == 61 and not any(b.total for b in report.timeline)
    assert "No events match." in render_text(report)
    assert json.loads(render_json(report))["totals"]["events"] == 0
    assert render_csv(report).startswith("section,events,")


def test_filters_refused():
    for bad in ({"since": "yesterday"}, {"client": "not-an-address"}, {"verdict": "banned"},
                {"since": "2026-11-28", "until": "2026-11-27"}):
        with pytest.raises(ReportError):
            parse_filters(**bad)


def test_relative_times():
    now = dt.datetime(2026, 12, 6, 12, 0)
    assert parse_filters(since="90m", now=now).since == dt.datetime(2026, 12, 6, 10, 30)
    assert parse_filters(since="7d", until="1h", now=now).until == dt.datetime(2026, 12, 6, 11)
    assert parse_filters(since="2026-12-06T13:00:00+01:00").since == dt.datetime(2026, 12, 6, 12)


# -- hostile strings ---------------------------------------------------------------------------
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def test_text_fits_80_columns_and_stays_inert(stored):
    url, _, _ = stored
    for chosen in ({}, {"node": data.HOSTILE_NODE}, {"vhost": data.PAYLOADS["host"]}):
        text = render_text(report_of(url, 10, **chosen))
        lines = text.splitlines()
        assert max(width(line) for line in lines) <= 80, [l for l in lines if width(l) > 80]
        assert not CONTROL.search(text), CONTROL.search(text)
    hostile = render_text(report_of(url, 1000, vhost=data.PAYLOADS["host"]), width=200)
    assert "\\x1b[31m\\u202egnp.exe" in hostile  # the escape and the override, shown
    assert data.PAYLOADS["host"] in hostile        # markup is plain text on a terminal


def test_json_keeps_hostile_strings_as_data(stored):
    url, _, _ = stored
    report = report_of(url, 1000, node=data.HOSTILE_NODE)
    text = render_json(report)
    assert "<" not in text and ">" not in text and "\x1b" not in text
    document = json.loads(text)
    hosts = {t["host"] for t in document["targets"]}
    paths = {t["path"] for t in document["targets"]}
    assert {data.PAYLOADS["host"], data.PAYLOADS["formula_host"]} <= hosts
    assert data.PAYLOADS["uri"].split("?")[0] in paths
    assert data.PAYLOADS["msg"] in {r["message"] for r in document["rules"]}
    assert document["totals"]["events"] == report.totals.events
    assert set(document) == {"format", "generated_at", "filters", "top", "totals", "clients",
                             "rules", "targets", "statuses", "timeline", "nodes", "fail2ban"}


def test_csv_quotes_and_defuses_formulas(stored):
    url, _, _ = stored
    report = report_of(url, 1000, node=data.HOSTILE_NODE)
    rows = list(csv.reader(io.StringIO(render_csv(report, ["targets"]))))
    assert rows[0] == ["section", "host", "path", "requests", "blocked"]
    cells = {row[1] for row in rows[1:]}
    assert "'" + data.PAYLOADS["formula_host"] in cells         # no formula for a spreadsheet
    assert data.PAYLOADS["host"] in cells
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row[1:3])
    assert sum(int(row[3]) for row in rows[1:]) == report.totals.events
    rules = list(csv.reader(io.StringIO(render_csv(report, ["rules"]))))
    assert data.PAYLOADS["msg"] in {row[2] for row in rules}    # one cell, newline-free


# -- the command -------------------------------------------------------------------------------
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modsec_tools.cli", *args], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=120)


def test_command_formats(stored, tmp_path):
    url, _, _ = stored
    (tmp_path / "empty.conf").write_text("[modsec-tools]\n")
    common = ("report", "--config", str(tmp_path / "empty.conf"), "--db", url, "--jails", "")
    done = run(*common, "--format", "json", "--top", "3")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert len(document["clients"]) == 3
    assert document["totals"]["events"] == len(data.corpus_rows())
    text = run(*common, "--since", "2026-11-28 15:00", "--until", "2026-11-28 16:00")
    assert text.returncode == 0 and "Top client addresses" in text.stdout, text.stderr
    assert max(width(line) for line in text.stdout.splitlines()) <= 80
    html = run(*common, "--format", "html")
    assert html.returncode == 0 and html.stdout.startswith("<!DOCTYPE html>")
    only = run(*common, "--format", "csv", "--section", "statuses")
    assert only.stdout.splitlines()[0] == "section,status,requests"
    assert run(*common, "--since", "soon").returncode == 2
    missing = run("report", "--config", str(tmp_path / "empty.conf"),
                  "--db", f"sqlite:///{tmp_path / 'none.db'}", "--jails", "")
    assert missing.returncode == 1 and "no such database file" in missing.stderr
    assert not (tmp_path / "none.db").exists()


# -- fail2ban's current bans -------------------------------------------------------------------
JAILS = """
    [modsec]
    enabled = true
    logpath = {root}/events.log
    backend = polling
    action = dummy
    [modsec-recidive]
    enabled = true
    logpath = {root}/fail2ban.log
    backend = polling
    action = dummy
    """


@pytest.mark.root
def test_banned_now_asks_fail2ban(tmp_path):
    """A real fail2ban-server (in a network namespace, its own socket): the report marks the
    addresses either jail has banned, and says why when it could not ask."""
    from tests.f2b_harness import fail2ban_server, netns
    url = data.sqlite_with_corpus(tmp_path / 'events.db')
    first, second, third = [c.address for c in report_of(url, 3).clients]

    def banned(jails, socket):
        report = build_report(lambda: open_database(parse_target(url), read_only=True),
                              parse_filters(), 3, jails=jails, fail2ban_socket=socket)
        return report.fail2ban, [c.banned for c in report.clients]

    with netns() as ns, fail2ban_server(ns, JAILS) as f2b:
        f2b.banip("modsec", first)
        f2b.banip("modsec-recidive", third)
        assert f2b.banned("modsec") == {first} and f2b.banned("modsec-recidive") == {third}
        state, marks = banned(("modsec", "modsec-recidive"), str(f2b.sock))
        assert state.reachable and state.banned == {first, third}
        assert marks == [True, False, True]
        state, marks = banned(("modsec", "no-such-jail"), str(f2b.sock))
        assert not state.reachable and "no-such-jail" in state.error and marks == [None] * 3
    state, marks = banned(("modsec",), str(tmp_path / "gone.sock"))
    assert not state.reachable and marks == [None] * 3
    assert "jail modsec:" in state.error
    text = render_text(build_report(lambda: open_database(parse_target(url), read_only=True),
                                    parse_filters(), 3, jails=("modsec",),
                                    fail2ban_socket=str(tmp_path / "gone.sock")))
    assert "fail2ban (modsec) not asked: jail modsec:" in text
