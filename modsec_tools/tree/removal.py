"""Deleting a committed batch's entries while the next batch is being committed.

Deleting is a stat and an unlink per entry. An unlink that frees a written-back file's
blocks may wait on the disk (where the file system discards freed blocks, it waits for
the device), so a batch's entries are unlinked by THREADS threads at once, each a slice
of the batch, while the commit thread goes on with the next batch: the system calls
release the GIL while they wait. Each thread takes the GIL back after every call, which
slows the commit thread: two were the best measured compromise (bench/RESULTS.md). (A
batch of a few entries, as a live watch makes, is deleted in line: handing it over would
cost more than it saves.)

The journal lets one batch's deletions be outstanding: the next batch's record names that
batch (``leaving``), so start-up after a crash deletes what is left of both
(ingest.Pipeline.recover). Hence one job at a time, and a batch's deletions start only
once the previous batch's are done. Until its job is done a batch's entries are still in
the tree: ``holds`` tells the pipeline not to take them again (a rescan or a late close
event would otherwise ingest them twice).
"""
from __future__ import annotations

import logging
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor

from .safefs import open_dir_at
from .storage import EntryRef, StorageTree

log = logging.getLogger(__name__)

#: Threads unlinking one batch's entries (each a slice of it).
THREADS = 2

#: (where, inode, device, size, mtime_ns, ctime_ns as it was read): the entry is deleted
#: only if the name still holds that file, unchanged (see StorageTree.remove).
Leaving = tuple[EntryRef, int, int, int, int, int]


class Removal:
    def __init__(self, root: str) -> None:
        # Directory descriptors of their own, one cache per thread: the pipeline's tree
        # closes its own at times, and a cache is not shared between threads.
        self.trees = [StorageTree(root) for _ in range(THREADS)]
        self.pool: ThreadPoolExecutor | None = None
        self.parts: list[Future] = []
        self.paths: frozenset[str] = frozenset()
        self.seq: int | None = None     # the journal batch whose entries are leaving

    def start(self, seq: int | None, entries: list[Leaving], background: bool = True) -> None:
        """Delete ``entries`` (batch ``seq``) in the background, or now when not
        ``background``; the previous job must be over (``wait``)."""
        assert not self.parts, "one batch's deletions at a time"
        if not entries:
            return
        if not background:
            self._remove_all(self.trees[0], entries)
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="removal")
        self.seq = seq
        self.paths = frozenset(entry[0].relpath for entry in entries)
        # Contiguous slices: entries come in time order, so a slice needs few directories.
        size = -(-len(entries) // THREADS)
        self.parts = [self.pool.submit(self._remove_all, tree, entries[at:at + size])
                      for tree, at in zip(self.trees, range(0, len(entries), size))]

    def outstanding(self) -> int | None:
        """The batch whose deletions may not be finished, if any."""
        return self.seq if any(not part.done() for part in self.parts) else None

    def holds(self, relpath: str) -> bool:
        """Still in the tree only because its deletion is under way."""
        return relpath in self.paths

    def wait(self) -> int:
        """Until the job is done; how many of its entries could not be deleted (each
        logged). An unexpected failure is raised here, once every slice has ended."""
        parts, self.parts = self.parts, []
        errors, failure = 0, None
        for part in parts:
            try:
                errors += part.result()
            except BaseException as exc:  # noqa: BLE001  (raised below, after the others)
                failure = failure or exc
        self.paths = frozenset()
        if failure is not None:
            raise failure
        return errors

    @staticmethod
    def _remove_all(tree: StorageTree, entries: list[Leaving]) -> int:
        try:
            return tree.remove(entries)
        finally:
            tree.release()

    def close(self) -> None:
        self.wait()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def empty_old_trash(path: str) -> None:
    """Delete ``<state_dir>/trash``, where earlier builds put the entries they were deleting:
    whatever a crash left there was durable in every sink. Only a trash that is ours (owned
    by us, writable by nobody else) is touched."""
    try:
        top = open_dir_at(None, path)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot open the old trash %s: %s", path, exc.strerror or exc)
        return
    try:
        if not _ours(top):
            log.warning("%s is not ours (owner or mode); left alone", path)
            return
        count = sum(_empty_bin(top, name) for name in os.listdir(top))
    except OSError as exc:
        log.warning("cannot empty the old trash %s: %s", path, exc.strerror or exc)
        return
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except OSError as exc:
        log.warning("cannot remove the old trash %s: %s", path, exc.strerror or exc)
        return
    log.info("deleted the old trash %s with the processed entries an earlier version left "
             "in it: %d", path, count)


def _empty_bin(top: int, name: str) -> int:
    try:
        fd = open_dir_at(top, name)
    except NotADirectoryError:
        return 0
    try:
        if not _ours(fd):
            raise PermissionError(f"{name} is not ours (owner or mode)")
        files = os.listdir(fd)
        for file in files:
            os.unlink(file, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=top)
    return len(files)


def _ours(fd: int) -> bool:
    info = os.fstat(fd)
    return info.st_uid == os.geteuid() and not stat.S_IMODE(info.st_mode) & 0o022
