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


def _mapped_semaphores() -> set[str]:
    """The named semaphores some process has open (sem_open maps the file until sem_close)."""
    mapped = set()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                mapped.update(line.split(f"{SHM}/", 1)[1].split()[0]
                              for line in maps if f"{SHM}/sem.mp-" in line)
        except (OSError, ValueError):
            continue
    return mapped


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_semaphores():
    """The crash tests kill -9 whole process groups, multiprocessing's resource tracker
    included, so the named semaphores of the examiner pools (spawn context) they killed stay
    in /dev/shm (~150 a full run). Remove those this session made that no process has open."""
    before = _semaphores()
    yield
    for name in _semaphores() - before - _mapped_semaphores():
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass
