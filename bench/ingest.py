#!/usr/bin/env python3
"""End-to-end ingest throughput: files on disk → archive, event log, database → deleted.

Replicates the corpus's r1 storage tree (fresh unique ids, so every entry is a new row) to
--entries files, then in the same run measures:

* naive: what the original cron script did, per entry: read the file, ~20 regex searches,
  append to the merged log, INSERT + COMMIT on one connection, unlink;
* ours: `Pipeline.run_once()` with full durability (journal, fdatasync'd archive and event
  log, one transaction per batch).

Both start from an identical tree, both with SQLite (synchronous=FULL) and, with
--mariadb, against a private MariaDB server started for the run (tests/realparts; both
connect over its Unix socket, as a server on the same host is reached), and
each starts once the previous run's writes are on disk (sync; MariaDB: no dirty pages).
Each line also gives the CPU time the whole machine was busy during the run (/proc/stat,
the database server and kernel threads included): on this 2-vCPU VM a run saturates both,
so entries/s follow the CPU an entry costs and the VM's speed of the minute. Hence
--rounds: the pair of runs again (fresh copies, fresh databases), then the medians.

Run it with the interpreter the product runs on as installed: /usr/bin/python3 (install.sh's
venv and the .deb use it; on Debian 12, a build with PGO and LTO). A Python built without
them (pyenv's default, which made ./run-tests' .venv on the development VM) runs both the
naive script and ours ~15% slower. The first line printed names the interpreter. It
imports modsec_tools from this checkout, whose C speedups ./run-tests builds in place,
and, for --mariadb, PyMySQL: Debian's python3-pymysql, which .ci/run installs.

usage: /usr/bin/python3 bench/ingest.py [--entries N] [--mariadb] [--rounds N]
                                        [--batch-size N] [--workers N]
"""
from __future__ import annotations

import argparse
import compileall
import os
import platform
import re
import shutil
import sqlite3
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modsec_tools import config, speedups  # noqa: E402
from modsec_tools.ingest import Pipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parse import NAIVE_FIELDS  # noqa: E402

_ID_IN_NAME = re.compile(r"^(\d{8}-\d{6})-(.+)$")


def replicate(source: Path, target: Path, count: int) -> int:
    """Copy entries from ``source`` into ``target`` until ``count`` files exist, giving each
    copy a new unique id (same length, so the entry stays well-formed)."""
    originals = sorted(p for p in source.rglob("*") if p.is_file())
    written = 0
    copy = 0
    while written < count:
        for path in originals:
            if written >= count:
                break
            stamp, unique_id = _ID_IN_NAME.match(path.name).groups()
            new_id = f"{copy:04x}" + unique_id[4:]
            relative = path.relative_to(source).parent
            # a different minute directory per copy keeps directories a realistic size
            minute = f"{relative.name[:9]}{(int(relative.name[9:]) + copy) % 10000:04d}"
            folder = target / relative.parent / minute
            folder.mkdir(parents=True, exist_ok=True)
            data = path.read_bytes().replace(unique_id.encode(), new_id.encode())
            (folder / f"{stamp}-{new_id}").write_bytes(data)
            written += 1
        copy += 1
    return written


def naive_run(tree: Path, merged: Path, connect) -> int:
    """The original cron script's shape: one entry at a time, commit each."""
    conn, mark = connect()
    cursor = conn.cursor()
    cursor.execute("CREATE TABLE IF NOT EXISTS logs (REQUEST_METHOD TEXT, REQUEST_URI TEXT, "
                   "REMOTE_ADDR TEXT, ruleId TEXT, Host TEXT, msg TEXT, data TEXT, "
                   "unique_id TEXT, severity TEXT, maturity TEXT, accuracy TEXT, "
                   "User_Agent TEXT, responce_header TEXT, Engine_Mode TEXT, Score TEXT, "
                   "SQLi TEXT, XSS TEXT, phase TEXT, created_at TEXT)")
    conn.commit()
    count = 0
    insert = f"INSERT INTO logs VALUES ({','.join([mark] * 19)})"
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        data = path.read_bytes()
        text = data.decode("utf-8", "replace")
        found = [m.group(1) if m else None for m in (p.search(text) for p in NAIVE_FIELDS)]
        with open(merged, "ab") as stream:
            stream.write(data)
        cursor.execute(insert, found[:19])
        conn.commit()
        path.unlink()
        count += 1
    conn.close()
    return count


def sqlite_connect(path: Path):
    def connect():
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA synchronous=FULL")
        return conn, "?"
    return connect


def mysql_connect(server, database: str):
    def connect():
        import pymysql
        conn = pymysql.connect(unix_socket=server.socket, user=server.user,
                               password=server.password, database=database)
        return conn, "%s"
    return connect


def ours_run(tree: Path, work: Path, db_url: str, batch_size: int,
             workers: str = "auto") -> tuple[int, dict]:
    settings = config.build({}, {
        "storage_dir": str(tree), "archive": str(work / "archive.log"),
        "event_log": str(work / "events.log"), "db": db_url,
        "state_dir": str(work / "state"), "quarantine_dir": str(work / "quarantine"),
        "settle_seconds": "0", "batch_size": str(batch_size), "node": "bench",
        "workers": workers})
    with Pipeline(settings) as pipeline:
        stats = pipeline.run_once()
    return stats.entries, {"quarantined": stats.quarantined, "spooled": stats.spooled}


def busy_seconds() -> float:
    """CPU time the whole machine has been busy (/proc/stat): what a run costs, database
    server and kernel threads included; 0 where there is no /proc."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def measure(label: str, run) -> float:
    busy = busy_seconds()
    started = time.perf_counter()
    count = run()
    elapsed = time.perf_counter() - started
    cpu = busy_seconds() - busy
    rate = count / elapsed
    print(f"  {label:<34} {count:>7} entries {elapsed:>7.2f} s {rate:>9.0f} entries/s"
          f"   CPU {cpu:5.2f} s ({cpu / max(count, 1) * 1e6:.0f} µs/entry, whole machine)")
    return rate


def settle_mariadb(server) -> None:
    """Until the server has written back the pages the previous run left dirty: its page
    cleaner would otherwise be flushing them (~50 MB after the naive run) during the next
    run, on the same two vCPUs."""
    (limit,), = server.sql("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
    server.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0")  # flush them all
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            (_, dirty), = server.sql("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            if int(dirty) == 0:
                break
            time.sleep(0.2)
    finally:
        server.sql(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(limit)}")


def settle(server=None) -> None:
    """Start each measured run with nothing of the previous one left to write back."""
    os.sync()
    if server is not None:
        settle_mariadb(server)
    os.sync()


def compare_round(name: str, base: Path, scratch: Path, naive_connect, ours_url, batch: int,
                  workers: str, server=None) -> tuple[float, float]:
    """One naive run and one of ours, each on its own copy of the tree and a fresh database;
    returns (naive, ours) entries/s."""
    tree_naive = scratch / f"{name}-naive"
    tree_ours = scratch / f"{name}-ours"
    work = scratch / f"{name}-work"
    shutil.copytree(base, tree_naive)
    shutil.copytree(base, tree_ours)
    work.mkdir()
    try:
        # On disk, as a backlog is: an entry never written back (ext4 allocates blocks
        # late) costs less to delete than one that was.
        settle(server)
        rate_naive = measure("naive (per-entry commit)", lambda: naive_run(
            tree_naive, scratch / f"{name}-merged.log", naive_connect))
        # The naive run leaves ~50 MB of merged log and its database to write back: not
        # during ours.
        settle(server)
        rate_ours = measure("modsec-tools ingest", lambda: ours_run(
            tree_ours, work, ours_url, batch, workers)[0])
        left = sum(1 for p in tree_ours.rglob("*") if p.is_file())
        print(f"  ratio ours/naive: {rate_ours / rate_naive:.2f}x   files left: {left}")
    finally:
        for path in (tree_naive, tree_ours, work):
            shutil.rmtree(path, ignore_errors=True)
        (scratch / f"{name}-merged.log").unlink(missing_ok=True)
    return rate_naive, rate_ours


def compare(name: str, base: Path, scratch: Path, databases, batch: int, workers: str,
            rounds: int, server=None) -> None:
    """``databases(round)``: (naive connect, our URL), fresh for each round."""
    print(f"{name}:")
    results = []
    for number in range(rounds):
        if rounds > 1:
            print(f" round {number + 1}/{rounds}")
        results.append(compare_round(name, base, scratch, *databases(number), batch,
                                     workers, server))
    if rounds > 1:
        naive = statistics.median(r[0] for r in results)
        ours = statistics.median(r[1] for r in results)
        ratios = sorted(r[1] / r[0] for r in results)
        best = max(results, key=lambda r: r[1])
        print(f"  {name}, median of {rounds} rounds: naive {naive:.0f}/s, ours {ours:.0f}/s, "
              f"ratio {statistics.median(ratios):.2f}x (rounds: {ratios[0]:.2f}-"
              f"{ratios[-1]:.2f}x); fastest round: ours {best[1]:.0f}/s "
              f"({best[1] / best[0]:.2f}x its naive run)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--workers", default="auto",
                        help="ingest's workers setting (default: auto, as installed)")
    parser.add_argument("--mariadb", action="store_true",
                        help="also measure against a private MariaDB server")
    parser.add_argument("--rounds", type=int, default=1,
                        help="naive + ours this many times per database, each on a fresh "
                             "database, then the medians (this VM's speed varies by 40%% "
                             "from one minute to the next)")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    # As installed (pip and dh_python3 compile at install time), the package's bytecode is
    # there; in a checkout under PYTHONDONTWRITEBYTECODE it is not, and each examiner
    # worker would compile every module it imports (~50 ms of CPU a worker, a run). (Into
    # modsec_tools/__pycache__, which git ignores.)
    compileall.compile_dir(ROOT / "modsec_tools", quiet=1)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        scratch = Path(tmp)
        with tarfile.open(args.corpus / "r1_relevant_concurrent" / "audit" /
                          "storage.tar.gz") as archive:
            # (extraction filters came with Python 3.11.4; Debian 12's python3 is 3.11.2)
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") \
                else {}
            archive.extractall(scratch / "r1", **extra)
        base = scratch / "base"
        replicate(scratch / "r1" / "storage", base, args.entries)
        size = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
        print(f"{args.entries} entries, {size / 1e6:.1f} MB, batch size {args.batch_size}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()} "
              f"({sys.executable}), {speedups.describe()}")
        def sqlite_round(n: int):
            for old in scratch.glob("*.db*"):  # the previous round's
                old.unlink()
            return (sqlite_connect(scratch / f"naive-{n}.db"),
                    f"sqlite:///{scratch / f'ours-{n}.db'}")
        compare("sqlite", base, scratch, sqlite_round, args.batch_size, args.workers,
                args.rounds)
        if args.mariadb:
            sys.path.insert(0, str(ROOT))
            from tests.realparts.mariadb import MariaDB
            # The datadir on this disk, not tmpfs: a production server fsyncs its commits.
            with MariaDB(basedir=str(scratch),
                         extra_args=["--innodb-flush-log-at-trx-commit=1"]) as server:
                def mariadb_round(n: int):
                    for old in (f"naive{n - 1}", f"ours{n - 1}")[:2 if n else 0]:
                        server.drop_database(old)  # out of the buffer pool, off the disk
                    return (mysql_connect(server, server.create_database(f"naive{n}")),
                            server.url_for(server.create_database(f"ours{n}"),
                                           unix_socket=True))
                compare("mariadb", base, scratch, mariadb_round, args.batch_size,
                        args.workers, args.rounds, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
