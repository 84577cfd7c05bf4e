#!/usr/bin/env python3
"""Fleet bans: how fast a ban on web1 is in web2's and web3's kernels, a 5,000-address flood,
and what each node costs the database.

Three servers as network namespaces (tests/test_fleet_harness.py: each its own fail2ban,
nft sets, fleet daemon and least-privileged database user), against one MariaDB (daemons
inside their namespaces, unix socket) and against a 3-node Galera cluster on loopback ports
(daemons over TCP, web1 on g1, web2 on g2, web3 on g3). Nothing touches the host's firewall.

1. Propagation: --bans addresses, one at a time, are banned on web1 through fail2ban's
   socket (what `fail2ban-client set modsec banip` sends); the clock stops when `nft
   monitor` in web2's and web3's namespaces reports the address added to mt-modsec-fleet.
   p50 / p99 / max over all (address, server) pairs.
2. Flood: --flood distinct addresses banned on web1 within 5 s (10 chunks, 0.5 s apart);
   time until every other server's kernel holds all of them. Apply rate: web3's daemon is
   stopped while web1 bans --flood more, then started; fleet bans per second from the first
   to the last in its kernel (fail2ban's banip and the action included).
3. Database load per node: queries a node's user ran per second (MariaDB's userstat
   USER_STATISTICS, one user per node), while idle (--idle seconds) and during the flood.

usage: python3 bench/fleet.py [--bans N] [--flood N] [--idle SECONDS] [--only single|galera]
                              [--results bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.runinfo import code_version, machine, publish  # noqa: E402
from modsec_tools.fleet.f2bsocket import Fail2BanSocket  # noqa: E402
from tests.f2b_harness import PYTHON  # noqa: E402
from tests.realparts.mariadb import MariaDB  # noqa: E402
from tests.test_fleet_harness import Fleet, FleetDb, GaleraCluster, Server  # noqa: E402

HEADING = "## bench/fleet.py"
_ELEMENT = re.compile(r"add element inet mt-modsec-fleet v[46] \{ ([0-9a-f.:]+)")


class KernelWatch:
    """``nft monitor`` in a server's namespace: when each address entered mt-modsec-fleet."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.seen: dict[str, float] = {}
        self.proc = server.ns.popen("nft", "monitor", "elements", stdout=subprocess.PIPE,
                                    text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.3)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            match = _ELEMENT.match(line)        # one line per element, batch or not
            if match:
                self.seen.setdefault(match.group(1), now)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def propagation(web1: Server, watches: list[KernelWatch], count: int) -> list[float]:
    sock = Fail2BanSocket(str(web1.f2b.sock))
    delays = []
    try:
        for index in range(count):
            address = f"198.18.{index // 250}.{index % 250 + 1}"
            started = time.monotonic()
            sock.send("set", "modsec", "banip", address)
            if not _wait(lambda: all(address in w.seen for w in watches), 10):
                raise RuntimeError(f"{address} did not reach every server in 10 s")
            delays += [w.seen[address] - started for w in watches]
            time.sleep(0.05)          # spread over the daemons' poll phases
    finally:
        sock.close()
    return delays


def queries(db: FleetDb, nodes: list[str], servers: list[MariaDB]) -> dict[str, int]:
    """Statements each node's user ran so far, summed over every database server."""
    totals = dict.fromkeys(nodes, 0)
    for server in servers:
        for user, count in server.sql(
                "SELECT USER, SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS "
                "FROM information_schema.USER_STATISTICS"):
            if user in totals:
                totals[user] += int(count)
    return totals


def rate(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    return {node: (after[node] - before[node]) / seconds for node in before}


def flood(web1: Server, watches: list[KernelWatch], count: int) -> dict[str, float]:
    addresses = [f"100.{64 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(count)]
    sock = Fail2BanSocket(str(web1.f2b.sock), timeout=120)
    started = time.monotonic()
    try:
        chunk = count // 10
        for step in range(10):
            sock.send("set", "modsec", "banip", *addresses[step * chunk:(step + 1) * chunk])
            pause = started + (step + 1) * 0.5 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        banned = time.monotonic() - started
    finally:
        sock.close()
    wanted = set(addresses[:chunk * 10])
    _wait(lambda: all(wanted <= set(w.seen) for w in watches), 60)
    result = {"banned_on_web1_s": banned}
    for watch in watches:
        times = [watch.seen[a] for a in wanted if a in watch.seen]
        name = watch.server.name
        result[f"{name}_held"] = len(times)
        result[f"{name}_all_s"] = max(times) - started if len(times) == len(wanted) else float("nan")
    return result


def catch_up(web1: Server, late: Server, watch: KernelWatch, count: int) -> float:
    """``late``'s daemon is stopped while web1 bans ``count`` addresses, then started: its
    apply rate, from the first to the last address in its kernel (bans/s)."""
    late.stop_fleet()
    addresses = [f"100.{96 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(count)]
    sock = Fail2BanSocket(str(web1.f2b.sock), timeout=120)
    try:
        sock.send("set", "modsec", "banip", *addresses)
    finally:
        sock.close()
    time.sleep(2)
    late.start_fleet()
    _wait(lambda: set(addresses) <= set(watch.seen), 60)
    times = [watch.seen[a] for a in addresses if a in watch.seen]
    if len(times) < count:
        raise RuntimeError(f"catch-up: {len(times)} of {count} applied")
    return count / max(max(times) - min(times), 1e-3)


@contextlib.contextmanager
def single(tmp: Path) -> Iterator[tuple[FleetDb, list[MariaDB], bool]]:
    with MariaDB() as server, FleetDb.on(server) as db:
        server.sql("SET GLOBAL userstat = 1")
        yield db, [server], True


@contextlib.contextmanager
def galera(tmp: Path) -> Iterator[tuple[FleetDb, list[MariaDB], bool]]:
    with GaleraCluster() as cluster, cluster.database() as db:
        for node in cluster.nodes:
            node.sql("SET GLOBAL userstat = 1")
        yield db, cluster.nodes, False


def run(kind: str, args: argparse.Namespace) -> dict:
    setup = {"single": single, "galera": galera}[kind]
    with tempfile.TemporaryDirectory(prefix="mt-bench-fleet-") as tmp, \
            setup(Path(tmp)) as (db, servers, inside), \
            Fleet(Path(tmp), db, bantime=3600) as fleet:
        web1, web2, web3 = fleet.start(3, inside=inside)
        watches = [KernelWatch(web2), KernelWatch(web3)]
        try:
            nodes = ["web1", "web2", "web3"]
            time.sleep(2)
            before = queries(db, nodes, servers)
            time.sleep(args.idle)
            idle = rate(before, queries(db, nodes, servers), args.idle)
            delays = propagation(web1, watches, args.bans)
            before, started = queries(db, nodes, servers), time.monotonic()
            flooded = flood(web1, watches, args.flood)
            busy = rate(before, queries(db, nodes, servers), time.monotonic() - started)
            flooded["catch_up_rate"] = catch_up(web1, web3, watches[1], args.flood)
        finally:
            for watch in watches:
                watch.close()
    delays.sort()
    return {"kind": kind, "p50": statistics.median(delays),
            "p99": delays[min(len(delays) - 1, int(len(delays) * 0.99))], "max": delays[-1],
            "samples": len(delays), "idle": idle, "busy": busy, **flooded}


def section(results: list[dict], args: argparse.Namespace, command: str, load: float) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [HEADING, "", PREAMBLE,
             f"**Command:** `{command}`. **When:** {when}, code of {code_version()}. "
             f"**Machine:** {machine()}; load average {load:.2f} before, "
             f"{os.getloadavg()[0]:.2f} after (the VM is shared). **Interpreter:** the fleet "
             f"daemons and the bench on Python {platform.python_version()} ({sys.executable}), "
             f"fail2ban on {PYTHON}.", "",
             "| | one MariaDB | Galera, 3 nodes |", "| --- | ---: | ---: |"]
    by = {r["kind"]: r for r in results}

    def row(label: str, fmt) -> None:
        cells = [fmt(by[k]) if k in by else "–" for k in ("single", "galera")]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    row("propagation web1 → web2/web3 kernel, p50", lambda r: f"{r['p50'] * 1000:.0f} ms")
    row("p99", lambda r: f"{r['p99'] * 1000:.0f} ms")
    row(f"max ({results[0]['samples']} samples)", lambda r: f"{r['max'] * 1000:.0f} ms")
    row(f"flood: {args.flood} bans made on web1 in", lambda r: f"{r['banned_on_web1_s']:.1f} s")
    row("… all in web2's kernel after", lambda r: f"{r['web2_all_s']:.1f} s")
    row("… all in web3's kernel after", lambda r: f"{r['web3_all_s']:.1f} s")
    row(f"apply rate: web3 catching up on {args.flood} bans (bans/s)",
        lambda r: f"{r['catch_up_rate']:,.0f}")
    row("queries/s per node, idle (web1/web2/web3)",
        lambda r: " / ".join(f"{r['idle'][n]:.1f}" for n in ("web1", "web2", "web3")))
    row("queries/s per node, flood (web1/web2/web3)",
        lambda r: " / ".join(f"{r['busy'][n]:.1f}" for n in ("web1", "web2", "web3")))
    lines += ["", "What the figures say (the goals of #19):", ""]
    lines += [verdict(r) for r in results]
    return "\n".join(lines) + "\n"


def verdict(r: dict) -> str:
    met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    reach = max(r["web2_all_s"], r["web3_all_s"])
    return (f"* {'one MariaDB' if r['kind'] == 'single' else 'Galera'}: propagation p50 ≤ 200 ms "
            f"{met(r['p50'] <= 0.2)}, p99 ≤ 1 s {met(r['p99'] <= 1)}; the flood in every "
            f"other kernel within 10 s {met(reach <= 10)} ({reach:.1f} s); apply rate ≥ 2,000/s "
            f"{met(r['catch_up_rate'] >= 2000)}.")


PREAMBLE = """\
Three servers as network namespaces (own fail2ban, nft sets, fleet daemon, least-privileged
user), one MariaDB (daemons on its unix socket) or a 3-node Galera cluster on loopback ports
(daemons over TCP, each on its own node). Propagation: a ban sent to web1's fail2ban until
`nft monitor` in web2's and web3's namespaces shows it in mt-modsec-fleet. Flood: the
addresses banned on web1 within 5 s, until every other kernel holds them all; apply rate:
web3's daemon stopped while web1 bans as many again, then started. Queries per node:
MariaDB's USER_STATISTICS of the node's user (summed over the Galera nodes), idle and
during the flood. The daemons read fail2ban's bans table every 50 ms and the other nodes'
heads every 100 ms: propagation is mostly these two waits.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bans", type=int, default=200)
    parser.add_argument("--flood", type=int, default=5000)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--only", choices=("single", "galera"))
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    command = " ".join(["python3 bench/fleet.py", *sys.argv[1:]])
    load = os.getloadavg()[0]
    results = []
    for kind in ([args.only] if args.only else ["single", "galera"]):
        result = run(kind, args)
        print(result, flush=True)
        results.append(result)
    publish(section(results, args, command, load), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
