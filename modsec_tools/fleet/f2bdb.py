"""fail2ban's own database, read-only: every ban it made, with the escalated bantime.

fail2ban (0.11+, 1.0.2 here) writes each ban to the ``bans`` table of its ``dbfile`` a
moment after making it (its observer thread), with ``bantime`` already escalated and
``data`` holding the event lines that caused it (``matches``, up to ``dbmaxmatches``). So
publishing a ban needs no change to the action: we follow that table by rowid.

The table has no INTEGER PRIMARY KEY, so SQLite may reuse rowids once the newest rows are
deleted (fail2ban's purge after ``dbpurgeage``, an unban, a new file): a cursor past the
table's end is therefore reset, and the shared table's unique key keeps a ban from being
published twice.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable

from .rows import LocalBan
from .validate import RULES_CAP

# Our event line's fixed prefix ends "rules=<ids> id=": the first match lies before any
# byte an attacker wrote (docs/event-log.md).
_RULES = re.compile(r" rules=(\d+(?:,\d+)*|-) id=")


class Fail2BanDb:
    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.inode: tuple[int, int] | None = None

    def _open(self) -> sqlite3.Connection:
        info = os.stat(self.path)
        identity = (info.st_dev, info.st_ino)
        if self.conn is not None and identity != self.inode:
            self.close()                       # fail2ban made a new file
        if self.conn is None:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5,
                                        isolation_level=None, check_same_thread=False)
            self.inode = identity
        return self.conn

    def new_bans(self, after: int, jails: Iterable[str], limit: int = 5000
                 ) -> tuple[int, list[LocalBan]]:
        """(the cursor to resume from, the bans of ``jails`` after rowid ``after``). The
        cursor goes back to 0 when the table ends before ``after`` (see the docstring)."""
        jails = tuple(jails)
        conn = self._open()
        conn.execute("BEGIN")
        try:
            top = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM bans").fetchone()[0]
            if top < after:
                after = 0
            marks = ",".join("?" * len(jails))
            rows = conn.execute(
                f"SELECT rowid, jail, ip, timeofban, bantime, bancount, data FROM bans "
                f"WHERE rowid > ? AND rowid <= ? AND jail IN ({marks}) ORDER BY rowid LIMIT ?",
                (after, top, *jails, limit)).fetchall()
        finally:
            conn.execute("COMMIT")
        bans = [LocalBan(rowid, jail, str(ip), int(tob), int(bantime), int(count or 1),
                         rules_of(data)) for rowid, jail, ip, tob, bantime, count, data in rows]
        cursor = bans[-1].rowid if len(rows) == limit else top
        return cursor, bans

    def latest(self, jails: Iterable[str]) -> dict[tuple[str, str], int]:
        """(jail, ip) -> timeofban of the latest ban ``bips`` holds. fail2ban deletes the row
        when it unbans an address (not when a ban expires; its purge keeps bans in force)."""
        jails = tuple(jails)
        marks = ",".join("?" * len(jails))
        rows = self._open().execute(
            f"SELECT jail, ip, timeofban FROM bips WHERE jail IN ({marks})", jails)
        return {(jail, str(ip)): int(tob) for jail, ip, tob in rows}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def rules_of(data: object) -> str:
    """The rule ids of the event lines fail2ban matched, in order, each once."""
    try:
        matches = json.loads(data).get("matches") or [] if isinstance(data, (str, bytes)) else []
    except (ValueError, AttributeError):
        return ""
    seen: dict[str, None] = {}
    for match in matches if isinstance(matches, list) else []:
        line = match if isinstance(match, str) else "".join(map(str, match)) \
            if isinstance(match, list) else ""
        found = _RULES.search(line)
        if found and found.group(1) != "-":
            seen.update(dict.fromkeys(found.group(1).split(",")))
    text = ",".join(seen)
    while len(text) > RULES_CAP:
        text = text.rsplit(",", 1)[0]
    return text
