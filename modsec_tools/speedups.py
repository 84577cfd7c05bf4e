"""The optional C extension ``modsec_tools._speedups`` (built from ``_speedups.c``).

It holds C versions of the native parser's innermost loops, and of the loop deleting a
batch's entries (which runs without the GIL). Every function in it has a pure-Python twin
next to its caller that defines what it does; the tests require both to agree. When the
extension was not built (no C compiler at install time), ``C`` is None and the twins serve:
the same results, about half as fast.
"""
from __future__ import annotations

import os
from types import ModuleType

OFF = bool(os.environ.get("MODSEC_TOOLS_PURE_PYTHON"))  # to compare the two, or rule C out

C: ModuleType | None
if OFF:
    C = None
else:
    try:
        from . import _speedups as C
    except ImportError:
        C = None


def describe() -> str:
    """One line for --version and config check."""
    if C is not None:
        return "C speedups: built"
    if OFF:
        return "C speedups: off (MODSEC_TOOLS_PURE_PYTHON is set)"
    return "C speedups: not built (pure-Python parser)"
