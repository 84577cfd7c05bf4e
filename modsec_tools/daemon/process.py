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

from ..owned import OwnedDir

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


def describe_status(status: dict) -> str:
    """The status file's figures as one line for the log (SIGUSR1)."""
    entries = status["entries"]
    return (f"{entries} {'entry' if entries == 1 else 'entries'} "
            f"({status['bytes'] / 1e6:.1f} MB) in {status['batches']} batches; "
            f"{status['quarantined']} quarantined, {status['spooled']} spooled, "
            f"{status['errors']} errors; queue {status['queue_depth']}, "
            f"lag {status['lag_seconds']:.3f} s, {status['overflows']} inotify overflows; "
            f"database {'down' if status['database_down'] else 'up'}")


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


class Readiness(logging.Handler):
    """A detached daemon's word to the shell that started it, through a pipe: the errors
    logged while it starts, then ``ready`` or its exit status. The parent prints them and
    exits with that status, so a daemon that could not start never looks as if it had."""

    def __init__(self, fd: int = -1) -> None:
        super().__init__(logging.ERROR)
        self.fd = fd
        if fd >= 0:
            logging.getLogger().addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self._send("error", record.getMessage())

    def ready(self, text: str) -> None:
        self._send("ready", text)
        self._hang_up()

    def exit(self, status: int) -> None:
        """The status; the pipe stays open until the process is gone, so that the parent
        does not return while its daemon still runs."""
        self._send("exit", str(status))
        logging.getLogger().removeHandler(self)

    def _send(self, kind: str, text: str) -> None:
        if self.fd >= 0:
            line = f"{kind} {' '.join(text.splitlines())}\n".encode("utf-8", "replace")
            os.write(self.fd, line)  # a few hundred bytes: below PIPE_BUF, never split

    def _hang_up(self) -> None:
        if self.fd >= 0:
            logging.getLogger().removeHandler(self)
            os.close(self.fd)
            self.fd = -1


def detach() -> Readiness:
    """Classic double fork, for running without systemd or --foreground. The process that
    was started waits for the daemon's word (see Readiness) and exits with it."""
    read, write = os.pipe()
    first = os.fork()
    if first:
        os.close(write)
        status = _await_daemon(read)
        os.waitpid(first, 0)
        os._exit(status)
    os.close(read)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    return Readiness(write)


def _await_daemon(fd: int) -> int:
    """What the daemon said, printed; its status (1 if it died without a word)."""
    status, said = 1, False
    with os.fdopen(fd, encoding="utf-8", errors="replace") as pipe:
        for line in pipe:
            kind, _, text = line.rstrip("\n").partition(" ")
            said = True
            if kind == "error":
                print(f"modsec-tools: ERROR: {text}", file=sys.stderr)
            elif kind == "ready":
                print(f"modsec-tools: {text}", file=sys.stderr)
                status = 0
            elif kind == "exit":
                status = int(text)
    if not said:
        print("modsec-tools: ERROR: the daemon ended while starting, without a word; "
              "see its log", file=sys.stderr)
    sys.stderr.flush()
    return status


SYSLOG_SOCKET = "/dev/log"


def setup_logging(target: str, verbosity: int) -> logging.Handler:
    """``stderr`` (journald captures it), ``syslog``, or a file path (reopened on SIGHUP)."""
    if target == "syslog" and not os.path.exists(SYSLOG_SOCKET):
        # The handler would drop every line without a word.
        raise FileNotFoundError(2, "no syslog socket: is a syslog daemon running? (or use "
                                   "--log-target FILE)", SYSLOG_SOCKET)
    level = logging.INFO - 10 * min(max(verbosity - 1, 0), 1) if verbosity else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if target == "syslog":
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address=SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
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
