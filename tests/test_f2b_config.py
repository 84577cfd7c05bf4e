"""The shipped jail.d/modsec.conf and the action's option parsing (no kernel, no root needed)."""
from __future__ import annotations

import configparser
import json
import subprocess
import textwrap
from pathlib import Path

from tests.f2b_harness import BUNDLE, FAIL2BAN_CLIENT, PYTHON, make_confdir

ACTION = BUNDLE / "action.d" / "modsec-block.py"


def _jails() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(interpolation=None)
    parser.read(BUNDLE / "jail.d" / "modsec.conf")
    return parser


def test_jails_ship_disabled_with_the_documented_policy():
    jails = _jails()
    assert jails.sections() == ["modsec", "modsec-recidive"]
    modsec, recidive = jails["modsec"], jails["modsec-recidive"]
    assert modsec["enabled"] == recidive["enabled"] == "false"
    assert (modsec["maxretry"], modsec["findtime"], modsec["bantime"]) == ("10", "60", "1h")
    assert modsec["bantime.increment"] == "true" and modsec["bantime.maxtime"] == "4w"
    assert modsec["logpath"] == "/var/log/modsec-tools/events.log"
    assert modsec["backend"] == "pyinotify" and modsec["mode"] == "blocked"
    assert modsec["action"].startswith("modsec-block.py[")
    assert (recidive["maxretry"], recidive["findtime"], recidive["bantime"]) == ("3", "1d", "1w")
    assert recidive["filter"] == "modsec-recidive" and "port=all" in recidive["action"]


def test_enabled_jails_pass_fail2bans_configuration_test(tmp_path: Path):
    for name in ("events.log", "fail2ban.log"):
        (tmp_path / name).touch()
    conf = make_confdir(tmp_path, textwrap.dedent(f"""\
        [modsec]
        enabled = true
        logpath = {tmp_path}/events.log
        [modsec-recidive]
        enabled = true
        logpath = {tmp_path}/fail2ban.log
        """))
    test = subprocess.run([FAIL2BAN_CLIENT, "-c", str(conf), "-t"], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr + test.stdout
    dump = subprocess.run([FAIL2BAN_CLIENT, "-c", str(conf), "-d"], capture_output=True, text=True).stdout
    assert "'addaction', 'modsec-block'" in dump and '"port": "all"' in dump
    assert "'bantime.increment', True]" in dump and "'bantime.maxtime', '4w'" in dump


_PARSE = r"""
import importlib.machinery, json, sys
mod = importlib.machinery.SourceFileLoader("modsec-block", sys.argv[1]).load_module()
out = {}
for label, opts in json.loads(sys.argv[2]).items():
    try:
        s = mod.Settings.parse("modsec", opts)
        out[label] = {"ports": s.ports, "name": s.name, "rawdrop": s.rawdrop, "maxtimeout": s.maxtimeout}
    except (ValueError, OSError) as e:
        out[label] = "error: " + str(e)
print(json.dumps(out))
"""


def test_action_options_are_parsed_strictly():
    cases = {
        "default": {},
        "services and ranges": {"port": "http, https,8000:8100,9000-9001"},
        "all": {"port": "all", "rawdrop": "yes"},
        "long name": {"name": "modsec-a-very-long-jail-name-indeed"},
        "cap": {"maxtimeout": "99999999"},
        "typo": {"blocktyp": "DROP"},
        "reject in raw": {"blocktype": "REJECT", "rawdrop": "true"},
        "bad backend": {"backend": "pf"},
        "bad port": {"port": "70000"},
        "too many ports": {"port": ",".join(str(p) for p in range(1000, 1016))},
    }
    proc = subprocess.run([PYTHON, "-c", _PARSE, str(ACTION), json.dumps(cases)], capture_output=True, text=True,
                          check=True)
    got = json.loads(proc.stdout)
    assert got["default"] == {"ports": [[80, 80], [443, 443]], "name": "mt-modsec", "rawdrop": False,
                              "maxtimeout": 2147483}
    assert got["services and ranges"]["ports"] == [[80, 80], [443, 443], [8000, 8100], [9000, 9001]]
    assert got["all"]["ports"] is None and got["all"]["rawdrop"] is True
    name = got["long name"]["name"]
    assert len(name) <= 24 and name.startswith("modsec-a-very")       # ipset/iptables limits
    assert got["cap"]["maxtimeout"] == 2147483
    for label in ("typo", "reject in raw", "bad backend", "bad port", "too many ports"):
        assert str(got[label]).startswith("error:"), label
