"""Smoke tests: each real-part harness (tests/realparts) really works."""
from __future__ import annotations

import os
import pwd
import re
import socket
import stat
import sys
import time
import urllib.parse

import pytest

from tests.realparts.apache import ATTACK, RUN_USER, ApacheModSec
from tests.realparts.fixtures import require
from tests.realparts.mariadb import MariaDB
from tests.realparts.netns import NetNS

try:
    import pymysql
except ImportError:             # the mariadb fixtures skip (or fail under CI) with the reason
    pymysql = None


# -- MariaDB ----------------------------------------------------------------------------------
def test_mariadb_url_and_roundtrip(mariadb: MariaDB, mariadb_db: str) -> None:
    url = urllib.parse.urlsplit(mariadb.url)
    assert (url.scheme, url.username, url.password, url.hostname, url.port, url.path) == (
        "mysql", "modsec", mariadb.password, "127.0.0.1", mariadb.port, "/modsec")
    assert mariadb_db != mariadb.database
    for via_socket in (False, True):
        conn = mariadb.connect(mariadb_db, unix_socket=via_socket)
        with conn, conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            if not via_socket:
                assert cur.fetchall() == ()           # fresh and empty
                cur.execute("CREATE TABLE t (id INT PRIMARY KEY, ip VARCHAR(45)) ENGINE=InnoDB")
            cur.execute("INSERT INTO t VALUES (%s, %s)", (int(via_socket), "192.0.2.7"))
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == f"modsec@{'localhost' if via_socket else '127.0.0.1'}"
    with mariadb.connect(mariadb_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, ip FROM t ORDER BY id")
        assert cur.fetchall() == ((0, "192.0.2.7"), (1, "192.0.2.7"))


def test_mariadb_grants_are_real(mariadb: MariaDB) -> None:
    with pytest.raises(pymysql.err.OperationalError) as denied:
        mariadb.connect(password="wrong")
    assert denied.value.args[0] == 1045                 # access denied: no skip-grant-tables
    with pytest.raises(pymysql.err.OperationalError) as forbidden:
        mariadb.connect("mysql")
    assert forbidden.value.args[0] == 1044              # modsec has no rights on mysql.*
    assert mariadb.sql("SELECT COUNT(*) FROM mysql.user WHERE user = ''") == [(0,)]


def test_mariadb_stop_start_keeps_data_port_and_socket(mariadb: MariaDB, mariadb_db: str) -> None:
    with mariadb.connect(mariadb_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE events (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO events VALUES (1), (2)")
    port, sock, old_pid = mariadb.port, mariadb.socket, mariadb.pid
    mariadb.stop()
    assert not mariadb.running
    with pytest.raises(pymysql.err.OperationalError):
        mariadb.connect(mariadb_db)                     # the outage is real
    started = time.monotonic()
    mariadb.start()
    assert time.monotonic() - started < 10
    assert (mariadb.port, mariadb.socket) == (port, sock) and mariadb.pid != old_pid
    with mariadb.connect(mariadb_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM events")
        assert cur.fetchone()[0] == 2


def test_mariadb_kill_and_crash_recovery(mariadb_private: MariaDB) -> None:
    db = mariadb_private
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE events (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO events VALUES (1)")      # autocommit: committed
    pid = db.pid
    db.kill()
    assert not db.running and not os.path.exists(f"/proc/{pid}/status")
    with pytest.raises(pymysql.err.OperationalError):
        db.connect()
    db.start()
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM events")
        assert cur.fetchall() == ((1,),)


# -- network namespaces (root) ------------------------------------------------------------------
def test_netns_is_isolated_with_its_own_lo(netns: NetNS) -> None:
    netns.add_addr("fd00::2/128")
    # a process inside sees only its own loopback, up, with the added address
    seen = netns.run([sys.executable, "-c", "import socket; print(socket.if_nameindex())"]).stdout
    assert seen.strip() == "[(1, 'lo')]"
    link = netns.run(["ip", "-o", "link", "show", "lo"]).stdout
    assert "UP" in link.split("<")[1].split(">")[0]
    assert "fd00::2/128" in netns.run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
    host_addrs = os.popen("ip -o addr").read()
    assert "fd00::2/128" not in host_addrs               # the host is untouched
    # a listener on the host's 127.0.0.1 is not reachable from inside; one inside is
    with socket.socket() as host_listener:
        host_listener.bind(("127.0.0.1", 0))
        host_listener.listen()
        with netns.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.settimeout(2)
            probe.connect(host_listener.getsockname())
    with netns.socket(socket.AF_INET6) as inner, netns.socket(socket.AF_INET6) as client:
        inner.bind(("fd00::2", 0))
        inner.listen()
        client.settimeout(2)
        client.connect(inner.getsockname()[:2])


@pytest.mark.root
def test_netns_teardown_kills_processes_and_deletes_it() -> None:
    with require(NetNS) as ns:
        proc = ns.popen(["sleep", "300"])
        assert proc.pid in ns.pids()
        name = ns.name
    assert proc.wait(5) == -15
    assert name not in os.popen("ip netns list").read()


# -- Apache + ModSecurity + CRS ----------------------------------------------------------------
def _user() -> str:
    return RUN_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def test_apache_attack_gives_concurrent_entry_benign_none(apache: ApacheModSec) -> None:
    assert apache.request("/") == 200
    assert apache.request(ATTACK, source_ip="127.0.0.2") == 403
    (line,) = apache.wait_index(1)
    time.sleep(0.3)                      # give a (wrong) entry for the benign request time to show
    assert len(apache.index_lines()) == 1
    (entry,) = apache.audit_files()
    rel = entry.relative_to(apache.storage_dir)
    assert re.fullmatch(rf"{_user()}/(\d{{8}})/\1-\d{{4}}/\1-\d{{6}}-[\w@-]{{24,}}", str(rel)), rel
    unique_id = rel.name.split("-", 2)[2]
    assert f" {unique_id} " in line and f" /{rel} " in line and line.split()[1] == "127.0.0.2"
    text = entry.read_text()
    assert f"] {unique_id} 127.0.0.2 " in text                      # section A
    assert "GET /?id=1'%20or%20'1'='1 HTTP/1.1" in text             # section B
    assert '[id "942100"]' in text and "Access denied with code 403" in text   # section H
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    if os.geteuid() == 0:
        assert entry.stat().st_uid == pwd.getpwnam(RUN_USER).pw_uid
    statuses = re.findall(r"\] (\d{3}) \"", apache.access_log.read_text())
    assert sorted(statuses) == ["200", "403"]           # both requests were served


@pytest.mark.parametrize("log_type, log_format", [("Serial", "Native"), ("Concurrent", "JSON")])
def test_apache_other_audit_formats(tmp_path, log_type: str, log_format: str) -> None:
    with require(lambda: ApacheModSec(tmp_path, log_type=log_type, log_format=log_format)) as web:
        assert web.request(ATTACK) == 403
        assert web.wait_entries(1) == 1
        if log_type == "Serial":
            text = web.index_log.read_text()
            assert "-B--\nGET /?id=1'%20or%20'1'='1 HTTP/1.1\n" in text and web.audit_files() == []
        else:
            assert '"request_line":"GET /?id=1\'%20or%20\'1\'=\'1 HTTP/1.1"' in web.audit_files()[0].read_text()


def test_apache_in_netns(apache_netns: ApacheModSec, netns: NetNS) -> None:
    address = apache_netns.listen[0]
    assert apache_netns.request("/", source_ip="127.0.0.3") == 200
    assert apache_netns.request(ATTACK, source_ip="127.0.0.3") == 403
    (line,) = apache_netns.wait_index(1)
    assert line.split()[1] == "127.0.0.3"
    assert len(apache_netns.audit_files()) == 1
    assert apache_netns.pid in netns.pids()
    with socket.socket() as host_probe:                  # not reachable from the host
        host_probe.settimeout(2)
        assert host_probe.connect_ex(address) != 0
