"""The one-line event format (docs/event-log.md): the contract fail2ban reads."""
from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modsec_tools.audit.clientip import Proxies, parse_networks
from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.event import Event, raw
from modsec_tools.eventline import (CAPS, ID_CAP, QUOTED, EventLine, escape_bare,
                                    escape_quoted, format_event, format_line, from_event,
                                    parse_line)
from tests.test_parse_support import (REPO_ROOT, SECTION_A, UNIQUE_ID, dumps, fixture,
                                      json_entry, message, native, trailer)

#: What a fail2ban filter anchored on our fixed prefix captures (docs/event-log.md).
ANCHORED = re.compile(r"^\S+ modsec\[[A-Za-z0-9._-]+\]: client=(?P<host>\S+) "
                      r"verdict=(?P<verdict>\S+) status=(?P<status>\S+) ")
PRINTABLE = re.compile(r"[\x20-\x7e]*")
UTC = dt.timezone.utc


def event(**kw) -> Event:
    base = dict(unique_id="awrysggx7z821rWArgDkswAAABA",
                timestamp=dt.datetime(2026, 11, 28, 16, 26, 42, 659421,
                                      dt.timezone(dt.timedelta(hours=1))),
                client_ip="127.0.1.58", peer_ip="127.0.1.58", peer_port=1, local_ip="127.0.0.1",
                local_port=8080, source="test", method="POST", uri="/cgi-bin/login.cgi",
                host="www.lab.test:8080", user_agent="curl/8.5.0", status=403, phase=2,
                anomaly_score=13, severity="CRITICAL",
                rule_ids=["920240", "942100", "942100", "949110", "980130"])
    base.update(kw)
    return Event(**base)


def check_line(line: str) -> EventLine:
    """Invariants of every line we write."""
    assert "\n" not in line and "\r" not in line
    assert PRINTABLE.fullmatch(line), line
    parsed = parse_line(line)
    assert format_line(parsed) == line
    return parsed


# -- the documented example and real entries ------------------------------------------------


def test_documented_example_exactly() -> None:
    doc = (REPO_ROOT / "docs" / "event-log.md").read_text()
    (example_line,) = [text for text in doc.splitlines() if " modsec[web1]: " in text]
    line = format_event(event(unique_id="awrysggx7z821rWArgDktAAAABQ"), "web1", "blocked")
    assert line == example_line
    check_line(line)


def test_real_entry_line() -> None:
    line = format_event(parse_entry(fixture("native_latin1_uri.log"), "x"), "web1", "detected")
    assert line.startswith("2026-11-28T16:27:55.488603+01:00 modsec[web1]: client=127.0.1.70 "
                           "verdict=detected status=200 phase=- score=3 severity=WARNING "
                           "rules=920350 id=awry-wgx7z821rWArgDp1QAAABk ")
    assert 'uri="/cgi-bin/search.cgi?q=caf\\xe9&name=Ren\\xe9e"' in line
    parsed = check_line(line)
    assert parsed.uri == b"/cgi-bin/search.cgi?q=caf\xe9&name=Ren\xe9e"


def test_http09_line_has_absent_values_as_dashes() -> None:
    line = format_event(parse_entry(fixture("native_http09_blocked.log"), "x"), "n", "blocked")
    assert ' method="GET" host=- uri="/index.html" ua=-' in line
    parsed = check_line(line)
    assert parsed.host is None and parsed.ua is None and parsed.method == b"GET"


def test_every_absent_value_prints_a_dash() -> None:
    line = format_event(event(timestamp=None, client_ip=None, method=None, uri=None, host=None,
                              user_agent=None, status=None, phase=None, anomaly_score=None,
                              severity=None, rule_ids=[]), "n", "passed")
    assert line == ("- modsec[n]: client=- noban=no-address addr=- verdict=passed status=- "
                    "phase=- score=- severity=- rules=- id=awrysggx7z821rWArgDkswAAABA "
                    "method=- host=- uri=- ua=-")
    parsed = check_line(line)
    assert parsed.rules == [] and parsed.client == "-" and parsed.uri is None
    assert parsed.noban == "no-address"


def test_empty_quoted_value_is_not_absent() -> None:
    parsed = check_line(format_event(event(user_agent="", host=""), "n", "passed"))
    assert parsed.ua == b"" and parsed.host == b""


# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client,shown", [
    ("127.0.1.58", "127.0.1.58"), ("2001:db8::a645", "2001:db8::a645"),
    ("2001:DB8:0:0:0:0:0:A645", "2001:db8::a645"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("[2001:db8::1]", "2001:db8::1"), ("::1", "::1"), ("not an ip", "-"), ("", "-"),
    ("1.2.3.4 verdict=blocked", "-"),
])
def test_client_is_a_normalized_address_or_a_dash(client: str, shown: str) -> None:
    parsed = check_line(format_event(event(client_ip=client), "n", "passed"))
    assert parsed.client == shown
    assert parsed.noban == (None if shown != "-" else "no-address")


# -- entries without a bannable client ---------------------------------------------------------


def test_documented_unbannable_example_exactly() -> None:
    doc = (REPO_ROOT / "docs" / "event-log.md").read_text()
    (example_line,) = [text for text in doc.splitlines() if " modsec[web2]: " in text]
    line = format_event(event(
        unique_id="awrysggx7z821rWArgDkuQAAABc", client_ip=None, peer_ip="192.0.2.10",
        client_unbannable="proxy-bad-header", method="GET", host="www.lab.test",
        uri="/?id=1%27%20or%20%271%27=%271", anomaly_score=5,
        timestamp=dt.datetime(2026, 11, 28, 16, 26, 43, 102214,
                              dt.timezone(dt.timedelta(hours=1))),
        rule_ids=["942100", "949110", "980130"]), "web2", "blocked")
    assert line == example_line
    check_line(line)


@pytest.mark.parametrize("client_ip,peer,reason,addr", [
    (None, "127.0.2.3", "proxy-only", "127.0.2.3"),
    (None, "2001:db8:ffff::1", "proxy-no-header", "2001:db8:ffff::1"),
    ("0.0.0.0", "127.0.2.3", "unspecified", "0.0.0.0"),
    ("ff02::1", "127.0.2.3", "multicast", "ff02::1"),
    ("127.0.0.1", "127.0.2.3", "loopback", "127.0.0.1"),
    ("fe80::1%eth0", "fe80::1%eth0", "scoped", "fe80::1%eth0"),
    (None, None, "no-address", "-"),
])
def test_an_unbannable_entry_says_why_and_the_filter_anchor_misses_it(
        client_ip, peer, reason, addr) -> None:
    """Today's main wrote the proxy (or 0.0.0.0, ff02::1, 127.0.0.1) as a bannable client."""
    line = format_event(event(client_ip=client_ip, peer_ip=peer, client_unbannable=reason),
                        "web1", "blocked")
    parsed = check_line(line)
    assert (parsed.client, parsed.noban, parsed.addr) == ("-", reason, addr)
    assert f" client=- noban={reason} addr={escape_bare(addr)} verdict=blocked " in line
    assert ANCHORED.match(line) is None
    assert parsed.verdict == "blocked" and parsed.rules == event().rule_ids


def test_unbannable_entries_from_parse_entry() -> None:
    a = SECTION_A.replace("127.0.1.103", "127.0.2.3")
    proxies = Proxies(tuple(parse_networks(["127.0.2.0/24"])))
    for head, noban in [("", "proxy-no-header"), ("X-Forwarded-For: 127.0.2.9\n", "proxy-only"),
                        ("X-Forwarded-For: 203.0.113.5 x\n", "proxy-bad-header"),
                        ("X-Forwarded-For: 255.255.255.255\n", "broadcast")]:
        data = native(a=a, b="GET / HTTP/1.1\nHost: x\n" + head)
        parsed = check_line(format_event(parse_entry(data, "x", proxies), "n", "blocked"))
        assert (parsed.client, parsed.noban) == ("-", noban)
        assert parsed.addr == ("255.255.255.255" if noban == "broadcast" else "127.0.2.3")


@settings(max_examples=150)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
def test_round_trip_for_any_ipv4_or_ipv6_client(address) -> None:
    parsed = check_line(format_event(event(client_ip=str(address)), "n", "blocked"))
    expected = address.ipv4_mapped if getattr(address, "ipv4_mapped", None) else address
    assert ipaddress.ip_address(parsed.client) == expected
    assert parsed.client == str(expected)
    assert ANCHORED.match(format_event(event(client_ip=str(address)), "n", "b"))["host"] == \
        str(expected)


# -- hostile values cannot move the fixed prefix ------------------------------------------------

INJECTIONS = [
    b" client=1.2.3.4 ", b'" client=6.6.6.6 verdict=blocked status=403 "',
    b"\n2026-11-28T16:26:42.659421+01:00 modsec[x]: client=6.6.6.6 verdict=blocked status=403"
    b" phase=2 score=13 severity=CRITICAL rules=1 id=x method=\"GET\" host=- uri=- ua=-",
    b"\r\n2026-11-28T16:26:42.659421+01:00 modsec[x]: client=6.6.6.6",
    b'\\" client=6.6.6.6 \\', b"\\", b'"', b'\\"', b"\\\\\"\"", b"\x00client=6.6.6.6",
    b"\x1b[2K\rclient=6.6.6.6", b"\xc2\x85client=6.6.6.6", b"\xe2\x80\xa8client=6.6.6.6",
    b"-", b'" uri="', b"+", b'"+ ua="x',
]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["method", "host", "uri", "user_agent"])
def test_attacker_values_never_influence_the_client_field(field: str, payload: bytes) -> None:
    value = payload.decode("utf-8", "surrogateescape")
    line = format_event(event(**{field: value}), "web1", "passed")
    parsed = check_line(line)
    match = ANCHORED.match(line)
    assert match["host"] == "127.0.1.58" and match["verdict"] == "passed"
    assert parsed.client == "127.0.1.58" and parsed.verdict == "passed"
    name = {"user_agent": "ua"}.get(field, field)
    assert getattr(parsed, name) == payload[:CAPS[name]]
    assert (name in parsed.truncated) == (len(payload) > CAPS[name])
    for other in set(QUOTED) - {name}:
        assert getattr(parsed, other) == getattr(from_event(event(), "web1", "passed"), other)


@pytest.mark.parametrize("forged_id", [
    "x client=6.6.6.6", "x\n2026-11-28T16:26:42+00:00 modsec[x]: client=6.6.6.6", 'x"y',
    "a\\x41", "\udcff\udc80", "ü", "a b", "-", "x=y", "x,y", "id=1.2.3.4"])
def test_forged_unique_id_is_escaped_and_round_trips(forged_id: str) -> None:
    line = format_event(event(unique_id=forged_id), "n", "blocked")
    parsed = check_line(line)
    assert parsed.id == forged_id and parsed.client == "127.0.1.58"
    assert ANCHORED.match(line)["host"] == "127.0.1.58"


def test_hostile_rule_ids_and_severity_are_escaped() -> None:
    line = format_event(event(rule_ids=["1 client=6.6.6.6", "2"], severity="x y"), "n", "b")
    parsed = check_line(line)
    assert parsed.rules == ["1 client=6.6.6.6", "2"] and parsed.severity == "x y"


def test_escaping_rules_exactly() -> None:
    assert escape_quoted(bytes(range(0x20))) == "".join(f"\\x{b:02x}" for b in range(0x20))
    assert escape_quoted(b"\x7f\x80\xff") == "\\x7f\\x80\\xff"
    assert escape_quoted(b'a"b\\c') == 'a\\"b\\\\c'
    assert escape_quoted(b" !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~") == \
        " !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~"
    assert escape_bare("Az09@_.:,-") == "Az09@_.:,-"
    assert escape_bare("a b\\\"") == "a\\x20b\\x5c\\x22"
    assert escape_bare("é") == "\\xc3\\xa9"
    assert escape_bare("\udcff") == "\\xff"


# -- caps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUOTED)
def test_caps_cut_values_and_mark_them(name: str) -> None:
    attribute = {"ua": "user_agent"}.get(name, name)
    cap = CAPS[name]
    exact = "a" * cap
    line = format_event(event(**{attribute: exact}), "n", "p")
    parsed = check_line(line)
    assert getattr(parsed, name) == exact.encode() and name not in parsed.truncated
    assert f'{name}="{exact}" ' in line + " "
    over = "\xe9" + "b" * cap  # 1 latin-1 byte (surrogate-escaped) + cap ASCII bytes
    value = over.encode("latin-1").decode("utf-8", "surrogateescape")
    line = format_event(event(**{attribute: value}), "n", "p")
    parsed = check_line(line)
    assert getattr(parsed, name) == over.encode("latin-1")[:cap]
    assert parsed.truncated == [name]
    assert f'{name}="\\xe9{"b" * (cap - 1)}"+' in line


def test_caps_are_the_documented_ones() -> None:
    assert CAPS == {"method": 32, "host": 255, "uri": 2048, "ua": 512}
    assert ID_CAP == 64


def test_a_megabyte_unique_id_is_cut_like_the_other_fields() -> None:
    """Today's main wrote a 1 MB id as a 1 MB line."""
    forged = "A" * (1 << 20)
    line = format_event(event(unique_id=forged), "n", "blocked")
    assert len(line) < 1000
    parsed = check_line(line)
    assert parsed.id == "A" * ID_CAP and parsed.truncated == ["id"]
    assert f" id={'A' * ID_CAP}+ method=" in line
    assert ANCHORED.match(line)["host"] == "127.0.1.58"


@pytest.mark.parametrize("unique_id,kept,cut", [
    ("a" * 64, "a" * 64, False), ("a" * 65, "a" * 64, True),
    ("é" * 32, "é" * 32, False),                       # 64 bytes
    ("a" + "é" * 32, "a" + "é" * 31 + "\udcc3", True),  # the cut splits a character
    ("\udcff" * 65, "\udcff" * 64, True),
    ("x" * 10 + " client=6.6.6.6" * 10, ("x" * 10 + " client=6.6.6.6" * 4)[:64], True),
])
def test_id_cap_counts_raw_bytes(unique_id: str, kept: str, cut: bool) -> None:
    line = format_event(event(unique_id=unique_id), "n", "blocked")
    parsed = check_line(line)
    assert parsed.id == kept and ("id" in parsed.truncated) == cut
    assert len(line.split(" id=", 1)[1].split(" method=")[0]) <= 4 * ID_CAP + 1
    assert ANCHORED.match(line)["host"] == "127.0.1.58"


def test_a_cut_id_and_cut_quoted_fields_are_all_marked() -> None:
    parsed = check_line(format_event(event(unique_id="i" * 99, method="M" * 40), "n", "p"))
    assert parsed.truncated == ["id", "method"]


def test_cap_counts_raw_bytes_not_characters() -> None:
    uri = "/" + "é" * 2000  # 4001 UTF-8 bytes
    parsed = check_line(format_event(event(uri=uri), "n", "p"))
    assert parsed.uri == uri.encode()[:2048] and parsed.truncated == ["uri"]


def test_several_truncated_fields() -> None:
    line = format_event(event(method="M" * 40, user_agent="u" * 600), "n", "p")
    parsed = check_line(line)
    assert parsed.truncated == ["method", "ua"]
    assert '"+ host=' in line and line.endswith('"+')


# -- the reader ------------------------------------------------------------------------------------


def test_invalid_node_is_refused() -> None:
    for node in ("", "a b", "x]", "é", "n" * 65, "a:b"):
        with pytest.raises(ValueError):
            format_event(event(), node, "p")


@pytest.mark.parametrize("text", [
    "", "garbage", "\n",
    "- modsec[n]: client=- verdict=p status=- phase=- score=- severity=- rules=- id=x",
    "- modsec[n]: client=- verdict=p status=- phase=- score=- severity=- rules=- id=x "
    'method=- host=- uri=- ua=- extra',
    "- modsec[n]: client=- verdict=p status=- phase=- score=- severity=- rules=- id=x "
    'method="a"b" host=- uri=- ua=-',
    "- modsec[n]: client=- verdict=p status=- phase=- score=- severity=- rules=- id=x "
    'method="a host=- uri=- ua=-',
    "- modsec[n]: client=- verdict=p status=- phase=- score=- severity=- rules=- id=x "
    'method=- host=- uri=- ua="x\\"',
    "- modsec[n b]: client=- verdict=p status=- phase=- score=- severity=- rules=- id=x "
    "method=- host=- uri=- ua=-",
])
def test_parse_line_rejects_other_lines(text: str) -> None:
    with pytest.raises(ValueError):
        parse_line(text)


def test_parse_line_accepts_a_trailing_newline() -> None:
    line = format_event(event(), "n", "p")
    assert parse_line(line + "\n") == parse_line(line)


# -- hypothesis: arbitrary bytes and ids --------------------------------------------------------

raw_bytes = st.binary(max_size=300)
quoted = st.one_of(st.none(), raw_bytes)
bare_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    st.binary(min_size=1, max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")))
lines = st.builds(
    EventLine,
    time=st.sampled_from(["-", "2026-11-28T16:26:42.659421+01:00",
                          "1999-01-01T00:00:00.000000-03:30"]),
    node=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    client=st.one_of(st.just("-"), st.ip_addresses().map(str)),
    verdict=st.sampled_from(["blocked", "detected", "passed"]),
    status=st.one_of(st.just("-"), st.integers(0, 999).map(str)),
    phase=st.sampled_from(["-", "1", "2", "3", "4", "5"]),
    score=st.one_of(st.just("-"), st.integers(0, 10**6).map(str)),
    severity=st.sampled_from(["-", "EMERGENCY", "CRITICAL", "WARNING", "DEBUG"]),
    rules=st.lists(st.integers(1, 10**7).map(str), max_size=8),
    id=bare_text, method=quoted, host=quoted, uri=quoted, ua=quoted,
    truncated=st.sampled_from([[], ["id"]]),
    noban=st.one_of(st.none(), st.sampled_from(["proxy-only", "no-address", "loopback"])),
    addr=st.one_of(st.just("-"), st.ip_addresses().map(str))
).map(lambda line: dataclasses.replace(line, client="-") if line.noban else
      dataclasses.replace(line, addr="-"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(lines)
def test_round_trip_of_arbitrary_lines(line: EventLine) -> None:
    text = format_line(line)
    parsed = check_line(text)
    assert parsed == line
    if line.noban:
        assert ANCHORED.match(text) is None
    else:
        assert ANCHORED.match(text)["host"] == line.client


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(method=raw_bytes, host=quoted, uri=st.binary(max_size=3000), ua=quoted,
       uid=bare_text, client=st.ip_addresses())
@example(method=b"GET", host=None, uri=b"/ client=1.2.3.4 ", ua=b'"\\',
         uid="\udcff", client=ipaddress.ip_address("::ffff:1.2.3.4"))
def test_round_trip_of_events_with_arbitrary_bytes(method, host, uri, ua, uid, client) -> None:
    def text(value):
        return None if value is None else value.decode("utf-8", "surrogateescape")

    ev = event(method=text(method), host=text(host), uri=text(uri), user_agent=text(ua),
               unique_id=uid, client_ip=str(client))
    line = format_event(ev, "web-1", "blocked")
    parsed = check_line(line)
    assert raw(parsed.id) == raw(uid)[:ID_CAP]
    assert ("id" in parsed.truncated) == (len(raw(uid)) > ID_CAP)
    for name, value in (("method", method), ("host", host), ("uri", uri), ("ua", ua)):
        got = getattr(parsed, name)
        if value is None:
            assert got is None
        else:
            assert got == value[:CAPS[name]]
            assert (name in parsed.truncated) == (len(value) > CAPS[name])
    expected = client.ipv4_mapped if getattr(client, "ipv4_mapped", None) else client
    assert ANCHORED.match(line)["host"] == parsed.client == str(expected)


# -- regressions (fixed in b99618a) ------------------------------------------------------------


def test_empty_rule_id_gives_a_readable_line() -> None:
    """format_line escaped bare tokens only when their concatenation was unsafe: an empty
    rule id ([id ""]) printed 'rules= ' and parse_line rejected the line."""
    ev = parse_entry(native(h=trailer(message(rule=""))), "x")
    assert ev.rule_ids == [""]
    line = check_line(format_event(ev, "n", "passed"))
    assert line.client == "127.0.1.103"
    check_line(format_event(event(rule_ids=["", "1"], severity=""), "n", "p"))


@pytest.mark.parametrize("patch", [
    {"transaction": {"transaction_id": "\ud800"}},
    {"request": {"request_line": "GET /\udfff\ud800 HTTP/1.1"}},  # not a pair
    {"request": {"headers": {"User-Agent": "\udc41"}}},
], ids=["id", "uri", "ua"])
def test_json_lone_surrogate_gives_a_readable_line(patch: dict) -> None:
    """A JSON entry may hold any \\uXXXX escape; a lone surrogate outside U+DC80..U+DCFF
    could not be encoded with surrogateescape: format_event raised UnicodeEncodeError."""
    (section, values), = patch.items()
    ev = parse_entry(dumps(json_entry(**{section: values})), "x.json")
    line = check_line(format_event(ev, "n", "passed"))
    assert line.client == "127.0.1.2"


def test_lone_surrogates_become_their_utf8_style_bytes() -> None:
    from modsec_tools.audit.event import raw
    assert raw("\ud800") == b"\xed\xa0\x80" and raw("a\udcff") == b"a\xff"
    assert parse_line(format_event(event(uri="/\ud800"), "n", "p")).uri == b"/\xed\xa0\x80"


def test_json_output_of_the_same_entry_is_fine() -> None:
    """jsonout escapes any lone surrogate as \\udXXX: only the event line is affected."""
    from modsec_tools.jsonout import dumps as event_dumps
    ev = parse_entry(dumps(json_entry(transaction={"transaction_id": "\ud800"})), "x.json")
    assert json.loads(event_dumps(ev))["unique_id"] == "\ud800"


def test_a_megabyte_unique_id_through_ingest(tmp_path) -> None:
    """The event line is cut, the archive keeps the entry byte for byte, the database row
    holds the id's start and its digest (64 characters), and the file is gone: nothing
    breaks on it."""
    from tests import ingest_helpers as ih
    sb = ih.Sandbox(tmp_path, settings={"settle_seconds": "0"})
    minute = sb.storage / "20261128" / "20261128-1626"
    minute.mkdir(parents=True)
    forged = "F" + "A" * (1 << 20)
    data = native(a=SECTION_A.replace(UNIQUE_ID, forged))
    (minute / "20261128-162642-FORGEDID").write_bytes(data)
    ih.age_tree(sb.storage)
    sb.run()
    (line,) = sb.events.read_text().splitlines()
    assert len(line) < 1000 and f" id={forged[:ID_CAP]}+ " in line
    assert ih.archived_form(data) in sb.archived()
    with ih.sqlite_connect(sb.db_path) as conn:
        from modsec_tools.db.rows import stored_unique_id
        assert ih.query(conn, "SELECT unique_id FROM events") == [(stored_unique_id(forged),)]
    assert sb.left() == []
