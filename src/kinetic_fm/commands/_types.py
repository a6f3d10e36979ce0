"""argparse value types shared by the commands (plain Python: ``kfm --help`` stays fast)."""
from __future__ import annotations

import argparse


def seed_number(text: str) -> int:
    """A seed: an integer in [0, 2**63), as torch and NumPy generators take it."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text}")
    return value


def check_output_path(flag: str, path: str, *, folder: bool) -> None:
    """ValueError naming ``flag`` when ``path`` cannot be written as a folder (``folder``) or a
    file: it is a file where a folder is asked for (or the reverse), or a file stands where one of
    its parent folders would be made. Nothing is created here. The OS's own words ("[Errno 17]
    File exists") named neither the flag nor what was wrong, and for kfm train and kfm memorization
    came only after the data had loaded or the audit had run."""
    from pathlib import Path

    target = Path(path)
    if target.exists():
        if folder and not target.is_dir():
            raise ValueError(f"{flag} {path} is a file; name a folder (new, or one this command wrote)")
        if not folder and target.is_dir():
            raise ValueError(f"{flag} {path} is a folder; name a file")
        return
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, so no folder can be made inside it")
            return
