"""The coalescing queue and worker thread between fail2ban's calls and the kernel.

ban() and unban() only queue the change; the worker applies what is queued in one kernel
transaction, so a flood is applied in a few large transactions.
"""
import math
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

from .addresses import Key

# A queued change: the ban's end (epoch seconds; None = permanent) or REMOVE.
REMOVE = "remove"
Change = Union[float, None, str]


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

    def __init__(self, backend, delay: float, interval: float, batchmax: int, log,
                 refused: Callable[[Key, str], None]) -> None:
        self.backend, self.delay, self.interval, self.batchmax, self.log = backend, delay, interval, batchmax, log
        self.refused = refused                     # called with a ban the kernel refused on its own
        self.last_apply = 0.0                      # monotonic start of the last transaction
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
        """Queue a change; applied once start() ran (fail2ban may ban before the action started)."""
        with self.cond:
            self.pending.pop(key, None)             # re-insert: keeps arrival order roughly
            self.pending[key] = change
            self.cond.notify()

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
        self.thread = None

    # -- worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.closing and time.time() < self.next_refresh:
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
        """Let a burst pile up before a transaction.

        The first change after a quiet spell waits `delay` (2 ms).  While changes keep
        arriving, transactions start at most every `interval` (0.2 s), so the kernel tools
        run a few times a second instead of once per handful of bans (fail2ban itself hands
        bans to actions 0.2-0.8 s after the failure) -- but a big waiting batch goes at
        once, and so does the tail of a burst once nothing new arrived for 10 ms.
        """
        time.sleep(self.delay)
        big = max(1, self.batchmax // 20)
        deadline = self.last_apply + self.interval
        seen = len(self.pending)
        while seen < big and time.monotonic() < deadline:
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            now_pending = len(self.pending)
            if now_pending == seen:
                return                              # the burst is over
            seen = now_pending

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
