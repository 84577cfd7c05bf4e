"""``.ci/run`` leaves the host as it found it (issue 17): the policy-rc.d it writes so that
apt does not start the packages' services on the host is gone once the installs are done,
failed or interrupted; one the host had is left alone. And ``run-tests`` fails when pytest
collects nothing.

``.ci/run`` runs for real, in a private mount namespace where /usr/sbin is a directory of
the test's (so the policy-rc.d it writes is never the host's), with stand-ins for apt-get
and dpkg-query (every package missing; the stand-in apt-get records what the installs saw)
and for ./run-tests (records what the tests saw)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POLICY = "/usr/sbin/policy-rc.d"
OURS = "#!/bin/sh\nexit 101\n"
HOSTS_OWN = "#!/bin/sh\n# the host's own\nexit 0\n"

#: apt-get: records, at install time, the policy-rc.d it finds; then does what $FAKE_APT says.
APT_GET = f"""#!/bin/sh
[ "$1" = install ] || exit 0
cat {POLICY} > "$RECORD/at-install" 2>/dev/null || echo absent > "$RECORD/at-install"
case "$FAKE_APT" in
    fail) exit 100 ;;
    term) kill -TERM $PPID ;;
esac
exit 0
"""
DPKG_QUERY = "#!/bin/sh\nexit 1\n"  # nothing is installed
RUN_TESTS = f"""#!/bin/sh
cat {POLICY} > "$RECORD/at-tests" 2>/dev/null || echo absent > "$RECORD/at-tests"
exit "${{FAKE_TESTS:-0}}"
"""


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def ci_run(tmp_path: Path, policy: str | None = None,
           **env: str) -> tuple[int, dict[str, str], str | None]:
    """``.ci/run`` of a checkout whose ./run-tests is the stand-in, over a /usr/sbin holding
    ``policy`` as policy-rc.d (or none): its exit status, what the installs and the tests
    saw at /usr/sbin/policy-rc.d, and what is there afterwards."""
    checkout, record, fakes, sbin = (tmp_path / n for n in ("checkout", "record", "bin", "sbin"))
    for directory in (checkout / ".ci", record, fakes, sbin):
        directory.mkdir(parents=True)
    shutil.copy2(REPO / ".ci" / "run", checkout / ".ci" / "run")
    _script(checkout / "run-tests", RUN_TESTS)
    _script(fakes / "apt-get", APT_GET)
    _script(fakes / "dpkg-query", DPKG_QUERY)
    if policy is not None:
        _script(sbin / "policy-rc.d", policy)
    inside = f"mount --bind {sbin} /usr/sbin && exec {checkout}/.ci/run"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inside],
                          env={"PATH": f"{fakes}:/usr/bin:/bin", "RECORD": str(record),
                               "TMPDIR": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=60)
    assert "mount" not in done.stderr, done.stderr
    seen = {p.name: p.read_text() for p in record.iterdir()}
    left = sbin / "policy-rc.d"
    return done.returncode, seen, left.read_text() if os.path.lexists(left) else None


@pytest.mark.root
def test_policy_is_there_for_the_installs_and_gone_after(tmp_path):
    code, seen, left = ci_run(tmp_path)
    assert code == 0
    assert seen == {"at-install": OURS, "at-tests": "absent\n"}
    assert left is None


@pytest.mark.root
@pytest.mark.parametrize("how, status", [("fail", 1), ("term", 143)])
def test_policy_is_gone_when_the_installs_fail_or_are_interrupted(tmp_path, how, status):
    code, seen, left = ci_run(tmp_path, FAKE_APT=how)
    assert code == status
    assert seen == {"at-install": OURS}  # the tests never ran
    assert left is None


@pytest.mark.root
def test_a_policy_the_host_had_is_left_alone(tmp_path):
    code, seen, left = ci_run(tmp_path, HOSTS_OWN)
    assert code == 0
    assert seen == {"at-install": HOSTS_OWN, "at-tests": HOSTS_OWN}
    assert left == HOSTS_OWN


@pytest.mark.root
def test_the_tests_exit_status_is_ci_runs(tmp_path):
    code, _seen, _left = ci_run(tmp_path, FAKE_TESTS="3")
    assert code == 3


def test_run_tests_fails_when_pytest_collects_nothing():
    done = subprocess.run([str(REPO / "run-tests"), "-q", "-p", "no:cacheprovider",
                           "tests/test_ci_run.py", "-k", "no_test_has_this_name"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CI": "false"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pytest collected no tests: that is a failure" in done.stderr
