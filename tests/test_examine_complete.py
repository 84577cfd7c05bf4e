"""When an entry file is complete enough to take (examine.py).

ModSecurity writes an entry in many small writes, the last of them the newline after its Z
boundary, then closes it. An entry found by a scan or in a new directory, without its close
or index line, is taken only once that newline is there: read one write earlier, it parses
as complete, and taking it would archive it twice (its final form is taken again when the
delete finds it changed, issue #15 F4)."""
from __future__ import annotations

import pytest

from modsec_tools.audit.clientip import Proxies
from modsec_tools.pipeline.examine import Decision, ExamineSettings, Proof, examine
from modsec_tools.tree.storage import EntryRef, StorageTree
from modsec_tools.audit.verdict import VerdictPolicy
from tests import ingest_helpers as ih

SETTINGS = ExamineSettings("n", VerdictPolicy(), Proxies(), 1 << 20, 0.0, 3600.0, False, ())


def _one_write_early(root) -> EntryRef:
    (uid, data), = ih.plant_data_entries(root, ["OneWriteEarly"]).items()
    path = next(root.rglob(f"*-{uid}"))
    assert data.endswith(b"-Z--\n")
    path.write_bytes(data[:-1])
    ih.age_tree(root, 60)  # settled, not yet stale: only the missing newline holds it back
    return EntryRef.from_relpath("/" + str(path.relative_to(root)))


@pytest.mark.parametrize("proof, decision", [
    (Proof.SCAN, Decision.WAIT), (Proof.FRESH, Decision.WAIT),
    (Proof.CLOSED, Decision.TAKE)])   # closed: the writer is done, whatever it wrote
def test_an_entry_without_its_last_newline_waits_for_its_close(tmp_path, proof, decision):
    tree = StorageTree(str(tmp_path))
    outcome = examine(tree, _one_write_early(tmp_path), proof, None, SETTINGS)
    tree.release()
    assert outcome.decision is decision, outcome.reason


def test_an_entry_written_to_while_it_is_read_waits(tmp_path, monkeypatch):
    """Its stat, journaled for the delete's check, must be the one of the bytes taken."""
    from modsec_tools.tree import safefs
    (uid, data), = ih.plant_data_entries(tmp_path, ["ReadMidWrite"]).items()
    path = next(tmp_path.rglob(f"*-{uid}"))
    real_read = safefs.os.read
    calls = []

    def read_then_write(fd, size):
        chunk = real_read(fd, size)
        if not calls:                       # the writer adds a byte between two reads
            with open(path, "ab") as writer:
                writer.write(b"\n")
        calls.append(len(chunk))
        return chunk
    monkeypatch.setattr(safefs.os, "read", read_then_write)
    tree = StorageTree(str(tmp_path))
    ref = EntryRef.from_relpath("/" + str(path.relative_to(tmp_path)))
    outcome = examine(tree, ref, Proof.CLOSED, None, SETTINGS)
    tree.release()
    assert outcome.decision is Decision.WAIT, outcome.reason
