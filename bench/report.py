#!/usr/bin/env python3
"""How long ``modsec-tools report`` takes over a large database, on SQLite and MariaDB, and
how long ``modsec-tools show`` takes to find an entry in a large archive.

Builds 1,000,000 events with ~4.9 million rule matches (synthetic rows inserted straight
into the schema of modsec_tools/db, spread over 30 days and three nodes: ~50,000 client
addresses of which a few hundred make most of the traffic, each sending one to four
payloads that make the same 3-6 rules match every time, 40 rules in ~5,000 distinct
messages, 12 virtual hosts), counts their rollups (modsec_tools/db/rollups.py, as schema
4's migration does: the rows go in beside the inserts), creates the report's indexes
(modsec_tools/report/indexes.py), then times the report as the command makes it (every
section, the terminal tables rendered) over everything, over the data's last hour (--since
1h as of its last event), over its last seven whole UTC days and with --since 7d.
MariaDB: a private server (tests/realparts/mariadb.py) with a 1 GiB buffer pool, over its
Unix socket. Then ``show``'s search (report/archive.py) of a
--archive-gib archive made of corpus entries with fresh ids: an id it does not hold, and
its last entry's.

The data sets are kept in --keep (default /var/tmp/modsec-report-bench): a second run reuses
them (building takes minutes). Run it with the interpreter the product runs on (Debian's
python3-pymysql for MariaDB):

usage: /usr/bin/python3 bench/report.py [--events N] [--rounds N] [--no-mariadb]
                                        [--archive-gib G] [--keep DIR]
                                        [--results bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modsec_tools.db import Database, open_database, parse_target  # noqa: E402
from modsec_tools.db.rollups import recount  # noqa: E402
from modsec_tools.db.rows import (EVENT_COLUMNS, LINK_COLUMNS, MESSAGE_COLUMNS,  # noqa: E402
                                  message_id)
from modsec_tools.report import build_report, indexes, parse_filters  # noqa: E402
from modsec_tools.report.archive import find_entries  # noqa: E402
from modsec_tools.report.text import render_text  # noqa: E402

RULES = [("920350", "WARNING", "Host header is a numeric IP address"),
         ("920320", "NOTICE", "Missing User Agent Header"),
         ("913100", "CRITICAL", "Found User-Agent associated with security scanner"),
         ("930100", "CRITICAL", "Path Traversal Attack (/../)"),
         ("930120", "CRITICAL", "OS File Access Attempt"),
         ("932100", "CRITICAL", "Remote Command Execution: Unix Command Injection"),
         ("933100", "CRITICAL", "PHP Injection Attack: PHP Open Tag Found"),
         ("941100", "CRITICAL", "XSS Attack Detected via libinjection"),
         ("941110", "CRITICAL", "XSS Filter - Category 1: Script Tag Vector"),
         ("942100", "CRITICAL", "SQL Injection Attack Detected via libinjection"),
         ("942190", "CRITICAL", "Detects MSSQL code execution and information gathering"),
         ("942260", "CRITICAL", "Detects basic SQL authentication bypass attempts 2/3"),
         ] + [(str(921110 + i), "CRITICAL", f"HTTP protocol anomaly {i}") for i in range(26)]
SCORE_RULES = [("949110", "CRITICAL", "Inbound Anomaly Score Exceeded (Total Score: {})"),
               ("980130", "CRITICAL", "Inbound Anomaly Score Exceeded (Total Inbound Score: {}"
                                      " - SQLI={},XSS=0,RFI=0,LFI=0,RCE=0,PHPI=0,HTTP=0,"
                                      "SESS=0): individual paranoia level scores: {}, 0, 0, 0")]
HOSTS = [f"www{i}.example.test" for i in range(10)] + ["shop.example.test", "203.0.113.7"]
PATHS = [f"/{a}/{b}.php" for a in ("app", "api", "cgi-bin", "wp-admin", "static", "admin")
         for b in range(300)] + ["/", "/login", "/index.php", "/.env", "/xmlrpc.php"]
AGENTS = [f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"
          for v in range(90, 130)] + ["curl/8.5.0", "python-requests/2.31.0",
                                      "Go-http-client/1.1", "sqlmap/1.7.2#stable", "Nikto"]
NODES = ("web1", "web2", "web3")
SPAN = dt.timedelta(days=30)
MESSAGES_PER_RULE = 120


def _messages(rng: random.Random) -> dict[str, list[tuple]]:
    """rule id → its messages rows (id first), ~MESSAGES_PER_RULE each (varying data)."""
    out: dict[str, list[tuple]] = {}
    for rule, severity, msg in RULES + SCORE_RULES:
        rows = []
        for n in range(MESSAGES_PER_RULE):
            score = 5 + 5 * (n % 10)
            text = msg.format(score, score, score) if "{}" in msg else msg
            data = None if rule in ("949110", "980130") else \
                f"Matched Data: {rng.choice(('union select', '<script>', '../..', ';id'))}" \
                f"{n} found within ARGS:q{n % 7}"
            values = (rule, severity, text.encode(), data and data.encode(),
                      f'Warning. Pattern match at ARGS:q{n % 7}. [id "{rule}"]'.encode(),
                      "OWASP_CRS/3.3.4", None, None,
                      f"/usr/share/modsecurity-crs/rules/REQUEST-{rule[:3]}.conf",
                      str(100 + n), b'["application-multi","attack-generic"]')
            rows.append((message_id(values), *values))
        out[rule] = rows
    return out


def _clients(count: int = 50_000) -> tuple[list[str], list[float]]:
    """Addresses and their cumulative weights (a few make most of the traffic)."""
    addresses = [f"198.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(count)]
    return addresses, list(itertools.accumulate(1.0 / (rank + 10) ** 1.1
                                                for rank in range(count)))


def _profile(client: str, rules: list[str], known: dict = {}) -> list[tuple[str, ...]]:
    """A client's attacks: 1 to 4 payloads, each matching the same 3 to 6 rules every time
    it is sent (a scanner repeats its payloads; each makes the same rules match)."""
    if client not in known:
        rng = random.Random(client)
        known[client] = [tuple(rng.sample(rules, rng.randint(3, 6)))
                         for _ in range(rng.randint(1, 4))]
    return known[client]


def generate(events: int, seed: int = 20):
    """Yields (events rows, event_messages rows) in chunks, ids from 1, times ascending."""
    rng = random.Random(seed)
    messages = _messages(rng)
    attack_rules = [r[0] for r in RULES]
    addresses, cumulative = _clients()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    start = now - SPAN
    step = SPAN / events
    chunk_events, chunk_links = [], []
    for number in range(1, events + 1):
        created = start + step * number
        client = rng.choices(addresses, cum_weights=cumulative)[0]
        roll = rng.random()
        verdict = "blocked" if roll < 0.6 else "detected" if roll < 0.75 else "passed"
        if verdict == "passed":
            hit = rng.sample(attack_rules[:3], rng.randint(0, 2))
        else:
            hit = list(rng.choice(_profile(client, attack_rules)))
            hit += ["949110", "980130"] if verdict == "blocked" else []
        chosen = [rng.choice(messages[rule]) for rule in hit]
        status = (rng.choice((403, 403, 403, 302, 502)) if verdict == "blocked"
                  else rng.choice((200, 200, 404, 301)))
        uri = f"{rng.choice(PATHS)}?id={rng.randint(1, 10**6)}&q=%27or%201=1"
        score = 5 * len(hit) if verdict != "passed" else 0
        chunk_events.append((
            rng.choice(NODES), f"bench{number:012d}xAAAAAAAAA",
            created.isoformat(sep=" ", timespec="microseconds"), 60, client, client,
            rng.randint(1024, 65535), "192.0.2.1", 443, b"GET", uri.encode(), "HTTP/1.1",
            rng.choice(HOSTS).encode(), rng.choice(AGENTS).encode(), status,
            f"HTTP/1.1 {status}".encode(), int(verdict == "blocked"),
            2 if verdict == "blocked" else None, verdict, score, score // 2, 0,
            '{"SQLI": %d}' % (score // 2), chosen[0][2] if chosen else None,
            ",".join(c[1] for c in chosen).encode(), 0 if chosen else None,
            "ENABLED", "ModSecurity for Apache/2.9.7; OWASP_CRS/3.3.4", "Apache",
            f"/var/log/modsec_audit/www-data/x/{number}".encode(), 0))
        chunk_links += [(number, seq, c[0]) for seq, c in enumerate(chosen)]
        if len(chunk_events) == 20_000:
            yield chunk_events, chunk_links
            chunk_events, chunk_links = [], []
    if chunk_events:
        yield chunk_events, chunk_links
    yield [], [("messages", row) for rows in messages.values() for row in rows]


def _insert(db: Database, table: str, columns, rows) -> None:
    cursor = db.conn.cursor()
    marks = ",".join([db.mark] * len(columns))
    cursor.executemany(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})", rows)


def build(db: Database, events: int) -> tuple[int, int]:
    db.connect()
    db.migrate()
    if db.kind == "sqlite":
        db.conn.execute("PRAGMA synchronous=OFF")
    else:
        with db.conn.cursor() as cursor:
            cursor.execute("SET unique_checks = 0")
    made = links = 0
    for chunk_events, chunk_links in generate(events):
        if not chunk_events:  # the messages, last
            _insert(db, "messages", MESSAGE_COLUMNS, [row for _, row in chunk_links])
        else:
            _insert(db, "events", EVENT_COLUMNS, chunk_events)
            _insert(db, "event_messages", LINK_COLUMNS, chunk_links)
            made += len(chunk_events)
            links += len(chunk_links)
        db.conn.commit()
        print(f"\r  {made:,} events, {links:,} matches", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    began = time.perf_counter()
    db._run(lambda cursor: recount(db, cursor))  # the rows went in beside the inserts
    print(f"  rollups counted in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    if db.kind == "sqlite":
        db.conn.execute("ANALYZE")
    else:
        with db.conn.cursor() as cursor:
            cursor.execute("ANALYZE TABLE events, event_messages, messages")
            cursor.fetchall()
    db.close()
    return made, links


def _counts(db: Database) -> tuple[int, int]:
    try:
        return db.count("events"), db.count("event_messages")
    except Exception:
        return 0, 0
    finally:
        db.close()


def _last_event(url: str) -> dt.datetime:
    """The data's last event (the data may have been built days ago)."""
    db = open_database(parse_target(url), read_only=True)
    try:
        cursor = db._cursor()
        cursor.execute("SELECT MAX(created_at) FROM events")
        last = cursor.fetchone()[0]
        db.conn.commit()
    finally:
        db.close()
    return last if isinstance(last, dt.datetime) else dt.datetime.fromisoformat(last)


def _ranges(url: str) -> list[tuple[str | None, str | None, str, str]]:
    """(since, until, label, goal) of each report timed, as of the data's last event:
    everything and the last hour (the goals), and two weeks' worth: seven whole UTC days
    (the rollups, but for the distinct counts) and --since 7d (the events)."""
    last = _last_event(url)
    midnight = last.replace(hour=0, minute=0, second=0, microsecond=0)
    text = lambda stamp: stamp.isoformat(sep=" ")  # noqa: E731
    return [(None, None, "report, everything", "≤ 3 s"),
            (text(last - dt.timedelta(hours=1)), None, "report --since 1h", "≤ 0.5 s"),
            (text(midnight - dt.timedelta(days=7)), text(midnight),
             "report, 7 whole days (--since/--until at midnight)", ""),
            (text(last - dt.timedelta(days=7)), None, "report --since 7d", "")]


def time_report(url: str, since: str | None, until: str | None,
                rounds: int) -> tuple[float, float, int]:
    """Median wall and CPU time (this process's) of the report as the command makes it
    (every section, the terminal tables rendered), and the events it shows."""
    walls, cpus, events = [], [], 0
    for _ in range(rounds):
        began, cpu = time.perf_counter(), time.process_time()
        report = build_report(lambda: open_database(parse_target(url), read_only=True),
                              parse_filters(since=since, until=until), jails=())
        render_text(report, width=80)
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu)
        events = report.totals.events
    return statistics.median(walls), statistics.median(cpus), events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-mariadb", action="store_true")
    parser.add_argument("--archive-gib", type=float, default=1.0,
                        help="also time 'show' over an archive this large (0: not)")
    parser.add_argument("--keep", default="/var/tmp/modsec-report-bench")
    parser.add_argument("--results", help="put the table under this file's "
                        "'bench/report.py' heading (replacing the one there)")
    args = parser.parse_args()
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    rows = []
    sqlite_url = f"sqlite:///{keep}/events-{args.events}.db"
    if _counts(open_database(parse_target(sqlite_url)))[0] != args.events:
        Path(sqlite_url[len("sqlite:///"):]).unlink(missing_ok=True)
        print(f"building SQLite {sqlite_url}", file=sys.stderr)
        build(open_database(parse_target(sqlite_url)), args.events)
    rows += _measure("SQLite", sqlite_url, args.rounds)
    if not args.no_mariadb:
        with _mariadb(keep / f"mariadb-{args.events}") as server:
            url = server.url_for("modsec", unix_socket=True)
            if _counts(open_database(parse_target(url)))[0] != args.events:
                server.drop_database("modsec")
                server.create_database("modsec")
                print("building MariaDB", file=sys.stderr)
                build(open_database(parse_target(url)), args.events)
            rows += _measure("MariaDB", url, args.rounds)
    if args.archive_gib:
        rows += _measure_show(keep / "archive.log", args.archive_gib, args.rounds)
    table = _table(args, rows, (load, os.getloadavg()[0]))
    print(table)
    if args.results:
        _put_results(Path(args.results), table)
    return 0


def _mariadb(basedir: Path):
    """A private server on a kept datadir: its passwords are kept beside it (each
    MariaDB() draws new ones, which a datadir made earlier would refuse)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from realparts.mariadb import MariaDB
    server = MariaDB(basedir, extra_args=("--innodb-buffer-pool-size=1G",))
    secrets = basedir.parent / (basedir.name + ".passwords")
    if (basedir / "configured").exists() and secrets.exists():
        server.password, server.root_password = secrets.read_text().split()
        server._bootstrapped = True  # (its mariadb-install-db ran when it was made)
    else:
        shutil.rmtree(basedir, ignore_errors=True)
        secrets.write_text(f"{server.password} {server.root_password}\n")
        secrets.chmod(0o600)
    return server


def _measure(name: str, url: str, rounds: int) -> list[tuple]:
    """The reports of ``_ranges``, on the current schema (a data set kept from an older
    version is migrated: its rollups counted), with the report's indexes."""
    db = open_database(parse_target(url))
    db.connect()
    db.migrate()
    indexes.create(db)
    db.close()
    events, links = _counts(open_database(parse_target(url)))
    out = []
    for since, until, label, goal in _ranges(url):
        time_report(url, since, until, 1)  # warm the caches: a report is read from memory
        wall, cpu, shown = time_report(url, since, until, rounds)
        out.append((f"{name}: {label}", f"{events:,}", f"{links:,}", f"{shown:,}", wall,
                    f"{cpu:.2f} s" if name == "SQLite" else "(server)", goal))
        print(f"{name} {label}: {wall:.3f} s ({shown:,} events)", file=sys.stderr)
    return out


def _measure_show(path: Path, gib: float, rounds: int) -> list[tuple]:
    """``show``'s search of an archive of ``gib`` GiB: an id it does not hold (one pass
    of memmem) and the id of its last entry (the walk over every entry)."""
    size = int(gib * (1 << 30))
    if not path.exists() or abs(path.stat().st_size - size) > (1 << 20):
        _write_archive(path, size)
    last = _last_archived_id(path)
    out = []
    for uid, label in (("NoSuchId0000000000000000000", "id absent"), (last, "last entry")):
        walls, cpus = [], []
        for _ in range(rounds):
            began, cpu = time.perf_counter(), time.process_time()
            found = find_entries([str(path)], uid)
            walls.append(time.perf_counter() - began)
            cpus.append(time.process_time() - cpu)
        assert len(found) == (uid == last)
        out.append((f"show: archive {path.stat().st_size / (1 << 30):.2f} GiB, {label}",
                    "", "", "", statistics.median(walls), f"{statistics.median(cpus):.2f} s",
                    ""))
    return out


def _write_archive(path: Path, size: int) -> None:
    """Corpus entries (r1's storage tree) again and again, each with a new unique id."""
    sources = []
    with tarfile.open(ROOT / "tests/data/corpus/r1_relevant_concurrent/audit/"
                      "storage.tar.gz") as tree:
        for member in tree.getmembers():
            if member.isfile():
                data = tree.extractfile(member).read()
                sources.append((data, _A_ID.search(data).group(1)))
    written, number = 0, 0
    with open(path, "wb") as out:
        while written < size:
            for data, uid in sources:
                fresh = f"{number:010d}".encode() + uid[10:]
                piece = data.replace(uid, fresh)
                piece += b"" if piece.endswith(b"\n") else b"\n"
                out.write(piece)
                written += len(piece)
                number += 1


def _last_archived_id(path: Path) -> str:
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - (1 << 20)))
        return _A_ID.findall(stream.read())[-1].decode()


_A_ID = re.compile(rb"-A--\n\[[^\]\n]*\] (\S+) ")


def _machine(load: tuple[float, float]) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.machine())
    return (f"{os.cpu_count()} vCPU {cpu}, load average {load[0]:.2f} at the start, "
            f"{load[1]:.2f} at the end")


def _mariadb_version() -> str:
    try:
        return subprocess.run(["/usr/sbin/mariadbd", "--version"], capture_output=True,
                              text=True).stdout.split(" Ver ")[-1].split(" for ")[0].strip()
    except OSError:
        return "?"


def _table(args, rows, load) -> str:
    command = "/usr/bin/python3 bench/report.py" + (f" --events {args.events}"
                                                     if args.events != 1_000_000 else "")
    lines = [f"### `{command}` — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
             "",
             f"Machine: {_machine(load)}. Interpreter: {sys.executable} "
             f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, MariaDB "
             f"{_mariadb_version()} (buffer pool 1 GiB, Unix socket). Schema 4 (the rollups "
             "counted), the report's indexes (modsec_tools/report/indexes.py) created. "
             "Median of "
             f"{args.rounds} runs after one warm-up run; CPU: this process's (SQLite runs "
             "in it; MariaDB's work is the server's).",
             "",
             "| what | events in db | matches in db | events shown | time | CPU | goal |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for what, events, links, shown, wall, cpu, goal in rows:
        lines.append(f"| {what} | {events} | {links} | {shown} | {wall:.2f} s | {cpu} | "
                     f"{goal} |")
    return "\n".join(lines) + "\n"


HEADING = "## bench/report.py"


def _put_results(path: Path, table: str) -> None:
    """The section holds one current table: it replaces the previous one."""
    text = path.read_text()
    intro = (f"{HEADING}\n\n`modsec-tools report` over 1,000,000 synthetic events and "
             "~4.9 million rule matches (see the script's docstring): everything and the last "
             "hour (the goals), the last seven days (whole days: the rollups; --since 7d: "
             "the events); `modsec-tools show`'s search of an archive without an index."
             "\n\n")
    start = text.find(HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + intro + table
    else:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + intro + table + (text[end:] if end >= 0 else "")
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
