"""Bridges to other flow-matching ecosystems (flow_matching, diffusers).

Each submodule imports its third-party package on first use and says what to ``pip install``
when it is missing (through :mod:`kinetic_fm.optional`, as every optional import does);
``import kinetic_fm`` never imports them.
"""
from __future__ import annotations

from ..optional import import_failure, installed  # noqa: F401 - their home before kinetic_fm.optional

__all__ = ["import_failure", "installed"]
