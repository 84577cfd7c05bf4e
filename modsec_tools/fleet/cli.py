"""``modsec-tools fleet run|status|migrate|grants``."""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

FLEET_SETTINGS = ("fleet", "fleet_db", "fleet_db_option_file", "fleet_propagate_unban",
                  "fleet_max_prefix", "fleet_max_bantime", "fleet_fail2ban_socket",
                  "state_dir", "node", "trusted_proxies")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

HELP = """\
Share bans between servers through one MariaDB (or Galera) database.

run      the daemon (systemd: modsec-tools-fleet.service): publishes every ban this server's
         fail2ban makes in the jails modsec and modsec-recidive, and bans the other servers'
         bans in force here, in the jails modsec-fleet and modsec-fleet-recidive, until
         their origin's ban ends. Needs fleet = yes.
status   nodes seen, last heartbeat, bans published / applied / in force per node, apply
         lag, Galera replication state, and this server's daemon (read-only).
migrate  create or upgrade the shared tables (as a database user allowed to; once per
         fleet, before or during a rolling upgrade).
grants   print the GRANT statements for a node's database user.
"""

EPILOG = """\
examples:
  modsec-tools fleet migrate --fleet-db mysql://admin@db1/modsec --fleet-db-option-file /root/.my.cnf
  modsec-tools fleet grants web1 --host 10.0.0.11 --database modsec
  modsec-tools fleet status

exit status:
  0  done;  1  the database or fail2ban failed (reported on stderr);  2  usage or
  configuration error

see docs/fleet.md: set-up on real servers (users, grants, TLS, Galera), trust model, limits.
"""


def add_parser(commands: Any, parents: Sequence[argparse.ArgumentParser],
               settings_flags: Callable[[argparse.ArgumentParser, Sequence[str]], None]) -> None:
    fleet = commands.add_parser("fleet", help="share bans between servers (MariaDB/Galera)",
                                description=HELP, epilog=EPILOG, parents=list(parents),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    fleet.add_argument("action", choices=("run", "status", "migrate", "grants"))
    fleet.add_argument("grant_node", nargs="?", metavar="NODE", help="grants: the node")
    fleet.add_argument("--host", default="%", help="grants: the host part of the user "
                       "(default: %%)")
    fleet.add_argument("--database", default="", help="grants: the database (default: "
                       "fleet_db's)")
    fleet.add_argument("--json", action="store_true", help="status: as JSON")
    settings_flags(fleet, FLEET_SETTINGS)
    fleet.set_defaults(handler=cmd_fleet)


def cmd_fleet(args: argparse.Namespace, settings: Any) -> int:
    from .settings import FleetSettings
    from .target import TargetError, parse
    if args.action == "grants":
        return _grants(args, settings)
    if not settings.fleet_db:
        logging.error("fleet_db is not set (mysql://user@host:port/database)")
        return EXIT_USAGE
    try:
        target = parse(settings.fleet_db, settings.fleet_db_option_file)
    except TargetError as exc:
        logging.error("%s", exc)
        return EXIT_USAGE
    if args.action == "status":
        return _status(target, settings.state_dir, args.json)
    if args.action == "migrate":
        return _migrate(target)
    if not settings.fleet:
        logging.error("fleet is off: set fleet = yes in modsec-tools.conf")
        return EXIT_USAGE
    return _run(FleetSettings.of(settings), target, args.verbose)


def _run(fleet: Any, target: Any, verbosity: int) -> int:
    from ..daemon import process as daemon
    from .f2bsocket import Fail2BanError
    from .node import AlreadyRunning, run
    daemon.setup_logging("stderr", verbosity)
    try:
        return run(fleet, target, daemon.Signals())
    except (AlreadyRunning, Fail2BanError) as exc:
        logging.error("%s", exc)
        return EXIT_FAILED


def _status(target: Any, state_dir: str, as_json: bool) -> int:
    import pymysql
    from . import status
    from .target import connect
    shared, error = None, ""
    try:
        conn = connect(target)
        try:
            shared = status.read(conn)
        finally:
            conn.close()
    except (ConnectionError, pymysql.err.MySQLError) as exc:
        error = str(exc)
    own = status.local(state_dir)
    if as_json:
        print(json.dumps({"shared": shared, "this_server": own, "error": error}, indent=1))
    else:
        print(status.render(shared, own, error))
    return EXIT_OK if shared is not None else EXIT_FAILED


def _migrate(target: Any) -> int:
    import pymysql
    from .schema import CODE_SCHEMA, SchemaError, migrate
    from .target import connect
    try:
        conn = connect(target)
        try:
            before, after = migrate(conn, CODE_SCHEMA)
        finally:
            conn.close()
    except (ConnectionError, SchemaError, pymysql.err.MySQLError) as exc:
        logging.error("fleet migrate: %s", exc)
        return EXIT_FAILED
    print(f"fleet schema: {before} -> {after}" if after != before
          else f"fleet schema: {after} (up to date)")
    return EXIT_OK


def _grants(args: argparse.Namespace, settings: Any) -> int:
    from .schema import grants
    from .target import TargetError, check_url
    node = args.grant_node or settings.node
    database = args.database
    if not database and settings.fleet_db:
        try:
            database = _database_of(check_url(settings.fleet_db))
        except TargetError as exc:
            logging.error("%s", exc)
            return EXIT_USAGE
    try:
        statements = grants(node, args.host, database or "modsec")
    except ValueError as exc:
        logging.error("%s", exc)
        return EXIT_USAGE
    print(f"CREATE USER IF NOT EXISTS '{node}'@'{args.host}' IDENTIFIED BY '<password>'"
          f"{'' if args.host in ('localhost', '127.0.0.1', '::1') else ' REQUIRE SSL'};")
    for statement in statements:
        print(statement + ";")
    return EXIT_OK


def _database_of(url: str) -> str:
    import urllib.parse
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.lstrip("/"))
