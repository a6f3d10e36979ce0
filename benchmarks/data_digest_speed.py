"""What recording a training run's items costs: ``data.digest.tensor_sha256`` of CIFAR-10-sized
float32 items (50,000 × 3,072, 614 MB) against one copy of the same tensor (``clone``, the
memory-bandwidth floor of any pass over the bytes), medians side by side in one run.

    python benchmarks/data_digest_speed.py [--rows 50000] [--dim 3072] [--repeats 5]
"""
from __future__ import annotations

import argparse

import torch

from _common import median_time
from kinetic_fm.data.digest import tensor_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    items = torch.rand(args.rows, args.dim, generator=torch.Generator().manual_seed(0))
    megabytes = items.numel() * items.element_size() / 1e6
    hashing = median_time(lambda: tensor_sha256(items), args.repeats)
    copying = median_time(lambda: items.clone(), args.repeats)
    print(f"items: {args.rows} x {args.dim} float32, {megabytes:.0f} MB; torch threads {torch.get_num_threads()}")
    print(f"sha256: median {hashing:.3f} s ({megabytes / hashing:.0f} MB/s)")
    print(f"clone:  median {copying:.3f} s ({megabytes / copying:.0f} MB/s)")
    print(f"sha256 / clone: {hashing / copying:.1f}x")


if __name__ == "__main__":
    main()
