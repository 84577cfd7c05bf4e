"""Harness for the fail2ban bundle: sample-log checks, network namespaces, a real fail2ban-server.

Reusable by other tests (the Apache+ModSecurity end-to-end test uses ``netns()`` and
``fail2ban_server()``).  Everything that imports fail2ban runs in Debian's /usr/bin/python3
through fail2ban's own commands; this module only drives subprocesses, so it works from
any interpreter.

Typical use::

    with netns() as ns, fail2ban_server(ns, jails=JAIL) as f2b:
        f2b.client("set", "modsec", "banip", "192.0.2.7")
        assert "192.0.2.7" in kernel_bans(ns, "nftables", "modsec")
"""
from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "fail2ban"                       # our filter.d / jail.d / action.d
SAMPLES = BUNDLE / "tests" / "files" / "logs"
FILTER = BUNDLE / "filter.d" / "modsec.conf"
SYSTEM_CONF = Path("/etc/fail2ban")
FAIL2BAN_REGEX = "/usr/bin/fail2ban-regex"
FAIL2BAN_SERVER = "/usr/bin/fail2ban-server"
FAIL2BAN_CLIENT = "/usr/bin/fail2ban-client"

# F-tags the modsec filter captures; fail2ban-regex prints them for every match.
TAGS = ("node", "verdict", "status", "score", "severity", "rules", "uniqueid")


# ---------------------------------------------------------------------------------------
# sample logs (fail2ban's "# failJSON:" convention) and fail2ban-regex

@dataclass
class Case:
    lineno: int
    line: str
    expect: dict
    options: list[dict]          # filter option sets this line is checked with


@dataclass
class SampleFile:
    cases: list[Case]
    forged: list[str] = field(default_factory=list)


_META = re.compile(r"^#+ ?(failJSON|filterOptions|forgedAddresses):\s*(.+)$")


def parse_samples(path: Path) -> SampleFile:
    """Read a sample log: each failJSON applies to the next line, under the current filterOptions."""
    sample = SampleFile(cases=[])
    options: list[dict] = [{}]
    pending: dict | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        meta = _META.match(raw)
        if meta:
            kind, value = meta.group(1), json.loads(meta.group(2))
            if kind == "filterOptions":
                options = value if isinstance(value, list) else [value]
            elif kind == "forgedAddresses":
                sample.forged.extend(value)
            else:
                pending = value
            continue
        if pending is not None:
            sample.cases.append(Case(lineno, raw, pending, options))
            pending = None
    return sample


@dataclass
class Match:
    ip: str
    time: int
    tags: dict[str, str]
    line: str


def filter_spec(options: dict, path: Path = FILTER) -> str:
    """fail2ban-regex's filter argument: path[opt=value,...]."""
    if not options:
        return str(path)
    return f"{path}[{', '.join(f'{k}={v}' for k, v in sorted(options.items()))}]"


def run_fail2ban_regex(log: Path, spec: str, timezone: str = "UTC") -> list[Match]:
    """Run the real fail2ban-regex; one Match per failure it reports."""
    fmt = "\t".join(["<ip>", "<time>", *(f"<F-{t.upper()}>" for t in TAGS), "<matches>"])
    proc = subprocess.run(
        [FAIL2BAN_REGEX, f"--timezone={timezone}", "-o", fmt, str(log), spec],
        capture_output=True, text=True, encoding="utf-8", timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"fail2ban-regex failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    matches = []
    for row in proc.stdout.split("\n"):
        if not row:
            continue
        parts = row.split("\t", len(TAGS) + 2)    # the matched line itself may hold a tab
        if len(parts) != len(TAGS) + 3:
            raise RuntimeError(f"unexpected fail2ban-regex output: {row!r}")
        matches.append(Match(parts[0], int(float(parts[1])), dict(zip(TAGS, parts[2:-1])), parts[-1]))
    return matches


def iso_to_epoch(text: str, default_tz: dt.tzinfo = dt.timezone.utc) -> int:
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=default_tz)
    return calendar.timegm(stamp.utctimetuple())


def stage_filter(filter_path: Path, tmp: Path) -> Path:
    """Copy a filter next to the stock common.conf, so its ``before = common.conf`` resolves."""
    staged = tmp / "filter.d"
    staged.mkdir(exist_ok=True)
    shutil.copy(SYSTEM_CONF / "filter.d" / "common.conf", staged / "common.conf")
    shutil.copy(filter_path, staged / filter_path.name)
    return staged / filter_path.name


def check_samples(path: Path, filter_path: Path = FILTER) -> tuple[list[str], int]:
    """Check every failJSON expectation with fail2ban-regex, once per option set.

    Returns (problems, number of checks made).  A problem is a readable sentence; none
    means every line matched (or not) exactly as described, with the described host,
    time and tags, and no forged address ever matched.
    """
    sample = parse_samples(path)
    problems: list[str] = []
    checks = 0
    option_sets = {json.dumps(o, sort_keys=True) for c in sample.cases for o in c.options}
    with tempfile.TemporaryDirectory(prefix="mt-f2b-regex-") as tmp:
        filter_path = stage_filter(filter_path, Path(tmp))
        for key in sorted(option_sets):
            options = json.loads(key)
            cases = [c for c in sample.cases if options in c.options]
            by_line: dict[str, Case] = {}
            for case in cases:
                if case.line in by_line:      # output is mapped back by line text
                    problems.append(f"line {case.lineno} duplicates line {by_line[case.line].lineno}")
                by_line[case.line] = case
            log = Path(tmp) / "sample.log"
            log.write_text("".join(c.line + "\n" for c in cases), encoding="utf-8")
            found = run_fail2ban_regex(log, filter_spec(options, filter_path))
            problems += _compare(options, cases, by_line, found, sample.forged)
            checks += len(cases)
    return problems, checks


def _compare(options: dict, cases: list[Case], by_line: dict[str, Case], found: list[Match],
             forged: Sequence[str]) -> list[str]:
    problems = []
    where = f"mode options {options or '{} (default)'}"
    matched: dict[int, Match] = {}
    for match in found:
        if match.ip in forged:
            problems.append(f"{where}: FORGED address {match.ip} matched in: {match.line[:160]}")
        case = by_line.get(match.line)
        if case is None:
            problems.append(f"{where}: match on an unknown line: {match.line[:160]}")
            continue
        if case.lineno in matched:
            problems.append(f"{where}: line {case.lineno} matched twice")
        matched[case.lineno] = match
    for case in cases:
        match = matched.get(case.lineno)
        expected = bool(case.expect.get("match"))
        if match is None:
            if expected:
                problems.append(f"{where}: line {case.lineno} should match but did not")
            continue
        if not expected:
            problems.append(f"{where}: line {case.lineno} matched ({match.ip}) but must not")
            continue
        problems += _compare_fields(where, case, match)
    return problems


def _compare_fields(where: str, case: Case, match: Match) -> list[str]:
    problems = []
    for key, want in case.expect.items():
        if key in ("match", "desc"):
            continue
        if key == "time":
            got, want = match.time, iso_to_epoch(want)
        elif key == "host":
            got = match.ip
        else:
            got = match.tags.get(key)
        if got != want:
            problems.append(f"{where}: line {case.lineno}: {key} is {got!r}, expected {want!r}")
    return problems


# ---------------------------------------------------------------------------------------
# network namespaces

class Netns:
    """A network namespace made by the test; commands run inside it via ``ip netns exec``."""

    def __init__(self, name: str):
        self.name = name

    def cmd(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.cmd(*argv), input=input, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.name} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()}")
        return proc

    def out(self, *argv: str, check: bool = True) -> str:
        return self.run(*argv, check=check).stdout

    def popen(self, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*argv), **kwargs)


@contextlib.contextmanager
def netns(prefix: str = "mt-") -> Iterator[Netns]:
    """Create ``mt-<random>`` with loopback up; delete it (and so its firewall) afterwards."""
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        ns = Netns(name)
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def iptables_flavour() -> str:
    """'legacy' or 'nf_tables', as ``iptables -V`` reports it."""
    text = subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout
    return "legacy" if "legacy" in text else "nf_tables"


# ---------------------------------------------------------------------------------------
# fail2ban-server inside a namespace

# stock files a minimal configuration needs (the rest of /etc/fail2ban is copied too, but
# jail.d, *.local and fail2ban.d are left out so the host's own jails never start here)
_SKIP_CONF = ("jail.d", "fail2ban.d", "jail.local", "fail2ban.local")


def make_confdir(root: Path, jails: str, *, fail2ban_local: str = "", extra: dict[str, str] | None = None,
                 with_bundle_jails: bool = True) -> Path:
    """A private fail2ban configuration: stock base files, our bundle, a jail.local.

    ``jails`` becomes jail.local (it may enable/override our jail.d/modsec.conf); ``extra``
    maps relative paths to file contents (e.g. a test filter).
    """
    conf = root / "conf"
    shutil.copytree(SYSTEM_CONF, conf, ignore=lambda d, names: [n for n in names if n in _SKIP_CONF
                                                                and Path(d) == SYSTEM_CONF])
    (conf / "jail.d").mkdir()
    (conf / "fail2ban.d").mkdir()
    for sub in ("filter.d", "action.d"):
        for path in (BUNDLE / sub).iterdir():
            if path.is_file():
                shutil.copy(path, conf / sub / path.name)
    if with_bundle_jails:
        shutil.copy(BUNDLE / "jail.d" / "modsec.conf", conf / "jail.d" / "modsec.conf")
    (conf / "jail.local").write_text(textwrap.dedent(jails))
    (conf / "fail2ban.local").write_text(textwrap.dedent(f"""\
        [Definition]
        loglevel = INFO
        logtarget = {root}/fail2ban.log
        socket = {root}/fail2ban.sock
        pidfile = {root}/fail2ban.pid
        dbfile = {root}/fail2ban.sqlite3
        dbpurgeage = 30d
        """) + textwrap.dedent(fail2ban_local))
    for rel, text in (extra or {}).items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(textwrap.dedent(text))
    return conf


class Fail2Ban:
    """A fail2ban-server running in the foreground inside ``ns`` (we own its pid)."""

    def __init__(self, ns: Netns, root: Path, conf: Path):
        self.ns, self.root, self.conf = ns, root, conf
        self.sock = root / "fail2ban.sock"
        self.log = root / "fail2ban.log"
        self.proc: subprocess.Popen | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        self.proc = self.ns.popen(
            FAIL2BAN_SERVER, "-f", "-x", "-c", str(self.conf), "-s", str(self.sock),
            "-p", str(self.root / "fail2ban.pid"), "--logtarget", str(self.log),
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.stderr", "ab"))
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the server answers and every configured jail runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"fail2ban-server exited ({self.proc.returncode}):\n{self.tail()}")
            proc = self._client("status", check=False, timeout=5)
            if proc.returncode == 0 and "Jail list" in proc.stdout:
                return
            time.sleep(0.1)
        raise TimeoutError(f"fail2ban-server not ready after {timeout}s:\n{self.tail()}")

    def stop(self, timeout: float = 60) -> None:
        """Orderly stop (jails flush and stop their actions)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._client("stop", check=False, timeout=timeout)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: fail2ban dies without touching the firewall (as after a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- client --------------------------------------------------------------------------
    def _client(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([FAIL2BAN_CLIENT, "-s", str(self.sock), *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"fail2ban-client {' '.join(args)} failed: {proc.stderr}{proc.stdout}"
                               f"\n{self.tail()}")
        return proc

    def client(self, *args: str, timeout: float = 60) -> str:
        return self._client(*args, timeout=timeout).stdout.strip()

    def banip(self, jail: str, *ips: str) -> None:
        self.client("set", jail, "banip", *ips)

    def unbanip(self, jail: str, *ips: str) -> None:
        self.client("set", jail, "unbanip", *ips)

    def banned(self, jail: str) -> set[str]:
        return set(self.client("get", jail, "banned").strip("[]").replace("'", "").replace(",", " ").split())

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no fail2ban log)"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def fail2ban_server(ns: Netns, jails: str, *, fail2ban_local: str = "", extra: dict[str, str] | None = None,
                    with_bundle_jails: bool = True, root: Path | None = None) -> Iterator[Fail2Ban]:
    """Start fail2ban-server in ``ns`` with ``jails`` as jail.local; stop it afterwards.

    ``jails`` is used verbatim (after dedent) as jail.local on top of the stock jail.conf
    and our jail.d/modsec.conf, e.g.::

        [modsec]
        enabled = true
        logpath = /tmp/x/events.log
    """
    own = root is None
    base = Path(tempfile.mkdtemp(prefix="mt-f2b-")) if own else root
    try:
        conf = make_confdir(base, jails, fail2ban_local=fail2ban_local, extra=extra,
                            with_bundle_jails=with_bundle_jails)
        f2b = Fail2Ban(ns, base, conf)
        f2b.start()
        try:
            yield f2b
        finally:
            f2b.stop()
            f2b.kill()
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# what the kernel holds

def ipset_members(ns: Netns, name: str) -> dict[str, int | None]:
    """address -> remaining timeout (None: permanent) of an ipset; {} if the set is absent."""
    proc = ns.run("ipset", "list", name, "-o", "save", check=False)
    if proc.returncode != 0:
        return {}
    members: dict[str, int | None] = {}
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "add":
            members[words[2]] = int(words[4]) if len(words) >= 5 and words[3] == "timeout" else None
    return members


_NFT_TIMEOUT = re.compile(r"(\d+)([dhms]|ms)")


def _nft_seconds(text: str) -> int:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return int(sum(int(n) * units[u] for n, u in _NFT_TIMEOUT.findall(text)))


def nft_set_members(ns: Netns, table: str, name: str) -> dict[str, int | None]:
    """address -> remaining time (``expires``; None: permanent) of an nftables set."""
    proc = ns.run("nft", "-j", "list", "set", "inet", table, name, check=False)
    if proc.returncode != 0:
        return {}
    members: dict[str, int | None] = {}
    for item in json.loads(proc.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                members[elem["elem"]["val"]] = elem["elem"].get("expires")
            else:
                members[elem] = None
    return members


def legacy_rules(ns: Netns, chain: str, family: int = 4, table: str = "filter") -> list[str]:
    """``iptables-legacy -S chain`` lines (rules only) inside the namespace; [] if absent."""
    tool = "iptables-legacy" if family == 4 else "ip6tables-legacy"
    proc = ns.run(tool, "-w", "-t", table, "-S", chain, check=False)
    if proc.returncode != 0:
        return []
    return [line for line in proc.stdout.splitlines() if line.startswith("-A ")]


def wait_for(predicate: Callable[[], object], timeout: float = 20, interval: float = 0.05,
             what: str = "condition") -> object:
    """Poll until predicate() is truthy; returns its value or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def is_root() -> bool:
    return os.geteuid() == 0
