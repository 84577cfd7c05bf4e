"""The first hour on a server, live (issue 17): install.sh and ``config check`` run for real
(no --root) on this machine's own Debian packages (apache2, libapache2-mod-security2,
modsecurity-crs, fail2ban), inside a private host: a network namespace, and a mount
namespace where /etc, /opt, /usr and /var are overlays (tests/realparts/host.py). The
host's own /etc/apache2, /etc/modsecurity and /etc/fail2ban are compared before and after,
and nothing started here outlives a test.

The starting point is Debian 12 as apt leaves it, plus the one step Debian's README asks
for: modsecurity.conf-recommended copied as modsecurity.conf (SecRuleEngine DetectionOnly,
a Serial audit log); fail2ban's own sshd jail is enabled and, as on Debian 12, there is no
/var/log/auth.log (the journal only).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.realparts import NetNS
from tests.realparts.fixtures import require
from tests.realparts.host import PrivateHost

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "install.sh"
WATCHED = ("/etc/apache2", "/etc/modsecurity", "/etc/fail2ban")
STOCK = ("cp /etc/modsecurity/modsecurity.conf-recommended /etc/modsecurity/modsecurity.conf"
         " && rm -f /var/log/auth.log")


def snapshot(tops: tuple[str, ...] = WATCHED) -> dict[str, str]:
    """Every file under ``tops``: its sha256 (links: their target)."""
    out: dict[str, str] = {}
    for top in tops:
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    out[path] = "-> " + os.readlink(path)
                else:
                    with open(path, "rb") as stream:
                        out[path] = hashlib.sha256(stream.read()).hexdigest()
    return out


@pytest.fixture
def host(tmp_path: Path) -> Iterator[PrivateHost]:
    """A private copy of this machine in stock Debian 12 state (see the module's doc)."""
    before = snapshot()
    with require(NetNS) as netns, require(lambda: PrivateHost(tmp_path / "host", netns)) as box:
        box.netns = netns
        box.run(STOCK)
        yield box
    assert snapshot() == before, "the host's own configuration changed"


def todo_items(output: str) -> list[tuple[str, list[str]]]:
    from tests.test_deploy_install import todo_items as parse
    return parse(output)


def install(host: PrivateHost, *args: str) -> "subprocess.CompletedProcess[str]":
    return host.run([str(INSTALL), "--no-deps", *args], check=False, timeout=600)


def test_config_check_says_detection_only_never_bans(host: PrivateHost) -> None:
    """Our jails enabled, the engine in DetectionOnly: ``config check`` fails and names
    both fixes. (It said "0 error(s)" and nothing was ever banned.)"""
    for sub in ("filter.d", "jail.d", "action.d"):
        host.run(f"find {REPO}/fail2ban/{sub} -maxdepth 1 -type f -name 'modsec*' "
                 f"-exec cp {{}} /etc/fail2ban/{sub}/ ';'")
    host.run("printf '[modsec]\\nenabled = true\\n' > /etc/fail2ban/jail.d/modsec.local")
    host.run("mkdir -p /var/log/modsec_audit")
    check = host.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                      "from modsec_tools.cli import main; sys.exit(main(sys.argv[2:]))",
                      str(REPO), "config", "check", "--db", "none"], check=False)
    errors = [line for line in check.stdout.splitlines() if line.startswith("error: ")]
    assert check.returncode == 1, check.stdout + check.stderr
    assert any("SecRuleEngine DetectionOnly, /etc/modsecurity/modsecurity.conf:" in line
               and "set SecRuleEngine On in /etc/modsecurity/modsecurity.conf" in line
               and "set mode = detected under [modsec]" in line for line in errors), check.stdout


def test_configure_modsecurity_is_checked_with_apache2ctl_and_taken_back(host: PrivateHost) -> None:
    """A drop-in Apache refuses (its index in a directory that does not exist: ModSecurity
    cannot open it) is taken back: Apache's configuration is as before, and the run fails."""
    host.run("mkdir -p /etc/modsec-tools && printf '[modsec-tools]\\nindex_log = "
             "/var/log/nowhere/modsec_index.log\\n' > /etc/modsec-tools/modsec-tools.local")
    done = install(host, "--configure-modsecurity")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Failed to open the audit log file: /var/log/nowhere/modsec_index.log" in done.stderr
    assert ("/etc/modsecurity/zz-modsec-tools.conf taken back (apache2ctl -t fails with it "
            "(above)): Apache's configuration is as it was") in done.stderr
    assert not host.path("/etc/modsecurity/zz-modsec-tools.conf").exists()
    assert host.run("apache2ctl -t", check=False).returncode == 0
    # with a path Apache can open, the same run installs it and Apache accepts it
    host.run("rm /etc/modsec-tools/modsec-tools.local")
    done = install(host, "--configure-modsecurity")
    assert re.search(r"^  ok\s+apache2ctl -t: Apache accepts /etc/modsecurity/zz-modsec-tools.conf$",
                     done.stdout, re.M), done.stdout + done.stderr
    assert "SecAuditLogType Concurrent" in host.path("/etc/modsecurity/zz-modsec-tools.conf").read_text()


# -- fail2ban's own jails ----------------------------------------------------------------------
def test_a_foreign_jail_that_cannot_start_is_a_warning_with_its_fix(host: PrivateHost) -> None:
    """Debian 12's sshd jail has no log file: fail2ban's configuration test fails, but not
    for our jails. install.sh validates ours on their own, exits 0, names the jail and
    prints its fix; the fix makes fail2ban's test pass. (It exited 1.)"""
    done = install(host)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"WARNING +fail2ban's jail \"sshd\" is not a modsec-tools jail, and it "
                     r"cannot start", done.stderr), done.stderr
    assert re.search(r"^  ok +fail2ban-client -t: the modsec-tools jails \(modsec,modsec-recidive\)",
                     done.stdout, re.M), done.stdout
    (fix,) = [cmds for text, cmds in todo_items(done.stdout) if text.startswith("fail2ban's sshd")]
    assert fix == ["printf '[sshd]\\nbackend = systemd\\n' > /etc/fail2ban/jail.d/sshd.local"]
    assert host.run("fail2ban-client -t", check=False).returncode != 0
    host.run(fix[0])
    assert host.run("fail2ban-client -t", check=False).returncode == 0


def test_an_error_in_our_own_jail_still_fails(host: PrivateHost) -> None:
    """Our jail's log file missing (a typo in the .local): that is ours, exit 1."""
    host.run("printf '[modsec]\\nenabled = true\\nlogpath = /var/log/nowhere/events.log\\n'"
             " > /etc/fail2ban/jail.d/modsec.local")
    done = install(host)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("ERROR      fail2ban-client -t fails for the modsec-tools jails, filters or action "
            "(above)") in done.stderr
    assert "is not a modsec-tools jail" not in done.stderr


# -- the whole first hour ------------------------------------------------------------------------
SERVER, ATTACKER, BYSTANDER = "192.0.2.1", "192.0.2.66", "192.0.2.77"   # none of them ignored


def _request(host: PrivateHost, source: str, path: str = "/", timeout: float = 15) -> int | None:
    from tests.realparts.apache import http_status
    return http_status((SERVER, 80), path, host="www.example.test", source_ip=source,
                       timeout=timeout, socket_factory=host.netns.socket)


def _wait(ready, timeout: float) -> bool:
    from tests.realparts._util import wait_until
    return wait_until(ready, timeout, interval=0.2)


def test_stock_debian_12_to_the_first_ban(host: PrivateHost) -> None:
    """Issue 17, "done when": ``install.sh --configure-modsecurity`` on stock Debian 12, then
    exactly the commands it printed (SecRuleEngine On, the Apache restart, the sshd jail's
    fix, starting fail2ban and the watcher: no other step), then an attack from an address
    no jail ignores is banned, and a bystander is still served."""
    for address in (SERVER, ATTACKER, BYSTANDER):
        host.netns.add_addr(f"{address}/32")
    done = install(host, "--configure-modsecurity")
    assert done.returncode == 0, done.stdout + done.stderr
    items = todo_items(done.stdout)
    texts = [text for text, _ in items]
    assert "SecRuleEngine DetectionOnly" in texts[0] and "mode = detected" in texts[0], texts
    assert texts[1].startswith("Restart Apache") and texts[2].startswith("fail2ban's sshd jail")
    commands = [command for _, cmds in items for command in cmds]
    assert [c.split()[0] for c in commands] == ["sed", "apache2ctl", "printf", "fail2ban-client",
                                               "modsec-tools"], commands
    for command in commands:
        host.run(command, timeout=120)

    assert _wait(lambda: _request(host, BYSTANDER) == 200, 30), "Apache does not answer"
    assert _wait(lambda: host.path("/var/lib/modsec-tools/status.json").exists(), 30), \
        host.path("/var/log/modsec-tools/watch.log").read_text(errors="replace")
    status = host.run("fail2ban-client status modsec").stdout
    assert "Currently banned:\t0" in status, status
    # jail modsec: 10 blocked requests within 60 s
    assert [_request(host, ATTACKER, "/?id=1' or '1'='1") for _ in range(10)] == [403] * 10
    banned = lambda: ATTACKER in host.run("fail2ban-client status modsec").stdout  # noqa: E731
    assert _wait(banned, 60), (host.run("fail2ban-client status modsec").stdout,
                               host.path("/var/log/modsec-tools/events.log").read_text())
    assert _wait(lambda: _request(host, ATTACKER, timeout=1) is None, 10), "the ban is not enforced"
    assert _request(host, BYSTANDER) == 200
    events = host.path("/var/log/modsec-tools/events.log").read_text()
    assert events.count(f"client={ATTACKER} verdict=blocked") == 10, events
    check = host.run("modsec-tools config check", check=False)
    assert "0 error(s)" in check.stdout, check.stdout


def test_deps_install_logrotate_where_it_is_missing(host: PrivateHost, tmp_path: Path) -> None:
    """install.sh installs /etc/logrotate.d/modsec-tools: without logrotate (minimal images,
    containers) nothing would ever rotate the event log. dpkg-query says logrotate is
    missing; apt-get records its call (and refuses the install, which ends the run)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "apt-calls"
    (stubs / "dpkg-query").write_text(
        '#!/bin/sh\nfor a; do case $a in logrotate|modsec-tools) exit 1;; esac; done\n'
        'printf "install ok installed"\n')
    (stubs / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                                   '[ "$1" = update ] || [ "$1" = -qq ] && exit 0\nexit 1\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    done = host.run([str(INSTALL)], check=False, env={"PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert "apt-get install failed" in done.stderr, done.stdout + done.stderr
    installs = [line.split() for line in calls.read_text().splitlines() if "install" in line.split()]
    assert installs and installs[0][-1:] == ["logrotate"], calls.read_text()
