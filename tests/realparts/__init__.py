"""Harnesses that run real services for tests: plain context managers, usable outside pytest.

* :class:`~tests.realparts.mariadb.MariaDB` -- a private ``mariadbd`` (temp datadir, private
  socket + 127.0.0.1:<free port>, user ``modsec`` with a random password).
* :class:`~tests.realparts.netns.NetNS` -- a throw-away network namespace (root).
* :class:`~tests.realparts.apache.ApacheModSec` -- Apache + mod_security2 + OWASP CRS writing
  real audit logs (loopback, or inside a NetNS).

pytest fixtures for all three live in :mod:`tests.realparts.fixtures`.  A missing binary,
package or privilege raises :class:`Unavailable`; the fixtures turn it into a skip (a failure
under ``CI=true``).
"""
from ._util import Unavailable
from .apache import ApacheModSec
from .mariadb import MariaDB
from .netns import NetNS

__all__ = ["ApacheModSec", "MariaDB", "NetNS", "Unavailable"]
