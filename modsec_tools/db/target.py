"""Where the database is: a ``--db`` URL (and option file) made into connection parameters."""
from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Target:
    kind: str                  # "sqlite", "mysql" or "none"
    path: str = ""             # sqlite
    params: tuple = ()         # mysql connect() keyword pairs

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite {self.path}"
        if self.kind == "mysql":
            shown = {k: v for k, v in self.params if k != "password"}
            return f"mysql {shown.get('user', '')}@{shown.get('host', shown.get('unix_socket', ''))}" \
                   f"/{shown.get('database', '')}"
        return "no database"


def redact(url: str) -> str:
    """The URL without its password (for anything printed or logged)."""
    parts = urllib.parse.urlsplit(url) if "://" in url else None
    if parts is None or not parts.password:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def parse_target(url: str, option_file: str = "") -> Target:
    """``none``, a path, ``sqlite:///rel``, ``sqlite:////abs``, or
    ``mysql://user[:password]@host[:port]/db[?unix_socket=/path]``."""
    if url in ("", "none"):
        return Target("none")
    if "://" not in url:
        return Target("sqlite", url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"sqlite URL needs a path: {url!r}")
        return Target("sqlite", path)
    if parts.scheme in ("mysql", "mariadb", "mysql+pymysql"):
        params: dict[str, Any] = {"database": parts.path.lstrip("/") or None}
        if parts.hostname:
            params["host"] = parts.hostname
        if parts.port:
            params["port"] = parts.port
        if parts.username:
            params["user"] = urllib.parse.unquote(parts.username)
        if parts.password:
            params["password"] = urllib.parse.unquote(parts.password)
        query = dict(urllib.parse.parse_qsl(parts.query))
        if "unix_socket" in query:
            params["unix_socket"] = query["unix_socket"]
        if option_file:
            params["read_default_file"] = option_file
        if not params["database"]:
            raise ValueError(f"mysql URL needs a database name: {url!r}")
        if "unix_socket" in params and not _tls_configured(option_file):
            # PyMySQL >= 1.2 tries TLS whenever the server offers it, and builds a context
            # from the system's CA store at every connect (~0.1 s of CPU); over a Unix
            # socket it would protect nothing. (Not so for a loopback address: it may be a
            # forwarder to another host.)
            params["ssl_disabled"] = True
        return Target("mysql", params=tuple(sorted(params.items())))
    raise ValueError(f"unknown database URL scheme {parts.scheme!r} (use sqlite:// or mysql://)")


def _tls_configured(option_file: str) -> bool:
    """Whether the option file's [client] section sets any ssl-* option (then TLS is the
    administrator's choice, even over a Unix socket)."""
    if not option_file:
        return False
    import configparser  # here: the examiner workers import this module, never need it
    parser = configparser.RawConfigParser(allow_no_value=True, strict=False)
    try:
        parser.read(os.path.expanduser(option_file), encoding="utf-8")  # as PyMySQL does
    except (configparser.Error, UnicodeDecodeError):
        return True  # PyMySQL will say what is wrong with it; assume nothing
    return parser.has_section("client") and any(
        key.replace("_", "-").startswith("ssl") for key in parser.options("client"))
