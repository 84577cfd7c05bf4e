"""Outcomes cross from the examiner processes as plain tuples: nothing may be lost on the way."""
from __future__ import annotations

import os
import pickle


from modsec_tools.audit.clientip import Proxies
from modsec_tools.pipeline.examine import Decision, ExamineSettings, Outcome, Proof, examine
from modsec_tools.sinks.archive import ArchiveEntry
from modsec_tools.sinks.database import EventRow
from modsec_tools.sinks.eventlog import EventLine
from modsec_tools.sinks.jsonlines import JsonLine
from modsec_tools.tree.storage import EntryRef, StorageTree
from modsec_tools.audit.verdict import VerdictPolicy

from tests import corpus
from tests.ingest_helpers import tree_files_from_tar


def test_outcomes_survive_the_wire(tmp_path):
    corpus.require_corpus()
    renderers = (EventLine(), ArchiveEntry(), JsonLine(), EventRow())
    rules = ExamineSettings("n", VerdictPolicy(), Proxies(), 1 << 20, 0.0, 3600.0, False, renderers)
    tree = StorageTree(str(tmp_path))
    for relpath, data in list(tree_files_from_tar("r1_relevant_concurrent").items())[:50]:
        ref = EntryRef.from_relpath(relpath)
        os.makedirs(tmp_path.joinpath(*ref.dirs), exist_ok=True)
        tmp_path.joinpath(*ref.dirs, ref.name).write_bytes(data)
        outcome = examine(tree, ref, Proof.CLOSED, None, rules)
        assert outcome.decision is Decision.TAKE and len(outcome.pieces) == len(renderers)
        wire = pickle.loads(pickle.dumps(outcome.to_wire(renderers)))
        back = Outcome.from_wire(ref, wire, renderers)
        assert back == outcome
        assert back.ref.relpath == relpath
    tree.release()


def test_a_quarantine_outcome_survives_the_wire():
    outcome = Outcome(EntryRef(("20261128", "20261128-1626"), "20261128-162642-x"),
                      Decision.QUARANTINE, "no Z boundary")
    renderers = (EventLine(), EventRow())
    wire = pickle.loads(pickle.dumps(outcome.to_wire(renderers)))
    assert Outcome.from_wire(outcome.ref, wire, renderers) == outcome


def test_a_worker_keeps_more_parsed_messages_than_the_daemon(tmp_path, monkeypatch):
    """A scanner cycling through its payloads makes more distinct messages than the daemon's
    cache holds (1,024), and an LRU cache smaller than the cycle hits nothing: a worker
    keeps WORKER_MESSAGES."""
    from modsec_tools.pipeline import examine as examine_module
    from modsec_tools.audit import messages
    texts = [f'Warning. Match of "x{n}" [file "f"] [id "{n}"]' for n in range(1500)]
    messages.keep_messages(1024)  # the daemon's, empty
    monkeypatch.setattr(examine_module, "_die_with_parent", lambda: None)  # not pytest's
    try:
        for text in texts * 2:
            messages.parse_message(text)
        assert messages._cached_message.cache_info().hits == 0  # the default: cycles miss
        examine_module._init_worker(str(tmp_path), ExamineSettings("n", VerdictPolicy(), Proxies(), 1, 0.0,
                                                         1.0, False))
        for text in texts * 2:
            messages.parse_message(text)
        info = messages._cached_message.cache_info()
        assert info.maxsize == examine_module.WORKER_MESSAGES and info.hits == len(texts)
    finally:
        messages.keep_messages(1024)
