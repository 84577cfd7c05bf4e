"""action.d/modsec-block.py driven by a real fail2ban-server inside a private network namespace.

Every test creates its own namespace (tests.f2b_harness.netns) and never touches the host's
firewall; traffic only flows between addresses of that namespace.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.f2b_harness import (BUNDLE, PYTHON, add_addresses, append_events, event_line, fail2ban_server,
                               firewall_snapshot, iptables_flavour, kernel_bans, legacy_rules,
                               listener, netns, populate_host_firewall, pyenv_python, tcp_probes,
                               wait_for)

pytestmark = pytest.mark.root

BACKENDS = ("nftables", "ipset", "iptables-legacy")
V4, V6 = "192.0.2.7", "2001:db8::7"
NAME = "mt-modsec"
AUTO = "nftables" if iptables_flavour() == "nf_tables" else "iptables-legacy"   # what auto picks


def jail(backend: str, *, bantime: str = "600", opts: str = "", extra: str = "") -> str:
    """jail.local enabling our shipped [modsec] jail with a chosen backend."""
    return f"""
        [modsec]
        enabled = true
        logpath = {{root}}/events.log
        bantime = {bantime}
        action = modsec-block.py[backend={backend}, port="%(port)s"{opts}]
        {extra}
        """


def bans(ns, backend, name=NAME):
    return kernel_bans(ns, backend, name)


def wait_bans(ns, backend, predicate, what, name=NAME, timeout=15):
    """Poll the kernel until predicate(bans) holds; returns those bans (possibly empty)."""
    def check():
        held = bans(ns, backend, name)
        return [held] if predicate(held) else None
    return wait_for(check, timeout=timeout, what=what)[0]


# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_ban_unban_reload_stop(backend):
    """IPv4+IPv6 bans with the ticket's bantime as kernel timeout, unban, reload, stop cleans up."""
    _ban_unban_reload_stop(backend)


@pytest.mark.parametrize("backend", ("nftables", "ipset"))
def test_action_runs_in_fail2ban_on_python_36(backend):
    """RHEL 8's fail2ban (EPEL) runs on the platform Python 3.6 and its iptables is nf_tables:
    the same fail2ban code (Debian's) on a Python 3.6 loads the action and drives both set
    backends through the whole cycle."""
    python = pyenv_python("3.6")
    if python is None:
        pytest.skip("no Python 3.6 on this machine (python3.6 on PATH or pyenv)")
    _ban_unban_reload_stop(backend, python=python)


def _ban_unban_reload_stop(backend: str, python: str | None = None) -> None:
    with netns() as ns:
        populate_host_firewall(ns)
        before = firewall_snapshot(ns)
        with fail2ban_server(ns, jail(backend, bantime="600"), python=python) as f2b:
            if python is not None:  # the server really is that interpreter
                assert os.path.realpath(f"/proc/{f2b.proc.pid}/exe") == os.path.realpath(python)
            # Debian's python3 has python3-nftables; the other interpreter has not: nft -f -
            how = "nft -f -" if python is not None else "libnftables via python3-nftables"
            if backend == "nftables":
                wait_for(lambda: f"modsec-block: nftables backend ({how})" in f2b.log_text(),
                         what="the action's start line")
            f2b.banip("modsec", V4, V6)
            held = wait_bans(ns, backend, lambda b: V4 in b and V6 in b, "both bans in the kernel")
            for address in (V4, V6):
                assert 590 <= held[address] <= 600, held      # the ticket's bantime, counted down
            assert f2b.banned("modsec") == {V4, V6}
            _assert_single_hook(ns, backend)
            # unban removes early
            f2b.unbanip("modsec", V4)
            assert set(wait_bans(ns, backend, lambda b: V4 not in b, "unban reaches the kernel")) == {V6}
            # reload (whole configuration, then the jail): bans kept, nothing added twice
            snapshot = firewall_snapshot(ns)
            f2b.client("reload")
            f2b.client("reload", "modsec")
            time.sleep(0.3)
            assert set(bans(ns, backend)) == {V6}
            assert firewall_snapshot(ns) == snapshot
            # an orderly stop removes everything the action added, and nothing else
            f2b.stop()
        assert firewall_snapshot(ns) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_escalated_bantime_reaches_the_kernel_through_prolong(backend):
    """bantime.increment: the second ban of an address gets a longer kernel timeout."""
    # 3 s, not less: iptables-legacy's --datestop has whole seconds, so a timeout read back
    # can be up to 2 s short of the one asked for; 3 s against 6 s cannot be mistaken
    with netns() as ns, fail2ban_server(ns, jail(backend, bantime="3")) as f2b:
        f2b.banip("modsec", V4)
        assert wait_bans(ns, backend, lambda b: V4 in b, "first ban")[V4] <= 3
        # fail2ban unbans after 3 s (the kernel entry would expire on its own as well)
        wait_for(lambda: V4 not in f2b.banned("modsec"), timeout=15, what="fail2ban unban")
        wait_bans(ns, backend, lambda b: V4 not in b, "kernel entry gone")
        f2b.banip("modsec", V4)
        # fail2ban's formula: 3 * 2^1 = 6 s; ban() may see 3 s first, prolong() moves it to 6 s
        held = wait_bans(ns, backend, lambda b: (b.get(V4) or 0) > 3, "escalated kernel timeout")
        assert 4 <= held[V4] <= 6
        assert "Increase Ban " + V4 in f2b.log_text()


@pytest.mark.parametrize("backend", BACKENDS)
def test_restart_and_crash_restore_bans_without_duplicates(backend):
    addresses = [f"198.51.100.{n}" for n in range(1, 41)] + [f"2001:db8:1::{n:x}" for n in range(1, 11)]
    with netns() as ns, fail2ban_server(ns, jail(backend, bantime="3600")) as f2b:
        f2b.banip("modsec", *addresses)
        wait_bans(ns, backend, lambda b: len(b) == 50, "50 bans")
        # orderly restart: stop removes everything, start + restore from the database re-adds
        f2b.restart()
        held = wait_bans(ns, backend, lambda b: len(b) == 50, "bans restored after restart")
        assert set(held) == set(addresses)
        assert all(3500 <= t <= 3600 for t in held.values()), held      # remaining, not reset
        # crash: the kernel keeps its entries; a new server must not duplicate anything
        f2b.kill()
        assert len(bans(ns, backend)) == 50
        f2b.start()
        # the kernel still holds the old entries, so wait for fail2ban's own restore to finish
        # (it re-bans from its database after start returns) before looking for duplicates
        wait_for(lambda: f2b.banned("modsec") == set(addresses), timeout=30, what="fail2ban restores its bans")
        held = wait_bans(ns, backend, lambda b: len(b) == 50, "bans after crash + start")
        assert set(held) == set(addresses)              # legacy_members raises on duplicates
        _assert_single_hook(ns, backend)


_DIRECT = r"""
import importlib.machinery, sys, time
if sys.argv[4] == "without-binding":               # python3-nftables absent: nft -f -
    sys.modules["nftables"] = None
mod = importlib.machinery.SourceFileLoader("modsec-block", sys.argv[1]).load_module()
class Jail: name = "modsec"
action = mod.Action(Jail(), "modsec-block", backend=sys.argv[2])
print(action._backend.how)
step = sys.argv[3]
if step == "start":
    action.start(); action.start()                 # twice: nothing doubled
    action.ban({"ip": "192.0.2.7", "time": time.time(), "bantime": 600})
    action.ban({"ip": "2001:db8::7", "time": time.time(), "bantime": -1})
    action.drain()
else:
    action.stop(); action.stop()                   # twice: no error, nothing left
"""

# backend, whether python3-nftables may be imported, how its transactions must reach the kernel
DIRECT_CASES = [
    ("nftables", "with-binding", "libnftables via python3-nftables"),
    ("nftables", "without-binding", "nft -f -"),
    ("ipset", "with-binding", "ipset restore"),
    ("iptables-legacy", "with-binding", "libiptc via python-iptables"),
]


@pytest.mark.parametrize("backend,binding,how", DIRECT_CASES)
def test_action_start_and_stop_are_idempotent(backend, binding, how):
    """The action module itself (no fail2ban): start twice, stop twice, in one namespace;
    nftables both through its library's binding and through the nft program."""
    action = str(BUNDLE / "action.d" / "modsec-block.py")
    with netns() as ns:
        populate_host_firewall(ns)
        before = firewall_snapshot(ns)
        assert ns.out(PYTHON, "-c", _DIRECT, action, backend, "start", binding).strip() == how
        held = bans(ns, backend)
        assert set(held) == {V4, V6} and 590 <= held[V4] <= 600 and held[V6] is None   # -1: permanent
        _assert_single_hook(ns, backend)
        ns.run(PYTHON, "-c", _DIRECT, action, backend, "stop", binding)
        assert firewall_snapshot(ns) == before


def _assert_single_hook(ns, backend):
    """Exactly one rule (per family) leads packets to our set/chain."""
    if backend == "nftables":
        text = ns.out("nft", "list", "table", "inet", NAME)
        assert text.count("saddr @v4") == 1 and text.count("saddr @v6") == 1
    elif backend == "ipset":
        for tool in ("iptables", "ip6tables"):
            assert ns.out(tool, "-S", "INPUT").count("--match-set mt-modsec-") == 1
    else:
        for family in (4, 6):
            assert sum(f"-j {NAME}" in r for r in legacy_rules(ns, "INPUT", family)) == 1


# --- packets ------------------------------------------------------------------------------

SERVER4, SERVER6 = "192.0.2.1", "2001:db8::1"
OTHER4, OTHER6 = "192.0.2.8", "2001:db8::8"


# (backend, action options, jail port, ports that must be blocked, what a blocked connect sees)
PACKET_CASES = [
    ("nftables", "", "http,https", (80, 443), "timeout"),
    ("ipset", ", blocktype=REJECT", "http,https", (80, 443), "refused"),
    ("iptables-legacy", ", blocktype=REJECT", "all", (80, 443, 8080), "refused"),
    ("nftables", ", rawdrop=true", "all", (80, 443, 8080), "timeout"),
    ("ipset", ", rawdrop=true", "http,https", (80, 443), "timeout"),
    ("iptables-legacy", ", rawdrop=true", "http,https", (80, 443), "timeout"),
]


@pytest.mark.parametrize("backend,opts,port,blocked_ports,verdict", PACKET_CASES)
def test_banned_source_is_blocked_on_the_chosen_ports_only(backend, opts, port, blocked_ports, verdict):
    raw = "rawdrop=true" in opts
    table = "raw" if raw else "filter"
    with netns() as ns:
        add_addresses(ns, SERVER4, V4, OTHER4, SERVER6, V6, OTHER6)
        with listener(ns, "0.0.0.0:80", "0.0.0.0:443", "0.0.0.0:8080", "[::]:80", "[::]:443", "[::]:8080"), \
                fail2ban_server(ns, jail(backend, opts=opts, extra=f"port = {port}")) as f2b:
            assert tcp_probes(ns, [(V4, SERVER4, 80), (V6, SERVER6, 80)]) == ["open", "open"]
            f2b.banip("modsec", V4, V6)
            wait_for(lambda: len(kernel_bans(ns, backend, NAME, table)) == 2, what="bans")
            probes = [(src, dst, p) for src, dst in ((V4, SERVER4), (V6, SERVER6)) for p in (80, 443, 8080)]
            probes += [(OTHER4, SERVER4, 80), (OTHER6, SERVER6, 80)]              # others unaffected
            for (src, dst, p), got in zip(probes, tcp_probes(ns, probes, timeout=0.4)):
                if src in (OTHER4, OTHER6) or p not in blocked_ports:
                    assert got == "open", (src, p)
                elif src == V6 and verdict == "refused":
                    # the kernel does not deliver the ICMPv6 port-unreachable that REJECT
                    # sends over loopback to the connecting socket (plain ip6tables too)
                    assert got in ("refused", "timeout"), (src, p)
                else:
                    assert got == verdict, (src, p)
            _assert_rule_placement(ns, backend, raw)
            f2b.unbanip("modsec", V4, V6)
            wait_for(lambda: not kernel_bans(ns, backend, NAME, table), what="unbans")
            assert tcp_probes(ns, [(V4, SERVER4, 80), (V6, SERVER6, 80)]) == ["open", "open"]


def _assert_rule_placement(ns, backend, raw):
    if backend == "nftables":
        chains = ns.out("nft", "list", "table", "inet", NAME)
        assert ("hook prerouting priority raw" in chains) == raw
        assert ("hook input" in chains) == (not raw)
    elif backend == "ipset":
        table, chain = ("raw", "PREROUTING") if raw else ("filter", "INPUT")
        assert "--match-set mt-modsec-4" in ns.out("iptables", "-t", table, "-S", chain)
    else:
        table, hook = ("raw", "PREROUTING") if raw else ("filter", "INPUT")
        assert any(f"-j {NAME}" in r for r in legacy_rules(ns, hook, 4, table=table))


# --- longer than the kernel allows -------------------------------------------------------------

def test_bans_longer_than_the_kernel_timeout_cap_are_refreshed():
    """maxtimeout caps each kernel timeout (ipset: 2147483 s); the action re-writes long bans."""
    with netns() as ns, fail2ban_server(ns, jail("nftables", bantime="5", opts=", maxtimeout=2")) as f2b:
        f2b.banip("modsec", V4)
        assert wait_bans(ns, "nftables", lambda b: V4 in b, "ban")[V4] <= 2
        time.sleep(2.8)                                    # past the first kernel timeout
        assert V4 in bans(ns, "nftables"), "refreshed before expiry"
        wait_for(lambda: V4 not in f2b.banned("modsec"), timeout=10, what="fail2ban unban")
        wait_bans(ns, "nftables", lambda b: V4 not in b, "gone with the ban", timeout=5)


# --- the event log, end to end inside fail2ban ------------------------------------------------

def test_event_log_lines_ban_the_client_and_never_a_forged_address():
    with netns() as ns, fail2ban_server(ns, jail("auto")) as f2b:
        events = f2b.root / "events.log"
        forged = "uri=/?x client=1.2.3.4 verdict=blocked".encode()
        lines = [event_line(V4, uri=b"/x\n" + event_line("1.2.3.4").encode(), ua=forged) for _ in range(9)]
        lines += [event_line(V6, uri=b"/?" + forged) for _ in range(10)]      # 10th: ban
        lines += [event_line("198.51.100.9", verdict="detected") for _ in range(12)]
        lines += [event_line("198.51.100.10", verdict="passed") for _ in range(12)]
        append_events(events, lines)
        held = wait_bans(ns, AUTO, lambda b: V6 in b, "ban from the event log")
        assert set(held) == {V6}                           # 9 for V4: not yet
        append_events(events, [event_line(V4)])
        held = wait_bans(ns, AUTO, lambda b: V4 in b, "10th blocked request")
        time.sleep(0.3)
        assert set(bans(ns, AUTO)) == {V4, V6}
        assert f2b.banned("modsec") == {V4, V6}
        assert "1.2.3.4" not in f2b.log_text()


def test_auto_picks_the_hosts_flavour():
    with netns() as ns, fail2ban_server(ns, jail("auto")) as f2b:
        # logged by the action's start(), in fail2ban's actions thread after the jail started
        wait_for(lambda: f"modsec-block: {AUTO} backend" in f2b.log_text(), what="the action's start line")


def test_detect_backend_reads_iptables_version(tmp_path):
    """`iptables -V` decides: legacy -> python-iptables, nf_tables -> nftables (no kernel needed)."""
    results = {}
    for flavour in ("legacy", "nf_tables"):
        bindir = tmp_path / flavour
        bindir.mkdir()
        fake = bindir / "iptables"
        fake.write_text(f"#!/bin/sh\necho 'iptables v1.8.9 ({flavour})'\n")
        fake.chmod(0o755)
        code = ("import importlib.machinery as m; "
                f"mod = m.SourceFileLoader('modsec-block', '{BUNDLE}/action.d/modsec-block.py').load_module(); "
                "print(mod.detect_backend())")
        results[flavour] = subprocess.run(
            ["/usr/bin/python3", "-c", code], capture_output=True, text=True, check=True,
            env={"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"}).stdout.strip()
    assert results == {"legacy": "iptables-legacy", "nf_tables": "nftables"}


# --- recidive ------------------------------------------------------------------------------------

def test_recidive_bans_repeat_offenders_of_our_jails_on_all_ports():
    """Three bans by [modsec] -> [modsec-recidive] bans on all ports for a week.  (That other
    jails' and its own bans do not count is checked on fail2ban's log lines by the filter's
    sample, tests/test_f2b_filter.py.)"""
    jails = jail("nftables", bantime="600") + """
        [modsec-recidive]
        enabled = true
        logpath = {root}/fail2ban.log
        action = modsec-block.py[backend=nftables, port=all]
        """
    with netns() as ns, fail2ban_server(ns, jails) as f2b:
        for _ in range(3):                                 # three bans in the modsec jail
            f2b.banip("modsec", V4)
            f2b.unbanip("modsec", V4)
        held = wait_bans(ns, "nftables", lambda b: V4 in b, "recidive ban", name="mt-modsec-recidive")
        assert set(held) == {V4} and held[V4] > 6 * 86400            # a week
        rules = ns.out("nft", "-s", "list", "chain", "inet", "mt-modsec-recidive", "filter")
        assert "ip saddr @v4 counter drop" in rules and "dport" not in rules      # all ports
        assert f2b.banned("modsec-recidive") == {V4}
