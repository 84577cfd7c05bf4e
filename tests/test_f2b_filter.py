"""filter.d/modsec.conf and modsec-recidive.conf against their sample logs, with the real fail2ban-regex."""
from __future__ import annotations

import datetime as dt
import ipaddress
import random
import tempfile
import time
from pathlib import Path

import pytest

from tests.f2b_harness import (BUNDLE, FILTER, SAMPLES, check_samples, filter_spec, parse_samples,
                               run_fail2ban_regex)

RECIDIVE = BUNDLE / "filter.d" / "modsec-recidive.conf"
MODES = ("blocked", "detected", "aggressive")


def test_modsec_samples_meet_every_failjson_expectation():
    problems, checks = check_samples(SAMPLES / "modsec", FILTER)
    assert problems == []
    assert checks >= 100


def test_recidive_samples_meet_every_failjson_expectation():
    problems, checks = check_samples(SAMPLES / "modsec-recidive", RECIDIVE)
    assert problems == []
    assert checks >= 10


def test_samples_cover_every_mode_both_families_and_injection():
    sample = parse_samples(SAMPLES / "modsec")
    for mode in MODES:
        hosts = {c.expect["host"] for c in sample.cases if c.expect.get("match")
                 and ({"mode": mode} in c.options)}
        assert any(":" in h for h in hosts) and any("." in h for h in hosts), mode
    # the default (no options) behaves as blocked and is exercised
    assert any({} in c.options and c.expect.get("match") for c in sample.cases)
    assert len(sample.forged) >= 3
    text = (SAMPLES / "modsec").read_text()
    for forged in sample.forged:
        assert f"client={forged}" in text, f"{forged} is never actually injected"
    assert "\\x0a" in text                      # an escaped newline carrying a forged line
    assert sum(1 for c in sample.cases if not c.expect.get("match")) >= 20


def test_harness_catches_a_naive_filter():
    """The injection set is strong enough to break an unanchored filter (meta-test)."""
    with tempfile.TemporaryDirectory() as tmp:
        naive = Path(tmp) / "naive.conf"
        naive.write_text("[Definition]\nfailregex = client=<HOST> verdict=blocked\n")
        problems, _ = check_samples(SAMPLES / "modsec", naive)
    assert any("FORGED" in p for p in problems)


# --- contract with the real writer -----------------------------------------------------

_HOSTILE = [b" client=1.2.3.4 verdict=blocked", b"\n", b"\r\n", b'"', b"\\", b'\\"', b"\x00",
            b"\xff\xfe", b"2026-11-28T16:26:42.659421+01:00 modsec[x]: client=6.6.6.6 ", b"\t",
            b"client=2001:db8:bad::666 ", b"+", b"=", b"-", b" ua=\"", b"%0a", b"\x1b[31m"]


def _hostile_value(rng: random.Random, cap: int) -> bytes | None:
    if rng.random() < 0.1:
        return None
    parts = [rng.choice(_HOSTILE) if rng.random() < 0.6 else bytes(rng.randrange(256) for _ in range(3))
             for _ in range(rng.randrange(1, 12))]
    value = b"".join(parts)
    if rng.random() < 0.05:
        value = value * (cap // max(1, len(value)) + 2)
    return value


def _writer_lines(count: int, seed: int) -> list[tuple[str, str | None, str]]:
    """(line, client, verdict) produced by modsec_tools.eventline with hostile request data;
    every fourth line has no bannable client (client None)."""
    from modsec_tools.eventline import CAPS, EventLine, format_line
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        # the writer gets normalized addresses (clientip.normalize_ip): compressed IPv6
        client = str(ipaddress.ip_address(f"198.18.{n // 250}.{n % 250 + 1}" if n % 2
                                          else f"2001:db8:{n:x}::{n % 7 + 1}"))
        verdict = ("blocked", "detected", "passed")[n % 3]
        values = {name: _hostile_value(rng, cap) for name, cap in CAPS.items()}
        cut = [name for name, v in values.items() if v is not None and len(v) > CAPS[name]]
        values = {name: (v[:CAPS[name]] if v is not None else None) for name, v in values.items()}
        noban = ("proxy-only", "loopback", "multicast")[n // 4 % 3] if n % 4 == 3 else None
        line = EventLine(f"2026-11-28T16:{n // 60 % 60:02d}:{n % 60:02d}.{n:06d}+01:00", "web1",
                         "-" if noban else client, verdict, "403", "2", str(n), "CRITICAL",
                         ["949110", str(900000 + n)], f"Z0r{n:06d}CoAAEAAF", values["method"],
                         values["host"], values["uri"], values["ua"], cut, noban=noban,
                         addr=client if noban else "-")
        rows.append((format_line(line), None if noban else client, verdict))
    return rows


@pytest.mark.parametrize("mode", MODES)
def test_writer_output_with_hostile_request_data_bans_only_the_real_client(mode, tmp_path):
    rows = _writer_lines(300, seed=5)
    log = tmp_path / "events.log"
    log.write_text("".join(line + "\n" for line, _, _ in rows))
    found = run_fail2ban_regex(log, filter_spec({"mode": mode}))
    wanted = {"blocked": {"blocked"}, "detected": {"detected"}, "aggressive": {"blocked", "detected"}}[mode]
    expected = {line: client for line, client, verdict in rows if verdict in wanted and client}
    got = {m.line: m.ip for m in found}
    assert got == expected
    assert sum(1 for _, client, verdict in rows if verdict in wanted and not client) >= 20


def test_a_megabyte_unique_id_is_matched_with_its_cut_id(tmp_path):
    """Today's main handed fail2ban a 1 MB line (and a 1 MB F-UNIQUEID)."""
    from modsec_tools.audit.event import Event
    from modsec_tools.eventline import ID_CAP, format_event
    stamp = dt.datetime(2026, 11, 28, 16, 26, 42, tzinfo=dt.timezone.utc)
    event = Event(unique_id="U" * (1 << 20), timestamp=stamp, client_ip="192.0.2.77",
                  peer_ip="192.0.2.77", peer_port=1, local_ip=None, local_port=None,
                  source="t", status=403, phase=2, rule_ids=["949110"])
    line = format_event(event, "web1", "blocked")
    assert len(line) < 1000
    log = tmp_path / "events.log"
    log.write_text(line + "\n")
    (found,) = run_fail2ban_regex(log, filter_spec({}))
    assert found.ip == "192.0.2.77" and found.tags["uniqueid"] == "U" * ID_CAP


def test_filter_time_is_linear_on_worst_case_lines(tmp_path):
    """Maximal lines full of escapes and near-miss quotes: no catastrophic backtracking."""
    uri = ('\\\\\\"' * 700)[:4000]
    ua = ("\\x0a client=1.2.3.4 " * 60)
    good = ('2026-11-28T16:26:42.659421+01:00 modsec[web1]: client=192.0.2.1 verdict=blocked status=403 '
            'phase=2 score=13 severity=CRITICAL rules=949110 id=abc method="GET" host="h" '
            f'uri="{uri}" ua="{ua}"')
    near_miss = good[:-1]                       # unterminated last field
    log = tmp_path / "worst.log"
    log.write_text((good + "\n" + near_miss + "\n") * 1000)
    started = time.monotonic()
    found = run_fail2ban_regex(log, filter_spec({"mode": "aggressive"}))
    elapsed = time.monotonic() - started
    assert len(found) == 1000 and {m.ip for m in found} == {"192.0.2.1"}
    assert elapsed < 30, f"{elapsed:.1f}s for 2000 worst-case lines"
