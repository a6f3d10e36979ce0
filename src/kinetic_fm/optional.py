"""Optional packages, imported where they are used, with one wording when they cannot be.

Every lazy import of a package ``kinetic_fm`` does not depend on (faiss, transformers, diffusers,
flow_matching, torch-fidelity, torchvision) goes through :func:`import_optional` or
:func:`optional_names` (and so does the embedded digits' scikit-learn). Where the import fails
they raise ImportError, chained from what the import raised, that tells two cases apart:

- the package is not installed: ``"<user> needs the <package> package: pip install <dist>"``, with
  the extra that brings it where ``kinetic_fm`` declares one (``pip install kinetic_fm[clip]``);
- it is installed but fails to import (a dependency of its own missing or broken, a release
  without the name imported, an error raised while it loads): the error is quoted, with
  ``pip install -U <dist>``, since ``pip install`` alone answers "Requirement already satisfied".

Only the standard library is imported here: ``import kinetic_fm`` stays light.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any, NamedTuple


class Distribution(NamedTuple):
    """How an importable top-level package is named to a user: the distribution ``pip`` installs,
    and the extra of ``kinetic_fm`` that brings it (None where none does)."""
    name: str
    extra: str | None = None


# import name -> what to install; a name not listed installs under its import name
DISTRIBUTIONS: dict[str, Distribution] = {
    "faiss": Distribution("faiss-cpu", "faiss"),
    "diffusers": Distribution("diffusers", "diffusers"),
    "transformers": Distribution("transformers", "clip"),
    "flow_matching": Distribution("flow_matching", "flow_matching"),
    "torch_fidelity": Distribution("torch-fidelity"),
    "torchvision": Distribution("torchvision"),
    "sklearn": Distribution("scikit-learn"),
    "PIL": Distribution("pillow"),
}


def distribution(package: str) -> Distribution:
    """What to ``pip install`` for the top-level import name ``package``."""
    return DISTRIBUTIONS.get(package, Distribution(package))


def installed(package: str) -> bool:
    """Whether the top-level ``package`` is there to import, found without importing it
    (``sys.modules[package] = None``, Python's mark of a blocked import, reads as absent, as does
    a finder that refuses it with ImportError). A dotted name, a submodule of an imported package,
    is looked up alike (absent where its parent is a module, not a package)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a finder that blocks it; a module without __spec__
        return False


def import_failure(package: str, err: BaseException, user: str) -> ImportError:
    """The error for ``user`` (a module, function or CLI flag) when importing the top-level
    ``package`` (or a module or name in it) raised ``err``; raise it ``from err``.

    Not installed: names what to install (and the extra). Installed: quotes ``err``, which
    ``pip install`` cannot fix, and says to upgrade or reinstall.
    """
    dist = distribution(package)
    if not installed(package):
        extra = f" (or pip install kinetic_fm[{dist.extra}])" if dist.extra else ""
        return ImportError(f"{user} needs the {dist.name} package: pip install {dist.name}{extra}")
    return ImportError(f"{user}: {dist.name} is installed but failed to import ({type(err).__name__}: {err}); "
                       f"upgrade or reinstall it (pip install -U {dist.name}), or the package that error names")


def import_optional(module: str, user: str) -> types.ModuleType:
    """``module`` (dotted or not) imported for ``user``; ImportError from :func:`import_failure`
    where that fails, with whatever the import raised (an Exception of any kind) as its cause."""
    try:
        return importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - a broken install raises anything while it loads
        raise import_failure(module.partition(".")[0], err, user) from err


def optional_names(module: str, user: str, *names: str) -> tuple[Any, ...]:
    """``from module import names`` for ``user``, as a tuple; a name the module lacks (an older
    release), or one whose lazy loading fails (transformers'), is an installed package failing to
    import, reported as by :func:`import_optional`."""
    found = import_optional(module, user)
    try:
        return tuple(getattr(found, name) for name in names)
    except AttributeError as err:
        missing = ImportError(f"cannot import name {err.name!r} from {module!r}", name=module)
        raise import_failure(module.partition(".")[0], missing, user) from err
    except Exception as err:  # noqa: BLE001 - transformers imports a submodule on attribute access
        raise import_failure(module.partition(".")[0], err, user) from err
