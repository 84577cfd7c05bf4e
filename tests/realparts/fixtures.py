"""pytest fixtures for the real-part harnesses; register with
``pytest_plugins = ["tests.realparts.fixtures"]`` (tests/conftest.py does).

=================  ========  ==============================================================
fixture            scope     gives
=================  ========  ==============================================================
``mariadb``        session   a running :class:`MariaDB` (``.url``, ``.connect()``, ``.stop()``...)
``mariadb_db``     function  the name of a fresh empty database on it (``mariadb.url_for(name)``)
``mariadb_private`` function a :class:`MariaDB` of the test's own (for crash/kill tests)
``netns``          function  a :class:`NetNS` (root)
``apache``         function  a started :class:`ApacheModSec` on 127.0.0.1:<free port>
``apache_netns``   function  a started :class:`ApacheModSec` inside ``netns`` (root)
=================  ========  ==============================================================

A missing real part (binary, package, root) skips the test with the reason, except under
``CI=true``, where it fails.  Tests using ``netns``/``apache_netns`` get the ``root`` marker.
A test may stop/kill the session ``mariadb``; ``mariadb_db`` starts it again for the next one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, NoReturn, TypeVar

import pytest

from ._util import Unavailable, free_port
from .apache import ApacheModSec
from .mariadb import MariaDB
from .netns import NetNS

ROOT_FIXTURES = {"netns", "apache_netns"}
T = TypeVar("T")


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail under CI=true (where every real part must be installed)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"real part unavailable under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require(factory: Callable[[], T]) -> T:
    """``factory()``, or skip/fail (see :func:`unavailable`) if it raises Unavailable."""
    try:
        return factory()
    except Unavailable as exc:
        reason = str(exc)
    unavailable(reason)                     # outside the except: no chained traceback


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a root-only fixture are ``root`` tests (runs before conftest's skipper)."""
    for item in items:
        if ROOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    with require(MariaDB) as server:
        yield server


@pytest.fixture
def mariadb_db(mariadb: MariaDB) -> Iterator[str]:
    if not mariadb.running:                 # an earlier outage test left it down
        mariadb.start()
    name = mariadb.create_database()
    yield name
    if mariadb.running:
        mariadb.drop_database(name)


@pytest.fixture
def mariadb_private() -> Iterator[MariaDB]:
    with require(MariaDB) as server:
        yield server


@pytest.fixture
def netns() -> Iterator[NetNS]:
    with require(NetNS) as ns:
        yield ns


@pytest.fixture
def apache(tmp_path: Path) -> Iterator[ApacheModSec]:
    with require(lambda: ApacheModSec(tmp_path)) as web:
        yield web


@pytest.fixture
def apache_netns(tmp_path: Path, netns: NetNS) -> Iterator[ApacheModSec]:
    # a port that is free on the host too, so "unreachable from the host" is meaningful
    with require(lambda: ApacheModSec(tmp_path, netns, listen=[("127.0.0.1", free_port())])) as web:
        yield web
