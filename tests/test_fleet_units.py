"""The fleet's pieces that need no server: row validation, the ignore guard, fail2ban's
socket answers, rule ids from fail2ban's matches, the database URL, the settings."""
from __future__ import annotations

import json
import pickle

import pytest

from modsec_tools import config
from modsec_tools.fleet import f2bsocket, schema, target
from modsec_tools.fleet.f2bdb import rules_of
from modsec_tools.fleet.rows import SharedRow
from modsec_tools.fleet.settings import parse_duration
from modsec_tools.fleet.validate import Guard, Limits, Rejected, address, parse_max_prefix, validate
from tests.f2b_harness import event_line

NOW = 1_800_000_000.0
LIMITS = Limits(max_bantime=3600)


def row(**changes: object) -> SharedRow:
    values = dict(node="web1", seq=7, kind="ban", jail="modsec", ip="192.0.2.7",
                  time_of_ban=int(NOW) - 10, bantime=600, end_time=int(NOW) + 590, bancount=1,
                  rules="942100,949110", published=NOW - 1)
    values.update(changes)
    return SharedRow(**values)


def test_a_good_row_becomes_a_fleet_ban() -> None:
    ban = validate(row(), LIMITS, NOW)
    assert (ban.origin, ban.jail, ban.ip, ban.end, ban.rules) == \
        ("web1", "modsec-fleet", "192.0.2.7", NOW - 10 + 600, "942100,949110")
    assert validate(row(jail="modsec-recidive"), LIMITS, NOW).jail == "modsec-fleet-recidive"
    assert validate(row(ip="::ffff:192.0.2.8"), LIMITS, NOW).ip == "192.0.2.8"
    assert validate(row(ip="2001:DB8:0::1"), LIMITS, NOW).ip == "2001:db8::1"


@pytest.mark.parametrize("bantime", [-1, 10 ** 9])
def test_bantime_is_bounded(bantime: int) -> None:
    assert validate(row(bantime=bantime), LIMITS, NOW).end == NOW - 10 + 3600


@pytest.mark.parametrize("changes", [
    {"ip": "0.0.0.0"}, {"ip": "255.255.255.255"}, {"ip": "224.0.0.1"}, {"ip": "ff02::1"},
    {"ip": "127.0.0.2"}, {"ip": "::1"}, {"ip": "fe80::1"}, {"ip": "fe80::1%eth0"},
    {"ip": "10.0.0.0/24"}, {"ip": "192.0.2.1/31"}, {"ip": "010.0.0.1"}, {"ip": "host.example"},
    {"ip": "1.2.3.4 5.6.7.8"}, {"ip": "1.2.3.4\n"}, {"ip": "x" * 65}, {"ip": None},
    {"ip": b"1.2.3.4"}, {"jail": "sshd"}, {"jail": "modsec-fleet"}, {"kind": "drop"},
    {"node": "web 1"}, {"node": ""}, {"node": None}, {"bantime": 0}, {"bantime": -2},
    {"bantime": "600"}, {"bantime": True}, {"time_of_ban": int(NOW) + 3600},
    {"time_of_ban": 1.5}, {"seq": "7"}, {"published": "now"}, {"published": float("nan")},
])
def test_hostile_rows_are_refused(changes: dict) -> None:
    with pytest.raises(Rejected):
        validate(row(**changes), LIMITS, NOW)


def test_odd_rules_are_dropped_not_the_ban() -> None:
    for rules in ("942100;DROP TABLE", "1" * 300, None, "9,", ","):
        assert validate(row(rules=rules), LIMITS, NOW).rules == ""


def test_networks_no_wider_than_allowed() -> None:
    wide = Limits(*parse_max_prefix("24,64"))
    assert address("198.51.100.0/24", wide) == "198.51.100.0/24"
    assert address("2001:db8:1::/64", wide) == "2001:db8:1::/64"
    assert address("198.51.100.7/32", LIMITS) == "198.51.100.7"
    for text in ("198.51.100.0/23", "2001:db8::/48", "127.0.0.0/24", "198.51.100.1/24"):
        with pytest.raises(Rejected):
            address(text, wide)
    for text in ("32", "33,128", "24,8", "a,b"):
        with pytest.raises(ValueError):
            parse_max_prefix(text)


def test_guard_covers_ignoreip_proxies_and_networks() -> None:
    guard = Guard(config.parse_networks_text("203.0.113.5"))
    guard.refresh(["192.0.2.0/28", "2001:db8::1", "localhost"], ignoreself=False)
    assert guard.ignored("192.0.2.9") is not None
    assert guard.ignored("203.0.113.5") is not None       # a trusted proxy
    assert guard.ignored("2001:db8::1") is not None
    assert guard.ignored("127.0.0.1") is not None         # a name, resolved
    assert guard.ignored("192.0.2.16") is None
    assert guard.ignored("192.0.2.0/24") is not None      # a network that holds one of ours
    guard.refresh([], ignoreself=False)
    assert guard.ignored("192.0.2.9") is None and guard.ignored("203.0.113.5") is not None


def test_fail2ban_answers_name_no_class() -> None:
    load = lambda data: f2bsocket._Unpickler(__import__("io").BytesIO(data)).load()  # noqa: E731
    assert load(pickle.dumps([0, ["192.0.2.1", 3, {"a": (1.0, None)}]])) == \
        [0, ["192.0.2.1", 3, {"a": (1.0, None)}]]
    assert isinstance(load(pickle.dumps([1, ValueError("x")]))[1], ValueError)
    with pytest.raises(pickle.UnpicklingError):
        load(b"cos\nsystem\n(S'true'\ntR.")                 # protocol 0: os.system('true')
    remote = b"cfail2ban.server.jails\nUnknownJailException\n(S'nojail'\ntR."
    error = load(remote)
    assert isinstance(error, f2bsocket.RemoteError) and "nojail" in str(error)


def test_rule_ids_come_from_our_prefix_only() -> None:
    forged = event_line("192.0.2.7", rules=("942100", "949110"),
                        uri=b"/?x= rules=1,2,3 id=forged")
    other = event_line("192.0.2.7", rules=("920350",))
    data = json.dumps({"matches": [forged, other, other], "failures": 3})
    assert rules_of(data) == "942100,949110,920350"
    assert rules_of(data.encode()) == "942100,949110,920350"
    assert rules_of('{"matches": [["2026-01-01", " modsec[w]: client=1.2.3.4 verdict=blocked'
                    ' status=403 phase=2 score=5 severity=CRITICAL rules=1,2 id=x"]]}') == "1,2"
    for junk in (None, "", "not json", "[]", '{"matches": 5}', b"\xff"):
        assert rules_of(junk) == ""


def test_database_url_and_its_transport() -> None:
    galera = target.parse("mysql://web1@127.0.0.1:3307,[::1]:3308,localhost/fleet")
    assert galera.places() == [("127.0.0.1", 3307), ("::1", 3308), ("localhost", 3306)]
    assert galera.user == "web1" and galera.database == "fleet"
    assert target.parse("mysql://web1@localhost/f?unix_socket=/run/x.sock").places() == \
        [("localhost", 0)]
    with pytest.raises(target.TargetError, match="needs TLS"):
        target.parse("mysql://web1@db1.example:3306/fleet")
    for bad in ("postgres://a@b/c", "mysql://a@b", "mysql://a@b/c?ssl=1", "mysql://a@b:x/c",
                "mysql://a@b:99999/c"):
        with pytest.raises(target.TargetError):
            target.check_url(bad)
    assert target.redacted("mysql://web1:secret@db/f") == "mysql://web1:***@db/f"
    assert "secret" not in repr(target.parse("mysql://web1:secret@127.0.0.1/f"))


def test_tls_settings_come_from_the_option_file(tmp_path) -> None:
    option_file = tmp_path / "my.cnf"
    option_file.write_text("[client]\npassword = pw\nssl-ca = /etc/ssl/certs/ca-certificates.crt\n")
    tls = target.parse("mysql://web1@db1.example/fleet", str(option_file))
    assert tls.tls == {"ssl-ca": "/etc/ssl/certs/ca-certificates.crt"}
    args = tls.connect_args("db1.example", 3306)
    assert args["ssl"].check_hostname and args["read_default_file"] == str(option_file)


def test_settings_keys() -> None:
    settings = config.build({"fleet": "yes", "fleet_max_bantime": "1d 12h",
                             "fleet_max_prefix": "24, 64",
                             "fleet_db": "mysql://web1@localhost/fleet"}, {})
    assert settings.fleet is True and settings.fleet_max_bantime == 129600
    assert settings.fleet_max_prefix == (24, 64) and settings.fleet_propagate_unban is False
    for key, value in (("fleet", "maybe"), ("fleet_max_bantime", "5 fortnights"),
                       ("fleet_db", "mysql://nodb@x"), ("fleet_max_prefix", "0,0")):
        with pytest.raises(config.ConfigError):
            config.build({key: value}, {})
    assert parse_duration("5w") == 5 * 7 * 86400


def test_grants_quote_only_plain_names() -> None:
    statements = schema.grants("web1", "10.0.0.%", "modsec")
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON `modsec`.`fleet_own_bans` TO " \
           "'web1'@'10.0.0.%'" in statements
    assert not any("fleet_bans` TO" in s and "INSERT" in s for s in statements)
    for node, host, database in (("web'1", "%", "m"), ("web1", "a'b", "m"),
                                 ("web1", "%", "m`x")):
        with pytest.raises(ValueError):
            schema.grants(node, host, database)


def test_debian_ships_the_packaged_fleet_unit() -> None:
    from tests.f2b_harness import REPO
    packaged = (REPO / "packaging" / "modsec-tools-fleet.service").read_text()
    assert (REPO / "debian" / "modsec-tools.modsec-tools-fleet.service").read_text() == packaged
