"""Peak memory of whole-set passes in the metrics: ours against the one-expression versions.

The thirteenth session replaced four passes that made temporaries the size of the whole set:

- the set metrics' non-finite check (``as_features``) against ``torch.isfinite(x).all()``;
- Scott's bandwidth rule by column blocks against ``x.double().var(dim=0)``;
- the faiss cache's column sums in the set's dtype against ``x.sum(dim=0, dtype=torch.float64)``;
- the float64 re-screening of uncertified queries (``nearest_neighbors`` of x/t at small t, the
  search EFM's truncated mode made before the fourteenth session and its faiss backend still makes)
  in chunks of at most 64 MiB against the search's own 16,384-row chunks;
- and, since the fourteenth session, decoding uint8 images to float (the CIFAR-10 and image-folder
  loaders, ``uint8_to_signed``) into one float tensor against ``.to(float32)`` of the channel-first
  view followed by ``.contiguous()``.

Since the thirty-second session, whole calls of the metrics that centre the reference set on its
mean (``--cases kde distance_blocks precision_recall local_support``; ``--cases all`` for every
case): ``kde_log_density`` (Scott's rule), a sweep of ``sq_distance_blocks`` reduced block by block,
``precision_recall`` (fake = the samples) and ``local_support`` (the k-NN search, which centres
nothing), each of ``--samples`` samples against the set as the reference. With ``--previous REV``
each of them also runs on the package as committed at REV (``git archive REV src``, extracted to a
temporary folder and put first on the child's path), so both are measured side by side; the peak
is also given as a multiple of the inputs' size (the set and the samples).

    python benchmarks/metrics_memory.py            # 50,000 x 3,072 float32 (CIFAR-10 sized)
    python benchmarks/metrics_memory.py --quick    # 10,000 x 3,072
    python benchmarks/metrics_memory.py --cases kde distance_blocks --previous 16668bd

``--cases memorization_faiss`` measures ``kfm.memorization(samples, set, backend="faiss")``, whose search
held faiss's own copy of the set (an ``IndexFlatL2``) before the thirty-eighth session:

    python benchmarks/metrics_memory.py --cases memorization_faiss --samples 500 --previous b03773f

``--cases ball_tests`` measures ``precision_recall``'s sweep of ball tests alone (``_ball_memberships``,
``--samples`` fake against the set, radii of half the squared distance to a random row of the same
set), whose buffers are cut to ``fidelity.BALL_TEST_BYTES`` each since helper-211:

    python benchmarks/metrics_memory.py --quick --cases ball_tests precision_recall --previous main

Each measurement runs in a fresh process: the set is made, the process's peak resident memory is
reset (Linux: /proc/self/clear_refs), the pass runs, and the peak above the resident size before it
is reported with the pass's wall time. Memory is what this script claims; times are one run each
(``benchmarks/centred_chunks_speed.py`` times the centring metrics old against new, alternating).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the passes made lighter by the thirteenth and fourteenth sessions, against one-expression versions
NAIVE_CASES = ("finite", "scott", "column_sums", "decode", "rescreen")
# whole calls of the metrics that centre the reference (thirty-second session), against --previous
CENTRING_CASES = ("kde", "distance_blocks", "precision_recall", "local_support")
# the exact k-NN self-search of precision_recall's radii, and the pass over its k-th neighbours that
# follows it (helper-179: glibc's heap as the peak's moving part), and its sweep of ball tests alone
# (helper-211), measured like the centring cases
SEARCH_CASES = ("self_search", "kth_radii", "ball_tests", "memorization_faiss")


def _centring_call(case: str, x, samples):
    """The call measured by a case of CENTRING_CASES, on the set ``x`` as the reference."""
    import kinetic_fm as kfm
    from kinetic_fm.metrics.density import sq_distance_blocks

    if case == "kde":
        return lambda: kfm.kde_log_density(samples, x)                  # Scott's bandwidth
    if case == "distance_blocks":
        return lambda: min(float(d2.min()) for _, _, d2 in sq_distance_blocks(samples, x))
    if case == "precision_recall":
        return lambda: kfm.precision_recall(x, samples, k=3)
    if case == "local_support":
        return lambda: kfm.local_support(samples, x, k=5)
    if case == "self_search":
        return lambda: kfm.nearest_neighbors(x, x, 3, exclude_self=True, check_inputs=False)
    if case == "memorization_faiss":  # the audit's faiss route (thirty-eighth session: no index copy of the set)
        return lambda: kfm.memorization(samples, x, bootstrap=0, backend="faiss")
    if case == "kth_radii":  # the pass alone: the search's answer stands in as random rows
        import torch

        from kinetic_fm.metrics import fidelity
        from kinetic_fm.metrics.neighbors import Neighbors

        kth = torch.randint(0, x.shape[0], (x.shape[0], 1), generator=torch.Generator().manual_seed(2))
        fidelity.nearest_neighbors = lambda *args, **kwargs: Neighbors(kth.double(), kth)
        return lambda: fidelity._kth_neighbour_sq_radius(x, 3, 8192, 1024, "real")
    if case == "ball_tests":  # precision_recall's sweep alone (helper-211: its buffers cut to 16 MiB each)
        import torch

        from kinetic_fm.metrics import fidelity

        # radii: half the squared distance to a random other row of the same set (no search before the reset)
        def radii(rows, seed):
            other = torch.randint(0, rows.shape[0], (rows.shape[0],), generator=torch.Generator().manual_seed(seed))
            return fidelity._exact_sq_distances(rows, rows[other]) * 0.5

        r2_real, r2_fake = radii(x, 3), radii(samples, 4)
        return lambda: fidelity._ball_memberships(samples, x, r2_real, r2_fake, 8192, 1024)
    raise ValueError(f"unknown case {case!r}")


def _measure(case: str, variant: str, rows: int, dim: int, samples: int) -> dict:
    import torch
    from _common import resident_mib

    torch.manual_seed(0)
    x = torch.empty(rows, dim).uniform_(-1.0, 1.0)
    work = None
    if case in CENTRING_CASES + SEARCH_CASES:  # "previous" differs from "ours" only by the package on the path
        queries = torch.empty(samples, dim).uniform_(-1.0, 1.0, generator=torch.Generator().manual_seed(1))
        work = _centring_call(case, x, queries)
        from kinetic_fm import gemm

        gemm.cpu_gemm()  # the once-a-process timing of the CPU BLAS (its 74 MiB of operands) before the reset
    if case == "finite":
        from kinetic_fm.metrics.features import as_features

        work = (lambda: as_features(x, None, argument="x")) if variant == "ours" else (
            lambda: bool(torch.isfinite(x).all()))
    elif case == "scott":
        from kinetic_fm.metrics.density import scott_bandwidth

        work = (lambda: scott_bandwidth(x)) if variant == "ours" else (
            lambda: x.to(torch.float64).var(dim=0).mean().sqrt().item())
    elif case == "column_sums":
        work = (lambda: x.sum(dim=0)) if variant == "ours" else (lambda: x.sum(dim=0, dtype=torch.float64))
    elif case == "decode":
        import numpy as np

        from kinetic_fm.data.images import uint8_to_signed

        side = int(round((dim // 3) ** 0.5))
        pixels = np.random.default_rng(0).integers(0, 256, (rows, side, side, 3), dtype=np.uint8)
        del x  # this pass starts from uint8 images
        work = (lambda: uint8_to_signed(pixels)) if variant == "ours" else (
            lambda: torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32).div_(127.5).sub_(1.0).contiguous())
    elif case == "rescreen":
        from kinetic_fm import knn

        # every uncertified query through the float64 re-screen, the pass measured here (the search
        # would settle most with more float32 candidates, or a few by direct differences)
        knn._WIDER_CANDIDATES, knn._BRUTE_FORCE_BREAK_EVEN = 1, 0
        if variant == "naive":
            knn._RESCREEN_BLOCK_BYTES = 1 << 60  # the search's own chunk, as before
        queries = torch.randn(16, dim, generator=torch.Generator().manual_seed(1))

        def work():
            for t in (0.2, 0.35):
                x_t = queries * (1 - t) + t * x[:16]
                knn.nearest_neighbors(x_t.double() / t, x, 16, check_inputs=False)
        knn.nearest_neighbors(queries.double(), x, 16, check_inputs=False)  # first-call allocations
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak resident size (VmHWM) to the current one
    before = resident_mib("VmRSS")
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    return {"peak_mib": resident_mib("VmHWM") - before, "after_mib": resident_mib("VmRSS") - before,
            "seconds": seconds}


def _child(args, case: str, variant: str, src: str | None = None) -> dict:
    """One measurement in a fresh process; ``src``: a folder put first on its path (the package as
    committed at --previous)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim),
                          "--samples", str(args.samples), "--child", case, variant],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _previous_src(rev: str, folder: str) -> str:
    """``src`` of the repository as committed at ``rev``, extracted under ``folder``."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=repo, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return str(Path(folder) / "src")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3_072)
    parser.add_argument("--samples", type=int, default=1_000,
                        help="samples (queries, fake) of the centring cases (default 1,000)")
    parser.add_argument("--quick", action="store_true", help="10,000 rows")
    parser.add_argument("--cases", nargs="+", default=list(NAIVE_CASES),
                        choices=NAIVE_CASES + CENTRING_CASES + SEARCH_CASES + ("all",),
                        help="the passes to measure (default: the naive-vs-ours ones; 'all' for every case)")
    parser.add_argument("--previous", metavar="REV",
                        help="also run the centring cases on the package as committed at git revision REV")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows = 10_000
    if args.child:
        print(json.dumps(_measure(*args.child, args.rows, args.dim, args.samples)))
        return
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("this benchmark reads peak memory from /proc (Linux only)")
    cases = NAIVE_CASES + CENTRING_CASES + SEARCH_CASES if "all" in args.cases else tuple(args.cases)
    size = args.rows * args.dim * 4 / 2**20
    print(f"set: {args.rows} x {args.dim} float32 = {size:.0f} MiB; peak above the resident size before each pass")
    naive = [c for c in cases if c in NAIVE_CASES]
    if naive:
        print(f"{'pass':<14}{'naive MiB':>11}{'ours MiB':>10}{'naive s':>9}{'ours s':>8}")
    for case in naive:
        got = {variant: _child(args, case, variant) for variant in ("naive", "ours")}
        print(f"{case:<14}{got['naive']['peak_mib']:>11.0f}{got['ours']['peak_mib']:>10.0f}"
              f"{got['naive']['seconds']:>9.2f}{got['ours']['seconds']:>8.2f}")
    centring = [c for c in cases if c in CENTRING_CASES + SEARCH_CASES]
    if not centring:
        return
    inputs = (args.rows + args.samples) * args.dim * 4 / 2**20
    print(f"\ncentring cases: {args.samples} samples against the set; inputs {inputs:.0f} MiB; "
          f"previous = the package at {args.previous or '(not asked: --previous REV)'}")
    print(f"{'call':<18}{'previous MiB':>13}{'x inputs':>9}{'ours MiB':>10}{'x inputs':>9}"
          f"{'previous s':>11}{'ours s':>8}{'held after: previous':>22}{'ours':>6}")
    with tempfile.TemporaryDirectory() as folder:
        src = _previous_src(args.previous, folder) if args.previous else None
        for case in centring:
            ours = _child(args, case, "ours")
            before = _child(args, case, "previous", src) if src else None
            old = (f"{before['peak_mib']:>13.0f}{before['peak_mib'] / inputs:>9.2f}" if before
                   else f"{'-':>13}{'-':>9}")
            print(f"{case:<18}{old}{ours['peak_mib']:>10.0f}{ours['peak_mib'] / inputs:>9.2f}"
                  f"{before['seconds'] if before else float('nan'):>11.2f}{ours['seconds']:>8.2f}"
                  f"{before['after_mib'] if before else float('nan'):>22.0f}{ours['after_mib']:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
