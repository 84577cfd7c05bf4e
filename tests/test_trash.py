"""The trash: processed entries leave the tree by a rename and are unlinked in the background."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from modsec_tools.storage import EntryRef, StorageTree
from modsec_tools.trash import Trash

from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401

NAME = "20261128-1626-ZYX"


def _tree_with_entries(root: Path, count: int) -> tuple[Path, list[EntryRef]]:
    minute = root / "storage" / "20261128" / "20261128-1626"
    minute.mkdir(parents=True)
    refs = []
    for n in range(count):
        name = f"20261128-162642-entry{n:04d}"
        (minute / name).write_bytes(b"x" * 100)
        refs.append(EntryRef(("20261128", "20261128-1626"), name))
    return root / "storage", refs


def _in_trash(trash_dir: Path) -> list[str]:
    return sorted(p.name for p in trash_dir.rglob("*") if p.is_file())


def _remove_all(tree: StorageTree, storage: Path, refs: list[EntryRef]) -> None:
    for ref in refs:
        info = os.stat(storage / ref.relpath.lstrip("/"))
        assert tree.remove(ref, (info.st_ino, info.st_dev))
    tree.release()


def test_removed_entries_leave_the_tree_at_once_and_the_trash_is_emptied(tmp_path):
    storage, refs = _tree_with_entries(tmp_path, 50)
    trash = Trash(str(tmp_path / "state" / "trash"), str(storage))
    assert trash.usable
    queued: dict[str, list[str]] = {}
    for where in trash.bins:  # hold the unlinks back to see where the files went
        where.add = queued.setdefault(where.where, []).append
    tree = StorageTree(str(storage), trash)
    _remove_all(tree, storage, refs)
    assert not any(p.is_file() for p in storage.rglob("*"))
    assert len(queued) == 4 and all(len(names) in (12, 13) for names in queued.values())
    for where, names in queued.items():
        assert sorted(os.listdir(where)) == sorted(names)
    every = [name for names in queued.values() for name in names]
    assert sorted(name.split(".", 1)[1] for name in every) == sorted(r.name for r in refs)
    for where in trash.bins:
        del where.add
        for name in queued[where.where]:
            where.add(name)
    trash.close()  # waits for the background unlinks
    assert _in_trash(tmp_path / "state" / "trash") == []


def test_what_a_crash_left_in_the_trash_is_deleted_at_the_next_start(tmp_path):
    storage, _ = _tree_with_entries(tmp_path, 0)
    bin_dir = tmp_path / "state" / "trash"
    for n in range(30):
        (bin_dir / str(n % 4)).mkdir(parents=True, mode=0o700, exist_ok=True)
        (bin_dir / str(n % 4) / f"{n:x}.20261128-162642-left{n}").write_bytes(b"y")
    trash = Trash(str(bin_dir), str(storage))
    assert trash.usable
    trash.close()
    assert _in_trash(bin_dir) == []


def test_a_trash_others_may_write_is_not_used(tmp_path):
    storage, refs = _tree_with_entries(tmp_path, 3)
    bin_dir = tmp_path / "state" / "trash"
    bin_dir.mkdir(parents=True)
    bin_dir.chmod(0o777)
    trash = Trash(str(bin_dir), str(storage))
    assert not trash.usable
    tree = StorageTree(str(storage), trash)
    _remove_all(tree, storage, refs)  # unlinked in place
    assert not any(p.is_file() for p in storage.rglob("*"))
    assert _in_trash(bin_dir) == []


def test_a_bin_others_may_write_is_not_used(tmp_path):
    storage, refs = _tree_with_entries(tmp_path, 3)
    bin_dir = tmp_path / "state" / "trash"
    (bin_dir / "2").mkdir(parents=True)
    (bin_dir / "2").chmod(0o773)
    trash = Trash(str(bin_dir), str(storage))
    assert not trash.usable
    _remove_all(StorageTree(str(storage), trash), storage, refs)
    assert not any(p.is_file() for p in storage.rglob("*"))
    assert _in_trash(bin_dir) == []


def test_no_trash_on_another_file_system(tmp_path):
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev):
        pytest.skip("needs /dev/shm on another file system than the temporary directory")
    storage, _ = _tree_with_entries(tmp_path, 0)
    import tempfile
    with tempfile.TemporaryDirectory(dir=shm) as other:
        trash = Trash(os.path.join(other, "trash"), str(storage))
        assert not trash.usable


def test_a_mount_point_inside_the_tree_falls_back_to_unlink(tmp_path, monkeypatch):
    storage, refs = _tree_with_entries(tmp_path, 2)
    trash = Trash(str(tmp_path / "state" / "trash"), str(storage))

    def cross_device(parent_fd, name):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(trash, "take", cross_device)
    tree = StorageTree(str(storage), trash)
    _remove_all(tree, storage, refs)
    assert not any(p.is_file() for p in storage.rglob("*"))
    assert tree.trash is None  # not tried again for every entry
    trash.close()


def test_ingest_deletes_through_the_trash_and_leaves_it_empty(fast_tmp, monkeypatch):
    sb = ih.Sandbox(fast_tmp, db="none")
    ih.extract("r1_relevant_concurrent", fast_tmp, sb.storage)
    ih.age_tree(sb.storage)
    want = len(ih.tree_files(sb.storage))
    assert os.stat(sb.storage).st_dev == os.stat(fast_tmp).st_dev  # the trash is usable
    sb.run()
    assert sb.left() == []
    assert sorted(os.listdir(sb.state / "trash")) == ["0", "1", "2", "3"]
    assert _in_trash(sb.state / "trash") == []
    assert len(ih.archive_entries(sb.archive)) == want


@pytest.mark.root
def test_a_real_mount_inside_the_tree_falls_back_to_unlink(tmp_path):
    """A minute directory that is a mount point (as a systemd unit's bind mounts make the
    state dir and the tree): rename(2) really fails with EXDEV there."""
    import subprocess
    storage, refs = _tree_with_entries(tmp_path, 0)
    minute = storage / "20261128" / "20261128-1626"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "mt-trash-test", str(minute)],
                   check=True)
    try:
        for n in range(3):
            (minute / f"20261128-162642-mounted{n}").write_bytes(b"z")
        refs = [EntryRef(("20261128", "20261128-1626"), f"20261128-162642-mounted{n}")
                for n in range(3)]
        trash = Trash(str(tmp_path / "state" / "trash"), str(storage))
        assert trash.usable
        tree = StorageTree(str(storage), trash)
        _remove_all(tree, storage, refs)
        assert os.listdir(minute) == []
        assert tree.trash is None
        trash.close()
    finally:
        subprocess.run(["umount", str(minute)], check=True)


def test_a_bin_far_behind_makes_the_caller_unlink(tmp_path, monkeypatch):
    """Back-pressure: names beyond BACKLOG are not queued (memory stays bounded) but
    unlinked at once, and nothing is left behind."""
    from modsec_tools import trash as trash_module
    monkeypatch.setattr(trash_module, "BACKLOG", 2)
    storage, refs = _tree_with_entries(tmp_path, 40)
    trash = Trash(str(tmp_path / "state" / "trash"), str(storage))
    for where in trash.bins:  # a stalled bin: its thread takes nothing
        where.thread = object()
    tree = StorageTree(str(storage), trash)
    _remove_all(tree, storage, refs)
    assert not any(p.is_file() for p in storage.rglob("*"))
    queued = [where.names.qsize() for where in trash.bins]
    assert queued == [2, 2, 2, 2]
    assert len(_in_trash(tmp_path / "state" / "trash")) == 8  # the queued ones, still there
    for where in trash.bins:
        while (name := where.names.get_nowait() if where.names.qsize() else None) is not None:
            where._unlink(name)
        where.thread = None
    trash.close()
    assert _in_trash(tmp_path / "state" / "trash") == []
