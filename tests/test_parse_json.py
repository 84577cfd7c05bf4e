"""JSON audit entries (SecAuditLogFormat JSON): real entries, raw bytes, odd shapes."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.errors import ParseError
from modsec_tools.audit.event import Event, raw
from modsec_tools.audit.jsonformat import parse_json
from modsec_tools.audit.native import BODY_CAP
from tests.test_parse_support import denial, dumps, fixture, json_entry, message

MINUS_FIVE = dt.timezone(-dt.timedelta(hours=5))


def parse(data: bytes) -> Event:
    return parse_entry(data, "test.json")


def test_real_blocked_entry() -> None:
    data = fixture("json_blocked.json")
    document = json.loads(data)
    event = parse(data)
    assert event.unique_id == document["transaction"]["transaction_id"]
    assert event.timestamp.utcoffset() == -dt.timedelta(hours=5)  # written "--0500"
    assert event.peer_ip == document["transaction"]["remote_address"]
    assert event.peer_port == document["transaction"]["remote_port"]
    assert event.request_line == document["request"]["request_line"]
    assert event.status == document["response"]["status"] == 403
    assert event.intercepted and event.phase == document["audit_data"]["action"]["phase"]
    assert event.rule_ids == [m.split('[id "')[1].split('"')[0]
                              for m in document["audit_data"]["messages"]]
    assert event.request_body == "".join(document["request"]["body"])
    assert event.producer == "; ".join(document["audit_data"]["producer"])
    assert event.engine_mode == "ENABLED" and event.server == "Apache/2.4.71 (Debian)"
    assert event.stopwatch["p1"] == document["audit_data"]["stopwatch"]["p1"]
    assert event.anomaly_score is not None and event.score_source == "980130"
    assert event.apache_errors == []  # every error_messages line is a ModSecurity copy
    assert not event.incomplete and event.problems == []


def test_real_http09_entry_has_no_response_status_but_a_denial() -> None:
    event = parse(fixture("json_http09_blocked.json"))
    assert event.timestamp == dt.datetime(2026, 11, 28, 10, 30, 15, 631056, MINUS_FIVE)
    assert (event.method, event.uri, event.protocol) == ("GET", "/index.html", "HTTP/0.9")
    assert event.request_headers == [] and event.host is None
    assert event.status == 403 and event.intercepted and event.phase == 2
    assert event.rule_ids == ["920430", "920280", "949110", "980130"]


def test_synthetic_entry_fields() -> None:
    event = parse(dumps(json_entry()))
    assert (event.method, event.uri, event.protocol) == ("GET", "/index.html?q=1", "HTTP/1.1")
    assert event.host == "api.lab.test" and event.user_agent == "curl/8.5.0"
    assert event.response_headers == [("Content-Type", "text/html")]
    assert event.response_status_line == "HTTP/1.1 403"
    assert event.local_ip == "127.0.0.2" and event.local_port == 8081
    assert event.stopwatch == {"p1": 520, "p2": 285, "p3": 0, "p4": 0, "p5": 97}
    assert event.severity == "CRITICAL" and event.anomaly_score == 5


def test_invalid_utf8_inside_strings_is_kept_byte_for_byte() -> None:
    text = json.dumps(json_entry(request={"request_line": "GET /URI HTTP/1.1",
                                          "headers": {"User-Agent": "UA", "Host": "HOST"}}))
    uri, ua, host = b"/caf\xe9/\xff\xfe\x80?x=\xc3(", b"Mozilla \xed\xa0\x80 \xf8\x88", b"h\xf6st"
    data = text.encode().replace(b"/URI", uri).replace(b'"UA"', b'"' + ua + b'"') \
        .replace(b'"HOST"', b'"' + host + b'"')
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    event = parse(data)
    assert raw(event.uri) == uri and raw(event.user_agent) == ua and raw(event.host) == host


def test_invalid_utf8_in_a_message_and_the_body() -> None:
    text = json.dumps(json_entry(request={"body": ["BODY"]}, audit_data={
        "messages": [message(data="Matched Data: DATA")]}))
    data = text.encode().replace(b"BODY", b"a=\xe9\xff").replace(b"DATA", b"\xfe\xfd")
    event = parse(data)
    assert raw(event.request_body) == b"a=\xe9\xff"
    assert raw(event.messages[0].data) == b"Matched Data: \xfe\xfd"


def test_duplicate_header_names_are_all_kept_in_order() -> None:
    text = json.dumps(json_entry(request={"headers": {"HEADERS": 1}}))
    data = text.replace('{"HEADERS": 1}', '{"Host": "a", "Cookie": "x=1", "Cookie": "y=2", '
                        '"cookie": "z=3", "User-Agent": "first", "User-Agent": "second"}')
    event = parse(data.encode())
    assert event.request_headers == [("Host", "a"), ("Cookie", "x=1"), ("Cookie", "y=2"),
                                     ("cookie", "z=3"), ("User-Agent", "first"),
                                     ("User-Agent", "second")]
    assert event.user_agent == "first"


def test_duplicate_response_headers_kept() -> None:
    text = json.dumps(json_entry(response={"headers": {"H": 1}}))
    data = text.replace('{"H": 1}', '{"Set-Cookie": "a=1", "Set-Cookie": "b=2"}')
    assert parse(data.encode()).response_headers == [("Set-Cookie", "a=1"),
                                                      ("Set-Cookie", "b=2")]


def test_request_body_as_string_or_list_and_capped() -> None:
    assert parse(dumps(json_entry(request={"body": "a=1"}))).request_body == "a=1"
    assert parse(dumps(json_entry(request={"body": ["a=", 5, "1", None]}))).request_body == "a=1"
    event = parse(dumps(json_entry(request={"body": ["x" * BODY_CAP, "y" * 10]})))
    assert event.request_body == "x" * BODY_CAP
    assert any("body" in p for p in event.problems)


def test_non_modsecurity_error_messages_are_kept() -> None:
    event = parse(dumps(json_entry(audit_data={"error_messages": [
        '[file "apache2_util.c"] [line 275] [level 3] [client 1.2.3.4] ModSecurity: ' + denial(),
        "[file \"core.c\"] [line 1] AH00126: Invalid URI in request", 7]})))
    assert event.apache_errors == ["[file \"core.c\"] [line 1] AH00126: Invalid URI in request"]


@pytest.mark.parametrize("drop", ["transaction", "transaction.transaction_id",
                                  "transaction.time"])
def test_missing_identity_is_a_parse_error(drop: str) -> None:
    with pytest.raises(ParseError, match="transaction"):
        parse(dumps(json_entry(drop=(drop,))))


@pytest.mark.parametrize("drop", ["request", "response", "audit_data"])
def test_missing_top_level_object_flags_the_event_incomplete(drop: str) -> None:
    event = parse(dumps(json_entry(drop=(drop,))))
    assert event.incomplete
    assert any(drop in problem for problem in event.problems)
    assert event.unique_id == "awrzh1hRTcAzvyG5gAIU-AAAAAc"


@pytest.mark.parametrize("drop", [
    "transaction.remote_address", "transaction.remote_port", "transaction.local_address",
    "transaction.local_port", "request.request_line", "request.headers", "response.status",
    "response.protocol", "response.headers", "audit_data.messages", "audit_data.action",
    "audit_data.stopwatch", "audit_data.producer", "audit_data.engine_mode"])
def test_missing_inner_key_gives_an_event_with_that_field_absent(drop: str) -> None:
    event = parse(dumps(json_entry(drop=(drop,))))
    assert event.unique_id and not event.incomplete
    expectations = {
        "transaction.remote_address": lambda e: e.peer_ip is None and e.client_ip is None,
        "transaction.remote_port": lambda e: e.peer_port is None,
        "transaction.local_address": lambda e: e.local_ip is None,
        "transaction.local_port": lambda e: e.local_port is None,
        "request.request_line": lambda e: e.method is None and e.uri is None,
        "request.headers": lambda e: e.request_headers == [] and e.host is None,
        "response.status": lambda e: e.status == 403,  # from "Access denied with code 403"
        "response.protocol": lambda e: e.response_protocol is None and e.status == 403,
        "response.headers": lambda e: e.response_headers == [],
        "audit_data.messages": lambda e: e.messages == [] and e.rule_ids == [],
        "audit_data.action": lambda e: not e.intercepted and e.phase == 2,  # denial's phase
        "audit_data.stopwatch": lambda e: e.stopwatch == {},
        "audit_data.producer": lambda e: e.producer is None,
        "audit_data.engine_mode": lambda e: e.engine_mode is None,
    }
    assert expectations[drop](event)


@pytest.mark.parametrize("patch", [
    {"transaction": []}, {"transaction": "x"}, {"transaction": {"transaction_id": 5,
                                                                  "time": "x"}},
    {"request": "x"}, {"request": {"headers": [["Host", "x"]], "request_line": 7,
                                   "body": {"a": 1}}},
    {"response": {"status": "403"}}, {"response": {"status": True}},
    {"response": {"status": 4.5}}, {"response": {"headers": {"X": ["a", {"b": None}]}}},
    {"audit_data": {"messages": "not a list"}}, {"audit_data": {"messages": [1, None, {}]}},
    {"audit_data": {"action": {"intercepted": "yes", "phase": "2"}}},
    {"audit_data": {"action": {"intercepted": True, "phase": None}}},
    {"audit_data": {"stopwatch": [1, 2]}}, {"audit_data": {"producer": [1, "x"]}},
    {"audit_data": {"error_messages": "x"}}, {"audit_data": None},
])
def test_wrong_types_give_an_event_or_a_parse_error(patch: dict) -> None:
    document = json_entry()
    document.update(patch)
    try:
        event = parse(dumps(document))
    except ParseError as exc:
        assert str(exc)
        return
    assert isinstance(event, Event)


def test_wrong_types_are_read_sensibly() -> None:
    document = json_entry(response={"status": "403"},
                          audit_data={"action": {"intercepted": True, "phase": "3"}})
    event = parse(dumps(document))
    assert event.status == 403 and event.intercepted and event.phase == 3
    document = json_entry(response={"status": True},
                          audit_data={"action": {"intercepted": "true"}, "messages": []})
    event = parse(dumps(document))
    assert event.status is None and not event.intercepted
    event = parse(dumps(json_entry(request={"headers": {"X": ["a", 1]}})))
    assert event.request_headers == [("X", '["a", 1]')]


@pytest.mark.parametrize("data", [
    b"{", b"{}", b'{"transaction": {}}', b"{]", b'{"a": 1} trailing', b"{\x00}",
    b'{"transaction": {"transaction_id": "x", "time": "not a time"}}',
    b'{"transaction": {"transaction_id": "x", "time": "31/Feb/2026:00:00:00 +0000"}}',
    b'{"transaction": {"transaction_id": "x", "time": "28/Nov/2026:00:00:00 +9900"}}',
    b'{"transaction": {"transaction_id": "", "time": "28/Nov/2026:00:00:00 +0000"}}',
])
def test_broken_json_is_a_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse(data)
    assert str(info.value)


def test_truncated_real_entry_is_a_parse_error_at_every_cut() -> None:
    data = fixture("json_blocked.json")
    for cut in range(1, len(data) - 2, 97):
        with pytest.raises(ParseError):
            parse(data[:cut])


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_json_is_a_parse_error_not_a_recursion_crash(depth: int) -> None:
    for data in (b'{"transaction": ' + b"[" * depth + b"]" * depth + b"}",
                 b'{"a": ' + b"[" * depth, b"{" + b'"a":{' * depth):
        with pytest.raises(ParseError):
            parse(data)
    with pytest.raises(ParseError):
        parse_json(b"[" * depth, "direct")


def test_top_level_that_is_not_an_object() -> None:
    for data in (b"[1, 2]", b'"x"', b"17", b"null"):
        with pytest.raises(ParseError):
            parse_json(data, "direct")


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000, "\u0665\u0667", "-1", "1e3",
                                   "99999999999"])
def test_digit_like_port_strings_are_not_numbers(value: str) -> None:
    """Regression (fixed in b99618a): _int() used str.isdigit(), so '²' and 5000-digit strings
    reached int() and raised ValueError out of parse_entry."""
    event = parse(dumps(json_entry(transaction={"remote_port": value})))
    assert event.peer_port is None


def test_digit_like_phase_string_is_not_a_crash() -> None:
    event = parse(dumps(json_entry(audit_data={"action": {"intercepted": True,
                                                          "phase": "\u00b2"}})))
    assert event.intercepted and event.phase == 2  # from the denial message instead
