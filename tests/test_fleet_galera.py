"""Fleet bans on a 3-node MariaDB Galera cluster (galera-4) on loopback ports: each server's
daemon starts with its own database node and fails over to the next when that node is lost;
bans made meanwhile go through; the lost node rejoins."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.realparts.fixtures import require
from tests.test_fleet_harness import REPO, Fleet, GaleraCluster

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def galera() -> Iterator[GaleraCluster]:
    with require(GaleraCluster) as cluster:
        yield cluster


def test_bans_cross_galera_and_survive_a_lost_node(galera: GaleraCluster, tmp_path: Path) -> None:
    with galera.database() as db, Fleet(tmp_path, db, bantime=600) as fleet:
        web1, web2, web3 = fleet.start(3, inside=False)
        web1.f2b.banip("modsec", "192.0.2.60")
        took = fleet.wait_banned([web2, web3], "192.0.2.60")
        print(f"web1 (g1) -> web2 (g2), web3 (g3): {took:.3f} s")

        # g3, web3's database node, is lost: web3 moves to g1; the cluster (2 of 3) goes on
        galera.nodes[2].kill()
        web3.f2b.banip("modsec", "192.0.2.61")
        web1.f2b.banip("modsec", "192.0.2.62")
        fleet.wait_banned([web1, web2], "192.0.2.61", timeout=20)
        fleet.wait_banned([web3], "192.0.2.62", timeout=20)
        assert "database unreachable" in web3.fleet_log()
        assert f"connected to 127.0.0.1:{galera.nodes[0].port}" in web3.fleet_log()
        for ip in ("192.0.2.60", "192.0.2.61", "192.0.2.62"):
            assert len(db.rows("SELECT seq FROM fleet_bans WHERE ip = %s", ip)) == 1
        for server in (web1, web2):
            assert server.ban_lines("modsec-fleet", "192.0.2.61") == 1

        # it rejoins (state transfer) and has every row; status sees the three nodes
        galera.nodes[2].start()
        galera.wait_synced(3)
        assert {ip for ip, in galera.nodes[2].sql(
            f"SELECT ip FROM `{db.database}`.fleet_bans")} >= {"192.0.2.60", "192.0.2.61", "192.0.2.62"}
        status = subprocess.run(
            [sys.executable, "-m", "modsec_tools.cli", "fleet", "status", "--config",
             str(web3.write_config())], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert [line.split()[0] for line in lines[2:5]] == ["web1", "web2", "web3"], status.stdout
        assert "galera: Primary, cluster size 3" in status.stdout, status.stdout
        assert "this server (web3): database up" in status.stdout, status.stdout
