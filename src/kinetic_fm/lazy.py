"""Names a package resolves on first access (a module ``__getattr__``, PEP 562), so that importing the package, or
one of its light modules, loads none of its heavy ones: the front door (``import kinetic_fm``) and
:mod:`kinetic_fm.runs` (whose results tables bring pyarrow) resolve their public names so."""
from __future__ import annotations

import importlib
from typing import Any, Mapping


def lazy_attribute(namespace: dict[str, Any], table: Mapping[str, str], name: str) -> Any:
    """``name`` as the module ``table`` maps it to (a dotted module name) defines it, imported now and kept in
    ``namespace`` (the package's ``globals()``), so that the next access finds it there; AttributeError, in
    Python's words for a module, for a name ``table`` lacks. A package's ``__getattr__(name)`` returns
    ``lazy_attribute(globals(), TABLE, name)``."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
