"""``modsec-tools watch`` start-up, as install.sh prints it for hosts without systemd (no
--foreground) and as systemd runs it (--foreground): settings and paths are checked before
the daemon detaches, and the command that started it waits for its word, so a daemon that
could not start says why on the terminal and exits non-zero, never 0 with no process."""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests import ingest_helpers as ih


class Setup:
    """A configuration for ``watch`` under ``root``; the daemon logs to a file."""

    def __init__(self, root: Path, storage: Path | None = None) -> None:
        self.root = root
        self.storage = storage or root / "storage"
        self.state = root / "state"
        self.log = root / "watch.log"
        self.events = root / "out" / "events.log"
        self.config = root / "modsec-tools.conf"
        self.config.write_text(
            "[modsec-tools]\n"
            f"storage_dir = {self.storage}\narchive = {root / 'out' / 'archive.log'}\n"
            f"event_log = {self.events}\nstate_dir = {self.state}\n"
            f"quarantine_dir = {root / 'quarantine'}\ndb = none\nnode = starttest\n")
        self.started: list[int] = []

    def run(self, *args: str, timeout: float = 60):
        return ih.run_cli([sys.executable, "-m", "modsec_tools.cli", "watch",
                           "--config", str(self.config), "--log-target", str(self.log),
                           "--rescan-seconds", "1", *args], timeout)

    def daemon_pid(self, stderr: str) -> int:
        pid = int(re.search(r"\(pid (\d+)\)", stderr).group(1))
        self.started.append(pid)
        return pid

    def stop_all(self) -> None:
        for pid in self.started:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            _gone(pid, 20)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            return stream.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"pid {pid} still running after {timeout} s")
        time.sleep(0.05)


def _watchers_of(config: Path, expected: tuple[int, ...] = ()) -> list[int]:
    """Processes running ``watch`` with this configuration, once they are ``expected`` or
    after 2 s (a daemon that has closed its end of the pipe may still be ending)."""
    deadline = time.monotonic() + 2
    while (found := _running(config)) != list(expected) and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def _running(config: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config).encode() in command and b"watch" in command and _alive(int(entry)):
            found.append(int(entry))
    return found


@pytest.fixture
def setup(tmp_path):
    made = Setup(tmp_path)
    yield made
    made.stop_all()


@pytest.mark.parametrize("foreground", [False, True])
def test_a_missing_storage_tree_is_one_line_and_no_process(setup, foreground):
    done = setup.run(*(["--foreground"] if foreground else []))
    assert done.returncode == 2, done
    assert done.stderr == (f"modsec-tools: ERROR: storage_dir {setup.storage} does not exist "
                           "(set it to SecAuditLogStorageDir)\n"), done.stderr
    assert _watchers_of(setup.config) == []


def test_an_error_while_the_daemon_starts_reaches_the_terminal(setup):
    """Past the checks, the daemon fails on its own paths (state_dir is a file): the
    command that started it prints the daemon's error and exits 1."""
    setup.storage.mkdir()
    setup.state.write_text("not a directory\n")
    done = setup.run()
    assert done.returncode == 1, done
    assert done.stderr == f"modsec-tools: ERROR: {setup.state}: Not a directory\n", done.stderr
    assert _watchers_of(setup.config) == []
    assert f"ERROR: {setup.state}: Not a directory" in setup.log.read_text()


def test_the_detached_daemon_reports_ready_and_works(setup):
    setup.storage.mkdir()
    done = setup.run()
    assert done.returncode == 0, done
    pid = setup.daemon_pid(done.stderr)
    assert done.stderr == (f"modsec-tools: watching {setup.storage} (pid {pid}), logging to "
                           f"{setup.log}\n")
    assert _watchers_of(setup.config, (pid,)) == [pid]

    planted = ih.plant_data_entries(setup.storage, ["Started1x"])
    deadline = time.monotonic() + 20
    while ih.event_lines(setup.events) == [] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [line.id for line in ih.event_lines(setup.events)] == list(planted)

    second = setup.run()   # the lock is the daemon's: the second one says so, and ends
    assert second.returncode == 1, second
    assert second.stderr == ("modsec-tools: ERROR: another modsec-tools ingest/watch holds "
                             f"{setup.state / 'modsec-tools.lock'} (pid {pid})\n")
    assert _watchers_of(setup.config, (pid,)) == [pid]

    os.kill(pid, signal.SIGTERM)
    _gone(pid, 20)
    assert "stopped: 1 entry" in setup.log.read_text()


def test_no_syslog_socket_is_said_before_detaching(setup):
    """Logging to syslog where nothing listens would log nothing at all."""
    setup.storage.mkdir()
    script = ("import sys; from modsec_tools import cli; from modsec_tools.daemon import process as daemon; "
              "daemon.SYSLOG_SOCKET = sys.argv.pop(1); sys.exit(cli.main())")
    done = ih.run_cli([sys.executable, "-c", script, str(setup.root / "no-log-socket"),
                       "watch", "--config", str(setup.config)])
    assert done.returncode == 1, done
    assert done.stderr == (f"modsec-tools: ERROR: {setup.root / 'no-log-socket'}: no syslog "
                           "socket: is a syslog daemon running? (or use --log-target FILE)\n")
    assert _watchers_of(setup.config) == []
