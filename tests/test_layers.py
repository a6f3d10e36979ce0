"""Imports point down the layers of docs/ARCHITECTURE.md §1.

Every module under src/kinetic_fm is parsed with ``ast``, and every import of a kinetic_fm module
in it must name a module on the importer's own layer or on one below. That holds wherever the
import stands (module level, inside a function or class, under ``if TYPE_CHECKING:`` or ``try:``)
and whatever its form (``import kinetic_fm.x.y``, ``from kinetic_fm.x import y``, ``from ..x import
y``, ``from .. import y``, ``importlib.import_module("kinetic_fm.x")``). A lazy import gets no
pass: deferred to call time, it is still a lower layer depending on a higher one.

The one exception is listed in ``UPWARD`` with its reason. It must stay inside a function, and
an entry that no import matches any more fails the test, so the list cannot go stale.

``from kinetic_fm import y`` (or ``from .. import y`` at that depth) names the submodule
``kinetic_fm.y`` when there is one (``from .. import gemm``); otherwise it takes a name from the
package's front door, ``kinetic_fm/__init__.py``, which is on the top layer. Importing
``kinetic_fm.x.y`` runs the packages above it first (Python's doing, not a dependency of the
importer), so only the module named counts. Imports by computed names (the front door's lazy
table, the CLI's verb lookup) are out of sight here; both sit on the top layer (the runs package's lazy table
names its own modules only).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "kinetic_fm"

# docs/ARCHITECTURE.md §1, top to bottom: one row per layer. "__init__" is the package's front
# door; the other names are the top-level modules and subpackages of kinetic_fm.
MAP = [
    ("__init__", "__main__", "cli", "commands"),
    ("studies",),
    ("metrics", "integrations"),
    ("sampling",),
    ("fields",),
    ("models", "data"),
    ("runs",),
    ("checks", "holdings", "gemm", "blocks", "knn", "norms", "exact_scaling", "optional", "run_files", "lazy",
     "result_repr", "_version"),
]
LAYER = {name: len(MAP) - row for row, names in enumerate(MAP) for name in names}

# (importer, imported) -> why this import may point up. Each must be a lazy import.
UPWARD = {
    ("kinetic_fm.models.checkpoint", "kinetic_fm.fields.adapters"):
        "load_into(net, path, num_timesteps=T), public, hands the net back wrapped in "
        "DiscreteTime, a field adapter; imported only when it wraps, so `import "
        "kinetic_fm.models` never loads the fields",
}


@dataclass(frozen=True)
class Import:
    importer: str     # dotted module name
    imported: str     # dotted module name
    line: int
    lazy: bool        # inside a function

    def __str__(self) -> str:
        where = "inside a function" if self.lazy else "at module level"
        return f"{self.importer}:{self.line} imports {self.imported} ({where})"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def imports_in(source: str, importer: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import of a kinetic_fm module in ``source`` (the text of module ``importer``)."""
    found: list[Import] = []
    here = importer.split(".") if is_package else importer.split(".")[:-1]   # for relative imports

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                add(submodule if submodule in known else module, node.lineno, lazy)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            add(node.args[0].value, node.lineno, lazy)
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    def add(module: str, line: int, lazy: bool) -> None:
        imp = Import(importer, module, line, lazy)
        if (module == "kinetic_fm" or module.startswith("kinetic_fm.")) and imp not in found:
            found.append(imp)

    visit(ast.parse(source), False)
    return found


def layer_key(module: str) -> str:
    """The map's name for a kinetic_fm module: its top-level module or subpackage, or "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def describe(module: str) -> str:
    key = layer_key(module)
    return "the front door (kinetic_fm/__init__.py)" if key == "__init__" else key


def every_import() -> list[Import]:
    modules = all_modules()
    known = set(modules)
    return [imp for name, path in modules.items()
            for imp in imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)]


def test_every_module_is_on_the_map_and_every_name_on_it_exists():
    modules = all_modules()
    keys = {layer_key(name) for name in modules}
    assert not keys - set(LAYER), (f"not on the layer map: {sorted(keys - set(LAYER))}; add them to "
                                   "docs/ARCHITECTURE.md §1 and to MAP here")
    assert not set(LAYER) - keys, f"on the map but not in the package: {sorted(set(LAYER) - keys)}"


def test_the_map_is_the_documented_one():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = re.search(r"## 1\..*?```\n(.*?)```", text, re.S).group(1)
    rows = []
    for line in block.splitlines():
        if line and not line[0].isspace():          # a layer's line starts with its modules' names
            names = []
            for word in line.split():
                if not word.endswith(("/", ".py")):
                    break
                names.append(word.removesuffix("/").removesuffix(".py"))
            rows.append(tuple(names))
    assert rows == MAP


def test_imports_point_down():
    found = every_import()
    assert len(found) > 100           # the reader sees the package's imports
    upward = [imp for imp in found if LAYER[layer_key(imp.imported)] > LAYER[layer_key(imp.importer)]
              and not ((imp.importer, imp.imported) in UPWARD and imp.lazy)]
    assert not upward, "imports pointing up the layers of docs/ARCHITECTURE.md §1:\n" + "\n".join(
        f"  {imp}: {describe(imp.importer)} is below {describe(imp.imported)}" for imp in upward)


@pytest.mark.parametrize("pair", sorted(UPWARD))
def test_the_allowed_upward_import_is_lazy_and_still_there(pair):
    matches = [imp for imp in every_import() if (imp.importer, imp.imported) == pair]
    assert matches, f"{pair[0]} no longer imports {pair[1]}: drop it from UPWARD"
    eager = [str(imp) for imp in matches if not imp.lazy]
    assert not eager, f"allowed upward only inside a function ({UPWARD[pair]}): {eager}"


def test_the_reader_sees_every_form_of_import():
    source = '''
import torch
import kinetic_fm.sampling.energy as energy
from kinetic_fm import gemm, KTS
from typing import TYPE_CHECKING
from . import mlp
from .. import blocks
from ..fields.adapters import DiscreteTime
from .registry import build_model
if TYPE_CHECKING:
    from ..metrics import neighbors
try:
    from ..studies.figures import plot
except ImportError:
    pass

class Loader:
    def load(self):
        from ..data import images
        return importlib.import_module("kinetic_fm.cli")

def later():
    from .. import __version__
    return lambda: __import__("os")
'''
    known = {"kinetic_fm", "kinetic_fm.gemm", "kinetic_fm.blocks", "kinetic_fm.models",
             "kinetic_fm.models.mlp", "kinetic_fm.models.registry", "kinetic_fm.metrics.neighbors",
             "kinetic_fm.data.images"}
    got = [(imp.imported, imp.lazy) for imp in imports_in(source, "kinetic_fm.models.checkpoint", False, known)]
    assert got == [
        ("kinetic_fm.sampling.energy", False),
        ("kinetic_fm.gemm", False), ("kinetic_fm", False),          # a submodule; a name of the front door
        ("kinetic_fm.models.mlp", False),
        ("kinetic_fm.blocks", False),
        ("kinetic_fm.fields.adapters", False),
        ("kinetic_fm.models.registry", False),
        ("kinetic_fm.metrics.neighbors", False),
        ("kinetic_fm.studies.figures", False),
        ("kinetic_fm.data.images", True),
        ("kinetic_fm.cli", True),
        ("kinetic_fm", True),
    ]
    # in a package's __init__, "." is the package itself
    got = [imp.imported for imp in imports_in("from .checkpoint import load_model\nfrom ..knn import as_rows",
                                              "kinetic_fm.models", True, {"kinetic_fm.models.checkpoint"})]
    assert got == ["kinetic_fm.models.checkpoint", "kinetic_fm.knn"]


def test_names_moved_down_still_import_from_their_old_homes():
    import kinetic_fm
    from kinetic_fm import _version, knn, norms
    from kinetic_fm.metrics.neighbors import check_finite, nearest_neighbors
    from kinetic_fm.sampling.energy import squared_norm

    assert squared_norm is norms.squared_norm
    assert nearest_neighbors is knn.nearest_neighbors and check_finite is knn.check_finite
    assert kinetic_fm.__version__ == _version.__version__


# --- private modules: a `_name` module is its own package's business ---------------------------

def reached_from_outside(found: list[Import]) -> list[Import]:
    """The imports of a private module (a ``_name`` part, not a dunder) made from outside the package
    that holds it: ``kinetic_fm.commands._rows`` may serve ``kinetic_fm.commands.*`` only, and
    ``kinetic_fm._version`` all of kinetic_fm."""
    outside = []
    for imp in found:
        parts = imp.imported.split(".")
        private = [i for i, part in enumerate(parts) if part.startswith("_") and not part.startswith("__")]
        if not private:
            continue
        owner = ".".join(parts[:private[0]])
        if imp.importer != owner and not imp.importer.startswith(owner + "."):
            outside.append(imp)
    return outside


def test_a_private_module_is_imported_only_inside_its_own_package():
    # commands/_rows.py read arrays through metrics/_arrays.py: a file reader, private to the metrics,
    # used by the commands alone; it is data/arrays.py (load_array) now, public
    outside = reached_from_outside(every_import())
    assert not outside, ("private modules imported from outside their package (give what they share a "
                         "public home):\n" + "\n".join(f"  {imp}" for imp in outside))


def test_the_private_module_check_sees_a_neighbour_reaching_in():
    known = {"kinetic_fm.metrics._arrays", "kinetic_fm.commands._rows", "kinetic_fm._version"}
    reaching = imports_in("from ..metrics._arrays import load_array", "kinetic_fm.commands._rows", False, known)
    assert [imp.imported for imp in reached_from_outside(reaching)] == ["kinetic_fm.metrics._arrays"]
    at_home = imports_in("from ._rows import load_rows\nfrom .._version import __version__",
                         "kinetic_fm.commands.sample", False, known)
    assert len(at_home) == 2 and reached_from_outside(at_home) == []


def test_a_run_folder_s_file_names_are_imported_from_run_files():
    # commands/memorization.py took MANIFEST_NAME from runs.manifest, and TRAIN_CONFIG_NAME from run_files
    names = {"MANIFEST_NAME", "TRAIN_CONFIG_NAME"}
    elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and names & {alias.name for alias in node.names}:
                if (node.module or "").split(".")[-1] != "run_files":
                    elsewhere.append(f"{path.relative_to(PACKAGE)}:{node.lineno} from {'.' * node.level}{node.module}")
    assert not elsewhere, elsewhere
