"""The parser against the corpus (tests/corpus.py): every audit entry agrees with its truth
row, which was derived from Apache's access and error logs, not from the audit log."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from modsec_tools.audit.entry import parse_entry
from modsec_tools.audit.event import Event, raw
from modsec_tools.tree.sources import RawEntry, iter_path
from tests import corpus


def _events(paths: list[str], storage_dir: str | None = None) -> dict[str, Event]:
    events: dict[str, Event] = {}
    for path in paths:
        for item in iter_path(path, storage_dir):
            assert isinstance(item, RawEntry), f"{item.source}: {item.reason}"
            event = parse_entry(item.data, item.source, index=item.index)
            assert event.unique_id not in events, f"{event.unique_id} read twice"
            assert not event.incomplete, event.problems
            events[event.unique_id] = event
    return events


def _uri(row: dict) -> bytes:
    return base64.b64decode(row["uri_b64"]) if row.get("uri_b64") else row["uri"].encode()


def _disagreements(event: Event, row: dict) -> dict[str, tuple]:
    ours = {"client_ip": event.client_ip, "method": event.method, "uri": raw(event.uri),
            "status": event.status, "intercepted": event.intercepted,
            "phase": event.phase if event.intercepted else None,
            "rule_ids": set(event.rule_ids), "anomaly_score": event.anomaly_score}
    theirs = {"client_ip": row["client_ip"], "method": row["method"], "uri": _uri(row),
              "status": row["status"], "intercepted": row["intercepted"],
              "phase": row["intercept_phase"], "rule_ids": set(row["rule_ids"]),
              "anomaly_score": row["anomaly_score_inbound"]}
    return {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}


def _check_run(run: str, events: dict[str, Event]) -> None:
    truth = corpus.truth(run)
    info = corpus.run_info(run)
    assert len(events) == info["audit_entries"]
    invented = sorted(set(events) - set(truth))
    assert not invented, f"entries not in the access log: {invented[:5]}"
    expected = {uid for uid, row in truth.items() if row["audit_expected_heuristic"]}
    missed = sorted(expected - set(events))
    assert not missed, f"entries truth expects but the parser did not find: {missed[:5]}"
    wrong = {uid: diff for uid, event in events.items()
             if (diff := _disagreements(event, truth[uid]))}
    assert not wrong, f"{len(wrong)} entries disagree, e.g. {list(wrong.items())[:3]}"


@pytest.mark.parametrize("run", corpus.RUNS)
def test_every_entry_matches_truth(run: str, tmp_path_factory) -> None:
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    source = corpus.audit_input(run, scratch)
    index = corpus.run_dir(run) / "audit" / "index.log"
    if index.exists():  # Concurrent: read through the index, which also checks size + md5
        events = _events([str(index)], str(source))
    else:
        events = _events([str(source)])
    _check_run(run, events)


@pytest.mark.parametrize("run", corpus.runs("r1_relevant_concurrent", "r3_json_concurrent"))
def test_storage_tree_without_index_finds_the_same_entries(run: str, tmp_path_factory) -> None:
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    tree = _events([str(corpus.audit_input(run, scratch))])
    indexed = _events([str(corpus.run_dir(run) / "audit" / "index.log")],
                      str(corpus.audit_input(run, scratch)))
    assert set(tree) == set(indexed)
    for uid, event in tree.items():
        assert event.rule_ids == indexed[uid].rule_ids
        assert event.client_ip == indexed[uid].client_ip


def test_user_level_is_optional(tmp_path_factory) -> None:
    """Pre-2.9.3 trees have no <user> directory: the same entries are found."""
    scratch = Path(tmp_path_factory.getbasetemp()) / "corpus"
    storage = corpus.audit_input("r3_json_concurrent", scratch)
    old_layout = Path(tmp_path_factory.mktemp("old")) / "storage"
    shutil.copytree(storage / "www-data", old_layout)
    found = _events([str(old_layout)])
    assert len(found) == corpus.run_info("r3_json_concurrent")["audit_entries"]
