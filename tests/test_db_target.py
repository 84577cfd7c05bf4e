"""What a --db URL becomes: the connection parameters handed to sqlite3 / PyMySQL."""
from __future__ import annotations

import subprocess

import pytest

from modsec_tools.db import open_database, parse_target
from tests.realparts.fixtures import require
from tests.realparts.mariadb import MariaDB

SOCKET_URL = "mysql://u@localhost/db?unix_socket=/run/mysqld/mysqld.sock"


def _params(url: str, option_file: str = "") -> dict:
    return dict(parse_target(url, option_file).params)


def test_no_tls_over_a_unix_socket():
    """PyMySQL >= 1.2 would try TLS (and build a context from the CA store, ~0.1 s of CPU
    at each connect) where it protects nothing."""
    assert _params(SOCKET_URL)["ssl_disabled"] is True


@pytest.mark.parametrize("url", [
    "mysql://u@db.example/db", "mysql://u@10.0.0.5/db", "mysql://u@[2001:db8::1]:3306/db",
    # a loopback address may be a forwarder to another host; no host at all may be the
    # option file's
    "mysql://u@127.0.0.1/db", "mysql://u@localhost/db", "mysql://u@[::1]/db", "mysql:///db"])
def test_tls_left_to_pymysql_over_tcp(url):
    assert "ssl_disabled" not in _params(url)


def test_tls_options_in_the_option_file_are_respected(tmp_path, monkeypatch):
    plain = tmp_path / "plain.cnf"
    plain.write_text("[client]\npassword = x\n")
    tls = tmp_path / "tls.cnf"
    tls.write_text("[client]\npassword = x\nssl_ca = /etc/mysql/ca.pem\n")
    assert _params(SOCKET_URL, str(plain))["ssl_disabled"] is True
    assert "ssl_disabled" not in _params(SOCKET_URL, str(tls))
    assert _params(SOCKET_URL, str(tls))["read_default_file"] == str(tls)
    monkeypatch.setenv("HOME", str(tmp_path))   # ~ expanded, as PyMySQL expands it
    assert "ssl_disabled" not in _params(SOCKET_URL, "~/tls.cnf")


def _cipher(url: str, option_file: str = "") -> str:
    db = open_database(parse_target(url, option_file))
    try:
        db.connect()
        with db.conn.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            return cursor.fetchone()[1]
    finally:
        db.close()


def test_against_a_server_offering_tls(tmp_path):
    """A real server with TLS on: over its Unix socket the connection stays plain; over
    loopback TCP PyMySQL's choice stands (TLS); with ssl-ca in the option file the socket
    connection is encrypted too (the administrator's choice is kept)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    options = tmp_path / "client.cnf"
    options.write_text(f"[client]\nssl-ca = {cert}\n")
    with require(lambda: MariaDB(tmp_path / "server", extra_args=[
            f"--ssl-cert={cert}", f"--ssl-key={key}"])) as server:
        assert server.sql("SHOW VARIABLES LIKE 'have_ssl'")[0][1] == "YES"
        socket_url = server.url_for(server.database, unix_socket=True)
        assert _cipher(socket_url) == ""
        assert _cipher(server.url) != ""
        assert _cipher(socket_url, str(options)) != ""
