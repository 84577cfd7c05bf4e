"""Cutting Serial logs into entries (modsec_tools.audit.serial.split_serial), native and JSON."""
from __future__ import annotations

import io
import os
import json

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.errors import ParseError
from modsec_tools.audit.serial import SerialSplitter, split_serial
from modsec_tools.tree.sources import iter_log_stream
from tests import corpus
from tests.test_parse_support import denial, dumps, fixture, json_entry, native, trailer


def entry(n: int, *, body: str | None = None, z: bool = True, eol: bytes = b"\n") -> bytes:
    """Native entry number ``n``: its own boundary and id."""
    uid = f"SERIALx{n:021d}"
    a = f"[28/Nov/2026:16:26:42.543458 +0100] {uid} 127.0.1.{n % 250} 40000 127.0.0.1 8080"
    return native(a=a, c=body, boundary=f"{n:08x}", h=trailer(denial(), phase=2), z=z, eol=eol)


def uid(n: int) -> str:
    return f"SERIALx{n:021d}"


def lines_of(data: bytes) -> list[bytes]:
    return io.BytesIO(data).readlines()


def ids(pieces) -> list[str]:
    """Ids of the pieces that have a readable section A (a piece cut inside it has none)."""
    found = []
    for piece in pieces:
        try:
            found.append(parse_entry(piece.data, "serial").unique_id)
        except ParseError:
            assert piece.data.startswith(b"--") and b"-Z--" not in piece.data
    return found


def test_many_entries_with_exact_offsets() -> None:
    entries = [entry(n) for n in range(300)]
    log = b"".join(entries)
    pieces = list(split_serial(lines_of(log)))
    assert [p.data for p in pieces] == entries
    assert [p.offset for p in pieces] == [sum(map(len, entries[:n])) for n in range(300)]
    assert not any(p.oversized for p in pieces)


def test_entries_come_out_as_soon_as_their_z_line_arrives() -> None:
    splitter = SerialSplitter()
    first, second = entry(1), entry(2)
    out = []
    for line in lines_of(first):
        out += list(splitter.feed(line))
    assert [p.data for p in out] == [first]  # before any later line, before close()
    for line in lines_of(second)[:-1]:
        assert list(splitter.feed(line)) == []
    assert [p.data for p in splitter.feed(lines_of(second)[-1])] == [second]
    assert list(splitter.close()) == []


def test_garbage_between_entries_is_ignored() -> None:
    garbage = [b"\n", b"random text\n", b"--12345678-B--\n", b"--1234567-A--\n",
               b"--zzzzzzzz-A--\n", b"   --12345678-A--\n", b"\x00\xff\xfe\n",
               b"--abcdef01-Z--\n", b"Message: Access denied with code 403\n"]
    log = b""
    for n in range(20):
        log += garbage[n % len(garbage)] + entry(n)
    log += b"trailing garbage without newline"
    pieces = list(split_serial(lines_of(log)))
    assert ids(pieces) == [uid(n) for n in range(20)]
    for piece in pieces:
        assert log[piece.offset:piece.offset + len(piece.data)] == piece.data


def test_entry_truncated_at_the_end_of_the_log() -> None:
    last = entry(9)
    log = entry(1) + entry(2) + last[:len(last) // 2]
    pieces = list(split_serial(lines_of(log)))
    assert len(pieces) == 3
    events = [parse_entry(p.data, "s") for p in pieces]
    assert [e.incomplete for e in events] == [False, False, True]
    assert events[2].unique_id == uid(9)
    assert pieces[2].data == last[:len(last) // 2]


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.8, 0.97])
def test_entry_truncated_in_the_middle_costs_only_itself(where: float) -> None:
    broken = entry(5)
    cut = broken[:int(len(broken) * where)].rsplit(b"\n", 1)[0] + b"\n"  # a crash between writes
    log = entry(1) + entry(2) + cut + b"".join(entry(n) for n in range(10, 30))
    pieces = list(split_serial(lines_of(log)))
    found = ids(pieces)
    assert len(pieces) == 23
    assert found[:2] == [uid(1), uid(2)]
    assert set(found) - {uid(5)} == {uid(n) for n in (1, 2, *range(10, 30))}
    assert len(found) == len(set(found))
    truncated = [p for p in pieces if b"--00000005-A--" in p.data]
    assert len(truncated) == 1 and truncated[0].data == cut
    # entries found inside the one that never ended could be forged: they are flagged
    assert [p.nested for p in pieces] == [False] * 3 + [True] * 20
    assert all(p.data.endswith(b"-Z--\n") for p in pieces if p is not truncated[0])


def test_entry_truncated_mid_line_before_complete_entries() -> None:
    broken = entry(5)[:200]  # no newline at the cut: the next A line is glued to it
    log = broken + b"\n" + entry(6) + entry(7)
    assert set(ids(split_serial(lines_of(log)))) >= {uid(6), uid(7)}


def test_two_truncated_entries_in_a_row() -> None:
    log = entry(1)[:150] + b"\n" + entry(2)[:300] + b"\n" + entry(3) + entry(4)
    found = ids(split_serial(lines_of(log)))
    assert found == [uid(1), uid(2), uid(3), uid(4)]


def test_a_boundary_glued_to_a_partial_line() -> None:
    """Regression (fixed in b99618a): after a crash mid-line the next writer's A boundary is
    glued to the partial line; that complete entry was lost."""
    log = entry(1)[:150] + entry(2) + entry(3)  # entry 1 stopped mid-line
    pieces = list(split_serial(lines_of(log)))
    assert ids(pieces) == [uid(1), uid(2), uid(3)]
    assert [p.data for p in pieces] == [entry(1)[:150], entry(2), entry(3)]
    assert [p.offset for p in pieces] == [0, 150, 150 + len(entry(2))]


def test_forged_a_boundary_inside_a_body_does_not_cut_the_entry() -> None:
    forged = entry(777).decode()  # a whole entry, with another id, inside a request body
    victim = entry(1, body="payload\n" + forged + "more payload")
    log = victim + entry(2)
    pieces = list(split_serial(lines_of(log)))
    assert [p.data for p in pieces] == [victim, entry(2)]
    assert not any(p.nested for p in pieces)
    event = parse_entry(pieces[0].data, "s")
    assert event.unique_id == uid(1) and not event.incomplete
    assert forged in event.request_body


def test_forged_a_boundary_inside_a_body_of_a_truncated_entry() -> None:
    """The forged boundary's entry is then read too: it *is* in the log, and the truncated
    entry is still reported."""
    victim = entry(1, body="x\n" + entry(777).decode() + "y")
    cut = victim[:victim.index(b"y\n--")]
    pieces = list(split_serial(lines_of(cut + entry(2))))
    found = ids(pieces)
    assert found[0] == uid(1) and uid(2) in found


def test_oversized_entry_is_flagged_and_cut_and_the_next_ones_survive() -> None:
    big = entry(1, body="A" * 5000 + "\n" + "B" * 5000)
    log = entry(0) + big + entry(2)
    pieces = list(split_serial(lines_of(log), max_entry=4096))
    assert [p.oversized for p in pieces] == [False, True, False]
    assert len(pieces[1].data) <= 4096
    assert pieces[1].data.startswith(big[:big.index(b"AAAA")])
    assert pieces[1].offset == len(entry(0))
    assert ids([pieces[0], pieces[2]]) == [uid(0), uid(2)]


def test_entry_exactly_at_max_entry_is_not_oversized() -> None:
    data = entry(1)
    (piece,) = split_serial(lines_of(data), max_entry=len(data))
    assert not piece.oversized and piece.data == data
    (piece,) = split_serial(lines_of(data), max_entry=len(data) - 1)
    assert piece.oversized


def test_crlf_native_entries() -> None:
    entries = [entry(n, eol=b"\r\n") for n in range(5)]
    pieces = list(split_serial(lines_of(b"".join(entries))))
    assert [p.data for p in pieces] == entries
    assert ids(pieces) == [uid(n) for n in range(5)]


def test_json_serial_lines() -> None:
    docs = [json_entry(transaction={"transaction_id": f"J{n:026d}"}) for n in range(5)]
    lines = [dumps(d) + (b"\r\n" if n % 2 else b"\n") for n, d in enumerate(docs)]
    log = b"".join(lines[:2]) + b"\n" + b"garbage\n" + b"".join(lines[2:])
    pieces = list(split_serial(lines_of(log)))
    assert [p.data for p in pieces] == [dumps(d) for d in docs]
    assert ids(pieces) == [f"J{n:026d}" for n in range(5)]
    assert pieces[1].offset == len(lines[0])


def test_json_lines_mixed_with_native_entries() -> None:
    doc = dumps(json_entry()) + b"\n"
    log = entry(1) + doc + entry(2) + doc
    assert ids(split_serial(lines_of(log))) == [uid(1), "awrzh1hRTcAzvyG5gAIU-AAAAAc",
                                                uid(2), "awrzh1hRTcAzvyG5gAIU-AAAAAc"]


def test_json_line_inside_a_native_entry_is_part_of_it() -> None:
    victim = entry(1, body=dumps(json_entry()).decode() + "\n")
    assert [p.data for p in split_serial(lines_of(victim))] == [victim]


def test_real_entries_concatenated() -> None:
    parts = [fixture(name) for name in ("native_multipart_blocked.log",
                                        "native_http09_blocked.log", "native_latin1_uri.log",
                                        "native_ipv6_upload.log", "native_request_body.log")]
    json_line = json.dumps(json.loads(fixture("json_blocked.json"))).encode() + b"\n"
    log = b"".join(parts) + json_line
    pieces = list(split_serial(lines_of(log)))
    assert [p.data for p in pieces] == parts + [json_line.rstrip(b"\n")]


def test_iter_log_stream_names_entries_by_offset() -> None:
    log = entry(1) + entry(2)
    items = list(iter_log_stream(io.BytesIO(log), "audit.log"))
    assert [i.source for i in items] == ["audit.log", f"audit.log:{len(entry(1))}"]


@pytest.mark.parametrize("run,expected_kind", [
    (run, b"{" if "json" in run else b"--")
    for run in corpus.runs("r5_serial", "r4_json_serial")])
def test_corpus_serial_logs_split_into_every_entry(run: str, expected_kind: bytes) -> None:
    path = corpus.run_dir(run) / "audit" / "audit_serial.log"
    log = path.read_bytes()
    with open(path, "rb") as stream:
        pieces = list(split_serial(stream))
    assert len(pieces) == corpus.run_info(run)["audit_entries"]
    for piece in pieces:
        assert piece.data.startswith(expected_kind) and not piece.oversized
        assert log[piece.offset:piece.offset + len(piece.data)] == piece.data
    found = ids(pieces)
    assert len(set(found)) == len(found)
    assert set(found) <= set(corpus.truth(run))


def test_corpus_serial_log_with_a_crash_in_the_middle() -> None:
    """Cut a real Serial log in the middle of an entry, as a crash would, and keep going."""
    path = corpus.run_dir("r5_serial") / "audit" / "audit_serial.log"
    pieces = list(split_serial(open(path, "rb")))
    log = path.read_bytes()
    victim = pieces[40]
    mutilated = log[:victim.offset + len(victim.data) // 2] + b"\n" + \
        log[victim.offset + len(victim.data):]
    found = ids(split_serial(lines_of(mutilated)))
    assert set(found) == set(ids(pieces))
    assert len(found) == len(pieces)


def test_truncated_entry_followed_by_more_than_max_entry_of_entries() -> None:
    """Regression (fixed in b99618a): once the open (truncated) entry passed max_entry, lines
    were no longer kept, so the complete entries after it were lost, and the small truncated
    entry was flagged oversized."""
    broken = entry(5)[:250]
    following = [entry(n, body="x" * 200) for n in range(10, 40)]
    log = broken + b"".join(following)
    pieces = list(split_serial(lines_of(log), max_entry=2000))
    assert [p.data for p in pieces] == [broken] + following
    assert not any(p.oversized for p in pieces)


@pytest.mark.parametrize("as_stream", [False, True])
def test_oversized_json_line_is_flagged(as_stream: bool) -> None:
    """Regression (fixed in b99618a): a JSON line of any size was yielded unflagged."""
    doc = dumps(json_entry(request={"body": "x" * 10_000}))
    log = doc + b"\n" + dumps(json_entry()) + b"\n"
    source = io.BytesIO(log) if as_stream else lines_of(log)
    pieces = list(split_serial(source, max_entry=4096))
    assert [p.oversized for p in pieces] == [True, False]
    assert doc.startswith(pieces[0].data) and len(pieces[0].data) <= 4096
    assert pieces[1].offset == len(doc) + 1 and pieces[1].data == dumps(json_entry())


def test_oversized_piece_is_a_prefix_of_the_entry() -> None:
    """Regression (fixed in b99618a): a line that did not fit was skipped but later shorter
    ones (and the Z line) were kept: an oversized piece looked like a whole entry."""
    big = entry(1, body="A" * 5000 + "\n" + "B" * 5000)
    (piece,) = split_serial(lines_of(big), max_entry=4096)
    assert piece.oversized and big.startswith(piece.data) and len(piece.data) == 4096


def test_a_long_line_from_a_stream_is_read_in_bounded_pieces() -> None:
    big = entry(1, body="C" * 3_000_000) + entry(2)
    pieces = list(split_serial(io.BytesIO(big), max_entry=65536))
    assert [p.oversized for p in pieces] == [True, False]
    assert len(pieces[0].data) == 65536 and big.startswith(pieces[0].data)
    assert pieces[1].data == entry(2)


# -- property: whatever is around them, complete entries come out exactly -----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_garbage = st.tuples(st.just("garbage"), st.text("abc xyz019-:", max_size=40))
#: A Serial log is all native or all JSON (SecAuditLogFormat is server-wide); native ones may
#: hold entries a crash cut short (ModSecurity writes a native entry in many writes).
_native_log = st.lists(st.one_of(st.tuples(st.just("entry"), st.integers(0, 1200)),
                                 st.tuples(st.just("cut"), st.floats(0.0, 0.999)), _garbage),
                       max_size=12)
_json_log = st.lists(st.one_of(st.tuples(st.just("json"), st.integers(0, 300)), _garbage),
                     max_size=12)


@settings(max_examples=int(os.environ.get("MODSEC_FUZZ_EXAMPLES", "200")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(segments=st.one_of(_native_log, _json_log), max_entry=st.integers(2000, 100_000),
       feeding=st.sampled_from(["stream", "lines"]))
def test_complete_entries_survive_any_surroundings(segments, max_entry, feeding) -> None:
    """Entries no larger than max_entry; oversized ones are covered above."""
    log = bytearray()
    expected: list[tuple[int, bytes]] = []
    starts: list[tuple[int, str]] = []
    for number, (kind, value) in enumerate(segments):
        starts.append((len(log), kind))
        if kind == "entry":
            data = entry(number, body="b" * value)
            expected.append((len(log), data))
        elif kind == "cut":
            whole = entry(number, body="c" * 300)
            a_line = whole.index(b"\n") + 1
            data = whole[:a_line + int((len(whole) - a_line - 20) * value)]
        elif kind == "garbage":
            data = value.encode() + b"\n"
        else:
            data = dumps(json_entry(request={"body": "j" * value})) + b"\n"
            expected.append((len(log), data[:-1]))
        log += data
    log = bytes(log)
    source = io.BytesIO(log) if feeding == "stream" else lines_of(log)
    pieces = list(split_serial(source, max_entry=max_entry))
    first_cut = next((offset for offset, kind in starts if kind == "cut"), len(log))
    # the cut entry itself is not nested (a piece starting exactly there), later ones may be
    assert all(not p.nested for p in pieces if p.offset <= first_cut)
    found = {(p.offset, p.data, p.oversized) for p in pieces}
    missing = [offset for offset, data in expected
               if (offset, data[:max_entry], len(data) > max_entry) not in found]
    assert not missing, f"complete entries at {missing} not found"
    previous_end = 0
    for piece in sorted(pieces, key=lambda p: p.offset):
        assert piece.offset >= previous_end, "pieces overlap"
        assert log[piece.offset:piece.offset + len(piece.data)] == piece.data
        assert len(piece.data) <= max_entry
        previous_end = piece.offset + len(piece.data)


def forged_body(extra: int) -> str:
    forged = native(a="[28/Nov/2026:16:26:42.543458 +0100] FORGEDx7z821rWArgDkswAAABA 6.6.6.6 "
                      "1234 127.0.0.1 8080", boundary="deadbeef",
                    h=trailer(denial(), phase=2)).decode()
    return "a=" + "x" * 100 + "\n" + forged + "y" * extra + "\n"


def trusted_clients(pieces) -> set:
    clients = set()
    for piece in pieces:
        if not piece.nested:
            try:
                clients.add(parse_entry(piece.data, "s").client_ip)
            except ParseError:
                pass
    return clients


def test_forged_entry_in_the_body_of_an_oversized_entry_is_not_emitted() -> None:
    """Regression (introduced in b99618a, fixed in 927b80f): an entry outgrowing max_entry was
    cut at an A boundary forged in its request body, and the forged A..Z came out as a
    complete entry: an attacker-chosen client and verdict reached the event line."""
    real = entry(1, body=forged_body(5000))
    log = real + entry(2)
    pieces = list(split_serial(io.BytesIO(log), max_entry=3000))
    assert "6.6.6.6" not in trusted_clients(pieces)
    assert [(p.offset, p.oversized, p.nested) for p in pieces] == \
        [(0, True, False), (len(real), False, False)]
    assert real.startswith(pieces[0].data) and pieces[-1].data == entry(2)


@pytest.mark.parametrize("extra", [50_000, 200_000])
def test_forged_entry_in_a_huge_body_is_at_most_an_untrusted_nested_piece(extra: int) -> None:
    """Far past max_entry the splitter gives up on the entry's own Z and reads again from the
    forged boundary: what it finds there is flagged nested, never a plain entry."""
    real = entry(1, body=forged_body(extra))
    pieces = list(split_serial(io.BytesIO(real + entry(2)), max_entry=3000))
    assert "6.6.6.6" not in trusted_clients(pieces)
    assert pieces[0].offset == 0 and not pieces[0].nested
    for piece in pieces:
        if b"FORGED" in piece.data[:200]:
            assert piece.nested


def test_truncated_oversized_entry_does_not_swallow_the_following_entries() -> None:
    """Regression (introduced in b99618a, fixed in 927b80f): once oversized, no A boundary was
    recorded, so every entry after a big truncated one was swallowed."""
    big = entry(1, body="z" * 5000)[:5200]
    following = [entry(n) for n in range(10, 15)]
    pieces = list(split_serial(io.BytesIO(big + b"".join(following)), max_entry=3000))
    assert pieces[0].offset == 0 and pieces[0].oversized and not pieces[0].nested
    assert [p.data for p in pieces[1:]] == following
    assert all(p.nested for p in pieces[1:])  # found after a crash: reported, not trusted
