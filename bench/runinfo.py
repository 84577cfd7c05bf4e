"""What a benchmark's table says it ran on (the commit measured, the machine), and its
section of bench/RESULTS.md rewritten in place."""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code_version() -> str:
    """The commit measured, marked when the tree has uncommitted changes."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return git("rev-parse", "--short", "HEAD").strip() + (" + uncommitted changes" if dirty else "")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return f"{os.cpu_count()} vCPUs ({model}), Linux {platform.release()}"


def write_section(path: Path, section: str) -> None:
    """Replace the section of ``path`` that starts with ``section``'s heading line (up to the
    next '## ' heading), or append it; the other sections are kept."""
    heading = section.split("\n", 1)[0]
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def publish(section: str, results: Path | None) -> None:
    """Print a benchmark's section, and write it into ``results`` when given."""
    print(f"\n{section}")
    if results is not None:
        write_section(results, section)
        print(f"updated {results}")
