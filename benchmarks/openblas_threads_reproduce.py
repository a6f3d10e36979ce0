"""Does NumPy's OpenBLAS thread pool slow the main job? `kfm reproduce` with OPENBLAS_NUM_THREADS unset vs 1.

    python benchmarks/openblas_threads_reproduce.py [--mode quick|tiny] [--pairs 3]

NumPy's and SciPy's OpenBLAS start a worker per core that busy-waits after each call (see
kinetic_fm.gemm); the studies' covariances and eigenproblems run on it between torch passes. Each
pair runs the job twice from an empty output folder (nets trained, every stage computed), once with
the variable unset (as a user's shell has it) and once set to 1, the order alternating from pair to
pair; OMP_NUM_THREADS and MKL_NUM_THREADS are taken out of both environments. Prints each run's wall
time and the median of the pairs' ratios (unset / one thread): above 1, the pinned runs were faster.
Run it alone on the machine; quote the ratio (BENCHMARKS.md), not the seconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed_run(mode: str, threads: str | None) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = threads
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kinetic_fm.cli", "reproduce", f"--{mode}", "--out", tmp, "--quiet"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="quick", choices=("tiny", "quick", "full"))
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    print(f"kfm reproduce --{args.mode}, {os.cpu_count()} cores, {args.pairs} pairs")
    ratios = []
    for pair in range(args.pairs):
        order = (None, "1") if pair % 2 == 0 else ("1", None)
        seconds = {threads: timed_run(args.mode, threads) for threads in order}
        ratios.append(seconds[None] / seconds["1"])
        print(f"pair {pair + 1}: unset {seconds[None]:.1f} s, OPENBLAS_NUM_THREADS=1 {seconds['1']:.1f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"median ratio unset / one thread: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
