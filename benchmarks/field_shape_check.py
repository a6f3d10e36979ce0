"""The analytic fields' per-call sample-shape check: torch.broadcast_shapes vs plain Python.

``torch.broadcast_shapes`` (the check before the eleventh session) costs ~22 µs per field call
and imports sympy through torch.fx on its first call. Times ``kfm.sample`` (euler, 100 steps,
float64 GaussianTarget) with each check swapped in, in alternating rounds on the same inputs, and
prints the ratio and whether the KPE bits agree.

    python benchmarks/field_shape_check.py
"""
from __future__ import annotations

import statistics

import torch

import kinetic_fm as kfm
import kinetic_fm.fields.analytic as analytic
from _common import interleaved_rounds

plain_python = analytic._check_sample_shape


def with_broadcast_shapes(name: str, loc: torch.Tensor, x: torch.Tensor) -> None:
    if loc.dim() > x.dim() - 1 or torch.broadcast_shapes(loc.shape, x.shape[1:]) != x.shape[1:]:
        raise ValueError(f"{name} does not broadcast")


def main() -> None:
    for batch, dim in ((256, 2), (1024, 2), (256, 784)):
        field = kfm.GaussianTarget(torch.ones(dim, dtype=torch.float64), 0.5)
        x0 = kfm.noise(range(batch), (dim,), dtype=torch.float64)

        def run(check):
            def sample():
                analytic._check_sample_shape = check
                return kfm.sample(field, x0, steps=100, solver="euler").kpe
            return sample

        times, kpe = interleaved_rounds({"before": run(with_broadcast_shapes), "now": run(plain_python)}, 9,
                                        warmup=True)
        ratio = statistics.median(times["now"]) / statistics.median(times["before"])
        print(f"B={batch} D={dim}: now/before {ratio:.2f} (medians of 9 alternating rounds); "
              f"same KPE bits: {torch.equal(kpe['before'], kpe['now'])}")
    analytic._check_sample_shape = plain_python


if __name__ == "__main__":
    main()
