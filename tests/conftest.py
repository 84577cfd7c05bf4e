import os

import pytest

pytest_plugins = ["tests.realparts.fixtures"] if os.path.exists(
    os.path.join(os.path.dirname(__file__), "realparts", "fixtures.py")) else []


def pytest_collection_modifyitems(config, items):
    """Root-only tests skip for a non-root developer; under CI (root) they always run."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, chown, iptables)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
