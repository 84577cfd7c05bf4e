"""``modsec-tools parse`` of the index log, as a newcomer runs it after the watcher ran
(issue 17): the entries are in the configured storage_dir, not beside the index, and the
watcher has removed those it processed. (parse looked beside the index log and reported
every entry as an error: 470 "No such file", exit 1.)

A real Apache + mod_security2 + CRS writes the tree and its index (tests/realparts): the
index in ``audit/index.log``, the entries under ``audit/storage``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.realparts import ApacheModSec

REPO = Path(__file__).resolve().parent.parent
ATTACK = "/?id=1' or '1'='1"


def parse(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modsec_tools.cli", "parse", "--config",
                           str(config), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def configure(tmp_path: Path, storage: Path, index: Path) -> Path:
    config = tmp_path / "modsec-tools.conf"
    config.write_text(f"[modsec-tools]\nstorage_dir = {storage}\nindex_log = {index}\n")
    return config


def test_parse_of_the_index_log_reads_the_configured_tree(apache: ApacheModSec, tmp_path):
    for _ in range(4):
        assert apache.request(ATTACK) == 403
    apache.wait_index(4)
    assert apache.index_log.parent != apache.storage_dir
    config = configure(tmp_path, apache.storage_dir, apache.index_log)

    done = parse(config, str(apache.index_log))
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == 4 and all(e["intercepted"] for e in events)
    assert done.stderr == ""

    # the watcher processed two entries and removed them: not errors, one warning
    for entry in apache.audit_files()[:2]:
        os.unlink(entry)
    done = parse(config, str(apache.index_log))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    warnings = done.stderr.splitlines()
    assert len(warnings) == 1, done.stderr
    assert f"2 entries named in {apache.index_log} are no longer in {apache.storage_dir}" \
        in warnings[0]

    # a storage directory named that does not exist is one error, not one per line
    done = parse(config, "--storage-dir", str(tmp_path / "no-such-tree"), str(apache.index_log))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert f"{tmp_path / 'no-such-tree'}: the storage directory" in done.stderr
