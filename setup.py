"""setup.cfg declares the project; this file only adds the optional C extension, which
setup.cfg cannot declare. ``optional=True``: without a C compiler and Python's headers the
install still succeeds, and the parser uses its pure-Python twins (modsec_tools/speedups.py)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("modsec_tools._speedups", ["modsec_tools/_speedups.c"],
                             optional=True)])
