"""The README's Python examples run as printed (a user copies them first).

Blocks that read the user's own files (data folders, trained runs) are run too: they must get as
far as opening the first such file and fail there with FileNotFoundError, nothing earlier.
"""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_USER_FILES = ("load_mnist(", "load_model(")


def _blocks() -> dict[str, str]:
    """Python blocks by "<section heading> #<n>" (n counts the blocks within the section)."""
    blocks, heading, count = {}, "top", 0
    for part in re.split(r"(^## [^\n]*$|```python\n.*?```)", README.read_text(), flags=re.S | re.M):
        if part.startswith("## "):
            heading, count = part[3:].strip(), 0
        elif part.startswith("```python"):
            count += 1
            blocks[f"{heading} #{count}"] = part[len("```python\n"):-3]
    return blocks


BLOCKS = _blocks()


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("name", list(BLOCKS))
def test_readme_example_runs(name, tmp_path, monkeypatch, capsys):
    block = BLOCKS[name]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    if any(marker in block for marker in NEEDS_USER_FILES):
        with pytest.raises(FileNotFoundError):
            exec(compile(block, str(README), "exec"), namespace)
    else:
        exec(compile(block, str(README), "exec"), namespace)
