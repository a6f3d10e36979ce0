"""Every Python file of the project compiles without a warning.

An invalid escape in a plain string (``"\\ "`` in a docstring) is a SyntaxWarning that Python prints
only when it compiles the file afresh, not when it reads the cached bytecode, so a user's first
import shows it and the test run usually does not; this compiles each file from its source.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for folder in ("src", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def test_the_project_has_python_files_to_check():
    assert any(p.name == "__init__.py" and p.parent.name == "kinetic_fm" for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_compiles_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
