"""install.sh, staged with --root: idempotence, detection, user files, uninstall, options.

Every run goes through ``--root DIR --no-deps`` with stub ``apt-get``, ``dnf``,
``systemctl``, ``sysctl``, ``fail2ban-client``, ``deb-systemd-invoke`` and ``service`` first
on PATH: each stub records its call, and every test checks that none was called (--root must
never touch the live system). The real interpreter is used for the venv (/usr/bin/python3,
with Debian's python3-pyinotify and python3-pymysql, so nothing is downloaded).
"""
from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(REPO, "install.sh")
JAIL_CONF = os.path.join(REPO, "fail2ban", "jail.d", "modsec.conf")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STUBS = ("apt-get", "apt", "dnf", "yum", "systemctl", "sysctl", "fail2ban-client",
         "deb-systemd-invoke", "service", "journalctl")
CHANGE = {"installed", "updated", "replaced", "created", "removed", "enabled", "started",
          "restarted", "reloaded", "applied", "stopped", "disabled"}
UNCHANGED = {"unchanged", "skipped", "ok", "note"}

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/bin/python3") or subprocess.run(
        ["/usr/bin/python3", "-c", "import pyinotify, pymysql, setuptools, wheel, pip, venv"],
        capture_output=True).returncode != 0,
    reason="needs Debian's python3 with python3-venv, python3-pip, python3-pyinotify, python3-pymysql, "
           "python3-setuptools, python3-wheel (apt)")


def need_bundle() -> None:
    """The fail2ban bundle is written by another engineer; missing is a failure under CI."""
    if not os.path.exists(JAIL_CONF):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{JAIL_CONF} is missing: the fail2ban bundle must exist under CI")
        pytest.skip("fail2ban/jail.d/modsec.conf does not exist yet (being written)")


# ------------------------------------------------------------------------------ helpers ----
class Staged:
    def __init__(self, tmp: str) -> None:
        self.root = os.path.join(tmp, "root")
        self.stubs = os.path.join(tmp, "stubs")
        self.calls = os.path.join(tmp, "stub-calls.log")
        os.makedirs(self.root)
        os.makedirs(self.stubs)
        for name in STUBS:
            path = os.path.join(self.stubs, name)
            with open(path, "w") as stream:
                stream.write(f'#!/bin/sh\necho "{name} $*" >> {self.calls}\nexit 1\n')
            os.chmod(path, 0o755)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def write(self, rel: str, text: str, mode: int = 0o644) -> None:
        path = self.path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as stream:
            stream.write(text)
        os.chmod(path, mode)

    def read(self, rel: str) -> str:
        with open(self.path(rel)) as stream:
            return stream.read()

    def run(self, *args: str, check: bool = True, install: str = INSTALL,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "VIRTUAL_ENV"))} | (env or {})
        env["PATH"] = self.stubs + ":" + SYSTEM_PATH
        proc = subprocess.run([install, "--root", self.root, *args], env=env,
                              capture_output=True, text=True, timeout=300, cwd="/")
        if check and proc.returncode != 0:
            raise AssertionError(f"install.sh {' '.join(args)} exited {proc.returncode}\n"
                                 f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        assert not os.path.exists(self.calls), \
            f"--root ran system tools: {open(self.calls).read()}"
        return proc

    def tree(self) -> dict[str, tuple]:
        """Every path under the root: type, mode, and sha256 (files) or target (links)."""
        out: dict[str, tuple] = {}
        for top, dirs, files in os.walk(self.root):
            for name in dirs + files:
                full = os.path.join(top, name)
                rel = os.path.relpath(full, self.root)
                info = os.lstat(full)
                mode = stat.S_IMODE(info.st_mode)
                if stat.S_ISLNK(info.st_mode):
                    out[rel] = ("link", mode, os.readlink(full))
                elif stat.S_ISDIR(info.st_mode):
                    out[rel] = ("dir", mode, None)
                else:
                    with open(full, "rb") as stream:
                        out[rel] = ("file", mode, hashlib.sha256(stream.read()).hexdigest())
        return out


def statuses(output: str) -> list[tuple[str, str]]:
    return re.findall(r"^  (\S+)\s+(.*)$", output, re.M)


def sections(output: str) -> dict[str, list[tuple[str, str]]]:
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("==> "):
            current = line[4:]
            result[current] = []
        elif current and (m := re.match(r"^  (\S+)\s+(.*)$", line)):
            result[current].append((m.group(1), m.group(2)))
    return result


def debian_layout(staged: Staged, modsec: str) -> None:
    staged.write("etc/apache2/apache2.conf", "IncludeOptional mods-enabled/*.load\n"
                 "IncludeOptional mods-enabled/*.conf\n")
    staged.write("etc/apache2/envvars", "export APACHE_RUN_USER=www-data\n"
                 "export APACHE_RUN_GROUP=www-data\n")
    staged.write("etc/apache2/mods-enabled/security2.load",
                 "LoadModule security2_module /usr/lib/apache2/modules/mod_security2.so\n")
    staged.write("etc/apache2/mods-enabled/security2.conf",
                 "<IfModule security2_module>\n  SecDataDir /var/cache/modsecurity\n"
                 "  IncludeOptional /etc/modsecurity/*.conf\n</IfModule>\n")
    staged.write("etc/modsecurity/modsecurity.conf", modsec)


DEBIAN_MODSEC = """\
SecRuleEngine On
# SecAuditLogStorageDir /commented/out
SecAuditEngine RelevantOnly
SecAuditLogType Serial
SecAuditLog /var/log/apache2/modsec_audit.log
SecAuditLogType Concurrent
SecAuditLogStorageDir "/var/log/apache2/modsec_tree/"
"""

USER_FILES = {
    "etc/fail2ban/jail.local": "[DEFAULT]\nbantime = 2h\n",
    "etc/fail2ban/filter.d/modsec.local": "[Definition]\n# my extra ignoreregex\nignoreregex =\n",
    "etc/fail2ban/action.d/modsec-block.local": "[Init]\nblocktype = REJECT\n",
}


# ------------------------------------------------------------------------------ fixtures ---
@pytest.fixture(scope="module")
def debian(tmp_path_factory):
    """A Debian apache2 layout with Concurrent ModSecurity and the user's own .local files,
    installed once, then again; the snapshots of both are kept."""
    staged = Staged(str(tmp_path_factory.mktemp("debian")))
    debian_layout(staged, DEBIAN_MODSEC)
    for rel, text in USER_FILES.items():
        staged.write(rel, text)
    staged.before_install = staged.tree()
    staged.first = staged.run("--no-deps")
    staged.after_first = staged.tree()
    staged.second = staged.run("--no-deps")
    staged.after_second = staged.tree()
    return staged


# ------------------------------------------------------------------------------ tests ------
def test_help_is_a_manual():
    proc = subprocess.run([INSTALL, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FILES", "EXIT STATUS",
                    "EXAMPLES", "SEE ALSO"):
        assert re.search(rf"^{heading}$", proc.stdout, re.M), heading
    for option in ("--root DIR", "--no-deps", "--uninstall", "--enable-acl[=GROUP]",
                   "--python PYTHON", "--help"):
        assert option in proc.stdout, option


def test_unknown_option_is_a_usage_error():
    proc = subprocess.run([INSTALL, "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown option" in proc.stderr


def test_install_script_is_strict_bash():
    with open(INSTALL) as stream:
        head = stream.read(400)
    assert head.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in head
    assert subprocess.run(["bash", "-n", INSTALL]).returncode == 0


def test_first_run_reports_every_step(debian):
    out = debian.first.stdout
    found = sections(out)
    for step in ("deps", "python", "fail2ban", "config", "dirs", "jails", "system",
                 "manifest", "check", "start"):
        matching = [name for name in found if name.startswith(step + ":") or name == step]
        assert matching, f"step {step} not reported:\n{out}"
        assert found[matching[0]] or step == "jails" and "WARNING" in debian.first.stderr, \
            f"step {step} printed nothing it did:\n{out}"
    assert any(status in CHANGE for status, _ in statuses(out))


def test_second_run_changes_nothing(debian):
    before, after = debian.after_first, debian.after_second
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert not changed, f"second run changed: {changed[:20]}"
    out = debian.second.stdout
    found = statuses(out)
    assert found
    bad = [(s, text) for s, text in found if s not in UNCHANGED]
    assert not bad, f"second run reported changes: {bad}\n{out}"
    for step, lines in sections(out).items():
        if step.startswith("jails") and not os.path.exists(JAIL_CONF):
            continue
        assert any(s == "unchanged" for s, _ in lines) or all(s in ("skipped", "ok")
                                                               for s, _ in lines), step
    assert "everything was already in place (unchanged)" in out


def test_user_local_files_survive(debian):
    for rel, text in USER_FILES.items():
        assert debian.read(rel) == text, rel
    assert "(yours: never overwritten)" in debian.first.stdout


def test_bundle_installed_as_in_tree(debian):
    for sub in ("filter.d", "jail.d", "action.d"):
        src = os.path.join(REPO, "fail2ban", sub)
        for name in sorted(os.listdir(src)) if os.path.isdir(src) else ():
            if not os.path.isfile(os.path.join(src, name)) or name.endswith((".local", ".pyc")):
                continue
            with open(os.path.join(src, name), "rb") as a, \
                    open(debian.path(f"etc/fail2ban/{sub}/{name}"), "rb") as b:
                assert a.read() == b.read(), name
            assert stat.S_IMODE(os.stat(debian.path(f"etc/fail2ban/{sub}/{name}")).st_mode) == 0o644
    # the action's package, beside it (modsec-block.py imports it from its own directory)
    package = os.path.join(REPO, "fail2ban", "action.d", "modsec_blocker")
    sources = [os.path.join(d, n) for d, _, names in os.walk(package) for n in names if n.endswith(".py")]
    assert len(sources) > 5
    for source in sources:
        rel = os.path.relpath(source, os.path.join(REPO, "fail2ban"))
        with open(source, "rb") as a, open(debian.path(f"etc/fail2ban/{rel}"), "rb") as b:
            assert a.read() == b.read(), rel
    assert not os.path.exists(debian.path("etc/fail2ban/tests")), "test data must not be installed"


def test_config_detected_from_modsecurity(debian):
    text = debian.read("etc/modsec-tools/modsec-tools.conf")
    # the last directive wins, as in Apache; quotes and the trailing slash are dropped
    assert re.search(r"^storage_dir = /var/log/apache2/modsec_tree$", text, re.M)
    assert re.search(r"^index_log = /var/log/apache2/modsec_audit.log$", text, re.M)
    sys.path.insert(0, REPO)
    from modsec_tools import config
    for key in config.KEYS:
        assert re.search(rf"^#?{key.name} =", text, re.M), key.name
    # the staged venv reads it (the venv is relocatable through its own interpreter)
    python = debian.path("opt/modsec-tools/bin/python")
    show = subprocess.run([python, "-I", "-B", "-m", "modsec_tools.cli", "config", "show",
                           "--config", debian.path("etc/modsec-tools/modsec-tools.conf")],
                          capture_output=True, text=True, check=True).stdout
    assert "storage_dir = /var/log/apache2/modsec_tree" in show
    # the storage tree was created (Apache present) and the unit may write it
    assert os.path.isdir(debian.path("var/log/apache2/modsec_tree"))
    dropin = debian.read("etc/systemd/system/modsec-tools.service.d/50-install-paths.conf")
    assert "ReadWritePaths=-/var/log/apache2/modsec_tree" in dropin


def test_config_written_earlier_is_kept_and_a_moved_tree_is_reported(tmp_path):
    """The first run found Serial logs; ModSecurity was then switched to Concurrent elsewhere.
    The administrator's configuration stays as it is, and the run says what to set."""
    staged = Staged(str(tmp_path))
    debian_layout(staged, "SecAuditLogType Serial\nSecAuditLog /var/log/apache2/modsec_audit.log\n")
    staged.run("--no-deps")
    config_before = staged.read("etc/modsec-tools/modsec-tools.conf")
    staged.write("etc/modsecurity/modsecurity.conf", DEBIAN_MODSEC)
    proc = staged.run("--no-deps")
    assert staged.read("etc/modsec-tools/modsec-tools.conf") == config_before
    local = "/etc/modsec-tools/modsec-tools.local"
    assert (f"set storage_dir = /var/log/apache2/modsec_tree in {local}") in proc.stderr
    assert (f"set index_log = /var/log/apache2/modsec_audit.log in {local}") in proc.stdout
    # once the .local says so, the run is quiet about it
    staged.write(local, "[modsec-tools]\nstorage_dir = /var/log/apache2/modsec_tree\n"
                 "index_log = /var/log/apache2/modsec_audit.log\n")
    proc = staged.run("--no-deps")
    assert "storage_dir =" not in proc.stderr and "index_log =" not in proc.stdout


def test_matching_configuration_is_not_reported(debian):
    assert "storage_dir =" not in debian.second.stderr + debian.first.stderr
    assert "cannot write the storage tree" not in debian.first.stderr
    assert "index_log =" not in debian.second.stdout


def test_storage_tree_apache_cannot_enter_is_reported(tmp_path):
    """Seen on a real Debian 12: /var/log/apache2 is root:adm 0750, so ModSecurity (in
    Apache's children, as www-data) could not create a tree under it and wrote nothing."""
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data user on this machine")
    staged = Staged(str(tmp_path))
    debian_layout(staged, DEBIAN_MODSEC)
    os.makedirs(staged.path("var/log/apache2"))
    os.chmod(staged.path("var/log/apache2"), 0o750)     # Debian's mode, owner not www-data
    proc = staged.run("--no-deps")
    assert ("Apache's user www-data cannot write the storage tree /var/log/apache2/modsec_tree: "
            "/var/log/apache2 (") in proc.stderr
    assert "e.g. /var/log/modsec_audit" in proc.stderr
    # once others may enter it (or a tree elsewhere is used), nothing is reported
    os.chmod(staged.path("var/log/apache2"), 0o751)
    assert "cannot write the storage tree" not in staged.run("--no-deps").stderr


def test_directories_and_modes(debian):
    expected = {"var/lib/modsec-tools": 0o750, "var/lib/modsec-tools/quarantine": 0o700,
                "var/log/modsec-tools": 0o750, "var/log/modsec-tools/events.log": 0o640}
    for rel, mode in expected.items():
        assert stat.S_IMODE(os.stat(debian.path(rel)).st_mode) == mode, rel
    assert os.path.getsize(debian.path("var/log/modsec-tools/events.log")) == 0


def test_system_files(debian):
    for rel, source in (("etc/systemd/system/modsec-tools.service", "packaging/modsec-tools.service"),
                        ("usr/local/share/man/man1/modsec-tools.1", "packaging/modsec-tools.1")):
        with open(os.path.join(REPO, source)) as stream:
            assert debian.read(rel) == stream.read(), rel
    rotate = debian.read("etc/logrotate.d/modsec-tools")
    assert "copytruncate" not in rotate.replace("NOT copytruncate", "").replace(
        'never "copytruncate"', "")
    assert re.search(r"^\s+create 0640", rotate, re.M)
    assert "systemctl kill --kill-whom=main --signal=HUP modsec-tools.service" in rotate
    wrapper = debian.read("usr/bin/modsec-tools")
    assert wrapper.startswith("#!/bin/sh\n")
    assert "exec /opt/modsec-tools/bin/python -I -m modsec_tools.cli" in wrapper
    assert os.access(debian.path("usr/bin/modsec-tools"), os.X_OK)
    # sysctl file: only where the running kernel's limit is lower
    with open("/proc/sys/fs/inotify/max_user_watches") as stream:
        current = int(stream.read())
    assert os.path.exists(debian.path("etc/sysctl.d/60-modsec-tools.conf")) == (current < 524288)
    manifest = debian.read("var/lib/modsec-tools/install-manifest")
    assert "\tmodsec-tools.conf" not in manifest
    assert re.search(r"^once\t[0-9a-f]{64}\t/etc/modsec-tools/modsec-tools.conf$", manifest, re.M)
    assert re.search(r"^tree\t-\t/opt/modsec-tools$", manifest, re.M)


def test_staged_venv_runs_modsec_tools(debian):
    python = debian.path("opt/modsec-tools/bin/python")
    proc = subprocess.run([python, "-I", "-m", "modsec_tools.cli", "--version"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("modsec-tools ")
    # Debian's pyinotify/pymysql are used, not copies
    proc = subprocess.run([python, "-I", "-c", "import pyinotify; print(pyinotify.__file__)"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("/usr/lib/python3/dist-packages/")


def test_without_a_compiler_nothing_is_missing(tmp_path):
    """modsec-tools is pure Python: installed where no C compiler is, nothing is said to be
    missing, and the venv holds no compiled module of ours."""
    from tests.test_deploy_deb import _copy_tree
    tree = tmp_path / "src"
    _copy_tree(str(tree))
    staged = Staged(str(tmp_path / "stage"))
    staged.write("etc/os-release", "ID=debian\n")
    first = staged.run("--no-deps", install=str(tree / "install.sh"),
                       env={"CC": "/nonexistent/cc"})
    assert not re.search(r"compiler|gcc|python3-dev|speedups", first.stderr), first.stderr
    python = staged.path("opt/modsec-tools/bin/python")
    where = subprocess.run([python, "-I", "-c", "import modsec_tools; print(modsec_tools.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert not [name for name in os.listdir(os.path.dirname(where)) if name.endswith(".so")]


def test_jail_local_enables_the_bundle_jails(debian):
    need_bundle()
    with open(JAIL_CONF) as stream:
        jails = [s for s in re.findall(r"^\[([^\]]+)\]\s*$", stream.read(), re.M)
                 if s not in ("DEFAULT", "INCLUDES")]
    text = debian.read("etc/fail2ban/jail.d/modsec.local")
    assert jails
    for jail in jails:
        assert re.search(rf"^\[{re.escape(jail)}\]\nenabled = true$", text, re.M), jail


def test_fail2ban_accepts_the_staged_configuration(debian, tmp_path):
    """fail2ban-client -t against the staged /etc/fail2ban, completed with fail2ban's own
    files (as on a host where the fail2ban package is installed)."""
    need_bundle()
    if not shutil.which("fail2ban-client"):
        pytest.skip("fail2ban is not installed (apt-get install fail2ban)")
    etc = tmp_path / "fail2ban"
    listed = subprocess.run(["dpkg-query", "-L", "fail2ban"], capture_output=True, text=True,
                            check=True).stdout.split()
    for path in listed:
        # jail.d/defaults-debian.conf enables sshd, whose log may not exist on CI
        if path.startswith("/etc/fail2ban/") and os.path.isfile(path) and "/jail.d/" not in path:
            target = etc / os.path.relpath(path, "/etc/fail2ban")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    shutil.copytree(debian.path("etc/fail2ban"), etc, dirs_exist_ok=True)
    # The jails' log files, inside the test's own directory.
    events = tmp_path / "events.log"
    events.touch()
    f2blog = tmp_path / "fail2ban.log"
    f2blog.touch()
    with open(etc / "jail.d" / "zz-test.local", "w") as stream:
        stream.write(f"[modsec]\nlogpath = {events}\n[modsec-recidive]\nlogpath = {f2blog}\n")
    proc = subprocess.run(["fail2ban-client", "-c", str(etc), "-t"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: configuration test is successful" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rhel(tmp_path_factory):
    """A RHEL httpd layout whose ModSecurity writes Serial logs (the package default)."""
    staged = Staged(str(tmp_path_factory.mktemp("rhel")))
    staged.write("etc/httpd/conf/httpd.conf", "ServerRoot /etc/httpd\n"
                 "Include conf.modules.d/*.conf\nUser apache\nGroup apache\n"
                 "IncludeOptional conf.d/*.conf\n")
    staged.write("etc/httpd/conf.modules.d/10-mod_security.conf",
                 "LoadModule security2_module modules/mod_security2.so\n")
    staged.write("etc/httpd/conf.d/mod_security.conf",
                 "<IfModule mod_security2.c>\n    SecRuleEngine On\n"
                 "    SecAuditEngine RelevantOnly\n    SecAuditLogType Serial\n"
                 "    SecAuditLog /var/log/modsec_audit.log\n</IfModule>\n")
    staged.first = staged.run("--no-deps", "--enable-acl=adm")
    staged.after_first = staged.tree()
    staged.second = staged.run("--no-deps", "--enable-acl=adm")
    staged.after_second = staged.tree()
    return staged


def test_rhel_layout_serial_mode(rhel):
    text = rhel.read("etc/modsec-tools/modsec-tools.conf")
    assert re.search(r"^storage_dir = /var/log/modsec_audit$", text, re.M)
    assert not re.search(r"^index_log =", text, re.M)
    assert "RHEL httpd" in rhel.first.stdout
    # the administrator is told how to switch ModSecurity to Concurrent
    assert "SecAuditLogType Concurrent" in rhel.first.stderr
    assert "SecAuditLogStorageDir /var/log/modsec_audit" in rhel.first.stderr
    # the default path is already writable by the unit: no extra ReadWritePaths
    assert "ReadWritePaths" not in re.sub(
        r"^#.*$", "", rhel.read("etc/systemd/system/modsec-tools.service.d/50-install-paths.conf"),
        flags=re.M)


def test_enable_acl(rhel):
    if not shutil.which("getfacl"):
        pytest.skip("acl is not installed (apt-get install acl)")
    acl = subprocess.run(["getfacl", "-cp", rhel.path("var/log/modsec_audit")],
                         capture_output=True, text=True, check=True).stdout
    assert "group:adm:rwx" in acl.splitlines()
    assert "default:group:adm:rwx" in acl.splitlines()
    assert re.search(r"^  applied\s+/var/log/modsec_audit: group adm", rhel.first.stdout, re.M)
    assert re.search(r"^  unchanged\s+/var/log/modsec_audit: group adm", rhel.second.stdout, re.M)
    assert rhel.after_first == rhel.after_second


def test_no_apache_installs_with_defaults(tmp_path):
    """No /etc/apache2 or /etc/httpd: nothing detected, storage_dir stays the default and
    the storage tree is not created (only warned about)."""
    staged = Staged(str(tmp_path))
    proc = staged.run("--no-deps")
    text = staged.read("etc/modsec-tools/modsec-tools.conf")
    assert not re.search(r"^storage_dir =", text, re.M)
    assert "none found" in proc.stdout
    assert "does not exist and no Apache was found" in proc.stderr
    assert not os.path.exists(staged.path("var/log/apache2"))
    # --uninstall of this minimal install leaves only the data directories
    staged.run("--uninstall")
    left = set(staged.tree())
    assert left == {"var", "var/lib", "var/lib/modsec-tools", "var/lib/modsec-tools/quarantine",
                    "var/log", "var/log/modsec-tools", "var/log/modsec-tools/events.log"}


def test_upgrade_edit_and_uninstall_leave_no_trace(tmp_path):
    """Install; the administrator edits the config, the jail .local and a bundled .conf;
    rerun (the .conf is restored, the edit saved aside); --uninstall removes the rest."""
    staged = Staged(str(tmp_path))
    debian_layout(staged, DEBIAN_MODSEC)
    for rel, text in USER_FILES.items():
        staged.write(rel, text)
    before = staged.tree()
    staged.run("--no-deps")
    # administrator's changes
    with open(staged.path("etc/modsec-tools/modsec-tools.conf"), "a") as stream:
        stream.write("node = web1\n")
    bundled = sorted(os.listdir(os.path.join(REPO, "fail2ban", "filter.d")))[0]
    edited = f"etc/fail2ban/filter.d/{bundled}"
    original = staged.read(edited)
    with open(staged.path(edited), "a") as stream:
        stream.write("# local edit in the wrong file\n")
    if os.path.exists(JAIL_CONF):
        with open(staged.path("etc/fail2ban/jail.d/modsec.local"), "a") as stream:
            stream.write("\n[modsec]\nbantime = 2h\n")
    # data the watcher would have made
    staged.write("var/lib/modsec-tools/events.db", "data")
    staged.write("var/log/modsec-tools/archive.log", "data")

    rerun = staged.run("--no-deps")
    assert re.search(rf"^  replaced\s+/{re.escape(edited)} .*modsec-tools-save", rerun.stdout, re.M)
    assert staged.read(edited) == original
    assert staged.read(edited + ".modsec-tools-save").endswith("# local edit in the wrong file\n")
    assert "node = web1" in staged.read("etc/modsec-tools/modsec-tools.conf")
    assert "edited by you" in rerun.stdout

    proc = staged.run("--uninstall")
    assert re.search(r"^  kept\s+/etc/modsec-tools/modsec-tools.conf \(modified", proc.stdout, re.M)
    after = staged.tree()
    extra = set(after) - set(before)
    data = ("var/lib/modsec-tools", "var/log/modsec-tools")
    allowed = {"var", "var/lib", "var/log", "var/log/apache2", "etc/modsec-tools",
               "etc/modsec-tools/modsec-tools.conf", edited + ".modsec-tools-save"}
    if os.path.exists(JAIL_CONF):
        allowed |= {"etc/fail2ban/jail.d", "etc/fail2ban/jail.d/modsec.local"}
        assert "fail2ban will refuse to start" in proc.stderr
    leftovers = sorted(p for p in extra if p not in allowed and not p.startswith(data))
    assert not leftovers, f"--uninstall left: {leftovers}\n{proc.stdout}"
    # what existed before is untouched (the user's .local files above all)
    for rel, entry in before.items():
        assert after.get(rel) == entry, rel
    assert staged.read("var/lib/modsec-tools/events.db") == "data"
    assert not os.path.exists(staged.path("var/lib/modsec-tools/install-manifest"))
    assert not os.path.exists(staged.path("opt"))
    assert not os.path.exists(staged.path("usr"))


def test_default_config_documents_every_key():
    """packaging/modsec-tools.conf is generated from config.KEYS and in sync with it."""
    proc = subprocess.run([sys.executable, "-B", os.path.join(REPO, "packaging", "gen-config.py"),
                           "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sys.path.insert(0, REPO)
    from modsec_tools import config
    with open(os.path.join(REPO, "packaging", "modsec-tools.conf")) as stream:
        text = stream.read()
    flat = " ".join(line.lstrip("# ") for line in text.splitlines())
    for key in config.KEYS:
        assert f"\n#{key.name} = {key.default}".rstrip() in text, key.name
        assert f"default: {key.default or 'unset'}" in text, key.name
        assert " ".join(key.help.split()) in " ".join(flat.split()), key.name
    # every value in the file is valid for modsec-tools
    values, _ = config.read_files(os.path.join(REPO, "packaging", "modsec-tools.conf"))
    config.build(values, {})


# ------------------------------------------------------------------------------ ModSecurity --
def todo_items(output: str) -> list[tuple[str, list[str]]]:
    """The "Still to do" list: (text, its $ commands) per item, in order."""
    if "Still to do" not in output:
        return []
    items: list[tuple[str, list[str]]] = []
    for line in output.split("Still to do", 1)[1].splitlines()[1:]:
        if m := re.match(r"^  \d+\. (.*)$", line):
            items.append((m.group(1), []))
        elif m := re.match(r"^ +\$ (.*)$", line):
            items[-1][1].append(m.group(1))
        else:
            break
    return items


def test_stock_debian_modsecurity_is_recognised_and_the_drop_in_offered(tmp_path):
    """Debian 12 as apt leaves it: mod_security2 enabled, only modsecurity.conf-recommended
    (which Apache never reads). Not "is mod_security2 installed and enabled?" (it is): the
    run says what is missing, and the summary offers --configure-modsecurity."""
    from tests.test_first_hour_config import stock_debian
    staged = Staged(str(tmp_path))
    stock_debian(Path(staged.root), copied=False)
    proc = staged.run("--no-deps")
    assert "is mod_security2 installed and enabled?" not in proc.stderr
    assert ("mod_security2 is enabled but has no audit log settings (Debian ships only "
            "/etc/modsecurity/modsecurity.conf-recommended") in proc.stderr
    items = todo_items(proc.stdout)
    texts = [text for text, _ in items]
    assert any(text.startswith("ModSecurity inspects nothing: SecRuleEngine Off") for text in texts)
    assert [cmd for _, cmds in items for cmd in cmds if cmd.endswith("--configure-modsecurity")] \
        == [f"{REPO}/install.sh --configure-modsecurity"], proc.stdout
    assert not os.path.exists(staged.path("etc/modsecurity/zz-modsec-tools.conf"))


def test_configure_modsecurity_installs_the_drop_in_and_leaves_the_engine(tmp_path):
    """--configure-modsecurity on Debian with the recommended file copied (DetectionOnly,
    Serial): the drop-in switches the audit log to what modsec-tools reads, the engine stays
    DetectionOnly, and the summary names both fixes (SecRuleEngine On, or mode = detected)
    with the command for the first, then the Apache restart. Idempotent; a run without the
    option keeps it; --uninstall removes it."""
    from tests.test_first_hour_config import stock_debian
    staged = Staged(str(tmp_path))
    stock_debian(Path(staged.root), copied=True)
    conf_before = staged.read("etc/modsecurity/modsecurity.conf")
    proc = staged.run("--no-deps", "--configure-modsecurity")
    dropin = staged.read("etc/modsecurity/zz-modsec-tools.conf")
    directives = [line for line in dropin.splitlines() if line and not line.startswith("#")]
    assert directives == ["SecAuditEngine RelevantOnly", "SecAuditLogParts ABIJFHZ",
                          "SecAuditLogType Concurrent",
                          "SecAuditLogStorageDir /var/log/modsec_audit",
                          "SecAuditLogDirMode 0750", "SecAuditLogFileMode 0640",
                          "SecAuditLog /var/log/apache2/modsec_index.log"]
    assert staged.read("etc/modsecurity/modsecurity.conf") == conf_before
    config = staged.read("etc/modsec-tools/modsec-tools.conf")
    assert re.search(r"^storage_dir = /var/log/modsec_audit$", config, re.M)
    assert re.search(r"^index_log = /var/log/apache2/modsec_index.log$", config, re.M)
    assert "SecAuditLogType Concurrent" not in proc.stderr     # nothing left to set by hand
    (engine, engine_fix), (restart, restart_fix) = todo_items(proc.stdout)
    assert "SecRuleEngine DetectionOnly" in engine and "set SecRuleEngine On in" in engine
    assert "mode = detected under [modsec]" in engine
    assert engine_fix and engine_fix[0].startswith("sed -i ")
    assert restart.startswith("Restart Apache") and restart_fix == ["systemctl restart apache2"]
    assert "NOT READY" in proc.stderr and proc.returncode == 0

    # the printed fix, applied: nothing left to do; the drop-in is unchanged
    subprocess.run(engine_fix[0].replace("/etc/", f"{staged.root}/etc/"), shell=True, check=True)
    again = staged.run("--no-deps", "--configure-modsecurity")
    assert re.search(r"^  unchanged\s+/etc/modsecurity/zz-modsec-tools.conf$", again.stdout, re.M)
    assert todo_items(again.stdout) == [] and "NOT READY" not in again.stderr
    # without the option it is kept, and still ours
    plain = staged.run("--no-deps")
    assert staged.read("etc/modsecurity/zz-modsec-tools.conf") == dropin
    assert "zz-modsec-tools.conf" in staged.read("var/lib/modsec-tools/install-manifest")
    assert todo_items(plain.stdout) == []
    gone = staged.run("--uninstall")
    assert not os.path.exists(staged.path("etc/modsecurity/zz-modsec-tools.conf"))
    assert "restart Apache" in gone.stdout


def test_a_drop_in_apache_would_override_is_taken_back(tmp_path):
    """Apache reads conf-enabled after ModSecurity's own directory: a Serial setting there
    wins over the drop-in, which is then taken back, and the run fails saying where."""
    from tests.test_first_hour_config import stock_debian
    staged = Staged(str(tmp_path))
    stock_debian(Path(staged.root), copied=True)
    staged.write("etc/apache2/conf-enabled/audit.conf", "SecAuditLogType Serial\n")
    proc = staged.run("--no-deps", "--configure-modsecurity", check=False)
    assert proc.returncode == 1
    assert ("/etc/modsecurity/zz-modsec-tools.conf taken back (Apache reads ModSecurity's "
            "audit log settings after it, in /etc/apache2/conf-enabled/audit.conf") in proc.stderr
    assert not os.path.exists(staged.path("etc/modsecurity/zz-modsec-tools.conf"))
    assert "zz-modsec-tools" not in staged.read("var/lib/modsec-tools/install-manifest")


def test_the_documentation_the_manual_names_is_installed(debian):
    """The manual page points to /usr/share/doc/modsec-tools/ and to fail2ban-regex's sample
    logs there: install.sh installs them (README, docs, examples), and the manual's
    fail2ban-regex example runs on what was installed. (Neither was installed.)"""
    with open(os.path.join(REPO, "packaging", "modsec-tools.1")) as stream:
        manual = stream.read().replace("\\-", "-")
    named = set(re.findall(r"(/usr/share/doc/modsec-tools/[^\s,;)]*)", manual))
    assert "/usr/share/doc/modsec-tools/" in named
    for path in named:
        assert os.path.exists(debian.path(path)), path
    for rel in ("README.md", "install.md", "fail2ban.md", "examples/60-modsec-tools.conf"):
        assert os.path.isfile(debian.path(f"usr/share/doc/modsec-tools/{rel}")), rel
    samples = os.path.join(REPO, "fail2ban", "tests", "files", "logs")
    for name in os.listdir(samples):
        with open(os.path.join(samples, name), "rb") as a, \
                open(debian.path(f"usr/share/doc/modsec-tools/examples/fail2ban-regex/{name}"),
                     "rb") as b:
            assert a.read() == b.read(), name
    if not shutil.which("fail2ban-regex"):
        pytest.skip("fail2ban is not installed (apt-get install fail2ban)")
    (example,) = [line for line in manual.splitlines() if line.startswith("fail2ban-regex ")]
    argv = [debian.path(arg) if arg.startswith("/") else arg for arg in example.split()]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = re.search(r"^Lines: (\d+) lines, 0 ignored, (\d+) matched", proc.stdout, re.M)
    assert lines and int(lines.group(2)) > 0, proc.stdout
