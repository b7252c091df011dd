"""mammography: show and measure where a breast-density classifier looks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mammography")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
