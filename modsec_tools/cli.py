"""The ``modsec-tools`` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__, config
from .entry import parse_entry
from .errors import ParseError
from .eventline import format_event
from .jsonout import dumps
from .sources import RawEntry, iter_path
from .verdict import VerdictPolicy

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
--storage-dir, default: the index log's directory, and checked against the size and md5 the
index recorded). '-' reads a Serial log or entry from standard input.
"""

PARSE_EPILOG = """\
formats:
  json  one JSON object per line: unique_id, timestamp, client_ip, peer_ip, method, uri,
        protocol, host, user_agent, status, intercepted, phase, anomaly_score, rule_ids,
        messages, engine_mode, source, verdict, ... (bytes that are not UTF-8 appear as
        \\udcXX escapes and round-trip with surrogateescape)
  line  the event-log line fail2ban reads (docs/event-log.md)

examples:
  modsec-tools parse /var/log/apache2/modsec_audit
  modsec-tools parse --format line --storage-dir /var/log/apache2/modsec_audit \\
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
        default = key.default or "unset"
        group.add_argument("--" + name.replace("_", "-"), dest=name, metavar=key.metavar,
                           help=f"{key.help} (default: {default})")


def _settings(args: argparse.Namespace) -> config.Settings:
    overrides = {key.name: getattr(args, key.name, None) for key in config.KEYS}
    return config.load(args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modsec-tools", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    parse = commands.add_parser(
        "parse", help="print parsed entries (read-only)", description=PARSE_HELP,
        epilog=PARSE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parse.add_argument("paths", nargs="+", metavar="PATH")
    parse.add_argument("--format", choices=("json", "line"), default="json",
                       help="output format (default: json)")
    _settings_flags(parse, ("storage_dir", "trusted_proxies", "node", "detect_min_severity",
                            "detect_min_score", "max_entry_size"))
    parse.set_defaults(handler=cmd_parse)

    for register in _EXTRA_COMMANDS:
        register(commands, _settings_flags)
    return parser


#: Later commands (ingest, watch, db, config) register themselves here.
_EXTRA_COMMANDS: list = []


def cmd_parse(args: argparse.Namespace, settings: config.Settings) -> int:
    policy = VerdictPolicy(settings.detect_min_severity, settings.detect_min_score)
    failed = 0
    out = sys.stdout
    storage_dir = args.storage_dir  # only an explicit flag: the default is for ingest
    for path in args.paths:
        for item in iter_path(path, storage_dir, settings.max_entry_size):
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
                event = parse_entry(item.data, item.source, settings.trusted_proxies,
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
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(level=level, format="modsec-tools: %(levelname)s: %(message)s",
                        stream=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = _settings(args)
    except config.ConfigError as exc:
        logging.error("%s", exc)
        return EXIT_USAGE
    try:
        return args.handler(args, settings)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
