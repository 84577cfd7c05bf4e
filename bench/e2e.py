#!/usr/bin/env python3
"""Detection -> ban latency, end to end, with every real part, in a private network namespace.

Apache 2.4 + mod_security2 + OWASP CRS (tests/realparts) serve 127.0.0.1:PORT inside a
network namespace this script creates (mt-e2e-*) and write a Concurrent audit storage tree;
`modsec-tools watch` turns each entry into an event-log line; a real fail2ban-server in the
namespace runs our filter (fail2ban/filter.d/modsec.conf) in a jail with maxretry = 1,
findtime 60, bantime 600, backend pyinotify and the action
modsec-block.py[backend=nftables, port=PORT].

Load: an open-loop generator inside the namespace sends attack requests (GET /?id=1' or
'1'='1, CRS 942100 -> 403) at each --rates value for --duration seconds, every request from
its own source address in 127.1.0.0/16 (bound on the namespace's lo: 127.0.0.0/8 there
answers for every 127.x address, which the script verifies first), so each request is a
first offence and must produce one ban.

Latency of one attack = kernel time - close time, where
  close   the audit entry file's IN_CLOSE_WRITE, seen by the script's own inotify watch on
          the storage tree (time.time() when read); the file is mapped to its client by its
          section A (or, when watch already deleted it, by its unique id in Apache's access
          log); a file found by a directory scan instead (new minute directory) uses mtime;
  kernel  the address appearing in the kernel: `nft monitor` streamed inside the namespace
          (each "add element" / "insert rule" line stamped when read).  With --observe
          both a poller also runs `nft -j list set` (ours) / `iptables -S f2b-<jail>`
          (baseline) every --poll-ms and reports its own figures (it costs CPU).
Stages, from the same observer: close -> event-log line (watch), -> fail2ban's "Ban" notice
in its log (filter + fail2ban's actions thread), -> kernel (the action: batching + nft).

Baseline in the same run (--baseline, default on): fail2ban's usual way, the stock
apache-modsecurity filter reading Apache's error log with the stock iptables-multiport
action (one `iptables -I` per ban, forked by fail2ban), no modsec-tools; same load, same
jail timings, from the same file close to the address appearing in chain f2b-<jail>.

Every process runs in the namespace except watch; all traffic is loopback inside it; loops
and waits are bounded; on exit (also Ctrl-C / TERM) every process is killed, the namespace
deleted (with its firewall) and the work directory removed (unless --keep).  Needs root,
apache2 + libapache2-mod-security2 + modsecurity-crs, fail2ban, nftables, iptables.

Diagnostics: --pipeline-nice N renices watch and fail2ban-server (CPU priority against
Apache's worker threads), --watch-workers N sets watch's worker processes, --tmp /dev/shm
puts the storage tree and watch's sinks on tmpfs (no fsync cost).  Per phase the bench also
reports, from /proc, the CPU time of Apache, watch and fail2ban-server and how long their
threads waited, runnable, for a CPU (schedstat: starvation).

usage: python3 bench/e2e.py [--rates 100,1000] [--duration 5] [--observe monitor|both]
                            [--pipeline-nice N] [--watch-workers N] [--tmp DIR]
                            [--no-baseline] [--results bench/RESULTS.md] [--quick]
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
import resource
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()

JAIL_OURS = "modsec"
JAIL_STOCK = "apache-modsecurity"
NFT_TABLE = f"mt-{JAIL_OURS}"                   # modsec-block's objects for the jail
ATTACK_URI = "/?id=1'%20or%20'1'='1"            # CRS 942100 & co: 403 at paranoia level 1
FIRST_SOURCE = int(ipaddress.IPv4Address("127.1.0.1"))
LAST_SOURCE = int(ipaddress.IPv4Address("127.1.255.254"))
PROBE_SOURCE = "127.1.255.254"                  # the binding check (benign, never banned)
TARGETS = {"p50": 0.300, "p99": 1.0}            # seconds


# =============================================================================================
# helper processes (run as `python3 bench/e2e.py _observe|_poll|_loadgen ...` in the netns)

_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_Q_OVERFLOW, _IN_IGNORED, _IN_ISDIR = 0x4000, 0x8000, 0x40000000
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
    "E": re.compile(r" client=(\S+) verdict=blocked "),                        # event log
    "R": re.compile(r"\[client ([0-9.]+):\d+\].*ModSecurity: Access denied"),  # Apache error log
    "B": re.compile(r"\] Ban ([0-9a-f.:]+)\s*$"),                              # fail2ban.log
}
_MONITOR = re.compile(r"^(?:add element inet \S+ v4|(?:add|insert) rule ip filter f2b-)")
_IPV4 = re.compile(r"\b(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\b")


def observe_main(argv: list[str]) -> int:
    """Stamp, with time.time(): entry files closing in the storage tree (C, or F when found
    by a scan: mtime), new lines of the tailed logs (E/R/B) and kernel additions streamed by
    `nft monitor` (S).  One record a line in --out; "ready" on stdout once watching."""
    p = argparse.ArgumentParser(prog="e2e.py _observe")
    p.add_argument("--storage", required=True)
    p.add_argument("--tail", action="append", default=[], metavar="KIND=PATH")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        os.nice(-10)            # stamps must not wait behind the load being measured
    except OSError:
        pass
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    out = open(args.out, "w", buffering=1 << 20)
    ino = _Inotify()
    dirs: dict[int, str] = {}
    seen_files: set[str] = set()

    def emit(kind: str, stamp: float, *fields: str) -> None:
        out.write(f"{kind} {stamp:.6f} {' '.join(fields)}\n")

    def client_of(path: str) -> str:
        try:
            with open(path, "rb") as handle:
                match = _SECTION_A.search(handle.read(1024))
            return match.group(2).decode() if match else "-"
        except OSError:
            return "-"              # already taken (and deleted) by watch: mapped later

    def adopt(path: str) -> None:
        """Watch a directory, then whatever it already holds (made before the watch)."""
        try:
            dirs[ino.add(path, _IN_CREATE | _IN_CLOSE_WRITE | _IN_MOVED_TO)] = path
            listing = list(os.scandir(path))
        except OSError:
            return
        for entry in listing:
            if entry.is_dir(follow_symlinks=False):
                adopt(entry.path)
            elif entry.is_file(follow_symlinks=False) and entry.name not in seen_files:
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except OSError:
                    continue
                emit("F", mtime, entry.name, client_of(entry.path))

    adopt(args.storage)
    tails: dict[int, list] = {}            # wd -> [(basename, kind, path, offset, partial)]
    for spec in args.tail:
        kind, path = spec.split("=", 1)
        wd = ino.add(os.path.dirname(path), _IN_MODIFY | _IN_CREATE)
        tails.setdefault(wd, []).append([os.path.basename(path), kind, path,
                                         os.path.getsize(path) if os.path.exists(path) else 0, b""])

    monitor = subprocess.Popen(["nft", "monitor"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, bufsize=0)
    os.set_blocking(monitor.stdout.fileno(), False)
    mon_partial = b""
    poller = select.poll()
    poller.register(ino.fd, select.POLLIN)
    poller.register(monitor.stdout.fileno(), select.POLLIN)
    time.sleep(0.3)                        # let nft subscribe before we say ready
    print("ready", flush=True)

    def read_tail(item: list, stamp: float) -> None:
        _base, kind, path, offset, partial = item
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return
        item[3] = offset + len(data)
        lines = (partial + data).split(b"\n")
        item[4] = lines.pop()
        pattern = _LOG_PATTERNS[kind]
        for raw in lines:
            match = pattern.search(raw.decode("utf-8", "replace"))
            if match:
                emit(kind, stamp, match.group(1))

    flushed = time.time()
    while not stop:
        try:
            ready = poller.poll(200)
        except InterruptedError:
            continue
        stamp = time.time()
        if stamp - flushed > 0.25:          # the bench reads the file while waiting for bans
            out.flush()
            flushed = stamp
        for fd, _ in ready:
            if fd == ino.fd:
                for wd, mask, name in ino.read():
                    if mask & _IN_Q_OVERFLOW:
                        emit("X", stamp, "overflow")
                        continue
                    if wd in tails:
                        for item in tails[wd]:
                            if item[0] == name:
                                read_tail(item, stamp)
                        continue
                    parent = dirs.get(wd)
                    if parent is None or not name:
                        continue
                    path = os.path.join(parent, name)
                    if mask & _IN_ISDIR:
                        if mask & (_IN_CREATE | _IN_MOVED_TO):
                            adopt(path)
                    elif mask & _IN_CLOSE_WRITE:
                        seen_files.add(name)
                        emit("C", stamp, name, client_of(path))
            else:
                try:
                    chunk = os.read(fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    poller.unregister(fd)
                    continue
                lines = (mon_partial + chunk).split(b"\n")
                mon_partial = lines.pop()
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    if _MONITOR.match(line):
                        for address in _IPV4.findall(line.split("{", 1)[-1]):
                            emit("S", stamp, address)
    monitor.terminate()
    monitor.wait(5)
    out.close()
    return 0


def poll_main(argv: list[str]) -> int:
    """Poll the kernel every --interval-ms: P <time the listing returned> <address> for each
    new address; Q <seconds the listing took> per poll."""
    p = argparse.ArgumentParser(prog="e2e.py _poll")
    p.add_argument("--kind", choices=("nft", "iptables"), required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    try:
        os.nice(-10)
    except OSError:
        pass
    if args.kind == "nft":
        cmd = ["nft", "-j", "list", "set", "inet", args.name, "v4"]
    else:
        cmd = ["iptables", "-w", "-S", args.name]
    known: set[str] = set()
    out = open(args.out, "w", buffering=1 << 20)
    print("ready", flush=True)
    while not stop:
        began = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        done = time.time()
        found: set[str] = set()
        if proc.returncode == 0:
            if args.kind == "nft":
                for item in json.loads(proc.stdout)["nftables"]:
                    for elem in item.get("set", {}).get("elem", []):
                        found.add(elem["elem"]["val"] if isinstance(elem, dict) else elem)
            else:
                found = set(re.findall(r"-s (\d+\.\d+\.\d+\.\d+)/32", proc.stdout))
        for address in found - known:
            out.write(f"P {done:.6f} {address}\n")
        known |= found
        out.write(f"Q {done - began:.6f}\n")
        out.flush()
        time.sleep(max(0.0, args.interval_ms / 1000 - (time.time() - began)))
    out.close()
    return 0


def loadgen_main(argv: list[str]) -> int:
    """Open-loop attack load: request i is due at t0 + i/rate from its own source address;
    issued on time unless --max-inflight requests are open (then late); none is issued after
    the window.  Writes a JSON summary with one row per request to --out."""
    p = argparse.ArgumentParser(prog="e2e.py _loadgen")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--first", type=int, required=True, help="index of the first source")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-inflight", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    payload = (f"GET {ATTACK_URI} HTTP/1.1\r\nHost: www.example.test\r\n"
               "User-Agent: modsec-tools-bench/1.0\r\nAccept: */*\r\nConnection: close\r\n\r\n"
               ).encode()
    count = int(round(args.rate * args.duration))
    sel = selectors.DefaultSelector()
    rows: list[list] = []                 # [source, due, started, done, status]
    open_: dict[int, tuple[socket.socket, list, bytearray]] = {}
    t0 = time.time() + 0.05
    window_end = t0 + args.duration
    nxt = 0
    checked = t0

    def finish(fd: int, status: int | None) -> None:
        sock, row, _buf = open_.pop(fd)
        try:
            sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        row[3], row[4] = time.time(), status

    while not stop:
        now = time.time()
        while nxt < count and t0 + nxt / args.rate <= now and len(open_) < args.max_inflight \
                and now < window_end:
            source = str(ipaddress.IPv4Address(FIRST_SOURCE + args.first + nxt))
            row = [source, t0 + nxt / args.rate, now, None, None]
            rows.append(row)
            nxt += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((source, 0))
                code = sock.connect_ex(("127.0.0.1", args.port))
            except OSError:
                sock.close()
                row[3] = time.time()
                continue
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                row[3] = time.time()
                continue
            open_[sock.fileno()] = (sock, row, bytearray())
            sel.register(sock, selectors.EVENT_WRITE)
        if (nxt >= count or now >= window_end) and not open_:
            break
        if now > window_end + args.timeout:
            for fd in list(open_):
                finish(fd, None)
            break
        wait = 0.05
        if nxt < count and now < window_end:
            wait = max(0.0, min(wait, t0 + nxt / args.rate - now))
        for key, mask in sel.select(wait):
            sock = key.fileobj
            fd = sock.fileno()
            if fd not in open_:
                continue
            _sock, row, buf = open_[fd]
            try:
                if mask & selectors.EVENT_WRITE:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        finish(fd, None)
                        continue
                    sock.send(payload)     # small: one segment
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                chunk = sock.recv(65536)
            except OSError:
                finish(fd, None)
                continue
            if chunk:
                if len(buf) < 64:
                    buf += chunk[:64]
                continue
            match = re.match(rb"HTTP/\d\.\d (\d{3})", bytes(buf))
            finish(fd, int(match.group(1)) if match else None)
        now = time.time()
        if now - checked > 0.1:
            checked = now
            for fd in [fd for fd, (_s, row, _b) in open_.items() if now - row[2] > args.timeout]:
                finish(fd, None)
    for fd in list(open_):
        finish(fd, None)
    Path(args.out).write_text(json.dumps({"t0": t0, "count": count, "rows": rows}))
    return 0


# =============================================================================================
# the bench

def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def proc_cpu(pid: int) -> float:
    """CPU seconds of pid and its live descendants."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            parts = stat.rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / tick
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, IndexError, ValueError):
            continue
    return total


def work_fs(path: Path) -> str:
    """'on <fstype> (<device>)' for the mount holding path."""
    best = ("?", "?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        if str(path).startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[2]):
            best = (device, fstype, mount)
    return f"on {best[1]} ({best[0]})"


def fsync_probe(directory: Path, samples: int = 20) -> tuple[float, float]:
    """(median, max) seconds of one 4 KiB append + fdatasync in ``directory``: what each of
    watch's per-batch syncs costs on this disk right now."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(samples):
            began = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            times.append(time.perf_counter() - began)
            time.sleep(0.02)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[len(times) // 2], times[-1]


def proc_sched(pid: int) -> tuple[float, float]:
    """(seconds on CPU, seconds runnable but waiting for a CPU) of every thread of pid and of
    its live descendants, from /proc/<tid>/schedstat: the wait is CPU starvation."""
    ran = waited = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                fields = Path(f"/proc/{current}/task/{task}/schedstat").read_text().split()
                ran += int(fields[0]) / 1e9
                waited += int(fields[1]) / 1e9
                stack.extend(int(c) for c in
                             Path(f"/proc/{current}/task/{task}/children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return ran, waited


def renice_all(pid: int, nice: int) -> None:
    """Set the nice value of every thread of pid and of its live descendants (Linux: per
    thread; threads made later inherit it from their creator)."""
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                os.setpriority(os.PRIO_PROCESS, int(task), nice)
                stack.extend(int(c) for c in
                             Path(f"/proc/{current}/task/{task}/children").read_text().split())
        except (OSError, ValueError):
            continue


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; values sorted, may end in inf (not banned in time)."""
    if not values:
        return float("nan")
    rank = max(1, int(-(-q * len(values) // 100)))
    return values[min(rank, len(values)) - 1]


def fmt_ms(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if value == float("inf"):
        return "never"
    return f"{value * 1000:.0f}"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.next_source = 0
        self.procs: list[subprocess.Popen] = []

    # -- processes ---------------------------------------------------------------------------
    def helper(self, netns, mode: str, *argv: str, stdout=subprocess.PIPE) -> subprocess.Popen:
        from tests.realparts._util import die_with_parent
        proc = subprocess.Popen(netns.wrap([sys.executable, str(SELF), mode, *argv]),
                                stdout=stdout, stderr=None, text=True, preexec_fn=die_with_parent)
        self.procs.append(proc)
        return proc

    def stop_helper(self, proc: subprocess.Popen, timeout: float = 20) -> None:
        from tests.realparts._util import stop_process
        stop_process(proc, signal.SIGTERM, timeout)

    def start_watch(self, work: Path, storage: Path, event_log: Path) -> subprocess.Popen:
        from tests.f2b_harness import wait_for
        from tests.realparts._util import die_with_parent
        config = work / "modsec-tools.conf"
        config.write_text(
            "[modsec-tools]\n"
            f"storage_dir = {storage}\n"
            f"archive = {work / 'archive.log'}\n"
            f"event_log = {event_log}\n"
            f"db = sqlite:///{work / 'events.db'}\n"
            f"state_dir = {work / 'state'}\n"
            f"quarantine_dir = {work / 'quarantine'}\n"
            "node = bench\n"
            + (f"workers = {self.args.watch_workers}\n" if self.args.watch_workers else ""))
        log = open(work / "watch.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "modsec_tools.cli", "watch", "--foreground",
                                 "--config", str(config), "--flush-ms", str(self.args.flush_ms)],
                                cwd=REPO, stdout=log, stderr=log, preexec_fn=die_with_parent)
        self.procs.append(proc)
        wait_for(lambda: (work / "state" / "status.json").exists() or proc.poll() is not None,
                 timeout=60)
        if proc.poll() is not None:
            raise RuntimeError(f"watch exited:\n{(work / 'watch.log').read_text()[-3000:]}")
        return proc

    # -- checks ------------------------------------------------------------------------------
    def check_sources(self, netns, web) -> str:
        """127.1.x.y is bindable inside the namespace with no address added, and Apache sees it."""
        addrs = netns.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"]).stdout.split()
        cidrs = [addrs[i + 1] for i, word in enumerate(addrs) if word == "inet"]
        if cidrs != ["127.0.0.1/8"]:
            raise RuntimeError(f"unexpected addresses on lo: {cidrs}")
        route = netns.run(["ip", "route", "get", PROBE_SOURCE]).stdout.split("\n")[0]
        before = web.access_log.read_text() if web.access_log.exists() else ""
        status = web.request("/", source_ip=PROBE_SOURCE, host="www.example.test", timeout=5)
        from tests.f2b_harness import wait_for
        wait_for(lambda: web.access_log.exists() and len(web.access_log.read_text()) > len(before),
                 timeout=5)
        line = web.access_log.read_text()[len(before):].strip().split("\n")[-1]
        if status != 200 or f" {PROBE_SOURCE} " not in f" {line} ":
            raise RuntimeError(f"binding {PROBE_SOURCE}: status {status}, access log {line!r}")
        return (f"lo holds only {cidrs[0]}; `ip route get {PROBE_SOURCE}`: {route.strip()}; a "
                f"request bound to {PROBE_SOURCE} got {status} and Apache logged that client")

    # -- one phase ---------------------------------------------------------------------------
    def phase(self, *, kind: str, rate: float, netns, web, server, work: Path,
              watch: subprocess.Popen | None) -> dict:
        args = self.args
        count = int(round(rate * args.duration))
        first = self.next_source
        self.next_source += count
        if FIRST_SOURCE + self.next_source > LAST_SOURCE:
            raise SystemExit("out of 127.1.0.0/16 source addresses: lower --rates/--duration")
        tag = f"{kind}-{rate:g}"
        obs_out, poll_out, load_out = (work / f"{tag}.{x}" for x in ("observe", "poll", "load"))
        tails = [f"B={server.log}"]
        tails.append(f"E={server.root / 'events.log'}" if kind == "ours"
                     else f"R={web.error_log}")
        observer = self.helper(netns, "_observe", "--storage", str(web.storage_dir),
                               "--out", str(obs_out), *[a for t in tails for a in ("--tail", t)])
        if observer.stdout.readline().strip() != "ready":
            raise RuntimeError("observer did not start")
        poller = None
        if args.observe == "both":
            name = NFT_TABLE if kind == "ours" else f"f2b-{JAIL_STOCK}"
            poller = self.helper(netns, "_poll", "--kind", "nft" if kind == "ours" else "iptables",
                                 "--name", name, "--interval-ms", str(args.poll_ms),
                                 "--out", str(poll_out))
            if poller.stdout.readline().strip() != "ready":
                raise RuntimeError("poller did not start")
        if args.pipeline_nice:
            renice_all(server.proc.pid, args.pipeline_nice)
            if watch:
                renice_all(watch.pid, args.pipeline_nice)
        time.sleep(0.5)
        cpu0 = cpu_busy()
        f2b_cpu0 = proc_cpu(server.proc.pid)
        f2b_sched0 = proc_sched(server.proc.pid)
        watch_sched0 = proc_sched(watch.pid) if watch else (0.0, 0.0)
        apache_cpu0 = proc_cpu(web.pid)
        watch_cpu0 = proc_cpu(watch.pid) if watch else 0.0
        load_avg0 = os.getloadavg()[0]
        _log(f"{tag}: {count} attack requests at {rate:g}/s from distinct addresses")
        began = time.time()
        loadgen = self.helper(netns, "_loadgen", "--rate", str(rate), "--duration",
                              str(args.duration), "--first", str(first), "--port", str(args.port),
                              "--max-inflight", str(args.max_inflight), "--out", str(load_out),
                              stdout=subprocess.DEVNULL)
        loadgen.wait(args.duration + 60)
        cpu1 = cpu_busy()
        apache_cpu = proc_cpu(web.pid) - apache_cpu0
        load = json.loads(load_out.read_text())
        # the attackers: every 403, and every issued source whose entry was written anyway
        # (a request the generator gave up on may still have been served and logged)
        issued = {row[0] for row in load["rows"]}
        attackers = {row[0] for row in load["rows"] if row[4] == 403}
        attackers |= {line.split()[3] for line in _read_lines(obs_out)
                      if line[:1] in "CF" and line.split()[3] in issued}
        # wait for the bans: all attackers in the kernel, or no progress / the deadline
        deadline = time.time() + (args.drain_timeout if kind == "ours" else args.baseline_drain)
        last_count, last_change = -1, time.time()
        while time.time() < deadline:
            banned = set()
            for line in _read_lines(obs_out):
                if line.startswith("S "):
                    banned.add(line.split()[2])
            if attackers <= banned:
                break
            seen = len(banned & attackers)
            if seen != last_count:
                last_count, last_change = seen, time.time()
            elif time.time() - last_change > args.stall:
                _log(f"{tag}: no new ban for {args.stall:g} s; stop waiting")
                break
            time.sleep(0.5)
        drained = time.time()
        time.sleep(0.3)
        f2b_cpu = proc_cpu(server.proc.pid) - f2b_cpu0
        f2b_wait = proc_sched(server.proc.pid)[1] - f2b_sched0[1]
        watch_wait = (proc_sched(watch.pid)[1] - watch_sched0[1]) if watch else None
        watch_cpu = (proc_cpu(watch.pid) - watch_cpu0) if watch else None
        self.stop_helper(observer)
        if poller:
            self.stop_helper(poller)
        if kind == "ours":
            held = netns.run(["nft", "-j", "list", "set", "inet", NFT_TABLE, "v4"]).stdout
            in_kernel = {e["elem"]["val"] if isinstance(e, dict) else e
                         for item in json.loads(held)["nftables"]
                         for e in item.get("set", {}).get("elem", [])}
        else:
            held = netns.run(["iptables", "-w", "-S", f"f2b-{JAIL_STOCK}"]).stdout
            in_kernel = set(re.findall(r"-s (\d+\.\d+\.\d+\.\d+)/32", held))
        return analyse(tag=tag, kind=kind, rate=rate, load=load, attackers=attackers,
                       obs=_read_lines(obs_out),
                       poll=_read_lines(poll_out) if poller else None,
                       access_log=web.access_log, in_kernel=in_kernel,
                       busy=(cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1]),
                       load_avg=(load_avg0, os.getloadavg()[0]), f2b_cpu=f2b_cpu,
                       watch_cpu=watch_cpu, apache_cpu=apache_cpu, wait=drained - began,
                       f2b_wait=f2b_wait, watch_wait=watch_wait)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        from tests import f2b_harness as f2b
        from tests.realparts import ApacheModSec, NetNS
        args = self.args
        res: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "machine": f"{os.cpu_count()} CPUs, {platform.release()}",
                     "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                     "phases": []}
        started = time.monotonic()
        parent = Path(args.tmp) if args.tmp else Path(tempfile.gettempdir())
        work = Path(tempfile.mkdtemp(prefix="mt-bench-e2e-", dir=parent))
        work.chmod(0o755)                  # www-data must reach the storage tree
        res["work"] = str(work)
        res["fsync"] = fsync_probe(work)
        res["work_fs"] = work_fs(work)
        try:
            with ExitStack() as stack:
                netns = stack.enter_context(NetNS(f"mt-e2e-{os.urandom(4).hex()}"))
                ns = f2b.Netns(netns.name)
                web = stack.enter_context(ApacheModSec(work / "web", netns=netns,
                                                       listen=[("127.0.0.1", args.port)]))
                stack.callback(lambda: [self.stop_helper(p, 5) for p in self.procs])
                res["sources"] = self.check_sources(netns, web)
                _log(res["sources"])
                res["versions"] = versions()
                if not args.no_ours:
                    jail = jail_ours(args.port)
                    with f2b.fail2ban_server(ns, jail) as server:
                        watch = self.start_watch(work, web.storage_dir, server.root / "events.log")
                        try:
                            for rate in args.rates:
                                res["phases"].append(self.phase(kind="ours", rate=rate,
                                                                netns=netns, web=web,
                                                                server=server, work=work,
                                                                watch=watch))
                                print_phase(res["phases"][-1])
                                time.sleep(args.pause)
                        finally:
                            self.stop_helper(watch, 30)
                    netns.run(["nft", "delete", "table", "inet", NFT_TABLE], check=False)
                if args.baseline:
                    jail = jail_stock(args.port, web.error_log)
                    with f2b.fail2ban_server(ns, jail, with_bundle_jails=False) as server:
                        for rate in args.rates:
                            res["phases"].append(self.phase(kind="stock", rate=rate, netns=netns,
                                                            web=web, server=server, work=work,
                                                            watch=None))
                            print_phase(res["phases"][-1])
                            time.sleep(args.pause)
        finally:
            if args.keep:
                _log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        res["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        res["minutes"] = (time.monotonic() - started) / 60
        return res


def jail_ours(port: int) -> str:
    """Our jail as the brief fixes it ({root}: the harness's server directory)."""
    return f"""
[{JAIL_OURS}]
enabled = true
logpath = {{root}}/events.log
backend = pyinotify
maxretry = 1
findtime = 60
bantime = 600
ignoreself = false
ignoreip = 127.0.0.1
port = {port}
action = modsec-block.py[backend=nftables, port="{port}"]
"""


def jail_stock(port: int, error_log: Path) -> str:
    """fail2ban's usual way: the stock filter on Apache's error log, the stock action.
    ``tail``: start at the end, or the earlier phases' attacks would be banned first."""
    return f"""
[{JAIL_STOCK}]
enabled = true
filter = apache-modsecurity
logpath = {error_log} tail
backend = pyinotify
maxretry = 1
findtime = 60
bantime = 600
ignoreself = false
ignoreip = 127.0.0.1
port = {port}
protocol = tcp
action = iptables-multiport[name={JAIL_STOCK}, port="{port}", protocol=tcp]
"""


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def versions() -> str:
    def first_line(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().split("\n")[0]
        except OSError:
            return "?"
    apache = first_line(["/usr/sbin/apache2", "-v"]).replace("Server version: ", "")
    return (f"{apache}; mod_security2 "
            f"{first_line(['dpkg-query', '-W', '-f=${Version}', 'libapache2-mod-security2'])}; "
            f"CRS {first_line(['dpkg-query', '-W', '-f=${Version}', 'modsecurity-crs'])}; "
            f"fail2ban {first_line(['fail2ban-server', '-V'])}; "
            f"{first_line(['nft', '-v'])}; {first_line(['iptables', '-V'])}")


# =============================================================================================
# analysis

def analyse(*, tag: str, kind: str, rate: float, load: dict, attackers: set[str],
            obs: list[str], poll: list[str] | None, access_log: Path, in_kernel: set[str],
            busy: float, load_avg: tuple[float, float], f2b_cpu: float,
            watch_cpu: float | None, apache_cpu: float, wait: float, f2b_wait: float,
            watch_wait: float | None) -> dict:
    rows = load["rows"]
    issued = len(rows)
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[str(row[4])] = statuses.get(str(row[4]), 0) + 1
    answered = [row for row in rows if row[4] is not None]
    span = (max(r[3] for r in answered) - min(r[2] for r in rows)) if answered else 0.0
    issue_span = (rows[-1][2] - rows[0][2]) if len(rows) > 1 else 0.0
    late = [row[2] - row[1] for row in rows]
    late.sort()

    # close times per client: IN_CLOSE_WRITE first, else a scan find (mtime)
    by_uid: dict[str, str] = {}
    unresolved: list[tuple[str, float, str]] = []
    close: dict[str, float] = {}
    close_how: dict[str, str] = {}
    first: dict[str, dict[str, float]] = {"E": {}, "R": {}, "B": {}, "S": {}}
    overflow = 0
    for line in obs:
        parts = line.split()
        kind_, stamp = parts[0], float(parts[1])
        if kind_ in ("C", "F"):
            name, client = parts[2], parts[3]
            if client == "-":
                unresolved.append((kind_, stamp, name))
                continue
            if client not in close or (kind_ == "C" and close_how[client][0] == "F"):
                close[client], close_how[client] = stamp, kind_ + "a"
        elif kind_ == "X":
            overflow += 1
        elif kind_ in first:
            first[kind_].setdefault(parts[2], stamp)
    if unresolved:                   # watch took the file first: its unique id -> access log
        for line in access_log.read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) > 1:
                by_uid[words[0]] = words[1]
        for kind_, stamp, name in unresolved:
            client = by_uid.get(name.split("-", 2)[-1])     # YYYYmmdd-HHMMSS-<unique id>
            if client and (client not in close or (kind_ == "C" and close_how[client][0] == "F")):
                close[client], close_how[client] = stamp, kind_ + "u"
    polled: dict[str, float] = {}
    poll_periods: list[float] = []
    if poll is not None:
        for line in poll:
            parts = line.split()
            if parts[0] == "P":
                polled.setdefault(parts[2], float(parts[1]))
            elif parts[0] == "Q":
                poll_periods.append(float(parts[1]))

    def dist(values: list[float], total: int) -> dict:
        values = sorted(values) + [float("inf")] * max(0, total - len(values))
        return {q: percentile(values, q) for q in (50, 90, 99, 100)}

    with_close = [c for c in attackers if c in close]
    latency = [first["S"][c] - close[c] for c in with_close if c in first["S"]]
    stage_keys = ("E", "B", "S") if kind == "ours" else ("R", "B", "S")
    stages = {}
    prev = "close"
    for key in stage_keys:
        diffs = []
        for c in with_close:
            a = close[c] if prev == "close" else first[prev].get(c)
            b = first[key].get(c)
            if a is not None and b is not None:
                diffs.append(b - a)
        stages[f"{prev}->{key}"] = dist(diffs, len(diffs))
        prev = key
    # the observer reads a burst of event-log lines at once: one burst ~ one watch batch
    bursts: dict[float, int] = {}
    for client, stamp in first["E"].items():
        if client in attackers:
            bursts[stamp] = bursts.get(stamp, 0) + 1
    gaps = sorted(b - a for a, b in zip(sorted(bursts), sorted(bursts)[1:]))
    result = {
        "bursts": len(bursts), "burst_max": max(bursts.values(), default=0),
        "burst_gap_max": gaps[-1] if gaps else 0.0,
        "tag": tag, "kind": kind, "rate": rate, "count": load["count"], "issued": issued,
        "statuses": statuses, "issue_rate": (issued - 1) / issue_span if issue_span else 0.0,
        "answered_rate": len(answered) / span if span else 0.0,
        "late_p50": percentile(late, 50) if late else 0.0,
        "late_max": late[-1] if late else 0.0,
        "attackers": len(attackers), "closes": len(with_close),
        "close_how": {h: sum(1 for c in with_close if close_how[c] == h)
                      for h in ("Ca", "Cu", "Fa", "Fu")},
        "events": len(set(first["E"]) & attackers), "errorlog": len(set(first["R"]) & attackers),
        "ban_notices": len(set(first["B"]) & attackers),
        "kernel_seen": len(set(first["S"]) & attackers),
        "in_kernel_end": len(in_kernel & attackers),
        "latency": dist(latency, len(with_close)),
        "stages": stages, "overflow": overflow,
        "busy": busy, "load_avg": load_avg, "f2b_cpu": f2b_cpu, "watch_cpu": watch_cpu,
        "apache_cpu": apache_cpu, "wait": wait, "f2b_wait": f2b_wait, "watch_wait": watch_wait, "no_close": len(attackers) - len(with_close),
    }
    if poll is not None:
        result["poll_latency"] = dist([polled[c] - close[c] for c in with_close if c in polled],
                                      len(with_close))
        poll_periods.sort()
        result["poll_period"] = (percentile(poll_periods, 50), percentile(poll_periods, 100)) \
            if poll_periods else None
    return result


# =============================================================================================
# reporting

def phase_row(r: dict) -> str:
    lat = r["latency"]
    verdict = []
    for q, limit in (("p50", TARGETS["p50"]), ("p99", TARGETS["p99"])):
        value = lat[int(q[1:])]
        verdict.append(f"{q} {'ok' if value <= limit else 'MISSED'}")
    what = "modsec-tools (watch + modsec filter + modsec-block nftables)" if r["kind"] == "ours" \
        else "stock (apache-modsecurity on error.log + iptables-multiport)"
    return (f"| {what} | {r['rate']:g} | {r['issue_rate']:.0f} | {r['answered_rate']:.0f} "
            f"| {r['statuses'].get('403', 0)} | {r['closes']} | {r['ban_notices']} "
            f"| {r['kernel_seen']} | {fmt_ms(lat[50])} | {fmt_ms(lat[90])} | {fmt_ms(lat[99])} "
            f"| {fmt_ms(lat[100])} | {', '.join(verdict)} |")


TABLE_HEAD = ("| pipeline | offered/s | issued/s | answered/s | 403s | entries (closes) "
              "| Ban notices | in kernel | p50 ms | p90 ms | p99 ms | max ms | target |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def stage_rows(r: dict) -> list[str]:
    names = {"close->E": "close → event-log line (watch)",
             "E->B": "event line → fail2ban Ban notice (filter + actions thread)",
             "B->S": "Ban notice → kernel (action)",
             "close->R": "close → error-log line (negative: written before the entry)",
             "R->B": "error-log line → fail2ban Ban notice",
             "B->S_stock": "Ban notice → kernel (forked iptables)"}
    lines = []
    for key, d in r["stages"].items():
        label = names.get(key + ("_stock" if r["kind"] == "stock" and key == "B->S" else ""), key)
        lines.append(f"| {r['tag']} | {label} | {fmt_ms(d[50])} | {fmt_ms(d[90])} "
                     f"| {fmt_ms(d[99])} | {fmt_ms(d[100])} |")
    return lines


def detail_line(r: dict) -> str:
    how = r["close_how"]
    text = (f"{r['tag']}: {r['issued']} of {r['count']} requests issued (late p50 "
            f"{r['late_p50'] * 1000:.0f} ms, max {r['late_max'] * 1000:.0f} ms), statuses "
            f"{r['statuses']}; close times: {how['Ca'] + how['Cu']} IN_CLOSE_WRITE "
            f"({how['Cu']} mapped by access log), {how['Fa'] + how['Fu']} scan/mtime; "
            f"{r['no_close']} attackers without one; {r['in_kernel_end']} attackers in the "
            f"kernel at the end; CPU busy {r['busy'] * 100:.0f} % during the load; Apache "
            f"{r['apache_cpu']:.1f} CPU s ({1000 * r['apache_cpu'] / max(1, r['issued']):.1f} ms "
            f"a request), fail2ban-server {r['f2b_cpu']:.1f} CPU s (its threads waited "
            f"{r['f2b_wait']:.1f} s for a CPU)")
    if r["watch_cpu"] is not None:
        text += (f", watch {r['watch_cpu']:.1f} CPU s (waited {r['watch_wait']:.1f} s for a "
                 f"CPU, over the {r['wait']:.0f} s from the first request to the last ban); "
                 f"event lines came in {r['bursts']} "
                 f"bursts (≈ watch batches), the largest {r['burst_max']}, the longest gap "
                 f"{r['burst_gap_max'] * 1000:.0f} ms")
    text += f"; load average {r['load_avg'][0]:.1f} → {r['load_avg'][1]:.1f}"
    if r["overflow"]:
        text += f"; {r['overflow']} observer queue overflows"
    if "poll_latency" in r:
        p = r["poll_latency"]
        period = r["poll_period"]
        text += (f"; by polling: p50 {fmt_ms(p[50])} / p90 {fmt_ms(p[90])} / p99 "
                 f"{fmt_ms(p[99])} / max {fmt_ms(p[100])} ms (one listing took "
                 f"{period[0] * 1000:.0f} ms median, {period[1] * 1000:.0f} ms max)"
                 if period else "; poller recorded nothing")
    return text


def print_phase(r: dict) -> None:
    print(TABLE_HEAD)
    print(phase_row(r))
    print("| phase | stage | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---:|---:|---:|---:|")
    print("\n".join(stage_rows(r)))
    print(detail_line(r), flush=True)


INTRO = [
    "## bench/e2e.py", "",
    "Detection → ban latency, end to end (Apache + mod_security2 + CRS, `modsec-tools watch`, "
    "fail2ban-server, kernel, all in a private network namespace; `python3 bench/e2e.py "
    "--help`). Latency = from the audit entry file's IN_CLOSE_WRITE (the bench's own inotify "
    "watch on the storage tree, time.time(); file → client by its section A) to the address in "
    "the kernel, seen by streaming `nft monitor` inside the namespace (stamped when read: "
    "`add element inet mt-modsec v4` for ours, `insert rule ip filter f2b-apache-modsecurity` "
    "for the stock iptables-multiport action, iptables being the nf_tables flavour here). One "
    "attack request (`GET /?id=1' or '1'='1`, 403) per source address in 127.1.0.0/16, bound "
    "on the namespace's lo without adding it (127.0.0.1/8 there makes every 127.x local; the "
    "bench checks it), so every request is a first offence. Jails: maxretry 1, findtime 60, "
    "bantime 600, backend pyinotify; ours: our filter on watch's event log, "
    "`modsec-block.py[backend=nftables, port=8080]`; stock: `apache-modsecurity` on Apache's "
    "error log (`tail`), `iptables-multiport`, no modsec-tools running. `never`: not in the "
    "kernel when the bench stopped waiting (counted as infinitely late). Targets: p50 ≤ 300 "
    "ms, p99 ≤ 1 s. `issued/s`: what the open-loop generator managed to send (it stops at "
    "the end of the window and holds at most --max-inflight connections); `answered/s`: "
    "responses over the time from the first request to the last response.", "",
    "Mechanisms behind the stages (read in the sources of the versions used):", "",
    "* fail2ban 1.0.2's actions thread is not woken by a new ticket: it polls the jail's "
    "queue (`Utils.wait_for`: sleeps of 0.2, 0.4, 0.6 s … within each 1 s round), so in a "
    "quiet jail a first ticket waits 0–0.6 s for its Ban; in a flood it takes 10 tickets at "
    "a time (banPrecedence) between unban checks. Both pipelines pay this in the "
    "line → Ban stage.",
    "* watch appends a batch's event lines after the journal's fsync and the archive's "
    "fdatasync, and takes the next batch only after the whole chain (event-log fdatasync, "
    "SQLite commit, journal `done` fsync, unlink of every file), so a batch holds what closed "
    "during the previous one (at most batch_size = 500). A batch of 128+ entries is examined "
    "in worker processes (workers = auto), spawned (fresh interpreters) at the first such "
    "batch.",
    "* modsec-block queues the ban and applies a batch with one `nft -f -` (2 ms gathering "
    "after a quiet spell, at most one transaction per 50 ms in a flood). The stock action "
    "forks `iptables -w -I f2b-<jail> 1 -s IP -j REJECT` per ban, one after another in the "
    "actions thread.",
    "* The stock path reads Apache's error log, whose `Access denied` line is written in "
    "phase 2, before the audit entry (logging phase): its first stage is negative, a head "
    "start of a few ms for the baseline.",
    ""]


def run_section(res: dict, command: str) -> str:
    """One run's figures: a '### `command`' subsection (replaced when the same command runs
    again; other commands' subsections and hand-written ones are kept)."""
    lines = [
        f"### `{command}`", "",
        f"Run {res['date']} on {res['machine']}; load average {res['load_before']} before, "
        f"{res['load_after']} after (the VM is shared with other sessions' runs: figures are "
        f"noisy). Took {res['minutes']:.1f} min. {res['versions']}. Work directory "
        f"{res['work_fs']}; a 4 KiB append + fdatasync there took {res['fsync'][0] * 1000:.1f} "
        f"ms median, {res['fsync'][1] * 1000:.1f} ms max (20 samples before the run). "
        f"Sources: {res['sources']}.", "",
        TABLE_HEAD]
    lines += [phase_row(r) for r in res["phases"]]
    lines += ["", "Where the time goes (per banned address; stamps of the same observer):", "",
              "| phase | stage | p50 ms | p90 ms | p99 ms | max ms |",
              "|---|---|---:|---:|---:|---:|"]
    for r in res["phases"]:
        lines += stage_rows(r)
    lines += [""] + [f"* {detail_line(r)}" for r in res["phases"]]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_results(path: Path, run: str, command: str) -> None:
    """Update only the '## bench/e2e.py' section of ``path``: its introduction, and the
    subsection of this command (added if new); other sections and subsections are kept."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## bench/e2e\.py\n.*?(?=^## |\Z)", re.S | re.M)
    match = pattern.search(text)
    subsections = re.split(r"(?m)^(?=### )", match.group(0))[1:] if match else []
    header = f"### `{command}`\n"
    subsections = [run + "\n" if sub.startswith(header) else sub for sub in subsections]
    if not any(sub.startswith(header) for sub in subsections):
        subsections.insert(0, run + "\n")
    section = "\n".join(INTRO) + "\n" + "".join(subsections)
    section = section.rstrip("\n") + "\n\n"
    if match:
        text = text[:match.start()] + section + text[match.end():]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


# =============================================================================================

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/e2e.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1].rsplit("\nusage:", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,1000",
                        help="offered loads, attack requests/s, comma separated, run in this "
                        "order (default: 100,1000)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of load per rate (default: 5); rate x duration distinct "
                        "addresses each, 65,534 in all")
    parser.add_argument("--port", type=int, default=8080, help="Apache's port in the namespace "
                        "(default: 8080)")
    parser.add_argument("--flush-ms", type=float, default=0.0,
                        help="watch --flush-ms (default: 0, watch's own default: group "
                        "commit)")
    parser.add_argument("--watch-workers", metavar="N",
                        help="watch's `workers` setting (default: its own, auto = one per CPU; "
                        "batches of 128+ entries go to these spawned processes, started at "
                        "the first such batch; 0 examines everything in-process)")
    parser.add_argument("--pipeline-nice", type=int, default=0, metavar="N",
                        help="nice value for every thread of watch and fail2ban-server "
                        "(default: 0, as deployed; e.g. -10 shows what CPU priority buys when "
                        "Apache's worker threads saturate the CPU)")
    parser.add_argument("--observe", choices=("monitor", "both"), default="monitor",
                        help="how the kernel is watched: monitor = stream `nft monitor` inside "
                        "the namespace (default; exact stamps, nearly free); both = also poll "
                        "`nft -j list set` (ours) / `iptables -S f2b-<jail>` (stock) every "
                        "--poll-ms and report those figures too (the poller costs CPU that the "
                        "pipeline then lacks)")
    parser.add_argument("--poll-ms", type=float, default=10.0,
                        help="polling period with --observe both (default: 10)")
    parser.add_argument("--max-inflight", type=int, default=1000,
                        help="the generator's open-connection cap; beyond it requests go out "
                        "late (default: 1000)")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds after the load starts to wait for all bans, ours "
                        "(default: 60)")
    parser.add_argument("--baseline-drain", type=float, default=300.0,
                        help="the same for the stock baseline (default: 300)")
    parser.add_argument("--stall", type=float, default=20.0,
                        help="stop waiting for bans after this many seconds without a new one "
                        "(default: 20)")
    parser.add_argument("--pause", type=float, default=3.0,
                        help="seconds of quiet between phases (default: 3)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the stock apache-modsecurity + iptables-multiport baseline")
    parser.add_argument("--no-ours", action="store_true", help="run only the baseline")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: --rates 20,100 --duration 2")
    parser.add_argument("--tmp", metavar="DIR", help="parent of the work directory (default: "
                        "the system temp dir; /dev/shm puts the storage tree on tmpfs)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--results", type=Path, metavar="PATH",
                        help="write the figures to the '## bench/e2e.py' section of PATH "
                        "(e.g. bench/RESULTS.md); other sections are kept")
    args = parser.parse_args(argv)
    if args.quick:
        args.rates, args.duration = "20,100", 2.0
    args.rates = [float(x) for x in args.rates.split(",") if x.strip()]
    if not args.rates or any(r <= 0 for r in args.rates):
        parser.error("--rates: positive numbers")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["_observe"]:
        return observe_main(argv[1:])
    if argv[:1] == ["_poll"]:
        return poll_main(argv[1:])
    if argv[:1] == ["_loadgen"]:
        return loadgen_main(argv[1:])
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/e2e.py needs root (network namespace, fail2ban, firewall)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    command = "python3 bench/e2e.py " + " ".join(shlex.quote(a) for a in argv)
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
    run = run_section(res, command)
    print()
    print(run)
    if args.results:
        write_results(args.results, run, command)
        print(f"updated the '## bench/e2e.py' section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
