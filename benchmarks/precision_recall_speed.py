"""Cost of kfm.precision_recall's ball tests, two comparisons on the same inputs, continuous and
binary (where exact ties d = r are common):

- default: ours vs the same k-NN radii and GEMM blocks with the rounding left to decide (the
  method before the seventh session, no exact check of the pairs at a ball's edge);
- ``--sweeps``: ours, one sweep over the fake × real blocks deciding both directions, vs the
  two sweeps it replaced (fake × real for precision, then real × fake for recall), kept below as
  a faithful copy of that procedure; the answers must be identical. With ``--memory`` each
  variant runs once in a fresh process and the peak resident memory above the size before the
  call is printed instead of times (Linux: /proc/self/clear_refs, as metrics_memory.py);
- ``--previous REV``: ours vs ``metrics/fidelity.py`` as committed at git revision REV (or read
  from the file REV), the ball tests alone on the same radii (and the whole call with
  ``--whole``); the memberships must be identical. The case ``pixels`` (D = 3,072, values
  k/255) runs only when named by ``--case``, or with ``--previous`` and no ``--case``.

    python benchmarks/precision_recall_speed.py [--quick] [--sweeps [--memory]] [--previous REV [--whole]]
        [--case C] [--points N] [--repeats N] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from tqdm.auto import tqdm

import kinetic_fm as kfm
from _common import interleaved_rounds, module_at, resident_mib
from kinetic_fm.blocks import block_size
from kinetic_fm.checks import check_integer, check_same_space, positive_integer
from kinetic_fm.exact_scaling import HUGE, TINY, times_power_of_two, unit_exponent
from kinetic_fm.knn import abs_max, column_mean, row_sq_norms, unit_roundoff
from kinetic_fm.metrics.density import sq_distance_blocks
from kinetic_fm.metrics.features import as_features, feature_space
from kinetic_fm.metrics.fidelity import (PrecisionRecall, _ball_memberships, _exact_sq_distances,
                                         _kth_neighbour_sq_radius, _protocol)


def gemm_only(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Ball membership straight from the GEMM blocks against squared exact radii (no edge check)."""
    def inside(points, centres):
        r2 = kfm.nearest_neighbors(centres, centres, k, exclude_self=True).distances[:, -1].pow(2)
        hit = torch.zeros(points.shape[0], dtype=torch.bool)
        for q0, c0, d2 in sq_distance_blocks(points, centres):
            hit[q0:q0 + d2.shape[0]] |= (d2 <= r2[c0:c0 + d2.shape[1]]).any(dim=1)
        return float(hit.double().mean())

    return inside(fake, real), inside(real, fake)


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radius_sq: torch.Tensor, chunk: int,
                     batch_chunk: int) -> torch.Tensor:
    """(B,) bool: is ``points[i]`` within ``radius_sq[j]`` of some ``centres[j]``; one sweep over
    the points × centres blocks per direction (the package's code until the one-sweep change)."""
    dtype = torch.float64 if points.dtype == centres.dtype == torch.float64 else torch.float32
    u = unit_roundoff(dtype, points.device)
    centre = column_mean(centres)
    reach = (row_sq_norms(points, torch.float64, centre=centre).sqrt()
             + float(row_sq_norms(centres, torch.float64, centre=centre).max().sqrt()))
    slack = 2.0 * (points.shape[1] + 3) * u * reach.square()
    inside = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    bar = tqdm(total=-(-points.shape[0] // batch_chunk) * -(-centres.shape[0] // chunk), disable=True)
    for q0, c0, d2 in sq_distance_blocks(points, centres, chunk=chunk, batch_chunk=batch_chunk):
        bar.update(1)
        rows = slice(q0, q0 + d2.shape[0])
        r2, e = radius_sq[c0:c0 + d2.shape[1]], float(slack[rows].max())
        inside[rows] |= (d2 <= r2 - e).any(dim=1)
        unsure = (d2 <= r2 + e) & ~inside[rows, None]
        qi, cj = unsure.nonzero(as_tuple=True)
        step = block_size(points.device, 8 * points.shape[1], qi.numel())
        for s in range(0, qi.numel(), step):
            q, c = qi[s:s + step] + q0, cj[s:s + step] + c0
            hit = _exact_sq_distances(points[q], centres[c]) <= radius_sq[c]
            inside[q[hit]] = True
    bar.close()
    return inside


def two_sweeps(real: torch.Tensor, fake: torch.Tensor, k: int, chunk: int = 8192,
               batch_chunk: int = 1024) -> PrecisionRecall:
    """``precision_recall`` as it was before the one-sweep change: the same checks, features,
    scaling and k-NN radii, then a fake × real sweep and a real × fake sweep."""
    fs = feature_space(None)
    protocol = _protocol(fs, None, None, None)
    check_same_space(("real", real), ("fake", fake))
    r = as_features(real, fs, argument="real")
    f = as_features(fake, fs, argument="fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature sizes differ: {r.shape[1]} vs {f.shape[1]}")
    for name, rows in (("real", r), ("fake", f)):
        if rows.shape[0] < 2:
            raise ValueError(f"{name} must hold at least 2 samples, got {rows.shape[0]}")
    k = check_integer("k", k, 1, min(r.shape[0], f.shape[0]) - 1)
    chunk, batch_chunk = positive_integer("chunk", chunk), positive_integer("batch_chunk", batch_chunk)
    e = (unit_exponent(max(abs_max(r), abs_max(f)), TINY, HUGE)
         if r.is_floating_point() and f.is_floating_point() else 0)
    r, f = times_power_of_two(r, e), times_power_of_two(f, e)
    fake_in_real = _inside_any_ball(f, r, _kth_neighbour_sq_radius(r, k, chunk, batch_chunk, "real"), chunk,
                                    batch_chunk)
    real_in_fake = _inside_any_ball(r, f, _kth_neighbour_sq_radius(f, k, chunk, batch_chunk, "fake"), chunk,
                                    batch_chunk)
    return PrecisionRecall(float(fake_in_real.double().mean()), float(real_in_fake.double().mean()),
                           k, r.shape[0], f.shape[0], protocol, fake_in_real, real_in_fake)


def paired_rounds(fns: dict[str, Callable[[], object]], repeats: int) -> None:
    """Times two functions, e.g. ``{"one sweep": f, "two sweeps": g}``, alternating, after a
    warm-up of each; prints the medians of wall and process CPU time (CPU time is steadier when
    other jobs share the cores), the second's over the first's and the median of the rounds' own
    ratios."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    first, second = fns
    for clock, ts in (("wall", wall), ("CPU", cpu)):
        a, b = statistics.median(ts[first]), statistics.median(ts[second])
        paired = statistics.median(y / x for x, y in zip(ts[first], ts[second]))
        print(f"    {clock:4s} {first} {a * 1e3:8.1f} ms  {second} {b * 1e3:8.1f} ms  "
              f"{second.split()[0]} / {first.split()[0]} {b / a:5.2f}  (median of the rounds' ratios {paired:.2f})")


def sweeps(real: torch.Tensor, fake: torch.Tensor, repeats: int) -> None:
    """The whole call, then the ball tests alone on the same radii, one sweep vs two."""
    res, old = kfm.precision_recall(real, fake, k=3), two_sweeps(real, fake, 3)
    assert torch.equal(res.fake_in_real, old.fake_in_real) and torch.equal(res.real_in_fake, old.real_in_fake)
    assert (res.precision, res.recall) == (old.precision, old.recall)
    print(f"  identical memberships; precision {res.precision:.4f}, recall {res.recall:.4f}\n  whole call")
    paired_rounds({"one sweep": lambda: kfm.precision_recall(real, fake, k=3),
                   "two sweeps": lambda: two_sweeps(real, fake, 3)}, repeats)
    r, f = as_features(real, None, argument="real"), as_features(fake, None, argument="fake")
    r2_real, r2_fake = (_kth_neighbour_sq_radius(x, 3, 8192, 1024, "x") for x in (r, f))
    print("  ball tests alone (same k-NN radii)")
    paired_rounds({"one sweep": lambda: _ball_memberships(f, r, r2_real, r2_fake, 8192, 1024),
                   "two sweeps": lambda: (_inside_any_ball(f, r, r2_real, 8192, 1024),
                                          _inside_any_ball(r, f, r2_fake, 8192, 1024))}, repeats)


def previous(real: torch.Tensor, fake: torch.Tensor, rev: str, repeats: int, whole: bool) -> None:
    """The ball tests alone on the same radii (and the whole call if ``whole``), ours vs
    ``metrics/fidelity.py`` at ``rev``; both must give the same memberships."""
    before = module_at(rev, "src/kinetic_fm/metrics/fidelity.py")
    r, f = as_features(real, None, argument="real"), as_features(fake, None, argument="fake")
    r2_real, r2_fake = (_kth_neighbour_sq_radius(x, 3, 8192, 1024, "x") for x in (r, f))
    ours = _ball_memberships(f, r, r2_real, r2_fake, 8192, 1024)
    then = before._ball_memberships(f, r, r2_real, r2_fake, 8192, 1024)
    assert torch.equal(ours[0], then[0]) and torch.equal(ours[1], then[1])
    print(f"  identical memberships; precision {ours[0].double().mean():.4f}, recall {ours[1].double().mean():.4f}")
    print("  ball tests alone (same k-NN radii)")
    paired_rounds({"ours": lambda: _ball_memberships(f, r, r2_real, r2_fake, 8192, 1024),
                   f"{rev} then": lambda: before._ball_memberships(f, r, r2_real, r2_fake, 8192, 1024)}, repeats)
    if whole:
        print("  whole call")
        paired_rounds({"ours": lambda: kfm.precision_recall(real, fake, k=3),
                       f"{rev} then": lambda: before.precision_recall(real, fake, k=3)}, repeats)


def peak_mib(work: Callable[[], object]) -> float:
    """Peak resident memory of ``work()`` above the resident size before it, in MiB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak resident size (VmHWM) to the current one
    before = resident_mib("VmRSS")
    work()
    return resident_mib("VmHWM") - before


def memory(case: str, n: int) -> None:
    """Peak of one sweep and of two sweeps, the whole call and the ball tests alone, each measured
    once in a fresh process (this script as a child), so no variant inherits another's heap."""
    import json
    import subprocess
    import sys

    for part in ("whole call", "ball tests alone"):
        got = {}
        for variant in ("one sweep", "two sweeps"):
            out = subprocess.run([sys.executable, __file__, "--points", str(n), "--child", case, variant, part],
                                 capture_output=True, text=True, check=True)
            got[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        one, two = got["one sweep"], got["two sweeps"]
        print(f"    {part:17s} peak one sweep {one:7.1f} MiB  two sweeps {two:7.1f} MiB  "
              f"one - two {one - two:+7.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 points per set instead of 10,000")
    parser.add_argument("--sweeps", action="store_true",
                        help="one sweep for both directions (ours) vs the two sweeps it replaced")
    parser.add_argument("--points", type=int, default=None, help="points per set (default 10,000; 2,000 quick)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5; 3 quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--memory", action="store_true", help="with --sweeps: peak memory, not times")
    parser.add_argument("--previous", metavar="REV", default=None,
                        help="ours vs metrics/fidelity.py at git revision REV (the ball tests, same radii)")
    parser.add_argument("--whole", action="store_true", help="with --previous: the whole call too")
    parser.add_argument("--case", choices=("continuous", "binary", "pixels"), default=None, help="only this case")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, repeats = (2000, 3) if args.quick else (10_000, 5)
    n, repeats = args.points or n, args.repeats or repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    cases = {
        "continuous D=64 float32": (torch.randn(n, 64, generator=g), torch.randn(n, 64, generator=g) * 1.1),
        "binary D=100 (ties)": ((torch.rand(n, 100, generator=g) < 0.1).float(),
                                (torch.rand(n, 100, generator=g) < 0.1).float()),
    }
    if args.case == "pixels" or (args.previous and not args.case):  # opt-in: 10,000 rows take minutes
        cases["pixels D=3072 (k/255)"] = (torch.randint(0, 256, (n, 3072), generator=g) / 255.0,
                                          torch.randint(0, 256, (n, 3072), generator=g) / 255.0)
    if args.child:  # one variant and part of --memory, in a fresh process
        import json

        case, variant, part = args.child
        real, fake = cases[case]
        r, f = as_features(real, None, argument="real"), as_features(fake, None, argument="fake")
        if part == "whole call":
            work = ((lambda: kfm.precision_recall(real, fake, k=3)) if variant == "one sweep" else
                    (lambda: two_sweeps(real, fake, 3)))
        elif variant == "one sweep":
            r2_real, r2_fake = (_kth_neighbour_sq_radius(x, 3, 8192, 1024, "x") for x in (r, f))
            work = lambda: _ball_memberships(f, r, r2_real, r2_fake, 8192, 1024)  # noqa: E731
        else:
            r2_real, r2_fake = (_kth_neighbour_sq_radius(x, 3, 8192, 1024, "x") for x in (r, f))
            work = lambda: (_inside_any_ball(f, r, r2_real, 8192, 1024),  # noqa: E731
                            _inside_any_ball(r, f, r2_fake, 8192, 1024))
        print(json.dumps(peak_mib(work)))
        return
    print(f"{n} real and {n} fake points, k = 3, {repeats} interleaved rounds after a warm-up, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, (real, fake) in cases.items():
        if args.case and not name.startswith(args.case):
            continue
        if args.previous:
            print(name)
            previous(real, fake, args.previous, repeats, args.whole)
            continue
        if args.sweeps:
            print(name)
            memory(name, n) if args.memory else sweeps(real, fake, repeats)
            continue
        times, results = interleaved_rounds({
            "ours": lambda: kfm.precision_recall(real, fake, k=3),
            "GEMM only": lambda: gemm_only(real, fake, 3),
        }, repeats, warmup=True)
        ours, plain = statistics.median(times["ours"]), statistics.median(times["GEMM only"])
        res, old = results["ours"], results["GEMM only"]
        print(f"{name:26s} ours {ours * 1e3:8.1f} ms  GEMM only {plain * 1e3:8.1f} ms  ratio {ours / plain:5.2f}  "
              f"precision {res.precision:.4f} vs {old[0]:.4f}, recall {res.recall:.4f} vs {old[1]:.4f}")


if __name__ == "__main__":
    main()
