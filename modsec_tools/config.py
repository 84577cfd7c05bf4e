"""Settings: one table of keys serves the INI file, the command-line flags and the docs.

Files are read like fail2ban's: ``modsec-tools.conf``, then ``modsec-tools.local`` beside it
overrides it (section ``[modsec-tools]``); command-line flags override both.
"""
from __future__ import annotations

import configparser
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .audit.clientip import DEFAULT_HEADER, Proxies, parse_header_name, parse_networks
from .audit.event import SEVERITY_RANK
from .eventline import NODE
from .fleet.settings import parse_bool, parse_duration
from .fleet.validate import parse_max_prefix

DEFAULT_CONFIG = "/etc/modsec-tools/modsec-tools.conf"
SECTION = "modsec-tools"


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64M``, ``1G`` → bytes."""
    text = text.strip().upper()
    factor = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if factor != 1 else text
    try:
        value = int(number) * factor
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 65536, 64K, 64M)") from None
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def parse_mode(text: str) -> int | None:
    if not text:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"not an octal mode: {text!r} (use e.g. 0770, or nothing)")
    return mode


def parse_node(text: str) -> str:
    if not NODE.fullmatch(text):
        raise ValueError(f"node {text!r} must be 1-64 of A-Z a-z 0-9 . _ -")
    return text


def parse_severity(text: str) -> str:
    if text.upper() not in SEVERITY_RANK:
        raise ValueError(f"unknown severity {text!r}; one of {', '.join(SEVERITY_RANK)}")
    return text.upper()


def parse_networks_text(text: str) -> tuple:
    return tuple(parse_networks(text.replace(" ", ",").split(",")))


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool],
             allowed: str) -> Callable[[str], Any]:
    """A converter whose every failure says what is allowed."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise ValueError(f"{text!r} is not {allowed}")
        return value
    return parse


parse_count = _checked(int, lambda value: value >= 1, "a whole number, 1 or more")
parse_score = _checked(int, lambda value: value >= 0, "a whole number, 0 or more")
# (nan fails the comparison too)
parse_seconds = _checked(float, lambda value: 0 <= value < math.inf,
                         "a number of seconds, 0 or more")
_parse_worker_count = _checked(int, lambda value: value >= 0,
                               "'auto' or a whole number, 0 or more")


def parse_workers(text: str) -> int:
    if text == "auto":
        return os.cpu_count() or 1 if (os.cpu_count() or 1) > 1 else 0
    return _parse_worker_count(text)


def parse_db(text: str) -> str:
    """Checked as the database module will read it; kept as written."""
    from .db import parse_target  # here: the examiner workers never need it
    parse_target(text)
    return text


def listen_address(text: str) -> tuple[str, int] | None:
    """``PORT``, ``:PORT``, ``ADDRESS:PORT`` or ``[IPV6]:PORT`` (no address: 127.0.0.1);
    None for ''."""
    text = text.strip()
    if not text:
        return None
    host, _, port = text.rpartition(":")
    number = int(port) if port.isdigit() else 0
    if not 0 < number < 65536:
        raise ValueError(f"{text!r} is not PORT, :PORT or ADDRESS:PORT")
    return host.strip("[]") or "127.0.0.1", number


def parse_listen(text: str) -> str:
    listen_address(text)
    return text


def parse_fleet_db(text: str) -> str:
    from .fleet.target import check_url  # here: only the fleet needs it
    return check_url(text)


def _default_node() -> str:
    name = socket.gethostname().split(".")[0]
    return name if NODE.fullmatch(name) else "localhost"


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    default: str
    help: str
    convert: Callable[[str], Any] = str
    metavar: str = "VALUE"
    shown_default: str = ""   # what --help says the default is, when not ``default``


KEYS: tuple[Key, ...] = (
    Key("storage_dir", "/var/log/modsec_audit",
        "SecAuditLogStorageDir: the Concurrent storage tree (Apache's user must be able to "
        "enter every directory above it: not under /var/log/apache2 or /var/log/httpd)",
        metavar="DIR"),
    Key("index_log", "",
        "SecAuditLog index file of Concurrent mode; when set, an entry is taken only once its "
        "index line proves it complete (size and md5 checked)", metavar="FILE"),
    Key("archive", "/var/log/modsec-tools/archive.log",
        "consolidated Serial-format log every processed entry is appended to", metavar="FILE"),
    Key("event_log", "/var/log/modsec-tools/events.log",
        "one-line-per-event log that fail2ban reads (docs/event-log.md)", metavar="FILE"),
    Key("json_log", "",
        "JSON-lines file of events (one object per line, for log shippers); unset: none",
        metavar="FILE"),
    Key("db", "sqlite:////var/lib/modsec-tools/events.db",
        "database: a path or sqlite:///rel, sqlite:////abs, mysql://user@host:port/db; "
        "'none' disables it", parse_db, "URL"),
    Key("db_option_file", "",
        "MySQL option file ([client] user/password/host) for the password, so it never "
        "appears on a command line", metavar="FILE"),
    Key("state_dir", "/var/lib/modsec-tools",
        "journal, spool and lock directory", metavar="DIR"),
    Key("quarantine_dir", "/var/lib/modsec-tools/quarantine",
        "where unreadable entries go, each in a directory of its own with its reason",
        metavar="DIR"),
    Key("node", "", "name of this server in the event log and database", parse_node,
        "NAME", "short host name"),
    Key("trusted_proxies", "",
        "comma-separated addresses/networks of your reverse proxies; only their "
        "proxy_header is believed, and they are never the bannable client",
        parse_networks_text, "LIST"),
    Key("proxy_header", DEFAULT_HEADER,
        "the one header your trusted proxies set to the client address (as mod_remoteip's "
        "RemoteIPHeader): X-Forwarded-For or e.g. X-Real-IP; no other header is read",
        parse_header_name, "NAME"),
    Key("detect_min_severity", "CRITICAL",
        "a non-intercepted rule match this severe or worse is verdict=detected",
        parse_severity, "SEVERITY"),
    Key("detect_min_score", "5",
        "a non-intercepted inbound anomaly score this high is verdict=detected", parse_score,
        "N"),
    Key("settle_seconds", "2",
        "without an index log, a file is taken once it ends with its Z boundary and has "
        "not changed for this long", parse_seconds, "SECONDS"),
    Key("quarantine_after", "3600",
        "an entry still incomplete after this long is quarantined as truncated",
        parse_seconds, "SECONDS"),
    Key("max_entry_size", "64M", "larger entries are quarantined, not parsed", parse_size,
        "SIZE"),
    Key("batch_size", "500", "entries made durable per batch (one fsync / commit each); a "
        "batch also closes at 16 MB of entries", parse_count, "N"),
    Key("workers", "auto", "processes that read and parse entries in parallel for large "
        "backlogs ('auto': one per CPU; 0: none)", parse_workers, "N"),
    Key("dir_mode", "", "watch: mode given to each new storage subdirectory (e.g. 0770)",
        parse_mode, "MODE"),
    Key("dir_owner", "", "watch: owner given to each new storage subdirectory", str, "USER"),
    Key("dir_group", "", "watch: group given to each new storage subdirectory", str, "GROUP"),
    Key("metrics_textfile", "", "watch: write Prometheus metrics to this node_exporter "
        "textfile (a *.prom file in a directory only root can write; docs/report.md)",
        metavar="FILE"),
    Key("metrics_listen", "", "watch: serve Prometheus metrics over HTTP at PORT, :PORT or "
        "ADDRESS:PORT (a port alone: 127.0.0.1 only)", parse_listen, "ADDRESS"),
    Key("fleet", "no", "share bans with the other servers through fleet_db ('modsec-tools "
        "fleet run', docs/fleet.md)", parse_bool, "yes|no"),
    Key("fleet_db", "", "the fleet's shared MariaDB/Galera database: mysql://NODE@host:port/db "
        "(Galera: host1,host2:port,host3) or mysql://NODE@localhost/db?unix_socket=PATH; "
        "the user is named after this node", parse_fleet_db, "URL"),
    Key("fleet_db_option_file", "", "MySQL option file with the fleet user's password and "
        "TLS settings (ssl-ca, ssl-cert, ssl-key; required for TCP to another host)",
        metavar="FILE"),
    Key("fleet_propagate_unban", "no", "an early unban of this server's ban ends it on the "
        "other servers too, and theirs are honoured here", parse_bool, "yes|no"),
    Key("fleet_max_prefix", "32,128", "the widest network a fleet ban may name here, as IPv4,"
        "IPv6 prefix lengths (32,128: single addresses)", parse_max_prefix, "V4,V6"),
    Key("fleet_max_bantime", "5w", "no fleet ban lasts longer here, permanent ones included",
        parse_duration, "DURATION"),
    Key("fleet_fail2ban_socket", "/var/run/fail2ban/fail2ban.sock",
        "fail2ban's socket, through which fleet bans are applied", metavar="PATH"),
)


@dataclass(frozen=True)
class Settings:
    storage_dir: str
    index_log: str
    archive: str
    event_log: str
    json_log: str
    db: str
    db_option_file: str
    state_dir: str
    quarantine_dir: str
    node: str
    trusted_proxies: tuple
    proxy_header: str
    detect_min_severity: str
    detect_min_score: int
    settle_seconds: float
    quarantine_after: float
    max_entry_size: int
    batch_size: int
    workers: int
    dir_mode: int | None
    dir_owner: str
    dir_group: str
    metrics_textfile: str
    metrics_listen: str
    fleet: bool
    fleet_db: str
    fleet_db_option_file: str
    fleet_propagate_unban: bool
    fleet_max_prefix: tuple
    fleet_max_bantime: int
    fleet_fail2ban_socket: str
    sources: tuple[str, ...] = ()   # the files the settings came from

    @property
    def proxies(self) -> Proxies:
        return Proxies(tuple(self.trusted_proxies), self.proxy_header)


class ConfigError(ValueError):
    """Settings that cannot be used: ``problems`` holds one line per problem, each naming
    the key, where its value came from, and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def read_files(path: str | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """Raw values from ``path`` (or the default) and its ``.local``; missing files are fine
    for the default location, an explicitly named missing file is an error."""
    main = path or DEFAULT_CONFIG
    if path and not os.path.exists(path):
        raise ConfigError([f"{path}: no such configuration file"])
    local = os.path.splitext(main)[0] + ".local"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        read = tuple(parser.read([main, local], encoding="utf-8"))
    except configparser.Error as exc:
        raise ConfigError([f"configuration syntax: {' '.join(str(exc).split())}"]) from None
    values = dict(parser[SECTION]) if parser.has_section(SECTION) else {}
    return values, read


def build(values: dict[str, str], overrides: dict[str, str | None],
          sources: tuple[str, ...] = ()) -> Settings:
    """Convert and check every key: file values, then command-line overrides. ConfigError
    names every problem at once."""
    settings, problems = build_all(values, overrides, sources)
    if problems:
        raise ConfigError(list(problems.values()))
    return settings


def build_all(values: dict[str, str], overrides: dict[str, str | None],
              sources: tuple[str, ...] = ()) -> tuple[Settings, dict[str, str]]:
    """Like ``build``, but a key that cannot be used keeps its default: returned with the
    problems, by key, so that ``config check`` can go on and report the rest too."""
    where = "/".join(sources) or "default"
    problems = {name: f"{where}: unknown key {name!r} in [{SECTION}] (see "
                      "'modsec-tools config show' for the keys)"
                for name in values if name not in {key.name for key in KEYS}}
    converted: dict[str, Any] = {}
    for key in KEYS:
        text = overrides.get(key.name)
        origin = "command line"
        if text is None:
            text = values.get(key.name, key.default)
            origin = where
        try:
            converted[key.name] = _convert(key, text)
        except ValueError as exc:
            problems[key.name] = f"{key.name} ({origin}): {exc}"
            converted[key.name] = _convert(key, key.default)
    return Settings(**converted, sources=sources), problems


def _convert(key: Key, text: str) -> Any:
    if key.name == "node" and not text:
        text = _default_node()
    return key.convert(text)


def load(path: str | None = None, overrides: dict[str, str | None] | None = None) -> Settings:
    values, sources = read_files(path)
    return build(values, overrides or {}, sources)


def load_all(path: str | None = None, overrides: dict[str, str | None] | None = None
             ) -> tuple[Settings, dict[str, str]]:
    values, sources = read_files(path)
    return build_all(values, overrides or {}, sources)


def show(name: str, value: Any) -> str:
    """A setting's value as the configuration file takes it back."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "dir_mode":
        return f"0{value:o}"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def setting_names() -> list[str]:
    return [f.name for f in fields(Settings) if f.name != "sources"]
