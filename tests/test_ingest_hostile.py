"""``modsec-tools ingest`` (as root) over a storage tree a hostile web user has written into.

The tree is web-writable (SecAuditLogDirMode 0777, owner www-data); ingest runs as root.
Whatever is planted there, nothing is read through a link, nothing outside the tree changes,
every odd name is quarantined with a reason or left alone, never deleted unarchived, and the
good entries beside them are ingested.
"""
from __future__ import annotations

import hashlib
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from tests import corpus
from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (fixture)

RUN = "r2_auditengine_on_concurrent"
DAY = "www-data/20261128"
MINUTE = f"{DAY}/20261128-1529"
WWW = 33  # www-data, the owner of the corpus tree
MARKER = b"SECRET-OUTSIDE-THE-TREE-7f3a9c"
MAX_ENTRY = 64 * 1024
QUARANTINE_AFTER = 600


def _name(tag: str) -> str:
    return f"20261128-152959-{(tag + 'A' * 27)[:27]}"


#: Files of /etc that nothing else touches while the tests run (other tests on the machine
#: may add or remove their own files under /etc, so /etc as a whole is not compared).
ETC_FILES = ("/etc/shadow", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/hostname",
             "/etc/fstab", "/etc/os-release")


def _snapshot(path: str) -> dict:
    """/etc itself and its stable files: inode, mode, size, mtime, links, content."""
    found = {}
    for name in (path, *ETC_FILES):
        if not os.path.lexists(name):
            continue
        info = os.lstat(name)
        if stat.S_ISDIR(info.st_mode):  # its mtime moves with other tests' files
            found[name] = (info.st_ino, info.st_mode)
            continue
        found[name] = (info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns,
                       info.st_nlink, _digest(name) if stat.S_ISREG(info.st_mode) else None)
    return found


def _digest(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _valid_entry(tag: str, extra_body: bytes = b"") -> bytes:
    """A real r2 entry with a fresh id (and optionally a larger request body) and MARKER
    in its User-Agent, so reading it anywhere shows in the sinks."""
    files = ih.tree_files_from_tar(RUN)
    relpath, data = next((r, d) for r, d in sorted(files.items()) if b"\nUser-Agent: " in d)
    uid = relpath.rsplit("/", 1)[1].split("-", 2)[2]
    new_uid = (tag + "A" * 27)[:27]
    data = data.replace(uid.encode(), new_uid.encode())
    data = data.replace(b"\nUser-Agent: ", b"\nUser-Agent: " + MARKER + b" ", 1)
    if extra_body:
        boundary = data[2:10]
        data = data.replace(b"\n--" + boundary + b"-F--\n",
                            b"\n--" + boundary + b"-C--\n" + extra_body + b"\n\n--"
                            + boundary + b"-F--\n", 1)
    return data


class Planted:
    """What the hostile user planted, and where it must end up."""

    def __init__(self, root: Path, storage: Path) -> None:
        self.root = root
        self.storage = storage
        self.minute = storage / MINUTE
        self.outside = root / "outside"
        self.outside.mkdir()
        self.quarantined: dict[str, str] = {}   # entry name → reason text it must give
        self.left_alone: list[str] = []          # relpaths that must still be there
        old = time.time() - 2 * 3600

        def chown(path: Path) -> None:
            os.chown(path, WWW, WWW, follow_symlinks=False)

        def plant(tag: str, data: bytes, reason: str | None, age: float | None = old) -> Path:
            path = self.minute / _name(tag)
            path.write_bytes(data)
            chown(path)
            if age is not None:
                os.utime(path, (age, age))
            if reason is None:
                self.left_alone.append(f"{MINUTE}/{path.name}")
            else:
                self.quarantined[path.name] = reason
            return path

        # a symlink to /etc/shadow planted as an entry name
        shadow = self.minute / _name("LinkShadow")
        os.symlink("/etc/shadow", shadow)
        chown(shadow)
        self.quarantined[shadow.name] = "symbolic link, not an entry file"
        # minute directories that are symlinks: to /etc, and to a directory holding a
        # perfectly valid entry (it would be ingested and deleted if the link were followed)
        victim_dir = self.outside / "victim-minute"
        victim_dir.mkdir()
        self.victim = victim_dir / _name("VictimEntry")
        self.victim.write_bytes(_valid_entry("VictimEntry"))
        os.utime(self.victim, (old, old))
        for minute, target in (("20261128-1530", "/etc"), ("20261128-1531", victim_dir)):
            link = storage / DAY / minute
            os.symlink(target, link)
            chown(link)
            self.left_alone.append(f"{DAY}/{minute}")
        # a user directory that is a symlink to a whole tree outside
        victim_tree = self.outside / "victim-tree" / "20261128" / "20261128-1532"
        victim_tree.mkdir(parents=True)
        self.victim2 = victim_tree / _name("VictimTree")
        self.victim2.write_bytes(_valid_entry("VictimTree"))
        os.utime(self.victim2, (old, old))
        os.symlink(self.outside / "victim-tree", storage / "evil")
        self.left_alone.append("evil")
        # a FIFO named like an entry (a blocking open would hang ingest)
        fifo = self.minute / _name("Fifo")
        os.mkfifo(fifo)
        chown(fifo)
        self.quarantined[fifo.name] = "FIFO, not an entry file"
        # a directory named like an entry
        directory = self.minute / _name("Directory")
        directory.mkdir()
        (directory / "inside").write_bytes(b"x")
        chown(directory)
        self.left_alone.append(f"{MINUTE}/{directory.name}")
        # a hard link to a (valid-looking) file outside the tree
        self.target = self.outside / "hardlink-target"
        self.target.write_bytes(_valid_entry("HardLink"))
        os.link(self.target, self.minute / _name("HardLink"))
        self.quarantined[_name("HardLink")] = "has 2 hard links; refusing to read it"
        # empty files: an old one (truncated to nothing) and a fresh one (just created)
        plant("EmptyOld", b"", "empty entry")
        plant("EmptyFresh", b"", None, age=None)
        # a file still being written: no Z boundary yet, fresh mtime
        whole = _valid_entry("InProgress")
        plant("InProgress", whole[:len(whole) // 2], None, age=None)
        # a truncated file older than quarantine_after
        whole = _valid_entry("Truncated")
        plant("Truncated", whole[:len(whole) // 2],
              "entry has no Z boundary (truncated or still being written)")
        # binary garbage
        plant("Garbage", bytes(range(256)) * 20 + MARKER,
              "neither a native (--xxxxxxxx-A--) nor a JSON audit entry")
        # an oversized (but otherwise valid) entry
        plant("Oversized", _valid_entry("Oversized", b"q=" + b"A" * (2 * MAX_ENTRY)),
              f"larger than max_entry_size ({MAX_ENTRY} bytes)")


@pytest.mark.root
def test_hostile_tree(fast_tmp):
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp, settings={"max_entry_size": str(MAX_ENTRY),
                                        "quarantine_after": str(QUARANTINE_AFTER)})
    ih.extract(RUN, fast_tmp / "x", sb.storage)
    assert os.stat(sb.storage / MINUTE).st_uid == WWW  # ownership as ModSecurity left it
    want = ih.originals(sb.storage)
    assert len(want) == corpus.run_info(RUN)["audit_entries"]
    planted = Planted(fast_tmp, sb.storage)
    etc_before = _snapshot("/etc")
    shadow_before = (_digest("/etc/shadow"), os.stat("/etc/shadow"))
    target_before = (planted.target.read_bytes(), os.stat(planted.target).st_ino)
    victims_before = [(p, p.read_bytes()) for p in (planted.victim, planted.victim2)]

    done = sb.run(expect=1, timeout=120)  # 1: entries were quarantined
    log = done.stderr

    # outside the tree: nothing changed, nothing read
    assert _snapshot("/etc") == etc_before
    assert (_digest("/etc/shadow"), os.stat("/etc/shadow")) == shadow_before
    assert (planted.target.read_bytes(), os.stat(planted.target).st_ino) == target_before
    for path, data in victims_before:
        assert path.read_bytes() == data, f"{path} changed or vanished"
    shadow = Path("/etc/shadow").read_bytes()
    secrets = [MARKER] + [line for line in shadow.splitlines() if len(line) >= 12]
    conn = ih.sqlite_connect(sb.db_path)
    try:
        dumped = b"\n".join(line.encode("utf-8", "surrogateescape")
                            for line in conn.iterdump())
    finally:
        conn.close()
    for sink, data in (("archive", sb.archive.read_bytes()), ("event log",
                       sb.events.read_bytes()), ("database", dumped)):
        for secret in secrets:
            assert secret not in data, f"{sink} holds bytes read from outside the tree"

    # every odd name: in quarantine with its reason, or left where it was
    held = sb.quarantined()
    for name, reason in planted.quarantined.items():
        relpath = f"/{MINUTE}/{name}"
        assert relpath in held, f"{name} not quarantined ({reason}); log:\n{log[-3000:]}"
        text = (held[relpath] / "reason").read_text()
        assert f"reason: {reason}\n" in text, text
        assert not os.path.lexists(planted.minute / name), f"{name} still in the tree"
        assert sorted(os.listdir(held[relpath])) == ["entry", "reason"]
    moved = held[f"/{MINUTE}/{_name('LinkShadow')}"]
    assert os.readlink(moved / "entry") == "/etc/shadow"  # the link itself, not its target
    assert "what: symbolic link to /etc/shadow\n" in (moved / "reason").read_text()
    assert stat.S_ISFIFO(os.lstat(held[f"/{MINUTE}/{_name('Fifo')}"] / "entry").st_mode)
    for relpath in planted.left_alone:
        assert os.path.lexists(sb.storage / relpath), f"{relpath} was removed"
    assert os.readlink(sb.storage / DAY / "20261128-1530") == "/etc"
    assert "directory named like an entry; left alone" in log
    unexpected = set(held) - {f"/{MINUTE}/{n}" for n in planted.quarantined}
    assert not unexpected, f"quarantined besides the planted names: {unexpected}"

    # the good entries beside them: ingested, exactly once, into every sink
    assert sorted(sb.left()) == sorted(
        p for p in planted.left_alone if ih.ENTRY_NAME.fullmatch(p.rsplit("/", 1)[-1]))
    ih.check_archive(sb, want)
    ih.check_event_log(sb, want)
    ih.check_database(ih.DB("sqlite", sb.db, lambda: ih.sqlite_connect(sb.db_path)), want,
                      (RUN,))

    # a second run changes nothing: the in-progress names wait, the oddities left alone
    # are reported, nothing new is quarantined or ingested
    again = sb.run(expect=0)
    assert "0 quarantined" in again.stderr
    assert sb.quarantined() == held
    assert len(sb.lines()) == len(want)


@pytest.mark.root
def test_exit_status_says_when_entries_were_quarantined(fast_tmp):
    """--help and the man page: exit 1 when some input could not be processed; a
    quarantined entry is such input. (Regression: it used to exit 0.)"""
    sb = ih.Sandbox(fast_tmp)
    minute = sb.storage / MINUTE
    minute.mkdir(parents=True)
    (minute / _name("Garbage")).write_bytes(b"\x00\xff garbage")
    (minute / _name("Good")).write_bytes(_valid_entry("Good"))
    ih.age_tree(sb.storage)
    done = sb.run(expect=None)
    assert "1 quarantined" in done.stderr and len(sb.lines()) == 1
    assert done.returncode == 1, f"exit {done.returncode} with an entry quarantined"


# -- crafted entries that parse, with bytes the database columns do not take --------------------
def _crafted(tag: str, edit) -> bytes:
    data = _valid_entry(tag)
    return edit(data)


def _bad_protocol(data: bytes) -> bytes:
    """Request line protocol with a latin-1 byte (``HTTP/1.\\xff``)."""
    head, rest = data.split(b"-B--\n", 1)
    request, after = rest.split(b"\n", 1)
    method, uri, _protocol = request.split(b" ")
    return head + b"-B--\n" + b" ".join((method, uri, b"HTTP/1.\xff")) + b"\n" + after


def _long_peer(data: bytes) -> bytes:
    """Section A with a 60-character client address (the column holds 45)."""
    first, a_line, rest = data.split(b"\n", 2)
    words = a_line.split(b" ")
    words[3] = b"x" * 60
    return first + b"\n" + b" ".join(words) + b"\n" + rest


def _section_a_id(new: bytes):
    """Section A's unique id replaced (the file name keeps a valid one)."""
    def edit(data: bytes) -> bytes:
        first, a_line, rest = data.split(b"\n", 2)
        words = a_line.split(b" ")
        words[2] = new
        return first + b"\n" + b" ".join(words) + b"\n" + rest
    return edit


POISON = {"protocol-latin1": _bad_protocol, "peer-60-chars": _long_peer,
          "id-latin1": _section_a_id(b"PoisonId\xe9\xffAAAAAAAAAAAAAAAAA"),
          "id-80-chars": _section_a_id(b"PoisonIdLong" + b"B" * 68)}


def _poison_uid(poison: str) -> str:
    """The unique id the parser reads from the odd entry's section A."""
    data = _crafted("Poison", POISON[poison])
    return data.split(b"\n", 2)[1].split(b" ")[2].decode("utf-8", "surrogateescape")


@pytest.fixture(params=["sqlite", "mariadb"])
def any_database(request, fast_tmp) -> ih.DB:
    return ih.database_param(request, fast_tmp)


@pytest.mark.parametrize("poison", sorted(POISON))
def test_one_odd_entry_does_not_block_the_database(fast_tmp, any_database, poison):
    """A web user writes one entry that parses but holds a value a database column does not
    take. The good entries of the same batch, and every later one, must still reach the
    database: a row the database refuses is not an outage. The odd row is stored (text
    fitted to its column) or kept in <state_dir>/db-rejected, never dropped. (Regression:
    it used to be taken for an outage, spooled, and block every later replay.)"""
    sb = ih.Sandbox(fast_tmp, db=any_database.url)
    minute = sb.storage / MINUTE
    minute.mkdir(parents=True)
    (minute / _name("Poison")).write_bytes(_crafted("Poison", POISON[poison]))
    (minute / _name("SameBatch")).write_bytes(_valid_entry("SameBatch"))
    ih.age_tree(sb.storage)
    first = sb.run(expect=None)
    (minute / _name("NextRun")).write_bytes(_valid_entry("NextRun"))
    ih.age_tree(sb.storage)
    second = sb.run(expect=None)
    log = first.stderr + second.stderr
    conn = any_database.connect()
    try:
        stored = {ih._text(r[0]) for r in ih.query(conn, "SELECT unique_id FROM events")}
    finally:
        conn.close()
    good = {(t + "A" * 27)[:27] for t in ("SameBatch", "NextRun")}
    assert "database unreachable" not in log, log
    assert good <= stored, f"good entries missing from the database: {good - stored}"
    assert os.path.getsize(sb.state / "db-spool") == 0
    poisoned = _poison_uid(poison)
    from modsec_tools.db.rows import stored_unique_id
    fitted = stored_unique_id(poisoned)
    rejected = ih.spool_ids(sb.state / "db-rejected")
    assert {poisoned, fitted} & (stored | set(rejected)), "the odd entry's row was dropped"
    if poisoned in rejected:
        assert f"database refused event {poisoned!r}" in log, log
    assert len(sb.lines()) == 3 and len(sb.archived()) == 3


@pytest.mark.parametrize("poison", ["id-latin1", "id-80-chars"])
def test_odd_unique_id_is_stored_not_refused(fast_tmp, any_database, poison):
    """The file name's id is valid, section A's is odd. The row must reach the database
    (fitted like every text column), or the entry be quarantined; a refusal, if any, must
    show in the exit status. (Regression: the row was looked up by its unfitted id, so the
    database 'refused' it into db-rejected, and ingest still exited 0.)"""
    sb = ih.Sandbox(fast_tmp, db=any_database.url)
    minute = sb.storage / MINUTE
    minute.mkdir(parents=True)
    (minute / _name("Poison")).write_bytes(_crafted("Poison", POISON[poison]))
    ih.age_tree(sb.storage)
    done = sb.run(expect=None)
    refused = ih.spool_ids(sb.state / "db-rejected")
    assert done.returncode == (1 if refused or sb.quarantined() else 0), done.stderr
    assert not refused, f"the database refused {refused}: {done.stderr}"
    conn = any_database.connect()
    try:
        stored = ih.query(conn, "SELECT unique_id, uri FROM events")
    finally:
        conn.close()
    assert len(stored) == 1 or sb.quarantined(), (stored, sb.quarantined())


def _ingest_valid_entries(sb: ih.Sandbox, tags: tuple[str, ...]):
    """One valid entry per tag (its id from the tag) in one minute directory; ingest runs."""
    minute = sb.storage / MINUTE
    minute.mkdir(parents=True)
    for tag in tags:
        (minute / _name(tag)).write_bytes(_valid_entry(tag))
    ih.age_tree(sb.storage)
    return sb.run(expect=None)


def test_ids_that_differ_only_in_case_are_two_events(fast_tmp, any_database):
    """mod_unique_id's ids are case-sensitive (base64): two entries whose ids differ only in
    letter case are two transactions, and a planted one must not push a real one out of the
    database. Both are stored, in both databases; nothing refused."""
    sb = ih.Sandbox(fast_tmp, db=any_database.url)
    done = _ingest_valid_entries(sb, ("CaseX", "casex"))
    assert done.returncode == 0, done.stderr
    assert not ih.spool_ids(sb.state / "db-rejected")
    conn = any_database.connect()
    try:
        stored = sorted(ih._text(r[0]) for r in ih.query(conn, "SELECT unique_id FROM events"))
    finally:
        conn.close()
    assert stored == sorted((tag + "A" * 27)[:27] for tag in ("CaseX", "casex")), stored


def test_a_row_the_database_refuses_shows_in_the_exit_status(fast_tmp, mariadb, mariadb_db):
    """MariaDB itself refuses one row (a trigger signals an error for it): the other entry
    of the batch is stored, the refused row is kept in db-rejected with the reason, and
    ingest exits 1, so cron or a monitor sees it."""
    sb = ih.Sandbox(fast_tmp, db=mariadb.url_for(mariadb_db))
    sb.run(action="db init")
    ih.refuse_rows(ih.DB("mariadb", sb.db, lambda: mariadb.connect(mariadb_db)), True)
    done = _ingest_valid_entries(sb, ("RefuseMe", "KeepMe"))
    assert done.returncode == 1, done.stderr
    assert "database refused event 'RefuseMeAAAAAAAAAAAAAAAAAAA'" in done.stderr
    assert ih.spool_ids(sb.state / "db-rejected") == ["RefuseMeAAAAAAAAAAAAAAAAAAA"]
    assert ih.mariadb_unique_ids(lambda: mariadb.connect(mariadb_db)) == [
        "KeepMeAAAAAAAAAAAAAAAAAAAAA"]
    assert len(sb.lines()) == 2 and len(sb.archived()) == 2


# -- races: names swapped while ingest works ----------------------------------------------------
SWAPPER = r"""
import os, sys
from modsec_tools import config
from modsec_tools.pipeline import ingest
from modsec_tools.tree import storage
settings = config.load(sys.argv[1])
real, moved, victim, hook = sys.argv[2:6]
original = getattr(storage.StorageTree, hook)
swapped = []
def swap_first(self, first, *args):
    # read(ref, ...); remove([(ref, inode, device), ...]), the batch
    ref = first[0][0] if hook == "remove" else first
    if not swapped:
        swapped.append(ref.relpath)
        if hook == "read":     # the minute directory becomes a symlink after the scan
            os.rename(real, moved)
            os.symlink(victim, real)
        else:                  # the entry becomes a symlink after it was read, before unlink
            path = os.path.join(real, ref.name)
            os.rename(path, os.path.join(moved, ref.name))
            os.symlink(os.path.join(victim, ref.name), path)
    return original(self, first, *args)
setattr(storage.StorageTree, hook, swap_first)
with ingest.Pipeline(settings) as pipeline:
    stats = pipeline.run_once()
print(stats.entries, stats.errors)
"""


@pytest.mark.parametrize("hook", ["read", "remove"])
def test_names_swapped_for_symlinks_during_ingest(fast_tmp, hook):
    """``read``: after the scan, the minute directory is renamed away and replaced by a
    symlink to a directory outside holding files of the same names. ``remove``: after an
    entry was read and committed, its name becomes a symlink to such a file. Nothing outside
    is read, changed or deleted; no file is deleted that was not the one archived."""
    corpus.require_corpus()
    sb = ih.Sandbox(fast_tmp, settings={"workers": "0", "batch_size": "50"})
    ih.extract(RUN, fast_tmp / "x", sb.storage)
    want = ih.originals(sb.storage)
    real = sb.storage / MINUTE
    victim = fast_tmp / "outside" / "victim"
    moved = fast_tmp / "outside" / "moved"
    victim.mkdir(parents=True)
    if hook == "remove":
        moved.mkdir()
    for name in os.listdir(real):
        (victim / name).write_bytes(MARKER + b"\n" + (real / name).read_bytes())
    before = {name: (victim / name).read_bytes() for name in os.listdir(victim)}
    done = ih.run_cli([sys.executable, "-c", SWAPPER, str(sb.config), str(real), str(moved),
                       str(victim), hook])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    entries, errors = map(int, done.stdout.split())
    assert {n: (victim / n).read_bytes() for n in os.listdir(victim)} == before
    for sink in (sb.archive, sb.events):
        assert MARKER not in sink.read_bytes()
    if hook == "read":
        # every entry of that directory failed to read (the link is refused), none lost
        assert entries == 0 and errors == len(want), done.stderr[-2000:]
        assert sorted(os.listdir(moved)) == sorted(Path(want[u].relpath).name for u in want)
    else:
        # the swapped name held another inode: not deleted; the real file was archived
        assert entries == len(want) and errors == 0, done.stderr[-2000:]
        assert "was replaced after it was read; not deleting it" in done.stderr
        (name,) = os.listdir(moved)
        assert os.path.islink(real / name)  # left for the next run to quarantine
        ih.check_archive(sb, want)
        again = sb.run(expect=1)
        assert "symbolic link, not an entry file" in again.stderr
        assert len(sb.lines()) == len(want)


def test_index_mode_tampered_entries_and_bogus_index_lines(fast_tmp):
    """With an index log, an entry changed after ModSecurity wrote it (same size, other md5;
    or cut short) is quarantined with the index's reason; index lines naming paths outside
    the layout, files that do not exist, or garbage are ignored; the rest is ingested."""
    corpus.require_corpus()
    run = "r7_pl2_concurrent_noremoteip"
    index = fast_tmp / "index.log"
    sb = ih.Sandbox(fast_tmp, index_log=index, settings={"settle_seconds": "600"})
    ih.extract(run, fast_tmp / "x", sb.storage)
    want = ih.originals(sb.storage)
    lines = ih.index_log(run).read_bytes().splitlines(keepends=True)
    relpaths = sorted(ih.read_index(ih.index_log(run)))
    flipped, cut = relpaths[3], relpaths[7]
    path = sb.storage / flipped.lstrip("/")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20  # one byte, same size
    path.write_bytes(bytes(data))
    path = sb.storage / cut.lstrip("/")
    path.write_bytes(path.read_bytes()[:-40])
    head = lines[0].split(b" /www-data/")[0]
    bogus = [head + b" /../../../etc/shadow 0 100 md5:" + b"0" * 32 + b"\n",
             head + b" /www-data/20261128/20261128-1631/20261128-163100-NoSuchFileAAAAAAAAAAAAA"
                    b" 0 100 md5:" + b"0" * 32 + b"\n",
             b"\x00\xff garbage that is not an index line\n"]
    index.write_bytes(b"".join(lines[:5] + bogus + lines[5:]))
    ih.age_tree(sb.storage, 0)  # fresh: only the index lines can prove them complete
    shadow = _digest("/etc/shadow")

    done = sb.run(expect=1)  # 1: two entries were quarantined
    assert "Traceback" not in done.stderr
    assert _digest("/etc/shadow") == shadow
    reasons = {path: (where / "reason").read_text() for path, where in sb.quarantined().items()}
    assert set(reasons) == {flipped, cut}, reasons
    assert "md5 " in reasons[flipped] and "differs from index log's" in reasons[flipped]
    assert "size " in reasons[cut] and "differs from index log's" in reasons[cut]
    good = {uid: o for uid, o in want.items() if o.relpath not in (flipped, cut)}
    assert sb.left() == []
    ih.check_archive(sb, good)
    ih.check_event_log(sb, good)
