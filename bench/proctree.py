"""A process and those below it, from /proc: what the benches measure or place."""
from __future__ import annotations

import os
from pathlib import Path


def proc_stat(pid: int) -> list[bytes]:
    """/proc/<pid>/stat's fields after the command name."""
    return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()


def children(pid: int) -> list[int]:
    out = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(proc_stat(int(entry))[1]) == pid:
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    tree, todo = [], [pid]
    while todo:
        one = todo.pop()
        tree.append(one)
        todo += children(one)
    return tree
