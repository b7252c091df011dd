"""Lazy public names for sub-packages (PEP 562), so importing a light module stays light.

``import mammography.analysis.selection`` must not pull in torch, pandas and
matplotlib just because ``mammography/analysis/__init__.py`` re-exports the
heavy entry points; each package maps its public names to the modules that
define them and imports a module on first use of one of its names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``name -> defining module`` lazily.

    Parameters
    ----------
    package : the package's ``__name__`` (for the error message).
    exports : public name -> fully qualified module defining it.
    """

    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
