"""The watcher's Prometheus metrics: a real ``modsec-tools watch`` takes corpus entries
while its endpoint is scraped and its node_exporter textfile read, both parsed with
prometheus_client's own text parser; the figures are checked against the event log the
same watcher wrote, and against its database state (a database that cannot be reached
shows as down, its rows in the spool)."""
from __future__ import annotations

import re
import signal
import socket
import stat
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modsec_tools.eventline import parse_line
from tests.ingest_helpers import REPO, fast_tmp  # noqa: F401  (fixture)
from tests.realparts._util import free_port
from tests.watch_helpers import WatchDaemon, original_entries, write_all

RUN = ("r1_relevant_concurrent",)


def families(text: str) -> dict[str, dict]:
    """name → {"type": ..., "samples": {(sample name, labels...): value}}."""
    found = {}
    for family in text_string_to_metric_families(text):
        found[family.name] = {"type": family.type, "samples": {
            (s.name, *sorted(s.labels.items())): s.value for s in family.samples}}
    return found


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        return reply.read().decode()


def wait_for(check, what: str, daemon: WatchDaemon, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        daemon.signal(signal.SIGUSR1)  # the watcher refreshes its figures at once
        time.sleep(0.3)
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout} s\n{daemon.log_tail()}")


def verdicts_of(events_log: Path) -> Counter:
    return Counter(parse_line(line).verdict
                   for line in events_log.read_bytes().decode("ascii").splitlines())


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for name in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _queue_empty(got: dict) -> bool:
    """The status a scrape shows is the last refresh's: one taken just after the last batch
    may still count a duplicate notice for an entry already taken, which the next drain drops."""
    return (got["modsec_tools_queue_entries"]["samples"][("modsec_tools_queue_entries",)] == 0
            and got["modsec_tools_lag_seconds"]["samples"][("modsec_tools_lag_seconds",)] == 0)


def test_endpoint_and_textfile(fast_tmp):
    port = free_port()
    textfile = fast_tmp / "node-exporter" / "modsec-tools.prom"
    entries = original_entries(RUN)
    with WatchDaemon(fast_tmp, settings={"metrics_listen": str(port),
                                         "metrics_textfile": str(textfile)}) as daemon:
        daemon.start()
        assert _listening(port) == {"0100007F"}, _listening(port)   # 127.0.0.1 only
        write_all(daemon.storage, entries)
        daemon.wait_events(len(entries))
        size = sum(len(e.data) for e in entries)
        # (verdicts are counted as batches are written, the rest at each refresh)
        got = wait_for(lambda: (f := families(scrape(port)))["modsec_tools_entry_bytes"]
                       ["samples"][("modsec_tools_entry_bytes_total",)] == size
                       and sum(f["modsec_tools_entries"]["samples"].values()) == len(entries)
                       and _queue_empty(f) and f, "every entry counted, none queued", daemon)
        verdicts = verdicts_of(daemon.events)
        assert got["modsec_tools_entries"]["type"] == "counter"
        assert got["modsec_tools_entries"]["samples"] == {
            ("modsec_tools_entries_total", ("verdict", v)): float(verdicts[v])
            for v in ("blocked", "detected", "passed")}
        assert verdicts["blocked"] > 0 and verdicts["passed"] > 0
        status = daemon.status()
        for key, name in (("bytes", "modsec_tools_entry_bytes"),
                          ("batches", "modsec_tools_batches"),
                          ("errors", "modsec_tools_errors"),
                          ("quarantined", "modsec_tools_quarantined"),
                          ("spooled", "modsec_tools_spooled_rows"),
                          ("overflows", "modsec_tools_inotify_overflows")):
            assert got[name]["type"] == "counter", name
            assert got[name]["samples"][(name + "_total",)] == status[key], name
        gauges = {name: family["samples"][(name,)] for name, family in got.items()
                  if family["type"] == "gauge"}
        assert gauges["modsec_tools_database_up"] == 1
        assert gauges["modsec_tools_database_unusable"] == 0
        assert gauges["modsec_tools_spool_rows"] == gauges["modsec_tools_rejected_rows"] == 0
        assert gauges["modsec_tools_queue_entries"] == 0 and gauges["modsec_tools_lag_seconds"] == 0
        assert abs(gauges["modsec_tools_last_update_timestamp_seconds"] - time.time()) < 30
        # the textfile: the same figures, whole, replaced atomically, readable by node_exporter
        from_file = wait_for(lambda: (f := families(textfile.read_text()))
                             ["modsec_tools_entries"]["samples"] == got["modsec_tools_entries"]
                             ["samples"] and f, "the textfile's figures", daemon)
        assert set(from_file) == set(got)
        info = textfile.stat()
        assert stat.S_IMODE(info.st_mode) == 0o644 and info.st_uid == 0
        assert [p.name for p in textfile.parent.iterdir()] == [textfile.name]
        assert not stat.S_IMODE(textfile.parent.stat().st_mode) & 0o022
        _alerts_name_what_is_exported(got)
        daemon.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)   # closed with the watcher


def _alerts_name_what_is_exported(got: dict) -> None:
    """docs/report.md's alert rules use metrics that exist (under their sample names)."""
    text = (REPO / "docs" / "report.md").read_text()
    rules = text[text.index("groups:"):]
    rules = rules[:rules.index("```")]
    samples = {name for family in got.values() for name, *_ in family["samples"]}
    used = set(re.findall(r"modsec_tools_[a-z_]+", rules))
    assert used and used <= samples, used - samples


def test_database_down_shows_in_the_spool(fast_tmp):
    port, closed = free_port(), free_port()
    entries = original_entries(RUN)[:40]
    with WatchDaemon(fast_tmp, settings={
            "metrics_listen": f"127.0.0.1:{port}",
            "db": f"mysql://nobody@127.0.0.1:{closed}/modsec"}) as daemon:
        daemon.start()
        write_all(daemon.storage, entries)
        daemon.wait_events(len(entries))
        # the family appears with the daemon's first status after start-up
        got = wait_for(lambda: (f := families(scrape(port))).get("modsec_tools_spool_rows", {})
                       .get("samples", {}).get(("modsec_tools_spool_rows",)) == len(entries) and f,
                       "the spooled rows", daemon)
        assert got["modsec_tools_database_up"]["samples"][("modsec_tools_database_up",)] == 0
        assert got["modsec_tools_spool_bytes"]["samples"][("modsec_tools_spool_bytes",)] == \
            (daemon.state / "db-spool").stat().st_size > 0
        assert got["modsec_tools_spooled_rows"]["samples"][("modsec_tools_spooled_rows_total",)] \
            == len(entries)
        daemon.stop()


def test_bad_listen_settings(fast_tmp):
    with WatchDaemon(fast_tmp, settings={"metrics_listen": "127.0.0.1:http"}) as daemon:
        daemon.start(wait_ready=False)
        assert daemon.proc.wait(30) == 2
        assert "metrics_listen" in daemon.log_text() and "is not PORT" in daemon.log_text()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with WatchDaemon(fast_tmp / "second",
                         settings={"metrics_listen": str(taken.getsockname()[1])}) as daemon:
            daemon.start(wait_ready=False)
            assert daemon.proc.wait(30) == 1
            assert re.search(r"metrics_listen 127\.0\.0\.1:\d+: Address already in use",
                             daemon.log_text()), daemon.log_tail()
    finally:
        taken.close()
