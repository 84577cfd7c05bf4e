"""Mode and owner of new storage subdirectories, for Apache MPM ITK.

Under ITK each vhost runs as its own user, but ModSecurity creates the day and minute
directories as whichever user got there first (mode from SecAuditLogDirMode, less the umask),
so the others cannot write their entries. The watcher applies ``dir_mode``/``dir_owner``/
``dir_group`` to each new ``<user>``/``YYYYMMDD``/``YYYYMMDD-HHMM`` directory as soon as it
appears.

As root in a tree web users can write, this must not be redirectable: each directory is
opened with O_NOFOLLOW|O_DIRECTORY relative to its parent's descriptor (itself opened that
way from the storage root), checked with fstat, and changed with fchmod/fchown on that
descriptor. A symlink swapped in at any moment makes the open fail; a directory renamed away
after the open is changed where it now is, which is the attacker's own directory.
"""
from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass

from .safefs import open_dir_path
from .layout import is_layout_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DirPolicy:
    mode: int | None
    uid: int            # -1: leave unchanged
    gid: int

    @property
    def active(self) -> bool:
        return self.mode is not None or self.uid != -1 or self.gid != -1

    @classmethod
    def from_settings(cls, mode: int | None, owner: str, group: str) -> "DirPolicy":
        return cls(mode, _uid(owner), _gid(group))


def _uid(name: str) -> int:
    return _lookup(name, lambda n: pwd.getpwnam(n).pw_uid, "dir_owner", "user")


def _gid(name: str) -> int:
    return _lookup(name, lambda n: grp.getgrnam(n).gr_gid, "dir_group", "group")


def _lookup(name: str, by_name, key: str, what: str) -> int:
    """A numeric id, or a name looked up; -1 (leave unchanged) when not set."""
    if not name:
        return -1
    if name.isascii() and name.isdigit():
        return int(name)
    try:
        return by_name(name)
    except KeyError:
        raise ValueError(f"{key}: no such {what} {name!r}") from None


def apply(root: str, dirs: tuple[str, ...], policy: DirPolicy) -> str | None:
    """Fix one directory; returns a problem description, or None when done (or nothing to do)."""
    if not policy.active:
        return None
    if not is_layout_dir(dirs):
        return "name does not match the ModSecurity layout; left alone"
    try:
        fd = open_dir_path(root, list(dirs))
    except FileNotFoundError:
        return None  # already removed
    except OSError as exc:
        return f"not opened ({exc.strerror}): a symlink or not a directory; left alone"
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):
            return "not a directory; left alone"
        if (policy.uid not in (-1, info.st_uid)) or (policy.gid not in (-1, info.st_gid)):
            os.fchown(fd, policy.uid, policy.gid)
        if policy.mode is not None and stat.S_IMODE(info.st_mode) != policy.mode:
            os.fchmod(fd, policy.mode)
        return None
    except OSError as exc:
        return f"cannot change: {exc.strerror}"
    finally:
        os.close(fd)
