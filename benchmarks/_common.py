"""Shared helpers for the benchmark scripts: timing and small reference nets."""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

import torch
from torch import nn


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"   # ../shared/data beside the repository (its README)
LOSSLESS_CIFAR10 = SHARED_DATA / "cifar10" / "convnetjs_lossless"


def lossless_sprite(folder: Path, batch: int):
    """Sprite batch ``batch`` of the lossless CIFAR-10 folder (``cifar10_batch_<batch>.png``, 1,000
    images with their labels) as an :class:`~kinetic_fm.data.ImageDataset`: ``.images`` (1000, 3, 32, 32)
    in [-1, 1] and ``.labels``."""
    from kinetic_fm.data.cifar10 import load_cifar10_sprite

    return load_cifar10_sprite(folder / f"cifar10_batch_{batch}.png", folder / "cifar10_labels_51000.txt")


def module_at(rev: str, path: str) -> types.ModuleType:
    """The module at ``path`` (e.g. "src/kinetic_fm/knn.py") as committed at git revision ``rev``,
    or read from the file ``rev`` where one exists (a machine without the history), loaded as a
    module of today's package: its relative imports reach today's modules."""
    if Path(rev).is_file():
        source = Path(rev).read_text()
    else:
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    package = ".".join(Path(path).relative_to("src").parent.parts)
    tag = re.sub(r"\W", "_", rev)
    module = types.ModuleType(f"{package}._{Path(path).stem}_{tag}")
    module.__package__ = package
    sys.modules[module.__name__] = module          # its dataclasses look their module up there
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synced(fn: Callable[[], object], device: torch.device | str) -> Callable[[], object]:
    """``fn`` followed by a CUDA synchronisation when ``device`` is a GPU, so that a wall time
    covers its kernels, not only their launches."""
    def call():
        result = fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return result
    return call


def interleaved_rounds(fns: dict[str, Callable[[], object]], repeats: int, *, warmup: bool = False,
                       after_round: Callable[[int, dict[str, list[float]]], None] | None = None,
                       ) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Per-round wall times of several functions run in alternation (so load drifts hit all
    alike), and each function's last result. ``after_round(i, times)`` runs after round i."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, object] = {}
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
        if after_round is not None:
            after_round(i, times)
    return times, results


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median times of several functions, run in alternation after one warm-up call each."""
    times, _ = interleaved_rounds(fns, repeats, warmup=True)
    return {name: statistics.median(v) for name, v in times.items()}


class TimeMLP(nn.Module):
    """v(x, t) for flat x: an MLP on [x, t]."""

    def __init__(self, dim: int = 64, width: int = 256, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 1, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))


class SmallConvUNet(nn.Module):
    """A two-level conv U-Net on (B, C, 32, 32), time added as a per-channel bias."""

    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        self.t_embed = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, width))
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
                                  nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.SiLU())
        self.mid = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU())
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.out = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h0 = self.inp(x) + self.t_embed(t.reshape(-1, 1).to(x.dtype))[:, :, None, None]
        h = self.mid(self.down(h0))
        return self.out(torch.cat([self.up(h), h0], dim=1))


def resident_mib(field: str) -> float:
    """This process's ``field`` of /proc/self/status (Linux) in MiB: "VmRSS" the resident size,
    "VmHWM" its peak since the last reset (writing "5" to /proc/self/clear_refs resets it)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")
