"""``modsec-tools watch``: the ingest pipeline driven by inotify, in real time.

An entry is taken when ModSecurity closes its file (IN_CLOSE_WRITE; never on create: the
file is written in ~40 small writes first). Events are micro-batched: a batch is committed
when it reaches ``batch_size`` or when its first entry has waited ``flush_ms``, so a flood
costs few fsyncs while a lone event is durable in the event log within tens of ms.

New directories get their ITK mode/owner fixed (dirperms), a watch, and a rescan (files
made before the watch existed). A queue overflow triggers a full rescan. A periodic rescan
picks up anything else (settled entries, rotated index logs) and prunes empty directories.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass

import pyinotify

from . import dirperms
from .config import Settings
from .daemon import Signals, sd_notify, write_status
from .examine import CLOSED, FRESH, SCAN
from .ingest import Pipeline
from .storage import EntryRef, layout_ok

log = logging.getLogger(__name__)

DIR_MASK = (pyinotify.IN_CREATE | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO
            | pyinotify.IN_DONT_FOLLOW | pyinotify.IN_ONLYDIR)
INDEX_MASK = pyinotify.IN_MODIFY | pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO


MAX_POLL_MS = 200


class WatchLimit(RuntimeError):
    """inotify cannot add more watches: the message says which sysctl to raise."""


@dataclass(slots=True)
class WatchOptions:
    flush_ms: float = 20.0
    rescan_seconds: float = 10.0
    status_seconds: float = 5.0


class _Collector(pyinotify.ProcessEvent):
    """Turns inotify events into work lists; nothing is done inside the callback."""

    def my_init(self, watcher: "Watcher") -> None:  # pyinotify's constructor hook
        self.watcher = watcher

    def process_default(self, event: pyinotify.Event) -> None:
        self.watcher.on_event(event)


class Watcher:
    def __init__(self, settings: Settings, pipeline: Pipeline | None = None,
                 options: WatchOptions | None = None) -> None:
        self.settings = settings
        self.root = os.path.abspath(settings.storage_dir)
        self.options = options or WatchOptions()
        self.policy = dirperms.DirPolicy.from_settings(settings.dir_mode, settings.dir_owner,
                                                       settings.dir_group)
        self.pipeline = pipeline or Pipeline(settings)
        self.wm = pyinotify.WatchManager()
        self.notifier = pyinotify.Notifier(self.wm, _Collector(watcher=self), timeout=0)
        self.pending: dict[str, tuple[EntryRef, str]] = {}
        self.first_pending = 0.0
        self.new_dirs: list[tuple[str, ...]] = []
        self.index_touched = False
        self.rescan_due = True
        self.overflows = 0
        self.last_event_at = 0.0
        self.index_dir = os.path.dirname(os.path.abspath(settings.index_log)) \
            if settings.index_log else None

    # -- inotify ---------------------------------------------------------------------------------
    def on_event(self, event: pyinotify.Event) -> None:
        self.last_event_at = time.monotonic()
        if event.mask & pyinotify.IN_Q_OVERFLOW:
            self.overflows += 1
            self.rescan_due = True
            log.warning("inotify queue overflowed (fs.inotify.max_queued_events); "
                        "rescanning the storage tree")
            return
        path = event.pathname
        if self.index_dir is not None and path == os.path.abspath(self.settings.index_log):
            self.index_touched = True
            return
        parts = self._parts(path)
        if parts is None:
            return
        if event.mask & pyinotify.IN_ISDIR:
            if event.mask & (pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO):
                self.new_dirs.append(parts)
            return
        if event.mask & (pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO):
            dirs, name = parts[:-1], parts[-1]
            if layout_ok(dirs, name):
                proof = CLOSED if event.mask & pyinotify.IN_CLOSE_WRITE else SCAN
                self._queue(EntryRef(dirs, name), proof)

    def _parts(self, path: str) -> tuple[str, ...] | None:
        relative = os.path.relpath(path, self.root)
        if relative.startswith(".."):
            return None
        return tuple(relative.split(os.sep))

    def _queue(self, ref: EntryRef, proof: str) -> None:
        if not self.pending:
            self.first_pending = time.monotonic()
        self.pending[ref.relpath] = (ref, proof)

    def _watch(self, dirs: tuple[str, ...]) -> None:
        path = os.path.join(self.root, *dirs)
        # The configured root may itself be a symlink; nothing below it is followed.
        mask = DIR_MASK if dirs else DIR_MASK & ~pyinotify.IN_DONT_FOLLOW
        try:
            self.wm.add_watch(path, mask, quiet=False)
        except pyinotify.WatchManagerError as exc:
            if os.strerror(errno.ENOSPC) in str(exc):
                raise WatchLimit(
                    f"cannot watch {path}: the inotify watch limit is reached. Raise it: "
                    f"sysctl fs.inotify.max_user_watches=524288, and persist that in "
                    f"/etc/sysctl.d/60-modsec-tools.conf") from None
            log.debug("cannot watch %s: %s", path, exc)

    # -- directories -----------------------------------------------------------------------------
    def _walk_dirs(self) -> list[tuple[str, ...]]:
        """Every layout directory below the root, parents first, without following links."""
        found: list[tuple[str, ...]] = []
        for dirpath, dirnames, _files, _fd in os.fwalk(self.root, follow_symlinks=False):
            rel = os.path.relpath(dirpath, self.root)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            dirnames[:] = sorted(d for d in dirnames if depth < 3)
            for name in dirnames:
                found.append(tuple(p for p in (*([] if rel == "." else rel.split(os.sep)), name)))
        return found

    def _adopt_dir(self, dirs: tuple[str, ...]) -> None:
        """A new directory: fix its mode/owner, watch it, then look at what it already holds."""
        if not dirperms.is_layout_dir(dirs):
            log.warning("%s: unexpected directory in the storage tree; not watched",
                        os.path.join(self.root, *dirs))
            return
        problem = dirperms.apply(self.root, dirs, self.policy)
        if problem:
            log.warning("%s: %s", os.path.join(self.root, *dirs), problem)
        self._watch(dirs)
        path = os.path.join(self.root, *dirs)
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return
        for name in names:
            child = (*dirs, name)
            full = os.path.join(path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                self._adopt_dir(child)
            elif layout_ok(dirs, name):
                self._queue(EntryRef(dirs, name), FRESH)

    def _rescan(self) -> None:
        """Full pass: watches and permissions for every directory, every entry queued."""
        self.rescan_due = False
        for dirs in self._walk_dirs():
            if dirperms.is_layout_dir(dirs):
                problem = dirperms.apply(self.root, dirs, self.policy)
                if problem:
                    log.warning("%s: %s", os.path.join(self.root, *dirs), problem)
                self._watch(dirs)
        self.pipeline.read_index()
        for ref, proof in self.pipeline.scan():
            self._queue(ref, proof)

    # -- main loop -------------------------------------------------------------------------------
    def start(self) -> None:
        self._watch(())
        if self.index_dir is not None:
            self.wm.add_watch(self.index_dir, INDEX_MASK, quiet=True)
        self._rescan()
        self._flush(force=True)  # the backlog first, then live

    def _flush(self, force: bool = False) -> None:
        if self.index_touched:
            self.index_touched = False
            self.pipeline.read_index()
            for relpath in list(self.pipeline.proven):
                self._queue(EntryRef.from_relpath(relpath), SCAN)
        if not self.pending:
            return
        waited = (time.monotonic() - self.first_pending) * 1000
        if not force and len(self.pending) < self.settings.batch_size \
                and waited < self.options.flush_ms:
            return
        work = list(self.pending.values())
        self.pending.clear()
        self.pipeline.process(work)

    def _adopt_new_dirs(self) -> None:
        while self.new_dirs:
            self._adopt_dir(self.new_dirs.pop(0))

    def run(self, signals: Signals | None = None) -> None:
        signals = signals or Signals()
        self.start()
        sd_notify("READY=1\nSTATUS=watching " + self.root)
        log.info("watching %s", self.root)
        next_rescan = time.monotonic() + self.options.rescan_seconds
        next_status = 0.0
        while not signals.stop:
            timeout = self._timeout(next_rescan)
            if self.notifier.check_events(timeout=timeout):
                self.notifier.read_events()
                self.notifier.process_events()
            self._adopt_new_dirs()
            now = time.monotonic()
            if self.rescan_due or now >= next_rescan:
                self._rescan()
                self.pipeline.tree.remove_empty_dirs()
                if self.pipeline.db is not None:
                    self.pipeline.db.flush()
                next_rescan = now + self.options.rescan_seconds
            self._flush()
            if signals.reopen:
                signals.reopen = False
                self.pipeline.reopen_logs()
                log.info("reopened the archive and the event log")
            if signals.report or now >= next_status:
                if signals.report:
                    signals.report = False
                    log.info("statistics: %s", self.status())
                self._write_status()
                next_status = now + self.options.status_seconds
        self._flush(force=True)
        self._write_status()
        sd_notify("STOPPING=1")
        log.info("stopped: %s", self.pipeline.stats.summary())

    def _timeout(self, next_rescan: float) -> int:
        """Milliseconds to block in poll: until the pending batch is due, or the rescan."""
        now = time.monotonic()
        deadline = next_rescan
        if self.pending:
            deadline = min(deadline, self.first_pending + self.options.flush_ms / 1000)
        # Capped, so a signal (which poll() does not return for) is seen promptly.
        return max(0, min(MAX_POLL_MS, int((deadline - now) * 1000)))

    def status(self) -> dict:
        stats = self.pipeline.stats
        return {"entries": stats.entries, "bytes": stats.bytes,
                "quarantined": stats.quarantined, "spooled": stats.spooled,
                "errors": stats.errors, "batches": stats.batches,
                "queue_depth": len(self.pending), "overflows": self.overflows,
                "lag_seconds": round(time.monotonic() - self.first_pending, 3)
                if self.pending else 0.0,
                "database_down": bool(self.pipeline.db and self.pipeline.db.down)}

    def _write_status(self) -> None:
        try:
            write_status(os.path.join(self.settings.state_dir, "status.json"), self.status())
        except OSError as exc:
            log.debug("status file: %s", exc)

    def close(self) -> None:
        self.notifier.stop()
        self.pipeline.close()
