"""The Debian package: it builds, ships what it must, is lintian clean, and installs.

The package is built from a copy of the tree (``dpkg-buildpackage -us -uc -b``, with
Debian's own python3 first on PATH), so the work tree gets no build products.

The install test needs root: it mounts an overlay whose lower layer is this machine's /
(read-only) and whose upper layer is a private tmpfs, and runs ``dpkg --root`` on it, so the
maintainer scripts run chrooted exactly as on a real system (dependencies are satisfied by
the host's fail2ban, python3-pyinotify and python3-pymysql), while the host is not touched.
Then, inside that root, ``fail2ban-client -t`` checks the installed configuration with the
jails enabled as an administrator would enable them (jail.d/modsec.local).

The package is pure Python: Architecture: all.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root",
       "DEBIAN_FRONTEND": "noninteractive"}
BUILD_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian")

pytestmark = pytest.mark.slow


def _missing_build_deps() -> list[str]:
    missing = [tool for tool in BUILD_TOOLS if not shutil.which(tool, path=SYSTEM_PATH)]
    proc = subprocess.run(["dpkg-checkbuilddeps", "-B"], cwd=REPO, env=ENV,
                          capture_output=True, text=True) if not missing else None
    if proc is not None and proc.returncode != 0:
        missing.append(proc.stderr.strip())
    return missing


def _bundle_present() -> bool:
    return all(any(os.scandir(os.path.join(REPO, "fail2ban", sub)))
               for sub in ("filter.d", "jail.d", "action.d")
               if os.path.isdir(os.path.join(REPO, "fail2ban", sub)))


def _copy_tree(dest: str) -> None:
    """The files git would ship (tracked and untracked, not ignored), else a plain copy."""
    proc = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                          capture_output=True)
    if proc.returncode == 0 and proc.stdout:
        for rel in proc.stdout.decode().split("\0"):
            if not rel or not os.path.lexists(os.path.join(REPO, rel)):
                continue
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            source = os.path.join(REPO, rel)
            if os.path.islink(source):
                os.symlink(os.readlink(source), target)
            else:
                shutil.copy2(source, target)
    else:
        shutil.copytree(REPO, dest, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    missing = _missing_build_deps()
    if missing:
        pytest.skip("build dependencies missing (apt-get install debhelper dh-python "
                    "python3-all python3-setuptools pybuild-plugin-pyproject lintian "
                    f"build-essential): {missing}")
    if not _bundle_present():
        if os.environ.get("CI") == "true":
            pytest.fail("fail2ban/{filter,jail,action}.d must not be empty under CI")
        pytest.skip("the fail2ban bundle is not complete yet (being written)")
    top = tmp_path_factory.mktemp("deb")
    src = top / "modsec-tools"
    _copy_tree(str(src))
    proc = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    debs = sorted(top.glob("modsec-tools_*.deb"))
    assert len(debs) == 1, list(top.iterdir())
    changes = sorted(top.glob("modsec-tools_*.changes"))
    return {"deb": str(debs[0]), "changes": str(changes[0]), "src": src, "log": proc.stdout}


def _contents(deb: str) -> dict[str, str]:
    """path -> type letter of ``dpkg-deb -c`` (d directory, - file, l link)."""
    out = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                         check=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0].lstrip(".").rstrip("/")
        if path:
            entries[path] = fields[0][0]
    return entries


def _field(deb: str, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", deb, name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_deb_file_list(built):
    files = _contents(built["deb"])
    expected = {
        "/usr/bin/modsec-tools",
        "/usr/lib/python3/dist-packages/modsec_tools/__init__.py",
        "/usr/lib/python3/dist-packages/modsec_tools/cli.py",
        "/usr/lib/python3/dist-packages/modsec_tools/py.typed",
        "/etc/modsec-tools/modsec-tools.conf",
        "/lib/systemd/system/modsec-tools.service",
        "/etc/logrotate.d/modsec-tools",
        "/usr/share/man/man1/modsec-tools.1.gz",
        "/usr/share/doc/modsec-tools/copyright",
        "/usr/share/doc/modsec-tools/examples/60-modsec-tools.conf",
        # fail2ban-regex's sample logs, uncompressed (it cannot read gzip), where the
        # manual page says
        "/usr/share/doc/modsec-tools/examples/fail2ban-regex/modsec",
        "/usr/share/doc/modsec-tools/examples/fail2ban-regex/modsec-recidive",
    }
    for sub in ("filter.d", "jail.d", "action.d"):
        for name in os.listdir(os.path.join(REPO, "fail2ban", sub)):
            if os.path.isfile(os.path.join(REPO, "fail2ban", sub, name)) and \
                    not name.endswith((".local", ".pyc")):
                expected.add(f"/etc/fail2ban/{sub}/{name}")
    # the action's package, beside it (modsec-block.py imports it from its own directory)
    package = os.path.join(REPO, "fail2ban", "action.d", "modsec_blocker")
    for directory, _, names in os.walk(package):
        expected.update(f"/etc/fail2ban/{os.path.relpath(os.path.join(directory, name), os.path.join(REPO, 'fail2ban'))}"
                        for name in names if name.endswith(".py"))
    assert {"/etc/fail2ban/filter.d/modsec.conf", "/etc/fail2ban/jail.d/modsec.conf",
            "/etc/fail2ban/action.d/modsec-block.py", "/etc/fail2ban/action.d/modsec_blocker/batcher.py",
            "/etc/fail2ban/action.d/modsec_blocker/backends/nft.py"} <= expected
    assert not expected - files.keys(), f"missing from the package: {sorted(expected - files.keys())}"
    # pure Python: nothing compiled
    assert not [f for f in files if f.endswith((".so", ".c"))]
    # nothing of the tests (the sample logs only as examples), nor .local files (the
    # administrator's)
    assert not [f for f in files if "/tests" in f or f.endswith(".local")]
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    # every file under /etc is a conffile
    conffiles = subprocess.run(["dpkg-deb", "-I", built["deb"], "conffiles"],
                               capture_output=True, text=True, check=True).stdout.split()
    etc = {path for path, kind in files.items() if path.startswith("/etc/") and kind != "d"}
    assert etc and etc <= set(conffiles), sorted(etc - set(conffiles))


def test_deb_control_fields(built):
    depends = _field(built["deb"], "Depends")
    for package in ("fail2ban", "python3-pyinotify", "python3-pymysql", "python3:any"):
        assert package in depends, depends
    recommends = _field(built["deb"], "Recommends")
    assert re.search(r"nftables \| ipset \| python3-iptables", recommends), recommends
    assert _field(built["deb"], "Architecture") == "all"
    assert "libc6" not in depends, depends
    scripts = subprocess.run(["dpkg-deb", "-I", built["deb"], "postrm"], capture_output=True,
                             text=True, check=True).stdout
    assert 'rm -rf "$DPKG_ROOT/var/lib/modsec-tools"' in scripts
    assert "MODSEC_TOOLS_PURGE_LOGS" in scripts


def test_lintian(built):
    """No errors; warnings and informational tags are reported (pytest warnings summary)."""
    proc = subprocess.run(["lintian", "--display-info", "--pedantic", "--tag-display-limit", "0",
                           built["changes"]], env=ENV, capture_output=True, text=True,
                          timeout=600)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    errors = [line for line in tags if line.startswith("E: ")]
    for line in tags:
        if not line.startswith("E: "):
            warnings.warn(UserWarning(f"lintian: {line}"))
    assert not errors, "\n".join(errors)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _sh(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), env=ENV, capture_output=True, text=True, timeout=300,
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def overlay_root():
    """A copy-on-write view of this machine's / (upper layer on a private tmpfs)."""
    base = tempfile.mkdtemp(prefix="modsec-tools-deb-")
    mounted = []
    try:
        _sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "tmpfs", base)
        mounted.append(base)
        for name in ("upper", "work", "merged"):
            os.mkdir(os.path.join(base, name))
        merged = os.path.join(base, "merged")
        _sh("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir=/,upperdir={base}/upper,workdir={base}/work", merged)
        mounted.append(merged)
        # /dev is a separate mount on the host: give the chroot the one node scripts use.
        null = os.path.join(merged, "dev", "null")
        if os.path.lexists(null):
            os.unlink(null)
        os.mknod(null, 0o20666, os.makedev(1, 3))
        os.chmod(null, 0o666)
        yield merged
    finally:
        for path in reversed(mounted):
            if subprocess.run(["umount", path], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", path], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.root
def test_deb_installs_and_fail2ban_accepts_it(built, overlay_root):
    root = overlay_root
    host_marker = os.path.exists("/usr/lib/python3/dist-packages/modsec_tools")
    if not shutil.which("fail2ban-client", path=SYSTEM_PATH):
        pytest.skip("fail2ban is not installed on this machine (apt-get install fail2ban)")

    proc = _sh("dpkg", f"--root={root}", "--force-confdef", "--force-confnew", "-i", built["deb"])
    assert "Setting up modsec-tools" in proc.stdout

    def inside(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _sh("chroot", root, *args, check=check)

    # postinst: directories and the empty event log
    for rel, mode in (("var/lib/modsec-tools", 0o750), ("var/lib/modsec-tools/quarantine", 0o700),
                      ("var/log/modsec-tools", 0o750), ("var/log/modsec-tools/events.log", 0o640)):
        assert os.stat(os.path.join(root, rel)).st_mode & 0o7777 == mode, rel
    assert os.path.islink(os.path.join(
        root, "etc/systemd/system/multi-user.target.wants/modsec-tools.service"))
    assert inside("modsec-tools", "--version").stdout.startswith("modsec-tools ")
    show = inside("modsec-tools", "config", "show").stdout
    assert "event_log = /var/log/modsec-tools/events.log" in show
    assert inside("dpkg-query", "-W", "-f=${Status}", "modsec-tools").stdout == "install ok installed"
    verify = inside("systemd-analyze", "verify", "/lib/systemd/system/modsec-tools.service",
                    check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # fail2ban: our jails enabled as an administrator does it, on top of the distribution's
    # fail2ban configuration; other jails (e.g. Debian's sshd, whose log a CI machine may
    # lack) and host-local files are left out so only the packaged configuration is tested.
    etc = os.path.join(root, "etc/fail2ban")
    for name in os.listdir(os.path.join(etc, "jail.d")):
        if name != "modsec.conf":
            os.unlink(os.path.join(etc, "jail.d", name))
    for name in ("jail.local", "fail2ban.local"):
        if os.path.exists(os.path.join(etc, name)):
            os.unlink(os.path.join(etc, name))
    jails = re.findall(r"^\[([^\]]+)\]", open(os.path.join(etc, "jail.d/modsec.conf")).read(), re.M)
    jails = [j for j in jails if j not in ("DEFAULT", "INCLUDES")]
    assert "modsec" in jails
    with open(os.path.join(etc, "jail.d/modsec.local"), "w") as stream:
        stream.write("".join(f"[{jail}]\nenabled = true\n\n" for jail in jails))
    # the recidive jail reads fail2ban's own log, which a running fail2ban creates
    open(os.path.join(root, "var/log/fail2ban.log"), "a").close()
    test = inside("fail2ban-client", "-t", check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "OK: configuration test is successful" in test.stdout + test.stderr
    # the manual's fail2ban-regex example runs on the installed samples and filter
    with open(os.path.join(REPO, "packaging", "modsec-tools.1")) as stream:
        (example,) = [line.replace("\\-", "-") for line in stream.read().splitlines()
                      if line.startswith("fail2ban-regex ")]
    regex = inside(*example.split())
    assert re.search(r"^Lines: \d+ lines, 0 ignored, [1-9]\d* matched", regex.stdout, re.M), \
        regex.stdout
    # fail2ban's interpreter loads the action as fail2ban does
    inside("python3", "-c", "from importlib.machinery import SourceFileLoader; "
           "SourceFileLoader('modsec_block', '/etc/fail2ban/action.d/modsec-block.py').load_module()")

    # purge: state goes, logs stay (unless asked), the administrator's .local stays
    open(os.path.join(root, "var/lib/modsec-tools/events.db"), "w").close()
    _sh("dpkg", f"--root={root}", "--purge", "modsec-tools")
    assert not os.path.exists(os.path.join(root, "var/lib/modsec-tools"))
    assert os.path.exists(os.path.join(root, "var/log/modsec-tools/events.log"))
    assert not os.path.exists(os.path.join(root, "etc/fail2ban/filter.d/modsec.conf"))
    assert not os.path.exists(os.path.join(root, "etc/modsec-tools/modsec-tools.conf"))
    assert not os.path.exists(os.path.join(root, "usr/lib/python3/dist-packages/modsec_tools"))
    assert os.path.exists(os.path.join(etc, "jail.d/modsec.local"))
    # and the host saw nothing of it
    assert os.path.exists("/usr/lib/python3/dist-packages/modsec_tools") == host_marker
