"""The ``report`` and ``show`` subcommands: their arguments, help and handlers (the command
line registers them with ``add_commands``)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..config import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FORMATS = ("text", "json", "csv", "html")

REPORT_HELP = """\
Who attacks, with what, and what the bans did, from the database (SQLite or MariaDB;
read-only): totals by verdict; top client addresses (requests, blocked, detected, rules
hit, first and last seen, and whether fail2ban has them banned now); top rules (id,
message, severity, matches, addresses); top targets (virtual host, path); response
status codes; a timeline of blocked, detected and passed events per minute, hour or day
(chosen from the time span); and the nodes of a fleet. Times are UTC.
"""

REPORT_EPILOG = """\
filters (all optional, combined with AND):
  --since/--until  a time: 1h, 30m, 7d, 2w (back from now), 2026-11-28, '2026-11-28 15:30'
                   (UTC) or 2026-11-28T15:30:00+01:00; --until is exclusive
  --client         an address or a network (192.0.2.7, 2001:db8::/32, 192.0.2.0/24)

formats:
  text  tables for a terminal, --width columns (default 80)
  json  one document for jq; its keys are listed in docs/report.md and stay stable
  csv   one block per section (--section keeps one: a plain table for a spreadsheet)
  html  one self-contained page (inline SVG charts, no script, nothing fetched): mail it,
        print it or put it behind Apache

'banned now' asks fail2ban-client (as root) for the --jails; without an answer it shows ?.

examples:
  modsec-tools report --since 24h
  modsec-tools report --since 7d --format html > /var/www/reports/week.html
  modsec-tools report --client 192.0.2.0/24 --verdict blocked --format json | jq .rules
  modsec-tools report --format csv --section clients --top 100 > clients.csv
"""

SHOW_HELP = """\
Show one event by its unique id: the row the database holds, its rule messages in order,
and the entry as it was archived, byte for byte (found by its id in the archive and its
rotations; a forged entry inside another one's request body is never taken for it). To a
terminal, control characters of the entry are shown as \\xNN; redirected, the entry's
bytes are written unchanged. --entry-only writes the archived bytes alone.
"""

SHOW_EPILOG = """\
exit status:
  0  found (in the database, the archive or both);  1  not found, or the database
  failed;  2  usage or configuration error

examples:
  modsec-tools show aWrYsggx7z821rWArgDktAAAABQ
  modsec-tools show aWrYsggx7z821rWArgDktAAAABQ --entry-only > entry.txt
"""


def add_commands(commands, parents: list, settings_flags: Callable) -> None:
    report = commands.add_parser(
        "report", help="tables, JSON, CSV or an HTML page of the stored events (read-only)",
        description=REPORT_HELP, epilog=REPORT_EPILOG, parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("--format", choices=FORMATS, default="text",
                        help="output format (default: text)")
    report.add_argument("--since", metavar="TIME", help="events at or after TIME")
    report.add_argument("--until", metavar="TIME", help="events before TIME")
    report.add_argument("--vhost", metavar="HOST",
                        help="only this Host header (as sent, port included)")
    report.add_argument("--client", metavar="ADDRESS", help="only this address or network")
    report.add_argument("--rule", metavar="ID", help="only events that matched this rule id")
    report.add_argument("--node", metavar="NAME", help="only events of this node")
    report.add_argument("--verdict", choices=("blocked", "detected", "passed"))
    report.add_argument("--top", type=_positive, default=10, metavar="N",
                        help="rows of each top list (default: 10)")
    report.add_argument("--width", type=_positive, default=80, metavar="COLUMNS",
                        help="text: at most this many columns (default: 80)")
    report.add_argument("--section", action="append", metavar="NAME",
                        choices=("totals", "clients", "rules", "targets", "statuses",
                                 "timeline", "nodes"),
                        help="csv: only this section (repeatable)")
    report.add_argument("--jails", default="modsec,modsec-recidive", metavar="LIST",
                        help="fail2ban jails asked for current bans ('' asks none; "
                        "default: modsec,modsec-recidive)")
    report.add_argument("--fail2ban-socket", default="", metavar="PATH",
                        help="fail2ban's socket (default: fail2ban-client's own)")
    settings_flags(report, ("db", "db_option_file"))
    report.set_defaults(handler=cmd_report)

    show = commands.add_parser(
        "show", help="one event: stored row, rule messages and archived entry (read-only)",
        description=SHOW_HELP, epilog=SHOW_EPILOG, parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("unique_id", metavar="UNIQUE_ID")
    show.add_argument("--node", metavar="NAME", help="the event of this node only")
    show.add_argument("--format", choices=("text", "json"), default="text",
                      help="output format (default: text; json carries the entry in base64)")
    show.add_argument("--entry-only", action="store_true",
                      help="write only the archived entry's bytes")
    show.add_argument("--no-database", action="store_true",
                      help="look in the archive only")
    settings_flags(show, ("db", "db_option_file", "archive"))
    show.set_defaults(handler=cmd_show)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _opener(settings: Settings):
    """A function giving a new read-only connection to the configured database, or None
    when there is none (db = none)."""
    from ..db import open_database, parse_target
    target = parse_target(settings.db, settings.db_option_file)
    if target.kind == "none":
        return None
    return lambda: open_database(target, read_only=True)


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from ..db import DatabaseError
    from . import ReportError, build_report, parse_filters
    opener = _opener(settings)
    if opener is None:
        logging.error("no database configured (db = none): the report reads it")
        return EXIT_USAGE
    try:
        filters = parse_filters(args.since, args.until, args.vhost, args.client, args.rule,
                                args.node, args.verdict)
        jails = [j.strip() for j in args.jails.split(",") if j.strip()]
        report = build_report(opener, filters, args.top, jails, args.fail2ban_socket)
    except ReportError as exc:
        logging.error("%s", exc)
        return EXIT_USAGE
    except DatabaseError as exc:
        logging.error("%s", exc)
        return EXIT_FAILED
    sys.stdout.write(_render(report, args))
    return EXIT_OK


def _render(report, args: argparse.Namespace) -> str:
    if args.format == "json":
        from .jsonfmt import render_json
        return render_json(report)
    if args.format == "csv":
        from .csvfmt import SECTIONS, render_csv
        return render_csv(report, args.section or SECTIONS)
    if args.format == "html":
        from .html import render_html
        return render_html(report)
    from .text import render_text
    return render_text(report, args.width)


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from ..db import DatabaseError
    from .archive import archive_files, find_entries
    from .show import render_json, render_text, stored_events
    events = []
    opener = None if args.no_database else _opener(settings)
    if opener is not None:
        db = opener()
        try:
            db.connect()
            events = stored_events(db, args.unique_id, args.node)
        except DatabaseError as exc:
            logging.error("%s", exc)
            return EXIT_FAILED
        finally:
            db.close()
    archived = find_entries(archive_files(settings.archive), args.unique_id)
    if not events and not archived:
        logging.error("%s: no such event in the database%s or the archive (%s)",
                      args.unique_id, "" if opener else " (not asked)", settings.archive)
        return EXIT_FAILED
    if args.entry_only:
        if not archived:
            logging.error("%s: not in the archive (%s)", args.unique_id, settings.archive)
            return EXIT_FAILED
        _write(b"".join(entry.data for entry in archived))
    elif args.format == "json":
        _write(render_json(events, archived).encode())
    else:
        _write(render_text(events, archived, terminal=sys.stdout.isatty()))
    if not archived:
        logging.warning("%s: not found in the archive %s or its rotations",
                        args.unique_id, settings.archive)
    return EXIT_OK


def _write(data: bytes) -> None:
    sys.stdout.flush()
    out = sys.stdout.buffer
    out.write(data)
    out.flush()
