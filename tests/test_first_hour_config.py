"""What ``config check`` and install.sh find in Apache's and fail2ban's configuration
(modsec_tools.serverconf), on staged copies of a Debian server: is ModSecurity set up so
that our jails can ban at all?

The state a newcomer meets (issue 17): Debian ships only ``modsecurity.conf-recommended``
(SecRuleEngine DetectionOnly, Serial audit log); copied as modsecurity.conf, the engine only
detects, and the jail in ``mode = blocked`` never bans. ``config check`` said 0 errors.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from modsec_tools import configcheck
from modsec_tools import serverconf
from modsec_tools.config import load

REPO = Path(__file__).resolve().parent.parent
RECOMMENDED = Path("/etc/modsecurity/modsecurity.conf-recommended")
# The lines of Debian's modsecurity.conf-recommended that matter here, in its order (used
# where libapache2-mod-security2 is not installed).
RECOMMENDED_EXCERPT = """\
# -- Rule engine initialization ----------------------------------------------
SecRuleEngine DetectionOnly
SecRequestBodyAccess On
SecAuditEngine RelevantOnly
SecAuditLogRelevantStatus "^(?:5|4(?!04))"
SecAuditLogParts ABDEFHIJZ
SecAuditLogType Serial
SecAuditLog /var/log/apache2/modsec_audit.log
"""


def stock_debian(root: Path, *, copied: bool) -> None:
    """Debian 12 after ``apt install apache2 libapache2-mod-security2 modsecurity-crs``:
    security2 enabled, /etc/modsecurity holding only the recommended file (``copied``: and
    the copy of it README.Debian asks for)."""
    def write(rel: str, text: str) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    write("etc/apache2/apache2.conf", "IncludeOptional mods-enabled/*.load\n"
          "IncludeOptional mods-enabled/*.conf\nInclude ports.conf\n"
          "IncludeOptional conf-enabled/*.conf\nIncludeOptional sites-enabled/*.conf\n"
          "User ${APACHE_RUN_USER}\nGroup ${APACHE_RUN_GROUP}\n")
    write("etc/apache2/envvars", "export APACHE_RUN_USER=www-data\n"
          "export APACHE_RUN_GROUP=www-data\nexport APACHE_LOG_DIR=/var/log/apache2$SUFFIX\n")
    write("etc/apache2/ports.conf", "Listen 80\n")
    write("etc/apache2/mods-enabled/security2.load",
          "LoadModule security2_module /usr/lib/apache2/modules/mod_security2.so\n")
    write("etc/apache2/mods-enabled/security2.conf",
          "<IfModule security2_module>\n\tSecDataDir /var/cache/modsecurity\n"
          "        IncludeOptional /etc/modsecurity/*.conf\n"
          "\tIncludeOptional /usr/share/modsecurity-crs/*.load\n</IfModule>\n")
    recommended = RECOMMENDED.read_text() if RECOMMENDED.is_file() else RECOMMENDED_EXCERPT
    write("etc/modsecurity/modsecurity.conf-recommended", recommended)
    if copied:
        write("etc/modsecurity/modsecurity.conf", recommended)


def bundle(root: Path, local: str = "[modsec]\nenabled = true\n\n"
                                    "[modsec-recidive]\nenabled = true\n") -> None:
    """fail2ban's stock jail.conf, our bundle, and the .local install.sh writes."""
    jail_d = root / "etc/fail2ban/jail.d"
    jail_d.mkdir(parents=True, exist_ok=True)
    if Path("/etc/fail2ban/jail.conf").is_file():
        shutil.copy("/etc/fail2ban/jail.conf", root / "etc/fail2ban/jail.conf")
    shutil.copy(REPO / "fail2ban/jail.d/modsec.conf", jail_d / "modsec.conf")
    (jail_d / "modsec.local").write_text(local)


def found(root: Path, storage_dir: str | None = None) -> list[serverconf.Finding]:
    return serverconf.findings(serverconf.read_apache(str(root)),
                               serverconf.read_jails(str(root)), storage_dir, str(root))


def recommended_line(pattern: str) -> int:
    text = RECOMMENDED.read_text() if RECOMMENDED.is_file() else RECOMMENDED_EXCERPT
    return next(n for n, line in enumerate(text.splitlines(), 1) if re.match(pattern, line))


# -- the engine against the jails' mode -------------------------------------------------------
def test_detection_only_with_a_blocked_jail_is_an_error_naming_both_fixes(tmp_path):
    stock_debian(tmp_path, copied=True)
    bundle(tmp_path)
    (finding,) = found(tmp_path)
    line = recommended_line(r"SecRuleEngine ")
    assert finding.level == "error"
    assert f"SecRuleEngine DetectionOnly, /etc/modsecurity/modsecurity.conf:{line}" in finding.text
    assert "jail modsec bans only intercepted requests (mode = blocked)" in finding.text
    assert "set SecRuleEngine On in /etc/modsecurity/modsecurity.conf" in finding.text
    assert "mode = detected under [modsec] in /etc/fail2ban/jail.d/modsec.local" in finding.text
    # the command it gives does switch the engine on, and then nothing is found
    (command,) = finding.commands
    assert command == f"sed -i '{line}s/DetectionOnly/On/' /etc/modsecurity/modsecurity.conf"
    conf = tmp_path / "etc/modsecurity/modsecurity.conf"
    os.system(command.replace("/etc/", f"{tmp_path}/etc/"))
    assert re.search(r"^SecRuleEngine On$", conf.read_text(), re.M)
    assert serverconf.read_apache(str(tmp_path)).engine.value == "On"
    assert found(tmp_path) == []


@pytest.mark.parametrize("local, expected", [
    ("[modsec]\nenabled = true\nmode = detected\n", []),
    ("[modsec]\nenabled = true\nmode = aggressive\n", []),
    ("[modsec]\nenabled = true\nfilter = modsec[mode=detected]\n", []),
    ("[DEFAULT]\nmode = detected\n[modsec]\nenabled = true\n", ["error"]),  # the jail's own wins
    ("[modsec]\nenabled = false\n", []),
    ("[my-modsec]\nenabled = true\nfilter = modsec\nlogpath = /x\n", ["error"]),
])
def test_the_jails_mode_is_read_as_fail2ban_reads_it(tmp_path, local, expected):
    stock_debian(tmp_path, copied=True)
    bundle(tmp_path, local)
    assert [f.level for f in found(tmp_path)] == expected


def test_engine_off_in_stock_debian_names_the_recommended_file(tmp_path):
    """Nothing copied: Apache reads no SecRuleEngine at all, and ModSecurity's default is
    Off. The fix given creates modsecurity.conf from the recommended file, switched on."""
    stock_debian(tmp_path, copied=False)
    bundle(tmp_path)
    findings = found(tmp_path, "/var/log/modsec_audit")
    assert [(f.level, f.kind) for f in findings] == [("error", "engine"), ("error", "audit_log")]
    engine, audit = findings
    assert ("SecRuleEngine Off (ModSecurity's default: Debian ships only "
            "/etc/modsecurity/modsecurity.conf-recommended, which Apache does not read)"
            in engine.text)
    assert "so the jail modsec will never ban" in engine.text
    assert "install.sh --configure-modsecurity" in audit.text
    os.system(engine.commands[0].replace("/etc/", f"{tmp_path}/etc/"))
    assert serverconf.read_apache(str(tmp_path)).engine.value == "On"


def test_no_jail_enabled_makes_it_a_warning(tmp_path):
    stock_debian(tmp_path, copied=False)
    bundle(tmp_path, "")
    assert [f.level for f in found(tmp_path)] == ["warning"]


def test_module_not_loaded(tmp_path):
    stock_debian(tmp_path, copied=True)
    bundle(tmp_path)
    (tmp_path / "etc/apache2/mods-enabled/security2.load").unlink()
    (finding,) = found(tmp_path)
    assert (finding.level, finding.kind) == ("error", "module")
    assert "a2enmod security2" in finding.text


def test_audit_log_settings_against_storage_dir(tmp_path):
    stock_debian(tmp_path, copied=True)
    bundle(tmp_path, "[modsec]\nenabled = true\nmode = detected\n")
    (serial,) = found(tmp_path, "/var/log/modsec_audit")
    line = recommended_line(r"SecAuditLogType ")
    assert serial.kind == "audit_log"
    assert f"Serial audit log (/etc/modsecurity/modsecurity.conf:{line})" in serial.text
    (tmp_path / "etc/modsecurity/zz-modsec-tools.conf").write_text(
        "SecAuditLogType Concurrent\nSecAuditLogStorageDir \"/srv/audit/\"\n")
    (moved,) = found(tmp_path, "/var/log/modsec_audit")
    assert moved.kind == "storage"
    assert "set storage_dir = /srv/audit in modsec-tools.local" in moved.text
    assert found(tmp_path, "/srv/audit") == []


def test_includes_are_followed_in_apaches_order(tmp_path):
    """The last directive Apache reads wins: conf-enabled comes after mods-enabled, a
    directory Include takes its files sorted, ${VAR} comes from envvars, a backslash
    continues a line."""
    stock_debian(tmp_path, copied=True)
    (tmp_path / "etc/apache2/conf-enabled").mkdir()
    (tmp_path / "etc/apache2/conf-enabled/security.conf").write_text(
        "Include extra\n<IfModule security2_module>\n  SecRuleEngine \\\n    On\n</IfModule>\n")
    (tmp_path / "etc/apache2/extra").mkdir()
    (tmp_path / "etc/apache2/extra/b.conf").write_text("SecAuditLog ${APACHE_LOG_DIR}/b.log\n")
    (tmp_path / "etc/apache2/extra/a.conf").write_text("SecAuditLog ${APACHE_LOG_DIR}/a.log\n")
    apache = serverconf.read_apache(str(tmp_path))
    assert apache.engine == serverconf.Setting("On", "/etc/apache2/conf-enabled/security.conf:3")
    assert apache.path("SecAuditLog").value == "/var/log/apache2/b.log"
    assert apache.user == "www-data" and apache.loaded


def test_the_storage_trees_writer_is_the_user_apache_names(tmp_path):
    """A User other than the distribution's (an ITK or hardened set-up): the reach check
    judges the tree for that user, as Apache resolves it (envvars included)."""
    stock_debian(tmp_path, copied=True)
    (tmp_path / "etc/apache2/envvars").write_text("export APACHE_RUN_USER=nobody\n"
                                                  "export APACHE_RUN_GROUP=nogroup\n")
    assert configcheck.apache_user(serverconf.read_apache(str(tmp_path))).pw_name == "nobody"
    (tmp_path / "etc/apache2/envvars").unlink()          # ${APACHE_RUN_USER} unset: the usual
    assert configcheck.apache_user(serverconf.read_apache(str(tmp_path))).pw_name == "www-data"


def test_config_check_reports_it(tmp_path, monkeypatch):
    """``config check`` adds what serverconf finds (errors count as errors), read from the
    live /etc (here: the staged tree, through serverconf's defaults)."""
    stock_debian(tmp_path, copied=True)
    bundle(tmp_path)
    real_apache, real_jails = serverconf.read_apache, serverconf.read_jails
    monkeypatch.setattr(serverconf, "read_apache", lambda root="/": real_apache(str(tmp_path)))
    monkeypatch.setattr(serverconf, "read_jails", lambda root="/": real_jails(str(tmp_path)))
    storage = tmp_path / "storage"
    storage.mkdir()
    settings = load(None, {"storage_dir": str(storage), "db": "none",
                           "state_dir": str(tmp_path / "state"),
                           "archive": str(tmp_path / "out/archive.log"),
                           "event_log": str(tmp_path / "out/events.log"),
                           "quarantine_dir": str(tmp_path / "state/quarantine")})
    errors = [text for level, text in configcheck.check(settings) if level == "error"]
    assert any("SecRuleEngine On" in text and "mode = detected" in text for text in errors), errors


# -- README's loopback tip -----------------------------------------------------------------------
def test_readmes_loopback_tip_unignores_the_address_in_every_jail(tmp_path):
    """README tells how to try a ban from 127.0.0.2: its jail.d/modsec.local, on the bundle
    and fail2ban's own files, as fail2ban reads it (fail2ban-client -d), leaves 127.0.0.2
    ignored by none of our jails and 127.0.0.1 by all. (It changed [modsec] only: the
    recidive jail went on ignoring the address.)"""
    import ipaddress
    import subprocess
    if not shutil.which("fail2ban-client") or not Path("/etc/fail2ban/jail.conf").is_file():
        pytest.skip("fail2ban is not installed (apt-get install fail2ban)")
    readme = (REPO / "README.md").read_text()
    tip = readme[readme.index("To try a ban from another loopback address"):]
    block = re.search(r"```ini\n(.*?)```", tip, re.S).group(1)
    etc = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", etc, ignore=shutil.ignore_patterns("jail.d", "*.local"))
    shutil.copytree(REPO / "fail2ban", etc, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("tests", "__pycache__", "*.local"))
    (etc / "jail.d/modsec.local").write_text(block)
    for name in ("events.log", "fail2ban.log"):
        (tmp_path / name).touch()
    (etc / "jail.d/zz-test.local").write_text(
        f"[modsec]\nlogpath = {tmp_path}/events.log\n[modsec-recidive]\n"
        f"logpath = {tmp_path}/fail2ban.log\n")
    dump = subprocess.run(["fail2ban-client", "-c", str(etc), "-d"], capture_output=True,
                          text=True, timeout=120)
    assert dump.returncode == 0, dump.stdout + dump.stderr
    ignored: dict[str, list] = {}
    for jail, *addresses in re.findall(r"^\['set', '([^']+)', 'addignoreip', (.*)\]$",
                                       dump.stdout, re.M):
        ignored[jail] = [ipaddress.ip_network(a.strip(" '"), strict=False)
                         for a in addresses[0].split(",")]
    assert set(ignored) == {"modsec", "modsec-recidive"}, dump.stdout
    for jail, networks in ignored.items():
        assert not any(ipaddress.ip_address("127.0.0.2") in n for n in networks), jail
        assert any(ipaddress.ip_address("127.0.0.1") in n for n in networks), jail
