"""Hostile and broken input: every failure is a ParseError with a reason, nothing is slow.

The storage tree is often world-writable, so an entry file may be forged by anyone on the
host: besides what ModSecurity writes, the parser must survive what an attacker writes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.errors import IntegrityError, ParseError
from modsec_tools.audit.event import Event, raw
from modsec_tools.audit.native import BODY_CAP
from tests.test_parse_support import (REPO_ROOT, SECTION_A, dumps, fixture, json_entry, message,
                                      native, trailer)

# -- every failure is a ParseError -----------------------------------------------------------

BAD = {
    "empty": b"",
    "blank": b" \n\r\n\t ",
    "nul bytes": b"\x00" * 100,
    "random binary": bytes((i * 7919 + 13) % 256 for i in range(4096)),
    "utf-16 json": '{"transaction": {}}'.encode("utf-16"),
    "bom json": b"\xef\xbb\xbf" + dumps(json_entry()),
    "dashes only": b"--",
    "boundary without newline": b"--5f3c9a1e-A--",
    "short boundary": b"--5f3c9a-A--\n" + SECTION_A.encode() + b"\n",
    "non-hex boundary": b"--5f3c9a1g-A--\n" + SECTION_A.encode() + b"\n",
    "starts with B": native().replace(b"-A--", b"-Q--", 1),
    "empty section A": native(a=""),
    "section A garbage": native(a="hello world"),
    "section A bad time": native(a=SECTION_A.replace("28/Nov/2026", "28/Foo/2026")),
    "section A impossible date": native(a=SECTION_A.replace("28/Nov", "31/Nov")),
    "section A hour 25": native(a=SECTION_A.replace(":16:26:42", ":25:26:42")),
    "section A offset 99h": native(a=SECTION_A.replace("+0100", "+9900")),
    "section A port not a number": native(a=SECTION_A.replace("57425", "port")),
    "section A only time": native(a="[28/Nov/2026:16:26:42 +0100]"),
    "plain text": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "json array": b"[" * 10 + b"]" * 10,
    "json deep 100k": b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "json deep objects": b'{"x": ' + b'{"a": ' * 100_000,
    "json number": b"{" + b'"transaction": 1e999999}',
    "json huge int": b'{"transaction": ' + b"9" * 5000 + b"}",
    "json no id": dumps(json_entry(drop=("transaction.transaction_id",))),
    "json truncated": dumps(json_entry())[:-40],
    "index line": fixture("native_detectiononly_http09.index"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_a_parse_error_with_a_reason(name: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_entry(BAD[name], name)
    assert str(info.value).strip()


def test_integrity_error_is_a_parse_error() -> None:
    assert issubclass(IntegrityError, ParseError) and issubclass(ParseError, ValueError)


def test_index_line_with_another_id_is_refused() -> None:
    from modsec_tools.audit.indexlog import parse_index_line
    index = parse_index_line(fixture("native_detectiononly_http09.index").decode())
    with pytest.raises(ParseError, match="differs from the index"):
        parse_entry(fixture("native_http09_blocked.log"), "x", index=index)


# -- truncated entries: an Event flagged incomplete, with the reason -------------------------


def test_real_entry_truncated_at_every_line_is_incomplete_or_a_parse_error() -> None:
    data = fixture("native_multipart_blocked.log")
    ends = [i + 1 for i, byte in enumerate(data) if byte == 0x0A][:-1]
    seen_events = 0
    for end in ends + [len(data) - 3, len(data) // 2 + 1]:
        try:
            event = parse_entry(data[:end], "cut")
        except ParseError as exc:
            assert end < 120 and str(exc)  # only a cut inside section A may fail
            continue
        seen_events += 1
        assert event.incomplete, end
        assert any("Z" in p for p in event.problems)
        assert event.unique_id == "awry0ggx7z821rWArgDm9gAAABQ"
    assert seen_events >= len(ends) - 2


# -- size: a 50 MB body parses quickly and is not kept whole -------------------------------


def test_50mb_request_body_is_fast_and_capped() -> None:
    body = (b"a=" + b"\xe9x" * (25 * 1024 * 1024))[: 50 * 1024 * 1024]
    data = native(b="POST /upload HTTP/1.1\nHost: x\nContent-Length: 52428800\n", c=body,
                  h=trailer(message(), phase=2))
    started = time.process_time()
    event = parse_entry(data, "big")
    elapsed = time.process_time() - started
    assert elapsed < 5, elapsed
    assert len(raw(event.request_body)) == BODY_CAP
    assert raw(event.request_body) == body[:BODY_CAP]
    assert event.intercepted and event.rule_ids == ["942100"] and not event.incomplete
    assert any("52428800" in p and "section C" in p for p in event.problems)


def test_50mb_json_body_is_capped() -> None:
    data = dumps(json_entry(request={"body": ["x" * (50 * 1024 * 1024)]}))
    started = time.process_time()
    event = parse_entry(data, "big.json")
    assert time.process_time() - started < 5
    assert len(event.request_body) == BODY_CAP


def test_many_messages_and_headers_stay_fast() -> None:
    data = native(b="GET / HTTP/1.1\n" + "X-A: b\n" * 50_000,
                  h=trailer(*[message()] * 5_000, phase=2))
    started = time.process_time()
    event = parse_entry(data, "many")
    assert time.process_time() - started < 5
    assert len(event.request_headers) == 50_000 and len(event.rule_ids) == 5_000


# -- numbers: a digit run never escapes as ValueError ---------------------------------------
# Regressions (fixed in b99618a): int() on an unbounded \d+ or a str.isdigit() match raised
# ValueError for 5000-digit runs (CPython's 4300-digit limit) and for '²' (isdigit() is True).


def _no_crash(data: bytes) -> Event | None:
    try:
        return parse_entry(data, "hostile")
    except ParseError as exc:
        assert str(exc)
        return None


def test_section_a_port_with_5000_digits() -> None:
    assert _no_crash(native(a=SECTION_A.replace("57425", "9" * 5000))) is None


def test_section_a_port_in_non_ascii_digits_is_not_a_number() -> None:
    event = _no_crash(native(a=SECTION_A.replace("57425", "\u0665\u0667")))
    assert event is None or event.peer_port is None


def test_stopwatch_with_a_superscript_digit() -> None:
    event = _no_crash(native(h=["Stopwatch: \u00b2 5 (- - -)"]))
    assert event is not None and event.stopwatch_start_us is None


def test_stopwatch2_with_5000_digits() -> None:
    event = _no_crash(native(h=["Stopwatch2: 1 2; combined=" + "9" * 5000 + ", p1=7"]))
    assert event is not None and "combined" not in event.stopwatch and event.stopwatch["p1"] == 7


def test_anomaly_score_with_5000_digits() -> None:
    event = _no_crash(native(h=trailer(message(rule="949110", msg="Inbound Anomaly Score "
                                               "Exceeded (Total Score: " + "9" * 5000 + ")"))))
    assert event is not None and event.anomaly_score in (0, None)


def test_rule_id_with_a_superscript_digit() -> None:
    event = _no_crash(native(h=trailer(message(rule="\u00b2"))))  # CRS producer, p2 > 0
    assert event is not None and event.rule_ids == ["\u00b2"]
    assert event.anomaly_score == 0 and event.score_source == "derived"


def test_intercepted_phase_in_non_ascii_digits() -> None:
    event = _no_crash(native(h=["Action: Intercepted (phase \u0662)"]))
    assert event is not None and event.phase in (None, 2)


# -- no quadratic paths --------------------------------------------------------------------------

#: Inputs of a few MB that a linear parser reads in well under 100 ms of CPU. Each is parsed in
#: a child process that measures its CPU time (so a loaded machine does not make the test
#: flaky) and is killed after WALL seconds: a quadratic path (minutes on the 64 MB an entry may
#: have) fails within seconds instead of stalling the suite.
BOUND = 1.0
WALL = 10.0

HOSTILE = {
    "whitespace before fields": "native(h=['Message: ' + ' ' * 60_000 + 'x'])",
    "message continued on 400k lines": "native(h='Message: x\\n' + 'y\\n' * 400_000)",
    "300k folded header lines": "native(b='GET / HTTP/1.1\\nX: a\\n' + ' b\\n' * 300_000)",
    "300k false boundaries in a body": "native(c=('--' + BOUNDARY + '-x\\n') * 300_000)",
    "many messages": "native(h=trailer(*[message()] * 5_000))",
    "long header": "native(b='GET / HTTP/1.1\\nX: ' + 'a' * 5_000_000 + '\\n')",
    "unknown sections": "native(extra=[('X', '')] * 30_000)",
    "open field brackets": "native(h=['Message: x' + ' [tag \"a' * 200_000])",
    "escaped quotes": "native(h=['Message: x [file \"' + '\\\\\\\\\"] [' * 200_000])",
    "json many headers": "dumps(json_entry(request={'headers': {f'h{i}': 'v' for i in "
                         "range(50_000)}}))",
}

#: Regressions (fixed in b99618a): these four were quadratic.
_WAS_QUADRATIC = {
    "whitespace before fields": "messages._FIRST_FIELD (r'\\s*\\[\\w+ \"') is searched at every "
    "offset of a whitespace run: O(n^2); search r'\\[\\w+ \"' and rstrip the head instead",
    "message continued on 400k lines": "native._trailer_lines rebuilds the value string for each "
    "continuation line: O(n^2); collect the lines in a list and join once",
    "300k folded header lines": "http.headers rebuilds the header value for each folded line: "
    "O(n^2); collect the pieces and join once",
    "300k false boundaries in a body": "native.split_sections does body += piece for every "
    "'\\n--<boundary>-' that is not a boundary line: O(n^2) bytes copying; collect and join",
}


def _bounded_parse(expression: str, wall: float = WALL) -> tuple[str, float | None]:
    code = textwrap.dedent(f"""
        import sys, time
        from tests.test_parse_support import *
        from modsec_tools.audit.entry import parse_entry
        from modsec_tools.audit.errors import ParseError
        data = {expression}
        print("ready", len(data), flush=True)
        started = time.process_time()
        try:
            parse_entry(data, "hostile")
            outcome = "event"
        except ParseError:
            outcome = "ParseError"
        print(outcome, time.process_time() - started, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        ready = child.stdout.readline()
        assert ready.startswith("ready"), child.stderr.read()
        try:
            child.wait(timeout=wall)  # the output is one short line: no pipe can fill up
        except subprocess.TimeoutExpired:
            return "timeout", None
        out, err = child.stdout.read(), child.stderr.read()  # buffered data included
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == 0, err
    outcome, seconds = out.split()
    return outcome, float(seconds)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_entry_parses_in_linear_time(name: str) -> None:
    outcome, seconds = _bounded_parse(HOSTILE[name])
    assert outcome in ("event", "ParseError"), f"{name}: still parsing after {WALL} s"
    assert seconds < BOUND, f"{name}: {seconds:.2f} s of CPU"


def test_bounded_parse_really_times_out() -> None:
    """The guard itself: an expression that never finishes building is not 'ready'; one whose
    parse is slow is reported as a timeout."""
    outcome, _ = _bounded_parse("type('slow', (bytes,), {'__getitem__': lambda s, i: "
                                "time.sleep(60)})(b'--x')", wall=1.0)
    assert outcome == "timeout"

