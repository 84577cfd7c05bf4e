"""``modsec-tools ingest`` over real corpus trees into every sink, SQLite and MariaDB.

Each sink is read back independently of the pipeline: the archive with the Serial reader
(``modsec_tools.tree.sources``), the event log with ``parse_line``, the database with plain SQL,
and compared with ``parse_entry`` of the original files (and, for status, rule ids and
client, with the corpus truth derived from Apache's own logs).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from modsec_tools.audit.event import raw
from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)


# -- the two databases ------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "mariadb"])
def database(request, fast_tmp) -> ih.DB:
    return ih.database_param(request, fast_tmp)


# -- the tests ----------------------------------------------------------------------------------
def test_index_mode_r1_every_sink(fast_tmp, database):
    """r1 (native entries, 4 minute directories) announced by its real index log."""
    run = "r1_relevant_concurrent"
    sb = ih.Sandbox(fast_tmp, db=database.url, settings={"settle_seconds": "600"})
    index = ("--index-log", str(ih.index_log(run)))  # as a flag, the config file has none
    ih.extract(run, fast_tmp / "x", sb.storage)
    want = ih.originals(sb.storage, ih.read_index(ih.index_log(run)))
    assert len(want) == corpus.run_info(run)["audit_entries"]
    # Files just written: without their index lines they would wait (settle_seconds = 600);
    # the index lines (size and md5 checked) prove them complete at once.
    ih.age_tree(sb.storage, 0)
    done = sb.run(*index)
    assert f"ingest: {len(want)} entries" in done.stderr
    assert "0 quarantined" in done.stderr and "0 errors" in done.stderr
    ih.check_all(sb, database, want, (run,))

    # Directories emptied by this run are recent: ModSecurity may still write into them,
    # so they stay. Once old, the next run removes them, except the newest minute (and
    # its parents), which ModSecurity may be about to write into.
    assert ih.directories(sb.storage) == [
        "www-data", "www-data/20261128", "www-data/20261128/20261128-1626",
        "www-data/20261128/20261128-1627", "www-data/20261128/20261128-1628",
        "www-data/20261128/20261128-1629"]
    ih.age_tree(sb.storage)
    again = sb.run(*index)
    assert "ingest: 0 entries" in again.stderr
    assert ih.directories(sb.storage) == [
        "www-data", "www-data/20261128", "www-data/20261128/20261128-1629"]
    ih.check_all(sb, database, want, (run,))  # the second run added nothing


TREE_RUNS = ("r2_auditengine_on_concurrent", "r3_json_concurrent",
             "r6_detectiononly_concurrent", "r7_pl2_concurrent_noremoteip")


def test_tree_mode_native_json_detectiononly_pl2_every_sink(fast_tmp, database):
    """No index log: r2 (SecAuditEngine On), r3 (JSON), r6 (DetectionOnly, HTTP/0.9 without
    a status), r7 (paranoia level 2) in one tree, found by the scan."""
    sb = ih.Sandbox(fast_tmp, db=database.url)
    ih.merge_runs(fast_tmp, sb.storage, TREE_RUNS)
    want = ih.originals(sb.storage)
    total = sum(corpus.run_info(run)["audit_entries"] for run in TREE_RUNS)
    assert len(want) == total
    done = sb.run()
    assert f"ingest: {total} entries" in done.stderr
    ih.check_all(sb, database, want, TREE_RUNS)


def test_empty_directories_of_past_days_are_removed(fast_tmp):
    """A day that is over (a newer day exists) gets no more entries: once its directories
    are empty and old, all of them go, like the older minutes of today. (Regression: the
    newest minute of every past day, and so the day, used to stay forever.)"""
    sb = ih.Sandbox(fast_tmp, db="none")
    ih.merge_runs(fast_tmp, sb.storage, ("r1_relevant_concurrent",
                                       "r6_detectiononly_concurrent"))
    assert ih.directories(sb.storage)[:2] == ["www-data", "www-data/20261128"]
    assert "www-data/20261129/20261129-0031" in ih.directories(sb.storage)
    sb.run()
    ih.age_tree(sb.storage)
    sb.run()
    assert sb.left() == []
    # today's newest minute stays (ModSecurity may be about to write into it); the old day
    # goes entirely
    assert ih.directories(sb.storage) == [
        "www-data", "www-data/20261129", "www-data/20261129/20261129-0031"]


# -- hostile payloads in the request ------------------------------------------------------------
PAYLOADS = {
    # uri, host, user agent
    "InjDrop": (b"/search?q=1');DROP+TABLE+events;--&x=%27%22", b"www.lab.test",
                b"sqlmap/1.7 (';DELETE FROM matches;--)"),
    "InjOr": (b"/login?user=admin'--&pass='+OR+'1'='1'/*\\\"", b"www.lab.test\"' OR 1=1 --",
              b"Mozilla/5.0 \\\" '; SELECT SLEEP(5); --"),
    "InjNul": (b"/x?nul=\x00&caf\xe9=\xff\xfe&ren\xe9e=1%00", b"h\xf6st.example",
               b"agent\x00with\xe9nul\xff"),
    "InjCtl": (b"/\x01\x1b[31mred\x7f?a=%0d%0aInjected:+1", b"www.lab.test",
               b"ua\rwith\tcontrols"),
}


def craft(base: bytes, uid: str, new_uid: str, uri: bytes, host: bytes, ua: bytes) -> bytes:
    """A native entry with its request line, Host and User-Agent replaced (and a new id)."""
    data = base.replace(uid.encode(), new_uid.encode())
    head, rest = data.split(b"-B--\n", 1)
    request, after = rest.split(b"\n", 1)
    method, _uri, protocol = request.split(b" ")
    lines = after.split(b"\n")
    for i, line in enumerate(lines):
        if not line:
            break
        if line.lower().startswith(b"host:"):
            lines[i] = b"Host: " + host
        elif line.lower().startswith(b"user-agent:"):
            lines[i] = b"User-Agent: " + ua
    return head + b"-B--\n" + b" ".join((method, uri, protocol)) + b"\n" + b"\n".join(lines)


def plant_payloads(storage: Path) -> dict[str, tuple[bytes, bytes, bytes]]:
    """One crafted entry per payload, from a native r2 entry with Host, User-Agent and
    rule matches."""
    files = ih.tree_files_from_tar("r2_auditengine_on_concurrent")
    relpath, base = next((r, d) for r, d in sorted(files.items())
                         if b"\nUser-Agent: " in d and b"\nHost: " in d
                         and b"\nMessage: " in d)
    *dirs, name = relpath.strip("/").split("/")
    uid = name.split("-", 2)[2]
    made = {}
    for tag, (uri, host, ua) in PAYLOADS.items():
        new_uid = (tag + "Payload" + "A" * 27)[:27]
        path = storage.joinpath(*dirs, name[:16] + new_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(craft(base, uid, new_uid, uri, host, ua))
        made[new_uid] = (uri, host, ua)
    ih.age_tree(storage)
    return made


def test_injection_payloads_round_trip_byte_exact(fast_tmp, database):
    """SQL injection, quotes, backslashes, NUL, latin-1 and control bytes in the URI, Host
    and User-Agent: stored as the exact bytes (SQLite: parameters; MariaDB: hex literals),
    the schema intact, the event log escaped and reversible, the archive untouched."""
    sb = ih.Sandbox(fast_tmp, db=database.url)
    made = plant_payloads(sb.storage)
    want = ih.originals(sb.storage)
    for uid, (uri, host, ua) in made.items():  # the parser sees the crafted bytes
        event = want[uid].event
        assert (raw(event.uri), raw(event.host), raw(event.user_agent)) == (uri, host, ua)
    sb.run()
    ih.check_tree_empty(sb)
    ih.check_archive(sb, want)
    ih.check_event_log(sb, want)
    conn = database.connect()
    try:
        rows = ih.query(conn, "SELECT unique_id, uri, host, user_agent FROM events")
        view = ih.query(conn, "SELECT unique_id, REQUEST_URI, Host, User_Agent FROM logs")
        tables = ih.query(conn, "SELECT COUNT(*) FROM matches")[0][0]
    finally:
        conn.close()
    assert {ih._text(uid): (u, h, a) for uid, u, h, a in rows} == made
    assert {ih._text(uid): (u, h, a) for uid, u, h, a in view} == made
    assert tables > 0  # "DELETE FROM matches" did not run
    for line in sb.lines():
        assert (line.uri, line.host, line.ua) == made[line.id]
