"""Deleting committed entries (removal.py, StorageTree.remove): only the file that was read,
several threads at once."""
from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

from modsec_tools.tree import removal
from modsec_tools.tree.removal import Removal, empty_old_trash
from modsec_tools.tree.storage import EntryRef, StorageTree

from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401

DIRS = ("20261128", "20261128-1626")


def entries_in(root: Path, count: int, dirs: tuple[str, ...] = DIRS) -> list:
    """``count`` entry files; (ref, inode, device) of each, as a batch's deletions get them."""
    minute = root.joinpath(*dirs)
    minute.mkdir(parents=True, exist_ok=True)
    leaving = []
    for n in range(count):
        name = f"20261128-162642-entry{n:04d}"
        (minute / name).write_bytes(b"x" * 100)
        info = os.stat(minute / name)
        leaving.append((EntryRef(dirs, name), info.st_ino, info.st_dev))
    return leaving


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def replace_file(path: Path) -> None:
    """Another file under the name (made first: a freed inode number is soon reused)."""
    other = path.with_name(path.name + ".new")
    other.write_bytes(b"another file")
    os.replace(other, path)


def test_a_batch_is_deleted_in_the_background_and_held_until_done(tmp_path):
    """Its slices go to THREADS threads; until ``wait`` its entries are ``held`` (not to be
    taken again) and the batch is ``outstanding`` (named ``leaving`` in the journal)."""
    root = tmp_path / "storage"
    leaving = entries_in(root, 200) + entries_in(root, 10, ("20261128", "20261128-1627"))
    gate = threading.Event()
    seen_threads = set()
    real = StorageTree.remove

    def gated(self, entries):
        seen_threads.add(threading.current_thread().name)
        gate.wait(10)
        return real(self, entries)
    job = Removal(str(root))
    StorageTree.remove = gated
    try:
        job.start(7, leaving)
        assert job.outstanding() == 7
        assert job.holds(leaving[0][0].relpath) and job.holds(leaving[-1][0].relpath)
        assert len(_files(root)) == 210
        gate.set()
        assert job.wait() == 0
    finally:
        StorageTree.remove = real
    assert _files(root) == []
    assert len(seen_threads) == removal.THREADS
    assert job.outstanding() is None and not job.holds(leaving[0][0].relpath)
    job.close()


def test_a_small_batch_is_deleted_at_once(tmp_path):
    root = tmp_path / "storage"
    job = Removal(str(root))
    job.start(1, entries_in(root, 3), background=False)
    assert _files(root) == [] and job.outstanding() is None and job.pool is None
    job.close()


def test_only_the_file_that_was_read_is_deleted(tmp_path, caplog):
    """A name that now holds another file (an attacker's swap, a new entry of the same name)
    is left with a warning; one already gone is no error; a failure is an error, logged."""
    root = tmp_path / "storage"
    kept, gone, fine, failing = entries_in(root, 4)
    minute = root.joinpath(*DIRS)
    replace_file(minute / kept[0].name)
    os.unlink(minute / gone[0].name)
    os.unlink(minute / failing[0].name)
    os.mkdir(minute / failing[0].name)  # unlink(2) of a directory fails: EISDIR
    info = os.stat(minute / failing[0].name)
    failing = (failing[0], info.st_ino, info.st_dev)
    tree = StorageTree(str(root))
    with caplog.at_level(logging.WARNING):
        assert tree.remove([kept, gone, fine, failing]) == 1
    tree.release()
    assert _files(root) == [str(Path(*DIRS, kept[0].name))]
    assert (minute / failing[0].name).is_dir()
    assert f"{kept[0].relpath} was replaced after it was read; not deleting it" in caplog.text
    assert f"{failing[0].relpath}: cannot delete: {os.strerror(errno.EISDIR)}" in caplog.text
    assert gone[0].relpath not in caplog.text


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path):
    root = tmp_path / "storage"
    leaving = entries_in(root, 2)
    outside = tmp_path / "outside"
    os.rename(root.joinpath(*DIRS), outside)
    os.symlink(outside, root.joinpath(*DIRS))
    tree = StorageTree(str(root))
    assert tree.remove(leaving) == 2  # refused, as errors: the entries were not deleted
    assert sorted(os.listdir(outside)) == sorted(ref.name for ref, _, _ in leaving)


# -- the trash of earlier builds -----------------------------------------------------------------
def _old_trash(state: Path, count: int) -> Path:
    trash = state / "trash"
    for n in range(count):
        (trash / str(n % 4)).mkdir(parents=True, mode=0o700, exist_ok=True)
        (trash / str(n % 4) / f"{n:x}.20261128-162642-left{n}").write_bytes(b"y")
    trash.chmod(0o700)
    return trash


def test_what_an_earlier_build_left_in_its_trash_is_deleted(tmp_path, caplog):
    trash = _old_trash(tmp_path / "state", 30)
    with caplog.at_level(logging.INFO):
        empty_old_trash(str(trash))
    assert not trash.exists()
    assert (f"deleted the old trash {trash} with the processed entries an earlier version "
            "left in it: 30") in caplog.text
    empty_old_trash(str(trash))  # none: nothing to do


def test_an_old_trash_others_may_write_is_left_alone(tmp_path, caplog):
    trash = _old_trash(tmp_path / "state", 5)
    (trash / "2").chmod(0o773)
    empty_old_trash(str(trash))
    assert len([p for p in trash.rglob("*") if p.is_file()]) >= 1
    assert "is not ours" in caplog.text
    trash.chmod(0o777)
    bin_files = sorted(p.name for p in (trash / "2").iterdir())
    empty_old_trash(str(trash))
    assert sorted(p.name for p in (trash / "2").iterdir()) == bin_files


def test_ingest_empties_an_old_trash_and_leaves_none(fast_tmp):  # noqa: F811
    sb = ih.Sandbox(fast_tmp, db="none")
    ih.extract("r1_relevant_concurrent", fast_tmp, sb.storage)
    ih.age_tree(sb.storage)
    want = len(ih.tree_files(sb.storage))
    trash = _old_trash(sb.state, 3)
    sb.run()
    assert sb.left() == []
    assert not trash.exists()
    assert len(ih.archive_entries(sb.archive)) == want
