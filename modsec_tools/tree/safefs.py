"""File access that a hostile storage tree cannot redirect.

The storage tree is writable by web users (often mode 0777) and modsec-tools may run as root,
so every path component is opened with O_NOFOLLOW relative to its parent's descriptor, files
must be regular with a single link, and checks are made with fstat on the opened descriptor
(never stat-then-open, which races).
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..audit.errors import ParseError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class UnsafeFile(ParseError):
    """A name in the tree that is not what ModSecurity writes: a link, FIFO, device, hard link…"""


@dataclass(slots=True)
class FileData:
    data: bytes
    stat: os.stat_result
    truncated: bool      # the file is larger than the cap: data holds at most its first bytes
    settled: bool = True  # unchanged while it was read: ``stat`` describes ``data``


def read_file_at(dir_fd: int | None, name: str, max_size: int,
                 require_single_link: bool = True) -> FileData:
    """Read a regular file without following a symlink at its last component.

    Raises UnsafeFile for anything but a regular file (FIFOs are opened non-blocking so they
    cannot stall us), or for a hard-linked file when ``require_single_link`` (a hard link to a
    file outside the tree would otherwise be read, and later deleted, through the tree).
    """
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the name is a symlink
            raise UnsafeFile("is a symbolic link; not followed") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"is not a regular file (mode {stat.filemode(info.st_mode)})")
        if require_single_link and info.st_nlink != 1:
            raise UnsafeFile(f"has {info.st_nlink} hard links; refusing to read it")
        if info.st_size > max_size:  # over the cap already: its bytes are not needed
            return FileData(b"", info, True)
        chunks: list[bytes] = []
        remaining = max_size + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        truncated = len(data) > max_size
        after = os.fstat(fd)
        settled = _stamp(after) == _stamp(info)
        return FileData(data[:max_size], info, truncated, settled)
    finally:
        os.close(fd)


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns


def open_dir_at(dir_fd: int | None, name: str) -> int:
    """Open a directory without following a symlink; the caller closes the descriptor."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_dir_path(root: str, components: list[str]) -> int:
    """Open ``root/c1/c2/...`` refusing a symlink at every component below ``root``."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for component in components:
            child = open_dir_at(fd, component)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
