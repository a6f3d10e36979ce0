"""Intervals the report gives beside its point values: each Goldilocks quintile's FD, the semantics
groups' Cohen's d and each KTS setting's FD; and the EFM power axis, which no gain acts on."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import linalg

from kinetic_fm.metrics.stats import compare_groups
from kinetic_fm.studies import figures as F
from kinetic_fm.studies.workspace import Workspace


class _LinearDrift(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = torch.nn.Parameter(0.3 * torch.randn(dim, dim, generator=g))
        self.b = torch.nn.Parameter(0.5 * torch.randn(dim, generator=g))

    def forward(self, x, t):
        return (x.flatten(1) @ self.a.T + self.b).reshape(x.shape)


def _axes_of(monkeypatch) -> dict:
    """figure name -> its axes as rendered (kept, not cleared)."""
    drawn, render = {}, F._render

    def keep(fig, name, caption):
        drawn[name] = SimpleNamespace(axes=list(fig.axes), caption=caption,
                                      ylabel=[ax.get_ylabel() for ax in fig.axes],
                                      segments=[[seg.copy() for c in ax.collections
                                                 for seg in getattr(c, "get_segments", lambda: [])()]
                                                for ax in fig.axes])
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", keep)
    return drawn


def test_efm_power_axis_has_no_gain_and_shaped_figures_keep_theirs(monkeypatch):
    drawn = _axes_of(monkeypatch)
    times = np.linspace(0, 1, 5)
    increments = np.ones((3, 4))
    F.energy_profile_figure("plain", "c", {"N = 4": (times, increments)}, shaped=False)
    F.energy_profile_figure("shaped", "c", {"KTS": (times, increments)})
    assert drawn["plain"].ylabel == ["kinetic power  ½‖v‖²"]
    assert drawn["shaped"].ylabel == ["kinetic power  ½η²‖v‖²"]


def test_the_efm_section_draws_its_power_without_a_gain(tmp_path, monkeypatch):
    """The memorization study's EFM figure (η = 1 there) reads ½‖v‖² on its power axis."""
    from kinetic_fm.studies.config import MemorizationConfig
    from kinetic_fm.studies.memorization import _efm_subsets
    from kinetic_fm.studies.output import StudyOutput

    drawn = _axes_of(monkeypatch)
    assets = SimpleNamespace(train=torch.rand(12, 1, 2, 2, generator=torch.Generator().manual_seed(2)))
    cfg = MemorizationConfig(efm_sizes=(4, 8), efm_samples=6, efm_steps=5, seed_start=0)
    section, _ = _efm_subsets(cfg, assets, Workspace(tmp_path), "fake", StudyOutput("memorization"))
    (label,) = drawn["energy_profile_efm"].ylabel
    assert label.startswith("kinetic power  ½‖v‖²") and "η" not in label
