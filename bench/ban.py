#!/usr/bin/env python3
"""Ban throughput and per-packet cost: action.d/modsec-block.py vs fail2ban's stock actions.

Everything runs in network namespaces this script creates (mt-bench-*), each with its own
fail2ban-server (tests/f2b_harness.py), and never touches the host's firewall.

1. Throughput: --count distinct IPv4 addresses are banned through fail2ban
   (`fail2ban-client set modsec banip` with --batch addresses per call, --clients calls in
   flight) and the clock stops when the kernel holds all of them.  Measured for our action
   (auto, plus each backend) and, in the same run, the stock iptables-multiport and
   iptables-ipset-proto6 actions (--stock-count addresses).
2. Per-packet cost for a client that is NOT banned: connect() latency from a loopback
   client to a small TCP server on port 80 in the namespace, with 0 bans and with
   --packet-bans bans (our action, set lookup) and with the stock multiport chain at 10,000
   (banned through fail2ban in step 1) and --packet-bans rules (topped up with
   iptables-restore in the stock action's exact rule shape: banning 50,000 through the stock
   action alone takes ~5 minutes).  Namespaces are measured round-robin, --rounds rounds of
   --connects connects each, so background load hits all of them alike; figures are the
   median of the per-round medians.
3. Log-to-kernel latency of the jail's backend: 10 blocked lines for a fresh address are
   appended to the event log; time until the kernel blocks it (pyinotify vs polling).

With --against DIR (the fail2ban/ directory of another tree, e.g. an earlier commit's from
`git archive` into a directory named after the commit), step 1 also bans through that tree's
action, in the same interleaved rounds, and drives it alone: the versions side by side, each
tree's columns named after DIR's parent; it may be given more than once. --throughput-only
skips steps 2 and 3 and the stock actions.

usage: python3 bench/ban.py [--count N] [--stock-count N] [--packet-bans N] [--rounds N]
                            [--connects N] [--against DIR] [--throughput-only]
                            [--results bench/RESULTS.md] [--quick]
"""
from __future__ import annotations

import argparse
import json
import ipaddress
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.runinfo import code_version, machine, publish  # noqa: E402
from tests.f2b_harness import (BUNDLE, PYTHON, Fail2Ban, Netns, append_events, event_line,  # noqa: E402
                               fail2ban_server, iptables_flavour, listener, netns)

JAIL = """
[modsec]
enabled = true
logpath = {{root}}/events.log
bantime = 1d
action = {action}
{extra}
"""

# name -> (action line, kind of kernel object to count)
OURS = {
    "modsec-block auto": ('modsec-block.py[backend=auto, port="%(port)s"]', "auto"),
    "modsec-block nftables": ('modsec-block.py[backend=nftables, port="%(port)s"]', "nftables"),
    "modsec-block ipset": ('modsec-block.py[backend=ipset, port="%(port)s"]', "ipset"),
    "modsec-block iptables-legacy": ('modsec-block.py[backend=iptables-legacy, port="%(port)s"]',
                                     "iptables-legacy"),
}
# fail2ban's own ceiling: the same jail with no action at all
NO_ACTION = {"fail2ban without action": ("", "none")}
STOCK = {
    "stock iptables-multiport": ('iptables-multiport[name=modsec, port="http,https", protocol=tcp]',
                                 "multiport"),
    "stock iptables-ipset-proto6": ('iptables-ipset-proto6[name=modsec, port="http,https", protocol=tcp]',
                                    "stock-ipset"),
}


def addresses(count: int, offset: int = 0, base: str = "10.0.0.0") -> list[str]:
    first = int(ipaddress.IPv4Address(base)) + 1 + offset
    return [str(ipaddress.IPv4Address(first + n)) for n in range(count)]


# -- counting what the kernel holds ------------------------------------------------------------

def kernel_count(ns: Netns, kind: str, f2b: Fail2Ban | None = None) -> int:
    if kind == "none":                                # no kernel object: what fail2ban holds
        return len(f2b.banned("modsec")) if f2b else 0
    if kind == "nftables":
        out = ns.out("nft", "list", "set", "inet", "mt-modsec", "v4", check=False)
        return len(re.findall(r"\d+\.\d+\.\d+\.\d+", out))
    if kind in ("ipset", "stock-ipset"):
        name = "mt-modsec-4" if kind == "ipset" else "f2b-modsec"
        out = ns.out("ipset", "list", "-t", name, check=False)
        found = re.search(r"Number of entries: (\d+)", out)
        return int(found.group(1)) if found else 0
    if kind == "iptables-legacy":
        return ns.out("iptables-legacy", "-w", "-S", "mt-modsec", check=False).count("\n-A mt-modsec -s ")
    if kind == "multiport":
        return ns.out("iptables", "-w", "-S", "f2b-modsec", check=False).count("-A f2b-modsec -s ")
    raise ValueError(kind)


def kernel_has(ns: Netns, kind: str, ip: str) -> bool:
    """Cheap check for one address (polling must not steal the CPU fail2ban is measured on:
    listing 10,000 elements every few ms would)."""
    if kind == "nftables":
        argv = ["nft", "get", "element", "inet", "mt-modsec", "v4", f"{{ {ip} }}"]
    elif kind in ("ipset", "stock-ipset"):
        argv = ["ipset", "test", "mt-modsec-4" if kind == "ipset" else "f2b-modsec", ip]
    elif kind == "multiport":
        argv = ["iptables", "-w", "-C", "f2b-modsec", "-s", ip, "-j", "REJECT", "--reject-with",
                "icmp-port-unreachable"]
    elif kind == "iptables-legacy":
        return f"-A mt-modsec -s {ip}/32 " in ns.out("iptables-legacy", "-w", "-S", "mt-modsec", check=False)
    else:
        raise ValueError(kind)
    return ns.run(*argv, check=False).returncode == 0


# -- 1. throughput ---------------------------------------------------------------------------

def ban_flood(f2b: Fail2Ban, ns: Netns, kind: str, ips: list[str], batch: int, clients: int) -> dict:
    """Ban ips through fail2ban-client; seconds until the kernel holds all of them."""
    have = kernel_count(ns, kind, f2b)
    chunks = [ips[i:i + batch] for i in range(0, len(ips), batch)]
    started = time.monotonic()
    accepted: list[float] = []

    def send(chunk: list[str]) -> None:
        f2b.client("set", "modsec", "banip", *chunk, timeout=1800)
        accepted.append(time.monotonic())

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(send, c) for c in chunks]
        deadline = started + max(120, len(ips) / 20)
        # fail2ban bans a call's addresses in order and the action applies its queue in
        # order: when each call's last address is in the kernel, the whole flood is
        # (counted right after, untimed)
        waiting = [chunk[-1] for chunk in chunks]
        while kind != "none" and waiting:   # without action, banip returns once all are banned
            while waiting and kernel_has(ns, kind, waiting[0]):
                waiting.pop(0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind}: {waiting[0]} not in the kernel after {deadline - started:.0f}s")
            time.sleep(0.01)
        done, done_wall = time.monotonic(), time.time()
        for future in futures:
            future.result()
    if kind == "none":
        done = max(accepted)
        done_wall = time.time() - (time.monotonic() - done)
    held = kernel_count(ns, kind, f2b) - have
    if held != len(ips):
        raise AssertionError(f"{kind}: {held} of {len(ips)} bans in the kernel")
    seconds = done - started
    # server side: from fail2ban's first "Ban" notice of this flood (no client start-up)
    server = done_wall - first_ban(f2b, set(ips))
    return {"count": len(ips), "seconds": seconds, "rate": len(ips) / seconds,
            "accepted": max(accepted) - started, "server_seconds": server}


def first_ban(f2b: Fail2Ban, ips: set[str]) -> float:
    """Wall time of fail2ban's first "[modsec] Ban <ip>" notice for one of ips."""
    for line in f2b.log_text().splitlines():
        if "] Ban " in line and line.rsplit(" ", 1)[-1] in ips:
            return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
    raise RuntimeError("no Ban notice found")


def throughput(stack: ExitStack, setups: dict[str, tuple[str, str, int, Path]], args) -> dict[str, dict]:
    """Ban through every setup, interleaved: round r bans the r-th slice in each setup in turn,
    so the load of this shared machine hits all setups alike.  name -> result (+ ns, f2b)."""
    state = {}
    for name, (action, kind, count, bundle) in setups.items():
        ns = stack.enter_context(netns("mt-bench-"))
        f2b = stack.enter_context(fail2ban_server(ns, JAIL.format(action=action, extra=""), bundle=bundle))
        if kind == "auto":
            kind = "nftables" if iptables_flavour() == "nf_tables" else "iptables-legacy"
        state[name] = {"name": name, "kind": kind, "count": 0, "seconds": 0.0, "accepted": 0.0,
                       "server_seconds": 0.0,
                       "rounds": [], "ns": ns, "f2b": f2b, "ips": addresses(count)}
    time.sleep(1)                                     # every jail's action has started
    order = list(state)
    for r in range(args.rounds_throughput):
        for name in order[r % len(order):] + order[:r % len(order)]:
            st = state[name]
            per_round = len(st["ips"]) // args.rounds_throughput
            chunk = st["ips"][r * per_round:(r + 1) * per_round]
            flood = ban_flood(st["f2b"], st["ns"], st["kind"], chunk, args.batch, args.clients)
            st["count"] += flood["count"]
            st["seconds"] += flood["seconds"]
            st["accepted"] += flood["accepted"]
            st["server_seconds"] += flood["server_seconds"]
            st["rounds"].append(flood["rate"])
            print(f"  round {r + 1}: {name:30s} {flood['count']:6d} bans in {flood['seconds']:6.2f} s = "
                  f"{flood['rate']:7.0f} bans/s", flush=True)
    for st in state.values():
        st["rate"] = st["count"] / st["seconds"]
        st["server_rate"] = st["count"] / st["server_seconds"]
        print(f"  {st['name']:32s} {st['count']:6d} bans in {st['seconds']:7.2f} s = {st['rate']:8.0f} bans/s "
              f"(rounds {min(st['rounds']):.0f}-{max(st['rounds']):.0f}); from the first Ban notice "
              f"{st['server_rate']:.0f} bans/s", flush=True)
    return state


_ALONE = r"""
import importlib.machinery, json, sys, time
mod = importlib.machinery.SourceFileLoader("modsec-block", sys.argv[1]).load_module()
class Jail: name = "modsec"
action = mod.Action(Jail(), "modsec-block", backend=sys.argv[2])
action.start()
ips = json.loads(sys.stdin.read())
now = time.time()
started = time.perf_counter()
for ip in ips:
    action.ban({"ip": ip, "time": now, "bantime": 86400})
queued = time.perf_counter()
action.drain(600)
done = time.perf_counter()
print(json.dumps({"seconds": done - started, "queue_seconds": queued - started, "backend": action.backend}))
"""


def action_alone(backend: str, ips: list[str], bundle: Path = BUNDLE, label: str = "") -> dict:
    """The action without fail2ban: ban() calls from one thread, until the kernel holds all
    (a fresh namespace)."""

    with netns("mt-bench-") as ns:
        proc = ns.run(PYTHON, "-c", _ALONE, str(bundle / "action.d" / "modsec-block.py"), backend,
                      input=json.dumps(ips), timeout=600)
        out = json.loads(proc.stdout)
        kind = out["backend"]
        held = kernel_count(ns, kind)
    assert held == len(ips), (held, len(ips))
    suffix = f", {label}" if label else ""
    result = {"name": f"modsec-block {backend}, without fail2ban{suffix}", "kind": kind, "count": len(ips),
              "seconds": out["seconds"], "rate": len(ips) / out["seconds"], "accepted": out["queue_seconds"]}
    print(f"  {result['name']:32s} {len(ips):6d} bans in {out['seconds']:7.2f} s = {result['rate']:8.0f} bans/s"
          f"  (ban() calls done after {out['queue_seconds']:.2f} s)", flush=True)
    return result


def actions_alone(trees: dict[str, Path], count: int, rounds: int = 3) -> list[dict]:
    """action_alone() for every backend of every tree ('' is this one), ``count`` bans at once,
    ``rounds`` times interleaved across them; bans/s = all bans / summed time. (Each round is
    the whole flood: split into small ones, the figure would be the pause a forking backend
    keeps between its transactions, not its throughput.)"""
    out: dict[str, dict] = {}
    for _ in range(rounds):
        for label, bundle in trees.items():
            for backend in ("nftables", "ipset", "iptables-legacy"):
                one = action_alone(backend, addresses(count), bundle, label)
                total = out.setdefault(one["name"], {**one, "count": 0, "seconds": 0.0,
                                                     "rounds": []})
                total["count"] += one["count"]
                total["seconds"] += one["seconds"]
                total["rounds"].append(one["rate"])
    for total in out.values():
        total["rate"] = total["count"] / total["seconds"]
    return list(out.values())


# -- 2. per-packet cost ------------------------------------------------------------------------

_PROBER = r"""
import socket, struct, sys, time
linger = struct.pack("ii", 1, 0)          # close with RST: no TIME_WAIT pile-up
for line in sys.stdin:
    n = int(line)
    lat = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.settimeout(2)
        t = time.perf_counter_ns()
        s.connect(("127.0.0.1", 80))
        lat.append(time.perf_counter_ns() - t)
        s.close()
    lat.sort()
    print(lat[len(lat) // 2], lat[int(len(lat) * 0.9)], flush=True)
"""


class Prober:
    """A connect() loop living in one namespace; each round: N connects, (median, p90) in ns."""

    def __init__(self, stack: ExitStack, ns: Netns):
        stack.enter_context(listener(ns, "127.0.0.1:80"))
        self.proc = ns.popen(PYTHON, "-c", _PROBER, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stack.callback(self.proc.kill)

    def round(self, connects: int) -> tuple[int, int]:
        self.proc.stdin.write(f"{connects}\n")
        self.proc.stdin.flush()
        median, p90 = self.proc.stdout.readline().split()
        return int(median), int(p90)


def top_up_multiport(ns: Netns, total: int) -> None:
    """Fill the stock f2b-modsec chain to `total` rules, in the stock action's own rule shape."""
    have = kernel_count(ns, "multiport")
    extra = addresses(total - have, offset=500000)
    rules = "".join(f"-I f2b-modsec 1 -s {ip}/32 -j REJECT --reject-with icmp-port-unreachable\n" for ip in extra)
    ns.run("iptables-restore", "-w", "--noflush", input=f"*filter\n{rules}COMMIT\n", timeout=600)
    assert kernel_count(ns, "multiport") == total


@dataclass
class Setup:
    """One namespace (one prober) and the kernel states measured in it.

    rows: row name -> (bans held, callable that puts the kernel into that state, or None
    when the namespace has a single state).  Several states in one namespace are measured
    by the same prober, alternately: the cleanest comparison this shared machine allows.
    """
    ns: Netns
    rows: dict[str, tuple[int, Callable[[], None] | None]]


def packet_cost(setups: list[Setup], stack: ExitStack, rounds: int, connects: int) -> dict[str, dict]:
    probers = [Prober(stack, setup.ns) for setup in setups]
    for prober in probers:
        prober.round(50)                                # warm-up
    samples: dict[str, list[tuple[int, int]]] = {row: [] for setup in setups for row in setup.rows}
    for r in range(rounds):
        for i in [(r + k) % len(setups) for k in range(len(setups))]:   # rotate who goes first
            rows = list(setups[i].rows.items())
            for name, (_, enter) in rows[r % len(rows):] + rows[:r % len(rows)]:
                if enter is not None:
                    enter()
                    # after a refill the kernel grows the set's hash table in a worker:
                    # let it finish (a set filled ban by ban never sees that burst)
                    time.sleep(0.5)
                    probers[i].round(50)
                samples[name].append(probers[i].round(connects))
    return {name: {"median_us": statistics.median(m for m, _ in s) / 1000,
                   "p90_us": statistics.median(p for _, p in s) / 1000} for name, s in samples.items()}


def set_toggles(ns: Netns, kind: str, ips: list[str]) -> tuple[Callable[[], None], Callable[[], None]] | None:
    """(fill, empty) for our set backends: the same namespace with all bans, then with none."""
    if kind == "nftables":
        fill = "add element inet mt-modsec v4 { " + ", ".join(f"{ip} timeout 86400s" for ip in ips) + " }\n"
        return (lambda: ns.run("nft", "-f", "-", input=fill),
                lambda: ns.run("nft", "flush", "set", "inet", "mt-modsec", "v4"))
    if kind == "ipset":
        fill = "".join(f"add mt-modsec-4 {ip} timeout 86400\n" for ip in ips)
        return (lambda: ns.run("ipset", "restore", "-exist", input=fill),
                lambda: ns.run("ipset", "flush", "mt-modsec-4"))
    return None


# -- 1b. through the filter --------------------------------------------------------------------

FILTERED = {
    "modsec-block nftables, fast ban path": 'modsec-block.py[backend=nftables, port="%(port)s"]',
    "modsec-block nftables, fastban = false": 'modsec-block.py[backend=nftables, port="%(port)s", fastban=false]',
    "fail2ban without action": "",
}


class BanClock:
    """Stamps, from `nft monitor new elements` streamed in the namespace, when the kernel set
    holds a given number of new addresses."""

    def __init__(self, ns: Netns) -> None:
        self.proc = ns.popen("nft", "monitor", "new", "elements", stdout=subprocess.PIPE, text=True)
        self.seen = 0
        self.stamps: dict[int, float] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        time.sleep(0.3)                                # subscribed before anything is banned

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.seen += len(re.findall(r"\d+\.\d+\.\d+\.\d+", line.split("{", 1)[-1]))
            self.stamps[self.seen] = time.time()

    def when(self, count: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reached = [stamp for seen, stamp in self.stamps.items() if seen >= count]
            if reached:
                return min(reached)
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def filter_throughput(stack: ExitStack, args) -> list[dict]:
    """maxretry (2) event lines for each of --filter-count fresh addresses appended at once;
    bans/s until the kernel (or, without action, fail2ban's Ban notices) holds them all.
    Setups interleaved over --rounds-throughput rounds."""
    setups = {}
    for name, action in FILTERED.items():
        ns = stack.enter_context(netns("mt-bench-"))
        f2b = stack.enter_context(fail2ban_server(ns, JAIL.format(action=action, extra="maxretry = 2")))
        clock = BanClock(ns) if action else None
        if clock:
            stack.callback(clock.close)
        setups[name] = {"name": name, "kind": "filter", "ns": ns, "f2b": f2b, "clock": clock, "count": 0,
                        "seconds": 0.0, "rounds": []}
    time.sleep(1)
    for r in range(args.rounds_throughput):
        for name in list(setups)[r % len(setups):] + list(setups)[:r % len(setups)]:
            st = setups[name]
            ips = addresses(args.filter_count, offset=(r + 1) * 100000, base="100.64.0.0")
            data = "".join(event_line(ip) + "\n" for ip in ips for _ in range(2)).encode()
            fd = os.open(st["f2b"].root / "events.log", os.O_WRONLY | os.O_APPEND)
            began = time.time()
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            timeout = max(120, len(ips) / 20)
            if st["clock"] is not None:
                done = st["clock"].when(st["count"] + len(ips), timeout)
            else:
                done = last_ban_notice(st["f2b"], set(ips), timeout)
            if done is None:
                raise TimeoutError(f"{name}: not all {len(ips)} bans after {timeout:.0f} s")
            st["count"] += len(ips)
            st["seconds"] += done - began
            st["rounds"].append(len(ips) / (done - began))
            print(f"  round {r + 1}: {name:40s} {len(ips):6d} bans in {done - began:6.2f} s = "
                  f"{len(ips) / (done - began):7.0f} bans/s", flush=True)
    for st in setups.values():
        st["rate"] = st["count"] / st["seconds"]
    return [{k: v for k, v in st.items() if k not in ("ns", "f2b", "clock")} for st in setups.values()]


def last_ban_notice(f2b: Fail2Ban, ips: set[str], timeout: float) -> float | None:
    """Wall time of the "[modsec] Ban <ip>" notice that completes ips, once all are there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps = {}
        for line in f2b.log_text().splitlines():
            if "] Ban " in line and line.rsplit(" ", 1)[-1] in ips:
                stamps[line.rsplit(" ", 1)[-1]] = line[:23]
        if len(stamps) == len(ips):
            last = max(stamps.values())
            return time.mktime(time.strptime(last[:19], "%Y-%m-%d %H:%M:%S")) + int(last[20:23]) / 1000
        time.sleep(0.2)
    return None


# -- 3. log -> kernel latency ---------------------------------------------------------------------

def log_latency(stack: ExitStack, backend: str, fastban: bool, repeats: int) -> dict:
    ns = stack.enter_context(netns("mt-bench-"))
    f2b = stack.enter_context(fail2ban_server(ns, JAIL.format(
        action=f'modsec-block.py[backend=nftables, port="%(port)s", fastban={str(fastban).lower()}]',
        extra=f"backend = {backend}")))
    time.sleep(2)                                      # past the filter's and the action's start
    latencies: list[float] = []
    found: list[float] = []
    for n, ip in enumerate(addresses(repeats, base="172.16.0.0")):
        before = kernel_count(ns, "nftables")
        lines = [event_line(ip) for _ in range(10)]
        started, wall = time.monotonic(), time.time()
        append_events(f2b.root / "events.log", lines)
        deadline = started + 10
        while kernel_count(ns, "nftables") <= before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{backend}: no ban after 10 s")
            time.sleep(0.002)
        latencies.append(time.monotonic() - started)
        found.append(found_time(f2b, ip) - wall)
        time.sleep(0.3 + 0.37 * (n % 3))               # vary the phase against polling loops
    backend = f"{backend}, fastban = {str(fastban).lower()}"
    result = {"backend": backend, "median_ms": 1000 * statistics.median(latencies),
              "max_ms": 1000 * max(latencies), "found_ms": 1000 * statistics.median(found),
              "found_max_ms": 1000 * max(found)}
    print(f"  {backend:26s} log line -> fail2ban found it: median {result['found_ms']:.0f} ms "
          f"(max {result['found_max_ms']:.0f}); -> kernel: median {result['median_ms']:.0f} ms, "
          f"max {result['max_ms']:.0f} ms ({repeats} bans)", flush=True)
    return result


def found_time(f2b: Fail2Ban, ip: str) -> float:
    """Wall time of fail2ban's last "Found <ip>" log line (the filter saw the 10th line)."""
    stamp = None
    for line in f2b.log_text().splitlines():
        if f"] Found {ip} " in line:
            stamp = line[:23]
    if stamp is None:
        raise RuntimeError(f"no Found line for {ip}")
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000


# -- report ------------------------------------------------------------------------------------

ABOUT = (
    "Our action (fail2ban/action.d/modsec-block.py) against fail2ban's stock actions, every setup "
    "in a network namespace of its own with its own fail2ban-server. Through fail2ban: "
    "`fail2ban-client set modsec banip` with {batch} addresses a call, {clients} calls in flight, "
    "our shipped [modsec] jail (bantime.increment on), until the kernel holds every address; each "
    "setup's bans split into {rounds_throughput} rounds interleaved across setups, bans/s = all "
    "bans / summed time (slowest – fastest round in brackets). `fail2ban without action`: the "
    "same jail with `action =`, fail2ban's own ceiling. Action alone: ban() called from one thread "
    "without fail2ban, all the bans at once, 3 rounds interleaved. Other trees: the action of an earlier "
    "commit's fail2ban/ directory, in the same rounds. Through the filter: maxretry (2) blocked event-log lines for each of a "
    "round's fresh addresses appended at once, until `nft monitor` saw the set hold them all. "
    "Per-packet: connect() to 127.0.0.1:80 in the namespace by a client not banned, {rounds} "
    "interleaved rounds of {connects}, median of the rounds' medians (p90 in brackets). Event-log "
    "line → kernel: 10 blocked lines for a fresh address after a quiet spell of 0.3 to 1 s; "
    "`found`: fail2ban's filter logged the 10th.")


def rate(row: dict | None) -> str:
    if row is None:
        return "–"
    spread = f" ({min(row['rounds']):,.0f} – {max(row['rounds']):,.0f})" if row.get("rounds") else ""
    return f"{row['rate']:,.0f}{spread}"


def ratio(now: dict, before: dict | None) -> str:
    return "–" if before is None else f"{now['rate'] / before['rate']:.2f}×"


def throughput_rows(res: dict) -> list[tuple[str, dict, list[dict | None]]]:
    """(measure, this tree's row, each other tree's row or None), in the table's order."""
    by_name = {row["name"]: row for row in res["throughput"]}
    others = res["against"]
    rows = []
    for name in OURS:
        rows.append((f"bans/s through fail2ban: {name}", by_name[name],
                     [by_name.get(f"{name}, {other}") for other in others]))
    for backend in ("nftables", "ipset", "iptables-legacy"):
        name = f"modsec-block {backend}, without fail2ban"
        rows.append((f"bans/s, action alone: {backend}", by_name[name],
                     [by_name.get(f"{name}, {other}") for other in others]))
    rows += [(f"bans/s through fail2ban: {name}", by_name[name], [None] * len(others))
             for name in {**NO_ACTION, **STOCK} if name in by_name]
    rows += [(f"bans/s through the filter: {row['name']}", row, [None] * len(others))
             for row in res.get("filtered", [])]
    return rows


def report(res: dict, command: str) -> str:
    others = res["against"]
    lines = ["## bench/ban.py", "", ABOUT.format(**res), "",
             f"**Command:** `{command}`. **When:** {res['date']}, code of {res['code']}, "
             f"{res['minutes']:.1f} min. **Machine:** {res['machine']}; load average "
             f"{res['load_before']:.2f} before, {res['load_after']:.2f} after (the VM is shared). "
             f"**Interpreter:** fail2ban {res['fail2ban']} on {res['python']} ({PYTHON}), the "
             f"bench on Python {platform.python_version()}; {res['iptables']}.", "",
             "| measure | this tree |" + "".join(f" {o} | this / {o} |" for o in others),
             "|---|---:|" + "---:|---:|" * len(others)]
    paired: dict[str, list[float]] = {other: [] for other in others}
    none = " – | – |" * len(others)
    for measure, now, befores in throughput_rows(res):
        lines.append(f"| {measure} | {rate(now)} |" + "".join(
            f" {rate(before)} | {ratio(now, before)} |" for before in befores))
        for other, before in zip(others, befores):
            if before is not None:
                paired[other].append(now["rate"] / before["rate"])
    for row in res["packets"]:
        lines.append(f"| connect() µs, not banned: {row['setup']}, {row['banned']:,} banned | "
                     f"{row['median_us']:.1f} ({row['p90_us']:.1f}), {row['delta']:+.0f} % "
                     f"against 0 |{none}")
    for row in res["latency"]:
        lines.append(f"| event-log line → kernel ms, median (max): {row['backend']} | "
                     f"{row['median_ms']:.0f} ({row['max_ms']:.0f}); found "
                     f"{row['found_ms']:.0f} ({row['found_max_ms']:.0f}) |{none}")
    return "\n".join(lines + ["", "What the figures say:", ""] + verdicts(res, paired)) + "\n"


def verdicts(res: dict, paired: dict[str, list[float]]) -> list[str]:
    out = [f"* Side by side with {other}, this tree's action makes {min(ratios):.2f}–"
           f"{max(ratios):.2f}× its bans/s: within 15 % "
           f"{'met' if min(ratios) >= 0.85 else '**not met**'}."
           for other, ratios in paired.items() if ratios]
    by_name = {row["name"]: row for row in res["throughput"]}
    if "fail2ban without action" in by_name:
        share = by_name["modsec-block auto"]["rate"] / by_name["fail2ban without action"]["rate"]
        out.append(f"* Through fail2ban the action reaches {share:.0%} of fail2ban's own ceiling "
                   "(ticket handling, `Ban` notices, bantime.increment's database writes); alone "
                   "it applies tens of thousands of bans a second: the rest is CPU shared with "
                   "fail2ban on 2 vCPUs. The stock actions fork `iptables`/`ipset` once a ban.")
    out += NOTES
    return out


NOTES = [
    "* Per-packet: a set lookup does not grow with the number of bans; the stock chain is "
    "walked rule by rule by every packet to the jailed ports.",
    "* Event log to kernel: with the fast ban path the kernel holds the address milliseconds "
    "after fail2ban's filter decided; without it fail2ban's actions thread looks for tickets "
    "between sleeps of 0.2 to 0.8 s, and the polling backend reads the file on its own "
    "schedule.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="bans per action (ours)")
    parser.add_argument("--stock-count", type=int, default=10000, help="bans per stock action")
    parser.add_argument("--packet-bans", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=2500, help="addresses per fail2ban-client call")
    parser.add_argument("--clients", type=int, default=2, help="fail2ban-client calls in flight")
    parser.add_argument("--rounds-throughput", type=int, default=5,
                        help="interleaved rounds the --count bans are split into")
    parser.add_argument("--rounds", type=int, default=25, help="per-packet rounds")
    parser.add_argument("--connects", type=int, default=400)
    parser.add_argument("--latency-repeats", type=int, default=10)
    parser.add_argument("--filter-count", type=int, default=2000,
                        help="addresses a round for the throughput through the filter (step 1b)")
    parser.add_argument("--against", type=Path, metavar="DIR", action="append", default=[],
                        help="also ban through the action of this fail2ban/ directory (another "
                             "tree); may be given more than once")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only step 1, and without the stock actions")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--results", type=Path, help="update this RESULTS.md section")
    args = parser.parse_args()
    if args.quick:
        args.count, args.stock_count, args.packet_bans = 2000, 500, 5000
        args.rounds, args.connects, args.latency_repeats, args.rounds_throughput = 4, 200, 4, 2
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    command = " ".join(["python3 bench/ban.py", *sys.argv[1:]])
    started = time.monotonic()
    # the other tree is named after its directory, or its parent's for a fail2ban/ directory
    trees = {(tree.resolve().parent.name if tree.name == "fail2ban" else str(tree)): tree.resolve()
             for tree in args.against}
    res = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine(), "code": code_version(),
           "against": list(trees),
           "load_before": os.getloadavg()[0],
           "fail2ban": subprocess.run(["fail2ban-client", "-V"], capture_output=True, text=True).stdout.strip(),
           "python": subprocess.run([PYTHON, "-V"], capture_output=True, text=True).stdout.strip(),
           "iptables": subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout.strip(),
           "batch": args.batch, "clients": args.clients, "rounds": args.rounds, "connects": args.connects,
           "rounds_throughput": args.rounds_throughput,
           "throughput": [], "packets": [], "latency": []}
    with ExitStack() as stack:
        print(f"1. throughput: {args.count} bans (ours), {args.stock_count} (stock)", flush=True)
        others = {} if args.throughput_only else {**NO_ACTION, **STOCK}
        setups = {name: (action, kind, args.stock_count if name in STOCK else args.count, BUNDLE)
                  for name, (action, kind) in {**OURS, **others}.items()}
        for label, tree in trees.items():
            setups.update({f"{name}, {label}": (action, kind, args.count, tree)
                           for name, (action, kind) in OURS.items()})
        state = throughput(stack, setups, args)
        res["throughput"] = [{k: v for k, v in st.items() if k not in ("ns", "f2b", "ips")}
                             for st in state.values()]
        kept = {name: (st["ns"], st["f2b"], st["kind"]) for name, st in state.items()}

        res["throughput"] += actions_alone({"": BUNDLE, **trees}, args.count)
        print(f"1b. through the filter: {args.filter_count} addresses a round, maxretry 2", flush=True)
        with ExitStack() as inner:
            res["filtered"] = filter_throughput(inner, args)
        if args.throughput_only:
            stack.close()
            return finish(res, command, started, args)

        print(f"2. per-packet cost for a non-banned client, {args.packet_bans} bans", flush=True)
        setups = packet_setups(stack, kept, args)
        for _, f2b, _ in kept.values():
            f2b.kill()                                  # kernel state stays; no background work
        setups, baselines = setups
        measured = packet_cost(setups, stack, args.rounds, args.connects)
        for name, baseline in baselines.items():
            banned = next(s.rows[name][0] for s in setups if name in s.rows)
            row = dict(setup=name.rsplit(",", 1)[0], banned=banned, **measured[name])
            row["delta"] = 100 * (row["median_us"] / measured[baseline]["median_us"] - 1)
            res["packets"].append(row)
            print(f"  {name:45s} median {row['median_us']:8.1f} us  p90 {row['p90_us']:8.1f} us  "
                  f"{row['delta']:+6.1f} % vs 0 bans", flush=True)
        stack.close()                                   # namespaces gone before step 3

        print("3. event log line -> kernel ban", flush=True)
        for backend, fastban in (("pyinotify", True), ("pyinotify", False), ("polling", True)):
            with ExitStack() as inner:
                res["latency"].append(log_latency(inner, backend, fastban, args.latency_repeats))
    return finish(res, command, started, args)


def finish(res: dict, command: str, started: float, args) -> int:
    res["load_after"] = os.getloadavg()[0]
    res["minutes"] = (time.monotonic() - started) / 60
    publish(report(res, command), args.results)
    return 0


def packet_setups(stack: ExitStack, kept: dict, args) -> tuple[list[Setup], dict[str, str]]:
    """The namespaces to measure, and for each row the row it is compared with (its 0 bans)."""
    ours_ns, ours_f2b, kind = kept["modsec-block auto"]
    more = addresses(args.packet_bans - args.count, offset=args.count)
    for i in range(0, len(more), 5000):
        ours_f2b.banip("modsec", *more[i:i + 5000])
    deadline = time.monotonic() + 600
    while kernel_count(ours_ns, kind) < args.packet_bans:
        if time.monotonic() > deadline:
            raise TimeoutError("top-up of our action did not complete")
        time.sleep(0.1)
    ours0, ours_full = f"modsec-block ({kind}), 0", f"modsec-block ({kind}), {args.packet_bans}"
    toggles = set_toggles(ours_ns, kind, addresses(args.packet_bans))
    if toggles:       # the bans were made through fail2ban; toggling only re-creates that state
        setups = [Setup(ours_ns, {ours_full: (args.packet_bans, toggles[0]), ours0: (0, toggles[1])})]
    else:
        setups = [Setup(ours_ns, {ours_full: (args.packet_bans, None)}),
                  Setup(fresh(stack, OURS["modsec-block auto"][0]), {ours0: (0, None)})]
    multi0 = "stock iptables-multiport, 0"
    multi_ns = kept["stock iptables-multiport"][0]
    held = kernel_count(multi_ns, "multiport")
    multi_some = f"stock iptables-multiport, {held}"
    multi_full = f"stock iptables-multiport (topped up), {args.packet_bans}"
    big = fresh(stack, STOCK["stock iptables-multiport"][0])
    top_up_multiport(big, args.packet_bans)
    setups += [Setup(fresh(stack, STOCK["stock iptables-multiport"][0]), {multi0: (0, None)}),
               Setup(multi_ns, {multi_some: (held, None)}), Setup(big, {multi_full: (args.packet_bans, None)})]
    baselines = {ours0: ours0, ours_full: ours0, multi0: multi0, multi_some: multi0, multi_full: multi0}
    return setups, baselines


def fresh(stack: ExitStack, action: str) -> Netns:
    """A namespace whose fail2ban started `action` with no ban (then killed: state stays).

    Stock iptables actions start on demand (first ban): one ban and unban creates their
    chain and jump rule, as on any server that has banned once.
    """
    ns = stack.enter_context(netns("mt-bench-"))
    f2b = stack.enter_context(fail2ban_server(ns, JAIL.format(action=action, extra="")))
    f2b.banip("modsec", "192.0.2.99")
    f2b.unbanip("modsec", "192.0.2.99")
    time.sleep(0.5)
    f2b.kill()
    return ns


if __name__ == "__main__":
    raise SystemExit(main())
