#!/usr/bin/env python3
"""Attack -> kernel ban, end to end: modsec-tools against fail2ban's stock way, side by side.

Each pipeline ("row") gets a private network namespace (mt-e2e-*) with its own Apache 2.4 +
mod_security2 + OWASP CRS (tests/realparts) listening on 198.19.255.254:PORT, and its own
fail2ban-server (tests/f2b_harness), both jails with maxretry 2, findtime 60, bantime 600,
backend pyinotify:

  stock         the stock `apache-modsecurity` filter on Apache's error log, the stock
                `iptables-ipset-proto6` action; no modsec-tools
  ours          `modsec-tools watch` -> event log -> our `modsec` filter -> modsec-block
                (nftables, fast ban path on)
  ours-nofast   the same with `fastban = false`: fail2ban's own schedule
  ours-upstream the same, fastban off, on a copy of this machine's fail2ban with the
                --upstream-patch changes applied (docs/upstream/): what fail2ban could do

Attackers bind addresses of 198.18.0.0/15 (a local route on the namespace's lo makes the
whole range theirs; never loopback, which the action refuses to block) and send
`GET /?id=1' or '1'='1` (CRS 942100: 403), one connection a request.  Measured per row:

  single   --runs attackers in turn at each --rates rate (requests/s, open loop), runs of the
           rows interleaved: from the client's receipt of the 2nd 403 (maxretry) to the
           address in the kernel set, and how many requests were answered after that 2nd
           403's request (0 = banned before the next request)
  flood    --flood addresses at once, each sending requests back to back: the same two
           figures per address, and the blocked responses, `Found` lines and bans a second
           (the attack's pace bounds them)
  idle     --idle seconds with nothing to ban: CPU of the threads that wake the bans
  filter   --filter-lines blocked lines through `fail2ban-regex`, with our filter and with a
           minimal one (same date pattern, no grammar): lines/s of fail2ban's matching

(How many bans a second fail2ban applies through the filter is bench/ban.py's, with no
observer beside it.)

Kernel times: `nft monitor` streamed in the namespace (nftables set, ours) or an `ipset -`
process testing the attacker every 2 ms (the stock action's ipset), stamped when read.
Stages from the same observer: the audit entry's IN_CLOSE_WRITE, the event-log line (ours)
or error-log line (stock), fail2ban's `Found` and `Ban` lines, the kernel.

As on a server, where systemd runs each as a service, Apache, fail2ban and watch each run in a
CPU control group of their own with their unit's weight (watch: packaging/modsec-tools.service's
CPUWeight=); the bench and its attackers in another, the observer in its own (bench/cpugroups.py;
without a CPU controller everything shares one group and the results say so).

Every process runs in the namespaces except watch; all traffic stays inside them; on exit
(also Ctrl-C / TERM) everything is killed, the namespaces deleted (with their firewalls), the
control groups removed and the work directory removed (unless --keep).  Needs root, apache2 + libapache2-mod-security2 +
modsecurity-crs, fail2ban, nftables, ipset, iptables, and an interpreter with modsec-tools'
dependencies for watch (./run-tests makes one: .venv/bin/python).

usage: .venv/bin/python bench/e2e.py [--rows stock,ours] [--runs 20] [--rates 20,200] [--flood 200]
                                     [--idle 30] [--filter-lines 20000] [--upstream-patch PATCH]
                                     [--results bench/RESULTS.md] [--quick]
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import errno
import ipaddress
import json
import os
import platform
import re
import select
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()
sys.path.insert(0, str(REPO))
from bench import cpugroups  # noqa: E402

#: watch's CPU weight as its systemd unit sets it (Apache's and fail2ban's units: the default)
WATCH_WEIGHT = cpugroups.unit_weight(REPO / "packaging" / "modsec-tools.service")

JAIL_OURS, JAIL_STOCK = "modsec", "apache-modsecurity"
NFT_TABLE = f"mt-{JAIL_OURS}"                    # modsec-block's objects for the jail
STOCK_SET = f"f2b-{JAIL_STOCK}"                  # iptables-ipset-proto6's set
MAXRETRY = 2
SERVER = "198.19.255.254"                       # Apache, inside the attackers' local range
SOURCES = ipaddress.IPv4Network("198.18.0.0/15")
ATTACK_URI = "/?id=1'%20or%20'1'='1"
# the goals (#16)
GOALS = {"p50": 0.015, "p99": 0.040, "flood_p99": 0.100, "idle_cpu": 0.005,
         "zero_after_share": 0.95, "max_after_fast": 1}
UPSTREAM_PATCHES = ("wake-actions-on-ticket.patch", "pyinotify-filter-read-at-once.patch")
ROW_LABELS = {
    "stock": "stock jail (apache-modsecurity on error.log) + iptables-ipset-proto6",
    "ours": "modsec-tools: watch → modsec jail → modsec-block (nftables, fast ban path)",
    "ours-nofast": "modsec-tools, fastban = false (fail2ban's own schedule)",
    "ours-upstream": "modsec-tools, fastban = false, fail2ban + docs/upstream patches",
}


# =============================================================================================
# helper processes (run as `python3 bench/e2e.py _observe|_attack ...` inside a namespace)

_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_Q_OVERFLOW, _IN_ISDIR = 0x4000, 0x40000000
_EVENT = struct.Struct("iIII")


class _Inotify:
    """A minimal inotify (ctypes): no dependency, nothing but the syscalls."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def add(self, path: str, mask: int) -> int:
        wd = self.libc.inotify_add_watch(self.fd, path.encode(), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def read(self) -> list[tuple[int, int, str]]:
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return []
        events, pos = [], 0
        while pos < len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, pos)
            name = data[pos + 16:pos + 16 + size].split(b"\0", 1)[0].decode("utf-8", "replace")
            events.append((wd, mask, name))
            pos += 16 + size
        return events


_SECTION_A = re.compile(rb"-A--\n\[[^\]]*\] (\S+) (\S+) \d+ ")
_LOG_PATTERNS = {
    "E": re.compile(r" client=(\S+) verdict=blocked "),                          # event log
    "R": re.compile(r"\[client ([0-9.]+):\d+\].*ModSecurity: Access denied"),    # Apache error log
    "F": re.compile(r"\] Found ([0-9a-f.:]+)"),                                  # fail2ban.log
    "B": re.compile(r"\] Ban ([0-9a-f.:]+)\s*$"),
}
_NFT_ADD = re.compile(r"^add element inet \S+ v4 ")
_IPV4 = re.compile(r"\b(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\b")


class _Tail:
    """New lines of one file, each matched against the patterns of its kinds."""

    def __init__(self, kinds: str, path: str) -> None:
        self.kinds, self.path = kinds, path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self.partial = b""

    def read(self) -> list[tuple[str, str]]:
        """(kind, client) of each new matching line."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        found = []
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            for kind in self.kinds:
                match = _LOG_PATTERNS[kind].search(line)
                if match:
                    found.append((kind, match.group(1)))
                    break
        return found


class _IpsetProbe:
    """An `ipset -` process testing addresses against a set; answers come on its stderr."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(["ipset", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, bufsize=0)
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.partial = b""

    def ask(self, addresses: set[str]) -> None:
        self.proc.stdin.write("".join(f"test {self.name} {a}\n" for a in addresses).encode())

    def answers(self) -> list[str]:
        """Addresses reported in the set since the last call."""
        try:
            chunk = os.read(self.proc.stderr.fileno(), 1 << 16)
        except BlockingIOError:
            return []
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        return [m.group(1) for line in lines
                for m in [re.match(r"Warning: (\S+) is in set", line.decode(errors="replace"))] if m]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def observe_main(argv: list[str]) -> int:
    """Stamp, with time.time(): entry files closing in the storage tree (C <name> <client>),
    matched lines of the tailed logs (E/R/F/B <client>) and addresses reaching the kernel
    (S <address>): from `nft monitor`, or by testing the addresses given on stdin against an
    ipset every 2 ms.  One record a line in --out; "ready" on stdout once watching."""
    p = argparse.ArgumentParser(prog="e2e.py _observe")
    p.add_argument("--storage", required=True)
    p.add_argument("--tail", action="append", default=[], metavar="KINDS=PATH")
    p.add_argument("--ipset", help="test the addresses given on stdin against this set")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        os.nice(-10)            # stamps must not wait behind the load being measured
    except OSError:
        pass
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    out = open(args.out, "w", buffering=1 << 16)
    ino = _Inotify()
    dirs: dict[int, str] = {}

    def emit(kind: str, stamp: float, *fields: str) -> None:
        out.write(f"{kind} {stamp:.6f} {' '.join(fields)}\n")

    def client_of(path: str) -> str:
        try:
            with open(path, "rb") as handle:
                match = _SECTION_A.search(handle.read(1024))
            return match.group(2).decode() if match else "-"
        except OSError:
            return "-"              # already taken by watch (and deleted)

    def adopt(path: str) -> None:
        try:
            dirs[ino.add(path, _IN_CREATE | _IN_CLOSE_WRITE | _IN_MOVED_TO)] = path
            listing = list(os.scandir(path))
        except OSError:
            return
        for entry in listing:
            if entry.is_dir(follow_symlinks=False):
                adopt(entry.path)

    adopt(args.storage)
    tails: dict[int, list[_Tail]] = {}
    for spec in args.tail:
        kind, path = spec.split("=", 1)
        tails.setdefault(ino.add(os.path.dirname(path), _IN_MODIFY | _IN_CREATE), []).append(_Tail(kind, path))
    poller = select.poll()
    poller.register(ino.fd, select.POLLIN)
    monitor = probe = None
    watched: set[str] = set()
    if args.ipset:
        probe = _IpsetProbe(args.ipset)
        poller.register(probe.proc.stderr.fileno(), select.POLLIN)
        os.set_blocking(sys.stdin.fileno(), False)
        poller.register(sys.stdin.fileno(), select.POLLIN)
    else:
        monitor = subprocess.Popen(["nft", "monitor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   bufsize=0)
        os.set_blocking(monitor.stdout.fileno(), False)
        poller.register(monitor.stdout.fileno(), select.POLLIN)
    mon_partial, stdin_partial = b"", b""
    time.sleep(0.3)                        # let nft subscribe before saying ready
    print("ready", flush=True)
    asked = 0.0
    while not stop:
        try:
            ready = poller.poll(2 if watched else 200)
        except InterruptedError:
            continue
        stamp = time.time()
        for fd, _ in ready:
            if fd == ino.fd:
                for wd, mask, name in ino.read():
                    if mask & _IN_Q_OVERFLOW:
                        emit("X", stamp, "overflow")
                    elif wd in tails:
                        for tail in tails[wd]:
                            if os.path.basename(tail.path) == name:
                                for kind, client in tail.read():
                                    emit(kind, stamp, client)
                    elif wd in dirs and name:
                        path = os.path.join(dirs[wd], name)
                        if mask & _IN_ISDIR:
                            if mask & (_IN_CREATE | _IN_MOVED_TO):
                                adopt(path)
                        elif mask & _IN_CLOSE_WRITE:
                            emit("C", stamp, name, client_of(path))
            elif monitor is not None and fd == monitor.stdout.fileno():
                chunk = os.read(fd, 1 << 20)
                lines = (mon_partial + chunk).split(b"\n")
                mon_partial = lines.pop()
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    if _NFT_ADD.match(line):
                        for address in _IPV4.findall(line.split("{", 1)[-1]):
                            emit("S", stamp, address)
                out.flush()
            elif probe is not None and fd == probe.proc.stderr.fileno():
                for address in probe.answers():
                    if address in watched:
                        watched.discard(address)
                        emit("S", stamp, address)
                out.flush()
            elif fd == sys.stdin.fileno():
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                lines = (stdin_partial + chunk).split(b"\n")
                stdin_partial = lines.pop()
                watched.update(line.decode().strip() for line in lines if line.strip())
        # one attacker at a time is tested every 2 ms; a crowd (a flood) every 50 ms
        if probe is not None and watched and stamp - asked >= (0.002 if len(watched) <= 5 else 0.05):
            probe.ask(watched)
            asked = stamp
    for helper in (monitor, probe):
        if isinstance(helper, _IpsetProbe):
            helper.close()
        elif helper is not None:
            helper.terminate()
            helper.wait(5)
    out.close()
    return 0


def attack_main(argv: list[str]) -> int:
    """Attack requests from each --source: open loop at --rate for --duration (single runs),
    or back to back, --count each (flood).  One connection a request; none takes longer than
    --timeout (a banned address's packets are dropped).  JSON rows [source, sent, done,
    status or null] to --out."""
    p = argparse.ArgumentParser(prog="e2e.py _attack")
    p.add_argument("--sources", required=True, help="comma separated")
    p.add_argument("--rate", type=float, help="requests/s per source (open loop)")
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--count", type=int, help="requests per source, back to back (closed loop)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    payload = (f"GET {ATTACK_URI} HTTP/1.1\r\nHost: www.example.test\r\n"
               "User-Agent: modsec-tools-bench/1.0\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode()
    sources = args.sources.split(",")
    sel = selectors.DefaultSelector()
    rows: list[list] = []
    live: dict[int, tuple[socket.socket, list, bytearray]] = {}
    t0 = time.time() + 0.02
    end = t0 + args.duration
    due = {s: t0 for s in sources}                         # next send time per source
    left = {s: (args.count or 10 ** 9) for s in sources}
    busy: set[str] = set()

    def launch(source: str, now: float) -> None:
        row = [source, now, None, None]
        rows.append(row)
        left[source] -= 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            code = sock.connect_ex((SERVER, args.port))
        except OSError:
            sock.close()
            row[2] = time.time()
            return
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            row[2] = time.time()
            return
        live[sock.fileno()] = (sock, row, bytearray())
        busy.add(source)
        sel.register(sock, selectors.EVENT_WRITE)

    def finish(fd: int, status: int | None) -> None:
        sock, row, _ = live.pop(fd)
        sel.unregister(sock)
        sock.close()
        row[2], row[3] = time.time(), status
        busy.discard(row[0])
        if args.count:
            due[row[0]] = row[2]

    while True:
        now = time.time()
        for source in sources:
            if left[source] > 0 and now >= due[source] and now < end and (args.rate or source not in busy):
                launch(source, now)
                if args.rate:
                    due[source] += 1 / args.rate
        if now >= end and not live:
            break
        if all(v <= 0 for v in left.values()) and not live:
            break
        wait = 0.05
        if args.rate and now < end:
            wait = max(0.0, min(wait, min(due.values()) - now))
        for key, mask in sel.select(wait):
            fd = key.fileobj.fileno()
            sock, row, buf = live[fd]
            try:
                if mask & selectors.EVENT_WRITE:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        finish(fd, None)
                        continue
                    sock.send(payload)
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                chunk = sock.recv(65536)
            except OSError:
                finish(fd, None)
                continue
            if chunk:
                buf += chunk[:64 - len(buf)] if len(buf) < 64 else b""
                continue
            match = re.match(rb"HTTP/\d\.\d (\d{3})", bytes(buf))
            finish(fd, int(match.group(1)) if match else None)
        now = time.time()
        for fd in [fd for fd, (_, row, _) in live.items() if now - row[1] > args.timeout]:
            finish(fd, None)
    Path(args.out).write_text(json.dumps(rows))
    return 0


# =============================================================================================
# the bench

def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; values sorted, may end in inf (not banned in time)."""
    if not values:
        return float("nan")
    rank = max(1, int(-(-q * len(values) // 100)))
    return values[min(rank, len(values)) - 1]


def fmt_ms(value: float | None) -> str:
    if value is None or value != value:
        return "–"
    if value == float("inf"):
        return "never"
    return f"{value * 1000:.0f}" if abs(value) >= 0.0095 else f"{value * 1000:.1f}"


def thread_cpu(pid: int) -> dict[str, float]:
    """Thread name -> seconds on CPU (schedstat, ns resolution) for every thread of pid."""
    found: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            ran = int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
        found[name] = found.get(name, 0.0) + ran
    return found


@dataclass
class Row:
    """One pipeline: its namespace, Apache, fail2ban, watch (ours) and observer."""
    name: str
    work: Path
    netns: object = None
    ns: object = None
    web: object = None
    server: object = None
    watch: subprocess.Popen | None = None
    observer: subprocess.Popen | None = None
    obs_out: Path | None = None
    results: dict = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.name.startswith("ours")

    def observed(self) -> list[list[str]]:
        try:
            return [line.split() for line in self.obs_out.read_text().splitlines()]
        except FileNotFoundError:
            return []


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.next_source = 1
        self.procs: list[subprocess.Popen] = []
        self.groups = None                          # bench/cpugroups.py, where available

    def sources(self, count: int) -> list[str]:
        first = self.next_source
        self.next_source += count
        if self.next_source >= SOURCES.num_addresses - 2:
            raise SystemExit("out of source addresses: fewer runs or a smaller flood")
        return [str(SOURCES.network_address + first + n) for n in range(count)]

    # -- processes ---------------------------------------------------------------------------
    def helper(self, netns, mode: str, *argv: str, stdout=subprocess.PIPE,
               stdin=None) -> subprocess.Popen:
        from tests.realparts._util import die_with_parent
        proc = subprocess.Popen(netns.wrap([sys.executable, str(SELF), mode, *argv]), stdout=stdout,
                                stdin=stdin, stderr=None, text=True, preexec_fn=die_with_parent)
        self.procs.append(proc)
        return proc

    def start_watch(self, row: Row) -> subprocess.Popen:
        from tests.f2b_harness import wait_for
        from tests.realparts._util import die_with_parent
        config = row.work / "modsec-tools.conf"
        config.write_text(
            "[modsec-tools]\n"
            f"storage_dir = {row.web.storage_dir}\n"
            f"archive = {row.work / 'archive.log'}\n"
            f"event_log = {row.server.root / 'events.log'}\n"
            f"db = sqlite:///{row.work / 'events.db'}\n"
            f"state_dir = {row.work / 'state'}\n"
            f"quarantine_dir = {row.work / 'quarantine'}\n"
            "node = bench\n"
            + (f"workers = {self.args.watch_workers}\n" if self.args.watch_workers is not None else ""))
        log = open(row.work / "watch.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "modsec_tools.cli", "watch", "--foreground",
                                 "--config", str(config)], cwd=REPO, stdout=log, stderr=log,
                                preexec_fn=die_with_parent)
        self.procs.append(proc)
        wait_for(lambda: (row.work / "state" / "status.json").exists() or proc.poll() is not None, timeout=60)
        if proc.poll() is not None:
            raise RuntimeError(f"watch exited:\n{(row.work / 'watch.log').read_text()[-3000:]}")
        return proc

    def open_row(self, stack: ExitStack, name: str) -> Row:
        from tests import f2b_harness as f2b
        from tests.realparts import ApacheModSec, NetNS
        row = Row(name, Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work)))
        row.work.chmod(0o755)                              # www-data must reach the storage tree
        row.netns = stack.enter_context(NetNS(f"mt-e2e-{os.urandom(4).hex()}"))
        row.netns.run(["ip", "route", "add", "local", str(SOURCES), "dev", "lo"])
        row.ns = f2b.Netns(row.netns.name)
        row.web = stack.enter_context(ApacheModSec(row.work / "web", netns=row.netns,
                                                   listen=[(SERVER, self.args.port)]))
        release = None
        if name == "ours-upstream":
            release = patched_fail2ban(self.args.upstream_patch, row.work / "fail2ban")
        jail = jail_stock(self.args.port, row.web.error_log) if name == "stock" else \
            jail_ours(self.args.port, fastban=name == "ours")
        row.server = stack.enter_context(f2b.fail2ban_server(row.ns, jail, with_bundle_jails=name != "stock",
                                                             release=release))
        if row.ours:
            row.watch = self.start_watch(row)
        row.obs_out = row.work / "observe"
        tails = [f"FB={row.server.log}"]
        tails.append(f"E={row.server.root / 'events.log'}" if row.ours else f"R={row.web.error_log}")
        row.observer = self.helper(row.netns, "_observe", "--storage", str(row.web.storage_dir),
                                   "--out", str(row.obs_out), *[a for t in tails for a in ("--tail", t)],
                                   *(["--ipset", STOCK_SET] if name == "stock" else []),
                                   stdin=subprocess.PIPE)
        if row.observer.stdout.readline().strip() != "ready":
            raise RuntimeError("observer did not start")
        if name == "stock":                                # the action makes its set at the first ban
            row.server.banip(JAIL_STOCK, "192.0.2.1")
            row.server.unbanip(JAIL_STOCK, "192.0.2.1")
        self.as_services(row)
        _log(f"{name}: ready ({row.netns.name})")
        return row

    def as_services(self, row: Row) -> None:
        """Apache, fail2ban and watch each in a CPU group of its own, with the weight of the
        systemd unit that runs it (bench/cpugroups.py)."""
        if self.groups is None:
            return
        self.groups.place(f"{row.name}-apache2", row.web.proc.pid, 100)
        self.groups.place(f"{row.name}-fail2ban", row.server.proc.pid, 100)
        if row.watch is not None:
            self.groups.place(f"{row.name}-modsec-tools", row.watch.pid, WATCH_WEIGHT)
        # the instrument: among the attackers it would stamp what it sees late
        self.groups.place(f"{row.name}-observer", row.observer.pid, 100)

    def kernel_times(self, row: Row) -> dict[str, float]:
        seen: dict[str, float] = {}
        for parts in row.observed():
            if parts[0] == "S":
                seen.setdefault(parts[2], float(parts[1]))
        return seen

    def attack(self, row: Row, sources: list[str], **opts) -> list[list]:
        """Run the attack helper in the row's namespace; its rows once every source is in the
        kernel (or --ban-timeout passed)."""
        if row.name == "stock":
            row.observer.stdin.write("".join(f"{s}\n" for s in sources))
            row.observer.stdin.flush()
        out = row.work / f"attack-{sources[0]}"
        argv = ["--sources", ",".join(sources), "--port", str(self.args.port), "--out", str(out)]
        for key, value in opts.items():
            argv += [f"--{key}", str(value)]
        proc = self.helper(row.netns, "_attack", *argv, stdout=subprocess.DEVNULL)
        proc.wait(120)
        deadline = time.time() + self.args.ban_timeout
        while time.time() < deadline and not set(sources) <= set(self.kernel_times(row)):
            time.sleep(0.05)
        return json.loads(out.read_text())

    # -- the scenarios -------------------------------------------------------------------------
    def single_runs(self, rows: list[Row]) -> None:
        for rate in self.args.rates:
            duration = max(1.0, 30 / rate)                  # at least 30 requests, at least 1 s
            for n in range(self.args.runs):
                for row in rows[n % len(rows):] + rows[:n % len(rows)]:     # rotate who goes first
                    (source,) = self.sources(1)
                    requests = self.attack(row, [source], rate=rate, duration=duration)
                    row.results.setdefault(f"single-{rate:g}", []).append((source, requests))
                    time.sleep(self.args.pause)
            _log(f"single runs at {rate:g}/s done")

    def flood(self, row: Row) -> None:
        sources = self.sources(self.args.flood)
        began = time.time()
        requests = self.attack(row, sources, count=MAXRETRY + 2, duration=30)
        row.results["flood"] = (sources, requests, began)
        _log(f"{row.name}: flood of {len(sources)} addresses done")

    def idle(self, rows: list[Row]) -> None:
        for row in rows:                   # the database writes of the floods end first
            deadline = time.time() + 120
            while time.time() < deadline:
                used = sum(thread_cpu(row.server.proc.pid).values())
                time.sleep(2)
                if sum(thread_cpu(row.server.proc.pid).values()) - used < 0.01:
                    break
        before = {row.name: thread_cpu(row.server.proc.pid) for row in rows}
        time.sleep(self.args.idle)
        for row in rows:
            after = thread_cpu(row.server.proc.pid)
            row.results["idle"] = {name: (after[name] - before[row.name].get(name, 0.0)) / self.args.idle
                                   for name in after}

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        res: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}",
                     "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
        started = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="mt-bench-e2e-", dir=args.tmp))
        self.work.chmod(0o755)
        try:
            with ExitStack() as stack:
                self.groups = cpugroups.available(f"mt-e2e-{os.urandom(4).hex()}")
                if self.groups is not None:
                    stack.callback(self.groups.close)      # last: once everything is stopped
                    # the bench and its attackers (other machines in real life): a group too
                    self.groups.place("clients", os.getpid(), 100)
                res["groups"] = self.groups.describe() if self.groups is not None else None
                stack.callback(lambda: [stop(p) for p in self.procs])
                rows = [self.open_row(stack, name) for name in args.rows]
                res["versions"] = versions()
                time.sleep(1)
                self.single_runs(rows)
                for row in rows:
                    self.flood(row)
                    time.sleep(args.pause)
                self.idle(rows)
                res["rows"] = {row.name: analyse(row) for row in rows}
                if args.filter_lines:
                    res["filter"] = filter_speed(self.work, args.filter_lines)
        finally:
            if args.keep:
                _log(f"kept {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        res["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        res["minutes"] = (time.monotonic() - started) / 60
        return res


#: Our filter's date pattern with the least a failregex needs (no grammar, no tags): what
#: fail2ban's own matching costs, against which our filter's is measured.
MINIMAL_FILTER = """[Definition]
datepattern = ^%%Y-%%m-%%dT%%H:%%M:%%S\\.%%f(?:%%z)?
failregex = ^ modsec\\[[^]]*\\]: client=<ADDR> verdict=blocked 
"""


def filter_speed(work: Path, count: int, tries: int = 3) -> dict:
    """Lines a second fail2ban-regex matches with our filter and with MINIMAL_FILTER: ``count``
    blocked lines, two for each address, timestamped now; its start-up (a one-line run) is
    taken off; the best of ``tries``."""
    from tests.f2b_harness import FAIL2BAN_REGEX, FILTER
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    log = work / "filter-lines.log"
    with open(log, "w") as out:
        for n in range(count):
            host = SOURCES.network_address + 1 + n // MAXRETRY
            out.write(f"{now}.{n % 1000000:06d}+00:00 modsec[bench]: client={host} verdict=blocked "
                      f"status=403 phase=2 score=5 severity=CRITICAL rules=942100,949110 "
                      f"id=Z{n:026d} method=\"GET\" host=\"www.example.test\" "
                      f"uri=\"{ATTACK_URI}\" ua=\"modsec-tools-bench/1.0\"\n")
    minimal = work / "filter-minimal.conf"
    minimal.write_text(MINIMAL_FILTER)
    one = work / "filter-one.log"
    one.write_text(log.open().readline())

    def best(path: Path, conf: Path) -> float:
        times = []
        for _ in range(tries):
            began = time.perf_counter()
            proc = subprocess.run([FAIL2BAN_REGEX, str(path), str(conf)], capture_output=True, text=True)
            times.append(time.perf_counter() - began)
            if proc.returncode != 0 or (path == log and f"{count} matched" not in proc.stdout):
                raise RuntimeError(f"fail2ban-regex {conf}: {proc.stdout[-500:]}{proc.stderr[-500:]}")
        return min(times)
    out = {"lines": count}
    for name, conf in (("ours", FILTER), ("minimal", minimal)):
        out[name] = count / max(best(log, conf) - best(one, conf), 1e-9)
    return out


def stop(proc: subprocess.Popen) -> None:
    from tests.realparts._util import stop_process
    stop_process(proc, signal.SIGTERM, 10)


def jail_ours(port: int, fastban: bool) -> str:
    return f"""
[{JAIL_OURS}]
enabled = true
logpath = {{root}}/events.log
backend = pyinotify
maxretry = {MAXRETRY}
findtime = 60
bantime = 600
ignoreself = false
ignoreip = 127.0.0.1/8 {SERVER}
port = {port}
action = modsec-block.py[backend=nftables, port="{port}", fastban={str(fastban).lower()}]
"""


def jail_stock(port: int, error_log: Path) -> str:
    """fail2ban's usual way: the stock filter on Apache's error log, the stock ipset action."""
    return f"""
[{JAIL_STOCK}]
enabled = true
filter = apache-modsecurity
logpath = {error_log}
backend = pyinotify
maxretry = {MAXRETRY}
findtime = 60
bantime = 600
ignoreself = false
ignoreip = 127.0.0.1/8 {SERVER}
port = {port}
protocol = tcp
action = iptables-ipset-proto6[name={JAIL_STOCK}, port="{port}", protocol=tcp]
"""


def patched_fail2ban(patches: list[Path], where: Path):
    """This machine's fail2ban, copied, with the server parts of `patches` applied in order."""
    from tests.f2b_harness import DEBIAN, Release
    lib = where / "lib"
    shutil.copytree(DEBIAN.lib / "fail2ban", lib / "fail2ban", ignore=shutil.ignore_patterns("__pycache__"))
    (lib / "pyinotify.py").symlink_to(DEBIAN.lib / "pyinotify.py")
    for patch in patches:
        parts = re.split(r"(?m)^(?=diff --git )", patch.read_text())
        server = "".join(part for part in parts if part.startswith("diff --git a/fail2ban/server/"))
        proc = subprocess.run(["patch", "-p1", "-d", str(lib)], input=server, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{patch} does not apply to fail2ban {DEBIAN.version}: {proc.stdout}{proc.stderr}")
    return Release(f"{DEBIAN.version} + {', '.join(p.name for p in patches)}", DEBIAN.python, lib,
                   DEBIAN.bin, DEBIAN.conf)


def versions() -> str:
    def first_line(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().split("\n")[0]
        except OSError:
            return "?"
    apache = first_line(["/usr/sbin/apache2", "-v"]).replace("Server version: ", "")
    f2b_python = first_line(["/usr/bin/python3", "-V"])
    return (f"{apache}; mod_security2 {first_line(['dpkg-query', '-W', '-f=${Version}', 'libapache2-mod-security2'])}; "
            f"CRS {first_line(['dpkg-query', '-W', '-f=${Version}', 'modsecurity-crs'])}; "
            f"fail2ban {first_line(['fail2ban-server', '-V'])} on {f2b_python} (/usr/bin/python3); "
            f"watch and the bench on Python {platform.python_version()} ({sys.executable}); {first_line(['nft', '-v'])}; "
            f"{first_line(['ipset', '-v'])}; {first_line(['iptables', '-V'])}")


# =============================================================================================
# analysis

def _attempt(source: str, requests: list[list], kernel: float | None) -> dict:
    """One attacker: 2nd 403 received -> kernel, and the requests answered after the one that
    reached maxretry."""
    mine = sorted((r for r in requests if r[0] == source), key=lambda r: r[1])
    blocked = [r for r in mine if r[3] == 403]
    if len(blocked) < MAXRETRY:
        return {"valid": False, "sent": len(mine), "blocked": len(blocked)}
    deciding = blocked[MAXRETRY - 1]
    after = [r for r in mine if r[1] > deciding[1] and r[3] is not None]
    return {"valid": True, "latency": (kernel - deciding[2]) if kernel is not None else float("inf"),
            "after": len(after), "second": deciding[2], "sent": len(mine)}


def _stages(observed: list[list[str]], source: str, second: float) -> dict[str, float]:
    """Per-stage stamps of the deciding failure: the maxretry-th close, log line and Found,
    then the Ban and the kernel."""
    stamps: dict[str, list[float]] = {}
    for parts in observed:
        kind = parts[0]
        client = parts[3] if kind == "C" else parts[2] if len(parts) > 2 else None
        if client == source:
            stamps.setdefault(kind, []).append(float(parts[1]))
    got = {}
    for kind in ("C", "E", "R", "F"):
        if len(stamps.get(kind, [])) >= MAXRETRY:
            got[kind] = sorted(stamps[kind])[MAXRETRY - 1]
    for kind in ("B", "S"):
        if stamps.get(kind):
            got[kind] = min(stamps[kind])
    got["2nd 403"] = second
    return got


STAGES = [("C", "E", "audit entry closed → event-log line (watch)"),
          ("E", "F", "event-log line → fail2ban Found (filter)"),
          ("R", "F", "error-log line → fail2ban Found (filter)"),
          ("C", "F", "audit entry closed → fail2ban Found"),
          ("F", "B", "Found → Ban (fail2ban: ticket → ban check)"),
          ("B", "S", "Ban → kernel (action)")]


def _stage_dists(row: Row, attempts: list[tuple[str, dict]]) -> dict[str, dict]:
    """Each stage's distribution over the valid attempts (source, _attempt())."""
    observed = row.observed()
    values: dict[str, list[float]] = {}
    for source, attempt in attempts:
        if not attempt["valid"]:
            continue
        stamps = _stages(observed, source, attempt["second"])
        for a, b, label in STAGES:
            if a in stamps and b in stamps:
                values.setdefault(label, []).append(stamps[b] - stamps[a])
    return {label: _dist(v) for label, v in values.items()}


def _dist(values: list[float]) -> dict:
    values = sorted(values)
    return {q: percentile(values, q) for q in (50, 90, 99, 100)}


def _per_second(stamps: list[float]) -> float:
    """Events a second from the first to the last (nan for fewer than two)."""
    return (len(stamps) - 1) / (max(stamps) - min(stamps)) if len(stamps) > 1 else float("nan")


def _flood_rates(observed: list[list[str]], sources: set[str], requests: list[list]) -> dict:
    """What the flood offered and what fail2ban did with it, a second: blocked responses
    (the attack's pace), log lines the filter matched (`Found`), bans (`Ban`)."""
    stamps: dict[str, list[float]] = {}
    for parts in observed:
        if parts[0] in ("F", "B") and len(parts) > 2 and parts[2] in sources:
            stamps.setdefault(parts[0], []).append(float(parts[1]))
    answered = [r[2] for r in requests if r[0] in sources and r[3] == 403]
    return {"blocked": _per_second(answered), "found": _per_second(stamps.get("F", [])),
            "bans": _per_second(stamps.get("B", []))}


def analyse(row: Row) -> dict:
    kernel = {}
    for parts in row.observed():
        if parts[0] == "S":
            kernel.setdefault(parts[2], float(parts[1]))
    out: dict = {"label": ROW_LABELS[row.name]}
    for key, runs in row.results.items():
        if not key.startswith("single-"):
            continue
        attempts = [_attempt(source, requests, kernel.get(source)) for source, requests in runs]
        valid = [a for a in attempts if a["valid"]]
        out[key] = {"runs": len(attempts), "valid": len(valid),
                    "latency": _dist([a["latency"] for a in valid]),
                    "after": sorted(a["after"] for a in valid),
                    "stages": _stage_dists(row, [(source, a) for (source, _), a in zip(runs, attempts)])}
    if "flood" in row.results:
        sources, requests, began = row.results["flood"]
        attempts = [_attempt(s, requests, kernel.get(s)) for s in sources]
        valid = [a for a in attempts if a["valid"]]
        done = [kernel[s] for s in sources if s in kernel]
        out["flood"] = {"addresses": len(sources), "valid": len(valid),
                        "latency": _dist([a["latency"] for a in valid]),
                        "after": sorted(a["after"] for a in valid),
                        "banned": len(done), "span": (max(done) - began) if done else float("inf"),
                        "rates": _flood_rates(row.observed(), set(sources), requests),
                        "stages": _stage_dists(row, [(s, a) for s, a in zip(sources, attempts)])}
    if "idle" in row.results:
        idle = row.results["idle"]
        jail = JAIL_OURS if row.ours else JAIL_STOCK
        # thread names are cut to 15 bytes by the kernel
        out["idle"] = {"waker": idle.get(f"f2b/w.{jail}"[:15]), "actions": idle.get(f"f2b/a.{jail}"[:15]),
                       "filter": idle.get(f"f2b/f.{jail}"[:15]), "process": sum(idle.values())}
    return out


# =============================================================================================
# reporting

def _share_zero(after: list[int]) -> str:
    if not after:
        return "–"
    return f"{sum(1 for a in after if a == 0)}/{len(after)}"


def _pair(dist: dict) -> str:
    return f"{fmt_ms(dist[50])} / {fmt_ms(dist[99])}"


def table(res: dict, rates: list[float]) -> list[str]:
    low, high = (f"single-{r:g}" for r in (rates[0], rates[-1]))
    head = (f"| pipeline | {rates[0]:g}/s: 2nd 403 → kernel, p50 / p99 ms | {rates[0]:g}/s: runs with no "
            f"request answered after maxretry | {rates[-1]:g}/s: p50 / p99 ms | {rates[-1]:g}/s: answered "
            f"after maxretry: median / max, runs with ≤ 1 | flood of {res['flood']} addresses: p50 / p99 ms "
            f"| idle CPU, % of a core: what wakes the bans; the filter thread |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in res["rows"].items():
        idle = r.get("idle", {})
        waker = idle.get("waker") if name == "ours" else idle.get("actions")
        what = "waker" if name == "ours" else "actions thread"
        lines.append(
            f"| {r['label']} | {_pair(r[low]['latency'])} | {_share_zero(r[low]['after'])} "
            f"| {_pair(r[high]['latency'])} | {percentile(r[high]['after'], 50) if r[high]['after'] else '–'} / "
            f"{max(r[high]['after'], default='–')}, {sum(a <= 1 for a in r[high]['after'])}/{len(r[high]['after'])} "
            f"| {_pair(r['flood']['latency'])} "
            f"| {what} {100 * (waker or 0):.3f}; {100 * (idle.get('filter') or 0):.3f} |")
    lines.append(f"| goal (#16) | ≤ {GOALS['p50'] * 1000:.0f} / ≤ {GOALS['p99'] * 1000:.0f} | ≥ 95 % "
                 f"| | ≤ {GOALS['max_after_fast']} | – / ≤ {GOALS['flood_p99'] * 1000:.0f} "
                 f"| ≤ {GOALS['idle_cpu'] * 100:.1f} together |")
    return lines


def stage_table(res: dict, rates: list[float]) -> list[str]:
    lines = ["| pipeline | load | stage | p50 ms | p90 ms | p99 ms | max ms |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for name, r in res["rows"].items():
        for what, stages in [(f"{rate:g}/s", r[f"single-{rate:g}"]["stages"]) for rate in rates] + \
                [(f"flood {res['flood']}", r["flood"]["stages"])]:
            for label, d in stages.items():
                lines.append(f"| {name} | {what} | {label} | {fmt_ms(d[50])} | {fmt_ms(d[90])} "
                             f"| {fmt_ms(d[99])} | {fmt_ms(d[100])} |")
    return lines


def verdict(res: dict, rates: list[float]) -> list[str]:
    """The goals of #16, checked on the `ours` row of this run."""
    ours, stock = res["rows"].get("ours"), res["rows"].get("stock")
    if ours is None:
        return []
    low, high = (ours[f"single-{r:g}"] for r in (rates[0], rates[-1]))
    checks = [
        (f"p50 ≤ 15 ms at {rates[0]:g}/s", low["latency"][50] <= GOALS["p50"]),
        (f"p99 ≤ 40 ms at {rates[0]:g}/s", low["latency"][99] <= GOALS["p99"]),
        (f"no request answered after maxretry in ≥ 95 % of runs at {rates[0]:g}/s",
         bool(low["after"]) and sum(a == 0 for a in low["after"]) >= GOALS["zero_after_share"] * len(low["after"])),
        (f"at most 1 answered at {rates[-1]:g}/s", bool(high["after"]) and max(high["after"]) <= GOALS["max_after_fast"]),
        ("flood p99 ≤ 100 ms", ours["flood"]["latency"][99] <= GOALS["flood_p99"]),
        ("idle ≤ 0.5 % of a core", (ours["idle"]["waker"] or 0) + (ours["idle"]["filter"] or 0) <= GOALS["idle_cpu"]),
    ]
    if stock is not None:
        ratio = stock[f"single-{rates[0]:g}"]["latency"][50] / max(low["latency"][50], 1e-9)
        checks.append((f"≥ 10× below the stock p50 (here {ratio:.0f}×)", ratio >= 10))
    return [f"Goals: {', '.join(f'{text} {chr(10003) if ok else chr(10007)}' for text, ok in checks)}."]


def section(res: dict, command: str, rates: list[float]) -> str:
    rows = res["rows"]
    lines = [
        "## bench/e2e.py", "",
        f"`{command}` — {res['date']}, {res['machine']} (load average {res['load_before']} before, "
        f"{res['load_after']} after; the VM is shared), {res['minutes']:.1f} min. {res['versions']}.", "",
        "Each pipeline in its own network namespace with its own Apache + mod_security2 + CRS"
        + (f"; Apache, fail2ban and watch each in a CPU control group of its own as systemd runs their "
           f"units ({res['groups']}: weight 100, 100 and watch's CPUWeight={WATCH_WEIGHT}), the bench and "
           "its attackers in another, the observer in a third (weight 100 each)" if res.get("groups") else
           "; no CPU control group here: every process in one group, unlike systemd's services")
        + "; jails "
        f"maxretry {MAXRETRY}, pyinotify; attackers on 198.18.0.0/15, `GET /?id=1' or '1'='1` (403). "
        f"Latency: the client's receipt of its 2nd 403 → the address in the kernel set (`nft monitor` / "
        f"`ipset test` every 2 ms); {res['runs']} attackers per rate, runs of the pipelines interleaved. "
        f"Flood: {res['flood']} addresses at once, requests back to back. Idle: {res['idle']} s, CPU of the "
        "thread that wakes "
        "the bans (ours: the fast path's, blocked on an event; the others: fail2ban's actions thread, "
        "which polls) and of the jail's filter thread (ours goes round its wait twice a second "
        "instead of sleeping).", ""]
    lines += table(res, rates) + [""] + verdict(res, rates) + [""]
    lines += ["Where the time goes (the deciding failure, stamps of one observer):", ""]
    lines += stage_table(res, rates) + [""]
    if "filter" in res:
        f = res["filter"]
        lines += [f"Filter: `fail2ban-regex` on {f['lines']:,} blocked lines (two an address; its start-up "
                  f"taken off, best of 3): our filter.d/modsec.conf {f['ours']:,.0f} lines/s, a minimal filter "
                  f"(the same date pattern, `client=<ADDR> verdict=blocked`, no grammar, no tags) "
                  f"{f['minimal']:,.0f} lines/s.", ""]
    for name, r in rows.items():
        flood, idle = r["flood"], r["idle"]
        lines.append(f"* {name}: {sum(r[f'single-{x:g}']['valid'] for x in rates)} valid runs of "
                     f"{sum(r[f'single-{x:g}']['runs'] for x in rates)}; flood: {flood['banned']} of "
                     f"{flood['addresses']} banned within {fmt_ms(flood['span'])} ms of its start, "
                     f"answered after maxretry: median {percentile(flood['after'], 50) if flood['after'] else '–'}, "
                     f"max {max(flood['after'], default='–')}; a second: {flood['rates']['blocked']:.0f} blocked "
                     f"responses, {flood['rates']['found']:.0f} `Found`, {flood['rates']['bans']:.0f} bans; "
                     "idle: whole fail2ban-server "
                     f"{100 * idle['process']:.3f} % of a core, its actions thread "
                     f"{100 * (idle['actions'] or 0):.3f} %"
                     + (f", the fast path's waker {100 * (idle['waker'] or 0):.4f} %" if idle["waker"] is not None else ""))
    return "\n".join(lines).rstrip("\n") + "\n"


def write_results(path: Path, text: str) -> None:
    """Replace the '## bench/e2e.py' section of ``path`` (the others are kept)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## bench/e2e\.py\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text + "\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


# =============================================================================================

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/e2e.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1].rsplit("\nusage:", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="stock,ours",
                        help=f"pipelines, in order: {', '.join(ROW_LABELS)} (default: stock,ours)")
    parser.add_argument("--runs", type=int, default=20, help="attackers per rate and pipeline (default: 20)")
    parser.add_argument("--rates", default="20,200", help="attack requests/s of one attacker (default: 20,200)")
    parser.add_argument("--flood", type=int, default=200, help="addresses attacking at once (default: 200)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement (default: 30)")
    parser.add_argument("--watch-workers", metavar="N",
                        help="watch's `workers` setting (default: its own, auto: batches of 128+ "
                        "entries go to worker processes it spawns at the first such batch)")
    parser.add_argument("--filter-lines", type=int, default=20000, metavar="N",
                        help="time fail2ban-regex on N blocked lines with our filter and a minimal "
                        "one (default: 20000; 0: skip)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between runs (default: 0.3)")
    parser.add_argument("--ban-timeout", type=float, default=5.0,
                        help="seconds after an attack to wait for its bans (default: 5)")
    parser.add_argument("--upstream-patch", type=Path, action="append", metavar="PATCH",
                        help="a fail2ban change the ours-upstream row runs with, applied in order "
                        "(default: docs/upstream/wake-actions-on-ticket.patch, then "
                        "pyinotify-filter-read-at-once.patch)")
    parser.add_argument("--tmp", metavar="DIR", help="parent of the work directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--results", type=Path, metavar="PATH",
                        help="replace the '## bench/e2e.py' section of PATH (e.g. bench/RESULTS.md)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 runs, flood 20, idle 5 s, 2000 filter lines")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.flood, args.idle, args.filter_lines = 3, 20, 5.0, 2000
    args.upstream_patch = args.upstream_patch or [REPO / "docs" / "upstream" / name for name in
                                                  UPSTREAM_PATCHES]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not args.rows or any(r not in ROW_LABELS for r in args.rows):
        parser.error(f"--rows: some of {', '.join(ROW_LABELS)}")
    args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    if not args.rates or any(r <= 0 for r in args.rates):
        parser.error("--rates: positive numbers")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_observe"]:
        return observe_main(argv[1:])
    if argv[:1] == ["_attack"]:
        return attack_main(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/e2e.py needs root (network namespaces, fail2ban, firewall)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    python = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(f"{REPO}/") else "python3"
    command = f"{python} bench/e2e.py " + " ".join(shlex.quote(a) for a in argv)
    print(f"command: {command}", flush=True)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        res = Bench(args).run()
    except KeyboardInterrupt:
        print("interrupted: everything was stopped and removed", file=sys.stderr)
        return 130
    res.update(runs=args.runs, flood=args.flood, idle=args.idle)
    text = section(res, command, args.rates)
    print()
    print(text)
    if args.results:
        write_results(args.results, text)
        print(f"updated the '## bench/e2e.py' section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
