"""What every backend is: one kernel transaction per batch of changes, behind one interface."""
import subprocess
from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Set

from ..addresses import Key

# subprocess.run(capture_output=True, text=True), spelt as Python 3.6 (RHEL 8's fail2ban) takes it
_CAPTURE = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "universal_newlines": True}


class BackendError(RuntimeError):
    """The kernel (or its tool) refused a change."""


def run(argv: List[str], stdin: Optional[str] = None, check: bool = True) -> "subprocess.CompletedProcess":
    proc = subprocess.run(argv, input=stdin, timeout=120, **_CAPTURE)
    if check and proc.returncode != 0:
        raise BackendError(f"{' '.join(argv[:4])}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Backend(ABC):
    """Kernel objects for one action (sets or a chain, and the rule matching them), and the
    changes of one batch applied to them in one transaction."""

    kind = ""
    how = ""                         # how transactions reach the kernel (fail2ban's log says it)

    def __init__(self, settings) -> None:
        self.s = settings

    @property
    def cheap(self) -> bool:
        """Whether a transaction costs little whatever the number of bans: not a program run
        (a fork of fail2ban's process) nor a whole table re-committed (libiptc).  The batcher
        spaces the other kind more."""
        return False

    @property
    def max_timeout(self) -> Optional[int]:
        """Longest timeout the kernel takes for an entry; None: any."""
        return self.s.maxtimeout

    @abstractmethod
    def setup(self) -> None:
        """Create the kernel objects (idempotent; keeps existing entries where possible)."""

    @abstractmethod
    def teardown(self) -> None:
        """Remove everything setup() created (idempotent)."""

    @abstractmethod
    def apply(self, adds: Dict[Key, Optional[int]], removes: List[Key]) -> None:
        """One transaction: add/refresh entries (timeout seconds, None = permanent), remove others."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every entry, keep the objects."""

    @abstractmethod
    def elements(self) -> Set[Key]:
        """The entries the kernel holds (right after setup(): those a crashed process left)."""
