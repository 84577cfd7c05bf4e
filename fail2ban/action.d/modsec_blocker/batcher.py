"""The coalescing queue and worker thread between fail2ban's calls and the kernel.

After a quiet spell a change is applied at once, by the caller (fail2ban's thread that
bans): a lone ban is in the kernel when ban() returns, without a hand-over to another
thread.  While changes keep coming they are queued, and the worker thread applies the queue
in one kernel transaction at most every `interval`: a flood goes in a few large
transactions.
"""
import math
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

from .addresses import Key

# A queued change: the ban's end (epoch seconds; None = permanent) or REMOVE.
REMOVE = "remove"
Change = Union[float, None, str]
# The least time between two transactions in a flood when the options leave it to the backend:
# one that runs a program forks fail2ban's process, which stalls its other threads (its own
# ban handling included), and libiptc re-commits the whole table, so such transactions must be
# rare; libnftables inside the process only costs its own time, which is small.
INTERVAL_COSTLY = 0.2
INTERVAL_CHEAP = 0.01


class Batcher:
    """Coalesces changes per address and applies them from a worker thread.

    The queue maps each address to its latest wanted state (an end time or REMOVE), so a ban
    followed by a prolong or an unban in the same batch costs one change.  Timeouts are
    computed when the batch is applied.  Bans longer than the backend's maximum timeout are
    re-written every max_timeout/2 until they end.
    """

    # failed transactions in a row that make the failure the kernel's (objects gone, set full)
    # rather than one bad element's: splitting further would only multiply the failures
    MAX_FAILED_IN_A_ROW = 32

    def __init__(self, backend, delay: float, interval: Optional[float], batchmax: int, log,
                 refused: Callable[[Key, str], None]) -> None:
        self.backend, self.delay, self.batchmax, self.log = backend, delay, batchmax, log
        if interval is None:
            interval = INTERVAL_CHEAP if backend.cheap else INTERVAL_COSTLY
        self.interval = interval
        self.refused = refused                     # called with a ban the kernel refused on its own
        self.last_apply = -math.inf                # monotonic start of the last transaction
        self.cond = threading.Condition()
        self.pending: Dict[Key, Change] = {}
        self.long: Dict[Key, float] = {}           # bans beyond max_timeout -> end
        self.next_refresh = math.inf
        self.busy = False
        self.closing = False
        self.thread: Optional[threading.Thread] = None
        self.applied = 0
        self.transactions = 0

    def start(self) -> None:
        with self.cond:
            if self.thread is not None and self.thread.is_alive():
                return
            self.closing = False
            self.thread = threading.Thread(target=self._run, name=f"f2b/modsec-block.{self.backend.s.name}",
                                           daemon=True)
            self.thread.start()

    def put(self, key: Key, change: Change) -> None:
        """Apply a change now if the kernel has been quiet for `interval`, else queue it;
        applied once start() ran (fail2ban may ban before the action started)."""
        with self.cond:
            now = time.monotonic()
            if (self.thread is None or self.busy or self.pending or self.delay > 0
                    or now < self.last_apply + self.interval):
                self.pending.pop(key, None)         # re-insert: keeps arrival order roughly
                self.pending[key] = change
                self.cond.notify()
                return
            self.busy = True                        # the worker waits for this transaction
            self.last_apply = now
        try:
            self._apply({key: change})
        finally:
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def discard_all(self) -> None:
        with self.cond:
            self.pending.clear()
            self.long.clear()
            self.next_refresh = math.inf

    def drain(self, timeout: float = 30) -> bool:
        """Wait until everything queued so far reached the kernel."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while (self.pending or self.busy) and self.thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(30)
        with self.cond:
            self.thread = None
            deadline = time.monotonic() + 30
            while self.busy and time.monotonic() < deadline:      # a change being applied by put()
                self.cond.wait(1)

    # -- worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closing and (self.busy or (not self.pending and time.time() < self.next_refresh)):
                    self.cond.wait(min(60.0, max(0.01, self.next_refresh - time.time())))
                if self.closing:
                    self.cond.notify_all()
                    return
                self._queue_refreshes()
                self.busy = True
            self._gather()
            self.last_apply = time.monotonic()
            with self.cond:
                batch = dict(list(self.pending.items())[: self.batchmax])
                for key in batch:
                    del self.pending[key]
            try:
                self._apply(batch)
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def _gather(self) -> None:
        """Wait, if at all, before the next transaction: not after a quiet spell (only `delay`,
        0 by default), else until `interval` after the previous one started, unless a big
        batch (a twentieth of batchmax) is already waiting."""
        if self.delay > 0:
            time.sleep(self.delay)
        deadline = self.last_apply + self.interval
        big = max(1, self.batchmax // 20)
        while len(self.pending) < big:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.01, left))

    def _queue_refreshes(self) -> None:
        """(under cond) Re-queue long bans when their shortened kernel timeout runs low."""
        now = time.time()
        if now < self.next_refresh:
            return
        for key, end in list(self.long.items()):
            if end <= now:
                del self.long[key]
            elif key not in self.pending:
                self.pending[key] = end
        self.next_refresh = now + self._refresh_interval() if self.long else math.inf

    def _refresh_interval(self) -> float:
        return max(1.0, (self.backend.max_timeout or 0) / 2)

    def _apply(self, batch: Dict[Key, Change]) -> None:
        if not batch:
            return
        now = time.time()
        cap = self.backend.max_timeout
        adds: Dict[Key, Optional[int]] = {}
        removes: List[Key] = []
        with self.cond:
            for key, end in batch.items():
                if end == REMOVE:
                    removes.append(key)
                    self.long.pop(key, None)
                    continue
                timeout = None if end is None else max(1, math.ceil(end - now))
                if cap is not None and timeout is not None and timeout > cap:
                    timeout = cap
                    self.long[key] = end
                    self.next_refresh = min(self.next_refresh, now + self._refresh_interval())
                else:
                    self.long.pop(key, None)
                adds[key] = timeout
        started = time.monotonic()
        self.applied += self._transact(adds, removes)
        self.log.debug("modsec-block %s: %d ban(s), %d unban(s) in %.1f ms", self.backend.kind,
                       len(adds), len(removes), 1000 * (time.monotonic() - started))

    def _transact(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> int:
        """Apply a batch; returns how many changes reached the kernel.

        A batch the kernel refuses (twice: the first failure may be transient) is split in
        halves, down to the one change it refuses, which alone is dropped and reported: one
        bad element never costs another change.
        """
        todo = [(adds, removes)]
        applied = failed_in_a_row = 0
        retries = 1                                 # for the whole batch only
        while todo:
            part = todo.pop()
            error = self._try(part[0], part[1], retries)
            retries = 0
            size = len(part[0]) + len(part[1])
            if error is None:
                applied += size
                failed_in_a_row = 0
                continue
            failed_in_a_row += 1
            if size == 1:
                self._refuse_one(part[0], part[1], error)
            elif failed_in_a_row > self.MAX_FAILED_IN_A_ROW:
                lost = size + sum(len(a) + len(r) for a, r in todo)
                self.log.error("modsec-block %s: %d change(s) not applied: %s", self.backend.kind, lost, error)
                return applied
            else:
                todo.extend(_halves(part[0], part[1]))
        return applied

    def _try(self, adds: Dict[Key, Optional[int]], removes: List[Key], retries: int) -> Optional[Exception]:
        """Apply; the error if the kernel refused (after `retries` more tries), else None."""
        error: Optional[Exception] = None
        for attempt in range(retries + 1):
            self.transactions += 1
            try:
                self.backend.apply(adds, removes)
                return None
            except Exception as e:                  # keep the worker alive whatever happens
                error = e
                if attempt < retries:
                    time.sleep(0.2)                 # transient (lock, busy)
        return error

    def _refuse_one(self, adds: Dict[Key, Optional[int]], removes: List[Key], error: Exception) -> None:
        if removes:
            self.log.error("modsec-block %s: unban of %s not applied: %s", self.backend.kind, removes[0][1], error)
            return
        key = next(iter(adds))
        with self.cond:
            self.long.pop(key, None)
        self.refused(key, f"the kernel refused it ({error})")


def _halves(adds: Dict[Key, Optional[int]], removes: List[Key]) -> List[Tuple[Dict[Key, Optional[int]], List[Key]]]:
    """A batch split in two (adds and removes alike), the first half last: it is applied first."""
    changes: List[Tuple[Key, Union[int, None, str]]] = list(adds.items()) + [(k, REMOVE) for k in removes]
    middle = len(changes) // 2
    return [({k: t for k, t in half if t != REMOVE}, [k for k, t in half if t == REMOVE])
            for half in (changes[middle:], changes[:middle])]
