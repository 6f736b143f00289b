"""Retention Streams: shop events in, per-user state, online learners, retention actions out."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: The installed distribution's version (pyproject.toml), so `retention --version` and the package agree.
    __version__ = version("retention-streams")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
