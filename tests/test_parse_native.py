"""Native (multipart) audit entries: every section, the trailer, rule messages, odd bytes.

Synthetic entries come from tests/test_parse_support.py, whose builders are checked byte for
byte against real entries; real entries from the corpus are in tests/data/.
"""
from __future__ import annotations

import datetime as dt

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.errors import ParseError
from modsec_tools.audit.event import Event, raw
from modsec_tools.audit.indexlog import parse_index_line
from modsec_tools.audit.native import BODY_CAP, parse_native, split_sections
from tests.test_parse_support import (BOUNDARY, REQUEST_HEAD, TRAILER_TAIL, UNIQUE_ID,
                                      denial, fixture, message, native, trailer)


def parse(data: bytes, **kw) -> Event:
    return parse_entry(data, "test-entry", **kw)


# --- section A ----------------------------------------------------------------------------


def test_section_a_gives_id_time_and_both_endpoints() -> None:
    event = parse(native())
    assert event.unique_id == UNIQUE_ID
    assert event.timestamp == dt.datetime(2026, 11, 28, 16, 26, 42, 543458,
                                          dt.timezone(dt.timedelta(hours=1)))
    assert (event.peer_ip, event.peer_port) == ("127.0.1.103", 57425)
    assert (event.local_ip, event.local_port) == ("127.0.0.1", 8080)
    assert event.client_ip == "127.0.1.103"
    assert event.source == "test-entry"
    assert not event.incomplete and event.problems == []


def test_section_a_ipv6_peer_from_a_real_entry() -> None:
    event = parse(fixture("native_ipv6_upload.log"))
    assert event.peer_ip == "2001:db8::a645" and event.client_ip == "2001:db8::a645"
    assert event.peer_port == 57495


@pytest.mark.parametrize("offset,expected", [
    ("+0100", dt.timedelta(hours=1)),
    ("+0000", dt.timedelta(0)),
    ("+0530", dt.timedelta(hours=5, minutes=30)),
    ("--0500", -dt.timedelta(hours=5)),          # ModSecurity's doubled sign
    ("--03-30", -dt.timedelta(hours=3, minutes=30)),
    ("-0800", -dt.timedelta(hours=8)),           # the normal spelling, for other writers
])
def test_utc_offsets_including_modsecuritys_negative_spelling(offset, expected) -> None:
    a = f"[28/Nov/2026:10:30:15.631056 {offset}] {UNIQUE_ID} 127.0.1.2 59523 127.0.0.2 8081"
    event = parse(native(a=a))
    assert event.timestamp.utcoffset() == expected
    assert (event.timestamp.hour, event.timestamp.minute, event.timestamp.microsecond) == \
        (10, 30, 631056)
    # the instant is right, not just the wall clock
    assert event.timestamp.astimezone(dt.timezone.utc) == \
        dt.datetime(2026, 11, 28, 10, 30, 15, 631056, dt.timezone.utc) - expected


def test_section_a_without_microseconds() -> None:
    a = f"[28/Nov/2026:16:26:42 +0100] {UNIQUE_ID} 127.0.1.103 57425 127.0.0.1 8080"
    assert parse(native(a=a)).timestamp.microsecond == 0


# --- section B ----------------------------------------------------------------------------


def test_section_b_request_line_and_headers_in_order_with_duplicates() -> None:
    head = ("POST /cgi-bin/login.cgi?next=%2F HTTP/1.1\nHost: www.lab.test\n"
            "Cookie: a=1\nUser-Agent: sqlmap/1.7\ncookie: b=2\nX-Empty:\n")
    event = parse(native(b=head))
    assert (event.method, event.uri, event.protocol) == \
        ("POST", "/cgi-bin/login.cgi?next=%2F", "HTTP/1.1")
    assert event.request_line == "POST /cgi-bin/login.cgi?next=%2F HTTP/1.1"
    assert event.request_headers == [("Host", "www.lab.test"), ("Cookie", "a=1"),
                                     ("User-Agent", "sqlmap/1.7"), ("cookie", "b=2"),
                                     ("X-Empty", "")]
    assert event.host == "www.lab.test" and event.user_agent == "sqlmap/1.7"
    assert event.header("COOKIE") == "a=1"  # first one, case-insensitive


def test_folded_headers_are_joined() -> None:
    head = ("GET / HTTP/1.1\nHost: www.lab.test\nX-Folded: part1\n  part2\n\tpart3\n"
            "User-Agent: ua\n")
    event = parse(native(b=head))
    assert ("X-Folded", "part1 part2 part3") in event.request_headers
    assert event.user_agent == "ua"
    assert [name for name, _ in event.request_headers] == ["Host", "X-Folded", "User-Agent"]


def test_real_entry_without_host_or_ua_has_none() -> None:
    event = parse(fixture("native_http09_blocked.log"))
    assert event.host is None and event.user_agent is None and event.request_headers == []


def test_uri_with_spaces_keeps_everything_between_method_and_protocol() -> None:
    event = parse(native(b="GET /a b  c HTTP/1.1\nHost: x\n"))
    assert (event.method, event.uri, event.protocol) == ("GET", "/a b  c", "HTTP/1.1")


# --- bytes: latin-1, binary, lossless --------------------------------------------------------


def test_latin1_uri_from_a_real_entry_is_kept_byte_for_byte() -> None:
    data = fixture("native_latin1_uri.log")
    request_line = data.split(b"\n")[3]
    assert b"\xe9" in request_line  # the corpus request really is latin-1
    event = parse(data)
    assert raw(event.uri) == request_line.split(b" ")[1]
    assert raw(event.request_line) == request_line


def test_arbitrary_bytes_in_uri_and_headers_are_lossless() -> None:
    uri = b"/p\x80\xff\xe9\xc3(%00\x01\x7f?a=\xfe\xfd"
    ua = bytes(range(0x80, 0x100))
    value = b"caf\xe9 \xc3\xa9 \xed\xa0\x80 \xf4\x90\x80\x80"  # latin-1, UTF-8, CESU, >U+10FFFF
    head = b"GET " + uri + b" HTTP/1.1\nHost: h\xf6st\nUser-Agent: " + ua + \
        b"\nX-Bytes: " + value + b"\n"
    event = parse(native(b=head))
    assert raw(event.uri) == uri
    assert raw(event.user_agent) == ua
    assert raw(event.host) == b"h\xf6st"
    assert raw(event.header("X-Bytes")) == value
    assert raw(event.header("X-Bytes")).decode("utf-8", "surrogateescape") == event.header(
        "X-Bytes")


def test_binary_request_body_is_lossless() -> None:
    body = bytes(range(256)) * 4
    event = parse(native(c=body))
    assert raw(event.request_body) == body


# --- sections C, I, J, E, F, K, Z and unknown ones -------------------------------------------


def test_section_c_body_from_a_real_entry_is_exact() -> None:
    event = parse(fixture("native_request_body.log"))
    assert event.request_body == '{"item": 1, "qty": '  # Content-Length: 19, no newline added
    assert event.status == 500 and event.response_protocol == "HTTP/1.1"
    assert event.response_headers[0] == ("Content-Length", "571")


def test_section_i_is_the_body_of_a_multipart_request() -> None:
    event = parse(fixture("native_multipart_blocked.log"))
    assert event.request_body == "debug=%3b+%2fbin%2fbash+%2dc+%27echo+pwned%27&submit=Send"
    assert event.rule_ids == ["920350", "932100", "932160", "949110", "980130"]


def test_section_c_wins_over_section_i() -> None:
    event = parse(native(c="raw=body", i="from=multipart"))
    assert event.request_body == "raw=body"


def test_section_f_status_line_and_headers() -> None:
    event = parse(native(f="HTTP/1.1 302 Found\nLocation: /login\nContent-Length: 0\n"))
    assert event.status == 302 and event.response_protocol == "HTTP/1.1"
    assert event.response_status_line == "HTTP/1.1 302 Found"
    assert event.response_headers == [("Location", "/login"), ("Content-Length", "0")]


def test_bodies_and_k_cannot_pose_as_trailer_lines() -> None:
    """E (response body), J (uploads) and K (matched rules) are not section H: trailer-looking
    lines inside them must not change the verdict-relevant fields."""
    fake = ("Action: Intercepted (phase 1)\n" + "Message: " + denial(code=406, phase=1) +
            "\nEngine-Mode: \"DETECTION_ONLY\"\n")
    k = ('SecRule REQUEST_HEADERS:User-Agent "@pm sqlmap" "id:913100,phase:1,block,'
         'msg:\'Found User-Agent associated with security scanner\'"\n' + fake)
    event = parse(native(e=fake, j=fake, k=k, h=trailer(message())))
    assert not event.intercepted and event.phase is None
    assert event.rule_ids == ["942100"]
    assert event.engine_mode == "ENABLED"
    assert event.status == 403


def test_missing_z_flags_the_event_incomplete_with_a_reason() -> None:
    data = native(h=trailer(message(), denial(), phase=2), z=False)
    event = parse(data)
    assert event.incomplete
    assert any("Z" in problem for problem in event.problems)
    assert event.rule_ids == ["942100", "949110"] and event.intercepted  # what was there


@pytest.mark.parametrize("cut", ["A", "B", "F", "E", "H"])
def test_entry_cut_after_each_section_boundary_is_incomplete(cut: str) -> None:
    data = native(h=trailer(message(), phase=2))
    end = data.index(f"--{BOUNDARY}-{cut}--\n".encode()) + len(f"--{BOUNDARY}-{cut}--\n")
    if cut == "A":
        end += 10  # inside section A: the time stamp is unreadable
        with pytest.raises(ParseError, match="time stamp|section A"):
            parse(data[:end])
        return
    event = parse(data[:end])
    assert event.incomplete and event.unique_id == UNIQUE_ID


def test_unknown_section_letter_is_reported_not_fatal() -> None:
    event = parse(native(extra=[("X", "whatever\n--not-a-boundary--\n")],
                         h=trailer(message(), phase=2)))
    assert not event.incomplete
    assert any("'X'" in problem for problem in event.problems)
    assert event.rule_ids == ["942100"] and event.intercepted


def test_sections_are_split_at_their_own_boundary_only() -> None:
    sections = split_sections(native(c="x", i="y", j="z", k="k\n"))
    assert sorted(sections.parts) == ["A", "B", "C", "E", "F", "H", "I", "J", "K"]
    assert sections.complete and sections.unknown == []
    assert sections.boundary == BOUNDARY.encode()


def test_forged_boundaries_inside_a_body_do_not_cut_the_entry() -> None:
    forged = ("line1\n--deadbeef-Z--\n--deadbeef-A--\n[01/Jan/2020:00:00:00 +0000] FORGED "
              "6.6.6.6 1 6.6.6.6 80\n--deadbeef-H--\nAction: Intercepted (phase 1)\n"
              f"--{BOUNDARY}-h--\n--{BOUNDARY}-H--x\n--{BOUNDARY}-HH--\n --{BOUNDARY}-Z--\n"
              "tail")
    event = parse(native(c=forged, h=trailer(message())))
    assert event.request_body == forged
    assert event.unique_id == UNIQUE_ID and event.peer_ip == "127.0.1.103"
    assert not event.intercepted and event.rule_ids == ["942100"]
    assert not event.incomplete and event.problems == []


# --- HTTP/0.9 ---------------------------------------------------------------------------------


def test_http09_status_comes_from_the_denial_message() -> None:
    event = parse(fixture("native_http09_blocked.log"))
    assert (event.method, event.uri, event.protocol) == ("GET", "/index.html", "HTTP/0.9")
    assert event.response_status_line is None and event.response_headers == []
    assert event.status == 403 and event.intercepted and event.phase == 2


def test_http09_denial_with_a_redirect_status() -> None:
    deny = message("Access denied with redirection to /blocked using status 302 (phase 1). "
                   "Matched phrase \"masscan\" at REQUEST_HEADERS:User-Agent.", rule="10002")
    event = parse(native(b="GET /\n", f="", h=trailer(deny)))
    assert event.status == 302 and event.phase == 1


def test_http09_under_detection_only_takes_the_status_from_the_index_line() -> None:
    data = fixture("native_detectiononly_http09.log")
    index = parse_index_line(fixture("native_detectiononly_http09.index").decode())
    assert parse(data).status is None  # nothing in the entry says it
    event = parse(data, index=index)
    assert event.status == 200 and event.protocol == "HTTP/0.9"
    assert event.engine_mode == "DETECTION_ONLY" and not event.intercepted


def test_index_line_never_overrides_the_entrys_own_status() -> None:
    data = fixture("native_detectiononly_http09.log")
    index = parse_index_line(fixture("native_detectiononly_http09.index").decode())
    own = native(a=data.split(b"\n")[1], f="HTTP/1.1 418 I'm a teapot\n")
    event = parse_native(own, "x")
    assert event.status == 418
    assert parse(own, index=index).status == 418


# --- CRLF -------------------------------------------------------------------------------------


def test_crlf_entry_reads_like_the_lf_entry() -> None:
    kw = dict(b=REQUEST_HEAD + "Cookie: a=1\n", h=trailer(message(), denial(), phase=2))
    lf, crlf = parse(native(**kw)), parse(native(eol=b"\r\n", **kw))
    for name in ("unique_id", "timestamp", "peer_ip", "peer_port", "local_port", "method",
                 "uri", "protocol", "request_headers", "status", "response_headers",
                 "messages", "intercepted", "phase", "anomaly_score", "rule_ids",
                 "severity", "engine_mode", "producer", "stopwatch", "host", "user_agent"):
        assert getattr(crlf, name) == getattr(lf, name), name
    assert not crlf.incomplete
    assert all("\r" not in value for _, value in crlf.request_headers + crlf.trailer)


# --- section H: trailer keys ----------------------------------------------------------------


def test_trailer_keys() -> None:
    lines = trailer(message(), denial(), phase=2) + [
        'WebApp-Info: "default" "-" ""',
        'Sanitised-Args: "password".',
        'Sanitised-Request-Headers: "Authorization".',
        "Apache-Handler: cgi-script",
    ]
    event = parse(native(h=lines))
    assert event.intercepted and event.phase == 2
    assert event.stopwatch_start_us == 1795879602540914
    assert event.stopwatch == {"combined": 1817, "p1": 796, "p2": 861, "p3": 0, "p4": 0,
                               "p5": 160, "sr": 100, "sw": 0, "l": 0, "gc": 0}
    assert event.producer == ("ModSecurity for Apache/2.9.7 (http://www.modsecurity.org/); "
                              "OWASP_CRS/3.3.4.")
    assert event.server == "Apache/2.4.71 (Debian)"
    assert event.engine_mode == "ENABLED"
    keys = [key for key, _ in event.trailer]
    assert keys == ["Message", "Message", "Action", "Stopwatch", "Stopwatch2",
                    "Response-Body-Transformed", "Producer", "Server", "Engine-Mode",
                    "WebApp-Info", "Sanitised-Args", "Sanitised-Request-Headers",
                    "Apache-Handler"]
    assert dict(event.trailer)["Sanitised-Args"] == '"password".'
    assert dict(event.trailer)["WebApp-Info"] == '"default" "-" ""'


@pytest.mark.parametrize("phase", [1, 2, 3, 4, 5])
def test_action_intercepted_phase(phase: int) -> None:
    event = parse(native(h=trailer(denial(phase=phase), phase=phase)))
    assert event.intercepted and event.phase == phase


def test_no_action_line_means_not_intercepted() -> None:
    event = parse(native(h=trailer(message())))
    assert not event.intercepted and event.phase is None


def test_engine_mode_detection_only() -> None:
    lines = [line for line in trailer(message()) if not line.startswith("Engine-Mode")]
    event = parse(native(h=lines + ['Engine-Mode: "DETECTION_ONLY"']))
    assert event.engine_mode == "DETECTION_ONLY"


def test_apache_error_copies_are_not_counted_twice() -> None:
    lines = trailer(message(), denial(), phase=2, apache_errors=True)
    lines.insert(0, "Apache-Error: [file \"core.c\"] [line 1] [level 3] AH00126: Invalid URI")
    event = parse(native(h=lines))
    assert event.rule_ids == ["942100", "949110"]
    assert len(event.messages) == 2
    assert event.apache_errors == ['[file "core.c"] [line 1] [level 3] AH00126: Invalid URI']


def test_apache_error_lines_stand_in_when_message_lines_are_missing() -> None:
    lines = trailer(message(), denial(), phase=2, apache_errors=True)
    lines = [line for line in lines if not line.startswith("Message:")]
    event = parse(native(h=lines))
    assert event.rule_ids == ["942100", "949110"]
    first = event.messages[0]
    assert first.hostname == "www.lab.test" and first.uri == "/"
    assert first.unique_id == UNIQUE_ID
    assert first.text == 'Warning. Pattern match "x" at ARGS:q.'


def test_stopwatch_without_a_number() -> None:
    event = parse(native(h=["Stopwatch: - 5 (- - -)", "Stopwatch2: garbage"]))
    assert event.stopwatch_start_us is None and event.stopwatch == {}


# --- rule messages -----------------------------------------------------------------------------


def test_every_message_field() -> None:
    text = message(rule="942100", data="Matched Data: s&sos found within ARGS:id: 1' or '1",
                   severity="CRITICAL",
                   tags=("application-multi", "language-multi", "attack-sqli",
                         "paranoia-level/1", "attack-sqli"),
                   extra=(("maturity", "9"), ("accuracy", "8"), ("hostname", "www.lab.test"),
                          ("uri", "/index.php"), ("unique_id", UNIQUE_ID)))
    event = parse(native(h=trailer(text)))
    (msg,) = event.messages
    assert msg.text == 'Warning. Pattern match "x" at ARGS:q.'
    assert msg.rule_id == "942100"
    assert msg.msg == "SQL Injection Attack Detected via libinjection"
    assert msg.data == "Matched Data: s&sos found within ARGS:id: 1' or '1"
    assert msg.severity == "CRITICAL" and msg.ver == "OWASP_CRS/3.3.4"
    assert (msg.maturity, msg.accuracy) == ("9", "8")
    assert msg.tags == ["application-multi", "language-multi", "attack-sqli",
                        "paranoia-level/1", "attack-sqli"]
    assert msg.file == "/usr/share/modsecurity-crs/rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf"
    assert msg.line == "45"
    assert (msg.hostname, msg.uri, msg.unique_id) == ("www.lab.test", "/index.php", UNIQUE_ID)
    assert [key for key, _ in msg.fields] == [
        "file", "line", "id", "msg", "data", "severity", "ver", "tag", "tag", "tag", "tag",
        "tag", "maturity", "accuracy", "hostname", "uri", "unique_id"]
    assert event.severity == "CRITICAL"


def test_escaped_quotes_and_backslashes_in_data_are_kept_as_logged() -> None:
    data = r'Matched Data: \"admin\" found within ARGS:q: C:\\windows\\ \"x\"'
    (msg,) = parse(native(h=trailer(message(data=data)))).messages
    assert msg.data == data
    assert msg.severity == "CRITICAL" and msg.tags == ["attack-sqli"]


def test_value_ending_in_an_escaped_backslash() -> None:
    data = "ends with a backslash \\\\"
    (msg,) = parse(native(h=trailer(message(data=data)))).messages
    assert msg.data == data and msg.severity == "CRITICAL"


def test_field_separator_inside_an_escaped_value_does_not_forge_fields() -> None:
    data = r'x\"] [id \"1\"] [severity \"EMERGENCY\"] [tag \"forged'
    (msg,) = parse(native(h=trailer(message(data=data)))).messages
    assert msg.data == data
    assert msg.rule_id == "942100" and msg.severity == "CRITICAL"
    assert msg.tags == ["attack-sqli"]
    assert [key for key, _ in msg.fields].count("id") == 1


def test_message_continued_on_the_next_line() -> None:
    text = message(data="first line\nsecond line") + "\n"
    event = parse(native(h=trailer(text, denial(), phase=2)))
    assert event.rule_ids == ["942100", "949110"]
    assert event.messages[0].data == "first line\nsecond line"
    assert event.messages[0].severity == "CRITICAL"
    assert [key for key, _ in event.trailer][:3] == ["Message", "Message", "Action"]


def test_real_message_ending_in_a_newline() -> None:
    """native_request_body.log: ModSecurity logged 'JSON parser error: ... EOF\\n' (an empty
    line follows each Message: line) and no rule id."""
    event = parse(fixture("native_request_body.log"))
    assert [m.text.strip() for m in event.messages] == [
        "JSON parser error: parse error: premature EOF"] * 2
    assert event.rule_ids == [] and event.severity is None
    assert not event.intercepted and event.stopwatch["p2"] == 0
    assert event.anomaly_score is None  # phase 2 never ran: no score, not zero


def test_message_without_fields() -> None:
    (msg,) = parse(native(h=["Message: Rule processing failed."])).messages
    assert msg.text == "Rule processing failed." and msg.fields == [] and msg.rule_id is None


# --- anomaly scores ------------------------------------------------------------------------------


def crs3(score: int, categories: str) -> list[str]:
    return [denial(score=score), message(
        "Warning. Operator GE matched 5 at TX:inbound_anomaly_score.", rule="980130",
        msg=f"Inbound Anomaly Score Exceeded (Total Inbound Score: {score} - {categories}): "
        "individual paranoia level scores: 13, 0, 0, 0", severity=None,
        tags=("event-correlation",))]


def test_crs3_score_from_980130_with_categories() -> None:
    event = parse(native(h=trailer(message(), *crs3(
        13, "SQLI=10,XSS=0,RFI=0,LFI=0,RCE=3,PHPI=0,HTTP=0,SESS=0"), phase=2)))
    assert event.anomaly_score == 13 and event.score_source == "980130"
    assert event.scores == {"SQLI": 10, "XSS": 0, "RFI": 0, "LFI": 0, "RCE": 3, "PHPI": 0,
                            "HTTP": 0, "SESS": 0}


def test_crs3_score_from_949110_alone() -> None:
    event = parse(native(h=trailer(message(), denial(score=7), phase=2)))
    assert event.anomaly_score == 7 and event.score_source == "949110"


def test_crs2_total_score_with_categories() -> None:
    crs2 = message("Warning. Operator GE matched 5 at TX:anomaly_score.", rule="981176",
                   msg="Inbound Anomaly Score Exceeded (Total Score: 5, SQLi=0, XSS=5): "
                   "Last Matched Message: XSS Attack Detected")
    event = parse(native(h=trailer(message(rule="973300", msg="XSS"), crs2)))
    assert event.anomaly_score == 5
    assert event.scores == {"SQLI": 0, "XSS": 5}


def test_crs2_total_inbound_score() -> None:
    crs2 = message("Warning.", rule="981204", msg="Inbound Anomaly Score Exceeded "
                   "(Total Inbound Score: 23, SQLi=20, XSS=3): SQL Injection")
    event = parse(native(h=trailer(crs2)))
    assert event.anomaly_score == 23 and event.scores == {"SQLI": 20, "XSS": 3}


def crs4(inbound: int, outbound: int) -> str:
    return message(
        "Warning. Operator GE matched 5 at TX:blocking_inbound_anomaly_score.", rule="980170",
        msg=f"Anomaly Scores: (Inbound Scores: blocking={inbound}, detection={inbound}, "
        f"per_pl={inbound}-0-0-0, threshold=5) - (Outbound Scores: blocking={outbound}, "
        f"detection={outbound}, per_pl={outbound}-0-0-0, threshold=4) - (SQLI=0, "
        f"XSS={inbound}, RFI=0, LFI=0, RCE=0, PHPI=0, HTTP=0, SESS=0, COMBINED_SCORE="
        f"{inbound + outbound})", severity=None, tags=("reporting",))


def test_crs4_980170_takes_the_inbound_blocking_score_only() -> None:
    event = parse(native(h=trailer(message(rule="941100"), crs4(inbound=5, outbound=4))))
    assert event.anomaly_score == 5 and event.score_source == "980170"
    assert event.scores["XSS"] == 5 and event.scores["SQLI"] == 0
    for not_a_category in ("BLOCKING", "DETECTION", "THRESHOLD", "PER_PL"):
        assert not_a_category not in event.scores


def test_crs4_outbound_only_anomaly_gives_an_inbound_score_of_zero() -> None:
    event = parse(native(h=trailer(crs4(inbound=0, outbound=8))))
    assert event.anomaly_score == 0


def test_980130_is_preferred_over_949110_whatever_the_order() -> None:
    lines = crs3(9, "SQLI=9")
    event = parse(native(h=trailer(lines[1], message(), denial(score=4))))
    assert event.anomaly_score == 9 and event.score_source == "980130"


def test_outbound_scores_are_ignored() -> None:
    outbound = [message("Access denied with code 403 (phase 4). Operator GE matched 4 at "
                        "TX:outbound_anomaly_score.", rule="959100",
                        msg="Outbound Anomaly Score Exceeded (Total Score: 4)"),
                message("Warning.", rule="980140", severity=None,
                        msg="Outbound Anomaly Score Exceeded (score 4): individual paranoia "
                        "level scores: 4, 0, 0, 0")]
    event = parse(native(h=trailer(message(rule="951100", msg="SQL error leakage"),
                                   *outbound, phase=4)))
    assert event.anomaly_score != 4
    # CRS ran phase 2 (Stopwatch2 p2 > 0) and found no inbound rule: inbound score 0
    assert event.anomaly_score == 0 and event.score_source == "derived"
    assert event.phase == 4 and event.status == 403


def test_score_derived_from_inbound_detections_below_the_threshold() -> None:
    event = parse(native(h=trailer(message(rule="942100", severity="CRITICAL"),
                                   message(rule="920350", severity="WARNING"),
                                   message(rule="10006", severity="CRITICAL"))))
    assert event.anomaly_score == 8 and event.score_source == "derived"


def test_no_score_when_phase_2_never_ran_or_crs_is_absent() -> None:
    no_p2 = [line.replace("p2=861", "p2=0") for line in TRAILER_TAIL]
    blocklist = message("Access denied with code 403 (phase 1). IPmatch: \"127.0.1.66\" "
                        "matched at REMOTE_ADDR.", rule="10001", msg="blocklisted client")
    event = parse(native(h=[f"Message: {blocklist}", "Action: Intercepted (phase 1)"] + no_p2))
    assert event.anomaly_score is None and event.scores == {}
    no_crs = [line for line in TRAILER_TAIL if not line.startswith("Producer")]
    event = parse(native(h=[f"Message: {message()}"] + no_crs))
    assert event.anomaly_score is None


def test_body_is_capped() -> None:
    body = b"A" * (BODY_CAP * 3)
    event = parse(native(c=body))
    assert len(raw(event.request_body)) == BODY_CAP
    assert any("section C" in p for p in event.problems)
