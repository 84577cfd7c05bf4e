"""The schema: each version's steps, which ``Database.migrate`` applies in order.

``events``, one row per transaction, unique on (node, unique_id); ``messages``, each
distinct rule message once; ``event_messages`` linking an event's messages in order; the
views ``matches`` (schema 2's table of that name) and ``logs`` (the original tool's), so
that queries written for them keep working; the ``rollup_*`` tables, the report's counts
kept up to date by every insert (see rollups.py).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import rollups
from .rows import LINK_COLUMNS, MATCH_COLUMNS, MESSAGE_COLUMNS, upgraded_match

if TYPE_CHECKING:
    from .base import Database

log = logging.getLogger(__name__)
SCHEMA_VERSION = 4

#: Per dialect, what the statements below are formatted with.
TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER",
               "str": "TEXT", "blob": "BLOB", "time": "TEXT", "int": "INTEGER",
               "engine": "", "ifnot": "IF NOT EXISTS ", "view": "CREATE VIEW IF NOT EXISTS",
               "uid_binary": "",  # TEXT compares byte by byte already
               "message_id": "INTEGER PRIMARY KEY", "without_rowid": " WITHOUT ROWID"},
    # MariaDB knows CREATE INDEX IF NOT EXISTS; MySQL 8 does not, so a duplicate index
    # (a migration re-run after a failure) is tolerated instead (error 1061).
    "mysql": {"id": "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY",
              "bigint": "BIGINT UNSIGNED", "str": "VARCHAR(255)", "blob": "MEDIUMBLOB",
              "time": "DATETIME(6)", "int": "INT", "engine": " ENGINE=InnoDB", "ifnot": "",
              "view": "CREATE OR REPLACE VIEW",
              "uid_binary": "ALTER TABLE events MODIFY unique_id VARCHAR(64) CHARACTER SET "
                            "utf8mb4 COLLATE utf8mb4_bin NOT NULL",
              "message_id": "BIGINT UNSIGNED NOT NULL PRIMARY KEY", "without_rowid": ""},
}

# A rule message's columns: schema 1's matches table held them, schema 3's messages table
# holds them (its migration moves them from one to the other).
_MESSAGE_FIELDS = """
        rule_id VARCHAR(32),
        severity VARCHAR(10),
        msg {blob},
        data {blob},
        text {blob},
        ver {str},
        maturity VARCHAR(8),
        accuracy VARCHAR(8),
        file {str},
        line VARCHAR(16),
        tags {blob}"""
# The original tool's table, as a view, so existing queries keep working: the event and
# (to be joined as ``m``) its first rule message.
_LOGS_VIEW = """{view} logs AS SELECT
        e.method AS REQUEST_METHOD, e.uri AS REQUEST_URI, e.client_ip AS REMOTE_ADDR,
        m.rule_id AS ruleId, e.host AS Host, m.msg AS msg, m.data AS data,
        e.unique_id AS unique_id, m.severity AS severity, m.maturity AS maturity,
        m.accuracy AS accuracy, e.user_agent AS User_Agent,
        e.response_status_line AS responce_header, e.engine_mode AS Engine_Mode,
        e.anomaly_score AS Score, e.sqli_score AS SQLi, e.xss_score AS XSS,
        e.phase AS phase, e.created_at AS created_at
      FROM events e """

_SCHEMA_V1 = [
    """CREATE TABLE IF NOT EXISTS schema_version (version {int} NOT NULL){engine}""",
    """CREATE TABLE IF NOT EXISTS events (
        id {id},
        node VARCHAR(64) NOT NULL,
        unique_id VARCHAR(64) NOT NULL,
        created_at {time},
        utc_offset_min {int},
        client_ip VARCHAR(45),
        peer_ip VARCHAR(45),
        peer_port {int},
        local_ip VARCHAR(45),
        local_port {int},
        method {blob},
        uri {blob},
        protocol {str},
        host {blob},
        user_agent {blob},
        status {int},
        response_status_line {blob},
        intercepted {int} NOT NULL,
        phase {int},
        verdict VARCHAR(10),
        anomaly_score {int},
        sqli_score {int},
        xss_score {int},
        scores {str},
        severity VARCHAR(10),
        rule_ids {blob},
        primary_seq {int},
        engine_mode VARCHAR(32),
        producer {str},
        server {str},
        source {blob},
        incomplete {int} NOT NULL,
        UNIQUE (node, unique_id)
    ){engine}""",
    "CREATE INDEX {ifnot}events_client_time ON events (client_ip, created_at)",
    "CREATE INDEX {ifnot}events_time ON events (created_at)",
    """CREATE TABLE IF NOT EXISTS matches (
        event_id {bigint} NOT NULL,
        seq {int} NOT NULL,""" + _MESSAGE_FIELDS + """,
        PRIMARY KEY (event_id, seq)
    ){engine}""",
    "CREATE INDEX {ifnot}matches_rule ON matches (rule_id)",
    _LOGS_VIEW + "LEFT JOIN matches m ON m.event_id = e.id AND m.seq = e.primary_seq",
]
# v2: mod_unique_id's ids are case-sensitive (base64), but MySQL's default collation is
# not: an id differing from a stored one only in case was refused as a duplicate.
_SCHEMA_V2 = ["{uid_binary}"]


def _normalize_matches(db: Database, cursor: Any) -> None:
    """Schema 2's ``matches`` table into ``messages`` + ``event_messages``, in chunks in key
    order (committed one by one on MySQL, whose DDL commits anyway; every step is
    idempotent, so a migration cut short is simply run again), then dropped."""
    if db.table_type("matches") != "table":
        return
    cursor.execute("SELECT COUNT(*) FROM matches")
    total = int(cursor.fetchone()[0])
    if total:
        log.warning("schema 3: moving %d rows of the matches table into messages and "
                    "event_messages", total)
    mark = db.mark
    after = (-1, -1)
    moved = 0
    while True:
        cursor.execute(f"SELECT {','.join(MATCH_COLUMNS)} FROM matches WHERE event_id > {mark} "
                       f"OR (event_id = {mark} AND seq > {mark}) ORDER BY event_id, seq "
                       f"LIMIT 5000", (after[0], after[0], after[1]))
        rows = cursor.fetchall()
        if not rows:
            break
        messages: dict[int, tuple] = {}
        links = []
        for event_id, seq, *values in rows:
            match = upgraded_match((seq, *values))
            messages[match[1]] = match[1:]
            links.append((event_id, seq, match[1]))
        cursor.executemany(db.insert_sql("messages", MESSAGE_COLUMNS), list(messages.values()))
        cursor.executemany(db.insert_sql("event_messages", LINK_COLUMNS), links)
        db.commit_part()
        after = rows[-1][:2]
        moved += len(rows)
        if moved // 100_000 != (moved - len(rows)) // 100_000:
            log.info("schema 3: %d of %d matches rows moved", moved, total)
    cursor.execute("DROP TABLE matches")


# v3: each distinct rule message once (see the module's docstring). Schema 2's matches
# table becomes a view with its name and columns, so queries written for it still work.
_SCHEMA_V3 = [
    """CREATE TABLE IF NOT EXISTS messages (
        id {message_id},""" + _MESSAGE_FIELDS + """
    ){engine}""",
    "CREATE INDEX {ifnot}messages_rule ON messages (rule_id)",
    """CREATE TABLE IF NOT EXISTS event_messages (
        event_id {bigint} NOT NULL,
        seq {int} NOT NULL,
        message_id {bigint} NOT NULL,
        PRIMARY KEY (event_id, seq)
    ){engine}{without_rowid}""",
    "CREATE INDEX {ifnot}event_messages_message ON event_messages (message_id)",
    "DROP VIEW IF EXISTS logs",
    _normalize_matches,
    """{view} matches AS SELECT
        em.event_id AS event_id, em.seq AS seq, m.rule_id AS rule_id, m.severity AS severity,
        m.msg AS msg, m.data AS data, m.text AS text, m.ver AS ver, m.maturity AS maturity,
        m.accuracy AS accuracy, m.file AS file, m.line AS line, m.tags AS tags,
        em.message_id AS message_id
      FROM event_messages em JOIN messages m ON m.id = em.message_id""",
    _LOGS_VIEW + """LEFT JOIN event_messages em ON em.event_id = e.id AND em.seq = e.primary_seq
      LEFT JOIN messages m ON m.id = em.message_id""",
]
# v4: the report's rollups, counted from what is stored in the transaction that records
# the version (MySQL's DDL commits by itself: the tables are created first).
_SCHEMA_V4 = [*rollups.DDL, rollups.recount]
#: Each version's steps: SQL (formatted with TYPES) or a function(database, cursor).
MIGRATIONS: dict[int, list] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4}
