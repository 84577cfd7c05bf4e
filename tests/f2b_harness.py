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
import glob
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
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
PYTHON = "/usr/bin/python3"          # small helper programs run inside namespaces

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
# the action's package, in this interpreter (it needs nothing of fail2ban)

def blocker_package():
    """fail2ban/action.d/modsec_blocker, imported as the action imports it (from its directory)."""
    import importlib
    import sys
    here = str(BUNDLE / "action.d")
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("modsec_blocker")


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

# ---------------------------------------------------------------------------------------
# fail2ban releases: Debian's installed one, and others unpacked from Debian's archive

@dataclass(frozen=True)
class Release:
    """A fail2ban to run: its interpreter, the directory its Python package is imported from,
    its scripts and its stock configuration."""
    version: str
    python: str
    lib: Path                 # holds fail2ban/ (and pyinotify.py)
    bin: Path                 # fail2ban-server, fail2ban-client
    conf: Path                # its stock /etc/fail2ban
    system: bool = False      # Debian's own: its scripts run as they are

    def interpreter(self) -> list[str]:
        """argv of its interpreter with its fail2ban importable: only its lib on the path
        (another interpreter must not import Debian's modules, built for Debian's Python)."""
        if self.system:
            return [self.python]
        return ["env", f"PYTHONPATH={self.lib}", "PYTHONDONTWRITEBYTECODE=1", self.python]

    def command(self, script: str) -> list[str]:
        """argv running one of its scripts (Debian's own: as they are)."""
        return [str(self.bin / script)] if self.system else [*self.interpreter(), str(self.bin / script)]

    def on(self, python: str, lib: Path) -> Release:
        """The same fail2ban run by another interpreter, e.g. the Python 3.6 of RHEL 8's fail2ban;
        ``lib`` (created) gets links to fail2ban and pyinotify."""
        lib.mkdir(parents=True, exist_ok=True)
        for name, source in (("fail2ban", self.lib / "fail2ban"), ("pyinotify.py", PYINOTIFY)):
            if not (lib / name).exists():
                (lib / name).symlink_to(source)
        return Release(self.version, python, lib, self.bin, self.conf)


def _version(lib: Path) -> str:
    """fail2ban's version, as its package under ``lib`` states it."""
    text = (lib / "fail2ban" / "version.py").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


PYINOTIFY = Path("/usr/lib/python3/dist-packages/pyinotify.py")        # Debian 12's, any Python 3
DEBIAN = Release(version=_version(Path("/usr/lib/python3/dist-packages")), python=PYTHON,
                 lib=Path("/usr/lib/python3/dist-packages"), bin=Path(FAIL2BAN_SERVER).parent,
                 conf=SYSTEM_CONF, system=True)
DEBIAN_ARCHIVE = os.environ.get("MT_DEBIAN_ARCHIVE", "http://deb.debian.org/debian")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def debian_release(suite: str, python: str, work: Path) -> Release:
    """fail2ban as Debian ``suite`` (bullseye, trixie...) ships it, unpacked into ``work``.

    apt-get downloads it with a sources list, package lists and caches of its own under
    ``work`` (the host's sources, lists, caches and preferences are neither used nor
    written); dpkg-deb unpacks it there; nothing is installed.
    """
    apt = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "parts", "preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_ARCHIVE} {suite} main\n")
    options = [f"-oDir::Etc::SourceList={apt / 'sources.list'}", f"-oDir::Etc::SourceParts={apt / 'parts'}",
               f"-oDir::Etc::Preferences={apt / 'preferences'}", f"-oDir::Etc::PreferencesParts={apt / 'preferences.d'}",
               f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
               "-oAPT::Sandbox::User=root", "-qq"]
    for argv in (["apt-get", *options, "update"], ["apt-get", *options, "download", f"fail2ban/{suite}"]):
        proc = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    (deb,) = work.glob("fail2ban_*.deb")
    tree = work / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, capture_output=True)
    lib = tree / "usr/lib/python3/dist-packages"
    (lib / "pyinotify.py").symlink_to(PYINOTIFY)
    return Release(_version(lib), python, lib, tree / "usr/bin", tree / "etc/fail2ban")


def pyenv_python(version: str) -> str | None:
    """A CPython ``version`` (e.g. "3.6") on PATH, or one pyenv built."""
    found = shutil.which(f"python{version}")
    if found and "/shims/" not in found:      # a pyenv shim runs only the selected version
        return found
    pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    return next(iter(sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python3"))), None)


def apt_state() -> dict[str, tuple[int, int]]:
    """path -> (size, mtime) of the host's apt configuration, lists and caches: a fetch of
    another release must leave them as they were."""
    state = {}
    for top in ("/etc/apt", "/var/lib/apt", "/var/cache/apt"):
        for directory, _, names in os.walk(top):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                state[path] = (info.st_size, info.st_mtime_ns)
    return state


# stock files a minimal configuration needs (the rest of /etc/fail2ban is copied too, but
# jail.d, *.local and fail2ban.d are left out so the host's own jails never start here)
_SKIP_CONF = ("jail.d", "fail2ban.d", "jail.local", "fail2ban.local")


def make_confdir(root: Path, jails: str, *, server_options: dict[str, str] | None = None,
                 extra: dict[str, str] | None = None, with_bundle_jails: bool = True,
                 bundle: Path = BUNDLE, stock: Path = SYSTEM_CONF) -> Path:
    """A private fail2ban configuration: stock base files, our bundle, a jail.local.

    ``jails`` becomes jail.local (it may enable/override our jail.d/modsec.conf);
    ``server_options`` override fail2ban.local's [Definition] (loglevel, dbpurgeage...);
    ``extra`` maps relative paths to file contents (e.g. a test filter); ``bundle``: the
    fail2ban/ directory of another tree (a benchmark comparing two versions); ``stock``: the
    stock configuration of the fail2ban release that will read it.
    """
    conf = root / "conf"
    shutil.copytree(stock, conf, ignore=lambda d, names: [n for n in names if n in _SKIP_CONF
                                                          and Path(d) == stock])
    (conf / "jail.d").mkdir()
    (conf / "fail2ban.d").mkdir()
    for sub in ("filter.d", "action.d"):
        for path in (bundle / sub).iterdir():
            if path.is_file():
                shutil.copy(path, conf / sub / path.name)
            elif path.is_dir() and path.name != "__pycache__":     # the action's package
                shutil.copytree(path, conf / sub / path.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if with_bundle_jails:
        shutil.copy(bundle / "jail.d" / "modsec.conf", conf / "jail.d" / "modsec.conf")
    (conf / "jail.local").write_text(textwrap.dedent(jails))
    options = {"loglevel": "INFO", "logtarget": f"{root}/fail2ban.log", "socket": f"{root}/fail2ban.sock",
               "pidfile": f"{root}/fail2ban.pid", "dbfile": f"{root}/fail2ban.sqlite3", "dbpurgeage": "30d",
               **(server_options or {})}
    (conf / "fail2ban.local").write_text(
        "[Definition]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()))
    for rel, text in (extra or {}).items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(textwrap.dedent(text))
    return conf


class Fail2Ban:
    """A fail2ban-server running in the foreground inside ``ns`` (we own its pid)."""

    def __init__(self, ns: Netns, root: Path, conf: Path, release: Release | None = None):
        self.ns, self.root, self.conf = ns, root, conf
        self.release = release or DEBIAN
        self.sock = root / "fail2ban.sock"
        self.log = root / "fail2ban.log"
        self.proc: subprocess.Popen | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        self.proc = self.ns.popen(
            *self.release.command("fail2ban-server"), "-f", "-x", "-c", str(self.conf),
            "-s", str(self.sock), "-p", str(self.root / "fail2ban.pid"),
            "--logtarget", str(self.log),
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
        # -c: "reload" makes the client read the configuration and send it to the server
        # (the client runs on the server's interpreter: they exchange pickles)
        proc = subprocess.run([*self.release.command("fail2ban-client"), "-c", str(self.conf),
                               "-s", str(self.sock), *args],
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

    # -- its database --------------------------------------------------------------------
    @property
    def db(self) -> Path:
        return self.root / "fail2ban.sqlite3"          # make_confdir's dbfile

    def db_current_bans(self, jail: str) -> set[str]:
        """The current bans of ``jail`` in fail2ban's database: what a restart restores."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db:
            rows = db.execute("SELECT ip FROM bips WHERE jail = ? AND (timeofban + bantime > ? OR bantime <= -1)",
                              (jail, time.time()))
            return {ip for (ip,) in rows}

    def db_forget(self, jail: str, ips: Sequence[str]) -> None:
        """Delete bans from the database of a stopped server, as writes lost in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("fail2ban-server still runs: its database is not ours to edit")
        with contextlib.closing(sqlite3.connect(self.db, timeout=30)) as db, db:
            for table in ("bans", "bips"):
                db.executemany(f"DELETE FROM {table} WHERE jail = ? AND ip = ?", [(jail, ip) for ip in ips])


@contextlib.contextmanager
def fail2ban_server(ns: Netns, jails: str, *, server_options: dict[str, str] | None = None,
                    extra: dict[str, str] | None = None,
                    with_bundle_jails: bool = True, root: Path | None = None,
                    graceful_exit: bool = False, python: str | None = None,
                    bundle: Path = BUNDLE, release: Release | None = None) -> Iterator[Fail2Ban]:
    """Start fail2ban-server in ``ns`` with ``jails`` as jail.local; stop it afterwards.

    ``jails`` becomes jail.local (after dedent) on top of the stock jail.conf and our
    jail.d/modsec.conf; ``{root}`` in it is replaced by the server's private directory,
    where an empty ``events.log`` already exists, e.g.::

        [modsec]
        enabled = true
        logpath = {root}/events.log

    On exit the server is killed (the namespace, deleted by its own context manager, takes
    the firewall objects with it; an orderly stop costs about 2 s) unless graceful_exit.
    ``python``: run Debian's fail2ban with that interpreter instead of Debian's;
    ``release``: run that fail2ban (debian_release()) with its own stock configuration.
    """
    own = root is None
    base = Path(tempfile.mkdtemp(prefix="mt-f2b-")) if own else root
    try:
        # logpath globs are expanded when the configuration is read, possibly before the
        # server opened its own log: create them (recidive jails read fail2ban.log)
        for name in {"events.log", "fail2ban.log", *re.findall(r"\{root\}/([\w.-]+\.log)\b", jails)}:
            (base / name).touch()
        jails = textwrap.dedent(jails).replace("{root}", str(base))
        if python is not None:
            release = DEBIAN.on(python, base / "python-path")
        release = release or DEBIAN
        conf = make_confdir(base, jails, server_options=server_options, extra=extra,
                            with_bundle_jails=with_bundle_jails, bundle=bundle, stock=release.conf)
        f2b = Fail2Ban(ns, base, conf, release)
        try:
            f2b.start()  # (a server that never got ready is killed too)
            yield f2b
        finally:
            if graceful_exit:
                f2b.stop()
            f2b.kill()
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)


def attack_jail(*, firewall: str, port: str | int, bantime: int, maxtime: int, ignoreip: str,
                settings: str = "") -> str:
    """jail.local text for our [modsec] jail as the attack tests run it: the event log read
    by pyinotify, three blocked requests in a minute ban, bans that grow up to ``maxtime``
    (bantime.increment), DROP at ``port`` by modsec-block's ``firewall`` backend, the
    server's own addresses in ``ignoreip``; ``settings``: more lines of the jail. ``{root}``
    stays for fail2ban_server()."""
    return "\n".join([
        "[modsec]", "enabled = true", "logpath = {root}/events.log", "backend = pyinotify",
        "maxretry = 3", "findtime = 60", f"bantime = {bantime}", "bantime.increment = true",
        f"bantime.maxtime = {maxtime}", *settings.splitlines(), "ignoreself = false",
        f"ignoreip = {ignoreip}", f"port = {port}",
        f'action = modsec-block.py[backend={firewall}, blocktype=DROP, port="{port}", '
        "protocol=tcp]", ""])


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
            # "timeout 0" in a set with timeouts is a permanent entry
            members[words[2]] = (int(words[4]) or None) if len(words) >= 5 and words[3] == "timeout" else None
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


def legacy_members(ns: Netns, chain: str, table: str = "filter") -> dict[str, int | None]:
    """address -> seconds left (None: permanent) of the per-address rules in a legacy chain.

    Raises if an address has more than one rule: duplicates are a bug.
    """
    members: dict[str, int | None] = {}
    now = time.time()
    for family in (4, 6):
        for line in legacy_rules(ns, chain, family, table):
            words = line.split()
            if "-s" not in words:
                continue
            address = words[words.index("-s") + 1].rsplit("/", 1)[0]
            if address in members:
                raise AssertionError(f"duplicate rules for {address} in {chain}")
            left = None
            if "--datestop" in words:
                stop = dt.datetime.strptime(words[words.index("--datestop") + 1], "%Y-%m-%dT%H:%M:%S")
                left = int(calendar.timegm(stop.timetuple()) - now)
            members[address] = left
    return members


def kernel_bans(ns: Netns, backend: str, name: str, table: str = "filter") -> dict[str, int | None]:
    """What the kernel blocks for our action's objects `name` (e.g. mt-modsec): address -> seconds left.

    ``table`` matters for iptables-legacy only (raw with rawdrop=true).
    """
    if backend == "nftables":
        return {**nft_set_members(ns, name, "v4"), **nft_set_members(ns, name, "v6")}
    if backend == "ipset":
        return {**ipset_members(ns, f"{name}-4"), **ipset_members(ns, f"{name}-6")}
    if backend == "iptables-legacy":
        return legacy_members(ns, name, table)
    raise ValueError(backend)


def populate_host_firewall(ns: Netns) -> None:
    """Unrelated rules a real host would have, in every flavour: ours must not disturb them."""
    for tool in ("iptables", "iptables-legacy"):
        ns.run(tool, "-w", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
        ns.run(tool, "-w", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "DROP")
    for tool in ("ip6tables", "ip6tables-legacy"):
        ns.run(tool, "-w", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    ns.run("nft", "-f", "-", input="table inet hostfw {\n set trusted { type ipv4_addr; }\n"
           " chain input { type filter hook input priority 0; policy accept; tcp dport 25 accept; }\n}\n")
    ns.run("ipset", "create", "host-allow", "hash:net")


def firewall_snapshot(ns: Netns) -> str:
    """Every firewall object in the namespace, in a stable text form (no counters/expiry)."""
    parts = [ns.out("nft", "-s", "list", "ruleset"), ns.out("ipset", "list", "-n")]
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        for table in ("filter", "raw"):
            parts.append(ns.out(tool, "-w", "-t", table, "-S"))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# packets: a listener and TCP probes inside the namespace (loopback / namespace addresses only)

_LISTENER = r"""
import socket, sys, time
socks = []
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host.strip("[]"), int(port)))
    s.listen(4096)
    socks.append(s)
print("ready", flush=True)
while True:          # accept and close at once: probes only need the handshake
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                s.accept()[0].close()
        except BlockingIOError:
            pass
    time.sleep(0.005)
"""

_PROBE = r"""
import errno, json, socket, sys, threading
timeout = float(sys.argv[1])
probes = json.loads(sys.argv[2])
results = [None] * len(probes)
def probe(i, src, dst, port):
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    try:
        s.connect((dst, port))
        results[i] = "open"
    except socket.timeout:
        results[i] = "timeout"
    except ConnectionRefusedError:
        results[i] = "refused"
    except OSError as e:
        results[i] = "error-%s" % errno.errorcode.get(e.errno, e.errno)
    finally:
        s.close()
threads = [threading.Thread(target=probe, args=(i, *p)) for i, p in enumerate(probes)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""


@contextlib.contextmanager
def listener(ns: Netns, *endpoints: str) -> Iterator[None]:
    """A TCP listener on host:port endpoints inside ns (e.g. "0.0.0.0:80", "[::]:80")."""
    proc = ns.popen(PYTHON, "-c", _LISTENER, *endpoints, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("listener did not start")
        yield
    finally:
        proc.kill()
        proc.wait(10)


def tcp_probes(ns: Netns, probes: Sequence[tuple[str, str, int]], timeout: float = 0.5) -> list[str]:
    """Connect (concurrently) from src to dst:port for each probe inside ns: 'open', 'refused'
    or 'timeout' each."""
    return json.loads(ns.out(PYTHON, "-c", _PROBE, str(timeout), json.dumps([list(p) for p in probes])))


def tcp_probe(ns: Netns, src: str, dst: str, port: int, timeout: float = 0.5) -> str:
    """Connect from src to dst:port inside ns: 'open', 'refused' or 'timeout'."""
    return tcp_probes(ns, [(src, dst, port)], timeout)[0]


def add_addresses(ns: Netns, *addresses: str) -> None:
    """Give the namespace's loopback extra addresses to connect from and to."""
    for address in addresses:
        if ":" in address:
            ns.run("ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        else:
            ns.run("ip", "addr", "add", f"{address}/32", "dev", "lo")


# ---------------------------------------------------------------------------------------
# event lines, as modsec-tools writes them

def event_line(client: str, verdict: str = "blocked", when: dt.datetime | None = None, *,
               uri: bytes = b"/", ua: bytes = b"curl/8.5.0", host: bytes = b"www.example.test",
               rules: Sequence[str] = ("942100", "949110"), unique_id: str = "Z0r5sggx7z821rWArgDktAAAABQ",
               node: str = "web1") -> str:
    """One event line for ``client``, produced by the real writer (modsec_tools.eventline)."""
    from modsec_tools.eventline import EventLine, format_line
    when = when or dt.datetime.now(dt.timezone.utc).astimezone()
    blocked = verdict == "blocked"
    return format_line(EventLine(
        when.isoformat(timespec="microseconds"), node, client, verdict, "403" if blocked else "200",
        "2" if blocked else "-", "13", "CRITICAL", list(rules), unique_id, b"GET", host, uri, ua))


def append_events(path: Path, lines: Sequence[str]) -> None:
    """Append lines the way the writer does (whole lines, one write each)."""
    with open(path, "a", encoding="ascii") as log:
        for line in lines:
            log.write(line + "\n")
            log.flush()
