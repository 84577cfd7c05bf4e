"""Deciding what to do with one entry file: take it (rendered for every sink), wait, or
quarantine it. It only reads; the pipeline carries the decision out.

Being free of side effects is what lets worker processes examine entries in parallel
(``ExaminerPool``) while the pipeline's process commits batches.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from enum import Enum, IntEnum

from ..audit.clientip import Proxies
from ..audit.entry import parse_entry
from ..audit.errors import ParseError
from ..audit.event import Event
from ..audit.indexlog import IndexLine, verify
from ..audit.messages import keep_messages
from ..tree.safefs import UnsafeFile
from ..sinks import Renderer, Rendering
from ..tree.storage import EntryRef, StorageTree
from ..audit.verdict import VerdictPolicy

class Decision(Enum):
    """What is to be done with an entry file."""

    TAKE = "take"              # complete: rendered for every sink
    WAIT = "wait"              # not complete yet: left for later
    VANISHED = "vanished"      # no longer there
    QUARANTINE = "quarantine"  # never will be an entry
    ERROR = "error"            # cannot be read now


class Proof(IntEnum):
    """How we know an entry is complete, weakest first: found by a scan (it must end with
    its Z boundary or parse as JSON, and have settled), found in a directory that just
    appeared (complete ones are taken at once; the others will close), its index line, or
    its IN_CLOSE_WRITE."""

    SCAN = 0
    FRESH = 1
    INDEXED = 2
    CLOSED = 3

#: Without an index line, an entry that looks complete is still given this long when an
#: index log is configured, so a rotated index log (whose lines we never saw) does not
#: strand its entries, while normally the index line comes first.
UNINDEXED_GRACE = 60.0


@dataclass(frozen=True, slots=True)
class ExamineSettings:
    """The settings an examination depends on (picklable, for worker processes)."""

    node: str
    policy: VerdictPolicy
    proxies: Proxies
    max_entry_size: int
    settle_seconds: float
    quarantine_after: float
    index_mode: bool
    renderers: tuple[Renderer, ...] = ()   # one per sink, in the pipeline's order


@dataclass(slots=True)
class Outcome:
    ref: EntryRef
    decision: Decision
    reason: str = ""
    data: bytes = b""
    inode: int = 0
    device: int = 0
    mtime_ns: int = 0          # as read: the entry is deleted only while they are unchanged
    ctime_ns: int = 0
    verdict: str = ""          # blocked, detected or passed
    pieces: tuple = ()         # what each sink writes for it, in the renderers' order
    status: int | None = None  # kept in the journal (an HTTP/0.9 entry may have no other)
    crc: int = 0               # CRC-32 of data, for the journal (computed here, in parallel)

    # Between processes an outcome travels as plain tuples (pickling the dataclasses cost
    # twice as much); each piece as its renderer sends it. Its ref stays behind: the
    # sender of the work still holds it.
    def to_wire(self, renderers: Sequence[Renderer]) -> tuple:
        pieces = tuple(r.to_wire(p) for r, p in zip(renderers, self.pieces))
        return (self.decision, self.reason, self.data, self.inode, self.device, self.mtime_ns,
                self.ctime_ns, self.verdict, pieces, self.status, self.crc)

    @classmethod
    def from_wire(cls, ref: EntryRef, wire: tuple, renderers: Sequence[Renderer]) -> Outcome:
        (decision, reason, data, inode, device, mtime_ns, ctime_ns, verdict, pieces, status,
         crc) = wire
        pieces = tuple(r.from_wire(p) for r, p in zip(renderers, pieces))
        return cls(ref, decision, reason, data, inode, device, mtime_ns, ctime_ns, verdict,
                   pieces, status, crc)


def render(ref: EntryRef, data: bytes, info: os.stat_result, event: Event,
           settings: ExamineSettings) -> Outcome:
    entry = Rendering(event, data, settings.policy.verdict(event), settings.node)
    return Outcome(ref, Decision.TAKE, data=data, inode=info.st_ino, device=info.st_dev,
                   mtime_ns=info.st_mtime_ns, ctime_ns=info.st_ctime_ns, verdict=entry.verdict,
                   pieces=tuple(r.render(entry) for r in settings.renderers),
                   status=event.status, crc=zlib.crc32(data))


def examine(tree: StorageTree, ref: EntryRef, proof: Proof, index: IndexLine | None,
            settings: ExamineSettings, cutoff: float | None = None) -> Outcome:
    """``cutoff``: a scanned file changed at or after this time is left for its own
    IN_CLOSE_WRITE (the watcher's start-up scan must not take live entries before the
    backlog just because examining the backlog took a while)."""
    try:
        file = tree.read(ref, settings.max_entry_size)
    except UnsafeFile as exc:
        return Outcome(ref, Decision.QUARANTINE, str(exc))
    except FileNotFoundError:
        return Outcome(ref, Decision.VANISHED)
    except OSError as exc:
        return Outcome(ref, Decision.ERROR, f"cannot read: {exc.strerror or exc}")
    if file.truncated:
        return Outcome(ref, Decision.QUARANTINE,
                       f"larger than max_entry_size ({settings.max_entry_size} bytes)")
    if not file.settled:  # its writer is still at it: what was read matches no stat of it
        return Outcome(ref, Decision.WAIT, "changed while it was read")
    # Ages are taken as of the scan, not of this examination, which may come later.
    age = (cutoff or time.time()) - file.stat.st_mtime
    try:
        if index is not None:
            verify(file.data, index)
        event = parse_entry(file.data, ref.relpath, settings.proxies, index)
        problem = ("; ".join(event.problems) or "incomplete entry") if event.incomplete else None
    except ParseError as exc:
        problem = str(exc)
    if problem is None and index is None and proof < Proof.CLOSED \
            and not file.data.endswith(b"\n"):
        # ModSecurity ends every entry with a newline, its last write: without the close or
        # the index line to prove the writer done, a Z boundary without it is a file read
        # one write too early (taking it would archive it, and its final form, twice).
        problem = "entry does not end with its newline (still being written)"
    if problem is not None:
        final = index is not None or proof == Proof.CLOSED or age >= settings.quarantine_after
        return Outcome(ref, Decision.QUARANTINE if final else Decision.WAIT, problem)
    if proof == Proof.SCAN and cutoff is not None and file.stat.st_mtime >= cutoff:
        return Outcome(ref, Decision.WAIT, "written after the scan began")
    if proof == Proof.SCAN and index is None:
        settle = max(settings.settle_seconds, UNINDEXED_GRACE if settings.index_mode else 0.0)
        if age < settle:
            return Outcome(ref, Decision.WAIT, "settling")
    return render(ref, file.data, file.stat, event, settings)


# -- worker processes --------------------------------------------------------------------------
_worker: tuple[StorageTree, ExamineSettings] | None = None


#: Parsed messages a worker keeps (messages.keep_messages): a worker's memory is not
#: bounded by the daemon's budget, and 4,096 messages are ~20 MB.
WORKER_MESSAGES = 4096


def _init_worker(root: str, settings: ExamineSettings) -> None:
    global _worker
    _die_with_parent()
    keep_messages(WORKER_MESSAGES)
    _worker = (StorageTree(root), settings)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the process that started it dies (kill -9 included)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


ChunkItem = tuple[tuple[str, ...], str, Proof, IndexLine | None]


def _examine_chunk(items: list[ChunkItem], cutoff: float | None,
                   budget: int) -> tuple[list[tuple], list[ChunkItem]]:
    """Outcomes (``to_wire``) for the first items, stopping once they hold ``budget``
    bytes of entries (at least one is always examined); the items left over go back to the
    caller."""
    assert _worker is not None
    tree, settings = _worker
    outcomes: list[tuple] = []
    held = 0
    try:
        for position, (dirs, name, proof, index) in enumerate(items):
            if held >= budget:
                return outcomes, items[position:]
            outcome = examine(tree, EntryRef(dirs, name), proof, index, settings, cutoff)
            held += len(outcome.data)
            outcomes.append(outcome.to_wire(settings.renderers))
        return outcomes, []
    finally:
        tree.release()


class ExaminerPool:
    """Worker processes that examine chunks of entries, results in submission order."""

    CHUNK = 64
    # Bytes of entries a chunk's result may hold: entries are up to max_entry_size and their
    # size is chosen by whoever sends the request, so counting entries alone does not bound
    # memory (120 entries with 8 MB bodies took the daemon to 2 GB).
    CHUNK_BYTES = 4 << 20

    def __init__(self, root: str, settings: ExamineSettings, workers: int, ahead: int = 0) -> None:
        """``ahead``: entries to have examined beyond what the caller has taken, so the
        workers keep busy while it commits a batch (the pipeline passes its batch size);
        with a window smaller than a batch they would stand idle during every commit."""
        # spawn, not fork: a forked worker would inherit the daemon's descriptors (its
        # instance lock, inotify, journal) and keep them after the daemon's death. (Nor a
        # fork server: its workers hold it alive, so they would outlive a killed daemon.)
        self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(
            "spawn"), initializer=_init_worker, initargs=(root, settings))
        self.workers = workers
        self.renderers = settings.renderers
        self.in_flight = max(2 * workers, -(-ahead // self.CHUNK) + workers)
        # Every worker is started now (the executor would start them one per submission,
        # on demand); each answers its first task once it has imported everything.
        self.started = [self.executor.submit(int) for _ in range(workers)]

    @property
    def ready(self) -> bool:
        """Whether every worker has started and answered."""
        return all(future.done() for future in self.started)

    def examine(self, work: Sequence[tuple[EntryRef, Proof, IndexLine | None]],
                cutoff: float | None = None, more=None) -> Iterator[Outcome]:
        """Outcomes in submission order. Only about a batch ahead is in flight: a
        finished chunk holds its entries' bytes until the caller commits them, so
        submitting a whole backlog at once would cost memory in proportion to it.
        ``more()``, asked whenever there is room: work to append ([] for none yet,
        None: no more at all)."""
        pending: deque[tuple[Future, list[EntryRef]]] = deque()  # a chunk and its refs
        queued = list(work)
        at = 0
        try:
            while True:
                while at < len(queued) and len(pending) < self.in_flight:
                    part = queued[at:at + self.CHUNK]
                    at += len(part)
                    chunk = [(ref.dirs, ref.name, proof, index) for ref, proof, index in part]
                    pending.append((self._submit(chunk, cutoff), [item[0] for item in part]))
                if more is not None and at >= len(queued) and len(pending) < self.in_flight:
                    found = more()
                    if found is None:
                        more = None
                    elif found:
                        queued, at = found, 0
                        continue
                if not pending:
                    return
                yield from self._take(pending, cutoff)
        finally:
            for future, _refs in pending:
                future.cancel()

    def _submit(self, chunk: list[ChunkItem], cutoff: float | None) -> Future:
        return self.executor.submit(_examine_chunk, chunk, cutoff, self.CHUNK_BYTES)

    def _take(self, pending: deque[tuple[Future, list[EntryRef]]],
              cutoff: float | None) -> list[Outcome]:
        """The oldest chunk's outcomes; what it left over goes first in line, so the order
        of the outcomes stays the order of the work."""
        future, refs = pending.popleft()
        outcomes, rest = future.result()
        if rest:
            pending.appendleft((self._submit(rest, cutoff), refs[len(outcomes):]))
        return [Outcome.from_wire(ref, wire, self.renderers)
                for ref, wire in zip(refs, outcomes)]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        stop_resource_tracker()


def stop_resource_tracker() -> None:
    """The spawn workers' queues start multiprocessing's resource tracker, a process of its own
    that outlives them; once they are gone it only holds memory, and the next pool starts it
    again. (Its stop is CPython's private ``_stop``, used by its own tests; without it the
    tracker stays.)"""
    from multiprocessing import resource_tracker
    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()
