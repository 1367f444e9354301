"""frepo's version, defined once: in pyproject.toml, read back from the installed package's metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("frepo")
except PackageNotFoundError:  # a source tree on sys.path without `pip install`
    __version__ = "0+unknown"
