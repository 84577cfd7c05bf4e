"""Fleet bans on a 3-node MariaDB Galera cluster (galera-4) on loopback ports, each server's
daemon starting with its own database node: an attack on web1's Apache + ModSecurity is
refused by web2 and web3; when a database node is cut off from the others (it answers but
refuses queries) or crashes, its server fails over to the next,
bans made meanwhile go through once; a server whose daemon was down catches up on the bans
in force and skips the expired ones; the lost node rejoins."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests import f2b_harness as f2b
from tests.realparts.fixtures import require
from tests.test_fleet_harness import ATTACK_BANTIME, REPO, Fleet, GaleraCluster, attack_web1

pytestmark = pytest.mark.root

SHORT = 3         # the modsec jail's bantime in the second test; modsec-recidive: 60 s


@pytest.fixture(scope="module")
def galera() -> Iterator[GaleraCluster]:
    with require(GaleraCluster) as cluster:
        yield cluster


def test_attack_on_web1_is_refused_by_web2_and_web3(galera: GaleraCluster,
                                                    tmp_path: Path) -> None:
    with galera.database() as db, Fleet(tmp_path, db, bantime=ATTACK_BANTIME) as fleet:
        attack_web1(fleet, tmp_path, *fleet.start(3, inside=False))


def test_a_lost_node_and_a_late_server(galera: GaleraCluster, tmp_path: Path) -> None:
    with galera.database() as db, Fleet(tmp_path, db, bantime=SHORT) as fleet:
        web1, web2, web3 = fleet.start(3, inside=False)

        # g3, web3's database node, is cut off from the others: it still answers, but
        # outside the primary component it refuses queries; web3 moves to g1, the cluster
        # (2 of 3) goes on. Then g3 crashes.
        galera.nodes[2].sql("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
        f2b.wait_for(lambda: f"connected to 127.0.0.1:{galera.nodes[0].port}" in
                     web3.fleet_log(), timeout=30, what=web3.fleet_log())
        galera.nodes[2].kill()
        web3.f2b.banip("modsec-recidive", "192.0.2.61")
        web1.f2b.banip("modsec-recidive", "192.0.2.62")
        fleet.wait_banned([web1, web2], "192.0.2.61", "modsec-fleet-recidive", timeout=20)
        fleet.wait_banned([web3], "192.0.2.62", "modsec-fleet-recidive", timeout=20)
        assert "database unreachable" in web3.fleet_log()

        # web2's daemon is down while web1 bans twice: one ban ends before it is back
        web2.stop_fleet()
        web1.f2b.banip("modsec", "192.0.2.63")
        web1.f2b.banip("modsec-recidive", "192.0.2.64")
        time.sleep(SHORT + 1)
        web2.start_fleet()
        fleet.wait_banned([web2], "192.0.2.64", "modsec-fleet-recidive")
        assert web2.ban_lines("modsec-fleet", "192.0.2.63") == 0

        # nothing published or applied twice
        for ip in ("192.0.2.61", "192.0.2.62", "192.0.2.63", "192.0.2.64"):
            assert len(db.rows("SELECT seq FROM fleet_bans WHERE ip = %s", ip)) <= 1
        for server in (web1, web2):
            assert server.ban_lines("modsec-fleet-recidive", "192.0.2.61") == 1

        # g3 rejoins (state transfer) with every row; status sees the three nodes
        galera.nodes[2].start()
        galera.wait_synced(3)
        assert {ip for ip, in galera.nodes[2].sql(f"SELECT ip FROM `{db.database}`.fleet_bans")} \
            >= {"192.0.2.61", "192.0.2.62", "192.0.2.64"}
        status = subprocess.run(
            [sys.executable, "-m", "modsec_tools.cli", "fleet", "status", "--config",
             str(web3.write_config())], cwd=REPO, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert [line.split()[0] for line in lines[2:5]] == ["web1", "web2", "web3"], status.stdout
        assert "galera: Primary, cluster size 3" in status.stdout, status.stdout
        assert "this server (web3): database up" in status.stdout, status.stdout
