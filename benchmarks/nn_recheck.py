"""Uncertified queries of the exact k-NN search: routed by cost vs always re-screened in float64.

    python benchmarks/nn_recheck.py                     # three inputs, 5 rounds, k = 2, float32
    python benchmarks/nn_recheck.py --quick             # 5,000 references, 3 rounds
    python benchmarks/nn_recheck.py --threads 1
    python benchmarks/nn_recheck.py --previous d18e471  # also the search as that commit had it
    python benchmarks/nn_recheck.py --break-even        # the two last routes alone, 1 to 64 queries

``kfm.nearest_neighbors(queries, reference, 2)`` (the memorization audit's search) searches again
the queries whose float32 screening it cannot certify. Two ways, run in alternation on the same
inputs, median of ``--repeats`` calls each, and the median of their per-round ratios:

* routed:      the search as it is: those queries screened again with 4x the candidates
               (``knn._WIDER_CANDIDATES``); what is left, by direct float64 differences when
               fewer than ``knn._BRUTE_FORCE_BREAK_EVEN`` queries, else by the float64 re-screen.
* re-screened: the same code with both switched off (``_WIDER_CANDIDATES = 1``,
               ``_BRUTE_FORCE_BREAK_EVEN = 0``): every uncertified query goes through the float64
               re-screen about the reference mean, as before the routing (which re-screened once
               per query block of 1,024; here once per call).
* ``--previous REV``: the module ``kinetic_fm/knn.py`` as committed at REV (``git show``), run
               against today's package; a third way, for the record of what the routing replaced.

Inputs (float32; the number of uncertified queries is printed):

* uniform: 2,000 queries vs 20,000 references uniform in [0, 1]^3072. Distances crowd, and for
           a few queries all k + margin candidates fall within the float32 rounding bound.
* cifar:   500 CIFAR-10 training images blurred by a 1-pixel Gaussian vs 20,000 training images,
           pixels in [0, 1] (JPEG zip from ``--cifar``, default ``$KFM_SHARED_DATA`` or
           ../shared/data beside the checkout; skipped if absent).
* cluster: the uniform sets plus, in the reference, 100 rows within 1e-4 of one point, and 3
           queries among them: no float32 screening separates rows that close, so these go to
           direct differences (routed) or to the float64 re-screen.

``--break-even`` times the two last routes alone on b = 1 ... 64 cluster queries (their first
screening is common to both and included): direct differences against the float64 re-screen.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import REPO, interleaved_rounds, module_at

from kinetic_fm import knn


def blur(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of (n, C, H, W) images, reflect-padded."""
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=images.dtype)
    w = torch.exp(-t ** 2 / (2 * sigma ** 2))
    w = w / w.sum()
    c = images.shape[1]
    rows = F.conv2d(F.pad(images, (r, r, 0, 0), mode="reflect"), w.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(rows, (0, 0, r, r), mode="reflect"), w.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def inputs(args) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(args.n, args.dim, generator=g)
    queries = torch.rand(args.queries, args.dim, generator=g)
    point = torch.rand(args.dim, generator=g)
    cluster = point + 1e-4 * torch.randn(100, args.dim, generator=g)
    sets = {"uniform": (queries, reference),
            "cluster": (torch.cat([queries, point + 1e-4 * torch.randn(3, args.dim, generator=g)]),
                        torch.cat([reference, cluster]))}
    if args.cifar.is_file() and args.dim == 3 * 32 * 32:
        from kinetic_fm.data import load_cifar10

        train = (load_cifar10(args.cifar, "train", n=args.n, seed=0).images + 1) / 2
        sets["cifar"] = (blur(train[:500]).flatten(1), train.flatten(1))
    else:
        print(f"cifar: skipped (no {args.cifar}, or --dim is not 3,072)")
    return sets


def search_with(wider: int, break_even: int):
    """The 2-NN search with the re-search's two switches set to these values for the call."""
    def search(queries, reference):
        saved = knn._WIDER_CANDIDATES, knn._BRUTE_FORCE_BREAK_EVEN
        knn._WIDER_CANDIDATES, knn._BRUTE_FORCE_BREAK_EVEN = wider, break_even
        try:
            return knn.nearest_neighbors(queries, reference, 2)
        finally:
            knn._WIDER_CANDIDATES, knn._BRUTE_FORCE_BREAK_EVEN = saved
    return search


def compare(args) -> None:
    ways = {"routed": search_with(knn._WIDER_CANDIDATES, knn._BRUTE_FORCE_BREAK_EVEN),
            "re-screened": search_with(1, 0)}
    if args.previous:
        previous = module_at(args.previous, "src/kinetic_fm/knn.py").nearest_neighbors
        ways[f"at {args.previous}"] = lambda queries, reference: previous(queries, reference, 2)
    for name, (queries, reference) in inputs(args).items():
        calls = {way: (lambda search: lambda: search(queries, reference))(search) for way, search in ways.items()}
        times, results = interleaved_rounds(calls, args.repeats, warmup=True)
        routed = results["routed"]
        same = all(torch.equal(r.distances, routed.distances) and torch.equal(r.indices, routed.indices)
                   for r in results.values())
        print(f"{name}: {queries.shape[0]} queries vs {reference.shape[0]} references, D = {queries.shape[1]}; "
              f"{routed.rechecked} uncertified; identical results: {same}")
        print(f"  {'routed':14s} {statistics.median(times['routed']):7.2f} s (median of {args.repeats})")
        for way, seconds in times.items():
            if way == "routed":
                continue
            ratios = [theirs / ours for theirs, ours in zip(seconds, times["routed"])]
            print(f"  {way:14s} {statistics.median(seconds):7.2f} s, {statistics.median(ratios):.2f}x the routed "
                  f"time (median of per-round ratios {', '.join(f'{r:.2f}' for r in ratios)})")


def break_even(args) -> None:
    g = torch.Generator().manual_seed(1)
    point = torch.rand(args.dim, generator=g)
    reference = torch.cat([torch.rand(args.n, args.dim, generator=g),
                           point + 1e-4 * torch.randn(100, args.dim, generator=g)])
    direct, rescreen = search_with(knn._WIDER_CANDIDATES, 10 ** 9), search_with(knn._WIDER_CANDIDATES, 0)
    for b in (1, 4, 8, 16, 32, 64):
        queries = point + 1e-4 * torch.randn(b, args.dim, generator=g)
        times, results = interleaved_rounds({"direct": lambda: direct(queries, reference),
                                             "re-screen": lambda: rescreen(queries, reference)},
                                            args.repeats, warmup=True)
        assert results["direct"].rechecked == b and torch.equal(results["direct"].indices, results["re-screen"].indices)
        ratios = [d / r for d, r in zip(times["direct"], times["re-screen"])]
        print(f"{b:3d} uncertified queries: direct differences {statistics.median(times['direct']):6.2f} s, "
              f"float64 re-screen {statistics.median(times['re-screen']):6.2f} s; direct / re-screen "
              f"{statistics.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("KFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument("--n", type=int, default=20_000, help="reference rows")
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=3_072)
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 5, --quick 3)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="5,000 references, 3 rounds")
    parser.add_argument("--cifar", type=Path, default=shared / "cifar10" / "cifar10_jpeg_q75.zip")
    parser.add_argument("--previous", metavar="REV", help="also time knn.py as committed at REV")
    parser.add_argument("--break-even", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n = 5_000
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"exact 2-NN re-search, float32, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"wider screening x{knn._WIDER_CANDIDATES}, direct differences below {knn._BRUTE_FORCE_BREAK_EVEN} queries")
    if args.break_even:
        break_even(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
