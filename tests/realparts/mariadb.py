"""A private MariaDB server for tests: Debian's ``mariadbd`` on a throw-away datadir.

Usage::

    with MariaDB() as db:                       # ~1 s on tmpfs, ~5 s on a slow disk
        conn = db.connect()                     # pymysql, user modsec, database modsec
        run_tool(["--db", db.url])              # mysql://modsec:PASS@127.0.0.1:PORT/modsec
        db.stop(); db.start()                   # outage: same datadir, port and socket
        db.kill(); db.start()                   # crash (SIGKILL) + InnoDB recovery
        name = db.create_database()             # a fresh empty database modsec may use
        db.url_for(name)

The server listens on a private unix socket (``db.socket``) and on 127.0.0.1:``db.port``,
with real grants (no --skip-grant-tables): ``modsec``@``localhost`` and ``modsec``@``127.0.0.1``
get a random password and all privileges on ``modsec``; root has its own random password
(``db.root_password``, ``db.connect(root=True)``).  Nothing is read from /etc/mysql
(``--no-defaults``).  The datadir goes to /dev/shm when it is a roomy tmpfs (``mariadb-install-db``
fsyncs ~1000 times), else to the temp dir; ``innodb_flush_log_at_trx_commit=2`` keeps commits
across a SIGKILL of the server (the kernel still has them), not across a host crash.
A missing ``mariadbd``/``pymysql`` raises :class:`Unavailable`.
"""
from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ._util import (ServerProcess, Unavailable, die_with_parent, free_port, size, stop_process,
                    tail, wait_until)

MARIADBD = "/usr/sbin/mariadbd"
INSTALL_DB = "/usr/bin/mariadb-install-db"

# passed to the bootstrap and to every start: small, fast, loopback only
SERVER_ARGS = (
    "--skip-name-resolve",
    "--innodb-log-file-size=16M",
    "--innodb-buffer-pool-size=64M",
    "--innodb-flush-log-at-trx-commit=2",
    "--performance-schema=OFF",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
    "--max-connections=300",
)


def fast_tmp(min_free: int = 512 << 20) -> str | None:
    """/dev/shm when it is a writable tmpfs with ``min_free`` bytes free, else None."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    if st.f_bavail * st.f_frsize >= min_free and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return None


class MariaDB(ServerProcess):
    """One private ``mariadbd``; a context manager (start on enter, stop + delete on exit)."""

    host = "127.0.0.1"

    def __init__(self, basedir: str | os.PathLike[str] | None = None, *, database: str = "modsec",
                 user: str = "modsec", port: int | None = None, startup_timeout: float = 60.0,
                 extra_args: Sequence[str] = ()) -> None:
        for binary in (MARIADBD, INSTALL_DB):
            if not os.access(binary, os.X_OK):
                raise Unavailable(f"{binary} not installed (Debian package mariadb-server)")
        if importlib.util.find_spec("pymysql") is None:
            raise Unavailable("pymysql not importable (pip install pymysql)")
        self._own_basedir = basedir is None
        self.basedir = Path(tempfile.mkdtemp(prefix="mt-mariadb-", dir=fast_tmp()) if basedir is None
                            else basedir)
        self.datadir = self.basedir / "data"
        self.socket = str(self.basedir / "mysqld.sock")
        self.log_path = self.basedir / "mysqld.err"
        self.database = database
        self.user = user
        self.password = secrets.token_hex(12)
        self.root_password = secrets.token_hex(12)
        self.port = port or free_port(self.host)
        self._auto_port = 0 if port else 3          # retries when a free port gets taken
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._bootstrapped = False

    # -- URLs --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str, *, unix_socket: bool = False) -> str:
        """``mysql://`` URL for ``database`` over TCP (or the unix socket) as the test user."""
        if unix_socket:
            return f"mysql://{self.user}:{self.password}@localhost/{database}?unix_socket={self.socket}"
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> None:
        """Start (or restart) the server on the same datadir, socket and port; wait until ready."""
        if self.running:
            return
        if not self._bootstrapped:
            self._install()
        offset = size(self.log_path)
        argv = [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--port={self.port}", f"--bind-address={self.host}",
                f"--pid-file={self.basedir / 'mysqld.pid'}", f"--log-error={self.log_path}",
                f"--tmpdir={self.basedir / 'tmp'}", f"--secure-file-priv={self.basedir / 'tmp'}",
                *SERVER_ARGS, *self._user_arg(), *self.extra_args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        if not wait_until(self._accepting, timeout or self.startup_timeout,
                          alive=lambda: self.running):
            state = "exited" if not self.running else "not ready"
            self.kill()
            if (self._auto_port and not self._configured()
                    and "Address already in use" in tail(self.log_path, offset)):
                self._auto_port -= 1                # lost a race for the port: take another
                self.port = free_port(self.host)
                return self.start(timeout)
            raise RuntimeError(f"mariadbd {state} after start (port {self.port}, socket "
                               f"{self.socket}); log tail:\n{tail(self.log_path, offset)}")
        if not self._configured():
            self._configure()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (SIGTERM: InnoDB flushes and the server exits); data stays."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the server (a crash); ``start()`` afterwards runs InnoDB crash recovery."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        """Stop the server and delete the datadir (if this object created it)."""
        self.stop()
        if self._own_basedir:
            shutil.rmtree(self.basedir, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------
    def connect(self, database: str | None = None, *, root: bool = False, unix_socket: bool = False,
                **kwargs: Any) -> Any:
        """A pymysql connection (TCP unless ``unix_socket``); ``database`` defaults to ``self.database``."""
        import pymysql
        params: dict[str, Any] = dict(
            user="root" if root else self.user,
            password=self.root_password if root else self.password,
            database=self.database if database is None else (database or None),
            charset="utf8mb4", connect_timeout=5, autocommit=True)
        if unix_socket:
            params["unix_socket"] = self.socket
        else:
            params.update(host=self.host, port=self.port)
        params.update(kwargs)
        return pymysql.connect(**params)

    def sql(self, *statements: str) -> list[tuple[Any, ...]]:
        """Run statements as root over the socket; the rows of the last one."""
        conn = self.connect("", root=True, unix_socket=True)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (``t_<random>`` by default) the test user has all rights on."""
        name = name or f"t_{secrets.token_hex(6)}"
        self.sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
                 *(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{self.user}'@'{host}'"
                   for host in ("localhost", self.host)))
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{name}`")

    # -- internals ---------------------------------------------------------------------------
    def _user_arg(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        (self.basedir / "tmp").mkdir(exist_ok=True)
        argv = [INSTALL_DB, "--no-defaults", f"--datadir={self.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db",
                *self._user_arg(), *SERVER_ARGS]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({proc.returncode}):\n"
                               f"{(proc.stdout + proc.stderr)[-3000:]}")
        self._bootstrapped = True

    def _accepting(self) -> bool:
        for family, address in ((socket.AF_UNIX, self.socket), (socket.AF_INET, (self.host, self.port))):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                try:
                    sock.connect(address)
                    if not sock.recv(1):           # the server greeting
                        return False
                except OSError:
                    return False
        return True

    def _configured(self) -> bool:
        return (self.basedir / "configured").exists()

    def _configure(self) -> None:
        """First start: passwords, the test user on both hosts, its database; no anonymous users."""
        import pymysql
        conn = pymysql.connect(unix_socket=self.socket, user="root", password="", autocommit=True)
        try:
            with conn.cursor() as cur:
                # root only on localhost + 127.0.0.1 (install-db also adds ::1 and the host name,
                # which --skip-name-resolve cannot even ALTER); no anonymous users
                hosts = ("localhost", self.host)
                for table in ("global_priv", "proxies_priv"):
                    cur.execute(f"DELETE FROM mysql.{table} WHERE user IN ('root', '') "
                                "AND host NOT IN (%s, %s)", hosts)
                cur.execute("DELETE FROM mysql.global_priv WHERE user = ''")
                cur.execute("FLUSH PRIVILEGES")
                for host in hosts:
                    cur.execute("ALTER USER 'root'@%s IDENTIFIED BY %s", (host, self.root_password))
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}` CHARACTER SET utf8mb4")
                for host in ("localhost", self.host):
                    cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (self.user, host, self.password))
                    cur.execute(f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO %s@%s", (self.user, host))
        finally:
            conn.close()
        (self.basedir / "configured").touch()
