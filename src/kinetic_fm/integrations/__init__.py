"""Bridges to other flow-matching ecosystems (flow_matching, diffusers).

Each submodule imports its third-party package on first use and says what to ``pip install``
when it is missing; ``import kinetic_fm`` never imports them.
"""
from __future__ import annotations

import importlib.util
import sys


def installed(package: str) -> bool:
    """Whether the top-level ``package`` is there to import, found without importing it
    (``sys.modules[package] = None``, Python's mark of a blocked import, reads as absent)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def import_failure(package: str, err: ImportError, user: str) -> ImportError:
    """The error for ``user`` (a module or function) when importing ``package`` raised ``err``.

    A missing package is named with what to install; an installed one that fails (a dependency of its
    own broken, a release without the name imported) quotes the error, which ``pip install`` cannot fix.
    """
    if isinstance(err, ModuleNotFoundError) and not installed(package):
        return ImportError(f"{user} needs the {package} package: pip install {package}")
    return ImportError(f"{user}: {package} is installed but failed to import ({err}); upgrade or reinstall it "
                       f"(pip install -U {package}), or the package that error names")
