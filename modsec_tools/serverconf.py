"""What this server's Apache, ModSecurity and fail2ban are set to: read from their files.

Read-only. ``config check`` asks it whether ModSecurity is set up so that our jails can ban
at all (a DetectionOnly engine intercepts nothing, so a jail in ``mode = blocked`` never
bans, and nothing else says why); install.sh asks it where ModSecurity writes its audit log
(``python -m modsec_tools.serverconf [--root DIR]``: one ``key<TAB>value`` line per fact).

Apache's configuration is read as Apache reads it: from the main file, following
``Include``/``IncludeOptional`` (globs sorted, directories whole), the last directive wins.
``<IfModule>`` and ``<VirtualHost>`` blocks are read as if they applied to the whole server.
fail2ban's jails are read in fail2ban's order: ``jail.conf``, ``jail.d/*.conf``,
``jail.local``, ``jail.d/*.local``.
"""
from __future__ import annotations

import argparse
import configparser
import glob
import os
import re
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Layout:
    """A distribution's Apache: where it lives and where our ModSecurity drop-in goes (a
    directory its ModSecurity configuration includes after its own settings)."""

    name: str
    server_root: str
    main: str
    user: str
    logdir: str
    envvars: str | None
    dropin: str
    ctl: str
    service: str


LAYOUTS = (
    Layout("apache2", "/etc/apache2", "/etc/apache2/apache2.conf", "www-data", "/var/log/apache2",
           "/etc/apache2/envvars", "/etc/modsecurity/zz-modsec-tools.conf", "apache2ctl",
           "apache2"),
    Layout("httpd", "/etc/httpd", "/etc/httpd/conf/httpd.conf", "apache", "/var/log/httpd",
           None, "/etc/httpd/modsecurity.d/zz-modsec-tools.conf", "apachectl", "httpd"),
)
# Debian ships only this; its engine setting is what a copy of it starts with.
RECOMMENDED = "/etc/modsecurity/modsecurity.conf-recommended"
CONF = "/etc/modsecurity/modsecurity.conf"
FAIL2BAN = "/etc/fail2ban"
BUNDLE_FILTER = "modsec"            # our filter's name, as jails name it
BANS_INTERCEPTED_ONLY = ("blocked", "normal")   # modes that count verdict=blocked only


@dataclass(frozen=True, slots=True)
class Setting:
    value: str
    where: str                      # "path:line" as on the target system


@dataclass(slots=True)
class Apache:
    layout: Layout | None
    loaded: bool = False            # LoadModule security2_module seen
    user: str = ""
    group: str = ""
    directives: dict[str, Setting] = field(default_factory=dict)   # lower-case name → last
    files: list[str] = field(default_factory=list)

    def get(self, name: str) -> Setting | None:
        return self.directives.get(name.lower())

    @property
    def engine(self) -> Setting:
        """SecRuleEngine: On, Off or DetectionOnly (ModSecurity's default is Off)."""
        found = self.get("SecRuleEngine")
        if found is None:
            return Setting("Off", "")
        value = {"on": "On", "off": "Off", "detectiononly": "DetectionOnly"}.get(
            found.value.lower(), found.value)
        return Setting(value, found.where)

    def path(self, name: str) -> Setting | None:
        """A path directive made absolute the way Apache does (from ServerRoot); a piped
        SecAuditLog ("|program") is no path."""
        found = self.get(name)
        if found is None or found.value.startswith("|") or self.layout is None:
            return None
        value = found.value.rstrip("/") or "/"
        if not value.startswith("/"):
            value = os.path.join(self.layout.server_root, value)
        return Setting(os.path.normpath(value), found.where)


# -- Apache --------------------------------------------------------------------------------------
_EXPORT = re.compile(r"^export (\w+)=(.*)$", re.M)
_VARIABLE = re.compile(r"\$\{(\w+)\}")
_MAX_DEPTH = 16


def find_layout(root: str = "/") -> Layout | None:
    return next((layout for layout in LAYOUTS if os.path.isdir(_at(root, layout.server_root))),
                None)


def read_apache(root: str = "/") -> Apache:
    """Apache's configuration under ``root`` (``/`` or a staged tree)."""
    layout = find_layout(root)
    apache = Apache(layout)
    if layout is None:
        return apache
    env = _envvars(root, layout.envvars)
    reader = _Reader(root, layout.server_root, env, apache)
    reader.read(layout.main, optional=True)
    user = apache.get("User")
    group = apache.get("Group")
    apache.user = user.value if user and not user.value.startswith("#") else layout.user
    apache.group = group.value if group and not group.value.startswith("#") else apache.user
    return apache


def _at(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def _envvars(root: str, path: str | None) -> dict[str, str]:
    """Debian's envvars: the APACHE_* variables its apache2.conf uses as ${...}."""
    if path is None:
        return {}
    try:
        with open(_at(root, path), encoding="utf-8", errors="replace") as stream:
            text = stream.read()
    except OSError:
        return {}
    # $SUFFIX is empty for the default instance (apache2, not apache2-NAME)
    return {name: value.replace("${SUFFIX}", "").replace("$SUFFIX", "").strip("\"'")
            for name, value in _EXPORT.findall(text)}


class _Reader:
    def __init__(self, root: str, server_root: str, env: dict[str, str], apache: Apache) -> None:
        self.root, self.server_root, self.env, self.apache = root, server_root, env, apache
        self.depth = 0

    def read(self, pattern: str, optional: bool) -> None:
        if self.depth > _MAX_DEPTH:
            return
        if not pattern.startswith("/"):
            pattern = os.path.join(self.server_root, pattern)
        for path in self._expand(pattern):
            self.depth += 1
            try:
                self._read_file(path)
            finally:
                self.depth -= 1

    def _expand(self, pattern: str) -> list[str]:
        """Target-system paths of the files a pattern names (a directory: all its files)."""
        found = sorted(glob.glob(_at(self.root, pattern))) if glob.has_magic(pattern) \
            else [_at(self.root, pattern)]
        files: list[str] = []
        for path in found:
            if os.path.isdir(path):
                for top, dirs, names in os.walk(path):
                    dirs.sort()
                    files += [os.path.join(top, name) for name in sorted(names)]
            elif os.path.isfile(path):
                files.append(path)
        prefix = len(self.root.rstrip("/")) if self.root not in ("", "/") else 0
        return [path[prefix:] for path in files]

    def _read_file(self, path: str) -> None:
        try:
            with open(_at(self.root, path), encoding="utf-8", errors="replace") as stream:
                lines = stream.read().splitlines()
        except OSError:
            return
        self.apache.files.append(path)
        for number, line in _logical_lines(lines):
            name, _, rest = line.partition(" ")
            self._directive(name.lower(), _first_argument(self._expand_vars(rest)),
                            f"{path}:{number}")

    def _directive(self, name: str, value: str, where: str) -> None:
        if name in ("include", "includeoptional"):
            self.read(value, optional=name == "includeoptional")
        elif name == "loadmodule" and value == "security2_module":
            self.apache.loaded = True
        elif name == "serverroot":
            self.server_root = value
        elif name.startswith("sec") or name in ("user", "group"):
            self.apache.directives[name] = Setting(value, where)

    def _expand_vars(self, text: str) -> str:
        return _VARIABLE.sub(lambda m: self.env.get(m.group(1), m.group(0)), text)


def _logical_lines(lines: list[str]) -> list[tuple[int, str]]:
    """(first line number, directive text): comments and blank lines dropped, lines ending
    in a backslash joined, whitespace normalised to one space after the name."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, line in enumerate(lines, 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text and not text.startswith(("#", "<")):
            name, *rest = text.split(None, 1)
            out.append((start, f"{name} {rest[0] if rest else ''}"))
    return out


def _first_argument(text: str) -> str:
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        return text[1:end] if end > 0 else text[1:]
    return text.split(None, 1)[0] if text else ""


# -- fail2ban ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Jail:
    """A jail using our filter, as fail2ban will run it."""

    name: str
    enabled: bool
    mode: str


def read_jails(root: str = "/", directory: str = FAIL2BAN) -> list[Jail]:
    """Every jail whose filter is ours, with its effective mode (``filter = modsec[mode=X]``,
    ``%(mode)s`` from the jail or [DEFAULT], else the filter's own default: blocked)."""
    base = _at(root, directory)
    files = [os.path.join(base, "jail.conf"), *sorted(glob.glob(f"{base}/jail.d/*.conf")),
             os.path.join(base, "jail.local"), *sorted(glob.glob(f"{base}/jail.d/*.local"))]
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read([f for f in files if os.path.isfile(f)], encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return []
    jails = []
    for name in parser.sections():
        section = parser[name]
        filter_name, _, options = section.get("filter", "").partition("[")
        filter_name = filter_name.strip().replace("%(__name__)s", name)
        if filter_name != BUNDLE_FILTER:
            continue
        mode = _option(options, "mode") or "%(mode)s"
        if mode == "%(mode)s":
            mode = section.get("mode", "blocked")
        try:
            enabled = section.getboolean("enabled", fallback=False)
        except ValueError:
            enabled = False
        jails.append(Jail(name, enabled, mode.strip().lower()))
    return jails


def _option(options: str, key: str) -> str | None:
    match = re.search(rf"(?:^|,)\s*{key}\s*=\s*(\"[^\"]*\"|'[^']*'|[^,\]]*)", options)
    return match.group(1).strip("\"' ") if match else None


# -- what it means for banning --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Finding:
    level: str                      # "error" or "warning"
    kind: str                       # "module", "engine", "audit_log" or "storage"
    text: str
    commands: tuple[str, ...] = ()  # shell commands that make the fix (one way of several)


def findings(apache: Apache, jails: list[Jail], storage_dir: str | None = None,
             root: str = "/") -> list[Finding]:
    """Whether ModSecurity runs so that our enabled jails can ban: errors when they cannot
    (their bans would never come), warnings when no jail of ours is enabled. With
    ``storage_dir``, also whether ModSecurity writes the tree modsec-tools reads."""
    if apache.layout is None:
        return []       # no Apache here: nothing to judge
    enabled = [jail for jail in jails if jail.enabled]
    level = "error" if enabled else "warning"
    never = f", so the jail {', '.join(j.name for j in enabled)} will never ban" if enabled else ""
    if not apache.loaded:
        return [Finding(level, "module", "Apache does not load mod_security2 (no LoadModule "
                        f"security2_module in {apache.layout.main} or what it includes){never}; "
                        "enable it (Debian: a2enmod security2) and restart Apache")]
    found = _engine(apache, enabled, level, never, root)
    if storage_dir is not None:
        found += _audit_log(apache, storage_dir, level, never)
    return found


def _engine(apache: Apache, enabled: list[Jail], level: str, never: str,
            root: str) -> list[Finding]:
    engine = apache.engine
    if engine.value == "Off":
        return [Finding(level, "engine", "ModSecurity inspects nothing: SecRuleEngine Off "
                        f"({_where(engine, root)}){never}; set SecRuleEngine On, then restart "
                        "Apache", _engine_on(apache, root))]
    strict = [jail for jail in enabled if jail.mode in BANS_INTERCEPTED_ONLY]
    if engine.value != "DetectionOnly" or not strict:
        return []
    return [Finding("error", "engine", "ModSecurity only detects (SecRuleEngine "
                    f"DetectionOnly, {engine.where}) and the jail "
                    f"{', '.join(j.name for j in strict)} bans only intercepted requests "
                    "(mode = blocked): nothing will ever be banned. Fix one: set SecRuleEngine "
                    f"On in {engine.where.rsplit(':', 1)[0]} and restart Apache; or set mode = "
                    f"detected under [{strict[0].name}] in {FAIL2BAN}/jail.d/modsec.local and "
                    "reload fail2ban", _engine_on(apache, root))]


def _audit_log(apache: Apache, storage_dir: str, level: str, never: str) -> list[Finding]:
    """ModSecurity writes the Concurrent tree modsec-tools reads."""
    settings = "install.sh --configure-modsecurity writes the settings modsec-tools needs"
    audit = apache.get("SecAuditEngine") or Setting("Off", "its default")
    if audit.value.lower() == "off":
        return [Finding(level, "audit_log", "ModSecurity writes no audit log: SecAuditEngine "
                        f"{audit.value} ({audit.where}){never}; {settings}")]
    log_type = apache.get("SecAuditLogType")
    if log_type is None or log_type.value.lower() != "concurrent":
        where = log_type.where if log_type else "its default"
        return [Finding(level, "audit_log", f"ModSecurity writes a Serial audit log ({where}) "
                        f"and modsec-tools reads the Concurrent storage tree {storage_dir}"
                        f"{never}; {settings} (SecAuditLogType Concurrent, "
                        f"SecAuditLogStorageDir {storage_dir}, SecAuditLog for the index)")]
    storage = apache.path("SecAuditLogStorageDir")
    if storage is not None and storage.value != os.path.normpath(storage_dir):
        return [Finding(level, "storage", "ModSecurity writes its storage tree to "
                        f"{storage.value} ({storage.where}) but storage_dir is {storage_dir}"
                        f"{never}; set storage_dir = {storage.value} in modsec-tools.local")]
    return []


def _where(setting: Setting, root: str) -> str:
    if setting.where:
        return setting.where
    if _only_recommended(root):
        return (f"ModSecurity's default: Debian ships only {RECOMMENDED}, which Apache does "
                "not read")
    return "ModSecurity's default: no SecRuleEngine in Apache's configuration"


def _engine_on(apache: Apache, root: str) -> tuple[str, ...]:
    """The command that switches the engine on where it is set; on a Debian that has only
    the recommended file, the copy Debian's README.Debian asks for, switched on."""
    found = apache.get("SecRuleEngine")
    if found is not None:
        path, line = found.where.rsplit(":", 1)
        return (f"sed -i '{line}s/{found.value}/On/' {path}",)
    if _only_recommended(root):
        return (f"sed 's/^SecRuleEngine .*/SecRuleEngine On/' {RECOMMENDED} > {CONF}",)
    return ()


def _only_recommended(root: str) -> bool:
    """Debian's state after apt install: the recommended file only, which Apache never reads."""
    return os.path.isfile(_at(root, RECOMMENDED)) and not os.path.exists(_at(root, CONF))


# -- for install.sh ------------------------------------------------------------------------------
def facts(root: str = "/", storage_dir: str | None = None) -> list[tuple[str, str]]:
    """install.sh's view, one (key, value) each; ``finding`` (level, kind and text, tab
    separated) repeats, each followed by its ``command`` lines."""
    apache = read_apache(root)
    layout = apache.layout
    if layout is None:
        return [("layout", "none")]
    storage, index, log_type = (apache.path("SecAuditLogStorageDir"),
                                apache.path("SecAuditLog"), apache.get("SecAuditLogType"))
    source = max((s for s in (storage, log_type) if s), key=_order(apache), default=None)
    out = [("layout", layout.name), ("server_root", layout.server_root),
           ("user", apache.user), ("group", apache.group), ("logdir", layout.logdir),
           ("loaded", str(int(apache.loaded))),
           ("log_type", log_type.value.lower() if log_type else ""),
           ("storage", storage.value if storage else ""), ("index", index.value if index else ""),
           ("source", source.where.rsplit(":", 1)[0] if source else ""),
           ("engine", apache.engine.value), ("engine_where", apache.engine.where),
           ("dropin", layout.dropin), ("ctl", layout.ctl), ("service", layout.service)]
    for finding in findings(apache, read_jails(root), storage_dir, root):
        out.append(("finding", f"{finding.level}\t{finding.kind}\t{finding.text}"))
        out += [("command", command) for command in finding.commands]
    return out


def _order(apache: Apache):
    """Sort key of a Setting: the position Apache read it at."""
    def key(setting: Setting) -> tuple[int, int]:
        path, line = setting.where.rsplit(":", 1)
        return apache.files.index(path) if path in apache.files else -1, int(line)
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modsec_tools.serverconf",
                                     description="Apache's ModSecurity settings for install.sh")
    parser.add_argument("--root", default="/", help="a staged tree instead of /")
    parser.add_argument("--storage-dir", help="also judge the audit log against this tree")
    args = parser.parse_args(argv)
    for key, value in facts(args.root, args.storage_dir):
        print(f"{key}\t{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
