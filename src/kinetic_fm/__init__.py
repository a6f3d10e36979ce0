"""kinetic_fm: per-sample kinetic energy, trajectory shaping and memorization for flow matching.

Conventions (see docs/ARCHITECTURE.md): t = 0 is noise, t = 1 is data, a velocity field is
any callable ``v(x, t)`` with ``x`` of shape (B, ...) and ``t`` of shape (B,).

Heavy or optional pieces (EFM, metrics, data, models, studies) load on first attribute
access, so ``import kinetic_fm`` costs little beyond ``import torch``.
"""
from __future__ import annotations

import importlib
from typing import Any

# numpy before torch, which imports it from C and clears any error on the way: a Ctrl-C that came
# while numpy loaded there was dropped, and `kfm sample` ran on with numpy half-imported (torch
# imports numpy anyway: this costs nothing)
importlib.import_module("numpy")

from .sampling.energy import energy_after, energy_between
from .sampling.grids import time_grid
from .sampling.noise import noise
from .sampling.sample import SampleResult, SamplerSettingsWarning, sample
from .sampling.shaping import KTS
from .checks import ValueRangeWarning
from .sampling.guards import NonFiniteVelocityError, StepLimitError, TrainingModeWarning
from . import _version
from .lazy import lazy_attribute, package_dir

__version__ = _version.__version__

# public name -> module that defines it (imported lazily on first access)
_LAZY = {
    "EmpiricalFlow": "kinetic_fm.fields.empirical",
    "GaussianTarget": "kinetic_fm.fields.analytic",
    "GaussianMixtureTarget": "kinetic_fm.fields.analytic",
    "PointTarget": "kinetic_fm.fields.analytic",
    "read_run": "kinetic_fm.runs.shards",
    "read_samples": "kinetic_fm.runs.shards",
    "memorization": "kinetic_fm.metrics.memorization",
    "MemorizationReport": "kinetic_fm.metrics.memorization",
    "gap_ratio": "kinetic_fm.metrics.memorization",
    "fraction_interval": "kinetic_fm.metrics.memorization",
    "nearest_neighbors": "kinetic_fm.knn",
    "PosteriorRecorder": "kinetic_fm.fields.empirical",
    "local_support": "kinetic_fm.metrics.density",
    "kde_log_density": "kinetic_fm.metrics.density",
    "frechet_distance": "kinetic_fm.metrics.fidelity",
    "precision_recall": "kinetic_fm.metrics.fidelity",
    "FrechetBiasWarning": "kinetic_fm.metrics.fidelity",
    "spearman": "kinetic_fm.metrics.stats",
    "pearson": "kinetic_fm.metrics.stats",
    "compare_groups": "kinetic_fm.metrics.stats",
    "classifier_margin": "kinetic_fm.metrics.semantics",
    "clip_scores": "kinetic_fm.metrics.semantics",
    "per_sample_table": "kinetic_fm.metrics.table",
    "plot_energy_profile": "kinetic_fm.studies.figures",
    "ModelTX": "kinetic_fm.fields.adapters",
    "ModelXT": "kinetic_fm.fields.adapters",
    "DiscreteTime": "kinetic_fm.fields.adapters",
    "ReversedTime": "kinetic_fm.fields.adapters",
    "NoisePrediction": "kinetic_fm.fields.adapters",
    "DataPrediction": "kinetic_fm.fields.adapters",
    "ClassifierFreeGuidance": "kinetic_fm.fields.guidance",
    "KineticODESolver": "kinetic_fm.integrations.flow_matching",
    "KineticFlowMatchEulerScheduler": "kinetic_fm.integrations.diffusers",
}

__all__ = [
    "KTS",
    "NonFiniteVelocityError",
    "SampleResult",
    "SamplerSettingsWarning",
    "StepLimitError",
    "TrainingModeWarning",
    "ValueRangeWarning",
    "energy_after",
    "energy_between",
    "noise",
    "sample",
    "time_grid",
    # integrations need optional packages (diffusers, flow_matching): reachable by name, not by *
    *(name for name, module in _LAZY.items() if ".integrations." not in module),
]


def __getattr__(name: str) -> Any:
    return lazy_attribute(globals(), _LAZY, name)


# the modules among _LAZY's that import an optional package on loading, and that package
_NEEDS = {"kinetic_fm.integrations.diffusers": "diffusers"}
# the submodules a user imports (the layers, and gemm for its CPU_GEMM setting, README), listed by dir() once
# loaded; the others (checks, norms, holdings, knn, ...) are the package's workings. The one table of the
# layers: tests/test_public_api.py walks these and fails on a subpackage (but commands, the CLI's) left out
_PUBLIC_MODULES = frozenset({"data", "fields", "gemm", "integrations", "metrics", "models", "runs", "sampling",
                             "studies"})


def __dir__() -> list[str]:
    # what this file itself imports for its own use is not part of the package's surface; nor is a
    # name whose optional package is missing: help(), pydoc and inspect.getmembers look up every
    # name dir() gives, and that lookup raises ImportError (naming what to install)
    from types import ModuleType

    from .optional import installed

    lazy = {name for name, module in _LAZY.items() if module not in _NEEDS or installed(_NEEDS[module])}
    # a submodule appears here once anything loaded it (checks, norms, result_repr from the first import on):
    # only the public ones are listed; nor are this file's own tables (_LAZY, _NEEDS)
    own = {name for name, value in globals().items()
           if (isinstance(value, ModuleType) and name not in _PUBLIC_MODULES)
           or (name.startswith("_") and not name.endswith("__"))}
    return package_dir(globals(), lazy, own=own)
