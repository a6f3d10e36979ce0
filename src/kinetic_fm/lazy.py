"""Names a package resolves on first access (a module ``__getattr__``, PEP 562), so that importing the package, or
one of its light modules, loads none of its heavy ones: the front door (``import kinetic_fm``) and
:mod:`kinetic_fm.runs` (whose results tables bring pyarrow) resolve their public names so."""
from __future__ import annotations

import importlib
from typing import Any, Iterable, Mapping


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


# what a package's __init__ imports for its own use (this module's functions): not its surface
_OWN_TOOLS = frozenset({"annotations", "importlib", "Any", "lazy_attribute", "package_dir"})


def package_dir(namespace: dict[str, Any], names: Iterable[str], own: Iterable[str] = ()) -> list[str]:
    """``dir()`` of a package that resolves ``names`` on first access: its globals (``namespace``) and
    ``names``, less what its ``__init__`` imports for its own use (``typing.Any``, this module's
    functions) and ``own``, the package's further names of no use to a user. A package's ``__dir__()``
    returns ``package_dir(globals(), TABLE)``."""
    return sorted((set(namespace) - _OWN_TOOLS - set(own)) | set(names))
