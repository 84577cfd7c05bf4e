"""Errors the user or the system causes end in one line that names the file or the setting,
never in a Python traceback: a full or read-only file system (ingest exits 1, the daemon
waits it out and says so), and nothing is lost or written twice once the cause is gone."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
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


# -- settings: one line per problem, naming the key and what it allows; exit 2 -------------------
#: key → (a value it refuses, what the line must say it allows)
BAD = {
    "db": ("postgres://x/y", "unknown database URL scheme 'postgres' (use sqlite:// or "
                             "mysql://)"),
    "node": ("two words", "must be 1-64 of A-Z a-z 0-9 . _ -"),
    "trusted_proxies": ("10.0.0.300", "not an address or network: '10.0.0.300'"),
    "proxy_header": ("X Bad", "is not one header name"),
    "detect_min_severity": ("LOUD", "one of EMERGENCY"),
    "detect_min_score": ("high", "'high' is not a whole number, 0 or more"),
    "settle_seconds": ("soon", "'soon' is not a number of seconds, 0 or more"),
    "quarantine_after": ("-1", "'-1' is not a number of seconds, 0 or more"),
    "max_entry_size": ("big", "not a size: 'BIG' (use e.g. 65536, 64K, 64M)"),
    "batch_size": ("abc", "'abc' is not a whole number, 1 or more"),
    "workers": ("many", "'many' is not 'auto' or a whole number, 0 or more"),
    "dir_mode": ("999", "not an octal mode: '999' (use e.g. 0770, or nothing)"),
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    done = ih.run_cli([sys.executable, "-m", "modsec_tools.cli", *args])
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.mark.parametrize("command", [("ingest",), ("db", "status")])
def test_a_bad_flag_is_one_line_naming_it(tmp_path, command):
    for flag, value, says in (("--db", "postgres://x/y", BAD["db"][1]),
                              ("--db", "sqlite://", "sqlite URL needs a path: 'sqlite://'")):
        done = _cli(*command, "--config", str(ih.Sandbox(tmp_path).config), flag, value)
        assert done.returncode == 2
        assert done.stderr == f"modsec-tools: ERROR: db (command line): {says}\n", done.stderr
    done = _cli("ingest", "--config", str(ih.Sandbox(tmp_path).config), "--batch-size", "abc")
    assert (done.returncode, done.stderr) == (2, "modsec-tools: ERROR: batch_size (command "
                                                 "line): " + BAD["batch_size"][1] + "\n")


def test_every_bad_setting_of_a_file_is_named_at_once(tmp_path):
    sb = ih.Sandbox(tmp_path, settings={key: value for key, (value, _) in BAD.items()})
    with open(sb.config, "a") as stream:
        stream.write("batchsize = 5\n")
    done = _cli("ingest", "--config", str(sb.config))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == len(BAD) + 1, done.stderr
    for key, (_, says) in BAD.items():
        assert any(line.startswith(f"modsec-tools: ERROR: {key} ({sb.config}): ") and says
                   in line for line in lines), (key, done.stderr)
    assert (f"modsec-tools: ERROR: {sb.config}: unknown key 'batchsize' in [modsec-tools] "
            "(see 'modsec-tools config show' for the keys)") in lines


def test_config_check_reports_settings_paths_and_database_together(tmp_path):
    """Bad settings do not hide the other problems; -v may follow the command."""
    sb = ih.Sandbox(tmp_path, settings={"batch_size": "abc", "node": "two words",
                                        "storage_dir": str(tmp_path / "missing")})
    done = _cli("config", "check", "-v", "--config", str(sb.config))
    assert done.returncode == 2, done
    assert f"error: batch_size ({sb.config}): {BAD['batch_size'][1]}" in done.stdout
    assert f"error: node ({sb.config}): node 'two words' {BAD['node'][1]}" in done.stdout
    assert f"error: storage_dir {tmp_path / 'missing'} does not exist" in done.stdout
    assert "configuration: 3 error(s)" in done.stdout
    assert _cli("-v", "config", "check", "-v", "--config", str(sb.config)).returncode == 2


def test_config_show_loads_back_to_the_same_settings(tmp_path):
    """Today's values as a file: set and unset (dir_mode, trusted_proxies) alike."""
    from modsec_tools import config
    first = tmp_path / "first.conf"
    first.write_text("[modsec-tools]\ntrusted_proxies = 10.0.0.0/8, 2001:db8::/32 ::1\n"
                     "dir_mode = 2770\nnode = web1\nworkers = 3\nmax_entry_size = 1M\n"
                     "db = sqlite:///relative.db\nsettle_seconds = 0.5\n")
    empty = tmp_path / "empty.conf"
    empty.write_text("[modsec-tools]\n")
    for source, shows in ((first, ("trusted_proxies = 10.0.0.0/8, 2001:db8::/32, ::1/128",
                                   "dir_mode = 02770")),
                          (empty, ("trusted_proxies = ", "dir_mode = "))):
        shown = _cli("config", "show", "--config", str(source))
        assert shown.returncode == 0, shown
        for line in shows:
            assert line in shown.stdout.splitlines(), shown.stdout
        again = tmp_path / "shown.conf"
        again.write_text(shown.stdout)
        assert dataclasses.replace(config.load(str(again)), sources=()) == \
            dataclasses.replace(config.load(str(source)), sources=())


def test_help_says_each_default_once():
    help_text = _cli("watch", "--help").stdout
    start = help_text.rindex("--node NAME")   # its option, after the usage lines
    node = help_text[start:help_text.index("--trusted-proxies", start)]
    assert "(default: short host name)" in node and "unset" not in node, node


@pytest.mark.root
def test_an_unknown_dir_owner_is_said_before_the_daemon_starts(tmp_path):
    sb = ih.Sandbox(tmp_path, settings={"dir_owner": "no-such-user-here"})
    sb.storage.mkdir()
    done = _cli("watch", "--config", str(sb.config), "--log-target", str(tmp_path / "w.log"))
    assert (done.returncode, done.stderr) == (
        2, "modsec-tools: ERROR: dir_owner: no such user 'no-such-user-here'\n")
