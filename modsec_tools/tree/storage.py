"""The Concurrent storage tree: finding entry files, reading, deleting and quarantining them.

The tree is writable by web users, and we may run as root, so every step works on directory
descriptors opened with O_NOFOLLOW, checks what it opened with fstat, and only touches names
that match ModSecurity's layout (``[<user>/]YYYYMMDD/YYYYMMDD-HHMM/YYYYMMDD-HHMMSS-<id>``).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .layout import (DAY_DIR, ENTRY_NAME, MINUTE_DIR, Dirs, EntryRef, Listing, is_layout_dir,
                     is_minute_dir, walk)
from ..owned import OwnedDir
from .safefs import FILE_FLAGS, open_dir_at, open_dir_path, read_file_at

__all__ = ["EntryRef", "Candidate", "Oddity", "StorageTree", "GONE", "REPLACED", "CHANGED"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Candidate:
    ref: EntryRef


@dataclass(slots=True)
class Oddity:
    """Something in the tree that is not an entry file; reported, and quarantined if a file."""

    ref: EntryRef
    reason: str
    movable: bool   # a non-directory name we may move into quarantine


class StorageTree:
    def __init__(self, root: str) -> None:
        self.root = root
        self._dir_fds: dict[tuple[str, ...], int] = {}

    def release(self) -> None:
        """Close the directory descriptors cached since the last release (end of a batch)."""
        for fd in self._dir_fds.values():
            os.close(fd)
        self._dir_fds.clear()

    # -- discovery -----------------------------------------------------------------------
    def scan(self) -> Iterator[Candidate | Oddity]:
        """Every entry file (oldest minute first) and every odd name at entry depth."""
        for listing in walk(self.root, on_error=self._unlisted):
            if is_minute_dir(listing.dirs):
                yield from _in_minute(listing)

    def _unlisted(self, dirs: Dirs, exc: OSError) -> None:
        log.warning("cannot list %s: %s", self._show(dirs), exc.strerror)

    # -- file operations -------------------------------------------------------------------
    def parent_fd(self, ref: EntryRef) -> int:
        """A cached descriptor of the entry's directory, opened without following links.

        Holding the descriptor pins the real directory: swapping its name for a symlink
        afterwards changes nothing for reads and unlinks made through it.
        """
        fd = self._dir_fds.get(ref.dirs)
        if fd is None:
            fd = open_dir_path(self.root, list(ref.dirs))
            self._dir_fds[ref.dirs] = fd
        return fd

    def read(self, ref: EntryRef, max_size: int):
        """(FileData) of an entry; raises UnsafeFile / OSError / FileNotFoundError."""
        return read_file_at(self.parent_fd(ref), ref.name, max_size)

    def remove(self, entries: Sequence[tuple]) -> int:
        """Delete entries we processed, given as (ref, inode, device, size, mtime_ns,
        ctime_ns as they were read; the last three may be missing, or -1 when unknown), each
        only if its name still holds that file unchanged; how many could not be deleted
        (logged; one replaced or changed meanwhile is left with a warning, not an error: a
        changed entry is taken again)."""
        doomed: list[tuple] = []
        refs: list[EntryRef] = []
        errors = 0
        for ref, *seen in entries:
            try:
                fd = self.parent_fd(ref)
            except FileNotFoundError:
                continue  # its directory is gone, and it with it
            except OSError as exc:
                errors += 1
                log.error("%s: cannot delete: %s", ref.relpath, exc.strerror or exc)
                continue
            doomed.append((fd, ref.name, *seen))
            refs.append(ref)
        for ref, result in zip(refs, _remove_entries(doomed)):
            if result == REPLACED:
                log.warning("%s was replaced after it was read; not deleting it", ref.relpath)
            elif result == CHANGED:
                log.warning("%s changed after it was read; not deleting it: it will be taken "
                            "again", ref.relpath)
            elif result > 0:
                errors += 1
                log.error("%s: cannot delete: %s", ref.relpath, os.strerror(result))
        return errors

    def quarantine(self, ref: EntryRef, quarantine_dir: str, reason: str) -> str | None:
        """Move the name (never what a link points to) into quarantine: a directory of its
        own that this call creates, holding ``reason`` (written first) and ``entry``.
        Nothing the tree named is ever a name we write to; the returned path is that
        directory, or None when the entry's directory cannot be opened (logged)."""
        try:
            fd = self.parent_fd(ref)
        except OSError as exc:
            log.error("cannot quarantine %s: %s", ref.relpath, exc.strerror)
            return None
        with OwnedDir(quarantine_dir, 0o700) as top:
            held, name = top.make_subdir(time.strftime("%Y%m%d-%H%M%S"))
            with held:
                try:
                    _write_reason(held, ref.relpath, reason, _describe(fd, ref.name))
                    _move_in(fd, ref.name, held)
                except BaseException:
                    held.remove(REASON)
                    os.rmdir(name, dir_fd=top.fd)
                    raise
                held.sync()
            top.sync()
        return top.show(name)

    def remove_empty_dirs(self, keep_recent: float = 180.0) -> int:
        """rmdir empty day and minute directories, except those ModSecurity may be about to
        write into: the newest day (of each user) and its newest minute, and anything touched
        within ``keep_recent`` seconds. User directories stay."""
        self.release()  # rmdir must not race our own cached descriptors' names
        removed = 0
        now = time.time()
        try:
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            removed = self._prune(root_fd, (), now, keep_recent, True)
        finally:
            os.close(root_fd)
        return removed

    def _prune(self, fd: int, dirs: tuple[str, ...], now: float, keep_recent: float,
               newest_path: bool) -> int:
        removed = 0
        try:
            names = sorted(os.listdir(fd))
        except OSError:
            return 0
        subdirs = []
        for name in names:
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode) and is_layout_dir((*dirs, name)):
                subdirs.append((name, info))
        timed = [name for name, _ in subdirs if DAY_DIR.fullmatch(name) or MINUTE_DIR.fullmatch(name)]
        newest = timed[-1] if timed else None
        for name, info in subdirs:
            child = (*dirs, name)
            user_dir = not dirs and name not in timed
            # Each user directory starts its own "newest" path; a day that is over does not.
            child_newest = user_dir or (newest_path and name == newest)
            if not is_minute_dir(child):
                try:
                    child_fd = open_dir_at(fd, name)
                except OSError:
                    continue
                try:
                    removed += self._prune(child_fd, child, now, keep_recent, child_newest)
                finally:
                    os.close(child_fd)
            if user_dir or child_newest or now - info.st_mtime < keep_recent:
                continue
            try:
                os.rmdir(name, dir_fd=fd)
                removed += 1
            except OSError:
                pass  # not empty (or already gone): fine
        return removed

    def _show(self, dirs: tuple[str, ...]) -> str:
        return os.path.join(self.root, *dirs)


def _in_minute(listing: Listing) -> Iterator[Candidate | Oddity]:
    dirs = listing.dirs
    for name in listing.odd_dirs:
        if ENTRY_NAME.fullmatch(name):
            yield Oddity(EntryRef(dirs, name), "directory named like an entry", False)
    for entry in listing.others:
        # scandir's d_type tells files from links without a stat call
        try:
            is_file = entry.is_file(follow_symlinks=False)
        except OSError:
            continue
        if is_file and ENTRY_NAME.fullmatch(entry.name):
            yield Candidate(EntryRef(dirs, entry.name))
            continue
        try:
            kind = _kind(entry.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:
            continue
        yield Oddity(EntryRef(dirs, entry.name), f"{kind}, not an entry file", True)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISREG(mode):
        return "regular file with a name ModSecurity does not write"
    return "unknown file type"


#: The names inside each quarantine directory: the only ones it ever holds.
ENTRY, REASON = "entry", "reason"
_COPY_CHUNK = 1 << 20


def _describe(dir_fd: int, name: str) -> str:
    """What the name is, for the reason file (a link's target is all a link holds)."""
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        return f"symbolic link to {_printable(os.readlink(name, dir_fd=dir_fd))}"
    links = f", {info.st_nlink} hard links" if info.st_nlink != 1 else ""
    return f"{_kind(info.st_mode)}, {info.st_size} bytes, owner uid {info.st_uid}{links}"


def _printable(text: str) -> str:
    """Names come from the tree: control characters would forge lines in the reason."""
    return ascii(text)[1:-1]


def _write_reason(held: OwnedDir, relpath: str, reason: str, what: str) -> None:
    text = (f"path: {_printable(relpath)}\ntime: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
            f"reason: {_printable(reason)}\nwhat: {what}\n")
    fd = held.create(REASON)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_in(src_dir: int, name: str, held: OwnedDir) -> None:
    try:
        os.rename(name, ENTRY, src_dir_fd=src_dir, dst_dir_fd=held.fd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across(src_dir, name, held)


def _copy_across(src_dir: int, name: str, held: OwnedDir) -> None:
    """Quarantine across file systems: a regular file is copied in bounded chunks, the copy
    checked against the original (size, SHA-256) and fsync'd, and only then is the name
    unlinked, if it still holds the same unchanged file. Anything but a regular file holds
    no data (its description is in the reason): its name is only unlinked."""
    before = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
    if not stat.S_ISREG(before.st_mode):
        _unlink_if_unchanged(src_dir, name, before)  # never opened: a device could react
        return
    src = os.open(name, FILE_FLAGS, dir_fd=src_dir)
    try:
        _copy_checked(src, before, held)
        _unlink_if_unchanged(src_dir, name, before)
    except BaseException:
        held.remove(ENTRY)
        raise
    finally:
        os.close(src)


def _copy_checked(src: int, before: os.stat_result, held: OwnedDir) -> None:
    if _stamp(os.fstat(src)) != _stamp(before):
        raise OSError(errno.EAGAIN, "replaced while it was opened; left in place")
    out = held.create(ENTRY)
    try:
        digest, copied = _stream(src, out)
        os.fsync(out)
    finally:
        os.close(out)
    if copied != before.st_size or _stamp(os.fstat(src)) != _stamp(before):
        raise OSError(errno.EAGAIN, "changed while it was copied into quarantine; left "
                                    "in place")
    check = os.open(ENTRY, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=held.fd)
    try:
        copy_digest, copy_size = _stream(check, None)
    finally:
        os.close(check)
    if (copy_digest, copy_size) != (digest, copied):
        raise OSError(errno.EIO, "its copy in quarantine differs from it; left in place")


def _stream(src: int, out: int | None) -> tuple[bytes, int]:
    """SHA-256 and length of what ``src`` holds from its offset 0, written to ``out``."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(src, _COPY_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
        view = memoryview(chunk)
        while out is not None and view:
            view = view[os.write(out, view):]
    return digest.digest(), offset


def _stamp(info: os.stat_result) -> tuple[int, int, int, int, int]:
    """What tells a file we read from a file that changed since (or another file)."""
    return info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _unlink_if_unchanged(dir_fd: int, name: str, before: os.stat_result) -> None:
    now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if _stamp(now) != _stamp(before):
        raise OSError(errno.EAGAIN, "replaced or changed while it was quarantined; left "
                                    "in place")
    os.unlink(name, dir_fd=dir_fd)


# remove_entries' results besides 0 (deleted) and an errno
GONE, REPLACED, CHANGED = -1, -2, -3


def _remove_entries(entries: list[tuple]) -> list[int]:
    """For each (dir_fd, name, inode, device[, size, mtime_ns, ctime_ns]): unlink the name
    in the directory if it still holds that (inode, device) with that size and times (-1:
    not checked). 0: deleted; GONE: no such name; REPLACED: it holds another file;
    CHANGED: the same file, written since; else the errno of the failure."""
    results = []
    for fd, name, inode, device, *stamp in entries:
        try:
            now = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if (now.st_ino, now.st_dev) != (inode, device):
                results.append(REPLACED)
                continue
            if _changed(now, stamp):
                results.append(CHANGED)
                continue
            os.unlink(name, dir_fd=fd)
            results.append(0)
        except FileNotFoundError:
            results.append(GONE)
        except OSError as exc:
            results.append(exc.errno or errno.EIO)
    return results


def _changed(now: os.stat_result, stamp: Sequence[int]) -> bool:
    found = (now.st_size, now.st_mtime_ns, now.st_ctime_ns)
    return any(then != -1 and then != value for then, value in zip(stamp, found))
