"""``modsec-tools watch``: the ingest pipeline driven by inotify, in real time.

An entry is taken when ModSecurity closes its file (IN_CLOSE_WRITE; never on create: the
file is written in ~40 small writes first). Entries are group-committed: a batch starts as
soon as one is pending (or ``flush_ms`` later, if set) and takes all that are; those closed
while it is journaled form the next batch, whose event-log lines are written while the
batch before is made durable in the other sinks (pipeline/ingest.py). A flood thus costs
few fsyncs, while an event reaches the event log within milliseconds. In a
flood the examiner processes are fed what closes while a batch is made durable (up to a
second at a time, then the main loop runs), so they are not idle during commits.

New directories get their ITK mode/owner fixed (dirperms), a watch, and a rescan (files
made before the watch existed). A queue overflow triggers a full rescan. A periodic rescan
picks up anything else (settled entries, rotated index logs) and prunes empty directories.
"""
from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import select
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyinotify

from ..tree import dirperms
from ..config import Settings
from .heap import HeapTrimmer
from .process import Signals, describe_status, sd_notify, write_status
from ..pipeline.examine import Proof
from ..pipeline.ingest import Pipeline
from ..tree.layout import EntryRef, is_entry, is_layout_dir, is_minute_dir, walk
from ..metrics import Metrics
from ..tree.safefs import open_dir_path

log = logging.getLogger(__name__)

# No IN_DONT_FOLLOW: watches are added through /proc/self/fd/N, a link to follow.
WATCH_MASK = (pyinotify.IN_CREATE | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO
              | pyinotify.IN_ONLYDIR)
# A minute directory holds entry files only: its IN_CREATE events (one per entry, besides
# its IN_CLOSE_WRITE) would double the events of a flood and fill the queue sooner.
MINUTE_DIR_MASK = pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO | pyinotify.IN_ONLYDIR
INDEX_MASK = pyinotify.IN_MODIFY | pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO


MAX_POLL_MS = 200
#: How often a queue waiting for the pipeline's finishing thread looks whether it is free.
BUSY_POLL_MS = 1
#: How long one call of the pipeline may keep taking newly closed entries before the main
#: loop gets control back (status file, periodic rescan).
STREAM_SECONDS = 1.0
#: Worker processes left idle this long are stopped (see Pipeline.stop_idle_workers).
WORKERS_IDLE_SECONDS = 30.0


class WatchLimit(RuntimeError):
    """inotify cannot add more watches: the message says which sysctl to raise."""


@dataclass(slots=True)
class WatchOptions:
    flush_ms: float = 0.0
    rescan_seconds: float = 10.0
    status_seconds: float = 5.0


@dataclass(slots=True)
class InotifyEvent:
    wd: int
    mask: int
    name: str   # os.fsdecode()d: a name that is not UTF-8 survives as surrogates


_EVENT_HEAD = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len


def read_inotify_events(fd: int) -> list[InotifyEvent]:
    """Everything queued on the inotify descriptor (pyinotify's WatchManager owns it).

    Read here rather than by pyinotify's Notifier, which decodes names as strict UTF-8 (a
    file name planted in the world-writable tree would raise in the daemon) and formats
    every event as text for a debug log line (a sixth of the daemon's CPU in a flood).
    """
    pending = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, pending, True)
    if pending[0] <= 0:
        return []
    data = os.read(fd, pending[0])  # whole events only: the kernel never splits one
    events: list[InotifyEvent] = []
    at = 0
    while at + _EVENT_HEAD.size <= len(data):
        wd, mask, _cookie, length = _EVENT_HEAD.unpack_from(data, at)
        at += _EVENT_HEAD.size
        name = os.fsdecode(data[at:at + length].rstrip(b"\0"))
        at += length
        events.append(InotifyEvent(wd, mask, name))
    return events


class Watcher:
    def __init__(self, settings: Settings, pipeline: Pipeline | None = None,
                 options: WatchOptions | None = None) -> None:
        self.settings = settings
        self.root = os.path.abspath(settings.storage_dir)
        self.options = options or WatchOptions()
        self.policy = dirperms.DirPolicy.from_settings(settings.dir_mode, settings.dir_owner,
                                                       settings.dir_group)
        self.pipeline = pipeline or Pipeline(settings).open()
        self.metrics = Metrics.from_settings(settings)
        self.wm = pyinotify.WatchManager()
        self.poller = select.poll()
        self.poller.register(self.wm.get_fd(), select.POLLIN)
        self.wd_dirs: dict[int, tuple[str, ...]] = {}   # watch descriptor → directory
        self.index_wd = -1
        self.reported: set[str] = set()                 # problems already logged once
        self.new_dirs: list[tuple[str, ...]] = []
        self.index_touched = False
        self.rescan_due = True
        self.overflows = 0
        self.last_event_at = 0.0
        self.signals: Signals | None = None
        self.index_dir = os.path.dirname(os.path.abspath(settings.index_log)) \
            if settings.index_log else None
        self.index_name = os.path.basename(settings.index_log) if settings.index_log else None

    # -- inotify ---------------------------------------------------------------------------------
    def take_events(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for inotify events and take in all that are queued."""
        if self.poller.poll(timeout_ms):
            for event in read_inotify_events(self.wm.get_fd()):
                self.on_event(event)

    def on_event(self, event: InotifyEvent) -> None:
        """Events are mapped to directories by watch descriptor, never by path: a path can be
        swapped for a symlink, a descriptor cannot."""
        self.last_event_at = time.monotonic()
        if event.mask & pyinotify.IN_Q_OVERFLOW:
            self.overflows += 1
            self.rescan_due = True
            log.warning("inotify queue overflowed (fs.inotify.max_queued_events); "
                        "rescanning the storage tree")
            return
        if event.mask & pyinotify.IN_IGNORED:  # the directory is gone: forget its watch
            self.wd_dirs.pop(event.wd, None)
            if event.wd in self.wm.watches:
                self.wm.del_watch(event.wd)
            return
        if event.wd == self.index_wd and event.name == self.index_name:
            self.index_touched = True
            return
        dirs = self.wd_dirs.get(event.wd)
        if dirs is None or not event.name:
            return
        if event.mask & pyinotify.IN_ISDIR:
            if event.mask & (pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO):
                self.new_dirs.append((*dirs, event.name))
            return
        if event.mask & (pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO) \
                and is_entry(dirs, event.name):
            proof = Proof.CLOSED if event.mask & pyinotify.IN_CLOSE_WRITE else Proof.SCAN
            self.pipeline.offer(EntryRef(dirs, event.name), proof)

    def _warn_once(self, dirs: tuple[str, ...], problem: str) -> None:
        """Web users can plant names at will: each problem is logged once, not per rescan."""
        key = "/".join(dirs) + "\0" + problem
        if key not in self.reported:
            self.reported.add(key)
            path = os.fsencode(os.path.join(self.root, *dirs))
            log.warning("%s: %s", path.decode("utf-8", "backslashreplace"), problem)

    def _watch_fd(self, fd: int, dirs: tuple[str, ...]) -> None:
        """Watch the directory open on ``fd``: through /proc/self/fd, inotify resolves to
        exactly that directory, whatever its path holds by now."""
        try:
            mask = MINUTE_DIR_MASK if is_minute_dir(dirs) else WATCH_MASK
            result = self.wm.add_watch(f"/proc/self/fd/{fd}", mask, quiet=False)
        except pyinotify.WatchManagerError as exc:
            if os.strerror(errno.ENOSPC) in str(exc):
                raise WatchLimit(
                    f"cannot watch {os.path.join(self.root, *dirs)}: the inotify watch limit "
                    f"is reached. Raise it: sysctl fs.inotify.max_user_watches=524288, and "
                    f"persist that in /etc/sysctl.d/60-modsec-tools.conf") from None
            log.debug("cannot watch %s: %s", os.path.join(self.root, *dirs), exc)
            return
        for wd in result.values():
            if wd >= 0:
                self.wd_dirs[wd] = dirs

    def _open(self, dirs: tuple[str, ...]) -> int | None:
        try:
            return open_dir_path(self.root, list(dirs))
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_once(dirs, f"not opened ({exc.strerror}): a symlink or not a "
                                  "directory; left alone")
            return None

    # -- directories -----------------------------------------------------------------------------
    def _walk_dirs(self) -> list[tuple[str, ...]]:
        """Every directory down to minute level, parents first, without following links
        (those outside the layout, and links where a directory would be, too: _adopt_dir
        reports them once)."""
        found: list[tuple[str, ...]] = []
        for listing in walk(self.root):
            if not is_minute_dir(listing.dirs):
                links = [entry.name for entry in listing.others if entry.is_symlink()]
                found.extend((*listing.dirs, name)
                             for name in sorted(listing.subdirs + listing.odd_dirs + links))
        return found

    def _adopt_dir(self, dirs: tuple[str, ...], fresh: bool = True) -> None:
        """A directory: fix its mode/owner, watch it, then look at what it already holds
        (files made before the watch existed). All through its descriptor."""
        if not is_layout_dir(dirs):
            self._warn_once(dirs, "unexpected directory in the storage tree; not watched")
            return
        problem = dirperms.apply(self.root, dirs, self.policy)
        if problem:
            self._warn_once(dirs, problem)
        fd = self._open(dirs)
        if fd is None:
            return
        try:
            self._watch_fd(fd, dirs)
            if not fresh:
                return
            with os.scandir(fd) as listing:
                children = sorted((e.name, e.is_dir(follow_symlinks=False),
                                   e.is_file(follow_symlinks=False)) for e in listing)
        except OSError:
            return
        finally:
            os.close(fd)
        for name, is_dir, is_file in children:
            if is_dir:
                self._adopt_dir((*dirs, name))
            elif is_file and is_entry(dirs, name):
                self.pipeline.offer(EntryRef(dirs, name), Proof.FRESH)

    def _rescan(self) -> None:
        """Full pass: watches and permissions for every directory, every entry queued."""
        self.rescan_due = False
        for dirs in self._walk_dirs():
            self._adopt_dir(dirs, fresh=False)
        try:
            self.pipeline.rescan()
        except OSError as exc:
            self._warn_once((), f"cannot scan: {exc.strerror or exc}")

    # -- main loop -------------------------------------------------------------------------------
    def start(self, signals: Signals | None = None,
              ready: Callable[[], None] | None = None) -> None:
        """Watch the tree, call ``ready`` (the daemon is up), then process the backlog."""
        # The configured root may itself be a symlink (admin's choice): it is resolved once.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._watch_fd(fd, ())
        finally:
            os.close(fd)
        if self.index_dir is not None:
            # IN_MASK_ADD: the index log may sit in a watched directory (the storage root);
            # its watch must keep its own events.
            result = self.wm.add_watch(self.index_dir, INDEX_MASK | pyinotify.IN_MASK_ADD,
                                       quiet=True)
            self.index_wd = result.get(self.index_dir, -1)
        if ready is not None:
            ready()
        began = time.time()
        self._rescan()
        # The backlog first, then live (files changing from now on come with their own
        # close events); TERM during the backlog ends after the current batch.
        self._flush(force=True, stop=(lambda: signals.stop) if signals else None,
                    cutoff=began)

    def _flush(self, force: bool = False, stop=None, cutoff: float | None = None) -> None:
        pipeline = self.pipeline
        pipeline.reap()  # a batch that failed while finishing ends the loop as a crash would
        if self.index_touched:
            self.index_touched = False
            pipeline.take_index()
        if not pipeline.queue or (not force and pipeline.busy()):
            return
        if not force and len(pipeline.queue) < self.settings.batch_size \
                and pipeline.lag() * 1000 < self.options.flush_ms:
            return
        live = None if force else self._refill_until(time.monotonic() + STREAM_SECONDS)
        pipeline.drain(stop, cutoff, refill=live)

    def _refill_until(self, deadline: float) -> Callable[[], bool]:
        """Offer what closed since, for the pipeline to examine while it commits (a flood
        keeps the workers busy during commits); False, ending the stream, when the main
        loop has something to do: a signal, the index log, a rescan, or the time is up."""
        def refill() -> bool:
            signals = self.signals
            if (signals is not None and (signals.stop or signals.reopen or signals.report)) \
                    or self.index_touched or self.rescan_due or time.monotonic() >= deadline:
                return False
            self.take_events(0)
            self._adopt_new_dirs()
            return True
        return refill

    def _adopt_new_dirs(self) -> None:
        while self.new_dirs:
            self._adopt_dir(self.new_dirs.pop(0))

    def run(self, signals: Signals | None = None,
            ready: Callable[[], None] | None = None) -> None:
        signals = signals or Signals()
        self.signals = signals
        self.start(signals, ready)
        sd_notify("READY=1\nSTATUS=watching " + self.root)
        log.info("watching %s", self.root)
        next_rescan = time.monotonic() + self.options.rescan_seconds
        next_status = 0.0
        heap = HeapTrimmer(WORKERS_IDLE_SECONDS)
        while not signals.stop:
            timeout = self._timeout(next_rescan)
            self.take_events(timeout)
            self._adopt_new_dirs()
            now = time.monotonic()
            if self.rescan_due or now >= next_rescan:
                self._rescan()
                self.pipeline.tidy()
                next_rescan = now + self.options.rescan_seconds
            self._flush()
            self.pipeline.stop_idle_workers(WORKERS_IDLE_SECONDS)
            heap.tick(self.pipeline.stats.entries, now)
            if signals.reopen:
                signals.reopen = False
                self.pipeline.reopen_logs()
                log.info("reopened the archive and the event log")
            if signals.report or now >= next_status:
                if signals.report:
                    signals.report = False
                    log.info("statistics: %s", describe_status(self.status()))
                self._write_status()
                next_status = now + self.options.status_seconds
        self._flush(force=True)
        self.pipeline.finish()
        self._write_status()
        sd_notify("STOPPING=1")
        log.info("stopped: %s", self.pipeline.stats.summary())

    def _timeout(self, next_rescan: float) -> int:
        """Milliseconds to block in poll: until the pending batch is due, or the rescan."""
        now = time.monotonic()
        deadline = next_rescan
        if self.pipeline.queue:
            if self.pipeline.busy():
                return BUSY_POLL_MS
            deadline = min(deadline, self.pipeline.queued_since + self.options.flush_ms / 1000)
        # Capped, so a signal (which poll() does not return for) is seen promptly.
        return max(0, min(MAX_POLL_MS, int((deadline - now) * 1000)))

    def status(self) -> dict:
        return {**self.pipeline.status(), "overflows": self.overflows}

    def _write_status(self) -> None:
        status = self.status()  # outside the try: it raises what made a batch fail
        try:
            write_status(os.path.join(self.settings.state_dir, "status.json"), status)
        except OSError as exc:
            log.debug("status file: %s", exc)
        self.metrics.update(status)

    def close(self) -> None:
        self.metrics.close()
        self.wm.close()
        self.pipeline.close()
