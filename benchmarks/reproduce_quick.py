"""Wall time of the main job on the embedded default, from an empty output folder (no cache).

    python benchmarks/reproduce_quick.py [--mode quick|tiny]

Prints the total and the per-stage seconds the report records. Target: `--quick` <= 10 min on 2 cores.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="quick", choices=("tiny", "quick", "full"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kinetic_fm.cli", "reproduce", f"--{args.mode}", "--out", tmp, "--quiet"],
                       check=True)
        total = time.perf_counter() - start
        stages = re.search(r"\| seconds per stage \| (.*?) \|", (Path(tmp) / "report.md").read_text())
    print(f"kfm reproduce --{args.mode}: {total:.0f} s wall ({total / 60:.1f} min; target <= 10 min for quick)")
    if stages:
        print(f"  per stage (s): {stages.group(1)}")


if __name__ == "__main__":
    main()
