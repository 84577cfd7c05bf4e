"""The ModSecurity corpus the tests read: its runs, their audit logs, their truth.

Every run r1..r7 is in the repository as a slice (tests/data/corpus/<run>: a few dozen to
240 entries exactly as ModSecurity wrote them, their index lines and their truth rows; see
tests/data/corpus/README.md). A plain run name ("r1_relevant_concurrent") is its slice.

The lab's full corpus is never needed. Where $MODSEC_CORPUS names it, ``runs()`` adds each
run a second time as "<run>@full", so the tests that check every entry against the truth
check the full runs too. MODSEC_CORPUS_FULL=1 makes the plain
names mean the full runs (for bench/watch.py, and to run any test over them).
"""
from __future__ import annotations

import gzip
import json
import math
import os
import tarfile
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SLICES = REPO / "tests" / "data" / "corpus"
# only where asked for: nothing outside the repository is looked at by default
FULL_CORPUS = Path(os.environ["MODSEC_CORPUS"]) if os.environ.get("MODSEC_CORPUS") else None
FULL = "@full"
NAMES = ("r1_relevant_concurrent", "r2_auditengine_on_concurrent", "r3_json_concurrent",
         "r4_json_serial", "r5_serial", "r6_detectiononly_concurrent",
         "r7_pl2_concurrent_noremoteip")


def full_corpus_present() -> bool:
    return FULL_CORPUS is not None and (FULL_CORPUS / "README.md").exists()


def _plain_is_full() -> bool:
    return os.environ.get("MODSEC_CORPUS_FULL") == "1"


def runs(*names: str) -> tuple[str, ...]:
    """``names`` (default: all seven), then the same runs of the full corpus when it is
    present (and the plain names do not mean it already)."""
    names = names or NAMES
    if full_corpus_present() and not _plain_is_full():
        return names + tuple(name + FULL for name in names)
    return names


RUNS = runs()


def require_corpus() -> Path:
    """The slices are part of the repository: missing, the checkout is broken."""
    if not (SLICES / "README.md").exists():
        pytest.fail(f"corpus slices not found at {SLICES}")
    return SLICES


def run_dir(run: str) -> Path:
    name = run.removesuffix(FULL)
    if run.endswith(FULL) or _plain_is_full():
        if not full_corpus_present():
            pytest.fail(f"{run}: the full corpus is not at {FULL_CORPUS}")
        return FULL_CORPUS / name
    return require_corpus() / name


def run_info(run: str) -> dict:
    return json.loads((run_dir(run) / "run.json").read_text())


def copies_for(run: str, entries: int) -> int:
    """How many copies of ``run`` make at least ``entries`` entries."""
    return math.ceil(entries / run_info(run)["audit_entries"])


@lru_cache(maxsize=None)
def truth(run: str) -> dict[str, dict]:
    """truth.jsonl rows that have an audit entry's id, by unique_id."""
    path = run_dir(run) / "truth.jsonl"
    rows = {}
    with (open(path, "rb") if path.exists() else gzip.open(f"{path}.gz")) as stream:
        for line in stream:
            row = json.loads(line)
            if row["unique_id"]:
                rows[row["unique_id"]] = row
    return rows


def extract_storage(run: str, into: Path) -> Path:
    """Unpack a Concurrent run's storage tree; returns the storage directory."""
    target = into / run
    if not (target / "storage").exists():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(run_dir(run) / "audit" / "storage.tar.gz") as archive:
            archive.extractall(target, filter="fully_trusted")
    return target / "storage"


def audit_input(run: str, scratch: Path) -> Path:
    """What `modsec-tools parse` should read for this run: storage tree or Serial log."""
    audit = run_dir(run) / "audit"
    if (audit / "storage.tar.gz").exists():
        return extract_storage(run, scratch)
    return audit / "audit_serial.log"
