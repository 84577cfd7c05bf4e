"""Deleting processed entries without making the commit loop wait for the disk.

An unlink that frees a file's blocks can wait on the device: on a file system mounted with
``discard`` (common on VMs and SSDs) it took ~0.26 ms per 5 KB entry on the machine the
benchmarks ran on, serialized in the kernel (more threads did not help), against ~0.03 ms
for a rename. So a committed entry leaves the storage tree by a rename into ``trash``, a
directory of the state dir on the same file system, and a background thread unlinks it
there. The exactly-once protocol is untouched: the entry leaves the tree at the moment the
unlink used to happen, and whatever a crash leaves in the trash was already durable in
every sink, so it is simply deleted at the next start.
"""
from __future__ import annotations

import logging
import os
import queue
import stat
import threading

log = logging.getLogger(__name__)

#: Names waiting for the background unlink; when it falls this far behind, moving more
#: into the trash waits for it (back-pressure instead of an unbounded queue).
BACKLOG = 20000


class Trash:
    def __init__(self, path: str, tree_root: str) -> None:
        self.path = path
        self.fd = _open_trash(path, tree_root)
        self.names: queue.Queue[str | None] = queue.Queue(BACKLOG)
        self.counter = 0
        self.thread: threading.Thread | None = None
        if self.fd is not None:
            leftovers = os.listdir(self.fd)
            if leftovers:
                log.info("deleting %d processed entries left in %s", len(leftovers), path)
            for name in leftovers:
                self._queue(name)

    @property
    def usable(self) -> bool:
        return self.fd is not None

    def take(self, parent_fd: int, name: str) -> None:
        """Move ``name`` (in ``parent_fd``) into the trash; it is unlinked soon after.
        Raises OSError as os.rename does (the caller then unlinks it itself)."""
        assert self.fd is not None
        self.counter += 1
        target = f"{self.counter:x}.{name}"
        os.rename(name, target, src_dir_fd=parent_fd, dst_dir_fd=self.fd)
        self._queue(target)

    def _queue(self, name: str) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._empty, name="trash", daemon=True)
            self.thread.start()
        self.names.put(name)

    def _empty(self) -> None:
        while (name := self.names.get()) is not None:
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot delete %s from %s: %s", name, self.path, exc.strerror or exc)

    def close(self) -> None:
        """Wait until everything taken is unlinked."""
        if self.thread is not None:
            self.names.put(None)
            self.thread.join()
            self.thread = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _open_trash(path: str, tree_root: str) -> int | None:
    """The trash directory's descriptor, or None when entries must be unlinked in place: a
    rename cannot cross file systems, and a trash anyone else could write is not ours."""
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except OSError as exc:
        log.warning("no trash directory %s (%s): entries are unlinked in place", path,
                    exc.strerror or exc)
        return None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    try:
        tree_device = os.stat(tree_root).st_dev
    except OSError:
        tree_device = None
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o022 \
            or info.st_dev != tree_device:
        os.close(fd)
        return None
    return fd
