"""aigw: a declarative AI gateway. The command line lives in ``aigw.cli``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aigw")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
