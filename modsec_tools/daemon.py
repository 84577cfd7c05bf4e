"""Daemon plumbing: signals as flags, systemd notification, the status file, logging targets."""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
import time


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
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as stream:
        json.dump({**status, "updated": time.time()}, stream, indent=1, sort_keys=True)
    os.replace(temporary, path)


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
