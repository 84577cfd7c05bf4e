"""Attack → ban, end to end, with every real part, inside a private network namespace.

Apache 2.4 + mod_security2 + CRS (Debian) serve 127.0.0.1:8080 and [fd00::1]:8080 in the
namespace and write a Concurrent storage tree; `modsec-tools watch` turns its entries into
the event log; a real fail2ban-server in the namespace runs our filter, jail and action.
An attacker at 198.18.0.2 (and fd00::2) is banned within seconds and visible in
`fail2ban-client status modsec`; the kernel set holds it; its next connection fails while
198.18.0.3 (fd00::3) is still served; after the ban it is served again; the second offence
gets a longer ban (bantime.increment).  (Not loopback addresses: the action never blocks
those.)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import f2b_harness as f2b
from tests.realparts import ApacheModSec, NetNS

pytestmark = pytest.mark.root

PORT = 8080
BANTIME = 6          # first ban; the second one is 12 s (bantime.factor 1: ×2 per ban)
REPO = Path(__file__).resolve().parent.parent


def _jail(backend: str) -> str:
    return f2b.attack_jail(firewall=backend, port=PORT, bantime=BANTIME, maxtime=60,
                           ignoreip="127.0.0.1 198.18.0.1 fd00::1", settings="bantime.factor = 1")


def _start_watch(tmp: Path, storage: Path, event_log: Path) -> subprocess.Popen:
    config = tmp / "modsec-tools.conf"
    config.write_text(
        "[modsec-tools]\n"
        f"storage_dir = {storage}\n"
        f"archive = {tmp / 'archive.log'}\n"
        f"event_log = {event_log}\n"
        f"db = sqlite:///{tmp / 'events.db'}\n"
        f"state_dir = {tmp / 'state'}\n"
        f"quarantine_dir = {tmp / 'quarantine'}\n"
        "node = e2e\n")
    log = open(tmp / "watch.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "modsec_tools.cli", "watch", "--foreground",
                             "--config", str(config)], cwd=REPO, stdout=log, stderr=log)
    assert f2b.wait_for(lambda: (tmp / "state" / "status.json").exists(), timeout=30), \
        (tmp / "watch.log").read_text()
    return proc


def _attack(web: ApacheModSec, source: str, server: str, count: int) -> list[int | None]:
    return [web.request("/?id=1' or '1'='1", source_ip=source, addr=(server, PORT),
                        host="www.example.test", timeout=2) for _ in range(count)]


def _benign(web: ApacheModSec, source: str, server: str, timeout: float = 2) -> int | None:
    return web.request("/", source_ip=source, addr=(server, PORT), host="www.example.test",
                       timeout=timeout)


def _ban_cycle(web, server: f2b.Fail2Ban, ns, backend: str, attacker: str, bystander: str,
               target: str) -> None:
    assert _benign(web, attacker, target) == 200
    started = time.monotonic()
    # maxretry 3: the third failure bans. Exactly three requests, all refused (a failure is
    # logged after its response is sent); a fourth could be refused or dropped, and its
    # failure, logged after the ban, would stay counted into the second offence.
    assert _attack(web, attacker, target, 3) == [403] * 3
    assert f2b.wait_for(lambda: attacker in server.banned("modsec"), timeout=10), server.tail()
    detected = time.monotonic() - started
    assert f2b.wait_for(lambda: attacker in f2b.kernel_bans(ns, backend, "mt-modsec"),
                        timeout=5)
    first_timeout = f2b.kernel_bans(ns, backend, "mt-modsec").get(attacker)
    assert first_timeout is not None and first_timeout <= BANTIME
    status = server.client("status", "modsec")
    assert attacker in status, status
    # banned: its connections are dropped; the bystander is still served
    assert _benign(web, attacker, target, timeout=0.5) is None
    assert _benign(web, bystander, target) == 200
    # the ban ends (kernel timeout and fail2ban's unban): served again
    assert f2b.wait_for(lambda: _benign(web, attacker, target) == 200, timeout=BANTIME + 15)
    # a second offence: a longer ban, in fail2ban and in the kernel. fail2ban's observer
    # (bantime.increment) counts a failure of an address banned once before as two, so
    # the second failure bans.
    assert _attack(web, attacker, target, 2) == [403] * 2
    assert f2b.wait_for(lambda: attacker in server.banned("modsec"), timeout=10), server.tail()

    def escalated() -> bool:
        left = f2b.kernel_bans(ns, backend, "mt-modsec").get(attacker)
        return left is not None and left > BANTIME
    assert f2b.wait_for(escalated, timeout=10), f2b.kernel_bans(ns, backend, "mt-modsec")
    assert _benign(web, attacker, target, timeout=0.5) is None
    print(f"{backend} {attacker}: banned {detected:.2f} s after the first attack request")


@pytest.mark.parametrize("backend", ["nftables", "ipset", "iptables-legacy"])
def test_attack_is_banned_and_escalates(backend: str, tmp_path: Path) -> None:
    with NetNS() as netns:
        for address in ("198.18.0.1/32", "198.18.0.2/32", "198.18.0.3/32",
                        "fd00::1/128", "fd00::2/128", "fd00::3/128"):
            netns.add_addr(address)
        ns = f2b.Netns(netns.name)
        web = ApacheModSec(tmp_path / "web", netns=netns,
                           listen=[("198.18.0.1", PORT), ("fd00::1", PORT)])
        with web, f2b.fail2ban_server(ns, _jail(backend)) as server:
            watch = _start_watch(tmp_path, web.storage_dir, server.root / "events.log")
            try:
                _ban_cycle(web, server, ns, backend, "198.18.0.2", "198.18.0.3", "198.18.0.1")
                _ban_cycle(web, server, ns, backend, "fd00::2", "fd00::3", "fd00::1")
                lines = (server.root / "events.log").read_text().splitlines()
                assert any("client=198.18.0.2 verdict=blocked" in line for line in lines)
                assert any("client=fd00::2 verdict=blocked" in line for line in lines)
            finally:
                watch.send_signal(signal.SIGTERM)
                assert watch.wait(30) == 0, (tmp_path / "watch.log").read_text()
        assert not (tmp_path / "quarantine").exists() or not os.listdir(tmp_path / "quarantine")
