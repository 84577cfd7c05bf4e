"""An entry written to after it was read is never deleted (issue #15, F4).

The web user owns its entry files and may append to one between our read and our delete
(as may a slow writer). Whatever was read is archived; the file is deleted only while it
still is what was read (inode, size, mtime, ctime as journaled), else it is taken again, so
the bytes written after the read reach the archive too. The same holds when the delete
comes from crash recovery.
"""
from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests import ingest_helpers as ih
from tests.ingest_helpers import fast_tmp  # noqa: F401  (a fixture)

pytestmark = pytest.mark.root

WWW = pwd.getpwnam("www-data")
APPENDED = b"--appended-after-the-read--\n"

#: ``ingest`` with the attacker in the gap between the commit and the delete: as www-data
#: it appends to every entry of the batch; with CRASH set, the process then dies (kill -9)
#: before deleting anything, leaving the delete to the next run's recovery.
ATTACKED = ("-c", f"""
import os, subprocess, sys
from modsec_tools.pipeline import ingest
deleting = ingest.Pipeline._remove_later
def attacked(self, seq, entries):
    for ref, *_ in entries:
        path = os.path.join(self.settings.storage_dir, *ref.dirs, ref.name)
        subprocess.run(["runuser", "-u", "www-data", "--", "sh", "-c",
                        'printf "%s" "$1" >> "$2"', "sh", {APPENDED.decode()!r}, path],
                       check=True)
    if os.environ.get("CRASH_AFTER_ATTACK"):
        os.kill(os.getpid(), 9)
    return deleting(self, seq, entries)
ingest.Pipeline._remove_later = attacked
from modsec_tools.cli import main
sys.argv[0] = "modsec-tools"
sys.exit(main())
""")


def _web_owned_entry(root: Path) -> tuple[ih.Sandbox, Path, bytes]:
    root.chmod(0o755)
    sb = ih.Sandbox(root, settings={"workers": "0"}, launcher=ATTACKED)
    (uid, data), = ih.plant_data_entries(sb.storage, ["Changed"]).items()
    path = next(sb.storage.rglob(f"*-{uid}"))
    os.chown(path, WWW.pw_uid, WWW.pw_gid)
    return sb, path, data


def test_an_entry_appended_to_after_the_read_is_kept_and_taken_again(fast_tmp):
    sb, path, data = _web_owned_entry(fast_tmp)
    first = sb.run()
    assert "changed after it was read; not deleting it" in first.stderr, first.stderr
    assert path.read_bytes() == data + APPENDED      # nothing deleted unarchived
    assert sb.archived() == [ih.archived_form(data)]
    sb.launcher = ("-m", "modsec_tools.cli")
    ih.age_tree(sb.storage)  # the next run comes once the changed file has settled
    sb.run()
    assert not path.exists()
    assert sb.archive.read_bytes() == ih.archived_form(data) + ih.archived_form(data + APPENDED)


def test_recovery_does_not_delete_an_entry_that_changed_before_the_crash(fast_tmp):
    sb, path, data = _web_owned_entry(fast_tmp)
    env = {**ih.cli_env(), "CRASH_AFTER_ATTACK": "1"}
    crashed = subprocess.run(sb.command(), cwd=ih.REPO, env=env, capture_output=True,
                             text=True, timeout=120)
    assert crashed.returncode == -9, crashed.stderr
    assert path.read_bytes() == data + APPENDED
    sb.launcher = ("-m", "modsec_tools.cli")
    ih.age_tree(sb.storage)  # the next run comes once the changed file has settled
    sb.run()
    assert not path.exists()
    assert sb.archive.read_bytes() == ih.archived_form(data) + ih.archived_form(data + APPENDED)
