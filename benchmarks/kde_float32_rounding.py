"""How far float32 rounding moves `kde_log_density` on real images, and how it moves with the query block.

    python benchmarks/kde_float32_rounding.py [--data ../shared/data/cifar10/convnetjs_lossless]

Data: the lossless CIFAR-10 sprites (the first 1,000 images of batch 0 as the reference, 200 of
batch 50 as the samples), pixels in [-1, 1], flattened (D = 3,072) and their first 512 values.
Printed, at Scott's bandwidth h (the float64 call's, passed to both calls):

- the largest |float32 − float64| log-density over the samples, and its ratio to the docstring's
  rounding estimate u·(‖x‖² + ‖y‖²)/(2h²) (u = 2**-24, norms from the reference mean) at its
  largest over the samples and the reference;
- for query blocks of 1, 4, 15, 16 and 32 rows, the largest move of a float32 log-density from the
  same sample's value scored among 100 (the first rows, each block's call on its own), and the same
  for float64 inputs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import kinetic_fm as kfm
from _common import LOSSLESS_CIFAR10, lossless_sprite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LOSSLESS_CIFAR10)
    args = parser.parse_args()
    reference = lossless_sprite(args.data, 0).images[:1000]
    samples = lossless_sprite(args.data, 50).images[:200]
    flat_ref, flat_samples = reference.reshape(1000, -1).double(), samples.reshape(200, -1).double()
    u = 2.0 ** -24
    print(f"{'D':>6}{'h':>10}{'max |f32 - f64|':>18}{'estimate':>12}{'ratio':>8}")
    for dim in (512, 3072):
        y, x = flat_ref[:, :dim], flat_samples[:, :dim]
        exact = kfm.kde_log_density(x, y, "scott")
        h = exact.bandwidth
        single = kfm.kde_log_density(x.float(), y.float(), h)
        error = float((single.log_density - exact.log_density).abs().max())
        centre = y.mean(0)
        norms = lambda rows: float((rows - centre).pow(2).sum(1).max())  # noqa: E731
        estimate = u * (norms(x) + norms(y)) / (2 * h * h)
        print(f"{dim:>6}{h:>10.4g}{error:>18.3g}{estimate:>12.3g}{error / estimate:>8.2f}")
    print("\nmove of a sample's log-density scored in a block of b rows, against the same sample among 100 (D = 3072)")
    print(f"{'b':>6}{'float32':>12}{'float64':>12}")
    y, x = flat_ref, flat_samples[:100]
    h = kfm.kde_log_density(x, y, "scott").bandwidth
    among = {dtype: kfm.kde_log_density(x.to(dtype), y.to(dtype), h).log_density for dtype in (torch.float32,
                                                                                                 torch.float64)}
    for rows in (1, 4, 15, 16, 32):
        moves = []
        for dtype in (torch.float32, torch.float64):
            alone = torch.cat([kfm.kde_log_density(x[i:i + rows].to(dtype), y.to(dtype), h).log_density
                               for i in range(0, 96 - 96 % rows, rows)])
            moves.append(float((alone - among[dtype][:alone.shape[0]]).abs().max()))
        print(f"{rows:>6}{moves[0]:>12.3g}{moves[1]:>12.3g}")


if __name__ == "__main__":
    main()
