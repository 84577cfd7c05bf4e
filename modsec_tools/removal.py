"""Deleting a committed batch's entries while the next batch is being committed.

Deleting is a stat and a rename per entry (into the trash, see trash.py): a quarter of the
committing thread's time when it was done in line. (A batch of a few entries, as a live
watch makes, is still deleted in line: handing it over would cost more than it saves.) The journal lets one batch's deletions
be outstanding: the next batch's record names that batch (``leaving``), so start-up after a
crash deletes what is left of both (ingest.Pipeline.recover). Hence one job at a time, and
a batch's deletions start only once the previous batch's are done.

Until its job is done a batch's entries are still in the tree: ``holds`` tells the pipeline
not to take them again (a rescan or a late close event would otherwise ingest them twice).
"""
from __future__ import annotations

import logging
import queue
import threading

from .storage import EntryRef, StorageTree
from .trash import Trash

log = logging.getLogger(__name__)

#: (where, inode, device it was read from): the entry is deleted only if the name still
#: holds that file.
Leaving = tuple[EntryRef, int, int]


class Removal:
    def __init__(self, root: str, trash: Trash | None) -> None:
        # Its own directory descriptors: the pipeline's tree closes its own at times.
        self.tree = StorageTree(root, trash)
        self.jobs: queue.SimpleQueue[list[Leaving] | None] = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()
        self.paths: frozenset[str] = frozenset()
        self.seq: int | None = None     # the journal batch whose entries are leaving
        self.errors = 0
        self.failure: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self, seq: int | None, entries: list[Leaving], background: bool = True) -> None:
        """Delete ``entries`` (batch ``seq``) in the background, or now when not
        ``background`` (a few entries: the hand-over would cost more than it saves); the
        previous job must be over (``wait``)."""
        assert self.idle.is_set(), "one batch's deletions at a time"
        if not entries:
            return
        if not background:
            try:
                for ref, inode, device in entries:
                    self._remove(ref, inode, device)
            finally:
                self.tree.release()
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="removal", daemon=True)
            self.thread.start()
        self.seq = seq
        self.paths = frozenset(ref.relpath for ref, _, _ in entries)
        self.idle.clear()
        self.jobs.put(entries)

    def outstanding(self) -> int | None:
        """The batch whose deletions may not be finished, if any."""
        return None if self.idle.is_set() else self.seq

    def holds(self, relpath: str) -> bool:
        """Still in the tree only because its deletion is under way."""
        return relpath in self.paths

    def wait(self) -> int:
        """Until the job is done; how many entries could not be deleted since the last call
        (each logged)."""
        self.idle.wait()
        self.paths = frozenset()
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        errors, self.errors = self.errors, 0
        return errors

    def _work(self) -> None:
        while (entries := self.jobs.get()) is not None:
            try:
                for ref, inode, device in entries:
                    self._remove(ref, inode, device)
            except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread)
                self.failure = exc
            finally:
                self.tree.release()
                self.idle.set()

    def _remove(self, ref: EntryRef, inode: int, device: int) -> None:
        try:
            self.tree.remove(ref, (inode, device))
        except OSError as exc:
            self.errors += 1
            log.error("%s: cannot delete: %s", ref.relpath, exc.strerror or exc)

    def close(self) -> None:
        self.wait()
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join()
            self.thread = None
        self.tree.release()
