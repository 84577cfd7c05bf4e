"""`modsec-tools config check` says what `fleet run` would stop on, against a real MariaDB:
no fleet_db, tables not migrated, a node connecting as another node's user, no fail2ban."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from modsec_tools import config
from modsec_tools.fleet import check
from tests.test_fleet_harness import REPO, FleetDb

pytestmark = pytest.mark.root


def _settings(tmp_path: Path, db: FleetDb | None, node: str = "web1", **extra: str):
    f2b_socket = tmp_path / "f2b.sock"
    if not f2b_socket.exists():
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(f2b_socket))        # a socket file is all the check looks at
        listener.close()
    values = {"node": node, "fleet": "yes", "state_dir": str(tmp_path / "state"),
              "fleet_fail2ban_socket": str(f2b_socket), "db": "none"}
    if db is not None:
        option_file = tmp_path / "fleet.cnf"
        option_file.write_text(f"[client]\npassword = {db.passwords[node]}\n")
        option_file.chmod(0o600)
        values.update(fleet_db=db.url(node, inside=True), fleet_db_option_file=str(option_file))
    values.update(extra)
    return values


def _problems(values: dict[str, str]) -> list[tuple[str, str]]:
    return check.problems(config.build({}, values))


def test_a_ready_node_has_no_fleet_problem(mariadb, tmp_path: Path) -> None:
    with FleetDb.on(mariadb) as db:
        db.add_node("web1")
        values = _settings(tmp_path, db)
        assert _problems(values) == []
        assert _problems({**values, "fleet": "no", "fleet_db": ""}) == []   # fleet off


def test_what_fleet_run_would_stop_on_is_said(mariadb, tmp_path: Path) -> None:
    assert _problems(_settings(tmp_path, None)) == [
        ("error", "fleet = yes but fleet_db is not set (mysql://NODE@host:port/database, "
                  "docs/fleet.md)")]
    with FleetDb.on(mariadb, upto=0) as db:             # the tables were never migrated
        _user_without_tables(db, "web1")
        values = _settings(tmp_path, db)
        [(level, text)] = _problems(values)
        assert level == "error" and "run 'modsec-tools fleet migrate'" in text, text
        db.migrate()
        db.add_node("web1")
        db.add_node("web2")
        # web2's password and user in web1's settings: rows would be written under web2's name
        [(level, text)] = _problems({**_settings(tmp_path, db, node="web2"), "node": "web1"})
        assert level == "error" and "this node is 'web1' but connects as 'web2'" in text, text
        values = _settings(tmp_path, db)                 # web1's own password again
        assert _problems(values) == []
        wrong = {**values, "fleet_fail2ban_socket": str(tmp_path / "no-such.sock")}
        [(level, text)] = _problems(wrong)
        assert level == "warning" and "no-such.sock does not exist" in text, text
        (tmp_path / "fleet.cnf").write_text("[client]\npassword = wrong\n")
        [(level, text)] = _problems(values)
        assert level == "error" and "Access denied for user 'web1'" in text, text


def _user_without_tables(db: FleetDb, node: str) -> None:
    """The node's user as an admin who skipped `fleet migrate` leaves it (the fleet's own
    GRANTs name tables, which do not exist yet)."""
    password = db.passwords.setdefault(node, "pw-" + node)
    conn = db.superuser()
    try:
        with conn.cursor() as cursor:
            cursor.execute("CREATE OR REPLACE USER %s@'localhost' IDENTIFIED BY %s",
                           (node, password))
            cursor.execute(f"GRANT SELECT ON `{db.database}`.* TO %s@'localhost'", (node,))
    finally:
        conn.close()


def test_config_check_command_reports_the_fleet(mariadb, tmp_path: Path) -> None:
    with FleetDb.on(mariadb, upto=0) as db:
        _user_without_tables(db, "web1")
        values = _settings(tmp_path, db)
        conf = tmp_path / "modsec-tools.conf"
        conf.write_text("[modsec-tools]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
        done = subprocess.run([sys.executable, "-m", "modsec_tools.cli", "config", "check",
                               "--config", str(conf)], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 1, done
        assert "the fleet tables do not exist yet" in done.stdout + done.stderr, done
