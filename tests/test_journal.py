"""The ingest journal: what it keeps in memory, and what a reopen finds."""
from __future__ import annotations

from modsec_tools.pipeline.journal import Journal


def _batch(journal: Journal, files: int, index: list[int] | None = None,
           done: bool = True) -> dict:
    record = {"type": "batch", "seq": journal.next_seq(), "archive": [1, 0], "events": [1, 0],
              "files": [[f"/u/20261128/20261128-1626/20261128-162642-f{n}", n, 1, 10, 0,
                         403, 11, 50] for n in range(files)]}
    journal.append(record, sync=False)
    if done:
        finished = {"type": "done", "seq": record["seq"]}
        if index is not None:
            finished["index"] = index
        journal.append(finished, sync=False)
    return record


def test_finished_batches_are_not_kept_in_memory(tmp_path):
    journal = Journal(str(tmp_path / "journal"))
    _batch(journal, 500, index=[7, 100])
    for _ in range(200):
        _batch(journal, 500)
    # a summary, the last batch and its done: not 200 file lists
    assert [r["type"] for r in journal.records] == ["checkpoint", "batch", "done"]
    assert journal.next_seq() == 202
    assert journal.last("index") == [7, 100]
    assert journal.unfinished() is None
    journal.close()


def test_an_unfinished_batch_is_found_in_memory_and_after_a_reopen(tmp_path):
    path = str(tmp_path / "journal")
    journal = Journal(path)
    for _ in range(3):
        _batch(journal, 5, index=[7, 1])
    last = _batch(journal, 5, done=False)
    assert journal.unfinished() == last
    journal.close()
    reopened = Journal(path)  # what start-up sees: everything on disk
    assert reopened.unfinished() == last
    assert reopened.next_seq() == last["seq"] + 1
    assert reopened.last("index") == [7, 1]
    reopened.close()
