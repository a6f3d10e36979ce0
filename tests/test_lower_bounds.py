""".ci/lower-bounds.txt pins exactly the floors pyproject.toml declares (CI runs the suite on them)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement.lower())


def _version(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def declared_floors() -> dict[str, tuple[int, ...]]:
    try:
        import tomllib                                 # Python ≥ 3.11
    except ModuleNotFoundError:
        tomllib = pytest.importorskip("tomli")         # 3.10: pytest's own TOML reader there
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    floors = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.\-]+)\s*>=\s*([0-9.]+)", requirement)
        assert match, f"pyproject.toml: {requirement!r} declares no lower bound"
        name = _name(match.group(1))
        if name != "torch":       # CI installs the CPU build 2.13.0 in both environments
            floors[name] = _version(match.group(2))
    return floors


def pinned() -> dict[str, tuple[int, ...]]:
    pins = {}
    for line in (ROOT / ".ci" / "lower-bounds.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = _version(version)
    return pins


def test_every_declared_floor_is_pinned_in_the_lower_bounds_run():
    assert pinned() == declared_floors()
