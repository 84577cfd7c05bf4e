"""The files modsec-tools writes as root, in directories only root can change.

A root process that writes to a name another user can plant or swap can be made to
truncate or overwrite any file (logrotate's CVE-2016-1247, systemd-tmpfiles'
CVE-2013-4392). So every file the product writes (archive, event log, journal, spool,
db-rejected, status, lock, quarantine, SQLite) is reached through an ``OwnedDir``:

* the directory and every directory above it is checked, component by component without
  following a link, to be changeable by root (or by us) alone; a sticky directory such as
  /tmp may stand above it, as others cannot move our names out of it;
* files are opened relative to that directory's descriptor with O_NOFOLLOW, with O_EXCL
  when they are new; an existing file must be a regular file of ours with a single link;
* a file is replaced by writing a fresh temporary name and renaming it over the old one.

A name the product chose itself, in a directory nobody else can write, cannot be planted.
"""
from __future__ import annotations

import errno
import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO where a file should be must not hang the daemon in open().
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


class UnsafePath(OSError):
    """A directory or file the product must not write in or to; names it and why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, f"{why}; refusing to write there as "
                                      f"{'root' if os.geteuid() == 0 else 'this user'}", path)


def _trusted_owner(info: os.stat_result) -> bool:
    return info.st_uid in (0, os.geteuid())


def _others_can_write(info: os.stat_result) -> bool:
    """Someone besides root and us can add, remove or rename names in it."""
    mode = info.st_mode
    group_can = bool(mode & stat.S_IWGRP) and info.st_gid not in (0, os.getegid())
    return bool(mode & stat.S_IWOTH) or group_can


def _check_dir(path: str, info: os.stat_result, last: bool) -> None:
    if not _trusted_owner(info):
        raise UnsafePath(path, f"directory owned by uid {info.st_uid}")
    if _others_can_write(info) and (last or not info.st_mode & stat.S_ISVTX):
        raise UnsafePath(path, f"directory writable by other users "
                               f"(mode {stat.filemode(info.st_mode)})")


def open_owned_dir(path: str, mode: int = 0o750, create: bool = True) -> int:
    """A descriptor of ``path`` (created with ``mode`` where missing), once it and every
    directory above it are proven safe to write in; the caller closes it."""
    real = os.path.realpath(path)  # the admin's own links, resolved once; none followed after
    fd = os.open("/", _DIR_FLAGS)
    walked = ""
    try:
        parts = [part for part in real.split("/") if part]
        for position, part in enumerate(parts):
            walked += "/" + part
            child = _open_or_make(fd, part, mode if create else None)
            os.close(fd)
            fd = child
            _check_dir(walked, os.fstat(fd), position == len(parts) - 1)
        if not parts:
            _check_dir("/", os.fstat(fd), True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_or_make(parent: int, name: str, mode: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if mode is None:
            raise
    try:
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        pass  # made meanwhile: opened and checked like any other
    return os.open(name, _DIR_FLAGS, dir_fd=parent)


class OwnedDir:
    """A directory the product writes in (see the module's docstring)."""

    def __init__(self, path: str, mode: int = 0o750, create: bool = True,
                 fd: int | None = None) -> None:
        self.path = path
        self.fd = open_owned_dir(path, mode, create) if fd is None else fd

    @classmethod
    def of(cls, file_path: str, mode: int = 0o750) -> tuple["OwnedDir", str]:
        """The owned directory of ``file_path`` and the file's name in it."""
        directory, name = os.path.split(os.path.abspath(file_path))
        return cls(directory, mode), name

    def show(self, name: str) -> str:
        return os.path.join(self.path, name)

    def create(self, name: str, mode: int = 0o600, flags: int = os.O_WRONLY) -> int:
        """A new file under ``name``; FileExistsError if anything has that name."""
        return os.open(name, flags | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, mode, dir_fd=self.fd)

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """``name`` opened with ``flags`` (O_CREAT allowed), refused unless it is a regular
        file of ours with one link: a planted hard link would make us write to its twin."""
        try:
            fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(self.show(name), "is a symbolic link") from None
            if exc.errno == errno.ENXIO:
                raise UnsafePath(self.show(name), "is a FIFO or socket") from None
            raise
        try:
            self._check_file(name, os.fstat(fd))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_file(self, name: str, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(self.show(name), f"is not a regular file "
                                              f"(mode {stat.filemode(info.st_mode)})")
        if info.st_nlink != 1:
            raise UnsafePath(self.show(name), f"has {info.st_nlink} hard links")
        if info.st_uid != os.geteuid():
            raise UnsafePath(self.show(name), f"is owned by uid {info.st_uid}")

    def replace(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """Make ``name`` hold ``data`` atomically: a fresh temporary name, written and
        fsync'd, renamed over it (rename replaces a link itself, never what it points to)."""
        temporary = f".{name}.{os.getpid()}.tmp"
        self.remove(temporary)  # left by a crash of this process's predecessor with our pid
        fd = self.create(temporary, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        self.sync()

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def make_subdir(self, prefix: str, mode: int = 0o700) -> tuple[OwnedDir, str]:
        """A new directory ``<prefix>-<n>`` that this call alone created (mkdir is
        exclusive), for files whose names must never meet a name made before."""
        for number in range(1, 1 << 20):
            name = f"{prefix}-{number}"
            try:
                os.mkdir(name, mode, dir_fd=self.fd)
            except FileExistsError:
                continue
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
            return OwnedDir(self.show(name), fd=fd), name
        raise FileExistsError(errno.EEXIST, "no free name", self.show(prefix))

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OwnedDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
