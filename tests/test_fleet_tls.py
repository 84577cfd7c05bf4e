"""The fleet's database connection over TCP is TLS, verified: a server certificate from
the CA in the option file (name checked) is accepted, another CA's is refused; a user
created REQUIRE SSL connects."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from modsec_tools.fleet.store import DatabaseDown, NotPermitted, Store
from modsec_tools.fleet.target import parse
from tests.realparts import MariaDB
from tests.realparts.fixtures import require
from tests.test_fleet_harness import FleetDb


def _ca(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    directory.mkdir()
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.pem", "server.key",
                                                          "server.csr", "server.pem"))
    run = lambda *argv: subprocess.run(["openssl", *argv], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        f"/CN={name} test CA", "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key),
        "-out", str(csr))
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName = IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert))
    for path in directory.iterdir():
        path.chmod(0o644)
    directory.chmod(0o755)
    return ca, cert, key


def test_tcp_connection_is_verified_tls(tmp_path: Path) -> None:
    ca, cert, key = _ca(tmp_path / "pki", "fleet")
    other_ca, _, _ = _ca(tmp_path / "other", "other")
    server = require(lambda: MariaDB(extra_args=[f"--ssl-ca={ca}", f"--ssl-cert={cert}",
                                                 f"--ssl-key={key}"]))
    with server, FleetDb.on(server) as db:
        password = db.add_node("web1")
        server.sql("ALTER USER 'web1'@'127.0.0.1' REQUIRE SSL")
        url = f"mysql://web1@127.0.0.1:{server.port}/{db.database}"

        def store(ca_file: Path) -> Store:
            option_file = tmp_path / f"{ca_file.parent.name}.cnf"
            option_file.write_text(f"[client]\npassword = {password}\nssl-ca = {ca_file}\n")
            return Store(parse(url, str(option_file)), "web1")

        verified = store(ca)
        verified.open()
        with verified.conn.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            assert cursor.fetchone()[1].startswith("TLSv1."), "not encrypted"
        verified.close()
        with pytest.raises((DatabaseDown, NotPermitted), match="CERTIFICATE_VERIFY_FAILED"):
            store(other_ca).open()
