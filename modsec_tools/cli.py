"""The ``modsec-tools`` command line."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
import time
from collections.abc import Sequence

from . import __version__, config
from .audit.entry import parse_entry
from .audit.errors import ParseError
from .eventline import format_event
from .jsonout import dumps
from .tree.sources import RawEntry, ReadFailure, iter_path
from .audit.verdict import VerdictPolicy

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
modsec-tools turns ModSecurity 2.x audit logs (Concurrent storage trees, Serial logs, native
or JSON format) into a one-line-per-event log for fail2ban, a consolidated archive and a
database, and watches the storage tree in real time.
"""

EPILOG = """\
settings:
  Every setting is read from /etc/modsec-tools/modsec-tools.conf, section [modsec-tools],
  then from modsec-tools.local beside it; command-line flags win. --config names another file.

exit status:
  0  everything was processed
  1  some input could not be processed (each is reported on stderr with its reason)
  2  usage or configuration error

see also: docs/event-log.md, docs/ingest.md, docs/fail2ban.md, fail2ban-client(1)
"""

PARSE_HELP = """\
Parse audit logs and print one record per entry, without changing anything.

PATH is an entry file, a Concurrent storage tree (with or without the <user> level), a
Serial log (native or JSON), or a Concurrent index log (entries are then read from
--storage-dir, default: the configured storage_dir if it exists, else the index log's
directory, and checked against the size and md5 the index recorded; entries no longer
there, as the watcher removes those it processed, are counted in one warning, not
errors). '-' reads a Serial log or entry from standard input.
"""

PARSE_EPILOG = """\
formats:
  json  one JSON object per line: unique_id, timestamp, client_ip, client_unbannable (why
        it must not be banned, or null), peer_ip, method, uri, protocol, host, user_agent,
        status, intercepted, phase, anomaly_score, rule_ids, messages, engine_mode, source,
        verdict, ... (bytes that are not UTF-8 appear as \\udcXX escapes and round-trip
        with surrogateescape)
  line  the event-log line fail2ban reads (docs/event-log.md)

exit status:
  0  every input parsed;  1  some input could not be parsed (each reported on stderr with
  the file name and the reason);  2  usage or configuration error

examples:
  modsec-tools parse /var/log/modsec_audit
  modsec-tools parse --format line --storage-dir /var/log/modsec_audit \\
      /var/log/apache2/modsec_audit.log
  zcat old-audit.log.gz | modsec-tools parse -
"""


def _settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    group = parser.add_argument_group("settings (override the configuration file)")
    group.add_argument("--config", metavar="FILE",
                       help=f"configuration file (default {config.DEFAULT_CONFIG})")
    by_name = {key.name: key for key in config.KEYS}
    for name in names:
        key = by_name[name]
        default = key.shown_default or key.default or "unset"
        group.add_argument("--" + name.replace("_", "-"), dest=name, metavar=key.metavar,
                           help=f"{key.help} (default: {default})")


def _settings(args: argparse.Namespace) -> config.Settings:
    overrides = {key.name: getattr(args, key.name, None) for key in config.KEYS}
    if args.command == "config" and args.action == "check":
        # every problem at once: the settings' own, then those of the paths and database
        settings, args.setting_problems = config.load_all(args.config, overrides)
        return settings
    return config.load(args.config, overrides)


def _verbosity() -> argparse.ArgumentParser:
    """-v after the command too ('config check -v'), counted with any before it."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="count", default=0, dest="verbose_after",
                        help="more log output (-vv for debug)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modsec-tools", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    verbosity = _verbosity()

    parse = commands.add_parser(
        "parse", help="print parsed entries (read-only)", description=PARSE_HELP,
        epilog=PARSE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[verbosity])
    parse.add_argument("paths", nargs="+", metavar="PATH")
    parse.add_argument("--format", choices=("json", "line"), default="json",
                       help="output format (default: json)")
    _settings_flags(parse, ("storage_dir", "trusted_proxies", "proxy_header", "node",
                            "detect_min_severity", "detect_min_score", "max_entry_size"))
    parse.set_defaults(handler=cmd_parse)

    ingest = commands.add_parser(
        "ingest", help="process every complete entry now, then exit (cron)",
        description=INGEST_HELP, epilog=INGEST_EPILOG, parents=[verbosity],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ingest.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                        help="progress bar on a terminal (default: auto)")
    _settings_flags(ingest, PIPELINE_SETTINGS)
    ingest.set_defaults(handler=cmd_ingest)

    watch = commands.add_parser(
        "watch", help="follow the storage tree in real time (the daemon)",
        description=WATCH_HELP, epilog=WATCH_EPILOG, parents=[verbosity],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    watch.add_argument("--foreground", action="store_true",
                       help="stay in the foreground and log to stderr (systemd runs it so)")
    watch.add_argument("--log-target", metavar="TARGET", default=None,
                       help="stderr, syslog or a file path (default: stderr in the "
                       "foreground, syslog otherwise)")
    watch.add_argument("--flush-ms", type=float, default=0.0, metavar="MS",
                       help="wait this long after an entry for others to join its batch "
                       "(default: 0, group commit: a batch starts at once and whatever "
                       "closes meanwhile forms the next one)")
    watch.add_argument("--rescan-seconds", type=float, default=10.0, metavar="SECONDS",
                       help="period of the safety rescan and directory cleanup (default: 10)")
    _settings_flags(watch, PIPELINE_SETTINGS + ("dir_mode", "dir_owner", "dir_group",
                                                "metrics_textfile", "metrics_listen"))
    watch.set_defaults(handler=cmd_watch)

    db = commands.add_parser("db", help="manage the database schema; replay refused rows",
                             description=DB_HELP, epilog=DB_EPILOG, parents=[verbosity],
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    db.add_argument("action", choices=("init", "migrate", "status", "replay-rejected"))
    _settings_flags(db, ("db", "db_option_file", "state_dir", "node"))
    db.set_defaults(handler=cmd_db)

    check = commands.add_parser(
        "config", help="check the configuration", parents=[verbosity],
        description="'config check' validates every setting, the directories and their "
        "permissions (including whether Apache's user can reach the storage tree), and "
        "connects to the database (and, with fleet = yes, to the fleet's as this node's "
        "user), and reports every problem at once (exit 2 when a "
        "setting cannot be used, 1 for any other error); 'config show' prints the "
        "settings as a configuration file that loads back to them (a database password "
        "shows as ***). Both create and change nothing (a database that does not exist "
        "yet is not created).")
    check.add_argument("action", choices=("check", "show"))
    _settings_flags(check, PIPELINE_SETTINGS)
    check.set_defaults(handler=cmd_config)

    from .fleet.cli import add_parser as add_fleet
    add_fleet(commands, [verbosity], _settings_flags)
    from .report.command import add_commands as add_report
    add_report(commands, [verbosity], _settings_flags)
    return parser


PIPELINE_SETTINGS = ("storage_dir", "index_log", "archive", "event_log", "db",
                     "db_option_file", "state_dir", "quarantine_dir", "node",
                     "trusted_proxies", "proxy_header", "detect_min_severity",
                     "detect_min_score", "settle_seconds", "quarantine_after", "max_entry_size",
                     "batch_size", "workers")

WATCH_HELP = """\
Watch the storage tree with inotify and process each entry as soon as ModSecurity closes
its file (never on create: the file is written in many small writes first). Entries are
group-committed: a batch starts as soon as an entry is waiting and holds everything closed
by then (up to --batch-size); what closes while it is being made durable forms the next
batch. So a flood costs few fsyncs, and a lone event reaches the event log (and fail2ban)
within a few milliseconds. --flush-ms adds a wait before each batch, for disks where an
fsync is dear. The backlog is processed first. Same sinks, same
exactly-once guarantees and same lock as 'ingest': run one or the other.

With --dir-mode/--dir-owner/--dir-group every new user/day/minute directory gets that mode
and owner as soon as it appears (Apache MPM ITK), without following symlinks.

A full or read-only file system does not end it: it logs the file and 'retrying in N s',
waits (1 s, doubling up to 60 s) and goes on once it can write; nothing is lost meanwhile.

signals: TERM/INT finish the current batch and exit; HUP reopens the archive and event log
(logrotate); USR1 logs statistics. The status file <state_dir>/status.json is refreshed
every 5 s (entries, queue depth, lag, errors, database state).
"""

WATCH_EPILOG = """\
without --foreground:
  the storage tree is checked first; then the daemon detaches and this command returns
  once it is watching ("watching DIR (pid N)", exit 0) or has failed (its error, exit 1;
  exit 2 for a setting or path that cannot work). Logs go to syslog unless --log-target
  says otherwise; without a syslog socket (/dev/log) it asks for --log-target.

examples:
  modsec-tools watch --foreground
  modsec-tools watch --foreground --dir-mode 0770 --dir-owner www-data --dir-group vhosts

If it fails with "inotify watch limit", raise fs.inotify.max_user_watches (sysctl).
"""

DB_HELP = """\
init / migrate: create or upgrade the schema; both are idempotent (they apply only what is
missing). status: the schema version (read-only: a database that does not exist is not
created).

replay-rejected: a row the database refused while it answered (a value it would not take,
a trigger, a schema it could not use for that row) is kept in <state_dir>/db-rejected with
the reason, and ingest exits 1. Once the cause is fixed, this offers every such row to the
database again: rows stored are removed from db-rejected, rows refused again stay there
with their new reason. Exactly once: a row already stored (a replay interrupted, then run
again) is not stored twice. It takes the same lock as ingest and watch: stop the watcher
first (systemctl stop modsec-tools), then start it again.
"""

DB_EPILOG = """\
exit status:
  0  done (replay-rejected: every row stored);  1  the database failed, or rows were
  refused again (each reported on stderr);  2  usage or configuration error
"""

INGEST_HELP = """\
Process every complete entry of the storage tree: append it to the archive, write its line
to the event log, store it in the database, then delete the file. Safe to run from cron
while 'watch' is not running (one instance at a time), and safe to kill at any moment: the
next run completes the interrupted batch without losing or duplicating anything.

An entry is complete when its index-log line was written (--index-log), or when it ends
with its Z boundary (JSON: parses whole) and has not changed for --settle-seconds.
Unreadable, truncated, oversized entries and anything that is not a regular entry file
(symlinks, FIFOs, hard links) are moved to --quarantine-dir with a .reason file; nothing is
deleted before it is archived (or quarantined).
"""

INGEST_EPILOG = """\
examples:
  modsec-tools ingest
  modsec-tools ingest --storage-dir /var/log/modsec_audit \\
      --index-log /var/log/apache2/modsec_audit.log --db mysql://modsec@db1/modsec \\
      --db-option-file /etc/modsec-tools/my.cnf

The summary line at the end reports entries, bytes, rate, quarantined and spooled entries.
"""


def cmd_parse(args: argparse.Namespace, settings: config.Settings) -> int:
    policy = VerdictPolicy(settings.detect_min_severity, settings.detect_min_score)
    failed = 0
    out = sys.stdout
    # an index log's entries: in the configured tree, where this server's ModSecurity writes
    # them, else (a copy) beside it
    storage_dir = settings.storage_dir \
        if args.storage_dir or os.path.isdir(settings.storage_dir) else None
    for path in args.paths:
        gone = 0
        for item in iter_path(path, storage_dir, settings.max_entry_size):
            if isinstance(item, ReadFailure) and item.gone:
                gone += 1       # processed and removed by the watcher: history, not an error
                continue
            if not isinstance(item, RawEntry):
                failed += 1
                logging.error("%s: %s", item.source, item.reason)
                continue
            if item.oversized:
                failed += 1
                logging.error("%s: entry larger than max_entry_size (%d bytes); not parsed",
                              item.source, settings.max_entry_size)
                continue
            try:
                event = parse_entry(item.data, item.source, settings.proxies,
                                    item.index)
            except ParseError as exc:
                failed += 1
                logging.error("%s: %s", item.source, exc)
                continue
            for problem in event.problems:
                logging.warning("%s: %s", item.source, problem)
            verdict = policy.verdict(event)
            if args.format == "json":
                out.write(dumps(event, verdict) + "\n")
            else:
                out.write(format_event(event, settings.node, verdict) + "\n")
        if gone:
            logging.warning("%d entries named in %s are no longer in %s (the watcher removes "
                            "entries once processed; the archive keeps them)", gone, path,
                            storage_dir or os.path.dirname(os.path.abspath(path)))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def cmd_ingest(args: argparse.Namespace, settings: config.Settings) -> int:
    from .pipeline.ingest import Pipeline
    from .pipeline.lock import AlreadyRunning, InstanceLock
    try:
        lock = InstanceLock(settings.state_dir).acquire()
    except AlreadyRunning as exc:
        logging.error("%s", exc)
        return EXIT_SOME_FAILED
    try:
        with Pipeline(settings) as pipeline:
            show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
            stats = pipeline.run_once(progress=_progress if show else None)
    finally:
        lock.release()
    logging.getLogger("modsec_tools").log(logging.WARNING if stats.errors else logging.INFO,
                                          "ingest: %s", stats.summary())
    if not args.verbose and sys.stderr.isatty():
        print(f"modsec-tools ingest: {stats.summary()}", file=sys.stderr)
    unusable = pipeline.unusable
    return EXIT_SOME_FAILED if stats.errors or stats.quarantined or unusable else EXIT_OK


def cmd_watch(args: argparse.Namespace, settings: config.Settings) -> int:
    from .configcheck import tree_problems
    from .daemon.process import Readiness, bound_malloc, detach, setup_logging
    from .tree.dirperms import DirPolicy
    # Checked here, where the admin sees the answer: a detached daemon's stderr is gone.
    errors = [text for level, text in tree_problems(settings) if level == "error"]
    try:
        DirPolicy.from_settings(settings.dir_mode, settings.dir_owner, settings.dir_group)
    except ValueError as exc:
        errors.append(str(exc))
    for text in errors:
        logging.error("%s", text)
    if errors:
        return EXIT_USAGE
    target = args.log_target or ("stderr" if args.foreground else "syslog")
    setup_logging(target, args.verbose)
    bound_malloc()
    readiness = Readiness() if args.foreground else detach()
    try:
        status = _watch_locked(args, settings, lambda: readiness.ready(
            f"watching {settings.storage_dir} (pid {os.getpid()}), logging to {target}"))
    except OSError as exc:
        logging.error("%s", os_error_line(exc))
        status = EXIT_SOME_FAILED
    except Exception:
        logging.exception("watch failed")
        status = EXIT_SOME_FAILED
    readiness.exit(status)
    return status


def _watch_locked(args: argparse.Namespace, settings: config.Settings, on_ready) -> int:
    from .daemon.process import Signals
    from .pipeline.lock import AlreadyRunning, InstanceLock
    from .daemon.watch import WatchLimit, WatchOptions
    try:
        lock = InstanceLock(settings.state_dir).acquire()
    except AlreadyRunning as exc:
        logging.error("%s", exc)
        return EXIT_SOME_FAILED
    signals = Signals()
    try:
        return _watch(settings, WatchOptions(flush_ms=args.flush_ms,
                                             rescan_seconds=args.rescan_seconds), signals,
                      on_ready)
    except (WatchLimit, ValueError) as exc:
        logging.error("%s", exc)
        return EXIT_SOME_FAILED
    finally:
        lock.release()


#: A file system that cannot take writes now (full, over quota, remounted read-only):
#: the daemon waits it out; any other OSError ends it.
WAIT_OUT = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EROFS))
RETRY_FIRST, RETRY_MAX = 1.0, 60.0


def _watch(settings: config.Settings, options, signals, on_ready) -> int:
    """Run the watcher until TERM. Once it has been ready, a file system that fills up or
    turns read-only is waited out, with a log line per attempt and a growing delay, rather
    than ending the daemon: systemd would give up after StartLimitBurst restarts, and
    without systemd nothing restarts it, so bans would stop for good although the admin
    frees space. Each attempt builds the pipeline anew: its start-up completes the batch
    the error interrupted from the journal, as after a crash, so nothing is lost or
    written twice meanwhile (the entries wait in the storage tree)."""
    from .daemon.process import sd_notify
    from .daemon.watch import Watcher
    delay, waiting_since = RETRY_FIRST, None
    started = False

    def ready() -> None:
        nonlocal started, waiting_since
        started = True
        on_ready()
        if waiting_since is not None:
            logging.warning("watching again after %.0f s of waiting",
                            time.monotonic() - waiting_since)
            waiting_since = None

    while not signals.stop:
        began = time.monotonic()
        try:
            watcher = Watcher(settings, options=options)
            try:
                watcher.run(signals, ready)
            finally:
                watcher.close()
            return EXIT_OK
        except OSError as exc:
            if not started or exc.errno not in WAIT_OUT:
                raise
            if time.monotonic() - began > RETRY_MAX:
                delay = RETRY_FIRST  # it ran well for a while: a new episode
            waiting_since = waiting_since or time.monotonic()
            logging.error("%s; retrying in %.0f s (entries wait in the storage tree)",
                          os_error_line(exc), delay)
            sd_notify(f"STATUS=waiting: {os_error_line(exc)}")
            _sleep(delay, signals)
            delay = min(delay * 2, RETRY_MAX)
    return EXIT_OK


def _sleep(seconds: float, signals) -> None:
    """Sleep, but wake up for TERM."""
    deadline = time.monotonic() + seconds
    while not signals.stop and time.monotonic() < deadline:
        time.sleep(min(0.2, deadline - time.monotonic()))


def failed_path(exc: OSError) -> str:
    """The file an OSError is about. An open names it (relative to a directory descriptor,
    the name alone); a write or fsync on a descriptor does not: then the innermost object
    on the traceback that has a ``path`` (an AppendFile, a RecordLog) names it."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else ""
    if os.path.isabs(name):
        return name
    owner_path = ""
    trace = exc.__traceback__
    while trace is not None:
        path = getattr(trace.tb_frame.f_locals.get("self"), "path", None)
        owner_path = path if isinstance(path, str) else owner_path
        trace = trace.tb_next
    if name and owner_path and os.path.isdir(owner_path):
        return os.path.join(owner_path, name)
    return owner_path or name or "?"


def os_error_line(exc: OSError) -> str:
    return f"{failed_path(exc)}: {exc.strerror or exc}"


def _progress(work: list) -> object:
    """Yield the work items while drawing a one-line progress bar on stderr."""
    total = len(work)
    if total < 200:
        yield from work
        return
    for done, item in enumerate(work, 1):
        if done % 100 == 0 or done == total:
            filled = int(30 * done / total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            sys.stderr.flush()
        yield item
    sys.stderr.write("\n")


def _database(settings: config.Settings, read_only: bool = False):
    from .db import open_database, parse_target
    target = parse_target(settings.db, settings.db_option_file)
    return None if target.kind == "none" else open_database(target, read_only=read_only)


def cmd_db(args: argparse.Namespace, settings: config.Settings) -> int:
    from .db import SCHEMA_VERSION, DatabaseError
    db = _database(settings, read_only=args.action == "status")
    if db is None:
        logging.error("no database configured (db = none)")
        return EXIT_USAGE
    try:
        if args.action == "replay-rejected":
            return _replay_rejected(db, settings)
        if args.action == "status":
            print(f"{db.target.describe()}: schema {db.version()} "
                  f"(this modsec-tools: {SCHEMA_VERSION})")
            return EXIT_OK
        applied = db.migrate()
        print(f"{db.target.describe()}: " + (f"applied schema {applied}" if applied
                                             else f"schema {db.version()} is current"))
        return EXIT_OK
    except DatabaseError as exc:
        logging.error("%s", exc)
        return EXIT_SOME_FAILED
    finally:
        db.close()


def _replay_rejected(db, settings: config.Settings) -> int:
    from .sinks.database import REJECTED, replay_rejected
    from .pipeline.lock import AlreadyRunning, InstanceLock
    path = os.path.join(settings.state_dir, REJECTED)
    if not os.path.exists(path):
        print(f"{path}: nothing to replay")
        return EXIT_OK
    try:
        lock = InstanceLock(settings.state_dir).acquire()
    except AlreadyRunning as exc:
        logging.error("%s; stop it first (systemctl stop modsec-tools), then start it "
                      "again", exc)
        return EXIT_SOME_FAILED
    try:
        done = replay_rejected(db, settings.node, settings.state_dir)
    finally:
        lock.release()
    print(f"{path}: {done.stored} stored, {done.present} already stored, "
          f"{done.refused} refused again" + (" (kept there with the reason)"
                                             if done.refused else ""))
    return EXIT_SOME_FAILED if done.refused else EXIT_OK


def cmd_config(args: argparse.Namespace, settings: config.Settings) -> int:
    if args.action == "show":
        _show(settings)
        return EXIT_OK
    from .configcheck import check
    unusable = args.setting_problems
    if "db" in unusable:  # (its default would be checked instead)
        settings = dataclasses.replace(settings, db="none")
    problems = [("error", text) for text in unusable.values()] + check(settings)
    for level, text in problems:
        print(f"{level}: {text}")
    errors = sum(1 for level, _ in problems if level == "error")
    print(f"configuration: {errors} error(s), {len(problems) - errors} warning(s)")
    return EXIT_USAGE if unusable else EXIT_SOME_FAILED if errors else EXIT_OK


def _show(settings: config.Settings) -> None:
    """The settings as a configuration file that loads back to them (a database password
    is shown as ***)."""
    from .db import redact
    print(f"# read from: {', '.join(settings.sources) or 'defaults only'}")
    print(f"[{config.SECTION}]")
    for name in config.setting_names():
        value = config.show(name, getattr(settings, name))
        print(f"{name} = {redact(value) if name == 'db' else value}")


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="modsec-tools: %(levelname)s: %(message)s",
                        stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose += args.verbose_after
    _setup_logging(args.verbose)
    try:
        settings = _settings(args)
    except config.ConfigError as exc:
        for problem in exc.problems:
            logging.error("%s", problem)
        return EXIT_USAGE
    try:
        return args.handler(args, settings)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error
        return EXIT_OK
    except OSError as exc:
        unfinished = args.command in ("ingest", "watch") and exc.errno in WAIT_OUT
        logging.error("%s%s", os_error_line(exc),
                      " (nothing is lost: entries not yet written stay in the storage tree, "
                      "and the next run completes the batch it was writing)" if unfinished
                      else "")
        return EXIT_SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
