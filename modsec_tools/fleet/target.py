"""Where the fleet database is and how to reach it: ``fleet_db`` plus its option file.

``mysql://user@host:port/database`` (TCP), ``mysql://user@db1,db2:3307,db3/database`` (Galera:
the first node that answers, in turn when one is lost) or ``mysql://user@localhost/database?
unix_socket=/run/mysqld/mysqld.sock``. The password belongs in the option file (``[client] password``),
never in the URL, where ``ps`` and the journal would show it; the option file also holds the
TLS settings (``ssl-ca``, ``ssl-cert``, ``ssl-key``), read here into an ``ssl.SSLContext`` so
that what is checked does not depend on the PyMySQL version.

TCP to another host without TLS is refused: the rows carry bans that reach every server's
firewall. Loopback and the unix socket may go without.
"""
from __future__ import annotations

import configparser
import ipaddress
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

CONNECT_TIMEOUT = 5
# A query that outlives this is a database that stopped answering: the daemon reconnects.
READ_TIMEOUT = 30


class TargetError(ValueError):
    """A ``fleet_db`` / option file that cannot be used; says why."""


@dataclass(frozen=True)
class Target:
    url: str = field(repr=False)
    option_file: str
    hosts: tuple[tuple[str, int], ...]
    user: str
    database: str
    unix_socket: str
    password: str = field(default="", repr=False)
    tls: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """The server as log lines name it (no password)."""
        place = self.unix_socket or ",".join(f"{host}:{port}" for host, port in self.hosts)
        return f"{self.user or '?'}@{place}/{self.database}"

    def places(self) -> list[tuple[str, int]]:
        """Where to try, in order (one place for a unix socket)."""
        return [("localhost", 0)] if self.unix_socket else list(self.hosts)

    def connect_args(self, host: str, port: int) -> dict[str, Any]:
        args: dict[str, Any] = dict(database=self.database, charset="utf8mb4", autocommit=True,
                                    connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                                    write_timeout=READ_TIMEOUT)
        if self.option_file:
            args["read_default_file"] = self.option_file
        if self.user:
            args["user"] = self.user
        if self.password:
            args["password"] = self.password
        if self.unix_socket:
            args["unix_socket"] = self.unix_socket
        else:
            args.update(host=host, port=port)
            if self.tls:
                args["ssl"] = _context(self.tls)
        return args


def connect(target: Target) -> Any:
    """A PyMySQL connection to the first place that answers; ConnectionError names each
    place's refusal."""
    import pymysql
    errors = []
    for host, port in target.places():
        try:
            return pymysql.connect(**target.connect_args(host, port))
        except pymysql.err.MySQLError as exc:
            errors.append(f"{target.unix_socket or f'{host}:{port}'}: {exc}")
    raise ConnectionError("; ".join(errors))


def parse(url: str, option_file: str = "") -> Target:
    """Read and check ``fleet_db`` with its option file; TargetError says what is wrong."""
    options = _option_file(option_file)
    target = _split(url, options, option_file)
    if not target.unix_socket and not target.tls and not all(_loopback(host) for host, _
                                                               in target.hosts):
        raise TargetError(f"fleet_db {target.where}: TCP to another host needs TLS; set "
                          f"ssl-ca (and ssl-cert/ssl-key) in the option file")
    return target


def check_url(url: str) -> str:
    """The ``fleet_db`` setting: empty, or a URL of the right shape (kept as written)."""
    if url:
        _split(url, {})
    return url


def _split(url: str, options: dict[str, str], option_file: str = "") -> Target:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise TargetError(f"fleet_db {_redacted(url)!r}: use mysql://user@host:port/database")
    database = parts.path.lstrip("/")
    if not database or "/" in database:
        raise TargetError(f"fleet_db {_redacted(url)!r} names no database")
    query = urllib.parse.parse_qs(parts.query)
    unknown = set(query) - {"unix_socket"}
    if unknown:
        raise TargetError(f"fleet_db: unknown parameter(s) {', '.join(sorted(unknown))} "
                          "(TLS settings go in the option file: ssl-ca, ssl-cert, ssl-key)")
    user, _, places = parts.netloc.rpartition("@")
    user, _, password = user.partition(":")
    return Target(url=url, option_file=option_file,
                  hosts=_hosts(places, int(options.get("port") or 3306)),
                  user=urllib.parse.unquote(user), password=urllib.parse.unquote(password),
                  database=urllib.parse.unquote(database),
                  unix_socket=query.get("unix_socket", [""])[0] or options.get("socket", ""),
                  tls={key: options[key] for key in ("ssl-ca", "ssl-cert", "ssl-key")
                       if options.get(key)})


_PLACE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+))"
                    r"(?::(?P<port>\d{1,5}))?")


def _hosts(text: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = []
    for place in (text or "localhost").split(","):
        match = _PLACE.fullmatch(place.strip())
        if match is None or int(match["port"] or 1) > 65535:
            raise TargetError(f"fleet_db: {place!r} is not host, host:port or [v6]:port")
        hosts.append((match["v6"] or match["host"], int(match["port"] or default_port)))
    return tuple(hosts)


def redacted(url: str) -> str:
    return _redacted(url)


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    credentials, at, places = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    netloc = f"{credentials.split(':', 1)[0]}:***@{places}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _option_file(path: str) -> dict[str, str]:
    """The ``[client]`` section (and ``[client-mariadb]``) of a MySQL option file."""
    if not path:
        return {}
    parser = configparser.ConfigParser(allow_no_value=True, interpolation=None,
                                       strict=False)
    try:
        with open(path, encoding="utf-8") as stream:
            parser.read_file(stream)
    except OSError as exc:
        raise TargetError(f"fleet_db_option_file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise TargetError(f"fleet_db_option_file {path}: {' '.join(str(exc).split())}") from None
    values: dict[str, str] = {}
    for section in ("client", "client-mariadb"):
        if parser.has_section(section):
            values.update({key.replace("_", "-"): (value or "").strip().strip("'\"")
                           for key, value in parser.items(section)})
    return values


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _context(tls: dict[str, str]) -> ssl.SSLContext:
    """Verify the server's certificate against ``ssl-ca`` and its name (or address) against
    the host connected to."""
    context = ssl.create_default_context(cafile=tls.get("ssl-ca"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.get("ssl-cert"):
        context.load_cert_chain(tls["ssl-cert"], tls.get("ssl-key"))
    return context
