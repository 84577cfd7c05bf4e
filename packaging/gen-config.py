#!/usr/bin/env python3
"""Write packaging/modsec-tools.conf from modsec_tools.config.KEYS, the single source of truth.

    python3 packaging/gen-config.py            # rewrite packaging/modsec-tools.conf
    python3 packaging/gen-config.py --check    # exit 1 if the file is out of date (tests do this)

Every key appears commented out with its default, so a packaged conffile never pins a
default: a new release's defaults apply unless the administrator set the key. install.sh
uncomments the keys it detects (storage_dir, index_log) when it writes the file.
"""
from __future__ import annotations

import os
import sys
import textwrap

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from modsec_tools import config  # noqa: E402

TARGET = os.path.join(HERE, "modsec-tools.conf")

HEADER = f"""\
# {config.DEFAULT_CONFIG}: settings of modsec-tools (parse, ingest, watch, db, config).
#
# Generated from modsec_tools/config.py (packaging/gen-config.py): every key is listed with
# its help and, commented out, its default. Uncomment a key to change it, or better, put
# your changes in modsec-tools.local beside this file: it is read after this one and
# overrides it, and neither packages nor install.sh ever write it (fail2ban's convention).
# Every key is also a command-line flag: storage_dir <-> --storage-dir.
#
# Check your settings with:  modsec-tools config check
# Show the effective values: modsec-tools config show

[{config.SECTION}]
"""


def render() -> str:
    parts = [HEADER]
    for key in config.KEYS:
        lines = textwrap.wrap(key.help, width=88, initial_indent="# ",
                              subsequent_indent="# ")
        default = key.shown_default or key.default or "unset"
        lines.append(f"# default: {default}")
        lines.append(f"#{key.name} = {key.default}".rstrip())
        parts.append("\n" + "\n".join(lines) + "\n")
    return "".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        try:
            with open(TARGET, encoding="utf-8") as stream:
                current = stream.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{TARGET} is out of date: run python3 packaging/gen-config.py",
                  file=sys.stderr)
            return 1
        return 0
    with open(TARGET, "w", encoding="utf-8") as stream:
        stream.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
