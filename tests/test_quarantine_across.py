"""Quarantine across file systems keeps every byte (issue #15, F3).

When the quarantine is on another file system than the storage tree, an entry cannot be
renamed into it: it is copied. The copy must be whole whatever the entry's size (an entry of
1,154,482,157 bytes used to be cut to 1 GiB, and its original deleted), checked against the
original before the original is unlinked, and made with bounded memory.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from modsec_tools.tree import storage
from modsec_tools.tree.storage import EntryRef, StorageTree
from tests import ingest_helpers as ih

pytestmark = pytest.mark.root

MINUTE = ("20261128", "20261128-2104")
NAME = "20261128-210400-HugeEntryAAAAAAAAAAAAAAA"
HUGE = 1_154_482_157
#: (offset, bytes) written into the otherwise sparse entry: a copy cut anywhere, or shifted,
#: loses one of them
MARKS = ((0, b"--0badc0de-A--\n"), (1 << 30, b"past the first GiB"),
         (HUGE - 16, b"the very last 16"))


#: ``ingest`` reporting its own peak RSS at exit. Its rusage cannot tell: exec records the
#: parent's high-water mark (pytest's, over a GB late in a run) as the child's ru_maxrss.
MEASURED = ("-c", """
import atexit, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("peak-rss-kib " + line.split()[1] + "\\n")
atexit.register(peak)
from modsec_tools.cli import main
sys.argv[0] = "modsec-tools"
sys.exit(main())
""")


@pytest.fixture
def two_file_systems(tmp_path):
    """The storage tree and the quarantine on two tmpfs mounts of their own."""
    mounts = [tmp_path / "tree-fs", tmp_path / "quarantine-fs"]
    for mount in mounts:
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400m,mode=0755", "tmpfs",
                        str(mount)], check=True)
    try:
        yield mounts
    finally:
        for mount in mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _huge_entry(tree: Path) -> Path:
    minute = tree.joinpath(*MINUTE)
    minute.mkdir(parents=True)
    path = minute / NAME
    with open(path, "wb") as out:
        out.truncate(HUGE)
        for offset, data in MARKS:
            out.seek(offset)
            out.write(data)
    os.utime(path, (0, 0))
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_an_entry_over_a_gib_is_copied_whole_with_bounded_memory(two_file_systems):
    tree, quarantine = two_file_systems
    sb = ih.Sandbox(tree.parent / "sandbox", settings={
        "storage_dir": str(tree / "storage"), "quarantine_dir": str(quarantine / "q")},
        launcher=MEASURED)
    original = _huge_entry(tree / "storage")
    want = _sha256(original)
    done = ih.run_cli(sb.command(), timeout=300)
    err = done.stderr
    assert done.returncode == 1, err  # 1: an entry was quarantined
    assert "larger than max_entry_size" in err and "Traceback" not in err, err
    (where,) = ih.quarantined(quarantine / "q").values()
    copy = where / "entry"
    assert copy.stat().st_size == HUGE
    assert _sha256(copy) == want
    assert not original.exists()
    assert f"{HUGE} bytes" in (where / "reason").read_text()
    # the copy streams, and an entry over max_entry_size is not read to be refused; the
    # entry is thirty times this bound
    peak = int(err.rsplit("peak-rss-kib ", 1)[1].split()[0])
    assert peak < 120 * 1024, f"peak RSS {peak} KiB"


def test_an_entry_that_changes_while_it_is_copied_is_left_in_place(two_file_systems,
                                                                     monkeypatch):
    tree, quarantine = two_file_systems
    minute = tree.joinpath("storage", *MINUTE)
    minute.mkdir(parents=True)
    path = minute / NAME
    data = b"x" * (3 << 20)
    path.write_bytes(data)
    writes = []
    real_write = os.write

    def write_then_append(fd, view):
        if len(view) >= 1 << 20 and not writes:  # the web user appends mid-copy
            with open(path, "ab") as writer:
                writer.write(b"appended meanwhile")
            writes.append(len(view))
        return real_write(fd, view)

    monkeypatch.setattr(storage.os, "write", write_then_append, raising=False)
    tree_ = StorageTree(str(tree / "storage"))
    with pytest.raises(OSError, match="changed while it was copied"):
        tree_.quarantine(EntryRef(MINUTE, NAME), str(quarantine / "q"), "test")
    tree_.release()
    assert path.read_bytes() == data + b"appended meanwhile"   # kept whole
    assert os.listdir(quarantine / "q") == []                   # no partial copy left
