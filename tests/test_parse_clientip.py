"""Which address is the client, and whether it may be banned: trusted proxies, proxy_header."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modsec_tools.audit.clientip import (Client, Proxies, normalize_ip, parse_header_name,
                                   parse_networks, resolve_client)
from modsec_tools.config import ConfigError, build
from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.event import Event
from modsec_tools.eventline import format_event, parse_line
from modsec_tools.tree.sources import RawEntry, iter_index_log
from tests import corpus
from tests.f2b_harness import filter_spec, run_fail2ban_regex
from tests.test_parse_support import REPO_ROOT, SECTION_A, dumps, json_entry, native

TRUSTED = tuple(parse_networks(["127.0.2.0/24", "2001:db8:ffff::/48"]))
PROXIES = Proxies(TRUSTED)
REAL_IP = Proxies(TRUSTED, "X-Real-IP")


def resolve(peer: str | None, headers: list[tuple[str, str]],
            proxies: Proxies = PROXIES) -> Client:
    event = Event(unique_id="x", timestamp=None, client_ip=peer, peer_ip=peer, peer_port=1,
                  local_ip=None, local_port=None, source="t", request_headers=headers)
    return resolve_client(event, proxies)


def client(peer: str | None, headers: list[tuple[str, str]],
           proxies: Proxies = PROXIES) -> str | None:
    """The bannable client, or None."""
    found = resolve(peer, headers, proxies)
    return None if found.unbannable else found.address


def xff(*values: str) -> list[tuple[str, str]]:
    return [("X-Forwarded-For", value) for value in values]


def test_forwarded_headers_are_ignored_without_trusted_proxies() -> None:
    headers = xff("203.0.113.9") + [("X-Real-IP", "198.51.100.1")]
    assert resolve("127.0.2.1", headers, Proxies()) == Client("127.0.2.1")
    assert resolve("127.0.2.1", headers, Proxies((), "X-Real-IP")) == Client("127.0.2.1")


def test_forwarded_headers_are_ignored_when_the_peer_is_not_trusted() -> None:
    headers = xff("203.0.113.9") + [("X-Real-IP", "198.51.100.1")]
    assert client("127.0.1.219", headers) == "127.0.1.219"
    assert client("2001:db8:fffe::1", headers) == "2001:db8:fffe::1"
    assert client("127.0.1.219", headers, REAL_IP) == "127.0.1.219"


def test_single_hop_from_a_trusted_proxy() -> None:
    assert resolve("127.0.2.4", xff("203.0.113.111")) == Client("203.0.113.111")


def test_right_most_untrusted_hop_wins() -> None:
    # the client made up the first two; our proxy appended what it saw
    assert client("127.0.2.1", xff("1.1.1.1, 6.6.6.6, 203.0.113.151, 192.0.2.234")) == \
        "192.0.2.234"
    # a chain of our own proxies is skipped
    assert client("127.0.2.2", xff("6.6.6.6, 192.0.2.63, 127.0.2.5, 127.0.2.9")) == \
        "192.0.2.63"


def test_several_forwarded_for_headers_form_one_chain_in_order() -> None:
    headers = [("X-Forwarded-For", "6.6.6.6"), ("Host", "x"),
               ("x-forwarded-for", "203.0.113.7, 127.0.2.8")]
    assert client("127.0.2.1", headers) == "203.0.113.7"


# -- a trusted proxy never becomes the bannable client -----------------------------------------

GARBAGE = ["garbage", "unknown", "203.0.113.5, garbage, 127.0.2.3", "203.0.113.5, , 127.0.2.3",
           "203.0.113.5 6.6.6.6", "1.2.3.4.5", "999.1.1.1", "203.0.113.5,127.0.2.3;for=6.6.6.6",
           "_hidden", "203.0.113.5:65536", "203.0.113.5:", "[2001:db8::5]:x"]


@pytest.mark.parametrize("headers,reason", [
    ([], "proxy-no-header"), (xff(""), "proxy-no-header"), (xff(" , "), "proxy-no-header"),
    (xff("127.0.2.2"), "proxy-only"),
    (xff("127.0.2.2, 127.0.2.3", "2001:db8:ffff::3"), "proxy-only"),
] + [(xff(chain), "proxy-bad-header") for chain in GARBAGE])
def test_a_trusted_proxy_whose_header_names_no_client_is_unbannable(headers, reason) -> None:
    """Today's main made the proxy itself the client here: banning it locks out everybody."""
    for peer in ("127.0.2.1", "2001:db8:ffff::1"):
        assert resolve(peer, headers) == Client(None, reason)


def test_a_client_supplied_x_real_ip_is_never_a_fallback() -> None:
    """The header is one setting: X-Real-IP is not read when X-Forwarded-For is the one."""
    headers = xff("127.0.2.2, 127.0.2.3") + [("X-Real-IP", "192.0.2.27")]
    assert resolve("127.0.2.1", headers) == Client(None, "proxy-only")
    assert resolve("127.0.2.1", [("x-real-ip", "192.0.2.28")]) == \
        Client(None, "proxy-no-header")


def test_proxy_header_x_real_ip_reads_only_x_real_ip() -> None:
    assert resolve("127.0.2.1", [("x-real-ip", " 192.0.2.28 ")], REAL_IP) == \
        Client("192.0.2.28")
    assert resolve("127.0.2.1", xff("192.0.2.29"), REAL_IP) == Client(None, "proxy-no-header")
    assert resolve("127.0.2.1", xff("192.0.2.29") + [("X-Real-IP", "192.0.2.30")],
                   REAL_IP) == Client("192.0.2.30")
    assert resolve("127.0.2.1", [("X-Real-IP", "garbage")], REAL_IP) == \
        Client(None, "proxy-bad-header")


def test_garbage_beyond_the_first_untrusted_hop_does_not_matter() -> None:
    assert client("127.0.2.1", xff("garbage, 203.0.113.5, 127.0.2.3")) == "203.0.113.5"


@pytest.mark.parametrize("hop,expected", [
    ("203.0.113.5:4711", "203.0.113.5"), ("[2001:db8::5]:4711", "2001:db8::5"),
    ("203.0.113.5:0", "203.0.113.5"), ("[::ffff:203.0.113.9]:80", "203.0.113.9"),
    ("127.0.2.3:443, 203.0.113.6:1", "203.0.113.6"),
])
def test_ip_port_hops_are_read_without_the_port(hop: str, expected: str) -> None:
    """Azure Application Gateway writes ip:port; mod_remoteip refuses it and keeps the proxy
    as the client, which is the one outcome we must not have."""
    assert resolve("127.0.2.1", xff(hop)) == Client(expected)


def test_a_trusted_hop_with_a_port_is_still_trusted() -> None:
    assert client("127.0.2.1", xff("203.0.113.6:1, 127.0.2.3:443")) == "203.0.113.6"


@pytest.mark.parametrize("hop,expected", [
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("[2001:db8::1]", "2001:db8::1"),
    ("::ffff:203.0.113.9", "203.0.113.9"), ("::FFFF:cb00:7109", "203.0.113.9"),
    (" 203.0.113.9 ", "203.0.113.9"), ("2001:db8:ffff::1, 2001:db8::2", "2001:db8::2"),
])
def test_forwarded_addresses_are_normalized(hop: str, expected: str) -> None:
    assert client("127.0.2.1", xff(hop)) == expected


# -- addresses no ban can mean ---------------------------------------------------------------------

NEVER = [("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
         ("::ffff:0.0.0.0", "unspecified"), ("255.255.255.255", "broadcast"),
         ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
         ("ff02::1", "multicast"), ("ff05::1:3", "multicast")]
FORWARDED_NEVER = [("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
                   ("::ffff:127.0.0.1", "loopback"), ("169.254.1.1", "link-local"),
                   ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local")]


@pytest.mark.parametrize("address,reason", NEVER + FORWARDED_NEVER)
def test_a_forwarded_address_no_ban_can_mean_is_unbannable(address: str, reason: str) -> None:
    found = resolve("127.0.2.1", xff(address))
    assert found.unbannable == reason
    assert found.address == normalize_ip(address)
    assert resolve("127.0.2.1", [("X-Real-IP", address)], REAL_IP).unbannable == reason


@pytest.mark.parametrize("address,reason", NEVER + [("fe80::1%eth0", "scoped"),
                                                    ("2001:db8::1%2", "scoped")])
def test_section_a_address_no_ban_can_mean_is_unbannable(address: str, reason: str) -> None:
    """A forged entry (the storage tree is web-writable) or mod_remoteip passing it on."""
    assert resolve(address, xff("203.0.113.1")) == Client(normalize_ip(address), reason)


@pytest.mark.parametrize("address", ["127.0.0.2", "::1", "169.254.1.1", "fe80::1", "10.1.2.3"])
def test_section_a_loopback_and_link_local_stay_bannable(address: str) -> None:
    """Our own kernel saw that peer: the jail's ignoreip is where loopback is exempted."""
    assert resolve(address, []) == Client(address)


def test_private_forwarded_addresses_are_clients() -> None:
    assert client("127.0.2.1", xff("10.20.30.40")) == "10.20.30.40"
    assert client("127.0.2.1", xff("fd00::7")) == "fd00::7"


def test_invalid_peer_is_unbannable_without_an_address() -> None:
    assert resolve("not-an-ip", xff("192.0.2.1")) == Client(None, "no-address")
    assert resolve(None, []) == Client(None, "no-address")


def test_normalize_ip() -> None:
    assert normalize_ip("0:0:0:0:0:0:0:1") == "::1"
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_ip("010.0.0.1") is None  # leading zeros are ambiguous: refused
    assert normalize_ip("") is None and normalize_ip(None) is None


def test_parse_networks() -> None:
    assert [str(n) for n in parse_networks(["127.0.2.7/24", " ::1 ", "", "10.0.0.1"])] == \
        ["127.0.2.0/24", "::1/128", "10.0.0.1/32"]
    with pytest.raises(ValueError, match="'nope'"):
        parse_networks(["127.0.0.1", "nope"])


# -- the proxy_header setting ------------------------------------------------------------------

@pytest.mark.parametrize("text", ["X-Forwarded-For", "X-Real-IP", " x-real-ip ",
                                  "CF-Connecting-IP", "True-Client-IP"])
def test_proxy_header_takes_one_header_name(text: str) -> None:
    assert parse_header_name(text) == text.strip()


@pytest.mark.parametrize("text", ["", "X-Forwarded-For, X-Real-IP", "X-Forwarded-For X-Real-IP",
                                  "X-Real-IP:", "Forwarded", "forwarded"])
def test_proxy_header_refuses_anything_but_one_usable_name(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^proxy_header \(command line\): "):
        build({}, {"proxy_header": text})


def test_settings_carry_the_proxies() -> None:
    assert build({}, {}).proxies == Proxies((), "X-Forwarded-For")
    settings = build({"trusted_proxies": "127.0.2.0/24", "proxy_header": "X-Real-IP"}, {})
    assert settings.proxies == Proxies(tuple(parse_networks(["127.0.2.0/24"])), "X-Real-IP")


# -- through parse_entry, the event line and the real filter ---------------------------------------

def test_parse_entry_applies_the_proxies_to_native_and_json() -> None:
    a = SECTION_A.replace("127.0.1.103", "127.0.2.3")
    head = "GET / HTTP/1.1\nHost: x\nX-Forwarded-For: 6.6.6.6, 192.0.2.140\nX-Real-IP: 6.6.6.7\n"
    assert parse_entry(native(a=a, b=head), "n", PROXIES).client_ip == "192.0.2.140"
    assert parse_entry(native(a=a, b=head), "n", REAL_IP).client_ip == "6.6.6.7"
    assert parse_entry(native(a=a, b=head), "n").client_ip == "127.0.2.3"
    document = json_entry(transaction={"remote_address": "127.0.2.3"},
                          request={"headers": {"X-Forwarded-For": "192.0.2.141"}})
    event = parse_entry(dumps(document), "j", PROXIES)
    assert event.client_ip == "192.0.2.141" and event.peer_ip == "127.0.2.3"
    event = parse_entry(dumps(document), "j", REAL_IP)
    assert (event.client_ip, event.client_unbannable) == (None, "proxy-no-header")


def _proxied_entries() -> list[tuple[bytes, str | None]]:
    """(entry, its bannable client or None), all sent by the trusted proxy 127.0.2.3."""
    a = SECTION_A.replace("127.0.1.103", "127.0.2.3")
    cases = [("192.0.2.140", "192.0.2.140"), ("203.0.113.5:4711", "203.0.113.5"),
             (None, None), ("", None), ("garbage", None), ("127.0.2.9", None),
             ("0.0.0.0", None), ("255.255.255.255", None), ("ff02::1", None),
             ("127.0.0.1", None), ("fe80::1", None)]
    entries = []
    for n, (forwarded, bannable) in enumerate(cases):
        head = f"GET /{n} HTTP/1.1\nHost: x\nX-Real-IP: 192.0.2.99\n"
        if forwarded is not None:
            head += f"X-Forwarded-For: {forwarded}\n"
        entries.append((native(a=a.replace("aWryTEST", f"aWry{n:04d}"), b=head), bannable))
    return entries


def test_the_filter_bans_only_real_clients_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """The real fail2ban-regex over the writer's lines: never the proxy, never 0.0.0.0 & co."""
    entries = _proxied_entries()
    lines = [format_event(parse_entry(data, "p", PROXIES), "web1", "blocked")
             for data, _ in entries]
    for line, (_, bannable) in zip(lines, entries):
        parsed = parse_line(line)
        assert parsed.client == (bannable or "-")
        assert (parsed.noban is None) == (bannable is not None)
    log = tmp_path / "events.log"
    log.write_text("".join(line + "\n" for line in lines))
    found = run_fail2ban_regex(log, filter_spec({"mode": "aggressive"}))
    assert sorted(m.ip for m in found) == sorted(b for _, b in entries if b)


# -- the real parts: Apache + ModSecurity behind a proxy, `modsec-tools ingest`, fail2ban-regex

PROXY, SERVER = "127.0.0.2", "127.0.0.1"
ATTACK = "/?id=1' or '1'='1"
#: X-Forwarded-For the proxy sends → the bannable client, or the reason there is none
SENT = [("203.0.113.50", "203.0.113.50"), ("6.6.6.6, 203.0.113.51", "203.0.113.51"),
        ("203.0.113.52:4711", "203.0.113.52"), ("[2001:db8::53]:4711", "2001:db8::53"),
        (None, "proxy-no-header"), ("", "proxy-no-header"), ("garbage", "proxy-bad-header"),
        ("127.0.0.2", "proxy-only"), ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"), ("ff02::1", "multicast"), ("127.0.0.1", "loopback")]


def _modsec_tools(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modsec_tools.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.root
def test_apache_behind_a_trusted_proxy_bans_clients_never_the_proxy(tmp_path: Path) -> None:
    from tests.realparts import ApacheModSec, NetNS
    config = tmp_path / "modsec-tools.conf"
    with NetNS() as ns, ApacheModSec(tmp_path, netns=ns, listen=[(SERVER, 80)]) as web:
        for n, (forwarded, _) in enumerate(SENT):
            headers = {"X-Real-IP": "192.0.2.99"}   # a client's: X-Real-IP is never read
            if forwarded is not None:
                headers["X-Forwarded-For"] = forwarded
            assert web.request(f"{ATTACK}&n={n}", source_ip=PROXY, headers=headers) == 403
        web.wait_index(len(SENT))
        web.stop()
        config.write_text(f"[modsec-tools]\nstorage_dir = {web.storage_dir}\n"
                          f"archive = {tmp_path / 'archive.log'}\n"
                          f"event_log = {tmp_path / 'events.log'}\ndb = none\n"
                          f"state_dir = {tmp_path / 'state'}\n"
                          f"quarantine_dir = {tmp_path / 'quarantine'}\nnode = web1\n"
                          f"settle_seconds = 0\ntrusted_proxies = {PROXY}\n")
        done = _modsec_tools("ingest", "--config", str(config))
        assert done.returncode == 0, done.stderr
    lines = (tmp_path / "events.log").read_text().splitlines()
    by_uri = {parse_line(line).uri.split(b"&n=")[1]: parse_line(line) for line in lines}
    assert len(by_uri) == len(SENT)
    for n, (_, expected) in enumerate(SENT):
        line = by_uri[str(n).encode()]
        if line.noban is None:
            assert line.client == expected, (n, line)
        else:
            assert (line.client, line.noban) == ("-", expected), (n, line)
            assert line.addr != "192.0.2.99"
    found = run_fail2ban_regex(tmp_path / "events.log", filter_spec({"mode": "aggressive"}))
    assert sorted(m.ip for m in found) == sorted(
        e for _, e in SENT[:4])   # the four real clients, never the proxy
    # `parse` reads the same setting: with X-Real-IP the forged value is believed instead
    config.write_text(config.read_text() + "proxy_header = X-Real-IP\n")
    done = _modsec_tools("parse", "--config", str(config), "--format", "line",
                         str(tmp_path / "archive.log"))
    assert done.returncode == 0, done.stderr
    assert {parse_line(line).client for line in done.stdout.splitlines()} == {"192.0.2.99"}


@pytest.mark.parametrize("header,sent_key", [("X-Forwarded-For", "xff_sent"),
                                              ("X-Real-IP", "x_real_ip_sent")])
@pytest.mark.parametrize("run", corpus.runs("r6_detectiononly_concurrent",
                                             "r7_pl2_concurrent_noremoteip"))
def test_corpus_proxied_clients_are_found(run: str, header: str, sent_key: str,
                                          tmp_path_factory) -> None:
    """Runs without mod_remoteip: section A is the proxy and section B keeps what it sent.
    The client that sent the request (sent.actor) is what we must find when its proxy set
    the configured header; when it set the other one, nobody is bannable (never the proxy)."""
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    storage = corpus.extract_storage(run, scratch)
    truth = corpus.truth(run)
    proxies = Proxies(tuple(parse_networks(["127.0.2.0/24"])), header)
    checked = proxied = spoofers = 0
    for item in iter_index_log(str(corpus.run_dir(run) / "audit" / "index.log"), str(storage)):
        assert isinstance(item, RawEntry)
        event = parse_entry(item.data, item.source, proxies)
        sent = truth[event.unique_id]["sent"] or {}
        actor = sent.get("actor") or ""
        if actor.startswith("proxied:") and sent.get(sent_key) is not None:
            assert event.client_ip == normalize_ip(actor.split(":", 1)[1]), event.unique_id
            assert event.client_unbannable is None
            proxied += 1
        elif actor.startswith("proxied:") or actor == "monitor":  # monitor: a trusted address
            assert (event.client_ip, event.client_unbannable) == (None, "proxy-no-header")
        else:
            assert event.client_ip == event.peer_ip, (event.unique_id, actor)
            assert event.client_unbannable is None
            spoofers += actor == "direct-spoofing-xff"
        checked += 1
    assert checked == corpus.run_info(run)["audit_entries"]
    assert proxied >= (10 if header == "X-Forwarded-For" else 1) and spoofers >= 3
