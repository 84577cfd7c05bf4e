"""Root never writes through a name the web user planted (issue #15, F1).

Each writer of the product (quarantine and its reasons, archive, event log, journal, spool,
db-rejected, lock, SQLite file, status file) is attacked the way the web user could: as
``www-data``, a symbolic link or a hard link is planted at the exact name the writer will
use, pointing at a victim file; the product runs as root; the victim must be byte-identical
afterwards and the product must say why it refused.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from modsec_tools.daemon import process as daemon
from modsec_tools.owned import OwnedDir, UnsafePath
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (a fixture)

pytestmark = pytest.mark.root

WWW = pwd.getpwnam("www-data")
MINUTE = Path("20261128", "20261128-2103")
SECRET = b"root:$y$j9T$secret-hash:19000:0:99999:7:::\n"


def as_www(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "www-data", "--", *argv], check=True)


class Victims:
    """A root-only file (what /etc/shadow is) and one of www-data's own (the only kind it
    may hard-link with fs.protected_hardlinks): root writing our data into the latter would
    hand the web user every archived request."""

    def __init__(self, root: Path) -> None:
        root.chmod(0o755)  # the web user can reach what it attacks, as on a server
        self.place = root / "victims"
        self.place.mkdir(mode=0o755)
        self.shadow = self.place / "shadow"
        self.shadow.write_bytes(SECRET)
        self.shadow.chmod(0o600)
        self.own = self.place / "www-data-own"
        self.own.write_bytes(b"the web user's own file\n")
        os.chown(self.own, WWW.pw_uid, WWW.pw_gid)
        self.before = self.state()

    def state(self) -> dict[str, tuple]:
        return {path.name: (path.read_bytes(), _identity(path))
                for path in (self.shadow, self.own)}

    def untouched(self) -> None:
        assert self.state() == self.before, "a victim file was written to"


def _identity(path: Path) -> tuple:
    info = os.lstat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_mode, info.st_uid


def _web_writable_dir(path: Path) -> Path:
    """A directory the web user can write in, as a misconfigured one would be."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def _plant(kind: str, at: Path, victims: Victims) -> None:
    if kind == "symlink":
        as_www("ln", "-s", str(victims.shadow), str(at))
    else:
        as_www("ln", str(victims.own), str(at))


def _sandbox(root: Path, **settings: str) -> ih.Sandbox:
    sb = ih.Sandbox(root, settings=settings)
    ih.plant_data_entries(sb.storage, ["RootWrites"])
    return sb


# -- the finding as reported: a planted "<entry>.reason" symlink, then a FIFO -----------------
def test_a_planted_reason_name_never_redirects_a_quarantine_write(fast_tmp):
    victims = Victims(fast_tmp)
    sb = ih.Sandbox(fast_tmp)
    minute = _web_writable_dir(sb.storage / MINUTE)
    for level in (sb.storage, sb.storage / MINUTE.parent):
        level.chmod(0o777)
    entry = minute / "20261128-210300-BBBBBBBB"
    as_www("ln", "-s", str(victims.shadow), f"{entry}.reason")
    sb.run(expect=1)     # the symlink is quarantined
    as_www("mkfifo", str(entry))
    sb.run(expect=1)     # the FIFO is quarantined, and its reason written
    victims.untouched()
    held = sb.quarantined()
    assert set(held) == {f"/{MINUTE}/{entry.name}.reason", f"/{MINUTE}/{entry.name}"}
    for where in held.values():
        assert sorted(os.listdir(where)) == ["entry", "reason"]
        assert os.lstat(where / "reason").st_nlink == 1
    link = held[f"/{MINUTE}/{entry.name}.reason"]
    assert os.readlink(link / "entry") == str(victims.shadow)
    assert f"what: symbolic link to {victims.shadow}\n" in (link / "reason").read_text()


# -- every writer, with its directory left writable by the web user --------------------------
#: writer → (settings that put its file in the web-writable directory D, its name in D)
WRITERS = {
    "archive": (lambda d: {"archive": str(d / "archive.log")}, "archive.log"),
    "event log": (lambda d: {"event_log": str(d / "events.log")}, "events.log"),
    "journal": (lambda d: {"state_dir": str(d)}, "journal"),
    "db-spool": (lambda d: {"state_dir": str(d)}, "db-spool"),
    "db-rejected": (lambda d: {"state_dir": str(d)}, "db-rejected"),
    "lock": (lambda d: {"state_dir": str(d)}, "modsec-tools.lock"),
    "sqlite": (lambda d: {"db": f"sqlite:///{d / 'events.db'}"}, "events.db"),
}


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_no_writer_follows_a_planted_name(fast_tmp, writer, kind):
    victims = Victims(fast_tmp)
    settings, name = WRITERS[writer]
    exposed = _web_writable_dir(fast_tmp / "exposed")
    sb = _sandbox(fast_tmp, **settings(exposed))
    _plant(kind, exposed / name, victims)
    done = sb.run(expect=None)
    assert done.returncode != 0, done.stderr
    assert "refusing to write there" in done.stderr and str(exposed) in done.stderr, \
        done.stderr
    victims.untouched()


def test_quarantine_in_a_web_writable_directory_is_refused(fast_tmp):
    """The quarantine's names are the product's own, but in a directory the web user can
    write it could plant them first (they are predictable): the directory is refused."""
    victims = Victims(fast_tmp)
    exposed = _web_writable_dir(fast_tmp / "exposed")
    sb = _sandbox(fast_tmp, quarantine_dir=str(exposed))
    (sb.storage / MINUTE).mkdir(parents=True)
    (sb.storage / MINUTE / "20261128-210300-CCCCCCCC").write_bytes(b"garbage, quarantined")
    ih.age_tree(sb.storage)
    now = time.time()
    for second in range(0, 30):  # the names the product would take in the next half minute
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now + second))
        _plant("symlink", exposed / f"{stamp}-1", victims)
    done = sb.run(expect=1)
    assert "cannot quarantine" in done.stderr and "refusing to write there" in done.stderr
    assert (sb.storage / MINUTE / "20261128-210300-CCCCCCCC").exists()  # kept, not lost
    victims.untouched()


@pytest.mark.parametrize("kind", ["symlink", "hard link"])
def test_the_status_file_is_never_written_through_a_planted_name(fast_tmp, kind):
    victims = Victims(fast_tmp)
    exposed = _web_writable_dir(fast_tmp / "exposed")
    _plant(kind, exposed / "status.json", victims)
    with pytest.raises(UnsafePath, match="refusing to write there"):
        daemon.write_status(str(exposed / "status.json"), {"entries": 1})
    victims.untouched()


def test_a_directory_above_that_the_web_user_can_change_is_refused(fast_tmp):
    """A private directory inside one the web user may write: it could rename the private
    one away and put its own in its place between our check and our write."""
    parent = _web_writable_dir(fast_tmp / "parent")
    private = parent / "state"
    private.mkdir(mode=0o700)
    with pytest.raises(UnsafePath, match="writable by other users"):
        OwnedDir(str(private))
    sticky = fast_tmp / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: others cannot move our names, so it may stand above
    OwnedDir(str(sticky / "state")).close()
    with pytest.raises(UnsafePath, match="owned by uid"):
        owned_by_www = fast_tmp / "www"
        owned_by_www.mkdir(mode=0o755)
        os.chown(owned_by_www, WWW.pw_uid, WWW.pw_gid)
        OwnedDir(str(owned_by_www))


# -- the name layer, in a directory the checks above would accept -----------------------------
@pytest.mark.parametrize("planted", ["symlink", "hard link", "fifo", "www-data's file"])
def test_an_owned_directory_opens_only_its_own_regular_files(fast_tmp, planted):
    """Belt and braces below the directory check: what root itself finds at a name (left by
    an older version, an admin's mistake) is never written through."""
    victims = Victims(fast_tmp)
    place = fast_tmp / "private"
    owned = OwnedDir(str(place), 0o700)
    name = "events.log"
    if planted == "symlink":
        os.symlink(victims.shadow, place / name)
    elif planted == "hard link":
        os.link(victims.shadow, place / name)
    elif planted == "fifo":
        os.mkfifo(place / name)
    else:
        (place / name).write_bytes(b"")
        os.chown(place / name, WWW.pw_uid, WWW.pw_gid)
    with owned, pytest.raises(UnsafePath):
        owned.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with OwnedDir(str(place)) as again, pytest.raises(FileExistsError):
        again.create(name)
    with OwnedDir(str(place)) as again:
        again.replace("status.json", b"{}")  # a fresh name, renamed over: never followed
    victims.untouched()
