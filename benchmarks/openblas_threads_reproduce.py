"""Does NumPy's OpenBLAS thread pool slow the main job? `kfm reproduce` with OPENBLAS_NUM_THREADS unset vs 1.

    python benchmarks/openblas_threads_reproduce.py [--mode quick|tiny] [--pairs 3] [--before SRC]

NumPy's and SciPy's OpenBLAS start a worker per core that busy-waits after each call (see
kinetic_fm.gemm); the studies' covariances and eigenproblems run on it between torch passes. Each
pair runs the job twice from an empty output folder (nets trained, every stage computed), once with
the variable unset (as a user's shell has it) and once set to 1, the order alternating from pair to
pair; OMP_NUM_THREADS and MKL_NUM_THREADS are taken out of both environments. Prints each run's wall
time and the median of the pairs' ratios (unset / one thread): above 1, the pinned runs were faster.
Since `kfm reproduce` holds the BLAS at one thread itself when the variable is unset, this mode compares
two pinned runs of a checkout that does; --before measures the change.

``--before SRC`` compares two versions of the library instead, both with the variable unset: SRC is the
``src`` folder of an older checkout (e.g. ``git worktree add --detach /tmp/before <commit>``, then
``--before /tmp/before/src``), whose package each pair runs once (PYTHONPATH=SRC), and this checkout's
``src`` the other time. It measures what `kfm reproduce` holding NumPy's BLAS at one thread itself
(kinetic_fm.gemm.numpy_blas_single_threaded) gives a user who set nothing; the median ratio printed is
before / now: above 1, this checkout was faster.

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
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"      # this checkout's package


def timed_run(mode: str, threads: str | None, src: str | None = None) -> float:
    """Seconds of one `kfm reproduce --mode` into a new folder; ``threads``: OPENBLAS_NUM_THREADS or
    None (unset); ``src``: a folder put first on the job's PYTHONPATH (the package it runs)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = threads
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kinetic_fm.cli", "reproduce", f"--{mode}", "--out", tmp, "--quiet"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="quick", choices=("tiny", "quick", "full"))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--before", metavar="SRC", default=None,
                        help="src folder of an older checkout: compare it with this one, OPENBLAS_NUM_THREADS unset")
    args = parser.parse_args()
    if args.before is not None and not (Path(args.before) / "kinetic_fm" / "__init__.py").is_file():
        parser.error(f"--before must be a src folder holding the kinetic_fm package, got {args.before!r}")
    # (label, OPENBLAS_NUM_THREADS, src) of the two runs of a pair; the ratio is first / second
    if args.before is None:
        runs = (("unset", None, None), ("OPENBLAS_NUM_THREADS=1", "1", None))
    else:
        runs = (("before", None, str(Path(args.before).resolve())), ("now", None, str(SRC)))
    print(f"kfm reproduce --{args.mode}, {os.cpu_count()} cores, {args.pairs} pairs"
          + ("" if args.before is None else f": {runs[0][2]} (before) vs {runs[1][2]} (now)"))
    ratios = []
    for pair in range(args.pairs):
        order = runs if pair % 2 == 0 else runs[::-1]
        seconds = {label: timed_run(args.mode, threads, src) for label, threads, src in order}
        first, second = (label for label, _, _ in runs)
        ratios.append(seconds[first] / seconds[second])
        print(f"pair {pair + 1}: {first} {seconds[first]:.1f} s, {second} {seconds[second]:.1f} s, "
              f"ratio {ratios[-1]:.3f}", flush=True)
    names = "unset / one thread" if args.before is None else "before / now"
    print(f"median ratio {names}: {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
