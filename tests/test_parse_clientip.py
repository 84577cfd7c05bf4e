"""Which address is the client: trusted proxies, X-Forwarded-For, X-Real-IP."""
from __future__ import annotations

from pathlib import Path

import pytest

from modsec_tools.clientip import normalize_ip, parse_networks, resolve_client
from modsec_tools.entry import parse_entry
from modsec_tools.event import Event
from modsec_tools.sources import RawEntry, iter_index_log
from tests import corpus
from tests.test_parse_support import SECTION_A, dumps, json_entry, native

PROXIES = parse_networks(["127.0.2.0/24", "2001:db8:ffff::/48"])


def resolve(peer: str | None, headers: list[tuple[str, str]],
            trusted=PROXIES) -> str | None:
    event = Event(unique_id="x", timestamp=None, client_ip=peer, peer_ip=peer, peer_port=1,
                  local_ip=None, local_port=None, source="t", request_headers=headers)
    return resolve_client(event, trusted)


def xff(*values: str) -> list[tuple[str, str]]:
    return [("X-Forwarded-For", value) for value in values]


def test_forwarded_headers_are_ignored_without_trusted_proxies() -> None:
    headers = xff("203.0.113.9") + [("X-Real-IP", "198.51.100.1")]
    assert resolve("127.0.2.1", headers, trusted=()) == "127.0.2.1"


def test_forwarded_headers_are_ignored_when_the_peer_is_not_trusted() -> None:
    headers = xff("203.0.113.9") + [("X-Real-IP", "198.51.100.1")]
    assert resolve("127.0.1.219", headers) == "127.0.1.219"
    assert resolve("2001:db8:fffe::1", headers) == "2001:db8:fffe::1"


def test_single_hop_from_a_trusted_proxy() -> None:
    assert resolve("127.0.2.4", xff("203.0.113.111")) == "203.0.113.111"


def test_right_most_untrusted_hop_wins() -> None:
    # the client made up the first two; our proxy appended what it saw
    assert resolve("127.0.2.1", xff("1.1.1.1, 6.6.6.6, 203.0.113.151, 192.0.2.234")) == \
        "192.0.2.234"
    # a chain of our own proxies is skipped
    assert resolve("127.0.2.2", xff("6.6.6.6, 192.0.2.63, 127.0.2.5, 127.0.2.9")) == \
        "192.0.2.63"


def test_several_forwarded_for_headers_form_one_chain_in_order() -> None:
    headers = [("X-Forwarded-For", "6.6.6.6"), ("Host", "x"),
               ("x-forwarded-for", "203.0.113.7, 127.0.2.8")]
    assert resolve("127.0.2.1", headers) == "203.0.113.7"


def test_all_hops_trusted_falls_back_to_x_real_ip_then_the_peer() -> None:
    assert resolve("127.0.2.1", xff("127.0.2.2, 127.0.2.3") +
                   [("X-Real-IP", "192.0.2.27")]) == "192.0.2.27"
    assert resolve("127.0.2.1", [("x-real-ip", " 192.0.2.28 ")]) == "192.0.2.28"
    assert resolve("127.0.2.1", xff("127.0.2.2")) == "127.0.2.1"
    assert resolve("127.0.2.1", []) == "127.0.2.1"
    assert resolve("127.0.2.1", [("X-Real-IP", "garbage")]) == "127.0.2.1"


def test_x_real_ip_is_not_used_when_a_hop_is_untrusted() -> None:
    assert resolve("127.0.2.1", xff("203.0.113.5") + [("X-Real-IP", "6.6.6.6")]) == \
        "203.0.113.5"


@pytest.mark.parametrize("chain", [
    "203.0.113.5, garbage, 127.0.2.3", "203.0.113.5, , 127.0.2.3", "unknown",
    "203.0.113.5:4711", "203.0.113.5 6.6.6.6", "1.2.3.4.5", "999.1.1.1", "",
    "203.0.113.5,127.0.2.3;for=6.6.6.6", "_hidden",
])
def test_garbage_in_the_trusted_part_of_the_chain_stops_at_the_peer(chain: str) -> None:
    assert resolve("127.0.2.1", xff(chain) + [("X-Real-IP", "6.6.6.6")]) == "127.0.2.1"


def test_garbage_beyond_the_first_untrusted_hop_does_not_matter() -> None:
    assert resolve("127.0.2.1", xff("garbage, 203.0.113.5, 127.0.2.3")) == "203.0.113.5"


@pytest.mark.parametrize("hop,expected", [
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"), ("[2001:db8::1]", "2001:db8::1"),
    ("::ffff:203.0.113.9", "203.0.113.9"), ("::FFFF:cb00:7109", "203.0.113.9"),
    (" 203.0.113.9 ", "203.0.113.9"), ("2001:db8:ffff::1, 2001:db8::2", "2001:db8::2"),
])
def test_forwarded_addresses_are_normalized(hop: str, expected: str) -> None:
    assert resolve("127.0.2.1", xff(hop)) == expected


def test_ipv6_and_ipv4_mapped_peers() -> None:
    assert resolve("2001:db8:ffff::10", xff("192.0.2.1")) == "192.0.2.1"
    assert resolve("::ffff:127.0.2.1", xff("192.0.2.1")) == "192.0.2.1"  # mapped → trusted
    assert resolve("2001:DB8::1", []) == "2001:db8::1"
    assert resolve("::ffff:127.0.1.5", xff("192.0.2.1")) == "127.0.1.5"
    assert resolve("127.0.2.1", xff("2001:db8:ffff::2, 2001:db8:ffff::3")) == "127.0.2.1"


def test_invalid_peer_is_none() -> None:
    assert resolve("not-an-ip", xff("192.0.2.1")) is None
    assert resolve(None, []) is None


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


def test_parse_entry_applies_trusted_proxies_to_native_and_json() -> None:
    a = SECTION_A.replace("127.0.1.103", "127.0.2.3")
    head = "GET / HTTP/1.1\nHost: x\nX-Forwarded-For: 6.6.6.6, 192.0.2.140\n"
    assert parse_entry(native(a=a, b=head), "n", PROXIES).client_ip == "192.0.2.140"
    assert parse_entry(native(a=a, b=head), "n").client_ip == "127.0.2.3"
    document = json_entry(transaction={"remote_address": "127.0.2.3"},
                          request={"headers": {"X-Forwarded-For": "192.0.2.141"}})
    event = parse_entry(dumps(document), "j", PROXIES)
    assert event.client_ip == "192.0.2.141" and event.peer_ip == "127.0.2.3"


@pytest.mark.parametrize("run", ["r6_detectiononly_concurrent", "r7_pl2_concurrent_noremoteip"])
def test_corpus_proxied_clients_are_found(run: str, tmp_path_factory) -> None:
    """Runs without mod_remoteip: section A is the proxy and section B keeps what it sent.
    The client that sent the request (sent.actor) is what we must find."""
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    storage = corpus.extract_storage(run, scratch)
    truth = corpus.truth(run)
    checked = proxied = spoofers = 0
    for item in iter_index_log(str(corpus.run_dir(run) / "audit" / "index.log"), str(storage)):
        assert isinstance(item, RawEntry)
        event = parse_entry(item.data, item.source, parse_networks(["127.0.2.0/24"]))
        actor = (truth[event.unique_id]["sent"] or {}).get("actor") or ""
        if actor.startswith("proxied:"):
            assert event.client_ip == normalize_ip(actor.split(":", 1)[1]), event.unique_id
            proxied += 1
        else:
            assert event.client_ip == event.peer_ip, (event.unique_id, actor)
            spoofers += actor == "direct-spoofing-xff"
        checked += 1
    assert checked == corpus.run_info(run)["audit_entries"]
    assert proxied >= 10 and spoofers >= 3
