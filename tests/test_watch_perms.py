"""``watch --dir-mode/--dir-owner/--dir-group`` (Apache MPM ITK) as root: new storage
directories get the mode and owner at once, and a hostile tree (symlinks, a swap race,
hard links) cannot redirect a chmod, chown, read or delete outside it."""
from __future__ import annotations

import ctypes
import grp
import hashlib
import os
import pwd
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from tests import corpus
from tests import watch_helpers as wh
from tests.ingest_helpers import quarantined

pytestmark = pytest.mark.root

OWNER, GROUP = "nobody", "nogroup"
MODE = 0o770
PERMS = {"dir_mode": "0770", "dir_owner": OWNER, "dir_group": GROUP}
AT_FDCWD, RENAME_EXCHANGE = -100, 2


@pytest.fixture
def ids():
    corpus.require_corpus()
    return pwd.getpwnam(OWNER).pw_uid, grp.getgrnam(GROUP).gr_gid


def snapshot(path: str | Path) -> dict:
    """What a redirected chmod/chown/write/unlink would change (symlinks not followed)."""
    info = os.lstat(path)
    out = {"mode": stat.filemode(info.st_mode), "uid": info.st_uid, "gid": info.st_gid,
           "mtime": info.st_mtime_ns, "ctime": info.st_ctime_ns, "ino": info.st_ino}
    if stat.S_ISREG(info.st_mode):
        out["md5"] = hashlib.md5(Path(path).read_bytes()).hexdigest()
    return out


def fixed(path: Path, uid: int, gid: int) -> bool:
    info = os.lstat(path)
    return (stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == MODE
            and info.st_uid == uid and info.st_gid == gid)


def test_new_directories_get_mode_and_owner_promptly(tmp_path, daemons_perms, ids):
    """Each new user, day and minute directory (created 0755 root:root by the writer, as
    ModSecurity under another vhost user would) is 0770 nobody:nogroup within 1 s. The
    periodic rescan is set to 60 s, so this is the inotify path."""
    uid, gid = ids
    daemon = daemons_perms(tmp_path, rescan_seconds=60)
    early = wh.make_entries(1, "PE", user="vhost0")  # present before start: fixed at start
    wh.write_all(daemon.storage, early)
    when = time.time() - 3600  # settled (a young file waits for settle_seconds + a rescan)
    os.utime(daemon.storage.joinpath(*early[0].dirs, early[0].name), (when, when))
    daemon.start()
    for part in ("vhost0", "vhost0/20310101", "vhost0/20310101/20310101-0000"):
        assert fixed(daemon.storage / part, uid, gid), part
    root_before = snapshot(daemon.storage)
    written = list(early)
    delays = []
    for n, user in enumerate(("www-data", "vhost1", "vhost2")):
        for minute in range(3):  # a new minute each time; a new day for each user
            entry = wh.make_entries(1, "PN", start=n * 10_000 + minute * 1_440,
                                    per_minute=1, user=user)[0]
            made = time.monotonic()
            wh.write_entry(daemon.storage, entry, dir_mode=0o755)
            written.append(entry)
            chain = [daemon.storage.joinpath(*entry.dirs[:k]) for k in (1, 2, 3)]
            deadline = made + 1.0
            while not all(fixed(p, uid, gid) for p in chain):
                assert time.monotonic() < deadline, \
                    f"{[(str(p), snapshot(p)) for p in chain]} not fixed within 1 s\n" \
                    + daemon.log_tail()
                time.sleep(0.002)
            delays.append(time.monotonic() - made)
    daemon.wait_events(len(written))
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(written))
    root_after = snapshot(daemon.storage)  # the root itself is not the policy's business
    assert [root_after[k] for k in ("mode", "uid", "gid")] == \
        [root_before[k] for k in ("mode", "uid", "gid")]
    print(f"directories fixed {max(delays) * 1000:.1f} ms after mkdir at worst")


def _exchange(a: str, b: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) == 0


def _race(storage: Path, targets: list[str], stop: threading.Event, counts: dict) -> None:
    """Create layout directories and swap each for a symlink to a target right away: by
    rmdir + symlink, and atomically with renameat2(RENAME_EXCHANGE). New names each time
    (each one is an IN_CREATE the watcher acts on), at the user, day and minute level."""
    n = 0
    while not stop.is_set():
        target = targets[n % len(targets)]
        day = storage / "www-data" / f"{32000000 + n // 10000}"
        day.mkdir(parents=True, exist_ok=True)
        for path in (storage / f"race{n}",                          # user level
                     storage / "www-data" / f"{33000000 + n}",       # day level
                     day / f"{day.name}-{n % 10000:04d}"):           # minute level
            path = str(path)
            os.mkdir(path, 0o755)
            if n % 2:
                os.rmdir(path)
                os.symlink(target, path)
            else:
                link = path + ".swap"
                os.symlink(target, link)
                if _exchange(link, path):  # now: path -> target, link = the real dir
                    counts["exchanged"] = counts.get("exchanged", 0) + 1
            counts["swaps"] = counts.get("swaps", 0) + 1
        n += 1


def test_hostile_tree_cannot_redirect_chmod_chown_reads_or_deletes(tmp_path, daemons_perms,
                                                                    ids):
    """Planted before start and during the run: minute/day/user directory names that are
    symlinks to /etc and to a root-owned 0755 stand-in directory outside the tree, entry
    names that are symlinks to /etc/shadow and to a file outside, a hard link to a file
    outside, and a 3 s loop swapping fresh directories for symlinks (rmdir + symlink, and
    atomic renameat2 RENAME_EXCHANGE). Nothing outside changes; the real entries are still
    processed exactly once; the problems are in the log."""
    uid, gid = ids
    outside = tmp_path / "outside"
    (outside / "20320101-0000").mkdir(parents=True)   # looks like a minute dir, if followed
    secret = outside / "secret"
    secret.write_bytes(b"not for the watcher\n")
    secret.chmod(0o600)
    hard_target = outside / "hard-target"
    hard_target.write_bytes(b"hard link target\n")
    hard_target.chmod(0o640)
    for path in (outside, outside / "20320101-0000"):
        os.chown(path, 0, 0)
        path.chmod(0o755)
    watched = ["/etc", "/etc/shadow", outside, outside / "20320101-0000", secret]
    before = {str(p): snapshot(p) for p in watched}
    hard_before = snapshot(hard_target)

    daemon = daemons_perms(tmp_path, rescan_seconds=0.5)
    storage = daemon.storage
    minute = storage / "www-data" / "20310101" / "20310101-0000"
    minute.mkdir(parents=True)
    name = "20310101-0000{:02d}-" + "Hostile{:020d}"

    def plant(tag: int) -> None:
        (minute.parent / f"20310101-{tag:02d}01").symlink_to("/etc")
        (minute.parent / f"20310101-{tag:02d}02").symlink_to(outside)
        (storage / f"evil{tag}").symlink_to(outside)
        (storage / "www-data" / f"203102{tag:02d}").symlink_to(outside)
        (minute / name.format(tag, tag * 10 + 1)).symlink_to("/etc/shadow")
        (minute / name.format(tag, tag * 10 + 2)).symlink_to(secret)
        os.link(hard_target, minute / name.format(tag, tag * 10 + 3))

    plant(1)                      # seen by the start-up rescan
    daemon.start()
    plant(2)                      # seen through inotify and the periodic rescans
    entries = wh.make_entries(200, "PH", per_minute=20)
    stop = threading.Event()
    counts: dict[str, int] = {}
    racer = threading.Thread(target=_race, args=(storage, ["/etc", str(outside)], stop,
                                                 counts))
    racer.start()
    try:
        wh.write_all(storage, entries, rate=70)   # legitimate traffic meanwhile, ~3 s
    finally:
        stop.set()
        racer.join()
    daemon.wait_events(len(entries), timeout=30)
    time.sleep(1.2)  # two more rescans over the planted links
    daemon.stop()

    after = {str(p): snapshot(p) for p in watched}
    changed = {path: {k: (before[path][k], after[path][k]) for k in after[path]
                      if after[path][k] != before[path][k]} for path in after}
    assert after == before, f"changed outside the storage tree: " \
        f"{ {p: c for p, c in changed.items() if c} }"
    hard_after = snapshot(hard_target)
    hard_after.pop("ctime"), hard_before.pop("ctime")  # link()/rename() of a name update it
    assert hard_after == hard_before
    # (a few hundred swaps on an idle machine; fewer when the VM is busy)
    assert counts.get("swaps", 0) >= 60 and counts.get("exchanged", 0) >= 20, counts

    wh.check_exactly_once(daemon, wh.digests(entries), allow_quarantine=True)
    held = quarantined(daemon.quarantine)
    assert len(held) == 6, held             # 2 x (shadow link, secret link, hard link)
    for where in held.values():
        path = where / "entry"
        assert path.is_symlink() or os.lstat(path).st_ino == hard_before["ino"], where
    log = daemon.log_text()
    assert "symbolic link" in log and "hard links" in log
    assert "a symlink or not a directory; left alone" in log
    assert "Traceback" not in log
    print(f"race: {counts}; log warnings: {log.count('WARNING')}")


@pytest.fixture
def daemons_perms():
    made: list[wh.WatchDaemon] = []

    def make(tmp: Path, rescan_seconds: float, **settings: str) -> wh.WatchDaemon:
        daemon = wh.WatchDaemon(tmp, rescan_seconds=rescan_seconds,
                                settings={**PERMS, **settings})
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.__exit__(None, None, None)


def _inotify_inodes(pid: int) -> set[int]:
    """Inodes of every inotify watch the process holds (from /proc/<pid>/fdinfo)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("inotify wd:"):
                inodes.update(int(f[4:], 16) for f in line.split() if f.startswith("ino:"))
    return inodes


def test_directory_swapped_for_a_symlink_is_not_listed_or_watched(tmp_path, daemons_perms,
                                                                   ids):
    """Deterministic form of the swap race: the daemon is stopped (SIGSTOP) between the
    IN_CREATE of a user directory and its replacement by a symlink to a directory outside
    the tree, which holds a 'canary-…' directory and a day-like directory '20320101'."""
    outside = tmp_path / "outside"
    (outside / "canary-5f3a").mkdir(parents=True)
    (outside / "20320101").mkdir()
    daemon = daemons_perms(tmp_path, rescan_seconds=60).start()
    hostile = daemon.storage / "hostile"
    daemon.signal(signal.SIGSTOP)
    try:
        hostile.mkdir()                 # IN_CREATE|IN_ISDIR is queued for it
        hostile.rmdir()
        hostile.symlink_to(outside)     # ... and now the name is a symlink
    finally:
        daemon.signal(signal.SIGCONT)
    entries = wh.make_entries(3, "SW")  # something to wait for: the event was handled
    wh.write_all(daemon.storage, entries)
    daemon.wait_events(3)
    watched = _inotify_inodes(daemon.pid)
    daemon.stop()
    log = daemon.log_text()
    assert "a symlink or not a directory; left alone" in log  # the swap itself is reported
    assert "canary-5f3a" not in log, "listed a directory outside the tree"
    outside_inodes = {os.stat(p).st_ino for p in (outside, outside / "20320101")}
    assert not watched & outside_inodes, "inotify watch on a directory outside the tree"


def test_a_planted_symlink_is_reported_once(tmp_path, daemons_perms, ids):
    daemon = daemons_perms(tmp_path, rescan_seconds=0.2)
    day = daemon.storage / "www-data" / "20310101"
    day.mkdir(parents=True)
    (day / "20310101-0001").symlink_to("/etc")
    daemon.start()
    time.sleep(2.5)  # about 12 rescans
    daemon.stop()
    reports = [line for line in daemon.log_text().splitlines()
               if "20310101-0001" in line and "left alone" in line]
    assert 1 <= len(reports) <= 2, f"{len(reports)} warnings for one planted symlink"


def test_index_log_inside_the_storage_root_keeps_new_dirs_watched(tmp_path, daemons_perms,
                                                                    ids):
    """SecAuditLog inside SecAuditLogStorageDir (e.g. storage /var/log/modsec_audit, index
    /var/log/modsec_audit/index.log): the index log's directory is the storage root, so
    inotify hands back the root's own watch for it. New user/day/minute directories must
    still be seen at once (mode/owner fixed, watched), not only at the next rescan."""
    uid, gid = ids
    index = tmp_path / "storage" / "index.log"
    daemon = daemons_perms(tmp_path, rescan_seconds=60, index_log=str(index))
    index.touch()
    daemon.start()
    entries = []
    for n, user in enumerate(("www-data", "vhost1")):
        entry = wh.make_entries(1, "IX", start=n * 1_440, per_minute=1, user=user)[0]
        made = time.monotonic()
        log = wh.IndexLog(index)
        try:
            wh.write_entry(daemon.storage, entry, log, dir_mode=0o755)
        finally:
            log.close()
        entries.append(entry)
        chain = [daemon.storage.joinpath(*entry.dirs[:k]) for k in (1, 2, 3)]
        while not all(fixed(p, uid, gid) for p in chain):
            assert time.monotonic() < made + 2.0, \
                f"{[(str(p), snapshot(p)['mode']) for p in chain]} not fixed within 2 s\n" \
                + daemon.log_tail()
            time.sleep(0.005)
    daemon.wait_events(len(entries))
    daemon.stop()
    wh.check_exactly_once(daemon, wh.digests(entries))
