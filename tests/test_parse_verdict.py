"""Verdict policy: blocked / detected / passed from interception, severity and score."""
from __future__ import annotations

from pathlib import Path

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.event import SEVERITIES, Event, Message
from modsec_tools.tree.sources import RawEntry, iter_index_log
from modsec_tools.audit.verdict import BLOCKED, DETECTED, PASSED, VerdictPolicy
from tests import corpus
from tests.test_parse_support import fixture


def event(*, intercepted: bool = False, score: int | None = None,
          severities: tuple[str | None, ...] = (), with_ids: bool = True) -> Event:
    messages = [Message("Warning.", ([("id", str(942100 + n))] if with_ids else []) +
                        ([("severity", s)] if s else [])) for n, s in enumerate(severities)]
    return Event(unique_id="x", timestamp=None, client_ip="1.2.3.4", peer_ip="1.2.3.4",
                 peer_port=1, local_ip=None, local_port=None, source="t",
                 intercepted=intercepted, anomaly_score=score, messages=messages)


DEFAULT = VerdictPolicy()


def test_defaults() -> None:
    assert DEFAULT.detect_min_severity == "CRITICAL" and DEFAULT.detect_min_score == 5


@pytest.mark.parametrize("score,severities", [(None, ()), (0, ()), (100, ("CRITICAL",)),
                                              (None, ("DEBUG",))])
def test_intercepted_is_always_blocked(score, severities) -> None:
    assert DEFAULT.verdict(event(intercepted=True, score=score, severities=severities)) == \
        BLOCKED


@pytest.mark.parametrize("score,expected", [(None, PASSED), (0, PASSED), (4, PASSED),
                                            (5, DETECTED), (6, DETECTED), (1000, DETECTED)])
def test_score_threshold(score, expected) -> None:
    assert DEFAULT.verdict(event(score=score)) == expected


@pytest.mark.parametrize("severity", SEVERITIES)
def test_severity_threshold_default_critical(severity: str) -> None:
    expected = DETECTED if SEVERITIES.index(severity) <= SEVERITIES.index("CRITICAL") else PASSED
    assert DEFAULT.verdict(event(severities=(severity,))) == expected


@pytest.mark.parametrize("minimum", SEVERITIES)
def test_severity_threshold_is_configurable(minimum: str) -> None:
    policy = VerdictPolicy(detect_min_severity=minimum)
    for severity in SEVERITIES:
        expected = DETECTED if SEVERITIES.index(severity) <= SEVERITIES.index(minimum) \
            else PASSED
        assert policy.verdict(event(severities=("DEBUG", severity))) == expected, severity


def test_score_threshold_is_configurable() -> None:
    policy = VerdictPolicy(detect_min_score=20)
    assert policy.verdict(event(score=19)) == PASSED
    assert policy.verdict(event(score=20)) == DETECTED


def test_messages_without_rule_id_or_severity_do_not_count() -> None:
    assert DEFAULT.verdict(event(severities=("EMERGENCY",), with_ids=False)) == PASSED
    assert DEFAULT.verdict(event(severities=(None, "bogus", "critical"))) == PASSED


def test_any_qualifying_message_is_enough() -> None:
    assert DEFAULT.verdict(event(severities=("NOTICE", "WARNING", "ALERT"))) == DETECTED


def test_unknown_severity_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown severity"):
        VerdictPolicy(detect_min_severity="critical")
    with pytest.raises(ValueError):
        VerdictPolicy(detect_min_severity="SEVERE")


@pytest.mark.parametrize("name,expected", [
    ("native_multipart_blocked.log", BLOCKED), ("native_http09_blocked.log", BLOCKED),
    ("json_blocked.json", BLOCKED),
    ("native_detectiononly_http09.log", DETECTED),   # 920430 CRITICAL, not intercepted
    ("native_latin1_uri.log", PASSED),               # 920350 WARNING, score 3
    ("native_request_body.log", PASSED),             # messages without rule id
])
def test_real_entries(name: str, expected: str) -> None:
    assert DEFAULT.verdict(parse_entry(fixture(name), name)) == expected


def test_real_warning_entry_with_a_lower_threshold() -> None:
    event_ = parse_entry(fixture("native_latin1_uri.log"), "x")
    assert VerdictPolicy(detect_min_severity="WARNING").verdict(event_) == DETECTED
    assert VerdictPolicy(detect_min_score=3).verdict(event_) == DETECTED


@pytest.mark.parametrize("run", corpus.runs("r1_relevant_concurrent",
                                             "r6_detectiononly_concurrent"))
def test_corpus_blocked_exactly_when_intercepted(run: str, tmp_path_factory) -> None:
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    storage = corpus.extract_storage(run, scratch)
    truth = corpus.truth(run)
    counts = {BLOCKED: 0, DETECTED: 0, PASSED: 0}
    for item in iter_index_log(str(corpus.run_dir(run) / "audit" / "index.log"), str(storage)):
        assert isinstance(item, RawEntry)
        event_ = parse_entry(item.data, item.source, index=item.index)
        verdict = DEFAULT.verdict(event_)
        row = truth[event_.unique_id]
        assert (verdict == BLOCKED) == row["intercepted"], event_.unique_id
        if verdict == PASSED:
            assert (row["anomaly_score_inbound"] or 0) < 5
        counts[verdict] += 1
    total = sum(counts.values())
    assert total == corpus.run_info(run)["audit_entries"]
    if run.startswith("r6"):
        assert counts[BLOCKED] == 0 and counts[DETECTED] > total // 4
    else:
        assert counts[BLOCKED] > total * 2 // 5
