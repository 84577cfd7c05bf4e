"""The parts of a pipeline in CPU control groups of their own, weighted as systemd runs them.

On a server each part is a service: systemd puts apache2.service, fail2ban.service and
modsec-tools.service each in a control group of its own, and under a flood the scheduler
shares the CPU between the groups by weight (CPUWeight=, default 100), not between their
threads. Apache's workers are many threads in one group; a bench that leaves every process
in one group lets them crowd out fail2ban's and watch's few threads as no deployment would
(flood tails of 150-360 ms instead of tens). So the bench does what systemd does: a group
per part, with the unit's weight. The attack clients, on other machines in real life, get a
group of their own.

cgroup v1 (``cpu.shares``, 1024 for weight 100, as systemd maps it) or v2 (``cpu.weight``);
``available()`` is None when neither can be used here, and the bench says so.
"""
from __future__ import annotations

import re
from pathlib import Path

from bench.proctree import descendants

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")


def unit_weight(unit: Path, default: int = 100) -> int:
    """The CPUWeight= a systemd unit file sets (systemd's default when it sets none)."""
    found = re.search(r"^CPUWeight=(\d+)\s*$", unit.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else default


class CpuGroups:
    """Groups under ``<hierarchy>/<name>``; ``close()`` moves their processes back where this
    process was and removes the groups."""

    def __init__(self, name: str) -> None:
        self.v1 = (V1 / "cpu.shares").exists()
        if not self.v1:
            (V2 / "cgroup.subtree_control").write_text("+cpu")
        self.hierarchy = V1 if self.v1 else V2
        self.home = self.hierarchy / self._own_path().lstrip("/")
        self.root = self.hierarchy / name
        self.root.mkdir()
        if not self.v1:
            (self.root / "cgroup.subtree_control").write_text("+cpu")
        self.groups: list[Path] = []

    def _own_path(self) -> str:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if ("cpu" in controllers.split(",")) if self.v1 else controllers == "":
                return path
        return "/"

    def place(self, group: str, pid: int, weight: int) -> None:
        """``pid`` and its descendants (those it starts later follow it) into ``group``."""
        path = self.root / group
        if path not in self.groups:
            path.mkdir()
            self.groups.append(path)
            if self.v1:
                (path / "cpu.shares").write_text(str(weight * 1024 // 100))
            else:
                (path / "cpu.weight").write_text(str(weight))
        for member in descendants(pid):
            try:
                (path / "cgroup.procs").write_text(str(member))
            except ProcessLookupError:
                pass

    def describe(self) -> str:
        return f"cgroup {'v1 cpu.shares' if self.v1 else 'v2 cpu.weight'}"

    def close(self) -> None:
        for path in self.groups:
            for member in (path / "cgroup.procs").read_text().split():
                try:
                    (self.home / "cgroup.procs").write_text(member)
                except ProcessLookupError:
                    pass
            path.rmdir()
        self.root.rmdir()


def available(name: str) -> CpuGroups | None:
    """Groups under ``name``, or None where this machine has no CPU controller to use."""
    try:
        return CpuGroups(name)
    except OSError:
        return None
