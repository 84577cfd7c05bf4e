import os

import pytest

SHM = "/dev/shm"

pytest_plugins = ["tests.realparts.fixtures"] if os.path.exists(
    os.path.join(os.path.dirname(__file__), "realparts", "fixtures.py")) else []


def pytest_collection_modifyitems(config, items):
    """Root-only tests skip for a non-root developer; under CI (root) they always run."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, chown, iptables)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    """Under CI (root, every real part installed) a skipped test is a failure."""
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which counts as a failure: {report.longrepr}"


def _semaphores() -> set[str]:
    try:
        return {name for name in os.listdir(SHM) if name.startswith("sem.mp-")}
    except OSError:
        return set()


def _mapped_inodes() -> set[int]:
    """Inodes of the /dev/shm files some process has mapped (sem_open maps a semaphore until
    sem_close). By inode, not by name: the process that creates one maps it under glibc's
    temporary name (sem.XXXXXX, linked to sem.mp-... and then deleted); only those that open
    it later, like a pool's new workers, map it under its name."""
    mapped = set()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].startswith(f"{SHM}/"):
                        mapped.add(int(fields[4]))
        except (OSError, ValueError):
            continue
    return mapped


def remove_leaked_semaphores(before: set[str]) -> list[str]:
    """Remove the named semaphores made since ``before`` that no process has mapped; the
    names removed. (Another test session's live pool keeps its own: a worker it starts
    later opens them by name.)"""
    mapped, removed = _mapped_inodes(), []
    for name in _semaphores() - before:
        path = os.path.join(SHM, name)
        try:
            if os.stat(path).st_ino not in mapped:
                os.unlink(path)
                removed.append(name)
        except OSError:
            pass
    return removed


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_semaphores():
    """The crash tests kill -9 whole process groups, multiprocessing's resource tracker
    included, so the named semaphores of the examiner pools (spawn context) they killed stay
    in /dev/shm (~150 a full run). Remove those this session made that no process has open."""
    before = _semaphores()
    yield
    remove_leaked_semaphores(before)
