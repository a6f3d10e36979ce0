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

    python benchmarks/metrics_memory.py            # 50,000 x 3,072 float32 (CIFAR-10 sized)
    python benchmarks/metrics_memory.py --quick    # 10,000 x 3,072

Each measurement runs in a fresh process: the set is made, the process's peak resident memory is
reset (Linux: /proc/self/clear_refs), the pass runs, and the peak above the resident size before it
is reported with the pass's wall time. Memory is what this script claims; times are one run each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _measure(case: str, variant: str, rows: int, dim: int) -> dict:
    import torch
    from _common import resident_mib

    torch.manual_seed(0)
    x = torch.empty(rows, dim).uniform_(-1.0, 1.0)
    work = None
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
    return {"peak_mib": resident_mib("VmHWM") - before, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3_072)
    parser.add_argument("--quick", action="store_true", help="10,000 rows")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows = 10_000
    if args.child:
        print(json.dumps(_measure(*args.child, args.rows, args.dim)))
        return
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("this benchmark reads peak memory from /proc (Linux only)")
    size = args.rows * args.dim * 4 / 2**20
    print(f"set: {args.rows} x {args.dim} float32 = {size:.0f} MiB; peak above the resident size before each pass")
    print(f"{'pass':<14}{'naive MiB':>11}{'ours MiB':>10}{'naive s':>9}{'ours s':>8}")
    for case in ("finite", "scott", "column_sums", "decode", "rescreen"):
        got = {}
        for variant in ("naive", "ours"):
            out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--dim", str(args.dim),
                                  "--child", case, variant], capture_output=True, text=True, check=True)
            got[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case:<14}{got['naive']['peak_mib']:>11.0f}{got['ours']['peak_mib']:>10.0f}"
              f"{got['naive']['seconds']:>9.2f}{got['ours']['seconds']:>8.2f}")


if __name__ == "__main__":
    main()
