"""A throw-away network namespace (``ip netns add mt-<random>``) for root-only tests.

Usage::

    with NetNS() as ns:                         # lo is up: 127.0.0.1/8 and ::1
        ns.add_addr("fd00::2/128")              # more addresses, on lo by default
        ns.run(["ip", "-o", "addr"]).stdout     # via ip netns exec; text, captured
        proc = ns.popen(["sleep", "60"])        # killed at teardown if still running
        sock = ns.socket()                      # a Python socket that lives in the namespace

Teardown kills every process left in the namespace (``ip netns pids``: TERM, then KILL) and
deletes it, and with it any firewall rules made inside.  The host's own firewall, links and
addresses are never touched.  Needs root (CAP_SYS_ADMIN) and iproute2; else :class:`Unavailable`.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Sequence

from ._util import Unavailable, wait_until

CLONE_NEWNET = 0x40000000


class NetNS:
    """A named network namespace; a context manager (create on enter, delete on exit)."""

    def __init__(self, name: str | None = None) -> None:
        if os.geteuid() != 0:
            raise Unavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise Unavailable("ip (iproute2) not installed")
        self.name = name or f"mt-{secrets.token_hex(4)}"
        self.created = False

    def __enter__(self) -> "NetNS":
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> None:
        _ip("netns", "add", self.name)
        self.created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def add_addr(self, cidr: str, dev: str = "lo") -> None:
        """Add an address inside the namespace (IPv6 without duplicate-address detection)."""
        extra = ["nodad"] if ":" in cidr else []
        _ip("-n", self.name, "addr", "add", cidr, "dev", dev, *extra)

    # -- processes ---------------------------------------------------------------------------
    def wrap(self, cmd: Sequence[str] | str) -> list[str]:
        """``ip netns exec NAME`` + cmd (a string runs through ``sh -c``)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 30.0,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion inside; output captured as text unless overridden in ``kwargs``."""
        kwargs.setdefault("text", True)
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        proc = subprocess.run(self.wrap(cmd), timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def popen(self, cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start inside; returns once the process is in the namespace (or has exited).
        Whatever is still running dies at teardown."""
        proc = subprocess.Popen(self.wrap(cmd), **kwargs)
        inode = os.stat(f"/run/netns/{self.name}").st_ino

        def inside() -> bool:
            try:
                return os.stat(f"/proc/{proc.pid}/ns/net").st_ino == inode
            except OSError:
                return False
        wait_until(inside, 10.0, alive=lambda: proc.poll() is None, interval=0.002)
        return proc

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    # -- in-process sockets ------------------------------------------------------------------
    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A socket created inside the namespace (by a short-lived thread that setns()es into it).

        A socket keeps its namespace for life, so it can be used from any thread afterwards.
        """
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(socket.socket(family, type, proto))
            except BaseException as exc:  # handed to the caller
                result.append(exc)

        thread = threading.Thread(target=make, name=f"setns-{self.name}")
        thread.start()
        thread.join()
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    # -- teardown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what runs inside (TERM, 3 s grace, KILL), then delete the namespace."""
        if not self.created:
            return
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.02)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        self.created = False


def _ip(*argv: str) -> None:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
