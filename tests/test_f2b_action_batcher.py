"""The action's batching worker (modsec_blocker.batcher) against a fake kernel: coalescing,
the split retry that costs a refused change no other change, long-ban refreshes, drain and
close.  No fail2ban and no kernel: the fake records every transaction and refuses chosen
elements, as no real kernel refuses an address the action lets through.  The same worker
against the real kernels: tests/test_f2b_action*.py.
"""
from __future__ import annotations

import logging
import re
import threading
import time

import pytest

from tests.f2b_harness import blocker_package

blocker = blocker_package()
from modsec_blocker.backends.base import Backend, BackendError  # noqa: E402
from modsec_blocker.batcher import REMOVE, Batcher  # noqa: E402
from modsec_blocker.options import Settings  # noqa: E402


class FakeKernel(Backend):
    """Holds what it was given; refuses any transaction holding a poisoned address ("*": all)."""

    kind = "fake"
    how = "memory"
    cheap = False

    def __init__(self, poison=(), max_timeout: int | None = 2147483) -> None:
        super().__init__(Settings.parse("modsec", {}))
        self.poison = set(poison)
        self.cap = max_timeout
        self.held: dict = {}
        self.transactions: list[tuple[float, dict, list]] = []     # (monotonic time, adds, removes)
        self.lock = threading.Lock()

    @property
    def max_timeout(self):
        return self.cap

    def setup(self): pass
    def teardown(self): pass
    def clear(self): self.held.clear()
    def elements(self): return set(self.held)

    def apply(self, adds, removes):
        with self.lock:
            self.transactions.append((time.monotonic(), dict(adds), list(removes)))
        bad = [a for (_, a) in list(adds) + removes if "*" in self.poison or a in self.poison]
        if bad:
            raise BackendError("refused " + bad[0])
        self.held.update(adds)
        for key in removes:
            self.held.pop(key, None)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log():
    logger = logging.getLogger(f"fake-kernel-{time.monotonic_ns()}")
    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.lines = handler.lines
    return logger


def batcher_for(kernel: FakeKernel, log, refused: list | None = None, **opts) -> Batcher:
    settings = {"delay": 0, "interval": 0.2, "batchmax": 20000, **opts}
    return Batcher(kernel, settings["delay"], settings["interval"], settings["batchmax"], log,
                   lambda key, reason: (refused if refused is not None else []).append((key[1], reason)))


ADDED = [(4, f"10.0.{n // 250}.{n % 250 + 1}") if n % 5 else (6, f"2001:db8::{n:x}") for n in range(1000)]
OLD = [(4, f"198.51.100.{n}") for n in range(1, 21)]


def _split_case(kernel: FakeKernel, log) -> tuple[Batcher, list]:
    """1,000 bans and 10 unbans queued before start: one batch."""
    refused: list = []
    batcher = batcher_for(kernel, log, refused)
    kernel.held.update((key, 600) for key in OLD)
    for key in ADDED:
        batcher.put(key, 1e10)
    for key in OLD[:10]:
        batcher.put(key, REMOVE)
    batcher.start()
    assert batcher.drain(30)
    batcher.close()
    return batcher, refused


def test_a_change_the_kernel_refuses_costs_no_other_change_of_its_batch(log):
    bad_bans = [ADDED[7][1], ADDED[500][1], ADDED[999][1]]
    bad_unban = OLD[3][1]
    kernel = FakeKernel(poison=[*bad_bans, bad_unban])
    _batcher, refused = _split_case(kernel, log)
    held = {a for _, a in kernel.held}
    assert held == ({a for _, a in ADDED} - set(bad_bans)) | {bad_unban} | {a for _, a in OLD[10:]}
    assert sorted(a for a, _ in refused) == sorted(bad_bans)             # each once
    assert all("the kernel refused it (refused " in reason for _, reason in refused)
    assert [line for line in log.lines if "not applied" in line] == [
        f"modsec-block fake: unban of {bad_unban} not applied: refused {bad_unban}"]
    assert len(kernel.transactions) < 100                 # halves, not one transaction per change


def test_a_kernel_refusing_everything_stops_the_splitting_and_says_so(log):
    kernel = FakeKernel(poison=["*"])
    _batcher, refused = _split_case(kernel, log)
    assert {a for _, a in kernel.held} == {a for _, a in OLD}
    lost = [int(m.group(1)) for line in log.lines for m in [re.search(r"(\d+) change\(s\) not applied", line)] if m]
    unbans = [line for line in log.lines if "unban of" in line]
    assert len(lost) == 1 and lost[0] + len(refused) + len(unbans) == 1010, log.lines
    assert len(kernel.transactions) < 80


def test_changes_of_one_address_coalesce_into_its_latest_state(log):
    kernel = FakeKernel()
    batcher = batcher_for(kernel, log)
    a, b, c = (4, "192.0.2.1"), (4, "192.0.2.2"), (6, "2001:db8::3")
    now = time.time()
    batcher.put(a, now + 60)
    batcher.put(a, now + 600)            # prolonged before it reached the kernel
    batcher.put(b, now + 60)
    batcher.put(b, REMOVE)               # unbanned before it reached the kernel
    batcher.put(c, None)                 # permanent
    batcher.start()
    assert batcher.drain(10)
    batcher.close()
    assert len(kernel.transactions) == 1
    _, adds, removes = kernel.transactions[0]
    assert set(adds) == {a, c} and removes == [b]
    assert 598 <= adds[a] <= 600 and adds[c] is None


def test_a_lone_ban_is_in_the_kernel_when_put_returns(log):
    """After a quiet spell the caller applies the change itself: no hand-over, no wait."""
    kernel = FakeKernel()
    batcher = batcher_for(kernel, log, delay=0, interval=0.05)
    batcher.start()
    try:
        for n in range(3):
            key = (4, f"192.0.2.{n + 1}")
            batcher.put(key, time.time() + 600)
            assert key in kernel.held
            time.sleep(0.06)                               # quiet again
        assert [len(adds) for _, adds, _ in kernel.transactions] == [1, 1, 1]
    finally:
        batcher.close()


def test_a_flood_goes_in_few_transactions(log):
    """20,000 bans put without a pause: the first at once, then one transaction per interval
    (batchmax so large that no backlog is big enough to go early)."""
    kernel = FakeKernel()
    interval = 0.05
    batcher = batcher_for(kernel, log, delay=0, interval=interval, batchmax=10 ** 6)
    batcher.start()
    end = time.time() + 600
    began = time.monotonic()
    for n in range(20000):
        batcher.put((4, f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}"), end)
        if n % 20 == 0:
            time.sleep(0.001)
    took = time.monotonic() - began
    assert batcher.drain(30)
    batcher.close()
    assert len(kernel.held) == 20000
    sizes = [len(adds) for _, adds, _ in kernel.transactions]
    assert sizes[0] == 1 and max(sizes) > 100
    assert len(sizes) <= took / interval + 2, (len(sizes), took)


def test_the_default_interval_follows_the_backends_cost(log):
    """A costly transaction (a program run, a whole libiptc table) is spaced more than a cheap one."""
    costly, cheap = FakeKernel(), FakeKernel()
    cheap.cheap = True
    assert batcher_for(costly, log, interval=None).interval > batcher_for(cheap, log, interval=None).interval


def test_bans_longer_than_the_kernel_allows_are_rewritten_before_they_expire(log):
    kernel = FakeKernel(max_timeout=2)
    batcher = batcher_for(kernel, log)
    key = (4, "192.0.2.9")
    batcher.put(key, time.time() + 3600)
    batcher.start()
    assert batcher.drain(10)
    assert kernel.held[key] == 2                           # capped
    time.sleep(1.3)                                        # the refresh comes at max_timeout / 2
    assert batcher.drain(10)
    batcher.close()
    assert len(kernel.transactions) == 2 and kernel.transactions[1][1] == {key: 2}


def test_close_stops_the_worker_and_drain_returns(log):
    kernel = FakeKernel()
    batcher = batcher_for(kernel, log)
    batcher.start()
    batcher.put((4, "192.0.2.10"), None)
    assert batcher.drain(10)
    batcher.close()
    assert batcher.thread is None
    batcher.put((4, "192.0.2.11"), None)                   # queued, applied after the next start
    assert (4, "192.0.2.11") not in kernel.held
    batcher.start()
    assert batcher.drain(10)
    batcher.close()
    assert (4, "192.0.2.11") in kernel.held
