"""Fleet bans end to end against one MariaDB: three servers (network namespaces, each with
its own fail2ban, nft sets and fleet daemon, connected as its own least-privileged database
user). An attack on web1's Apache + ModSecurity gets the attacker refused by web2 and web3
for what is left of web1's ban; each server keeps its own ignoreip, addresses and proxies;
hostile rows never reach fail2ban; early unbans propagate when chosen; repeat offenders
escalate fleet-wide."""
from __future__ import annotations

import time
from pathlib import Path

import pymysql
import pytest

from tests import f2b_harness as f2b
from tests.test_fleet_harness import ATTACK_BANTIME, Fleet, FleetDb, attack_web1

pytestmark = pytest.mark.root

def test_attack_on_web1_is_refused_by_web2_and_web3(mariadb, tmp_path: Path) -> None:
    with FleetDb.on(mariadb) as db, Fleet(tmp_path, db, bantime=ATTACK_BANTIME) as fleet:
        attack_web1(fleet, tmp_path, *fleet.start(3))


def test_each_server_keeps_its_own_exceptions_and_refuses_hostile_rows(
        mariadb, tmp_path: Path) -> None:
    """web2 trusts 192.0.2.5 as its proxy, web3 ignores 192.0.2.4 and holds 192.0.2.9 on an
    interface (ignoreself); rows no node could have meant to write never reach fail2ban, and
    a node's user cannot write another node's rows."""
    with FleetDb.on(mariadb) as db, Fleet(tmp_path, db) as fleet:
        web1 = fleet.add("web1")
        web2 = fleet.add("web2", settings={"trusted_proxies": "192.0.2.5"})
        web3 = fleet.add("web3", ignoreip="192.0.2.4", ignoreself=True, start=False)
        web3.netns.add_addr("192.0.2.9/32")
        web3.start_fleet()
        web1.f2b.banip("modsec", "192.0.2.4", "192.0.2.5", "192.0.2.6", "192.0.2.9")
        fleet.wait_banned([web2, web3], "192.0.2.6")
        assert set(web2.kernel()) == {"192.0.2.4", "192.0.2.6", "192.0.2.9"}
        assert set(web3.kernel()) == {"192.0.2.5", "192.0.2.6"}
        assert web2.f2b.banned("modsec-fleet") == set(web2.kernel())

        now = int(time.time())
        hostile = [("10.9.0.0/16", now, 600), ("0.0.0.0", now, 600), ("fe80::1%eth0", now, 600),
                   ("224.0.0.1", now, 600), ("127.0.0.2", now, 600), ("not-an-ip", now, 600),
                   ("198.51.100.7", now + 3600, 600), ("198.51.100.8", now, 0)]
        bounded = ("198.51.100.9", now, 10 ** 9)              # longer than fleet_max_bantime
        conn = db.admin()
        try:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO fleet_bans (node, seq, jail, ip, time_of_ban, bantime, end_time)"
                    " VALUES ('web1', %s, 'modsec', %s, %s, %s, %s)",
                    [(1000 + i, ip, start, bantime, start + bantime)
                     for i, (ip, start, bantime) in enumerate(hostile + [bounded])])
                cursor.execute("INSERT INTO fleet_bans (node, seq, jail, ip, time_of_ban, "
                               "bantime, end_time) VALUES ('web1', 2000, 'sshd', '198.51.100.10',"
                               " %s, 600, %s)", (now, now + 600))
                cursor.execute("UPDATE fleet_nodes SET last_seq = 2000 WHERE node = 'web1'")
        finally:
            conn.close()
        fleet.wait_banned([web2, web3], bounded[0])
        assert set(web2.kernel()) == {"192.0.2.4", "192.0.2.6", "192.0.2.9", bounded[0]}
        assert web2.kernel()[bounded[0]] <= 5 * 7 * 86400
        f2b.wait_for(lambda: web2.status().get("rejected", 0) >= len(hostile) + 1, timeout=10)
        assert "refused" in web2.fleet_log()

        # least privilege: web2 may not write web1's rows, nor the tables themselves
        as_web2 = pymysql.connect(unix_socket=db.socket, user="web2",
                                  password=db.passwords["web2"], database=db.database,
                                  autocommit=True)
        try:
            with as_web2.cursor() as cursor:
                for statement in (
                        "INSERT INTO fleet_own_bans (node, seq, jail, ip, time_of_ban, bantime, "
                        "end_time) VALUES ('web1', 5000, 'modsec', '198.51.100.11', 1, 1, 2)",
                        "INSERT INTO fleet_bans (node, seq, jail, ip, time_of_ban, bantime, "
                        "end_time) VALUES ('web2', 5000, 'modsec', '198.51.100.11', 1, 1, 2)",
                        "DELETE FROM fleet_bans"):
                    with pytest.raises(pymysql.err.MySQLError):
                        cursor.execute(statement)
                cursor.execute("UPDATE fleet_own_node SET last_seq = 0 WHERE node = 'web1'")
                assert cursor.rowcount == 0
        finally:
            as_web2.close()


def test_early_unban_propagates_only_when_chosen(mariadb, tmp_path: Path) -> None:
    """web1 and web2 chose fleet_propagate_unban, web3 did not: web1's early unban ends the
    ban on web2, web3 keeps it until its end."""
    with FleetDb.on(mariadb) as db, Fleet(tmp_path, db, bantime=600) as fleet:
        chosen = {"fleet_propagate_unban": "yes"}
        web1 = fleet.add("web1", settings=chosen)
        web2 = fleet.add("web2", settings=chosen)
        web3 = fleet.add("web3")
        web1.f2b.banip("modsec", "192.0.2.20", "192.0.2.21")
        fleet.wait_banned([web2, web3], "192.0.2.21")
        web1.f2b.unbanip("modsec", "192.0.2.20")
        fleet.wait_unbanned([web2], "192.0.2.20", timeout=5)
        time.sleep(1.5)
        assert set(web3.kernel()) == {"192.0.2.20", "192.0.2.21"}
        assert set(web2.kernel()) == {"192.0.2.21"}
        kinds = db.rows("SELECT kind FROM fleet_bans WHERE ip = '192.0.2.20' ORDER BY seq")
        assert kinds == [("ban",), ("unban",)]


def test_repeat_offender_escalates_fleet_wide(mariadb, tmp_path: Path) -> None:
    """Banned on web1, then web2, then web1 again: web3 never banned it itself, yet its
    modsec-recidive counts the three (its fleet bans) and bans it on all ports."""
    with FleetDb.on(mariadb) as db, Fleet(tmp_path, db, bantime=2) as fleet:
        web1, web2, web3 = fleet.start(3)
        address = "192.0.2.30"
        for origin in (web1, web2, web1):
            origin.f2b.banip("modsec", address)
            others = [server for server in (web1, web2, web3) if server is not origin]
            fleet.wait_banned(others, address)
            fleet.wait_unbanned(others, address, timeout=15)
            f2b.wait_for(lambda: address not in origin.f2b.banned("modsec"), timeout=15)
        assert web3.ban_lines("modsec", address) == 0
        assert web3.ban_lines("modsec-fleet", address) == 3
        f2b.wait_for(lambda: address in web3.f2b.banned("modsec-recidive"), timeout=10,
                     what=web3.f2b.tail())
        assert address in f2b.kernel_bans(web3.ns, "nftables", "mt-modsec-recidive")
