"""The firewall backends: one module each, behind one base class (base.Backend).

BACKENDS is the one registry: option checking, `backend = auto` and the action all read it.
A backend's module is imported when the backend is used (iptables-legacy needs
python-iptables, which only legacy hosts have).
"""
import importlib
import shutil
import subprocess
from typing import Dict, Tuple, Type

# name -> (module of this package, class)
BACKENDS: Dict[str, Tuple[str, str]] = {
    "nftables": ("nft", "NftBackend"),
    "ipset": ("ipset", "IpsetBackend"),
    "iptables-legacy": ("legacy", "LegacyBackend"),
}


def backend_class(kind: str) -> Type:
    """The class of a registered backend (importing its module)."""
    module_name, class_name = BACKENDS[kind]
    return getattr(importlib.import_module("." + module_name, __name__), class_name)


def detect_backend() -> str:
    """What `backend = auto` means on this host, from `iptables -V`.

    python-iptables drives libiptc, which only sees the *legacy* tables: on an nf_tables host
    its rules would be invisible to `iptables -S` and to the host's firewall tooling, so it is
    chosen only where iptables is the legacy flavour (or has no flavour: before 1.8).
    """
    iptables = shutil.which("iptables")
    if iptables:
        version = subprocess.run([iptables, "-V"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True, timeout=30).stdout
        if "nf_tables" not in version:
            try:
                import iptc  # noqa: F401  (python-iptables, the in-process path)
                return "iptables-legacy"
            except Exception:                  # pragma: no cover - depends on the host
                return "ipset"
    return "nftables" if shutil.which("nft") else "ipset"
