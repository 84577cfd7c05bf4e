"""Rolling upgrades: servers one schema version apart share the fleet tables and keep
working while bans flow. "Old code" is this code pinned to schema 1 (what a release that
knew only schema 1 speaks); the migration runs under load, one node moves up by itself,
another is restarted on the new code, and every ban still reaches every other server."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from modsec_tools.fleet import schema
from modsec_tools.fleet.f2bsocket import Fail2BanSocket
from modsec_tools.fleet.store import Store
from modsec_tools.fleet.target import parse
from tests import f2b_harness as f2b
from tests.test_fleet_harness import Fleet, FleetDb, Server

pytestmark = pytest.mark.root

OLD = {"MODSEC_TOOLS_FLEET_SCHEMA": "1"}


class Load:
    """Bans a new address every 50 ms on each of the given servers, until stopped."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.banned: dict[str, str] = {}          # address -> the server that banned it
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        sockets = {server.name: Fail2BanSocket(str(server.f2b.sock)) for server in self.servers}
        count = 0
        while not self.stop.is_set():
            for server in self.servers:
                count += 1
                address = f"198.51.100.{count % 250 + 1}" if count < 250 else \
                    f"203.0.113.{count % 250 + 1}"
                if address in self.banned:
                    continue
                sockets[server.name].send("set", "modsec", "banip", address)
                self.banned[address] = server.name
            time.sleep(0.05)
        for sock in sockets.values():
            sock.close()


def _speaks(db: FleetDb) -> dict[str, int]:
    return dict(db.rows("SELECT node, speaks FROM fleet_nodes"))


def test_rolling_upgrade_under_load(mariadb, tmp_path: Path) -> None:
    with FleetDb.on(mariadb, upto=1) as db, Fleet(tmp_path, db, bantime=600) as fleet:
        web1 = fleet.add("web1", env=OLD)
        web2 = fleet.add("web2")                      # new code, old tables: speaks 1
        web3 = fleet.add("web3", env=OLD)
        assert _speaks(db) == {"web1": 1, "web2": 1, "web3": 1}
        with Load([web1, web2, web3]) as load:
            time.sleep(1)
            db.migrate(2)                             # under load
            f2b.wait_for(lambda: _speaks(db)["web2"] == 2, timeout=10)   # moved up itself
            web3.stop_fleet()                         # upgraded: restarted on the new code
            web3.start_fleet()
            time.sleep(2)
        assert _speaks(db) == {"web1": 1, "web2": 2, "web3": 2}
        assert len(load.banned) > 60
        servers = {server.name: server for server in (web1, web2, web3)}

        def everywhere() -> list[str]:
            kernels = {name: set(server.kernel()) for name, server in servers.items()}
            return [f"{ip} (from {origin}) not on {name}" for ip, origin in load.banned.items()
                    for name in servers if name != origin and ip not in kernels[name]]
        try:
            f2b.wait_for(lambda: not everywhere(), timeout=20)
        except TimeoutError:
            pytest.fail("\n".join(everywhere()[:20]))
        assert not db.rows("SELECT node FROM fleet_nodes WHERE rejected > 0")
        for server in servers.values():
            assert "ERROR" not in server.fleet_log(), server.fleet_log()
        # schema 2 rows carry rule ids (none here: banip has no matched lines); old nodes'
        # rows were written without the column and read back with its default
        assert db.rows("SELECT COUNT(*) FROM fleet_bans WHERE rules <> ''") == [(0,)]


def test_migrations_share_one_lock_whatever_the_url(mariadb) -> None:
    """Two servers migrate at once, one over the socket, one over TCP (the lock is named
    after DATABASE(), not after how a URL spells the server): both succeed, once."""
    name = mariadb.create_database()
    try:
        errors: list[BaseException] = []
        results: list[tuple[int, int]] = []

        def migrate(unix_socket: bool) -> None:
            conn = mariadb.connect(name, unix_socket=unix_socket)
            try:
                results.append(schema.migrate(conn))
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                conn.close()
        threads = [threading.Thread(target=migrate, args=(flag,)) for flag in (True, False)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert sorted(results) == [(0, 2), (2, 2)]
        conn = mariadb.connect(name)
        with conn.cursor() as cursor:
            assert schema.state(cursor) == schema.SchemaState(2, 1)
        conn.close()
    finally:
        mariadb.drop_database(name)


def test_a_node_refuses_tables_too_new_for_it(mariadb, tmp_path: Path) -> None:
    with FleetDb.on(mariadb) as db:
        password = db.add_node("web1")
        option_file = tmp_path / "web1.cnf"
        option_file.write_text(f"[client]\npassword = {password}\n")
        conn = db.admin()
        with conn.cursor() as cursor:
            cursor.execute("UPDATE fleet_meta SET value = '3' WHERE name = 'readable_by'")
        conn.close()
        store = Store(parse(f"mysql://web1@127.0.0.1:{mariadb.port}/{db.database}",
                            str(option_file)), "web1")
        with pytest.raises(schema.SchemaError, match="upgrade modsec-tools"):
            store.open()
        assert not store.up
        # and a node whose user is not named after it is refused before it writes anything
        impostor = Store(parse(f"mysql://web1@127.0.0.1:{mariadb.port}/{db.database}",
                               str(option_file)), "web2")
        with pytest.raises(Exception, match="named after it"):
            impostor.open()
        assert db.rows("SELECT node FROM fleet_nodes") == []
