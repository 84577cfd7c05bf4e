"""The shared ModSecurity corpus (../shared/corpus): where it is, its runs, their truth.

Tests that need it skip cleanly when it is absent (a developer without shared/), and fail
under CI (CI=true), where it is always laid beside the clone.
"""
from __future__ import annotations

import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("MODSEC_CORPUS", REPO.parent / "shared" / "corpus"))
RUNS = ("r1_relevant_concurrent", "r2_auditengine_on_concurrent", "r3_json_concurrent",
        "r4_json_serial", "r5_serial", "r6_detectiononly_concurrent",
        "r7_pl2_concurrent_noremoteip")


def require_corpus() -> Path:
    if not (CORPUS / "README.md").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared corpus not found at {CORPUS}")
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return CORPUS


def run_dir(run: str) -> Path:
    return require_corpus() / run


def run_info(run: str) -> dict:
    return json.loads((run_dir(run) / "run.json").read_text())


@lru_cache(maxsize=None)
def truth(run: str) -> dict[str, dict]:
    """truth.jsonl rows that have an audit entry's id, by unique_id."""
    rows = {}
    with open(run_dir(run) / "truth.jsonl", encoding="utf-8") as stream:
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
