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
