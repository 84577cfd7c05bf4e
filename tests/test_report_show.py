"""``modsec-tools show UNIQUE_ID``: the stored row, its rule messages, and the entry exactly
as archived: after a real ``ingest`` of corpus entries, on SQLite and MariaDB; an entry
forged inside another one's request body is never taken for the real one; rotated and
compressed archives are searched; a terminal never gets the request's control bytes."""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import pty
import re
import subprocess
import sys

import pytest

from modsec_tools.report.archive import archive_files, find_entries
from tests import ingest_helpers as ih
from tests import test_report_data as data
from tests.ingest_helpers import REPO, cli_env, fast_tmp  # noqa: F401  (fixture)

RUN = "r1_relevant_concurrent"


@pytest.fixture(params=["sqlite", "mariadb"])
def ingested(request, fast_tmp):
    """A sandbox after ``modsec-tools ingest`` of r1 and of the hostile entries."""
    db = ""
    if request.param == "mariadb":
        server = request.getfixturevalue("mariadb")
        db = server.url_for(request.getfixturevalue("mariadb_db"))
    sb = ih.Sandbox(fast_tmp, db=db)
    ih.extract(RUN, fast_tmp / "x", sb.storage)
    minute = next(p for p in sb.storage.rglob("*") if p.is_dir() and re.fullmatch(
        r"\d{8}-\d{4}", p.name))
    for data_ in data.hostile_entries():
        uid = ih.uid_of(data_)
        path = minute / f"{minute.name}00-{uid}"
        path.write_bytes(data_)
    ih.age_tree(sb.storage)
    originals = ih.tree_files(sb.storage)
    sb.run()
    return sb, {ih.uid_of(body): body for body in originals.values()}


def show(sb: ih.Sandbox, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "modsec_tools.cli", "show", "--config",
                           str(sb.config), *args], cwd=REPO, env=cli_env(), capture_output=True,
                          timeout=120)
    assert done.returncode == expect, done.stderr.decode(errors="replace")
    return done


def test_event_messages_and_archived_bytes(ingested):
    sb, originals = ingested
    uid = next(u for u, body in originals.items() if b"942100" in body)
    exact = ih.archived_form(originals[uid])
    out = show(sb, uid).stdout
    assert out.endswith(exact)                          # piped: the archived bytes, unchanged
    head = out[:-len(exact)].decode()
    assert "unique_id" in head and uid in head and "node " in head
    assert re.search(r"\[\d+\] 942100 CRITICAL: SQL Injection Attack", head)
    assert f"{len(exact):,} bytes, sha256 {hashlib.sha256(exact).hexdigest()}" in head
    assert show(sb, uid, "--entry-only").stdout == exact
    document = json.loads(show(sb, uid, "--format", "json").stdout)
    assert base64.b64decode(document["archived"][0]["entry_base64"]) == exact
    (event,) = document["events"]
    assert event["fields"]["unique_id"] == uid and event["fields"]["node"] == ih.NODE
    stored_rules = [m["rule_id"] for m in event["messages"]]
    assert "942100" in stored_rules and len(stored_rules) == originals[uid].count(b"\nMessage: ")


def test_request_bytes_never_reach_a_terminal(ingested):
    """The hostile User-Agent's escape sequences, as a field and inside the entry: shown
    as \\x1b on a terminal (a pty here), written as they are to a pipe."""
    sb, originals = ingested
    uid = ih.uid_of(data.hostile_entries()[0])
    piped = show(sb, uid).stdout
    assert b"\x1b]0;owned" in piped                     # inside the archived bytes
    assert b"\x1b" not in piped[:piped.index(b"archived entry:")]   # never in the fields
    primary, secondary = pty.openpty()
    try:
        # read while it writes: a pty holds a few KB, and a full one blocks the writer
        proc = subprocess.Popen([sys.executable, "-m", "modsec_tools.cli", "show", "--config",
                                 str(sb.config), uid], cwd=REPO, env=cli_env(),
                                stdout=secondary, stderr=subprocess.PIPE)
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        stderr = proc.communicate(timeout=120)[1]
    finally:
        os.close(primary)
    assert proc.returncode == 0, stderr
    assert b"\x1b" not in seen and b"\\x1b]0;owned" in seen
    assert b"control characters shown as \\xNN" in seen


def test_unknown_id(ingested):
    sb, _ = ingested
    done = show(sb, "NoSuchId0000000000000000000", expect=1)
    assert b"no such event" in done.stderr


# -- the archive alone -------------------------------------------------------------------------
def _entries() -> list[bytes]:
    return sorted(ih.tree_files_from_tar(RUN).values())[:20]


def _forging(victim: bytes, host: bytes) -> bytes:
    """``host`` with a request body holding a whole fake entry under the victim's id."""
    uid = ih.uid_of(victim).encode()
    fake = (b"--0badc0de-A--\n[28/Nov/2026:16:26:44.000000 +0100] " + uid +
            b" 10.6.6.6 4444 127.0.0.1 80\n--0badc0de-B--\nGET /forged HTTP/1.1\n\n"
            b"--0badc0de-Z--\n")
    boundary = re.match(rb"--([0-9a-f]+)-A--", host).group(1)
    return host.replace(b"--" + boundary + b"-F--\n",
                        b"--" + boundary + b"-C--\n" + fake + b"\n--" + boundary + b"-F--\n", 1)


def test_forged_entry_in_a_body_is_not_the_entry(tmp_path):
    entries = _entries()
    victim, host = entries[5], entries[6]
    forging = _forging(victim, host)
    assert ih.uid_of(forging) == ih.uid_of(host)
    archive = tmp_path / "archive.log"
    # the forgery first, then the real entry (and a later one, so nothing ends the file)
    archive.write_bytes(b"".join(ih.archived_form(e) for e in
                                 [*entries[:5], forging, victim, *entries[7:]]))
    found = find_entries([str(archive)], ih.uid_of(victim))
    assert [f.data for f in found] == [ih.archived_form(victim)]
    assert found[0].offset == archive.read_bytes().index(ih.archived_form(victim))
    # and a forgery of an id never archived yields nothing
    ghost = _forging(entries[0].replace(ih.uid_of(entries[0]).encode(), b"GhostId0000000000"
                                        b"0000000000", 1), entries[1])
    archive.write_bytes(b"".join(ih.archived_form(e) for e in (ghost, *entries[2:])))
    assert find_entries([str(archive)], "GhostId00000000000000000000") == []


def test_rotated_and_compressed_archives(tmp_path):
    entries = _entries()
    archive = tmp_path / "archive.log"
    archive.write_bytes(b"".join(ih.archived_form(e) for e in entries[:5]))
    (tmp_path / "archive.log.1").write_bytes(b"".join(ih.archived_form(e)
                                                      for e in entries[5:10]))
    with gzip.open(tmp_path / "archive.log.2.gz", "wb") as packed:
        packed.write(b"".join(ih.archived_form(e) for e in entries[10:]))
    (tmp_path / "archive.log.old").write_bytes(b"not one of them")
    paths = archive_files(str(archive))
    assert paths == [str(archive), str(tmp_path / "archive.log.1"),
                     str(tmp_path / "archive.log.2.gz")]
    for number, entry in enumerate(entries):
        (found,) = find_entries(paths, ih.uid_of(entry))
        assert found.data == ih.archived_form(entry)
        assert found.path == paths[0 if number < 5 else 1 if number < 10 else 2]


def test_json_entries_and_a_cut_entry(tmp_path):
    """JSON entries are one line each; a native entry cut short (no Z) ends where the next
    entry begins."""
    json_entries = [item for item in ih.tree_files_from_tar("r3_json_concurrent").values()][:3]
    native = _entries()[:2]
    cut = native[0][:native[0].index(b"-H--")]
    archive = tmp_path / "archive.log"
    archive.write_bytes(ih.archived_form(json_entries[0]) + cut + b"\n"
                        + b"".join(ih.archived_form(e) for e in (native[1], *json_entries[1:])))
    for entry in (json_entries[0], json_entries[2], native[1]):
        (found,) = find_entries([str(archive)], ih.uid_of(entry))
        assert found.data == ih.archived_form(entry)
    (found,) = find_entries([str(archive)], ih.uid_of(native[0]))
    assert found.data == cut + b"\n"
