"""The fast ban path (modsec_blocker/fastban.py) on every supported fail2ban.

For each release (Debian 12's installed 1.0.2; Debian 11's 0.11.2 on Debian 11's Python 3.9
and on RHEL 8's 3.6; Debian 13's 1.1.0), fetched from Debian's archive at test time
(f2b_harness.debian_release: nothing of fail2ban is in this repository):

* the fail2ban code the shim relies on is the code it was written against (pinned hashes:
  a fail2ban that changed under it fails here, before it fails a server), and the shim
  finds everything it needs on a real Jail;
* in a real fail2ban-server, the ban of our jail is made by the shim's thread, as soon as
  the filter queued the ticket, while fail2ban stays the authority (status, ban list,
  database, bantime.increment, unban, restore), and a stock jail beside ours is untouched:
  its bans still come from its own actions thread.  (Speed is the bench's: bench/e2e.py.)

Where the shim cannot attach (a fail2ban that lacks what it needs, here Debian's 1.0.2 with
`Actions.__checkBan` renamed), the jail bans at fail2ban's own pace and its log says so once.
The waker's own logic (hook, reference counts, idle, detach) is checked against fakes.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time

import pytest

from tests.f2b_harness import (BUNDLE, DEBIAN, Release, apt_state, blocker_package, debian_release,
                               event_line, append_events, fail2ban_server, kernel_bans, netns,
                               pyenv_python, wait_for)

blocker_package()
from modsec_blocker import fastban  # noqa: E402

# id -> (Debian suite or None for the installed one, interpreter)
RELEASES = {
    "0.11.2-py3.9": ("bullseye", "3.9"),       # Debian 11
    "0.11.2-py3.6": ("bullseye", "3.6"),       # RHEL 8 (EPEL): the platform Python 3.6
    "1.0.2": (None, None),                     # Debian 12, installed
    "1.1.0": ("trixie", None),                 # Debian 13 (on this machine's python3)
}

# sha256 of the code of what the shim relies on, per fail2ban version (inspect.getsource
# without comment-only and blank lines).
# Jail.putFailTicket: only queues (we wrap it); Jail.hasFailTickets: the queue's state;
# Actions.__checkBan: the ban check we run; Actions.addBannedIP: fail2ban's own proof that
# the ban check runs outside the actions thread (banip, from the command thread);
# Actions.run: the loop ours runs beside; FilterPyinotify.run: the loop whose waits the filter
# hook ends (a True from check_events goes to read_events, which returns when pyinotify's
# threshold is not reached).  A new hash means: read the new code, then pin it.
_SAME = {"Jail.putFailTicket": "8a880a1d71ea1ea6", "Jail.hasFailTickets": "346d93f1f4abdbac",
         "Actions.addBannedIP": "983c2339f45a4706",
         # pyinotify 0.9.6 (Debian 11 to 13; the tests run every release with Debian 12's)
         "Notifier.check_events": "2cceeaa4809bb17d", "Notifier.read_events": "234ed088cc57c237"}
PINNED = {
    # 0.11.2 differs from 1.0.2 only in names (__banManager, getIP) and the consistency check;
    # its filter loop reads events after any True wait (1.0.2 skips the read for a dict)
    "0.11.2": {**_SAME, "Actions.__checkBan": "da7a8da8e275854e", "Actions.run": "904790058949d897",
               "FilterPyinotify.run": "235cd9b0335a35c7"},
    "1.0.2": {**_SAME, "Actions.__checkBan": "30f7216a09ad3b2d", "Actions.run": "18fb1cc92f8f11e0",
              "FilterPyinotify.run": "b935c3779f5a671c"},
    "1.1.0": {**_SAME, "Actions.__checkBan": "30f7216a09ad3b2d", "Actions.run": "18fb1cc92f8f11e0",
              "FilterPyinotify.run": "b935c3779f5a671c"},
}


@pytest.fixture(scope="session")
def releases(tmp_path_factory) -> dict[str, Release]:
    """Every release of RELEASES, fetched once a session; the host's apt state untouched."""
    before = apt_state()
    fetched: dict[str, Release] = {}
    made: dict[str, Release] = {}
    for rid, (suite, version) in RELEASES.items():
        python = pyenv_python(version) if version else None
        if version and python is None:
            continue                                   # the test of that id skips, saying why
        if suite is None:
            made[rid] = DEBIAN
            continue
        if suite not in fetched:
            fetched[suite] = debian_release(suite, python or DEBIAN.python, tmp_path_factory.mktemp(suite))
        release = fetched[suite]
        made[rid] = Release(release.version, python or DEBIAN.python, release.lib, release.bin, release.conf)
    assert apt_state() == before, "fetching fail2ban releases changed the host's apt state"
    return made


def _release(releases: dict[str, Release], rid: str) -> Release:
    if rid not in releases:
        pytest.skip(f"no Python {RELEASES[rid][1]} on this machine (python{RELEASES[rid][1]} on PATH or pyenv)")
    return releases[rid]


# -- the code the shim relies on, per release --------------------------------------------------

_INSPECT = r"""
import hashlib, inspect, json, sys
sys.path.insert(0, sys.argv[1])
from fail2ban.version import version
from fail2ban.server.jail import Jail
from fail2ban.server.actions import Actions
from modsec_blocker import fastban
from fail2ban.server.filterpyinotify import FilterPyinotify
import pyinotify
parts = {"Jail.putFailTicket": Jail.putFailTicket, "Jail.hasFailTickets": Jail.hasFailTickets.fget,
         "Actions.__checkBan": Actions._Actions__checkBan, "Actions.addBannedIP": Actions.addBannedIP,
         "Actions.run": Actions.run, "FilterPyinotify.run": FilterPyinotify.run,
         "Notifier.check_events": pyinotify.Notifier.check_events,
         "Notifier.read_events": pyinotify.Notifier.read_events}
jail = Jail("probe", backend="polling")
def code(function):          # without comment-only and blank lines (where Pythons differ)
    lines = [line.rstrip() for line in inspect.getsource(function).splitlines()]
    return "\n".join(line for line in lines if line.strip() and not line.strip().startswith("#"))
print(json.dumps({"version": version, "unsupported": fastban.unsupported(jail),
                  "sha256": {name: hashlib.sha256(code(f).encode()).hexdigest()[:16]
                             for name, f in parts.items()}}))
"""


@pytest.mark.parametrize("rid", RELEASES)
def test_the_fail2ban_code_the_shim_relies_on_is_unchanged(releases, rid):
    release = _release(releases, rid)
    proc = subprocess.run([*release.interpreter(), "-c", _INSPECT, str(BUNDLE / "action.d")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["version"] == release.version
    assert got["unsupported"] is None
    assert got["sha256"] == PINNED[release.version], (
        f"fail2ban {release.version} changed under modsec_blocker/fastban.py: read the new code, "
        f"then pin it: {json.dumps(got['sha256'], indent=1)}")


# -- in a real fail2ban-server ----------------------------------------------------------------

# A test action that writes down which thread made each ban (fail2ban names its actions thread
# f2b/a.<jail>; the shim's is f2b/w.<jail>).
_BAN_THREAD = """
import threading
from fail2ban.server.actions import ActionBase

class Action(ActionBase):
    def __init__(self, jail, name, path=None):
        super(Action, self).__init__(jail, name)
        self.path = path
    def start(self):
        pass
    def stop(self):
        pass
    def ban(self, aInfo):
        with open(self.path, "a") as out:
            out.write("%s %s\\n" % (aInfo["ip"], threading.current_thread().name))
    def unban(self, aInfo):
        pass
"""
_STOCK_FILTER = """
[Definition]
failregex = ^stock-probe: failure from <HOST>$
datepattern = {NONE}
"""
JAILS = """
[modsec]
enabled = true
logpath = {root}/events.log
maxretry = 2
findtime = 60
bantime = 5
bantime.increment = true
bantime.multipliers = 1 100
action = modsec-block.py[backend=nftables, port="%(port)s"%(fastban)s]
         ban-thread.py[path="{root}/bans-modsec"]

[stock]
enabled = true
filter = stock-probe
logpath = {root}/stock.log
backend = pyinotify
maxretry = 2
findtime = 60
bantime = 600
action = ban-thread.py[path="{root}/bans-stock"]
"""
EXTRA = {"action.d/ban-thread.py": _BAN_THREAD, "filter.d/stock-probe.conf": _STOCK_FILTER}
A, B, C = "192.0.2.10", "192.0.2.20", "192.0.2.21"


def _jails(fastban: str = "") -> str:
    return JAILS.replace("%(fastban)s", fastban)


def _bans(f2b, jail: str) -> list[tuple[str, str]]:
    path = f2b.root / f"bans-{jail}"
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []


def _offend(f2b, address: str) -> None:
    """maxretry (2) blocked event lines for address."""
    append_events(f2b.root / "events.log", [event_line(address) for _ in range(2)])


def _stock_offend(f2b, address: str) -> None:
    with open(f2b.root / "stock.log", "a") as log:
        log.write(f"stock-probe: failure from {address}\n" * 2)


def _lines(f2b, text: str) -> list[str]:
    return [line for line in f2b.log_text().splitlines() if text in line]


def _kernel(ns) -> dict:
    return kernel_bans(ns, "nftables", "mt-modsec")


@pytest.mark.root
@pytest.mark.parametrize("rid", RELEASES)
def test_the_fast_path_bans_and_fail2ban_stays_the_authority(releases, rid):
    release = _release(releases, rid)
    with netns() as ns, fail2ban_server(ns, _jails(), extra=EXTRA, release=release) as f2b:
        wait_for(lambda: _lines(f2b, "its pyinotify filter reads a new line at once"), what="the filter hook")
        assert len(_lines(f2b, "jail 'modsec': fast ban path attached")) == 1
        assert not _lines(f2b, "modsec-block: jail 'stock'"), "the stock jail is not touched"
        # our jail: the ban is made by the shim's thread, the kernel holds it
        _offend(f2b, A)
        wait_for(lambda: A in _kernel(ns), what="A in the kernel")
        wait_for(lambda: _bans(f2b, "modsec"), what="A's ban recorded")
        assert _bans(f2b, "modsec") == [(A, "f2b/w.modsec")]
        # the stock jail beside it: banned by its own actions thread, as before
        _stock_offend(f2b, B)
        wait_for(lambda: _bans(f2b, "stock"), what="B's ban in the stock jail")
        assert _bans(f2b, "stock") == [(B, "f2b/a.stock")]
        # fail2ban is the authority: its status, ban list and database hold the ban
        assert "192.0.2.10" in f2b.client("status", "modsec")
        assert f2b.client("get", "modsec", "banip").split() == [A]
        wait_for(lambda: A in f2b.db_current_bans("modsec"), what="A in fail2ban's database")
        # the ban ends (fail2ban's unban), a second offence: bantime.increment (fail2ban's
        # observer: 5 s x 100, then prolong)
        wait_for(lambda: _lines(f2b, f"[modsec] Unban {A}"), what="fail2ban's unban")
        wait_for(lambda: A not in _kernel(ns), what="the unban in the kernel")
        _offend(f2b, A)
        wait_for(lambda: (_kernel(ns).get(A) or 0) > 5, what="the escalated ban in the kernel")
        assert _bans(f2b, "modsec") == [(A, "f2b/w.modsec")] * 2
        assert _lines(f2b, f"[modsec] Increase Ban {A}")
        # restart: fail2ban restores the ban from its database; its unban command works
        f2b.restart()
        wait_for(lambda: _lines(f2b, f"[modsec] Restore Ban {A}"), what="the restore")
        wait_for(lambda: (_kernel(ns).get(A) or 0) > 5, what="the restored ban in the kernel")
        f2b.unbanip("modsec", A)
        wait_for(lambda: A not in _kernel(ns), what="the unban command in the kernel")
        # stopping our jail detaches the shim; the stock jail goes on as before
        f2b.client("stop", "modsec")
        wait_for(lambda: _lines(f2b, "jail 'modsec': fast ban path detached"), what="the detach line")
        _stock_offend(f2b, C)
        wait_for(lambda: len(_bans(f2b, "stock")) == 3, what="C's ban in the stock jail")
        assert _bans(f2b, "stock")[-1] == (C, "f2b/a.stock")
        assert len(_lines(f2b, "fast ban path attached")) == 2          # one per start, ours only


@pytest.fixture
def changed_fail2ban(tmp_path) -> Release:
    """Debian's fail2ban with Actions.__checkBan renamed: a fail2ban that changed under us."""
    lib = tmp_path / "lib"
    shutil.copytree(DEBIAN.lib / "fail2ban", lib / "fail2ban", ignore=shutil.ignore_patterns("__pycache__"))
    actions = lib / "fail2ban" / "server" / "actions.py"
    actions.write_text(actions.read_text().replace("__checkBan", "__checkBanTickets"))
    (lib / "pyinotify.py").symlink_to(DEBIAN.lib / "pyinotify.py")
    return Release(DEBIAN.version, DEBIAN.python, lib, DEBIAN.bin, DEBIAN.conf)


@pytest.mark.root
def test_where_the_shim_cannot_attach_the_jail_bans_at_fail2bans_pace_and_says_so_once(changed_fail2ban):
    with netns() as ns, fail2ban_server(ns, _jails(), extra=EXTRA, release=changed_fail2ban) as f2b:
        wait_for(lambda: _lines(f2b, "no fast ban path"), what="the warning")
        _offend(f2b, A)
        wait_for(lambda: A in _kernel(ns), what="A in the kernel")
        wait_for(lambda: _bans(f2b, "modsec"), what="A's ban recorded")
        assert _bans(f2b, "modsec") == [(A, "f2b/a.modsec")]              # fail2ban's own thread
        f2b.client("reload", "--restart", "modsec")                       # the action starts again
        wait_for(lambda: len(_lines(f2b, "modsec-block: nftables backend")) == 2, what="the second start")
        (warning,) = _lines(f2b, "no fast ban path")
        assert "WARNING" in warning and "its Actions has no __checkBan" in warning
        assert "at fail2ban's own pace" in warning and "fast ban path attached" not in f2b.log_text()


@pytest.mark.root
def test_the_filter_thread_bans_itself_when_no_action_of_the_jail_blocks():
    """Every action says `fastban_inline` (ours does; the recorder here too): the ban check
    runs in the filter's thread, with no hand-over."""
    extra = {**EXTRA, "action.d/ban-thread.py": _BAN_THREAD.replace(
        "class Action(ActionBase):\n", "class Action(ActionBase):\n    fastban_inline = True\n")}
    with netns() as ns, fail2ban_server(ns, _jails(), extra=extra) as f2b:
        wait_for(lambda: _lines(f2b, "its pyinotify filter reads a new line at once"), what="the attach")
        _offend(f2b, A)
        wait_for(lambda: A in _kernel(ns), what="A in the kernel")
        wait_for(lambda: _bans(f2b, "modsec"), what="A's ban recorded")
        assert _bans(f2b, "modsec") == [(A, "f2b/f.modsec")]


@pytest.mark.root
def test_fastban_false_leaves_the_jail_to_fail2ban():
    with netns() as ns, fail2ban_server(ns, _jails(", fastban=false"), extra=EXTRA) as f2b:
        wait_for(lambda: _lines(f2b, "modsec-block: nftables backend"), what="the action's start")
        _offend(f2b, A)
        wait_for(lambda: A in _kernel(ns), what="A in the kernel")
        wait_for(lambda: _bans(f2b, "modsec"), what="A's ban recorded")
        assert _bans(f2b, "modsec") == [(A, "f2b/a.modsec")]
        assert not _lines(f2b, "fast ban path")


# -- the waker against fakes (no fail2ban) ------------------------------------------------------

class FakeActions:
    """What fastban uses of fail2ban's Actions: its flags and its ban check."""

    def __init__(self, jail) -> None:
        self.jail, self.active, self.idle = jail, True, False
        self.banned: list[tuple[str, str]] = []

    def _Actions__checkBan(self, tickets=None):
        ticket = self.jail.getFailTicket()
        if ticket:
            self.banned.append((ticket, threading.current_thread().name))
        return int(bool(ticket))


class FakeJail:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.queue: list[str] = []
        self.actions = FakeActions(self)

    def putFailTicket(self, ticket):
        self.queue.append(ticket)

    def getFailTicket(self):
        return self.queue.pop(0) if self.queue else False

    @property
    def hasFailTickets(self):
        return bool(self.queue)


@pytest.fixture
def log():
    logger = logging.getLogger("fastban-test")
    logger.setLevel(logging.DEBUG)
    return logger


def test_the_hook_wakes_the_ban_check_and_detach_gives_the_jail_back(log):
    jail = FakeJail()
    waker = fastban.attach(jail, log)
    assert jail.__dict__["putFailTicket"] is waker.hook
    jail.putFailTicket("192.0.2.1")
    wait_for(lambda: jail.actions.banned, timeout=5, what="the woken ban check")
    assert jail.actions.banned == [("192.0.2.1", "f2b/w.fake")]
    waker.detach()
    assert "putFailTicket" not in jail.__dict__ and not waker.thread.is_alive()
    jail.putFailTicket("192.0.2.2")                        # the jail's own method again
    time.sleep(0.1)
    assert jail.queue == ["192.0.2.2"] and len(jail.actions.banned) == 1


def test_an_idle_or_stopped_jail_keeps_its_tickets_for_fail2ban(log):
    jail = FakeJail()
    waker = fastban.attach(jail, log)
    try:
        jail.actions.idle = True
        jail.putFailTicket("192.0.2.3")
        jail.actions.idle, jail.actions.active = False, False
        jail.putFailTicket("192.0.2.4")
        time.sleep(0.2)
        assert jail.queue == ["192.0.2.3", "192.0.2.4"] and not jail.actions.banned
    finally:
        waker.detach()


def test_actions_of_one_jail_share_one_waker(log):
    jail = FakeJail()
    first, second = fastban.attach(jail, log), fastban.attach(jail, log)
    assert first is second and first.users == 2
    first.detach()
    assert jail.__dict__["putFailTicket"] is first.hook and first.thread.is_alive()
    second.detach()
    assert "putFailTicket" not in jail.__dict__ and not first.thread.is_alive()


@pytest.mark.parametrize("breakage,reason", [
    (lambda jail: delattr(FakeActions, "_Actions__checkBan"), "its Actions has no __checkBan"),
    (lambda jail: setattr(FakeActions, "_Actions__checkBan", lambda self, tickets, more: 0),
     "Actions.__checkBan takes ['tickets', 'more'], not (tickets=None)"),
    (lambda jail: setattr(jail, "putFailTicket", None), "its Jail has no putFailTicket(ticket)"),
    (lambda jail: delattr(jail.actions, "idle"), "its Actions thread has no active/idle flags"),
])
def test_a_fail2ban_without_what_the_shim_needs_is_left_alone_and_said_so_once(breakage, reason, monkeypatch):
    monkeypatch.setattr(FakeActions, "_Actions__checkBan", FakeActions._Actions__checkBan)
    jail = FakeJail(f"changed-{len(reason)}")
    breakage(jail)
    records: list[logging.LogRecord] = []
    logger = logging.getLogger(f"fastban-test-{jail.name}")
    logger.addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r)})())
    assert fastban.unsupported(jail) == reason
    assert fastban.attach(jail, logger) is None and fastban.attach(jail, logger) is None
    assert [r.levelname for r in records] == ["WARNING"] and reason in records[0].getMessage()
    assert "putFailTicket" not in jail.__dict__ or jail.putFailTicket is None


class FakeNotifier:
    def __init__(self) -> None:
        self._threshold = 0
        self.events = False
        self.waits: list = []

    def check_events(self, timeout=None):
        self.waits.append(timeout)
        return self.events


def test_the_filter_hook_ends_a_timed_out_wait_instead_of_a_sleep():
    notifier = FakeNotifier()
    wake = fastban.FilterWake(notifier)
    assert notifier.check_events(500) is True              # timed out: the filter goes round
    assert notifier.check_events(0) is False               # a missing log: fail2ban's own pace
    notifier.events = 1
    assert notifier.check_events(500) == 1
    assert notifier.waits == [500, 0, 500] and notifier._threshold == 1    # no blocking empty read
    wake.remove()
    assert "check_events" not in notifier.__dict__ and notifier._threshold == 0
