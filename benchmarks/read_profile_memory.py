"""Peak memory of ``read_profile`` on a fixed-step ``kfm sample --profile`` run: shard by shard
into the result (now) against merging every shard's Arrow columns first and converting after (the
route before), each in a fresh process, on the same run folder.

Builds the run once (``--n`` samples of the 16-dimensional Gaussian field, ``--steps`` Euler
steps, float64, shards of 1,000) unless ``--run`` names an existing one, then prints for each
route: the result's size, the Arrow pool's peak, the peak of Python/NumPy allocations
(tracemalloc) and their sum, in MiB, the ratio of the sums, and whether both routes return the
same arrays.

    python benchmarks/read_profile_memory.py [--n 20000] [--steps 200] [--run DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import hashlib, sys, tracemalloc
import numpy as np
import pandas  # noqa: F401  (Arrow's dtype mapping imports it on first use: not the call's memory)
import pyarrow as pa
from kinetic_fm.runs.manifest import read_manifest
from kinetic_fm.runs.shards import PROFILE, PROFILE_TIMES, TIMES, merge_shards, profile_from_table, read_profile

run, route = sys.argv[1], sys.argv[2]
read_manifest(run)                      # warm imports and caches outside the measured call
pool = pa.default_memory_pool()
start_arrow = pool.max_memory()
tracemalloc.start()
if route == "now":
    times, increments = read_profile(run)
else:                                   # the route before: merge every shard, then convert
    manifest = read_manifest(run)
    table = merge_shards(run, manifest, columns=[PROFILE, TIMES])
    times, increments = profile_from_table(table, manifest.runtime.get(PROFILE_TIMES))
    del table
_, numpy_peak = tracemalloc.get_traced_memory()
digest = hashlib.sha256(np.ascontiguousarray(times).tobytes() + np.ascontiguousarray(increments).tobytes())
print(increments.nbytes, pool.max_memory() - start_arrow, numpy_peak, digest.hexdigest())
"""

MIB = 2.0 ** 20


def measure(run: Path, route: str) -> tuple[int, int, int, str]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(run), route], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]), int(out[2]), out[3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--run", type=Path, help="an existing fixed-step kfm sample --profile run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            from kinetic_fm.cli import main as kfm

            run = Path(tmp) / "run"
            kfm(["sample", "--field", "gaussian", "--dim", "16", "--n", str(args.n), "--steps", str(args.steps),
                 "--dtype", "float64", "--profile", "--no-save-x", "--shard-size", "1000",
                 "--batch-size", "1000", "--no-progress", "--out", str(run)])
        rows = {route: measure(run, route) for route in ("before", "now")}
    print(f"\nread_profile({run.name}): MiB, one fresh process per route")
    print(f"{'route':8} {'result':>8} {'Arrow peak':>11} {'NumPy peak':>11} {'sum':>8}")
    for route, (result, arrow, numpy_peak, _) in rows.items():
        print(f"{route:8} {result / MIB:8.1f} {arrow / MIB:11.1f} {numpy_peak / MIB:11.1f} "
              f"{(arrow + numpy_peak) / MIB:8.1f}")
    before, now = (rows[r][1] + rows[r][2] for r in ("before", "now"))
    print(f"peak before / now: {before / now:.2f}x; same arrays: {rows['before'][3] == rows['now'][3]}")


if __name__ == "__main__":
    main()
