"""This machine as a throw-away server: its own /etc, /opt, /usr and /var, for a live install.

Usage::

    with NetNS() as ns, PrivateHost(tmp_path, ns) as host:
        host.run("./install.sh --no-deps", cwd=REPO)       # live: no --root, writes /etc ...
        host.run("apache2ctl restart")                      # a daemon, inside the namespaces
        host.path("/etc/modsec-tools/modsec-tools.conf").read_text()

Every command runs in a private mount namespace inside ``ns``, where /etc, /opt, /usr and
/var are overlays of the host's (writes land in ``workdir``, the host's files are never
changed), /run is an empty tmpfs (no systemd, no fail2ban socket of the host's: install.sh
takes the path of a host without systemd) and /proc/sys is read-only (a sysctl cannot reach
the host's kernel settings). ``path()`` reads and writes that view from outside
(/proc/PID/root). On exit every process of the mount namespace is killed (TERM, then KILL),
daemons included; the namespace and its overlays go with its last process. Needs root and
overlayfs; else :class:`Unavailable`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from ._util import ServerProcess, Unavailable, die_with_parent
from .netns import NetNS

OVERLAID = ("/etc", "/opt", "/usr", "/var")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PrivateHost(ServerProcess):
    """``proc`` is the holder: a process that keeps the mount namespace alive."""

    def __init__(self, workdir: str | os.PathLike[str], netns: NetNS) -> None:
        if os.geteuid() != 0:
            raise Unavailable("a private host needs root (mount namespaces, overlayfs)")
        self.workdir = Path(workdir)
        self.netns = netns

    def start(self) -> None:
        for top in OVERLAID:
            if _mounts_below(top):
                raise Unavailable(f"{top} has mounts below it, which an overlay would hide")
        # The holder says "ready" once it runs inside its new mount namespace: before that,
        # nsenter would mount on the host's.
        self.proc = self.netns.popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             "echo ready; exec sleep infinity"], stdout=subprocess.PIPE,
            preexec_fn=die_with_parent)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n" \
                or _mount_ns(self.proc.pid) in (None, _mount_ns(os.getpid())):
            raise RuntimeError("the private host's mount namespace did not come up")
        script = ["set -e"]
        for top in OVERLAID:
            layer = self.workdir / top.strip("/")
            (layer / "upper").mkdir(parents=True)
            (layer / "work").mkdir()
            script.append(f"mount -t overlay overlay -o lowerdir={top},upperdir={layer}/upper,"
                          f"workdir={layer}/work {top}")
        script += ["mount -t tmpfs -o mode=0755 tmpfs /run", "mkdir -m 1777 /run/lock",
                   "mount --bind /proc/sys /proc/sys", "mount -o remount,bind,ro /proc/sys"]
        done = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "sh", "-c",
                               "\n".join(script)], capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"private host mounts failed: {done.stderr.strip()}")
        if _overlays("self") & set(OVERLAID) or not self.overlaid():
            raise RuntimeError("the private host's overlays are not where they belong")

    def overlaid(self) -> bool:
        """Whether the holder sees every overlay (commands run nowhere else)."""
        return set(OVERLAID) <= _overlays(str(self.pid))

    # -- inside --------------------------------------------------------------------------------
    def command(self, cmd: Sequence[str] | str, env: dict[str, str] | None = None) -> list[str]:
        """``cmd`` as run inside (a string through ``sh -c``), with a root login's plain
        environment (and ``env``)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        base = {"PATH": SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        assigned = [f"{k}={v}" for k, v in (base | (env or {})).items()]
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "--wd=/", "env", "-i", *assigned,
                *argv]

    def run(self, cmd: Sequence[str] | str, *, check: bool = True, timeout: float = 300,
            env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion inside; output captured as text. Daemons it starts stay inside
        until close()."""
        kwargs.setdefault("capture_output", True)
        assert self.overlaid(), "refusing to run outside the overlays"
        proc = subprocess.run(self.command(cmd, env), text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kwargs)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd!r} exited {proc.returncode}\n--- stdout\n{proc.stdout}"
                                 f"\n--- stderr\n{proc.stderr}")
        return proc

    def path(self, path: str) -> Path:
        """``path`` as the processes inside see it."""
        return Path(f"/proc/{self.pid}/root") / path.lstrip("/")

    @property
    def pid(self) -> int:
        assert self.running and self.proc is not None, "private host not running"
        return self.proc.pid

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        if self.proc is None:
            return
        namespace = _mount_ns(self.proc.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [pid for pid in _pids() if pid != self.proc.pid
                    and namespace is not None and _mount_ns(pid) == namespace]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def _overlays(pid: str) -> set[str]:
    """Where process ``pid`` ("self" too) sees overlay file systems mounted."""
    with open(f"/proc/{pid}/mountinfo") as stream:
        rows = [line.split(" - ") for line in stream]
    return {row[0].split()[4] for row in rows if row[1].startswith("overlay ")}


def _mounts_below(top: str) -> list[str]:
    with open("/proc/self/mountinfo") as stream:
        targets = [line.split()[4] for line in stream]
    return [t for t in targets if t.startswith(top + "/")]


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
