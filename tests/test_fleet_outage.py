"""The fleet when parts fail: the database crashes (local banning goes on; what was banned
meanwhile and is still in force is published once it is back, what expired is not), a
server's daemon is down (it catches up on bans in force, skips expired ones, unbans what
ended meanwhile), a daemon is killed between commit and cursor file (nothing published
twice), and expired rows are purged."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests import f2b_harness as f2b
from tests.test_fleet_harness import Fleet, FleetDb

pytestmark = pytest.mark.root

SHORT = 3         # the modsec jail's bantime here; modsec-recidive bans for 60 s


def _rows(db: FleetDb, ip: str) -> list[tuple]:
    return db.rows("SELECT node, kind, jail FROM fleet_bans WHERE ip = %s ORDER BY seq", ip)


def test_database_crash_then_catch_up(mariadb_private, tmp_path: Path) -> None:
    with FleetDb.on(mariadb_private) as db, Fleet(tmp_path, db, bantime=SHORT) as fleet:
        web1, web2, web3 = fleet.start(3)

        # the database crashes; web1 goes on banning on its own
        mariadb_private.kill()
        web1.f2b.banip("modsec-recidive", "192.0.2.40")         # 60 s: still in force later
        web1.f2b.banip("modsec", "192.0.2.41")                  # 3 s: over before it is back
        # the action applies a ban a few ms after fail2ban took it (its batch)
        f2b.wait_for(lambda: "192.0.2.40" in web1.kernel("modsec-recidive"), timeout=2)
        f2b.wait_for(lambda: "192.0.2.41" in web1.kernel("modsec"), timeout=2)
        f2b.wait_for(lambda: "unreachable" in web1.fleet_log(), timeout=10)
        time.sleep(SHORT + 1)
        mariadb_private.start()
        fleet.wait_banned([web2, web3], "192.0.2.40", jail="modsec-fleet-recidive", timeout=15)
        assert _rows(db, "192.0.2.40") == [("web1", "ban", "modsec-recidive")]
        assert _rows(db, "192.0.2.41") == []
        assert "192.0.2.41" not in web2.kernel() and "192.0.2.41" not in web3.kernel()

        # web3's daemon is down: one ban ends meanwhile, one is made and ends, one is made
        # and stays in force
        web1.f2b.banip("modsec", "192.0.2.42")
        fleet.wait_banned([web3], "192.0.2.42")
        web3.stop_fleet()
        web1.f2b.banip("modsec", "192.0.2.43")
        web1.f2b.banip("modsec-recidive", "192.0.2.44")
        fleet.wait_banned([web2], "192.0.2.44", jail="modsec-fleet-recidive")
        time.sleep(SHORT + 1)
        assert "192.0.2.42" in web3.kernel()         # nobody there to end it
        web3.start_fleet()
        fleet.wait_banned([web3], "192.0.2.44", jail="modsec-fleet-recidive")
        fleet.wait_unbanned([web3], "192.0.2.42", timeout=5)
        assert web3.ban_lines("modsec-fleet", "192.0.2.43") == 0
        assert "ended while the fleet daemon was away" in web3.fleet_log()

        # nothing was applied twice anywhere
        for server in (web2, web3):
            assert server.ban_lines("modsec-fleet-recidive", "192.0.2.40") == 1
            assert server.ban_lines("modsec-fleet-recidive", "192.0.2.44") == 1
        # expired rows are purged by their node (heartbeat: 5 s)
        f2b.wait_for(lambda: not db.rows("SELECT ip FROM fleet_bans WHERE end_time < "
                                         "UNIX_TIMESTAMP()"), timeout=12,
                     what=f"purge: {db.rows('SELECT ip, end_time FROM fleet_bans')}")
        assert {ip for ip, in db.rows("SELECT ip FROM fleet_bans")} == \
            {"192.0.2.40", "192.0.2.44"}


def test_killed_between_commit_and_cursor_file_publishes_nothing_twice(
        mariadb, tmp_path: Path) -> None:
    with FleetDb.on(mariadb) as db, Fleet(tmp_path, db, bantime=600) as fleet:
        web1, web2 = fleet.start(2)
        web1.f2b.banip("modsec", "192.0.2.50", "192.0.2.51")
        fleet.wait_banned([web2], "192.0.2.51")
        web1.stop_fleet(signal.SIGKILL)
        cursor = web1.state / "fleet" / "cursor"
        assert cursor.read_text().strip() == "2"
        cursor.write_text("0\n")               # as if killed before the file was written
        web1.f2b.banip("modsec", "192.0.2.52")
        web1.start_fleet()
        fleet.wait_banned([web2], "192.0.2.52")
        for ip in ("192.0.2.50", "192.0.2.51", "192.0.2.52"):
            assert _rows(db, ip) == [("web1", "ban", "modsec")], ip
            assert web2.ban_lines("modsec-fleet", ip) == 1
        # the database forgot this node's cursor too (a restored dump): the unique key
        # still keeps each ban once
        web1.stop_fleet(signal.SIGKILL)
        cursor.write_text("0\n")
        conn = db.admin()
        try:
            with conn.cursor() as cur:
                cur.execute("UPDATE fleet_nodes SET f2b_cursor = 0 WHERE node = 'web1'")
        finally:
            conn.close()
        web1.start_fleet()
        f2b.wait_for(lambda: cursor.read_text().strip() == "3", timeout=10)
        assert len(db.rows("SELECT seq FROM fleet_bans WHERE node = 'web1'")) == 3
