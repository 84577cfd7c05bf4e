"""Fuzzing the parser: mutated real entries and random bytes.

Property: ``parse_entry`` returns an Event or raises ParseError (with a reason), never anything
else, quickly (a hypothesis deadline guards against catastrophic backtracking); the event line
of any Event it returns is one printable ASCII line that ``parse_line`` reads back, and its
JSON form loads.

Seeds are real corpus entries: those in tests/data/, plus a sample of the Serial logs of the
corpus slices (tests/data/corpus). Under CI (CI=true) generation is derandomized so a
run is reproducible; set MODSEC_FUZZ_EXAMPLES=5000 (say) for a longer local hunt. A crashing
input found that way goes to tests/regressions/ (see ``save_regression``), where
``test_regression_inputs`` replays it forever.

Should a bug be found that cannot be fixed at once, give it a strict-xfail regression test,
describe its signature in KNOWN_BUGS (``known_bug`` then tolerates it here, so the fuzzer keeps
looking for new ones) and remove the entry when the bug is fixed. The bugs found so far (int()
on unbounded digit runs, empty bare tokens, lone surrogates from JSON escapes) are fixed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.errors import ParseError
from modsec_tools.audit.event import Event, raw
from modsec_tools.eventline import ID_CAP, format_event, format_line, parse_line
from modsec_tools.jsonout import dumps as event_json
from modsec_tools.audit.serial import split_serial
from modsec_tools.audit.verdict import VerdictPolicy
from tests import corpus
from tests.test_parse_support import DATA, REPO_ROOT

REGRESSIONS = REPO_ROOT / "tests" / "regressions"
EXAMPLES = int(os.environ.get("MODSEC_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=500, derandomize=os.environ.get("CI") == "true",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
PRINTABLE = re.compile(r"[\x20-\x7e]*")
POLICY = VerdictPolicy()


# -- seeds ---------------------------------------------------------------------------------------


def _corpus_seeds(limit: int = 40, max_size: int = 12_000) -> list[bytes]:
    seeds: list[bytes] = []
    for run in ("r5_serial", "r4_json_serial"):
        path = corpus.run_dir(run) / "audit" / "audit_serial.log"
        with open(path, "rb") as stream:
            pieces = [p.data for p in split_serial(stream) if len(p.data) <= max_size]
        step = max(1, len(pieces) // (limit // 2))
        seeds += pieces[::step][: limit // 2]
    return seeds


FIXTURES = sorted(p for p in DATA.iterdir() if p.suffix in (".log", ".json"))
SEEDS = [p.read_bytes() for p in FIXTURES] + _corpus_seeds()

# -- the property ----------------------------------------------------------------------------------

#: name -> predicate(exception, stage) for bugs tolerated while they are being fixed.
KNOWN_BUGS: dict = {}


def known_bug(exc: BaseException, stage: str) -> str | None:
    for name, predicate in KNOWN_BUGS.items():
        if predicate(exc, stage):
            return name
    return None


#: MODSEC_FUZZ_STRICT=1: report known bugs too (to collect their inputs for tests/regressions/).
STRICT = bool(os.environ.get("MODSEC_FUZZ_STRICT"))


class Failure(AssertionError):
    def __init__(self, message: str, label: str = "crash") -> None:
        super().__init__(message)
        self.label = label


def _tolerated(exc: BaseException, stage: str) -> bool:
    name = known_bug(exc, stage)
    if name and STRICT:
        raise Failure(f"known bug {name}: {type(exc).__name__}: {exc}"[:300], name) from exc
    return name is not None


def check(data: bytes) -> Event | None:
    """The property; returns the Event (None after a ParseError or a known bug)."""
    try:
        event = parse_entry(data, "fuzz")
    except ParseError as exc:
        if not str(exc).strip():
            raise Failure("ParseError without a reason") from exc
        return None
    except Exception as exc:  # noqa: BLE001 - the point of the test
        if _tolerated(exc, "parse"):
            return None
        raise Failure(f"parse_entry raised {type(exc).__name__}: {exc}"[:300]) from exc
    if not isinstance(event, Event) or not event.unique_id:
        raise Failure(f"parse_entry returned {event!r:.200}")
    try:
        line = format_event(event, "fuzz", POLICY.verdict(event))
        parsed = parse_line(line)
    except Exception as exc:  # noqa: BLE001
        if _tolerated(exc, "line"):
            return None
        raise Failure(f"event line: {type(exc).__name__}: {exc}"[:300]) from exc
    if "\n" in line or not PRINTABLE.fullmatch(line):
        raise Failure(f"event line is not one printable ASCII line: {line!r:.300}")
    if format_line(parsed) != line:
        raise Failure(f"event line does not round-trip: {line!r:.300}")
    if parsed.id != event.unique_id and not _id_capped(event.unique_id, parsed):
        raise Failure(f"id changed: {event.unique_id!r} -> {parsed.id!r}")
    json.loads(event_json(event, "x"))
    return event


def _id_capped(unique_id: str, parsed) -> bool:
    """An id longer than the event line's cap is cut there, and the line says so."""
    return ("id" in parsed.truncated and len(raw(parsed.id)) == ID_CAP
            and raw(unique_id).startswith(raw(parsed.id)))


def save_regression(data: bytes, label: str = "crash") -> Path:
    """Keep a failing input for test_regression_inputs (call it from a debugger or a hunt)."""
    REGRESSIONS.mkdir(exist_ok=True)
    path = REGRESSIONS / f"{label}-{hashlib.sha1(data).hexdigest()[:12]}.bin"
    path.write_bytes(data)
    return path


def run(data: bytes) -> None:
    try:
        check(data)
    except Failure as failure:
        if os.environ.get("MODSEC_FUZZ_SAVE"):
            _keep_shortest(data, failure.label)
        raise


_saved: dict[str, Path] = {}


def _keep_shortest(data: bytes, label: str) -> None:
    """While hypothesis shrinks, keep only the shortest failing input per label."""
    previous = _saved.get(label)
    if previous is not None:
        if previous.stat().st_size <= len(data):
            return
        previous.unlink()
    _saved[label] = save_regression(data, label)


# -- mutations --------------------------------------------------------------------------------------

TOKENS = [
    b'"', b"\\", b"\\\\", b'\\"', b"]", b"[", b'"] [', b' [id "', b'[id ""]', b" [file \"",
    b"\x00", b"\n", b"\r", b"\r\n", b"\n\n", b" ", b"\t", b"{", b"}", b",", b":",
    b"--", b"-A--\n", b"-Z--\n", b"\n--5f3c9a1e-A--\n", b"\n--deadbeef-Z--\n",
    b"Message: ", b"Apache-Error: ", b"Action: Intercepted (phase 9)\n", b"Stopwatch: ",
    b"Stopwatch2: 1 2; p2=", b"Engine-Mode: ", b"Access denied with code 999 (phase 0). ",
    b"(Total Score: ", b"Inbound Scores: blocking=", b"=", b"\xc2\xb2", b"\xff\xfe",
    b"\xed\xa0\x80", b"\\ud800", b"\\udc80", b"\\u0000", b"9" * 30, b"-0", b"--0500",
    b" --03-30]", b"HTTP/0.9", b"X-Forwarded-For: ", b"\x85", b"\xe2\x80\xa8",
]


def _offsets(data: bytes) -> list[int]:
    """Places where structure lives: line starts and ends, boundaries, field quotes."""
    marks = {0, len(data)}
    for needle in (b"\n", b"--", b'"', b"[", b"]", b":", b"{", b","):
        start = 0
        while len(marks) < 4000:
            found = data.find(needle, start)
            if found < 0:
                break
            marks.update((found, found + len(needle)))
            start = found + 1
    return sorted(marks)


@st.composite
def mutated_entries(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        offsets = _offsets(bytes(data))
        where = draw(st.one_of(st.sampled_from(offsets),
                               st.integers(0, len(data)))) if data else 0
        op = draw(st.sampled_from(["flip", "truncate", "insert", "insert", "delete",
                                   "duplicate", "repeat"]))
        if op == "flip" and data:
            index = min(where, len(data) - 1)
            data[index] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            data = data[:where]
        elif op == "insert":
            token = draw(st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=8)))
            data[where:where] = token
        elif op == "delete":
            data[where:where + draw(st.integers(1, 64))] = b""
        elif op == "duplicate":  # a region from one mark to another, e.g. a whole section
            end = draw(st.sampled_from([o for o in offsets if o >= where] or [where]))
            data[end:end] = data[where:end]
        elif op == "repeat":
            token = draw(st.sampled_from(TOKENS))
            data[where:where] = token * draw(st.integers(2, 300))
    return bytes(data)


@FUZZ
@given(mutated_entries())
def test_mutated_real_entries(data: bytes) -> None:
    run(data)


@FUZZ
@given(st.one_of(
    st.binary(max_size=2000),
    st.binary(max_size=2000).map(lambda b: b"--5f3c9a1e-A--\n" + b),
    st.binary(max_size=2000).map(lambda b: b"{" + b),
    st.lists(st.sampled_from(TOKENS), max_size=60).map(b"".join),
    st.lists(st.sampled_from(TOKENS), max_size=60).map(
        lambda t: b"--5f3c9a1e-A--\n[28/Nov/2026:16:26:42 +0100] X 1.2.3.4 1 5.6.7.8 80\n"
                  b"--5f3c9a1e-H--\n" + b"".join(t)),
))
def test_random_bytes(data: bytes) -> None:
    run(data)


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                    st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) |
                    st.dictionaries(st.sampled_from(
                        ["transaction", "transaction_id", "time", "request", "response",
                         "audit_data", "headers", "messages", "action", "intercepted",
                         "phase", "status", "request_line", "body", "remote_address",
                         "remote_port", "producer", "stopwatch", "engine_mode"]) | st.text(
                        max_size=5), children, max_size=6), max_leaves=30),
       st.sampled_from(SEEDS))
def test_json_shapes_grafted_onto_a_real_entry(value, seed: bytes) -> None:
    """Replace one part of a real JSON entry with an arbitrary JSON value."""
    if not seed.startswith(b"{"):
        seed = (DATA / "json_blocked.json").read_bytes()
    document = json.loads(seed)
    for section in ("transaction", "request", "response", "audit_data"):
        patched = dict(document)
        patched[section] = value
        run(json.dumps(patched).encode())
        if isinstance(document.get(section), dict):
            for key in list(document[section])[:3]:
                inner = dict(document)
                inner[section] = {**document[section], key: value}
                run(json.dumps(inner).encode())


# -- exhaustive, deterministic sweeps ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["native_request_body.log", "json_blocked.json",
                                  "native_latin1_uri.log"])
def test_truncation_at_every_byte(name: str) -> None:
    data = (DATA / name).read_bytes()
    for end in range(len(data) + 1):
        run(data[:end])


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_truncation_and_deletion_at_every_region(path: Path) -> None:
    data = path.read_bytes()
    offsets = _offsets(data)
    for where in offsets[::max(1, len(offsets) // 250)]:
        run(data[:where])
        run(data[:where] + data[where + 1:])       # drop one structural byte
        run(data[:where] + b"\x00" + data[where:])  # and insert a NUL there


def test_every_section_duplicated_dropped_or_swapped() -> None:
    data = (DATA / "native_multipart_blocked.log").read_bytes()
    boundary = data[2:10]
    starts = [m.start() for m in re.finditer(rb"--" + boundary + rb"-[A-Z]--\n", data)]
    spans = list(zip(starts, starts[1:] + [len(data)]))
    for a, b in spans:
        run(data[:b] + data[a:b] + data[b:])      # duplicated
        run(data[:a] + data[b:])                  # dropped
        for c, d in spans:
            if (c, d) > (a, b):
                run(data[:a] + data[c:d] + data[b:c] + data[a:b] + data[d:])  # swapped


def test_single_byte_flips_everywhere_in_a_small_entry() -> None:
    data = bytearray((DATA / "native_request_body.log").read_bytes())
    for index in range(len(data)):
        for mask in (0x01, 0x20, 0x80):
            data[index] ^= mask
            run(bytes(data))
            data[index] ^= mask


# -- replay of saved inputs ----------------------------------------------------------------------

#: Saved inputs that still reproduce an unfixed bug: file stem prefix → reason (strict xfail).
KNOWN_REGRESSIONS: dict[str, str] = {}


def _regression_params():
    for path in sorted(REGRESSIONS.glob("*.bin")) if REGRESSIONS.exists() else []:
        label = path.stem.rsplit("-", 1)[0]
        marks = ([pytest.mark.xfail(strict=True, reason=KNOWN_REGRESSIONS[label])]
                 if label in KNOWN_REGRESSIONS else [])
        yield pytest.param(path, marks=marks, id=path.name)


@pytest.mark.parametrize("path", list(_regression_params()))
def test_regression_inputs(path: Path) -> None:
    """Saved inputs are replayed strictly: no known-bug tolerance."""
    data = path.read_bytes()
    try:
        event = parse_entry(data, path.name)
    except ParseError as exc:
        assert str(exc).strip()
        return
    line = format_event(event, "fuzz", POLICY.verdict(event))
    assert PRINTABLE.fullmatch(line)
    assert format_line(parse_line(line)) == line


def test_the_regression_directory_is_replayed() -> None:
    assert REGRESSIONS.is_dir() and list(REGRESSIONS.glob("*.bin"))


def test_known_bug_tolerance_is_narrow(monkeypatch) -> None:
    """The tolerance mechanism: only a listed signature is tolerated, and only when it occurs;
    anything else parse_entry raises is a failure."""
    monkeypatch.setitem(KNOWN_BUGS, "demo", lambda exc, stage: stage == "parse"
                        and isinstance(exc, LookupError))
    assert known_bug(KeyError("x"), "parse") == "demo"
    assert known_bug(KeyError("x"), "line") is None
    assert known_bug(ValueError("x"), "parse") is None
    real = (DATA / "native_request_body.log").read_bytes()
    assert check(real) is not None and check(b"") is None

    def broken(*args, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(f"{__name__}.parse_entry", broken)
    with pytest.raises(Failure, match="RuntimeError"):
        check(real)


# -- the message fields' fast path against their definition ----------------------------------

_FIELD_TEXT = st.lists(st.sampled_from(list('ab "\\[] \né') + ["id", "tag", "x-y", '"] [']),
                       max_size=30).map("".join)


@st.composite
def message_texts(draw) -> str:
    """Messages built like ModSecurity's (keys, escaped values), then often damaged."""
    fields = draw(st.lists(st.tuples(st.sampled_from(["file", "id", "msg", "tag", "data",
                                                      "odd key", "x-y", "ünï", ""]),
                                     _FIELD_TEXT), max_size=6))
    if draw(st.booleans()):  # as ModSecurity writes values
        fields = [(key, value.replace("\\", "\\\\").replace('"', '\\"'))
                  for key, value in fields]
    text = "Warning. head" + "".join(f' [{key} "{value}"]' for key, value in fields)
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(_FIELD_TEXT) + text[at + draw(st.integers(0, 3)):]
    return text


@FUZZ
@given(message_texts())
@example('W. [file"] [id "a "b"]')
@example('W. [file ""\\"]')
@example('W. [file "\\\n"]')
def test_message_fields_fast_path_equals_the_regex(text: str) -> None:
    """``_split_fields`` (which uses a simpler pattern when there is no backslash) must find
    exactly the fields the regex (the definition) finds."""
    from modsec_tools.audit.messages import _FIELD, _split_fields
    start = text.find(' [')
    if start != -1:
        assert _split_fields(text, start) == _FIELD.findall(text, start)
