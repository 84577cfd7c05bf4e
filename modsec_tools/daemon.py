"""Daemon plumbing: signals as flags, systemd notification, the status file, logging targets."""
from __future__ import annotations

import ctypes
import json
import logging
import logging.handlers
import os
import platform
import signal
import socket
import sys
import time

from .owned import OwnedDir

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


class Signals:
    """SIGTERM/SIGINT → stop, SIGHUP → reopen logs, SIGUSR1 → report statistics.

    Handlers only set flags; the main loop acts on them between batches, so a signal never
    interrupts a batch half-way.
    """

    def __init__(self) -> None:
        self.stop = False
        self.reopen = False
        self.report = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reopen)
        signal.signal(signal.SIGUSR1, self._report)

    def _stop(self, *_: object) -> None:
        self.stop = True

    def _reopen(self, *_: object) -> None:
        self.reopen = True

    def _report(self, *_: object) -> None:
        self.report = True


def bound_malloc() -> None:
    """Keep a long-running daemon's heap from ratcheting up (glibc only; call it before any
    thread starts). By default glibc gives every thread its own arena, and each free of a
    large block raises the mmap threshold, so later blocks of that size (entries, pickled
    worker results, a batch's joined archive bytes) come from arenas that are rarely
    trimmed: RSS follows the largest bursts and stays there. Fixed thresholds turn off that
    adaptation: blocks from 128 KiB up are mmapped and given back when freed, and the heap's
    free top is returned beyond 256 KiB."""
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, 2)
    mallopt(_M_MMAP_THRESHOLD, 128 << 10)
    mallopt(_M_TRIM_THRESHOLD, 256 << 10)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness/status; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        pass


def write_status(path: str, status: dict) -> None:
    """Atomically replace the JSON status file (readable by monitoring)."""
    text = json.dumps({**status, "updated": time.time()}, indent=1, sort_keys=True)
    owned, name = OwnedDir.of(path, 0o700)
    with owned:
        owned.replace(name, text.encode(), 0o644)


def setup_logging(target: str, verbosity: int) -> logging.Handler:
    """``stderr`` (journald captures it), ``syslog``, or a file path (reopened on SIGHUP)."""
    level = logging.INFO - 10 * min(max(verbosity - 1, 0), 1) if verbosity else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if target == "syslog":
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("modsec-tools[%(process)d]: %(levelname)s: "
                                               "%(message)s"))
    elif target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    else:
        handler = logging.handlers.WatchedFileHandler(target)
        handler.setFormatter(logging.Formatter("%(asctime)s modsec-tools[%(process)d]: "
                                               "%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    return handler
