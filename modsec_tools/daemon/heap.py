"""Giving a burst's memory back once the daemon is idle again.

A burst fills the parsers' caches (messages, addresses) with what the next burst will not
repeat, and CPython's freed objects leave glibc's heap holding pages the daemon no longer
uses; both count against it (RSS, PSS) until the next burst. The caches are dropped and
``malloc_trim`` returns the free pages to the kernel (elsewhere, on musl or macOS, there is
no such call and only the caches go).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

from ..audit import forget_cached


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class HeapTrimmer:
    """``tick(processed)`` from the main loop: once ``idle_seconds`` pass without an entry
    processed, after at least one was, the heap is trimmed (once per burst)."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.trim = _malloc_trim()
        self.seen = 0                   # entries processed at the last tick
        self.changed_at = time.monotonic()
        self.trimmed = True             # nothing to give back yet

    def tick(self, processed: int, now: float) -> bool:
        """True when it trimmed now."""
        if processed != self.seen:
            self.seen, self.changed_at, self.trimmed = processed, now, False
            return False
        if self.trimmed or now - self.changed_at < self.idle_seconds:
            return False
        self.trimmed = True
        forget_cached()
        gc.collect()
        if self.trim is not None:
            self.trim(0)
        return True
