"""packaging/rpm/modsec-tools.spec builds (with Debian's rpmbuild, --nodeps) into an RPM
with the RHEL httpd paths, the fail2ban bundle as %config(noreplace), and the unit.

The RHEL macros (systemd scriptlets) are not available on a Debian host, and the build runs
``--without bundled_pyinotify`` so it needs no download; the bundled variant is the same
spec with one more source.

The package is pure Python: noarch, in python3.11's /usr/lib/python3.11/site-packages.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile

import pytest

from tests.test_deploy_deb import SYSTEM_PATH, _bundle_present, _copy_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "packaging", "rpm", "modsec-tools.spec")
PYVER = "3.11"


def _eval(macro: str) -> str:
    return subprocess.run(["rpm", "--eval", macro], capture_output=True, text=True,
                          check=True).stdout.strip()


SITELIB = f"/usr/lib/python{PYVER}/site-packages"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rpm(tmp_path_factory):
    if not shutil.which("rpmbuild", path=SYSTEM_PATH):
        pytest.skip("rpmbuild is not installed (apt-get install rpm)")
    if not _bundle_present():
        if os.environ.get("CI") == "true":
            pytest.fail("fail2ban/{filter,jail,action}.d must not be empty under CI")
        pytest.skip("the fail2ban bundle is not complete yet (being written)")
    top = tmp_path_factory.mktemp("rpm")
    tree = top / "modsec-tools-0.1.0"
    _copy_tree(str(tree))
    (top / "SOURCES").mkdir()
    with tarfile.open(top / "SOURCES" / "modsec-tools-0.1.0.tar.gz", "w:gz") as archive:
        archive.add(tree, arcname="modsec-tools-0.1.0")
    env = {"PATH": SYSTEM_PATH, "HOME": str(top), "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(["rpmbuild", "-bb", "--nodeps", "--without", "bundled_pyinotify",
                           "--define", f"_topdir {top}", SPEC], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert [p.name for p in (top / "RPMS").iterdir()] == ["noarch"]
    rpms = list((top / "RPMS" / "noarch").glob("modsec-tools-[0-9]*.noarch.rpm"))
    assert len(rpms) == 1, list((top / "RPMS").rglob("*.rpm"))
    return str(rpms[0])


def _query(path: str, *args: str) -> list[str]:
    return subprocess.run(["rpm", "-qp", *args, path], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_rpm_contents(rpm):
    files = set(_query(rpm, "-l"))
    for path in ("/usr/bin/modsec-tools", f"{SITELIB}/modsec_tools/cli.py",
                 f"{SITELIB}/modsec_tools/db/mysql.py",
                 f"{SITELIB}/modsec_tools-0.1.0.dist-info/METADATA",
                 "/etc/fail2ban/filter.d/modsec.conf", "/etc/fail2ban/jail.d/modsec.conf",
                 "/etc/fail2ban/action.d/modsec-block.py", "/etc/modsec-tools/modsec-tools.conf",
                 "/etc/fail2ban/action.d/modsec_blocker/batcher.py",
                 "/etc/fail2ban/action.d/modsec_blocker/backends/nft.py",
                 "/usr/lib/systemd/system/modsec-tools.service", "/etc/logrotate.d/modsec-tools",
                 "/var/lib/modsec-tools/quarantine", "/var/log/modsec-tools",
                 # where the manual page sends the administrator for fail2ban-regex
                 "/usr/share/doc/modsec-tools/examples/fail2ban-regex/modsec",
                 "/usr/share/doc/modsec-tools/examples/fail2ban-regex/modsec-recidive"):
        assert path in files, (path, sorted(f for f in files if "/doc/" in f))
    # pure Python: nothing compiled, nothing in the arch-specific site-packages
    assert not [f for f in files if f.endswith((".so", ".c"))]
    assert not [f for f in files if f.startswith(f"/usr/lib64/python{PYVER}/")]
    assert _query(rpm, "--qf", "%{ARCH}\n", "-q") == ["noarch"]
    config = set(_query(rpm, "-c"))
    assert {"/etc/fail2ban/filter.d/modsec.conf", "/etc/modsec-tools/modsec-tools.conf",
            "/etc/logrotate.d/modsec-tools"} <= config
    requires = " ".join(_query(rpm, "--requires"))
    for name in ("python3.11", "python3.11-PyMySQL", "fail2ban-server", "python3-inotify"):
        assert name in requires, name
    assert "libc.so" not in requires


def test_rpm_paths_fit_rhel(rpm, tmp_path):
    archive = tmp_path / "payload.tgz"
    with open(rpm, "rb") as source, open(archive, "wb") as out:
        subprocess.run(["rpm2archive", "-"], stdin=source, stdout=out, check=True)
    with tarfile.open(archive) as payload:
        payload.extractall(tmp_path, filter="data")
    with open(tmp_path / "etc/modsec-tools/modsec-tools.conf") as stream:
        text = stream.read()
    # the default tree, which httpd's children (user apache) can reach; /var/log/httpd is 0700
    assert "\n#storage_dir = /var/log/modsec_audit\n" in text
    assert not re.search(r"^storage_dir", text, re.M)
    with open(tmp_path / "usr/bin/modsec-tools") as stream:
        assert stream.readline() == "#!/usr/bin/python3.11 -I\n"
    with open(tmp_path / "usr/lib/systemd/system/modsec-tools.service") as stream:
        assert "ReadWritePaths=-/var/log/modsec_audit\n" in stream.read()


def test_the_action_python_version_is_stated_alike():
    """The spec, docs/install.md and the action itself give one minimum Python for the
    modsec-block action (fail2ban's interpreter, not modsec-tools'). (The spec said 3.9,
    RHEL 9 only, where the action and the docs say 3.6, RHEL 8 too.)"""
    def minimums(path: str, pattern: str) -> set[str]:
        with open(os.path.join(REPO, path), encoding="utf-8") as stream:
            text = " ".join(stream.read().replace("#", " ").split())
        return set(re.findall(pattern, text))
    action = minimums("fail2ban/action.d/modsec-block.py", r"written for Python >= (3\.\d+)")
    assert len(action) == 1
    for path, pattern in ((os.path.relpath(SPEC, REPO),
                           r"action (?:is written for|needs) Python >= (3\.\d+)"),
                          ("docs/install.md", r"action is written for Python ≥ (3\.\d+)")):
        assert minimums(path, pattern) == action, path
