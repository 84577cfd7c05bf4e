#!/usr/bin/env python3
"""End-to-end ingest throughput: files on disk → archive, event log, database → deleted.

Replicates the corpus's r1 storage tree (fresh unique ids, so every entry is a new row) to
--entries files, then in the same run measures:

* naive: what the original cron script did, per entry: read the file, ~20 regex searches,
  append to the merged log, INSERT + COMMIT on one connection, unlink;
* ours: `Pipeline.run_once()` with full durability (journal, fdatasync'd archive and event
  log, one transaction per batch).

With --baseline DIR, ours runs from another checkout too (e.g. `git archive` of the
previous commit unpacked in DIR, its C speedups built there in place if it has them),
in turn with this one, the order turned round from round to round, in place of the naive
run (or beside it, with --naive): a change measured side by side in one run.

Every run starts from an identical tree, with SQLite (synchronous=FULL) and, with
--mariadb, against a private MariaDB server started for the run (tests/realparts; both
connect over its Unix socket, as a server on the same host is reached), and
each starts once the previous run's writes are on disk (sync; MariaDB: no dirty pages).
Each line also gives the CPU time the run used: its own processes' (getrusage: the
ingest process, its threads and its examining workers; the naive script's process) and
the MariaDB server's (/proc), not the machine's: on a VM whose 2 vCPUs other work shares,
entries/s follow the CPU an entry costs and what else runs that minute, the CPU an entry
much less. Hence --rounds: the runs again (fresh copies, fresh databases), then the
medians.

Run it with the interpreter the product runs on as installed: /usr/bin/python3 (install.sh's
venv and the .deb use it; on Debian 12, a build with PGO and LTO). A Python built without
them (pyenv's default, which made ./run-tests' .venv on the development VM) runs both the
naive script and ours ~15% slower. The first line printed names the interpreter. Ours
runs in a process of its own, with modsec_tools from this checkout (or DIR), and, for
--mariadb, PyMySQL: Debian's python3-pymysql, which .ci/run installs.

usage: /usr/bin/python3 bench/ingest.py [--entries N] [--mariadb] [--rounds N]
                                        [--batch-size N] [--workers N]
                                        [--baseline DIR ... [--naive]] [--skip-sqlite]
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
    from parse import NAIVE_FIELDS
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


def ours_run(checkout: Path, tree: Path, work: Path, db_url: str, batch_size: int,
             workers: str) -> dict:
    """`Pipeline.run_once()` in a child process importing modsec_tools from ``checkout``;
    what it measured: entries, seconds, cpu (the whole machine's busy seconds)."""
    settings = {
        "storage_dir": str(tree), "archive": str(work / "archive.log"),
        "event_log": str(work / "events.log"), "db": db_url,
        "state_dir": str(work / "state"), "quarantine_dir": str(work / "quarantine"),
        "settle_seconds": "0", "batch_size": str(batch_size), "node": "bench",
        "workers": workers}
    done = subprocess.run([sys.executable, __file__, "--child", str(checkout),
                           json.dumps(settings)], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def child(checkout: str, settings: str) -> None:
    """The measured run of ours (--child): nothing of this process's start-up counted."""
    sys.path.insert(0, checkout)
    from modsec_tools import config
    try:
        from modsec_tools.pipeline.ingest import Pipeline
    except ImportError:  # a checkout from before the sub-packages
        from modsec_tools.ingest import Pipeline  # type: ignore[no-redef]
    used, main = own_cpu(), time.process_time()
    started = time.perf_counter()
    with Pipeline(config.build({}, json.loads(settings))) as pipeline:
        stats = pipeline.run_once()
    print(json.dumps({"entries": stats.entries, "seconds": time.perf_counter() - started,
                      "cpu": own_cpu() - used, "main": time.process_time() - main,
                      "errors": stats.errors,
                      "quarantined": stats.quarantined, "spooled": stats.spooled}))


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have ended (the examining
    workers, once the pipeline is closed)."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def server_cpu(server) -> float:
    """CPU seconds the MariaDB server has used (0 without one)."""
    if server is None:
        return 0.0
    with open(f"/proc/{server.proc.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure(label: str, run, server=None) -> tuple[float, float]:
    used, served = own_cpu(), server_cpu(server)
    started = time.perf_counter()
    count = run()
    cpu = own_cpu() - used
    return report(label, count, time.perf_counter() - started, cpu, cpu,
                  server_cpu(server) - served)


def report(label: str, count: int, elapsed: float, cpu: float, main: float,
           served: float) -> tuple[float, float]:
    """Prints the line; (entries/s, CPU µs an entry, the server's included). ``main``:
    the CPU of the process that commits (the rest is the examining workers')."""
    rate, each = count / elapsed, (cpu + served) / max(count, 1) * 1e6
    print(f"  {label:<26} {count:>6} entries {elapsed:>6.2f} s {rate:>6.0f}/s   CPU "
          f"{cpu:5.2f} s (main process {main:4.2f} s) + server {served:4.2f} s "
          f"({each:.0f} µs/entry)")
    return rate, each


def measure_ours(label: str, checkout: Path, tree: Path, work: Path, db_url: str,
                 batch: int, workers: str, server=None) -> tuple[float, float]:
    served = server_cpu(server)
    done = ours_run(checkout, tree, work, db_url, batch, workers)
    served = server_cpu(server) - served
    if done["errors"] or done["quarantined"] or done["spooled"]:
        print(f"  {label}: {done}")
    return report(label, done["entries"], done["seconds"], done["cpu"], done["main"], served)


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


@dataclass(frozen=True)
class Side:
    """What is measured: the naive script (``checkout`` None) or ours from a checkout."""

    key: str
    label: str
    checkout: Path | None = None


def compare_round(name: str, number: int, sides: list[Side], base: Path, scratch: Path,
                  databases, batch: int, workers: str,
                  server=None) -> dict[str, tuple[float, float]]:
    """Each side once, on its own copy of the tree and a fresh database (``databases(n,
    key)``: a connect function and a URL), the order turned round from one round to the
    next; (entries/s, CPU µs an entry) by side."""
    results = {}
    turn = number % len(sides)
    for side in sides[turn:] + sides[:turn]:
        tree = scratch / f"{name}-{side.key}"
        work = scratch / f"{name}-work"
        shutil.copytree(base, tree)
        work.mkdir()
        try:
            connect, url = databases(number, side.key)
            # On disk, as a backlog is: an entry never written back (ext4 allocates blocks
            # late) costs less to delete than one that was. And nothing of the previous
            # run (~50 MB of the naive run's merged log and database) left to write back.
            settle(server)
            if side.checkout is None:
                results[side.key] = measure(side.label, lambda: naive_run(
                    tree, work / "merged.log", connect), server)
            else:
                results[side.key] = measure_ours(side.label, side.checkout, tree, work, url,
                                                 batch, workers, server)
            left = sum(1 for p in tree.rglob("*") if p.is_file())
            if left:
                print(f"  {side.label}: {left} files left in the tree")
        finally:
            for path in (tree, work):
                shutil.rmtree(path, ignore_errors=True)
    first = sides[0]
    print("  " + ", ".join(f"{side.key}/{first.key} "
                           f"{results[side.key][0] / results[first.key][0]:.2f}x"
                           for side in sides[1:]))
    return results


def compare(name: str, sides: list[Side], base: Path, scratch: Path, databases, batch: int,
            workers: str, rounds: int, server=None) -> None:
    print(f"{name}:")
    results = []
    for number in range(rounds):
        if rounds > 1:
            print(f" round {number + 1}/{rounds}")
        results.append(compare_round(name, number, sides, base, scratch, databases, batch,
                                     workers, server))
    if rounds > 1:
        print(f"  {name}, median of {rounds} rounds:")
        first = sides[0].key
        for side in sides:
            rates = [r[side.key][0] for r in results]
            cpu = [r[side.key][1] for r in results]
            line = (f"    {side.key:<10} {statistics.median(rates):6.0f}/s (best "
                    f"{max(rates):.0f}), {statistics.median(cpu):4.0f} µs CPU an entry (least "
                    f"{min(cpu):.0f})")
            if side.key != first:
                ratios = sorted(r[side.key][0] / r[first][0] for r in results)
                line += (f"; {side.key}/{first} {statistics.median(ratios):.2f}x (rounds: "
                         f"{ratios[0]:.2f}-{ratios[-1]:.2f}x)")
            print(line)


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
                        help="each side this many times per database, each on a fresh "
                             "database, then the medians (this VM's speed varies by 40%% "
                             "from one minute to the next)")
    parser.add_argument("--skip-sqlite", action="store_true", help="MariaDB only")
    parser.add_argument("--baseline", type=Path, metavar="DIR", action="append",
                        help="another checkout, measured against this one instead of the "
                             "naive script (may be given more than once)")
    parser.add_argument("--naive", action="store_true",
                        help="with --baseline: the naive script too")
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    sides = [Side(f"baseline{n or ''}", f"ours ({path})", path.resolve())
             for n, path in enumerate(args.baseline or ())]
    if args.naive or not sides:
        sides.append(Side("naive", "naive (per-entry commit)"))
    sides.append(Side("ours", "modsec-tools ingest", ROOT))
    for side in sides:
        if side.checkout is not None:
            # As installed (pip and dh_python3 compile at install time), the package's
            # bytecode is there; in a checkout under PYTHONDONTWRITEBYTECODE it is not,
            # and each examiner worker would compile every module it imports (~50 ms of
            # CPU a worker, a run). (Into modsec_tools/__pycache__, which git ignores.)
            compileall.compile_dir(side.checkout / "modsec_tools", quiet=1)
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
              f"({sys.executable})")

        def sqlite_db(n: int, key: str):
            for old in scratch.glob(f"{key}-*.db*"):  # the previous round's
                old.unlink()
            path = scratch / f"{key}-{n}.db"
            return sqlite_connect(path), f"sqlite:///{path}"
        if not args.skip_sqlite:
            compare("sqlite", sides, base, scratch, sqlite_db, args.batch_size, args.workers,
                    args.rounds)
        if args.mariadb:
            sys.path.insert(0, str(ROOT))
            from tests.realparts.mariadb import MariaDB
            # The datadir on this disk, not tmpfs: a production server fsyncs its commits.
            with MariaDB(basedir=str(scratch),
                         extra_args=["--innodb-flush-log-at-trx-commit=1"]) as server:
                def mariadb_db(n: int, key: str):
                    if n:
                        server.drop_database(f"{key}{n - 1}")  # out of the buffer pool
                    name = server.create_database(f"{key}{n}")
                    return (mysql_connect(server, name),
                            server.url_for(name, unix_socket=True))
                compare("mariadb", sides, base, scratch, mariadb_db, args.batch_size,
                        args.workers, args.rounds, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
