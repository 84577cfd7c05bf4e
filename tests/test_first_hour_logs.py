"""The ``logs`` view (the original tool's table) shows, for each event, the message that
decided it (issue 17): the first of the most severe rule messages. (It showed the first
message: an SQL injection's row read "Host header is a numeric IP address".)

A real Apache + mod_security2 + CRS is attacked with its numeric address as Host (CRS 920350,
WARNING) and an SQL injection (942100, CRITICAL; 949110 denies); ``modsec-tools ingest``
stores the entry in SQLite, and the view is read as the original tool's users read it.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.realparts import ApacheModSec

REPO = Path(__file__).resolve().parent.parent


def test_logs_view_shows_the_deciding_message(apache: ApacheModSec, tmp_path: Path) -> None:
    assert apache.request("/?id=1' or '1'='1", host=apache.listen[0][0]) == 403
    apache.wait_index(1)
    config = tmp_path / "modsec-tools.conf"
    db = tmp_path / "events.db"
    config.write_text(f"[modsec-tools]\nstorage_dir = {apache.storage_dir}\n"
                      f"index_log = {apache.index_log}\narchive = {tmp_path}/archive.log\n"
                      f"event_log = {tmp_path}/events.log\ndb = sqlite:///{db}\n"
                      f"state_dir = {tmp_path}/state\nquarantine_dir = {tmp_path}/quarantine\n")
    done = subprocess.run([sys.executable, "-m", "modsec_tools.cli", "ingest", "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        (rule, msg, severity), = conn.execute("SELECT ruleId, msg, severity FROM logs")
        rules = [row[0] for row in conn.execute(
            "SELECT rule_id FROM matches ORDER BY seq")]
    assert rules[0] == "920350", rules           # the incidental warning comes first
    assert "949110" in rules                      # the scoring rule denied
    assert (rule, severity) == ("942100", "CRITICAL"), (rule, msg, severity)
    text = msg.decode() if isinstance(msg, bytes) else msg
    assert text == "SQL Injection Attack Detected via libinjection", text
