"""A private Apache 2.4 + mod_security2 2.9 + OWASP CRS 3.3 (Debian packages) for tests.

Usage::

    with ApacheModSec(tmp_path) as web:                     # loopback, a free port
        assert web.request("/?id=1' or '1'='1") == 403      # CRS blocks the SQL injection
        line, = web.wait_index(1)                           # the index line (entry complete)
        entry, = web.audit_files()                          # storage/<user>/YYYYMMDD/YYYYMMDD-HHMM/...

    with NetNS() as ns, ApacheModSec(tmp_path, netns=ns, listen=[("127.0.0.1", 80)]) as web:
        web.request("/", source_ip="127.0.0.2")             # sockets made inside the namespace

Apache runs in the foreground (``-DFOREGROUND``) from a generated, self-contained httpd.conf
(mpm_event; ServerRoot, PidFile, DefaultRuntimeDir, logs all in the work dir; nothing from
/etc/apache2).  ModSecurity: ``SecRuleEngine <engine>``, ``SecAuditEngine <audit_engine>``,
``SecAuditLogRelevantStatus "^(?:5|4(?!04))"``, parts ABIJDEFHZ, ``SecAuditLogType <log_type>``,
``SecAuditLogFormat <log_format>``, dir mode 0777 / file mode 0600, then CRS (crs-setup.conf
from /etc/modsecurity/crs, /usr/share/modsecurity-crs/rules/*.conf) at ``paranoia_level``.
``extra_conf`` is appended at the end of httpd.conf (LoadModule lines work there too).

``index_log`` is the ``SecAuditLog`` file: the index for Concurrent, the whole log for Serial.

As root, the workers run as ``www-data`` (created when missing); they must reach the document
root, the storage dir and ModSecurity's tmp/data dirs.  pytest's ``tmp_path`` is mode 0700, so
when ``tmpdir`` is not traversable by that user the work dir goes to a fresh ``mt-apache-*`` dir
in the temp dir instead (deleted on exit); read paths from the attributes, not from ``tmpdir``.
A missing apache2 / mod_security2 / CRS raises :class:`Unavailable`.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import string
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ._util import (ServerProcess, Unavailable, die_with_parent, free_port, read_from, size,
                    stop_process, tail, traversable, wait_until)

if TYPE_CHECKING:
    from .netns import NetNS

APACHE2 = "/usr/sbin/apache2"
MODULES = Path("/usr/lib/apache2/modules")
CRS_RULES = Path("/usr/share/modsecurity-crs/rules")
CRS_ETC = Path("/etc/modsecurity/crs")
UNICODE_MAP = Path("/etc/modsecurity/unicode.mapping")
RUN_USER = "www-data"
ATTACK = "/?id=1' or '1'='1"         # CRS 942100 (libinjection) & co: 403 at paranoia level 1


class ApacheModSec(ServerProcess):
    """One private Apache with ModSecurity; a context manager (start on enter; on exit a fast
    SIGTERM stop, so call ``stop()`` first when in-flight requests must reach the audit log)."""

    def __init__(self, tmpdir: str | os.PathLike[str], netns: "NetNS | None" = None, *,
                 engine: str = "On", audit_engine: str = "RelevantOnly",
                 log_type: str = "Concurrent", log_format: str = "Native",
                 listen: Sequence[tuple[str, int]] | None = None,
                 storage_dir: str | os.PathLike[str] | None = None,
                 index_log: str | os.PathLike[str] | None = None,
                 extra_conf: str = "", paranoia_level: int = 1, crs: bool = True,
                 parts: str = "ABIJDEFHZ", relevant_status: str = "^(?:5|4(?!04))",
                 tz: str | None = None, startup_timeout: float = 20.0) -> None:
        needed = [Path(APACHE2), MODULES / "mod_security2.so", MODULES / "mod_unique_id.so",
                  *([CRS_RULES, CRS_ETC / "crs-setup.conf"] if crs else [])]
        for path in needed:
            if not path.exists():
                raise Unavailable(f"{path} missing (Debian packages apache2, "
                                  "libapache2-mod-security2, modsecurity-crs)")
        if log_type not in ("Concurrent", "Serial") or log_format not in ("Native", "JSON"):
            raise ValueError(f"log_type {log_type!r} / log_format {log_format!r}")
        self.netns = netns
        self.engine, self.audit_engine = engine, audit_engine
        self.log_type, self.log_format = log_type, log_format
        self.listen = [tuple(a) for a in listen] if listen else [("127.0.0.1", free_port())]
        self._auto_port = 0 if listen else 3        # retries when the free port gets taken
        self.extra_conf, self.paranoia_level, self.crs = extra_conf, paranoia_level, crs
        self.parts, self.relevant_status, self.tz = parts, relevant_status, tz
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

        # as root the workers run as www-data; otherwise Apache keeps our own user
        self.as_root = os.geteuid() == 0
        if self.as_root:
            _ensure_user(RUN_USER)
            self.uid, self.gid = pwd.getpwnam(RUN_USER).pw_uid, grp.getgrnam(RUN_USER).gr_gid
        else:
            self.uid, self.gid = os.geteuid(), os.getegid()
        tmpdir = Path(tmpdir).resolve()
        self._own_root = not traversable(tmpdir, self.uid, self.gid)
        if self._own_root:
            self.root = Path(tempfile.mkdtemp(prefix="mt-apache-"))
            self.root.chmod(0o755)
        else:
            self.root = tmpdir / "apache"
        self.conf_path = self.root / "httpd.conf"
        self.error_log = self.root / "logs" / "error.log"
        self.access_log = self.root / "logs" / "access.log"
        self.startup_log = self.root / "logs" / "startup.log"
        self.htdocs = self.root / "htdocs"
        self.storage_dir = Path(storage_dir) if storage_dir else self.root / "audit" / "storage"
        default_log = "index.log" if log_type == "Concurrent" else "audit_serial.log"
        self.index_log = Path(index_log) if index_log else self.root / "audit" / default_log

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self.listen[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self) -> None:
        """Write the config, start Apache (in the namespace if any), wait until every port answers."""
        if self.running:
            return
        self._prepare()
        offset = size(self.error_log)
        argv = [APACHE2, "-f", str(self.conf_path), "-d", str(self.root), "-DFOREGROUND"]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        if self.tz:
            env["TZ"] = self.tz
        with open(self.startup_log, "ab") as out:
            self.proc = subprocess.Popen(self.netns.wrap(argv) if self.netns else argv, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         preexec_fn=die_with_parent)
        if not wait_until(lambda: self._answering(offset), self.startup_timeout,
                          alive=lambda: self.running):
            state = "exited" if not self.running else "not answering"
            self.stop(timeout=2, graceful=False)
            if self._auto_port and "Address already in use" in tail(self.startup_log):
                self._auto_port -= 1                # lost a race for the port: take another
                self.listen = [("127.0.0.1", free_port())]
                self.startup_log.write_bytes(b"")
                return self.start()
            raise RuntimeError(f"apache2 {state} after start on {self.listen}; startup output:\n"
                               f"{tail(self.startup_log)}\nerror.log tail:\n"
                               f"{tail(self.error_log, offset)}")

    def stop(self, timeout: float = 10.0, *, graceful: bool = True) -> None:
        """Stop Apache.  Graceful (SIGWINCH, ~1 s): in-flight requests finish and their audit
        entries get written; else SIGTERM (~0.2 s): in-flight requests are cut off."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGWINCH if graceful else signal.SIGTERM, timeout)

    def close(self) -> None:
        """Fast stop (SIGTERM; call ``stop()`` first if in-flight entries matter), clean up."""
        self.stop(graceful=False)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------
    def request(self, path: str = "/", *, host: str = "localhost", source_ip: str | None = None,
                addr: tuple[str, int] | None = None, method: str = "GET",
                headers: dict[str, str] | None = None, body: bytes = b"", timeout: float = 5.0,
                raw: bool = False) -> int | None:
        """One HTTP/1.1 request (Connection: close) to ``addr`` (default: first Listen),
        from ``source_ip`` if given, inside the namespace if any; the status, or None."""
        factory = self.netns.socket if self.netns else socket.socket
        return http_status(addr or self.listen[0], path, host=host, source_ip=source_ip,
                           method=method, headers=headers, body=body, timeout=timeout, raw=raw,
                           socket_factory=factory)

    # -- audit output ------------------------------------------------------------------------
    def audit_files(self) -> list[Path]:
        """Concurrent entry files under the storage dir, sorted by name (= time, unique id)."""
        if not self.storage_dir.is_dir():
            return []
        return sorted((p for p in self.storage_dir.rglob("*") if p.is_file()),
                      key=lambda p: p.name)

    def index_lines(self) -> list[str]:
        try:
            return self.index_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_index(self, count: int, timeout: float = 10.0) -> list[str]:
        """``wait_entries(count)``, then all lines of the index (or Serial) log."""
        self.wait_entries(count, timeout)
        return self.index_lines()

    def entry_count(self) -> int:
        """Complete entries so far: index lines (Concurrent), lines (JSON Serial) or Z parts."""
        lines = self.index_lines()
        if self.log_type == "Serial" and self.log_format == "Native":
            return sum(1 for line in lines if re.fullmatch(r"--[0-9a-f]+-Z--", line))
        return len(lines)

    def wait_entries(self, count: int, timeout: float = 10.0) -> int:
        """Wait until at least ``count`` entries are complete; return how many there are."""
        if not wait_until(lambda: self.entry_count() >= count, timeout, interval=0.01):
            raise TimeoutError(f"{self.entry_count()} of {count} entries in {self.index_log} "
                               f"after {timeout} s; error.log tail:\n{tail(self.error_log)}")
        return self.entry_count()

    # -- internals ---------------------------------------------------------------------------
    def _answering(self, offset: int) -> bool:
        """Apache logged that it is up (so the ports are its own) and every port connects."""
        if "resuming normal operations" not in read_from(self.error_log, offset):
            return False
        return all(_connects(addr, self.netns.socket if self.netns else socket.socket)
                   for addr in self.listen)

    def _prepare(self) -> None:
        for directory in (self.root / "run", self.root / "logs", self.htdocs,
                          self.index_log.parent):
            directory.mkdir(parents=True, exist_ok=True)
        (self.htdocs / "index.html").write_text("<html><body>modsec-tools test site</body></html>\n")
        for directory in (self.htdocs, self.root / "modsec-tmp", self.root / "modsec-data",
                          *([self.storage_dir] if self.log_type == "Concurrent" else [])):
            directory.mkdir(parents=True, exist_ok=True)
            if self.as_root:
                os.chown(directory, self.uid, self.gid)
            directory.chmod(0o755)
        if self.log_type == "Concurrent" and not traversable(self.storage_dir, self.uid, self.gid):
            raise ValueError(f"storage_dir {self.storage_dir} is not reachable by {RUN_USER} "
                             "(an ancestor without x, e.g. pytest's 0700 tmp_path); leave "
                             "storage_dir unset or put it under a traversable directory")
        self.conf_path.write_text(self._httpd_conf())
        (self.root / "modsecurity.conf").write_text(self._modsecurity_conf())

    def _httpd_conf(self) -> str:
        modules = ["mpm_event", "authz_core", "mime", "dir", "unique_id", "security2"]
        return HTTPD_CONF.substitute(
            root=self.root, error_log=self.error_log, access_log=self.access_log,
            htdocs=self.htdocs, extra_conf=self.extra_conf,
            load="\n".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in modules),
            user=f"User {RUN_USER}\nGroup {RUN_USER}" if self.as_root else "",
            listen="\n".join(f"Listen {f'[{h}]' if ':' in h else h}:{p}" for h, p in self.listen))

    def _modsecurity_conf(self) -> str:
        conf = MODSEC_CONF.substitute(
            root=self.root, engine=self.engine, audit_engine=self.audit_engine,
            relevant_status=self.relevant_status, parts=self.parts, log_type=self.log_type,
            log_format=self.log_format, index_log=self.index_log, unicode_map=UNICODE_MAP,
            storage=(f"SecAuditLogStorageDir {self.storage_dir}"
                     if self.log_type == "Concurrent" else ""))
        if self.crs:
            conf += CRS_CONF.substitute(etc=CRS_ETC, rules=CRS_RULES, pl=self.paranoia_level)
        return conf


HTTPD_CONF = string.Template("""\
# generated by tests/realparts/apache.py -- self-contained, loopback/namespace only
ServerRoot "$root"
PidFile "$root/run/httpd.pid"
DefaultRuntimeDir "$root/run"
$load
$user
ServerName localhost
$listen
Timeout 10
KeepAlive On
KeepAliveTimeout 2
GracefulShutdownTimeout 5
HostnameLookups Off
ServerSignature Off
<IfModule mpm_event_module>
    StartServers 1
    ServerLimit 4
    ThreadLimit 32
    ThreadsPerChild 32
    MinSpareThreads 4
    MaxSpareThreads 128
    MaxRequestWorkers 128
</IfModule>
TypesConfig /etc/mime.types
ErrorLog "$error_log"
LogLevel warn
LogFormat "%{UNIQUE_ID}e %a %{remote}p %A %{local}p [%{%Y-%m-%dT%H:%M:%S}t.%{usec_frac}t %{%z}t] %>s \\"%r\\" \\"%{Host}i\\" %B %D" mt
CustomLog "$access_log" mt
DocumentRoot "$htdocs"
DirectoryIndex index.html
<Directory />
    AllowOverride None
    Require all denied
</Directory>
<Directory "$htdocs">
    AllowOverride None
    Require all granted
</Directory>
Include "$root/modsecurity.conf"
$extra_conf
""")

# base settings as in the corpus' lab (tests/data/corpus/*/modsecurity.conf)
MODSEC_CONF = string.Template("""\
# generated by tests/realparts/apache.py
SecRuleEngine $engine
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\\+|/)|text/)xml" \\
    "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "^application/json" \\
    "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecRule REQBODY_ERROR "!@eq 0" \\
    "id:200002,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.',logdata:'%{reqbody_error_msg}',severity:2"
SecPcreMatchLimit 100000
SecPcreMatchLimitRecursion 100000
SecResponseBodyAccess Off
SecTmpDir $root/modsec-tmp
SecDataDir $root/modsec-data
SecAuditEngine $audit_engine
SecAuditLogRelevantStatus "$relevant_status"
SecAuditLogParts $parts
SecAuditLogType $log_type
SecAuditLogFormat $log_format
SecAuditLogDirMode 0777
SecAuditLogFileMode 0600
$storage
SecAuditLog $index_log
SecArgumentSeparator &
SecCookieFormat 0
SecUnicodeMapFile $unicode_map 20127
SecStatusEngine Off
""")

CRS_CONF = string.Template("""\
# OWASP CRS (Debian's modsecurity-crs), paranoia level $pl
Include $etc/crs-setup.conf
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=$pl"
IncludeOptional $etc/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf
Include $rules/*.conf
IncludeOptional $etc/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf
""")


# -- module-level helpers ----------------------------------------------------------------------
SocketFactory = Callable[..., socket.socket]


def http_status(addr: tuple[str, int], path: str = "/", *, host: str = "localhost",
                source_ip: str | None = None, method: str = "GET",
                headers: dict[str, str] | None = None, body: bytes = b"", timeout: float = 5.0,
                raw: bool = False, socket_factory: SocketFactory = socket.socket) -> int | None:
    """Send one request over a raw socket; the response status, or None (refused, reset,
    timeout, no status line).  ``path`` is percent-encoded where HTTP needs it unless ``raw``."""
    target = path if raw else urllib.parse.quote(path, safe="/?&=%:+@,;~!$*()'[]#")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}",
             "User-Agent: modsec-tools-tests/1.0", "Accept: */*", "Connection: close"]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    try:
        with socket_factory(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            if source_ip:
                sock.bind((source_ip, 0))
            sock.connect(addr)
            sock.sendall(payload)
            response = b""
            while b"\r\n" not in response:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                response += chunk
            while sock.recv(65536):             # drain until the server closes
                pass
    except OSError:
        return None
    match = re.match(rb"HTTP/\d\.\d (\d{3})", response)
    return int(match.group(1)) if match else None


def _connects(addr: tuple[str, int], factory: SocketFactory) -> bool:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    try:
        with factory(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(addr)
        return True
    except OSError:
        return False


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/var/www", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)

