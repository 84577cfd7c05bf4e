"""ModSecurity 2's Concurrent storage layout: its grammar, and the one walk of a tree.

``<storage>/[<user>/]YYYYMMDD/YYYYMMDD-HHMM/YYYYMMDD-HHMMSS-<unique_id>`` (the ``<user>`` level
came with 2.9.3, for MPM ITK). ``parse``, ``ingest`` and ``watch`` all decide with these
predicates what belongs to the layout, and list a tree with ``walk``: the tree is writable by
web users, so every directory is opened with O_NOFOLLOW relative to its parent's descriptor,
and only directories of the layout are entered.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: YYYYMMDD-HHMMSS-<unique_id>: the names ModSecurity 2 gives Concurrent entry files.
ENTRY_NAME = re.compile(r"[0-9]{8}-[0-9]{6}-[A-Za-z0-9@_.-]{8,64}")
DAY_DIR = re.compile(r"[0-9]{8}")
MINUTE_DIR = re.compile(r"[0-9]{8}-[0-9]{4}")
USER_DIR_MAX = 64

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Dirs = tuple[str, ...]


def is_user_dir(name: str) -> bool:
    return 0 < len(name) <= USER_DIR_MAX and name not in (".", "..") and "/" not in name \
        and "\0" not in name


def _day_and_minute(day: str, minute: str) -> bool:
    return bool(DAY_DIR.fullmatch(day) and MINUTE_DIR.fullmatch(minute)
                and minute.startswith(day))


def is_layout_dir(dirs: Dirs) -> bool:
    """``<user>``, ``[<user>/]YYYYMMDD`` or ``[<user>/]YYYYMMDD/YYYYMMDD-HHMM`` (a day of the
    old layout is also a valid user name: both are entered the same way)."""
    if len(dirs) == 1:
        return is_user_dir(dirs[0])
    if len(dirs) == 2:
        return (is_user_dir(dirs[0]) and DAY_DIR.fullmatch(dirs[1]) is not None) \
            or _day_and_minute(*dirs)
    if len(dirs) == 3:
        return is_user_dir(dirs[0]) and _day_and_minute(dirs[1], dirs[2])
    return False


def is_minute_dir(dirs: Dirs) -> bool:
    """Where entry files are, and nothing below."""
    return len(dirs) in (2, 3) and is_layout_dir(dirs) and _day_and_minute(*dirs[-2:])


def is_entry(dirs: Dirs, name: str) -> bool:
    return is_minute_dir(dirs) and ENTRY_NAME.fullmatch(name) is not None


class EntryRef:
    """A name in the tree, relative to the storage dir: ``dirs`` then ``name``."""

    __slots__ = ("dirs", "name", "relpath")

    def __init__(self, dirs: Dirs, name: str) -> None:
        self.dirs = dirs
        self.name = name
        self.relpath = "/" + "/".join((*dirs, name))  # as the index log writes it

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntryRef) and self.relpath == other.relpath

    def __hash__(self) -> int:
        return hash(self.relpath)

    def __repr__(self) -> str:
        return f"EntryRef({self.relpath!r})"

    @property
    def unique_id(self) -> str:
        return self.name.split("-", 2)[2]

    @property
    def in_layout(self) -> bool:
        return is_entry(self.dirs, self.name)

    @classmethod
    def from_relpath(cls, relpath: str) -> "EntryRef":
        *dirs, name = relpath.strip("/").split("/")
        return cls(tuple(dirs), name)


def relpath_is_layout(relpath: str) -> bool:
    """``/<user>/YYYYMMDD/YYYYMMDD-HHMM/<entry>`` or the pre-2.9.3 form without <user>."""
    return EntryRef.from_relpath(relpath).in_layout


def position_of(path: str) -> Dirs:
    """Where a directory a user names stands in the layout: a minute or day directory is
    itself part of it (its entries must be found as such); anything else is a storage root
    (a user directory as root reads as a storage root of the old layout)."""
    parts = os.path.abspath(path).rstrip("/").split("/")
    if len(parts) >= 2 and _day_and_minute(parts[-2], parts[-1]):
        return (parts[-2], parts[-1])
    if DAY_DIR.fullmatch(parts[-1]):
        return (parts[-1],)
    return ()


@dataclass(slots=True)
class Listing:
    """One directory of the layout, as listed through a descriptor held during the step."""

    dirs: Dirs
    fd: int
    subdirs: list[str] = field(default_factory=list)     # of the layout: entered next
    odd_dirs: list[str] = field(default_factory=list)    # not of the layout: never entered
    others: list[os.DirEntry] = field(default_factory=list)  # files, links, FIFOs, ...


OnError = Callable[[Dirs, OSError], None]


def walk(root: str, at: Dirs = (), on_error: OnError | None = None) -> Iterator[Listing]:
    """Every layout directory from ``root`` down, parents first, names sorted. ``root`` is
    the configured path (the admin's choice: resolved once); below it no link is followed.
    ``at``: where ``root`` stands in the layout (see ``position_of``)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from _walk(fd, at, on_error)
    finally:
        os.close(fd)


def _walk(fd: int, dirs: Dirs, on_error: OnError | None) -> Iterator[Listing]:
    try:
        listing = _list(fd, dirs)
    except OSError as exc:
        if on_error is not None:
            on_error(dirs, exc)
        return
    yield listing
    if is_minute_dir(dirs):
        return
    for name in listing.subdirs:
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            continue  # gone, or swapped for a link since it was listed: not followed
        try:
            yield from _walk(child, (*dirs, name), on_error)
        finally:
            os.close(child)


def _list(fd: int, dirs: Dirs) -> Listing:
    listing = Listing(dirs, fd)
    with os.scandir(fd) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                listing.others.append(entry)
            elif not is_minute_dir(dirs) and is_layout_dir((*dirs, entry.name)):
                listing.subdirs.append(entry.name)
            else:
                listing.odd_dirs.append(entry.name)
    return listing
