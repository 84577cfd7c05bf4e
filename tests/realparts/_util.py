"""Small helpers shared by the real-part harnesses (no pytest imports here)."""
from __future__ import annotations

import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable


class Unavailable(RuntimeError):
    """A real part (binary, module, privilege) is missing; fixtures turn this into skip/fail."""


class ServerProcess:
    """A server run as a subprocess: a context manager that starts it and always closes
    it (also when start() fails half-way). Subclasses set ``proc`` in start()."""

    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's (master's) pid; ``ip netns exec`` execs into it."""
        return self.proc.pid if self.running else None  # type: ignore[union-attr]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def read_from(path: Path, offset: int = 0) -> str:
    """What ``path`` holds after byte ``offset`` ('' if absent)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset`` ('' if absent)."""
    return "\n".join(read_from(path, offset).splitlines()[-lines:])


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def wait_until(ready: Callable[[], bool], timeout: float, *, alive: Callable[[], bool] = lambda: True,
               interval: float = 0.02) -> bool:
    """Poll ``ready`` until it is true (True), the deadline passes or ``alive`` turns false (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return ready()
        time.sleep(interval)
    return ready()


def die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the test process dies, so nothing outlives a crashed run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)            # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Send ``sig``; escalate to SIGKILL when the process has not exited after ``timeout`` s."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def traversable(path: Path, uid: int, gid: int) -> bool:
    """Can ``uid``/``gid`` reach ``path`` (x on every existing ancestor)? Plain modes, no ACLs."""
    if uid == 0:
        return True
    try:
        groups = set(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        groups = {gid}
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid in groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return False
    return True
