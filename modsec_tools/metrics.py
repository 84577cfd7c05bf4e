"""The watcher's figures for Prometheus (prometheus_client): a node_exporter textfile, an
HTTP endpoint, or both (settings ``metrics_textfile`` and ``metrics_listen``).

The figures are those of the status file (state_dir/status.json: the pipeline's counts,
entries by verdict among them, and each sink's state, the database spool's among them),
taken when the watcher writes it (every few seconds). A scrape reads the last snapshot:
the HTTP thread never touches the pipeline. Counters restart at 0 with the watcher
(Prometheus' rate() handles that).

The textfile is replaced atomically in a directory only root can write (owned.py), as
node_exporter's textfile collector expects (it reads ``*.prom`` files whole).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler

from .config import listen_address
from .owned import OwnedDir

log = logging.getLogger(__name__)

VERDICTS = ("blocked", "detected", "passed")
#: (status key, metric name without _total, help) of the status file's counters.
COUNTERS = (
    ("bytes", "modsec_tools_entry_bytes", "Bytes of the audit-log entries processed."),
    ("batches", "modsec_tools_batches", "Batches made durable (one commit each)."),
    ("errors", "modsec_tools_errors", "Entries or rows that failed (see the log)."),
    ("quarantined", "modsec_tools_quarantined",
     "Entries moved to the quarantine directory (unreadable, truncated, oversized)."),
    ("spooled", "modsec_tools_spooled_rows",
     "Database rows written to the spool while the database was unavailable."),
    ("overflows", "modsec_tools_inotify_overflows",
     "inotify queue overflows (each one triggers a full rescan)."),
)
#: (metric name, help) of the gauges; the database's only where there is one.
GAUGES = (
    ("modsec_tools_queue_entries", "Closed entries waiting for the next batch."),
    ("modsec_tools_lag_seconds", "Age of the oldest entry waiting (0 when none waits)."),
    ("modsec_tools_database_up", "1 while the database takes rows, 0 while it is down or "
     "unusable (rows then wait in the spool)."),
    ("modsec_tools_database_unusable",
     "1 while the database cannot be used until the admin acts."),
    ("modsec_tools_spool_bytes", "Size of the database spool file (state_dir/db-spool)."),
    ("modsec_tools_spool_rows", "Rows waiting in the database spool."),
    ("modsec_tools_rejected_rows", "Rows the database refused, kept in state_dir/db-rejected "
     "(modsec-tools db replay-rejected)."),
    ("modsec_tools_last_update_timestamp_seconds",
     "When the watcher last refreshed these figures."),
    ("modsec_tools_start_time_seconds", "When the watcher started (its counters start at 0)."),
)


class Snapshot:
    """What the watcher last reported; ``collect`` turns it into metric families."""

    def __init__(self) -> None:
        self.counters: dict[str, Any] = {}
        self.gauges: dict[str, float] = {}
        self.verdicts: Counter = Counter()
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        entries = CounterMetricFamily("modsec_tools_entries",
                                      "Audit-log entries processed, by verdict.",
                                      labels=["verdict"])
        for verdict in VERDICTS:
            entries.add_metric([verdict], self.verdicts[verdict])
        yield entries
        for key, name, text in COUNTERS:
            yield CounterMetricFamily(name, text, value=self.counters.get(key, 0))
        gauges = self.gauges
        for name, text in GAUGES:
            if name in gauges:
                yield GaugeMetricFamily(name, text, value=gauges[name])

    def take(self, status: dict[str, Any]) -> None:
        gauges = {"modsec_tools_queue_entries": status.get("queue_depth", 0),
                  "modsec_tools_lag_seconds": status.get("lag_seconds", 0.0),
                  "modsec_tools_last_update_timestamp_seconds": time.time(),
                  "modsec_tools_start_time_seconds": self.started}
        if "spool_rows" in status:  # a database is configured
            gauges.update({
                "modsec_tools_database_up": 0 if status.get("database_down") else 1,
                "modsec_tools_database_unusable": int(status["database_unusable"]),
                "modsec_tools_spool_bytes": status["spool_bytes"],
                "modsec_tools_spool_rows": status["spool_rows"],
                "modsec_tools_rejected_rows": status["rejected_rows"]})
        # a scrape sees one snapshot or the other, never half of each
        self.counters, self.gauges = dict(status), gauges
        self.verdicts = Counter(status.get("verdicts", {}))


class Metrics:
    """Exposes a watcher's figures; ``update`` is called where the status file is written."""

    def __init__(self, textfile: str = "", listen: tuple[str, int] | None = None) -> None:
        self.snapshot = Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.snapshot)
        self.textfile = textfile
        self.server: ThreadingHTTPServer | None = None
        if listen is not None:
            self.server = _serve(self.registry, listen)

    @classmethod
    def from_settings(cls, settings) -> "Metrics":
        """The watcher's metrics as configured (with neither setting, figures are kept
        and go nowhere, which costs next to nothing)."""
        return cls(settings.metrics_textfile, listen_address(settings.metrics_listen))

    @property
    def address(self) -> tuple[str, int] | None:
        return self.server.server_address[:2] if self.server else None

    def update(self, status: dict[str, Any]) -> None:
        self.snapshot.take(status)
        if self.textfile:
            self._write_textfile()

    def _write_textfile(self) -> None:
        try:
            owned, name = OwnedDir.of(self.textfile, 0o755)
            with owned:
                owned.replace(name, generate_latest(self.registry), 0o644)
        except OSError as exc:
            log.warning("metrics textfile %s: %s", self.textfile, exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _serve(registry: CollectorRegistry, listen: tuple[str, int]) -> ThreadingHTTPServer:
    import socket
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    server_class = type("MetricsServer", (ThreadingHTTPServer,),
                        {"address_family": family, "daemon_threads": True})
    try:
        server = server_class(listen, MetricsHandler.factory(registry))
    except OSError as exc:  # named: the daemon's error line shows what could not be bound
        raise OSError(exc.errno, exc.strerror, f"metrics_listen {listen[0]}:{listen[1]}") \
            from None
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics at http://%s:%d/metrics", listen[0], server.server_address[1])
    return server
