"""The suite's own housekeeping (tests/conftest.py): the named semaphores a session removes
at its end are the leaked ones only, never those of a pool still running elsewhere (several
sessions share a machine, and nested ones run inside a session: run-tests, install tests)."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

from tests import conftest


def test_a_live_pools_semaphores_are_kept():
    """The process that makes a semaphore maps it under glibc's temporary name only; removed,
    the pool's next worker (which opens it by name) dies at start: BrokenProcessPool."""
    before = conftest._semaphores()
    lock = multiprocessing.get_context("spawn").Lock()
    name = "sem." + lock._semlock.name.lstrip("/")
    assert name in conftest._semaphores() - before
    assert name not in conftest.remove_leaked_semaphores(before)
    assert os.path.exists(os.path.join(conftest.SHM, name))


def test_a_semaphore_nobody_maps_is_removed():
    """Its process died without sem_unlink (kill -9 of a whole process group)."""
    before = conftest._semaphores()
    name = f"mp-leaked{os.getpid()}"
    subprocess.run([sys.executable, "-c", "import _multiprocessing, sys; "
                    "_multiprocessing.SemLock(1, 1, 1, sys.argv[1], False)", "/" + name],
                   check=True, timeout=60)
    assert f"sem.{name}" in conftest._semaphores()
    conftest.remove_leaked_semaphores(before)  # (another session's end may come first)
    assert not os.path.exists(os.path.join(conftest.SHM, f"sem.{name}"))
