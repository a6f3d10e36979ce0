"""Cached sampling for the studies: one call = one set of seeds through one field."""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from ..sampling.energy import energy_after as shared_energy_after
from ..sampling.noise import noise
from ..sampling.result import split_time
from ..sampling.sample import resolved_split, sample
from ..sampling.shaping import gain_tau
from .workspace import Workspace

Run = dict[str, torch.Tensor]


def _interactive() -> bool:
    """Whether the bars reach a terminal: these nest inside the studies' own bars, and in a log
    file every redraw of nested bars is a line of its own (2,500 of them in a quick run's log);
    the workspace's "sampling ..." line still says what runs."""
    return sys.stderr.isatty()


def sampled(
    ws: Workspace,
    name: str,
    key: dict[str, Any],
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seeds: range,
    shape: tuple[int, ...],
    *,
    device: str = "cpu",
    batch_size: int = 1024,
    keep: bool = False,
    **sample_kwargs: Any,
) -> Run:
    """Sample ``seeds`` through ``field`` (with ``kfm.sample`` options) and cache the outcome.

    Returns CPU tensors: ``x`` (B, ...) float32, ``kpe``, ``kpe_raw``, ``early``, ``late``, ``peak``
    (B,) float64, ``profile`` (B, S) float64 (per-step applied energy), ``times`` (S + 1,), ``seeds``,
    and ``split_time`` () float64, the sampler's own time ``late`` counts from
    (:attr:`~kinetic_fm.SampleResult.split_time`).
    ``key`` must identify the field (the stage is recomputed when it or the options change).
    ``keep``: the workspace holds the run for later calls (see :meth:`Workspace.cached`): the
    caller and those calls share its tensors, which none may modify in place.
    A workspace that shows progress announces the sampling and, on a terminal, shows the sampler's
    bar (not part of the cache key).
    """
    full_key = {**key, "seeds": [seeds.start, seeds.stop], "shape": list(shape), **{k: repr(v) for k, v in sample_kwargs.items()}}

    def compute() -> Run:
        ws.say(f"sampling {name}: {len(seeds)} samples")
        parts = []
        for start in range(seeds.start, seeds.stop, batch_size):
            chunk = range(start, min(start + batch_size, seeds.stop))
            parts.append(sample(field, seeds=chunk, shape=shape, device=device, profile=True,
                                progress=ws.progress and _interactive(), **sample_kwargs))
        first = parts[0]
        cat = lambda name: torch.cat([getattr(p, name).cpu() for p in parts])  # noqa: E731
        return {
            "x": cat("x").float(),
            **{k: cat(k) for k in ("kpe", "kpe_raw", "early", "late", "peak")},
            "profile": cat("profile"),
            "times": first.times.cpu(),
            # start + offsets: arange(start, stop) overflowed int64 when seeds could reach 2**63 - 1
            "seeds": seeds.start + torch.arange(len(seeds)),
            "split_time": torch.tensor(first.split_time, dtype=torch.float64),
        }

    run = ws.cached(name, full_key, compute, keep=keep)
    if "split_time" not in run:  # cached before runs kept it: the sampler's rule on the run's grid
        split = resolved_split(sample_kwargs.get("split"), gain_tau(sample_kwargs.get("shaping")))
        run["split_time"] = torch.tensor(split_time(run["times"], split), dtype=torch.float64)
    return run


def energy_after(run: Run, after: float) -> torch.Tensor:
    """(B,) applied energy each sample spends at t ≥ ``after`` (the same time for every grid and
    shaping, unlike the sampler's early/late split): :func:`kinetic_fm.sampling.energy.energy_after`
    of the run's profile and times, a step straddling ``after`` split by the power its neighbouring steps imply."""
    return shared_energy_after(run["profile"], run["times"], after)


def late_fraction(run: Run, after: float = 0.9) -> torch.Tensor:
    """(B,) share of each sample's applied energy spent at t ≥ ``after`` (see :func:`energy_after`)."""
    return energy_after(run, after) / run["kpe"].clamp_min(1e-300)


def start_noise(run: Run) -> torch.Tensor:
    """(B, ...) float64 the noise x0 each sample started from (drawn again from its seed)."""
    return noise(run["seeds"], tuple(run["x"].shape[1:]), dtype=torch.float64)


def straight_line_energy(run: Run) -> torch.Tensor:
    """(B,) float64 ½‖x1 − x0‖²: the least energy of any path from a sample's noise to its end point
    (the straight line at constant speed). KPE exceeds it as much as the path bends or changes
    speed; for Euler with left sums, KPE ≥ it exactly (Jensen over the steps)."""
    x0 = start_noise(run)
    return 0.5 * (run["x"].double() - x0).reshape(len(x0), -1).pow(2).sum(1)


def energy_frame(run: Run):
    """Per-sample energies as a DataFrame keyed by seed."""
    import pandas as pd

    return pd.DataFrame({
        "seed": run["seeds"].numpy(),
        **{k: run[k].numpy() for k in ("kpe", "kpe_raw", "early", "late", "peak")},
        "late_fraction_t0.9": late_fraction(run).numpy(),
    })
