"""``modsec-tools config check``: every problem a sysadmin would otherwise find at 3 a.m."""
from __future__ import annotations

import grp
import os
import pwd
import stat

from . import serverconf
from .config import Settings
from .db import DatabaseError, Target, open_database, parse_target
from .fleet import check as fleet_check


def _directory(path: str, what: str, must_write: bool) -> list[tuple[str, str]]:
    if not os.path.exists(path):
        parent = os.path.dirname(path.rstrip("/")) or "/"
        if must_write and os.access(parent, os.W_OK):
            return [("warning", f"{what} {path} does not exist yet (it will be created)")]
        return [("error", f"{what} {path} does not exist")]
    if not os.path.isdir(path):
        return [("error", f"{what} {path} is not a directory")]
    if must_write and not os.access(path, os.W_OK):
        return [("error", f"{what} {path} is not writable by uid {os.geteuid()}")]
    if os.stat(path).st_mode & 0o002 and what != "storage_dir":
        return [("warning", f"{what} {path} is world-writable; use 0750 or tighter")]
    return []


def _output_file(path: str, what: str) -> list[tuple[str, str]]:
    directory = os.path.dirname(path) or "."
    if os.path.exists(path) and not os.path.isfile(path):
        return [("error", f"{what} {path} exists and is not a regular file")]
    if os.path.islink(path):
        return [("error", f"{what} {path} is a symbolic link; it will not be followed")]
    return _directory(directory, f"{what} directory", must_write=True)


def _index_log_problems(path: str) -> list[tuple[str, str]]:
    # Apache opens SecAuditLog when it starts: before that, a missing file is normal and the
    # watcher waits for it (entries are taken by scanning meanwhile); a missing directory is not.
    if os.path.exists(path):
        return [] if os.path.isfile(path) else [("error", f"index_log {path} is not a file")]
    if not os.path.isdir(os.path.dirname(path) or "."):
        return [("error", f"index_log {path}: its directory does not exist")]
    return [("warning", f"index_log {path} does not exist yet (Apache creates it when it starts "
                        "with SecAuditLog set)")]


# Apache's children write the entries: the User its configuration names (with Debian's
# envvars), else the distributions' usual ones.
_USUAL_USERS = ("www-data", "apache", "httpd", "wwwrun")


def apache_user(apache: serverconf.Apache | None = None) -> pwd.struct_passwd | None:
    apache = serverconf.read_apache() if apache is None else apache
    names = [apache.user] if apache.user else []
    for name in names + list(_USUAL_USERS):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _may(path: str, info: os.stat_result, user: pwd.struct_passwd, groups: set[int],
         bits: int) -> bool:
    """Whether ``user`` gets ``bits`` (1 search, 3 write + search) on ``path`` (whose stat is
    ``info``) from its mode bits. A directory with an ACL is taken as reachable: its ACL is
    not judged here."""
    try:
        if "system.posix_acl_access" in os.listxattr(path):
            return True
    except OSError:
        pass
    mode = stat.S_IMODE(info.st_mode)
    if user.pw_uid == 0:
        return True
    if info.st_uid == user.pw_uid:
        granted = mode >> 6
    elif info.st_gid in groups:
        granted = mode >> 3
    else:
        granted = mode
    return granted & bits == bits


def _apache_reaches(storage: str, user: pwd.struct_passwd | None) -> list[tuple[str, str]]:
    """ModSecurity creates entries as Apache's user: a directory above the tree it cannot
    enter (Debian's /var/log/apache2 is root:adm 0750, RHEL's /var/log/httpd 0700) means
    "Audit log: Failed to create subdirectories ... Permission denied" and no entry ever."""
    if user is None:
        return []
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    path = "/"
    try:
        for part in [p for p in os.path.abspath(storage).split("/") if p]:
            info = os.stat(path)
            if not _may(path, info, user, groups, 1):
                return [_unreachable(storage, user, path, info, "enter")]
            path = os.path.join(path, part)
        info = os.stat(path)
        if not _may(path, info, user, groups, 3):
            return [_unreachable(storage, user, path, info, "write")]
    except OSError:
        pass  # not ours to see (config check run without root): nothing to judge
    return []


def _unreachable(storage: str, user: pwd.struct_passwd, blocker: str, info: os.stat_result,
                 verb: str) -> tuple[str, str]:
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    return ("warning", f"storage_dir {storage}: Apache's user {user.pw_name} cannot {verb} "
                       f"{blocker} ({owner}:{group} {stat.S_IMODE(info.st_mode):o}); "
                       "ModSecurity would write no entry ('Audit log: Failed to create "
                       "subdirectories'). Use a tree it can reach, e.g. /var/log/modsec_audit, "
                       "in SecAuditLogStorageDir and storage_dir")


def tree_problems(settings: Settings,
                  apache: serverconf.Apache | None = None) -> list[tuple[str, str]]:
    """The storage tree and the index log: what Apache writes, not us (watch checks them
    before it starts)."""
    problems: list[tuple[str, str]] = []
    # Apache creates the storage tree, not us: a missing one is a typo or a missing
    # SecAuditLogStorageDir, and ingest/watch would find nothing.
    if not os.path.exists(settings.storage_dir):
        problems.append(("error", f"storage_dir {settings.storage_dir} does not exist "
                                  "(set it to SecAuditLogStorageDir)"))
    elif not os.path.isdir(settings.storage_dir):
        problems.append(("error", f"storage_dir {settings.storage_dir} is not a directory"))
    else:
        problems += _apache_reaches(settings.storage_dir, apache_user(apache))
    if settings.index_log:
        problems.extend(_index_log_problems(settings.index_log))
    return problems


def check(settings: Settings) -> list[tuple[str, str]]:
    apache = serverconf.read_apache()
    problems = tree_problems(settings, apache)
    problems += _output_file(settings.archive, "archive")
    problems += _output_file(settings.event_log, "event_log")
    problems += _directory(settings.state_dir, "state_dir", must_write=True)
    problems += _directory(settings.quarantine_dir, "quarantine_dir", must_write=True)
    # Our paths can all be right while Apache's ModSecurity makes banning impossible.
    problems += [(finding.level, finding.text) for finding in serverconf.findings(
        apache, serverconf.read_jails(), settings.storage_dir)]
    problems += fleet_check.problems(settings)
    try:
        target = parse_target(settings.db, settings.db_option_file)
    except ValueError as exc:
        return problems + [("error", f"db: {exc}")]
    if settings.db_option_file and not os.access(settings.db_option_file, os.R_OK):
        problems.append(("error", f"db_option_file {settings.db_option_file} is not readable"))
    return problems + _database_problems(target)


def _database_problems(target: Target) -> list[tuple[str, str]]:
    """Read-only: a SQLite file that does not exist yet is not created here."""
    if target.kind == "none":
        return []
    if target.kind == "sqlite" and not os.path.lexists(target.path):
        return _output_file(target.path, "db") or [
            ("warning", f"{target.describe()} does not exist yet (ingest, watch or "
                        "'modsec-tools db init' create it)")]
    db = open_database(target, read_only=True)
    try:
        db.connect()
        if db.version() == 0:
            return [("warning", f"{target.describe()}: no schema yet; "
                                "run 'modsec-tools db init' (ingest also creates it)")]
    except DatabaseError as exc:
        return [("error", f"database: {exc}")]
    finally:
        db.close()
    return []
