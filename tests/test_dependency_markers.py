"""The dependency markers hold where they matter: Python 3.12 dropped asyncore, which
pyinotify imports, so setup.cfg asks for the pyasyncore backport there. Installed from this
checkout into a fresh venv of a Python >= 3.12 (pip, from PyPI), the watcher must import and
its inotify reader must work."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

SMOKE = """
import os, sys, tempfile
import asyncore, pyinotify
from modsec_tools.daemon.watch import WATCH_MASK, read_inotify_events
wm = pyinotify.WatchManager()
with tempfile.TemporaryDirectory() as tmp:
    wm.add_watch(tmp, WATCH_MASK)
    with open(os.path.join(tmp, "entry"), "w") as stream:
        stream.write("x")
    events = read_inotify_events(wm.get_fd())
    print(sys.version_info[:2], asyncore.__file__, sorted(e.name for e in events))
"""


def newer_python() -> str | None:
    """A Python >= 3.12 on this machine: on PATH, or one pyenv built."""
    for name in ("python3.13", "python3.12"):
        found = shutil.which(name)
        if found and "/shims/" not in found:  # a pyenv shim runs only the selected version
            return found
    pyenv = os.path.expanduser(os.environ.get("PYENV_ROOT", "~/.pyenv"))
    for path in sorted(glob.glob(f"{pyenv}/versions/3.1[2-9]*/bin/python3"), reverse=True):
        return path
    return None


def test_python_312_and_later_get_pyasyncore_and_watch_imports(tmp_path):
    python = newer_python()
    if python is None:
        pytest.skip("no Python >= 3.12 on this machine (python3.12 on PATH or pyenv)")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    shown = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "show", "pyasyncore"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, "pyasyncore was not installed on Python >= 3.12"
    smoke = subprocess.run([str(venv / "bin" / "python"), "-c", SMOKE], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert smoke.returncode == 0, smoke.stderr
    assert "site-packages" in smoke.stdout and "'entry'" in smoke.stdout, smoke.stdout


def test_python_311_does_not_pull_the_backport():
    """On 3.11 asyncore is still in the standard library: the marker keeps pyasyncore out."""
    assert sys.version_info[:2] == (3, 11) or pytest.skip("the suite runs on another Python")
    import asyncore  # noqa: F401  (the stdlib one, deprecated but present)
    import pyinotify  # noqa: F401
    requires = (REPO / "setup.cfg").read_text()
    assert 'pyasyncore; python_version >= "3.12"' in requires
    from importlib import metadata
    assert not any(d.metadata["Name"].lower() == "pyasyncore" for d in metadata.distributions())
