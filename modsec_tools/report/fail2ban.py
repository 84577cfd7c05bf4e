"""Which addresses fail2ban has banned now, asked with ``fail2ban-client get JAIL banned``.

Only a question: the report changes nothing. fail2ban's socket is root's; an admin who runs
the report without root, or a host without fail2ban, gets the report without the answer
(and a line saying why).
"""
from __future__ import annotations

import ast
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Sequence

from .model import Fail2banState

DEFAULT_JAILS = ("modsec", "modsec-recidive")
_LOG_PREFIX = re.compile(r"^.*?\b(?:ERROR|WARNING|NOTICE)\s+")
TIMEOUT = 10.0


def banned_now(jails: Sequence[str], socket: str = "", timeout: float = TIMEOUT,
               client: str = "fail2ban-client") -> Fail2banState:
    jails = tuple(jails)
    if not jails:
        return Fail2banState()
    program = shutil.which(client)
    if program is None:
        return Fail2banState(jails, False, f"{client} is not installed")
    banned: set[str] = set()
    for jail in jails:
        command = [program, *(["-s", socket] if socket else []), "get", jail, "banned"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Fail2banState(jails, False, f"{client}: {exc}")
        if done.returncode != 0:
            # its log line without the time and process that prefix it
            why = _LOG_PREFIX.sub("", " ".join((done.stderr or done.stdout).split()))[:200]
            return Fail2banState(jails, False,
                                 f"jail {jail}: {why or f'exit status {done.returncode}'}")
        banned.update(_addresses(done.stdout))
    return Fail2banState(jails, True, "", frozenset(banned))


def _addresses(output: str) -> set[str]:
    """The list fail2ban prints (a Python literal), keeping only addresses."""
    try:
        value = ast.literal_eval(output.strip() or "[]")
    except (ValueError, SyntaxError):
        value = output.replace(",", " ").replace("'", " ").strip("[] \n").split()
    found = set()
    for item in value if isinstance(value, (list, tuple, set)) else ():
        try:
            found.add(str(ipaddress.ip_address(str(item).strip())))
        except ValueError:
            continue
    return found
