"""Errors the user or the system causes end in one line that names the file or the setting,
never in a Python traceback: a full or read-only file system (ingest exits 1, the daemon
waits it out and says so), and nothing is lost or written twice once the cause is gone."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests import ingest_helpers as ih
from tests import watch_helpers as wh

ENTRIES = 60   # ~2.3 KB each: more than the small file system holds
SMALL = "64k"


class SmallFs:
    """A tmpfs of ``size`` mounted at ``path`` (root only), unmounted at the end."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))

    @staticmethod
    def _mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    def remount(self, options: str) -> None:
        self._mount("-o", f"remount,{options}", str(self.path))

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


@pytest.fixture
def small_fs(tmp_path):
    fs = SmallFs(tmp_path / "small", SMALL)
    yield fs
    fs.unmount()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line]


def _sandbox(root: Path, fs: SmallFs) -> ih.Sandbox:
    """The archive on the small file system; everything else beside it."""
    sb = ih.Sandbox(root, settings={"archive": str(fs.path / "archive.log"), "workers": "0"})
    sb.archive = fs.path / "archive.log"
    return sb


def _check_each_once(sb: ih.Sandbox, planted: dict[str, bytes]) -> None:
    assert sb.left() == []
    archived = sb.archived()
    assert sorted(ih.uid_of(piece) for piece in archived) == sorted(planted)
    assert b"".join(archived) == b"".join(ih.archived_form(planted[ih.uid_of(piece)])
                                          for piece in archived)
    assert sorted(line.id for line in sb.lines()) == sorted(planted)


@pytest.mark.root
def test_ingest_on_a_full_disk_says_which_file_and_loses_nothing(tmp_path, small_fs):
    sb = _sandbox(tmp_path / "sb", small_fs)
    planted = ih.plant_data_entries(sb.storage, [f"Full{i}x" for i in range(ENTRIES)])
    full = sb.run(expect=1)   # (asserts: no traceback)
    assert _error_lines(full.stderr) == [
        f"modsec-tools: ERROR: {small_fs.path}/archive.log: No space left on device (nothing "
        "is lost: entries not yet written stay in the storage tree, and the next run "
        "completes the batch it was writing)"], full.stderr
    assert len(sb.left()) == ENTRIES   # nothing deleted that is not archived

    small_fs.remount("size=1m")
    sb.run()
    _check_each_once(sb, planted)


@pytest.mark.root
def test_ingest_on_a_read_only_file_system_says_which_file(tmp_path, small_fs):
    sb = _sandbox(tmp_path / "sb", small_fs)
    first = ih.plant_data_entries(sb.storage, ["Before1x", "Before2x"])
    sb.run()
    small_fs.remount("ro")
    planted = {**first, **ih.plant_data_entries(sb.storage, ["Later1x", "Later2x"])}
    refused = sb.run(expect=1)
    [line] = _error_lines(refused.stderr)
    assert line.startswith(f"modsec-tools: ERROR: {small_fs.path}/archive.log: "
                           "Read-only file system"), refused.stderr
    assert len(sb.left()) == 2

    small_fs.remount("rw")
    sb.run()
    _check_each_once(sb, planted)


@pytest.mark.root
def test_the_daemon_waits_out_a_full_disk_and_says_so(tmp_path, small_fs):
    """The watcher is not ended by a full disk (systemd would give up restarting it and
    bans would stop for good): it logs one line per attempt, waits with a growing delay,
    and goes on once there is room, every entry then in every sink exactly once."""
    with wh.WatchDaemon(tmp_path / "w", settings={"archive": str(small_fs.path / "archive.log"),
                                                 "workers": "0"}) as daemon:
        daemon.start()
        planted = ih.plant_data_entries(daemon.storage, [f"Wait{i}x" for i in range(ENTRIES)])
        daemon.wait_log("No space left on device; retrying in 2 s", timeout=30)
        log = daemon.log_text()
        assert "Traceback" not in log, log
        first = next(line for line in log.splitlines() if "No space left" in line)
        assert first == (f"ERROR: {small_fs.path}/archive.log: No space left on device; "
                         "retrying in 1 s (entries wait in the storage tree)"), log
        assert daemon.proc.poll() is None

        small_fs.remount("size=1m")
        daemon.wait_log("watching again after", timeout=90)
        daemon.wait_events(ENTRIES, timeout=30)
        _wait(lambda: not wh.entry_files(daemon.storage), 30, "the tree to be emptied")
        daemon.stop()
    ids = [ih.uid_of(piece) for piece in ih.archive_entries(small_fs.path / "archive.log")]
    assert sorted(ids) == sorted(planted)
    assert sorted(wh.event_ids(daemon.events)) == sorted(planted)
    assert sorted(wh.db_ids(daemon.db_path)) == sorted(planted)
    assert re.findall(r"retrying in (\d+) s", daemon.log_text())[:2] == ["1", "2"]


def _wait(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)
