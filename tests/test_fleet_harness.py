"""A fleet of web servers on one machine, for the fleet tests and bench/fleet.py.

Each server is a network namespace with its own fail2ban (own configuration, socket,
database, nft sets: tests/f2b_harness.py) running our jails modsec, modsec-recidive,
modsec-fleet and modsec-fleet-recidive, and its own ``modsec-tools fleet run`` daemon with
its own configuration and state directory, connected to one shared MariaDB (or a Galera
cluster) as the database user named after its node, with only the fleet GRANTs::

    with FleetDb.on(mariadb) as db, Fleet(tmp_path, db) as fleet:
        web1, web2, web3 = fleet.start(3)
        web1.f2b.banip("modsec", "127.0.0.2")
        fleet.wait_banned([web2, web3], "127.0.0.2")

A daemon runs inside its server's namespace and reaches the database by its unix socket
(``inside=True``, the default), or runs in the host's namespace and connects over TCP to
127.0.0.1 (``inside=False``: a list of Galera nodes to fail over between). fail2ban's
socket is a file, so either way it is the server's own.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from modsec_tools.fleet import schema
from tests import f2b_harness as f2b
from tests.realparts import NetNS
from tests.realparts.mariadb import MariaDB

REPO = Path(__file__).resolve().parent.parent
FLEET_JAILS = REPO / "fail2ban" / "jail.d" / "modsec-fleet.conf"

pytestmark = pytest.mark.root

# the jails beside [modsec] (f2b.attack_jail)
OTHER_JAILS = """
[modsec-recidive]
enabled = true
logpath = {{root}}/fail2ban.log
backend = pyinotify
bantime = 60
ignoreself = false
ignoreip = 127.0.0.1/8 {server}
action = modsec-block.py[backend=nftables, blocktype=DROP, port=all]

[modsec-fleet]
enabled = true
ignoreself = {ignoreself}
ignoreip = 127.0.0.1/8 {server} {ignoreip}

[modsec-fleet-recidive]
enabled = true
ignoreself = {ignoreself}
ignoreip = 127.0.0.1/8 {server} {ignoreip}
"""

# Every server answers on SERVER (on its loopback); clients connect from addresses of
# TEST-NET-1 added to the client's namespace (a kernel set never holds a loopback address).
SERVER = "10.0.0.1"


# ------------------------------------------------------------------------------ database --
@dataclass
class FleetDb:
    """The shared database: where it is, its admin, and per-node users with fleet GRANTs."""

    database: str
    admin: Callable[[], Any]                  # a pymysql connection with all rights on it
    superuser: Callable[[], Any]              # one that may create users
    socket: str | None                        # unix socket (None: TCP only)
    places: Sequence[tuple[str, int]]         # TCP host:port of every server (Galera: all)
    passwords: dict[str, str] = field(default_factory=dict)
    tls_ca: str = ""

    @classmethod
    @contextlib.contextmanager
    def on(cls, server: Any, database: str | None = None,
           upto: int = schema.CODE_SCHEMA) -> Iterator["FleetDb"]:
        """A fresh database on a tests.realparts MariaDB, migrated by its admin user."""
        name = server.create_database(database)
        db = cls(name, lambda: server.connect(name),
                 lambda: server.connect(name, root=True, unix_socket=True), server.socket,
                 [(server.host, server.port)])
        db.migrate(upto)
        try:
            yield db
        finally:
            if server.running:
                server.drop_database(name)

    def migrate(self, upto: int = schema.CODE_SCHEMA) -> None:
        conn = self.admin()
        try:
            schema.migrate(conn, upto)
        finally:
            conn.close()

    def add_node(self, node: str) -> str:
        """A user named after the node, on the socket and TCP hosts, with the fleet GRANTs."""
        password = self.passwords.setdefault(node, secrets.token_hex(8))
        conn = self.superuser()
        try:
            with conn.cursor() as cursor:
                for host in ("localhost", "127.0.0.1"):
                    cursor.execute("CREATE OR REPLACE USER %s@%s IDENTIFIED BY %s",
                                   (node, host, password))
                    for statement in schema.grants(node, host, self.database):
                        cursor.execute(statement)
        finally:
            conn.close()
        return password

    def url(self, node: str, inside: bool) -> str:
        """The node's fleet_db: the unix socket, or every TCP place, each node starting
        with another one (web1 with the first, web2 with the second...)."""
        if inside and self.socket:
            return f"mysql://{node}@localhost/{self.database}?unix_socket={self.socket}"
        turn = list(self.passwords).index(node) % len(self.places)
        places = [*self.places[turn:], *self.places[:turn]]
        hosts = ",".join(f"{host}:{port}" for host, port in places)
        return f"mysql://{node}@{hosts}/{self.database}"

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        conn = self.admin()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            conn.close()


# ------------------------------------------------------------------------------- servers --
@dataclass
class Server:
    name: str
    netns: NetNS
    ns: f2b.Netns
    f2b: f2b.Fail2Ban
    root: Path
    db: FleetDb
    inside: bool = True
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "fleet.log"

    def write_config(self) -> Path:
        password = self.db.passwords[self.name]
        option_file = self.root / "fleet.cnf"
        tls = f"ssl-ca = {self.db.tls_ca}\n" if self.db.tls_ca else ""
        option_file.write_text(f"[client]\npassword = {password}\n{tls}")
        option_file.chmod(0o600)
        settings = {"node": self.name, "state_dir": str(self.state), "fleet": "yes",
                    "fleet_db": self.db.url(self.name, self.inside),
                    "fleet_db_option_file": str(option_file),
                    "fleet_fail2ban_socket": str(self.f2b.sock), "db": "none",
                    **self.settings}
        config = self.root / "modsec-tools.conf"
        config.write_text("[modsec-tools]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        return config

    def start_fleet(self, env: dict[str, str] | None = None, wait: bool = True) -> None:
        config = self.write_config()
        argv = [sys.executable, "-m", "modsec_tools.cli", "-v", "fleet", "run", "--config",
                str(config)]
        out = open(self.log, "ab")
        environment = {**os.environ, **(env or {})}
        if self.inside:
            self.proc = self.ns.popen(*argv, cwd=REPO, stdout=out, stderr=out, env=environment)
        else:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=out,
                                         env=environment)
        if wait:
            f2b.wait_for(lambda: self.connected() or self.proc.poll() is not None, timeout=30,
                         what=f"{self.name}'s fleet daemon")
            assert self.proc.poll() is None, self.log.read_text()

    def connected(self) -> bool:
        return bool(self.status().get("database_up")) and \
            "connected to" in self.log.read_text(errors="replace")

    def status(self) -> dict:
        try:
            return json.loads((self.state / "fleet" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def stop_fleet(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kernel(self, jail: str = "modsec-fleet") -> dict[str, int | None]:
        return f2b.kernel_bans(self.ns, "nftables", f"mt-{jail}")

    def fleet_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ban_lines(self, jail: str, ip: str) -> int:
        """How many times fail2ban logged a (new) ban of ``ip`` in ``jail``."""
        return sum(line.endswith(f"[{jail}] Ban {ip}") for line in self.f2b.log_text().splitlines())


class Fleet:
    """Up to N servers sharing ``db``; everything is stopped and removed on exit."""

    def __init__(self, tmp: Path, db: FleetDb, *, bantime: int = 60) -> None:
        self.tmp, self.db, self.bantime = tmp, db, bantime
        self.servers: list[Server] = []
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for server in self.servers:
                server.stop_fleet()
        finally:
            self.stack.close()

    def add(self, name: str, *, ignoreip: str = "", ignoreself: bool = False,
            inside: bool = True, settings: dict[str, str] | None = None, start: bool = True,
            env: dict[str, str] | None = None) -> Server:
        netns = self.stack.enter_context(NetNS())
        netns.add_addr(f"{SERVER}/32")
        ns = f2b.Netns(netns.name)
        root = self.tmp / name
        root.mkdir(mode=0o700)
        jails = f2b.attack_jail(firewall="nftables", port="http", bantime=self.bantime,
                                maxtime=600, ignoreip=f"127.0.0.1/8 {SERVER}")
        jails += OTHER_JAILS.format(ignoreip=ignoreip, server=SERVER,
                                    ignoreself=str(ignoreself).lower())
        (root / "f2b").mkdir(mode=0o700)
        server = self.stack.enter_context(f2b.fail2ban_server(
            ns, jails, root=root / "f2b",
            extra={"jail.d/modsec-fleet.conf": FLEET_JAILS.read_text()}))
        self.db.add_node(name)
        member = Server(name, netns, ns, server, root, self.db, inside, dict(settings or {}))
        self.servers.append(member)
        if start:
            member.start_fleet(env)
        return member

    def start(self, count: int, **kwargs: Any) -> list[Server]:
        return [self.add(f"web{i}", **kwargs) for i in range(1, count + 1)]

    def wait_banned(self, servers: Sequence[Server], ip: str, jail: str = "modsec-fleet",
                    timeout: float = 10) -> float:
        """Seconds until every server's kernel set holds ``ip``."""
        started = time.monotonic()
        for server in servers:
            f2b.wait_for(lambda: ip in server.kernel(jail), timeout=timeout,
                         what=f"{ip} in {server.name}'s {jail} set\n{server.fleet_log()[-3000:]}")
        return time.monotonic() - started

    def wait_unbanned(self, servers: Sequence[Server], ip: str, jail: str = "modsec-fleet",
                      timeout: float = 10) -> None:
        for server in servers:
            f2b.wait_for(lambda: ip not in server.kernel(jail), timeout=timeout,
                         what=f"{ip} gone from {server.name}'s {jail} set\n"
                              f"{server.fleet_log()[-3000:]}")


def probe(server: Server, source: str, port: int = 80) -> str:
    """A TCP connection from ``source`` (added to the namespace if new) to SERVER:port:
    'open', 'timeout' (dropped) or 'refused'."""
    if source not in server.ns.out("ip", "-o", "addr", "show", "dev", "lo"):
        f2b.add_addresses(server.ns, source)
    return f2b.tcp_probe(server.ns, source, SERVER, port, timeout=0.5)


# ---------------------------------------------------------------------- the attack path --
ATTACKER, BYSTANDER = "192.0.2.2", "192.0.2.3"
ATTACK_BANTIME = 8


def attack_web1(fleet: Fleet, tmp: Path, web1: Server, web2: Server, web3: Server) -> None:
    """Apache + ModSecurity + CRS on web1 (SERVER:80), watched by modsec-tools feeding web1's
    jail: three SQL injections from ATTACKER get it banned on web1 by fail2ban, and refused
    by web2 and web3 (a listener on their port 80) until web1's ban ends, not longer."""
    from tests.realparts import ApacheModSec
    from tests.realparts.apache import ATTACK
    from tests.test_e2e_attack_ban import _start_watch
    web1.netns.add_addr(f"{ATTACKER}/32")
    apache = ApacheModSec(tmp / "apache", netns=web1.netns, listen=[(SERVER, 80)])
    with apache, f2b.listener(web2.ns, "0.0.0.0:80"), f2b.listener(web3.ns, "0.0.0.0:80"):
        (tmp / "watch").mkdir()
        watch = _start_watch(tmp / "watch", apache.storage_dir, web1.f2b.root / "events.log")
        try:
            assert probe(web2, ATTACKER) == "open" and probe(web3, ATTACKER) == "open"
            statuses = [apache.request(ATTACK, source_ip=ATTACKER, addr=(SERVER, 80),
                                       timeout=2) for _ in range(3)]
            assert statuses == [403] * 3
            f2b.wait_for(lambda: ATTACKER in web1.f2b.banned("modsec"), timeout=10)
            banned = time.monotonic()
            fleet.wait_banned([web2, web3], ATTACKER)
            assert probe(web2, ATTACKER) == "timeout"
            assert probe(web3, ATTACKER) == "timeout"
            assert probe(web2, BYSTANDER) == "open"
            assert ATTACKER in web3.f2b.client("status", "modsec-fleet")
            (node, jail, rules, bantime), = fleet.db.rows(
                "SELECT node, jail, rules, bantime FROM fleet_bans WHERE ip = %s", ATTACKER)
            assert (node, jail, bantime) == ("web1", "modsec", ATTACK_BANTIME)
            assert "942100" in rules.split(","), rules
            # web1's ban ends: so do the others', at the same time
            fleet.wait_unbanned([web2, web3], ATTACKER, timeout=ATTACK_BANTIME + 7)
            assert time.monotonic() - banned < ATTACK_BANTIME + 3
            assert probe(web2, ATTACKER) == "open"
        finally:
            watch.send_signal(signal.SIGTERM)
            watch.wait(30)
    for server in (web2, web3):
        assert server.ban_lines("modsec-fleet", ATTACKER) == 1, server.f2b.tail()


# -------------------------------------------------------------------------------- Galera --
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"


class _GaleraNode(MariaDB):
    """A node runs as the mysql user: a joiner's rsync daemon started by root would write
    as nobody, and the state transfer would fail."""

    def _user_arg(self) -> list[str]:
        return ["--user=mysql"] if os.geteuid() == 0 else []


class GaleraCluster:
    """Three (or more) MariaDB nodes of one Galera cluster on loopback ports, each a
    tests.realparts MariaDB with the wsrep settings; the first bootstraps it, the others
    join by rsync SST (so they share its users and passwords)."""

    def __init__(self, size: int = 3) -> None:
        from tests.realparts._util import Unavailable, free_port
        if not os.path.exists(GALERA_PROVIDER):
            raise Unavailable(f"{GALERA_PROVIDER} missing (Debian package galera-4)")
        self.name = f"mt-{secrets.token_hex(3)}"
        ports = [free_port() for _ in range(size * 3)]
        self.gcomm = [ports[3 * i] for i in range(size)]
        members = ",".join(f"127.0.0.1:{port}" for port in self.gcomm)
        self.nodes = []
        for index in range(size):
            gcomm, ist, sst = ports[3 * index:3 * index + 3]
            args = ["--wsrep-on=ON", f"--wsrep-provider={GALERA_PROVIDER}",
                    f"--wsrep-cluster-name={self.name}",
                    f"--wsrep-cluster-address=gcomm://{members}",
                    f"--wsrep-node-address=127.0.0.1:{gcomm}",
                    f"--wsrep-node-name=g{index + 1}",
                    f"--wsrep-sst-receive-address=127.0.0.1:{sst}",
                    f"--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{gcomm};"
                    f"ist.recv_addr=127.0.0.1:{ist};gcache.size=16M;"
                    "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S",
                    "--wsrep-sst-method=rsync", "--binlog-format=ROW",
                    "--innodb-autoinc-lock-mode=2", "--wsrep-slave-threads=2"]
            if index == 0:
                args.append("--wsrep-new-cluster")
            self.nodes.append(_GaleraNode(extra_args=args, startup_timeout=120))

    def __enter__(self) -> "GaleraCluster":
        try:
            self._bootstrap()
            self.wait_synced(len(self.nodes))
        except BaseException as exc:
            problems = self.log_problems()
            self.close()
            if isinstance(exc, (RuntimeError, TimeoutError)):
                raise RuntimeError(f"Galera cluster did not form: {exc}\n{problems}") from None
            raise
        return self

    def log_problems(self) -> str:
        """The state-transfer and error lines of every node's log."""
        lines = []
        for index, node in enumerate(self.nodes):
            try:
                text = node.log_path.read_text(errors="replace")
            except OSError:
                continue
            lines += [f"g{index + 1}: {line[:300]}" for line in text.splitlines()
                      if "WSREP_SST" in line or "rsync" in line.lower() or "[ERROR]" in line]
        return "\n".join(lines[-60:])

    def _bootstrap(self) -> None:
        """The first node founds the cluster and sets up users and passwords; the others
        join by a state transfer (rsync), which gives them the same."""
        first = self.nodes[0]
        for index, node in enumerate(self.nodes):
            if index:
                node.password, node.root_password = first.password, first.root_password
            subprocess.run(["chown", "mysql:mysql", str(node.basedir)], check=True)
            node._install()
            subprocess.run(["chown", "-R", "mysql:mysql", str(node.basedir)], check=True)
            if index:
                (node.basedir / "configured").touch()
            node.start()
            if not index:
                # a restart of the first node later joins the cluster, it does not found another
                node.extra_args = tuple(arg for arg in node.extra_args
                                        if arg != "--wsrep-new-cluster")

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
            node.close()

    def status(self, node: Any) -> dict[str, str]:
        return {name: value for name, value in node.sql(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_size', "
            "'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_ready')")}

    def wait_synced(self, size: int, timeout: float = 60) -> None:
        def synced() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                state = self.status(node)
                if state.get("wsrep_cluster_size") != str(size) or \
                        state.get("wsrep_local_state_comment") != "Synced":
                    return False
            return True
        f2b.wait_for(synced, timeout=timeout, interval=0.2,
                     what=f"a synced Galera cluster of {size}")

    @property
    def places(self) -> list[tuple[str, int]]:
        return [(node.host, node.port) for node in self.nodes]

    @contextlib.contextmanager
    def database(self) -> Iterator[FleetDb]:
        """A fresh fleet database, migrated, reachable over TCP at every node."""
        first = self.nodes[0]
        with FleetDb.on(first) as db:
            db.socket, db.places = None, self.places
            yield db
