"""One ingest or watch at a time per state directory (flock, released by the kernel on exit)."""
from __future__ import annotations

import fcntl
import os

from ..owned import OwnedDir


class AlreadyRunning(RuntimeError):
    pass


class InstanceLock:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "modsec-tools.lock")
        self.fd = -1

    def acquire(self) -> "InstanceLock":
        owned, name = OwnedDir.of(self.path, 0o700)
        with owned:
            fd = owned.open(name, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another modsec-tools ingest/watch holds {self.path} "
                                 f"(pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "InstanceLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
