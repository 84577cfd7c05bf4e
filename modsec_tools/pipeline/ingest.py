"""The ingest pipeline: storage tree → parser → every sink (sinks/) → delete.

One code path serves ``modsec-tools ingest`` (everything complete now, then exit) and
``modsec-tools watch`` (the same batches, fed by inotify). docs/ingest.md explains the
exactly-once protocol; in short, per batch:

1. journal ``batch`` record (each file as read, each entry's length in each sink, and the
   marks of the sinks free to be marked now) — fsync; the event log's lines are appended
   (what fail2ban waits for), and the rest goes to the finishing thread, which takes every
   batch waiting there as one group:
2. the event log is fdatasync'd; a ``marks`` record for the other sinks of each batch whose
   record could not hold them (a batch before it was still writing them) — fsync
3. the local sinks (archive, JSON lines) append and fdatasync, in a second thread while
4. the database inserts (idempotent) and commits, or spools the rows durably if it is down
5. journal ``done`` records — fsync;  6. delete the files (removal.py)

Meanwhile the next batches go through step 1, so an entry that closes while batches are
finishing reaches the event log without waiting for their syncs and commits; and a flood
pays those once a group, not once a batch. At most UNFINISHED_BATCHES batches, holding the
entries and bytes of two full batches at most, are journaled and not done: a crash leaves
at most those unfinished, with all their files still present; start-up completes them in
order, appending only what each sink lacks.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import Settings
from ..audit.entry import parse_entry
from ..audit.errors import ParseError
from .examine import Decision, ExamineSettings, ExaminerPool, Outcome, Proof, examine, render
from ..audit.indexlog import IndexLine, parse_index_line
from .journal import COMPACT_AT, Journal, JournaledEntry, batch_entries, batch_marks
from ..tree.removal import Leaving, Removal, empty_old_trash
from ..sinks import Sink, open_sinks
from ..tree.storage import EntryRef, Oddity, StorageTree
from ..audit.verdict import VerdictPolicy

__all__ = ["Pipeline", "Proof", "Stats"]

log = logging.getLogger(__name__)

#: Fewer entries than this are examined in-process: a worker round trip would only add
#: latency to the small batches of a live watch.
PARALLEL_FROM = 128
#: ...and with the workers stopped, fewer than this: starting them costs a few tenths of a
#: second of both cores (each imports the package), which a flood's first second cannot
#: spare (it delayed its bans by 0.5 s), while the daemon alone examines this many in less.
START_WORKERS_FROM = 2000
#: From this many entries a batch's files are written while its database insert runs,
#: and its entries are deleted while the next batch commits: below, handing the work to
#: another thread costs more CPU than the overlap saves (a live watch's batches are a few
#: entries: +15 % CPU an entry at 1,000 entries/s).
PARALLEL_SINKS_FROM = 64
# A batch is also closed at this many bytes of entries: what it holds until its commit
# (entries, archive copies, lines, rows) is then bounded whatever the entries' sizes.
BATCH_BYTES = 16 << 20
#: Batches journaled (their event lines written) but not yet done, at most; together they
#: hold at most the entries and bytes of two full batches (the memory they take).
UNFINISHED_BATCHES = 16
UNFINISHED_BYTES = 2 * BATCH_BYTES


@dataclass(slots=True)
class Stats:
    entries: int = 0
    bytes: int = 0
    quarantined: int = 0
    spooled: int = 0
    batches: int = 0
    errors: int = 0
    verdicts: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.entries / elapsed
        return (f"{_counted(self.entries, 'entry', 'entries')} ({self.bytes / 1e6:.1f} MB) in "
                f"{elapsed:.1f} s, {_counted(round(rate), 'entry', 'entries')}/s; "
                f"{self.quarantined} quarantined; {self.spooled} spooled for the database; "
                f"{_counted(self.errors, 'error', 'errors')}")


def _counted(number: int, one: str, more: str) -> str:
    return f"{number} {one if number == 1 else more}"


# -- the index log ----------------------------------------------------------------------------
class IndexFollower:
    """Reads complete new lines of the index log from a saved (inode, offset)."""

    def __init__(self, path: str, cursor: list[int] | None) -> None:
        self.path = path
        self.inode, self.offset = (cursor or (0, 0))
        self.pending = b""

    def read(self) -> list[IndexLine]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            info = os.fstat(fd)
            if info.st_ino != self.inode or info.st_size < self.offset:
                self.inode, self.offset, self.pending = info.st_ino, 0, b""  # rotated
            data = os.pread(fd, info.st_size - self.offset, self.offset)
        finally:
            os.close(fd)
        self.offset += len(data)
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]  # a line being written: finish it next time
        lines: list[IndexLine] = []
        for raw_line in data[:cut].splitlines():
            if not raw_line.strip():
                continue
            try:
                lines.append(parse_index_line(raw_line.decode("utf-8", "surrogateescape")))
            except ParseError as exc:
                log.warning("%s: %s", self.path, exc)
        return lines

    @property
    def cursor(self) -> list[int]:
        return [self.inode, self.offset - len(self.pending)]


# -- the pipeline -----------------------------------------------------------------------------
class Pipeline:
    """``with Pipeline(settings) as pipeline:`` (``open`` completes what a crash interrupted),
    then ``run_once()`` (ingest), or ``offer`` entries and ``drain`` them (watch)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tree = StorageTree(settings.storage_dir)
        self.removal = Removal(settings.storage_dir)
        self.file_sinks = ThreadPoolExecutor(1, thread_name_prefix="file-sinks")
        # Steps 2-6 (see the module's docstring), for the batches in ``to_finish``: each
        # batch's task finishes every batch waiting then (those after it find theirs done).
        self.finisher = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self.finishing: list[tuple[Future, int, int]] = []  # a batch's task, entries, bytes
        self.to_finish: list[Unfinished] = []
        self.to_finish_lock = threading.Lock()
        self.finish_failed: BaseException | None = None
        self.committing: set[str] = set()           # journaled, not yet handed to removal
        self.journal_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.seq = 1                                # the next batch's
        self.journal: Journal | None = None
        self.sinks: list[Sink] = []
        # (position in ``sinks``, sink): written as soon as a batch is journaled / when it
        # is finished
        self.ahead: list[tuple[int, Sink]] = []
        self.later: list[tuple[int, Sink]] = []
        self.examining: ExamineSettings | None = None
        self.index: IndexFollower | None = None
        self.proven: dict[str, IndexLine] = {}      # relpath → its index line
        self.queue: dict[str, tuple[EntryRef, Proof]] = {}
        self.queued_since = 0.0                     # when the queue last became non-empty
        self.reported: set[str] = set()             # oddities already logged
        self.stats = Stats()
        self.pool: ExaminerPool | None = None
        self.pool_used_at = 0.0

    def open(self) -> "Pipeline":
        settings = self.settings
        empty_old_trash(os.path.join(settings.state_dir, "trash"))
        self.journal = Journal(os.path.join(settings.state_dir, "journal"))
        self.sinks = open_sinks(settings)
        self.ahead = [(n, s) for n, s in enumerate(self.sinks) if s.ahead]
        self.later = [(n, s) for n, s in enumerate(self.sinks) if not s.ahead]
        self.examining = ExamineSettings(
            settings.node, VerdictPolicy(settings.detect_min_severity, settings.detect_min_score),
            settings.proxies, settings.max_entry_size, settings.settle_seconds,
            settings.quarantine_after, bool(settings.index_log),
            tuple(sink.renderer for sink in self.sinks))
        if settings.index_log:
            self.index = IndexFollower(settings.index_log, self.journal.last("index"))
        self.recover()
        return self

    def __enter__(self) -> "Pipeline":
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start-up ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish what a crash interrupted: the batches without ``done`` (at most the last
        UNFINISHED_BATCHES), in order, then the deletions that may have been under way:
        those of the batches completed now and of the last two groups done before the
        crash (one group's deletions can still be running when the next group's start)."""
        records = list(self.journal.records)
        self.seq = max((r["seq"] for r in records if "seq" in r), default=0) + 1
        batches = [r for r in records if r["type"] == "batch"]
        kept = {r["seq"]: set(r.get("kept", ())) for r in records if r["type"] == "done"}
        late_marks: dict[int, dict] = {}
        plans: dict[int, dict[str, dict]] = {}     # seq → sink → what recovery wrote last
        for record in records:
            if record["type"] == "marks":
                late_marks.setdefault(record["seq"], {}).update(record["marks"])
            elif record["type"] == "plan":
                plans.setdefault(record["seq"], {})[record["sink"]] = record
        finished = [r for r in batches if r["seq"] in kept][-2 * UNFINISHED_BATCHES:]
        unfinished = [r for r in batches if r["seq"] not in kept]
        for record in unfinished:
            log.warning("completing batch %d interrupted by a crash (%d files)",
                        record["seq"], len(record["files"]))
            skipped: set[str] = set()
            marks = {**batch_marks(record), **late_marks.get(record["seq"], {})}
            self._recover_sinks(record, marks, plans.get(record["seq"], {}),
                                self._reload(record, skipped))
            # The entries left in place are named, so a crash during the deletions below
            # cannot make the next start-up delete them.
            self.journal.append({"type": "done", "seq": record["seq"], "kept": sorted(skipped)})
            kept[record["seq"]] = skipped
        for record in finished + unfinished:
            self._delete(record, keep=kept[record["seq"]])
        self.tree.release()

    def _reload(self, record: dict, skipped: set[str]) -> list[Outcome]:
        """The journaled batch's entries, rendered again from the bytes that were journaled
        (the file's first ``size`` bytes, checked by CRC, whatever max_entry_size is now).
        An entry that no longer holds them is left in the tree, never deleted."""
        batch = []
        for entry in batch_entries(record):
            ref = EntryRef.from_relpath(entry.path)
            try:
                file = self.tree.read(ref, max(entry.size, self.settings.max_entry_size))
                data = file.data[:entry.size]
                if (file.stat.st_ino, file.stat.st_dev) != (entry.inode, entry.dev) or \
                        zlib.crc32(data) != entry.crc:
                    raise ParseError("changed since it was journaled")
                event = parse_entry(data, entry.path, self.examining.proxies)
            except (OSError, ParseError) as exc:
                skipped.add(entry.path)
                log.error("%s: journaled, but cannot be read as it was on recovery (%s); "
                          "left in place", entry.path, exc)
                continue
            if event.status is None:
                event.status = entry.status
            batch.append(render(ref, data, file.stat, event, self.examining))
        return batch

    # -- finding work --------------------------------------------------------------------------
    def read_index(self) -> None:
        if self.index is None:
            return
        for line in self.index.read():
            self.proven[line.relpath] = line

    def scan(self) -> Iterator[tuple[EntryRef, Proof]]:
        """Entries the tree holds now, with the proof of completeness each has."""
        for found in self.tree.scan():
            if isinstance(found, Oddity):
                self._oddity(found)
                continue
            relpath = found.ref.relpath
            yield found.ref, Proof.INDEXED if relpath in self.proven else Proof.SCAN

    # -- the queue (watch) ---------------------------------------------------------------------
    def offer(self, ref: EntryRef, proof: Proof) -> None:
        """Queue an entry for the next ``drain``. A weaker proof never replaces a stronger
        one: a rescan must not turn a closed file back into a merely scanned one."""
        queued = self.queue.get(ref.relpath)
        if queued is not None and queued[1] >= proof:
            return
        if not self.queue:
            self.queued_since = time.monotonic()
        self.queue[ref.relpath] = (ref, proof)

    def lag(self) -> float:
        """How long the oldest queued entry has waited (0 for none)."""
        return time.monotonic() - self.queued_since if self.queue else 0.0

    def rescan(self) -> None:
        """Queue everything the tree holds now (after reading new index lines)."""
        self.read_index()
        for ref, proof in self.scan():
            self.offer(ref, proof)

    def take_index(self) -> None:
        """Read new index lines and queue every entry they prove complete."""
        self.read_index()
        for relpath in list(self.proven):
            self.offer(EntryRef.from_relpath(relpath), Proof.INDEXED)

    def drain(self, stop=None, cutoff: float | None = None,
              refill: Callable[[], bool] | None = None) -> None:
        """Examine and commit what is queued (see ``process``). ``refill()`` is asked
        whenever the examiner processes have room: it may ``offer`` what came meanwhile,
        and returns False when the caller wants control back."""
        def stream() -> list | None:
            return self._take_queue() if refill is not None and refill() else None
        for ref, proof in self.process(self._take_queue(), stop, cutoff,
                                       stream if refill is not None else None):
            self.offer(ref, proof)

    def _take_queue(self) -> list[tuple[EntryRef, Proof]]:
        work = list(self.queue.values())
        self.queue.clear()
        return work

    def _oddity(self, oddity: Oddity) -> None:
        if oddity.movable:
            self._quarantine(oddity.ref, oddity.reason)
        elif oddity.ref.relpath not in self.reported:
            self.reported.add(oddity.ref.relpath)
            log.warning("%s: %s; left alone", oddity.ref.relpath, oddity.reason)

    # -- examining entries ---------------------------------------------------------------------
    def settle(self, outcome: Outcome) -> Outcome | None:
        """Carry out an examination's decision; the outcome when the entry is ready."""
        ref = outcome.ref
        if outcome.decision is Decision.TAKE:
            return outcome
        if outcome.decision is Decision.QUARANTINE:
            self._quarantine(ref, outcome.reason)
        elif outcome.decision is Decision.VANISHED:
            self.proven.pop(ref.relpath, None)
        elif outcome.decision is Decision.ERROR:
            self._count_errors(1)
            log.error("%s: %s", ref.relpath, outcome.reason)
        return None

    def _quarantine(self, ref: EntryRef, reason: str) -> None:
        try:
            where = self.tree.quarantine(ref, self.settings.quarantine_dir, reason)
        except OSError as exc:
            self._count_errors(1)
            log.error("%s: cannot quarantine (%s): %s", ref.relpath, reason, exc)
            return
        if where:
            self.stats.quarantined += 1
            self.proven.pop(ref.relpath, None)
            log.warning("%s: quarantined to %s: %s", ref.relpath, where, reason)

    # -- committing a batch --------------------------------------------------------------------
    def commit(self, batch: list[Outcome]) -> None:
        """Step 1 (see the module's docstring) here; the rest in the finishing thread."""
        if not batch:
            return
        held = sum(len(p.data) for p in batch)
        self._await_room(len(batch), held)
        self.reap()
        if self.finish_failed is not None:
            # Raised already (and maybe caught: a status read waits for the finishing too),
            # but nothing may follow it: the sinks end inside the batches it left unfinished.
            raise self.finish_failed
        if self.journal.size() >= COMPACT_AT:  # nothing unfinished, no deletion under way
            self.finish()
            self.journal.compact({"seq": self.seq - 1, "index": self.journal.last("index")})
        seq, self.seq = self.seq, self.seq + 1
        ahead, later = self.ahead, self.later
        # The other sinks can be marked now only if no batch is still writing to them.
        marked = not self.finishing
        record = {
            "type": "batch", "seq": seq,
            "marks": {sink.name: sink.mark() for _, sink in (ahead + later if marked else ahead)},
            "files": [self._journaled(p).to_json() for p in batch],
        }
        self._journal(record)
        self._write(ahead, batch, sync=False)
        for p in batch:
            self.proven.pop(p.ref.relpath, None)
        # every index line read so far is processed once this batch is done
        index = self.index.cursor if self.index is not None and not self.proven else None
        self.committing.update(p.ref.relpath for p in batch)
        self.tree.release()
        with self.to_finish_lock:
            self.to_finish.append(Unfinished(seq, batch, marked, index))
        self.finishing.append((self.finisher.submit(self._finish_waiting), len(batch), held))

    def _finish_waiting(self) -> None:
        """Steps 2-6 of every batch waiting, as one group (in the finishing thread)."""
        if self.finish_failed is not None:  # its batches stay unfinished, as after a crash
            raise self.finish_failed
        with self.to_finish_lock:
            group, self.to_finish = self.to_finish, []
        if not group:
            return
        try:
            self._finish(group)
        except BaseException as exc:
            self.finish_failed = exc
            raise

    def _finish(self, group: list["Unfinished"]) -> None:
        later = self.later
        for _, sink in self.ahead:
            sink.sync()
        self._journal(*self._late_marks(group, later))
        entries = [p for unfinished in group for p in unfinished.batch]
        self._apply(entries, later)
        self._journal(*(unfinished.done() for unfinished in group))
        self._remove_later(group[-1].seq, [_leaving(p) for p in entries])
        self.committing.difference_update(p.ref.relpath for p in entries)
        self.stats.entries += len(entries)
        self.stats.verdicts.update(p.verdict for p in entries)
        self.stats.bytes += sum(len(p.data) for p in entries)
        self.stats.batches += len(group)

    @staticmethod
    def _late_marks(group: list["Unfinished"], later: list[tuple[int, Sink]]) -> list[dict]:
        """``marks`` records for the batches journaled while others were writing to the
        later sinks: where each batch begins in them, once the batches before it in the
        group are written. Journaled (synced) before anything of the group is written."""
        records = []
        marks = {sink.name: sink.mark() for _, sink in later}
        for unfinished in group:
            if not unfinished.marked and later:
                records.append({"type": "marks", "seq": unfinished.seq, "marks": dict(marks)})
            for n, sink in later:
                marks[sink.name] = sink.mark_after(marks[sink.name],
                                                   [p.pieces[n] for p in unfinished.batch])
        return records

    def _journal(self, *records: dict) -> None:
        """Append and sync ``records``; both threads append, and neither waits for the
        other's sync (one fdatasync makes everything written before it durable)."""
        if not records:
            return
        with self.journal_lock:
            for record in records:
                self.journal.append(record, sync=False)
        self.journal.sync()

    def _await_room(self, entries: int, held: int) -> None:
        """Until a batch of ``entries`` holding ``held`` bytes may join the unfinished ones."""
        while self.finishing and not self._room(entries, held):
            self.finishing.pop(0)[0].result()

    def _room(self, entries: int, held: int) -> bool:
        """Whether that many more entries and bytes may be unfinished."""
        return len(self.finishing) < UNFINISHED_BATCHES and \
            sum(n for _, n, _ in self.finishing) + entries <= 2 * self.settings.batch_size and \
            sum(b for _, _, b in self.finishing) + held <= UNFINISHED_BYTES

    def _await_finishing(self) -> None:
        """Until every batch is done; a failure while finishing is raised here (its batches
        stay unfinished in the journal, as after a crash)."""
        while self.finishing:
            self.finishing.pop(0)[0].result()

    def reap(self) -> None:
        """Raise what made a finished batch fail, without waiting for the others."""
        while self.finishing and self.finishing[0][0].done():
            self.finishing.pop(0)[0].result()

    def busy(self) -> bool:
        """A batch committed now could wait for room. Watch then leaves what closes in the
        queue, for one larger batch once there is room."""
        self.reap()
        return not self._room(self.settings.batch_size, BATCH_BYTES)

    def finish(self) -> None:
        """Until every batch committed so far is done and its entries deleted."""
        self._await_finishing()
        self._await_removal()

    def _journaled(self, p: Outcome) -> JournaledEntry:
        return JournaledEntry(p.ref.relpath, p.inode, p.device, len(p.data), p.crc, p.status,
                              p.mtime_ns, p.ctime_ns,
                              {sink.name: length for sink, piece in zip(self.sinks, p.pieces)
                               if (length := sink.length(piece)) is not None})

    def _apply(self, batch: list[Outcome], sinks: list[tuple[int, Sink]]) -> None:
        local = [(n, s) for n, s in sinks if s.local]
        remote = [(n, s) for n, s in sinks if not s.local]
        if len(batch) < PARALLEL_SINKS_FROM:
            self._write(local + remote, batch)
            return
        # The local files are written and fdatasync'd by another thread while this one
        # writes the others (both mostly wait on the disk or the network, without the
        # GIL); each sink is completed on its own after a crash, so their order is free.
        files = self.file_sinks.submit(self._write, local, batch)
        try:
            self._write(remote, batch)
        finally:
            files.result()

    def _write(self, sinks: list[tuple[int, Sink]], batch: list[Outcome],
               sync: bool = True) -> None:
        for n, sink in sinks:
            refused = sink.refused
            spooled = sink.write([p.pieces[n] for p in batch])
            if sync:
                sink.sync()
            self._count(spooled=spooled, errors=sink.refused - refused)

    def _count_errors(self, count: int) -> None:
        self._count(errors=count)

    def _count(self, spooled: int = 0, errors: int = 0) -> None:
        if spooled or errors:
            with self.stats_lock:  # both threads count
                self.stats.spooled += spooled
                self.stats.errors += errors

    def _recover_sinks(self, record: dict, marks: dict, plans: dict[str, dict],
                       batch: list[Outcome]) -> None:
        """Each sink gets what it lacks of the interrupted batch, entry by entry, from its
        mark on; or, when an earlier recovery planned what to write there (its ``plan``
        record), what it lacks of that."""
        reloaded = {p.ref.relpath: p for p in batch}
        for n, sink in enumerate(self.sinks):
            planned = plans.get(sink.name)
            if planned is None:  # (path, bytes of the entry before its region, length)
                mark = marks.get(sink.name)
                layout = [(e.path, 0, e.lengths.get(sink.name)) for e in batch_entries(record)]
            else:  # what it left out (unreadable then) comes after what it wrote
                mark = planned["mark"]
                layout = [tuple(r) for r in planned["regions"] + planned.get("left", [])]
            regions = [(length, _rest(reloaded.get(path), n, skip))
                       for path, skip, length in layout]
            refused = sink.refused
            sink.recover(mark, regions,
                         functools.partial(self._journal_plan, record["seq"], sink.name, layout))
            self._count_errors(sink.refused - refused)

    def _journal_plan(self, seq: int, sink: str, layout: list[tuple[str, int, int]],
                      mark, writes: list[tuple[int, int, int]], left: list[int]) -> None:
        self.journal.append({"type": "plan", "seq": seq, "sink": sink, "mark": mark,
                             "regions": [[layout[i][0], layout[i][1] + skip, length]
                                         for i, skip, length in writes],
                             "left": [list(layout[i]) for i in left]})

    def _delete(self, record: dict, keep: set[str] = frozenset()) -> None:
        """A journaled batch's entries, now (on start-up)."""
        self._remove_later(record["seq"], [
            (EntryRef.from_relpath(e.path), e.inode, e.dev, e.size, e.mtime, e.ctime)
            for e in batch_entries(record) if e.path not in keep])
        self._await_removal()

    def _remove_later(self, seq: int, entries: list[Leaving]) -> None:
        """Start deleting a committed batch's entries once the previous batch's are gone."""
        self._await_removal()
        self.removal.start(seq, entries, background=len(entries) >= PARALLEL_SINKS_FROM)

    def _await_removal(self) -> None:
        """Until the deletions under way are done (those that failed count as errors)."""
        self._count_errors(self.removal.wait())

    # -- driving -------------------------------------------------------------------------------
    def process(self, work: Iterable[tuple[EntryRef, Proof]], stop=None,
                cutoff: float | None = None, more=None) -> list[tuple[EntryRef, Proof]]:
        """Examine ``work`` (in worker processes when it is large) and commit it in batches
        of ``batch_size`` entries or BATCH_BYTES, in order. ``stop()`` true ends it after the
        current batch (the rest stays in the tree for next time); ``cutoff``: see ``examine``.

        ``more()`` (watch): work that came meanwhile, [] for none yet, None when the caller
        wants control back. With worker processes it is asked whenever they have room, so
        they examine what follows while a batch is committed, instead of standing idle.
        Returned: what ``more()`` gave that was then still in flight (e.g. its close event
        came while a scan's examination was under way), for the caller to queue again."""
        seen: set[str] = set()   # in flight or examined but not committed: never twice
        again: list[tuple[EntryRef, Proof]] = []

        def fresh(pairs, from_stream: bool = False) -> list:
            items = []
            for ref, proof in pairs:
                if ref.relpath in self.committing or self.removal.holds(ref.relpath):
                    continue  # committed: only its finishing or deletion is not done
                if ref.relpath not in seen:
                    seen.add(ref.relpath)
                    items.append((ref, proof, self.proven.get(ref.relpath)))
                elif from_stream:
                    again.append((ref, proof))
            return items

        def stream():
            found = more()
            return None if found is None else fresh(found, from_stream=True)

        self._process(fresh(work), stream if more else None, seen, stop, cutoff)
        return again

    def _process(self, items: list, stream, seen: set[str], stop, cutoff) -> None:
        batch: list[Outcome] = []
        held = 0
        for outcome in self._examine(items, cutoff, stream):
            ready = self.settle(outcome)
            if ready is None:
                seen.discard(outcome.ref.relpath)
            else:
                batch.append(ready)
                held += len(ready.data)
            if len(batch) >= self.settings.batch_size or held >= BATCH_BYTES:
                self.commit(batch)
                seen.difference_update(p.ref.relpath for p in batch)
                batch, held = [], 0
                if stop is not None and stop():
                    return
        self.commit(batch)

    def _examine(self, items: list, cutoff: float | None, more=None) -> Iterator[Outcome]:
        workers = self.settings.workers
        if workers <= 0 or len(items) < (PARALLEL_FROM if self.pool else START_WORKERS_FROM):
            for ref, proof, index in items:
                yield examine(self.tree, ref, proof, index, self.examining, cutoff)
            self.tree.release()
            return
        pool = self._pool()
        try:
            items, more = yield from self._examine_until_ready(pool, items, cutoff, more)
            yield from pool.examine(items, cutoff, more)
        finally:
            self.pool_used_at = time.monotonic()

    def _examine_until_ready(self, pool: ExaminerPool, items: list, cutoff: float | None, more):
        """Examines here, taking from the stream too, until the workers are up: their start-up
        (~0.3 s of imports, more on a busy machine) must not hold back a burst's bans.
        Returns the work left for them and the stream (None once it has ended)."""
        taken = 0
        try:
            while not pool.ready:
                if taken == len(items):
                    found = more() if more is not None else None
                    if not found:
                        return [], None if found is None else more
                    items, taken = found, 0
                ref, proof, index = items[taken]
                yield examine(self.tree, ref, proof, index, self.examining, cutoff)
                taken += 1
            return items[taken:], more
        finally:
            self.tree.release()

    def _pool(self) -> ExaminerPool:
        if self.pool is None:
            self.pool = ExaminerPool(self.settings.storage_dir, self.examining,
                                     self.settings.workers, ahead=self.settings.batch_size)
        return self.pool

    def stop_idle_workers(self, idle_seconds: float) -> None:
        """Worker processes are for backlogs: once none has come for ``idle_seconds`` they
        are stopped (they hold most of the daemon's memory), and started again for the
        next backlog."""
        if self.pool is not None and time.monotonic() - self.pool_used_at >= idle_seconds:
            self.pool.close()
            self.pool = None

    def _scan_all(self) -> list[tuple[EntryRef, Proof]]:
        """The whole scan; as soon as it is clearly a backlog the workers are started, so
        their start-up (~0.3 s of imports) overlaps the rest of the scan."""
        work = []
        for found in self.scan():
            work.append(found)
            if len(work) == PARALLEL_FROM and self.settings.workers > 0:
                self._pool()
        return work

    def run_once(self, progress=None) -> Stats:
        """Everything complete now: index lines first (already proven), then the tree."""
        self.read_index()
        try:
            work = self._scan_all()
        except OSError as exc:
            self._count_errors(1)
            log.error("cannot open the storage directory %s: %s", self.settings.storage_dir,
                      exc.strerror or exc)
            return self.stats
        work.sort(key=lambda item: item[0].name)  # ModSecurity's names sort by time
        if progress is not None:
            work = progress(work)
        self.process(work)
        self.finish()
        self.flush()
        self.tree.remove_empty_dirs()
        return self.stats

    def flush(self) -> None:
        """Let sinks deliver what they kept for later (a database back from an outage)."""
        self._await_finishing()
        for sink in self.sinks:
            sink.flush()

    def reopen_logs(self) -> None:
        self._await_finishing()
        for sink in self.sinks:
            sink.reopen()

    def tidy(self) -> None:
        """Between batches, now and then: empty directories pruned, sinks flushed."""
        self.finish()
        self.tree.remove_empty_dirs()
        self.flush()

    def status(self) -> dict:
        self._await_finishing()  # the sinks' status is read while none is being written
        stats = self.stats
        return {"entries": stats.entries, "bytes": stats.bytes,
                "quarantined": stats.quarantined, "spooled": stats.spooled,
                "errors": stats.errors, "batches": stats.batches,
                "verdicts": dict(stats.verdicts),
                "queue_depth": len(self.queue), "lag_seconds": round(self.lag(), 3),
                "database_down": False, **self._sink_status()}

    @property
    def unusable(self) -> str:
        """Why a sink cannot be used until the admin acts ("" while all can)."""
        return "; ".join(sink.unusable for sink in self.sinks if sink.unusable)

    def _sink_status(self) -> dict:
        status: dict = {}
        for sink in self.sinks:
            status.update(sink.status())
        return status

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.finisher.shutdown()  # a failure there was raised by reap or finish, or is
        self.file_sinks.shutdown()  # completed from the journal by the next start-up
        for sink in self.sinks:
            sink.close()
        if self.journal is not None:
            self.journal.close()
        self.removal.close()


@dataclass(slots=True)
class Unfinished:
    """A batch journaled, its event lines written, waiting for the finishing thread."""

    seq: int
    batch: list[Outcome]
    marked: bool                   # the batch record holds the later sinks' marks
    index: list[int] | None        # the index log's cursor once it is done

    def done(self) -> dict:
        record: dict = {"type": "done", "seq": self.seq}
        if self.index is not None:
            record["index"] = self.index
        return record


def _rest(outcome: Outcome | None, sink: int, skip: int):
    """An entry's piece for the sink at that position, without its first ``skip`` bytes
    (None when the entry could not be rendered again)."""
    if outcome is None:
        return None
    piece = outcome.pieces[sink]
    return piece[skip:] if skip else piece


def _leaving(p: Outcome) -> Leaving:
    return (p.ref, p.inode, p.device, len(p.data), p.mtime_ns, p.ctime_ns)
