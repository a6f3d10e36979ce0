"""Configuration of ``kfm reproduce``: one dataclass per study plus the shared assets.

Each dataclass checks its values when it is built (also by ``dataclasses.replace``): a value a
study cannot use raises ValueError naming the field and its range, instead of failing minutes
later inside a study or finishing a report that reads wrong. Each minimum is what the studies
need (the notes in the messages say why); values are checked, never converted, so ``asdict``,
and with it every cache key and run id, is what it was.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..checks import (SEED_LIMIT, SEED_NOTE, check_integer, check_real, check_seed, names_the_cpu,
                      optional_integer)
from ..sampling.tableau import FIXED_STEP

MODES = ("tiny", "quick", "full")
# The studies draw every sample of a run on one time grid (the energy profiles, and the batches of
# a run, are stacked step by step): dopri5's per-sample grids break the semantics study's figure.
STUDY_SOLVERS = tuple(FIXED_STEP)
# What the loader needs in the training split (``_load_split``): n_train below it is refused there.
MIN_TRAIN = 16
def _seed_start(owner: str, value, count: int, what: str) -> None:
    """Refuse a ``seed_start`` whose seeds ``seed_start .. seed_start + count - 1`` leave [0, 2**32)."""
    check_integer(f"{owner}.seed_start", value, 0, SEED_LIMIT - count,
                  note=f"its {count} seeds, one per {what}, must stay below 2**32; {SEED_NOTE}")


def _bootstrap(name: str, value) -> None:
    """Refuse a count of resamples that leaves the 95% intervals the verdicts read without a width:
    0 makes every interval NaN (every verdict inconclusive), 1 a zero-width interval at the one
    resample, which a verdict then reads as certain."""
    check_integer(name, value, 2, note="a verdict reads an interval between resamples")


def _positive_real(name: str, value, note: str) -> None:
    check_real(name, value, 0.0, math.inf, f"a finite number > 0 ({note})", open_low=True)


def _at_least(value, low: int) -> bool:
    """Whether ``value`` is an integer >= ``low`` by :func:`~kinetic_fm.checks.check_integer`'s rule."""
    try:
        check_integer("value", value, low)
    except ValueError:
        return False
    return True


def _text(name: str, value, *, optional: bool = False) -> None:
    """Only the type: what the string says is parsed where it is used (the data registry, the
    CIFAR ResNet loader, the device resolver)."""
    if not (isinstance(value, str) or (optional and value is None)):
        raise ValueError(f"{name} must be {'None or ' if optional else ''}a string, got {value!r}")


@dataclass(frozen=True)
class AssetsConfig:
    """Data, the judging classifier and the two velocity models every study shares.

    ``general`` is trained on the whole training split (it generalises); ``memorizer`` on a small
    subset of ``memorizer_n`` images for long enough to copy them (the paper's memorizing regime).

    Attributes (beside the comments): ``data`` a data spec (``digits``, ``cifar10:PATH``, ...);
    ``classifier_steps`` training steps of the judging classifier when none is given; ``model``
    and ``width`` the velocity net (``auto``: a U-Net for images, an MLP otherwise; ``width``
    None = its default); ``general_steps`` / ``memorizer_steps`` their training steps, with
    ``batch_size`` and learning rate ``lr``; ``seed`` every draw of data, weights and batches;
    ``device`` where training and sampling run.
    """

    data: str = "digits"
    n_train: int | None = None  # None = the loader's whole training split
    n_heldout: int = 300  # held out from the training split for the classifier and FD reference
    classifier: str | None = None  # "resnet20:PATH" / "resnet56:PATH" (CIFAR-10), else trained here
    classifier_steps: int = 800
    model: str = "auto"  # "mlp" | "unet" | "auto"
    width: int | None = None
    general_steps: int = 3000
    memorizer_n: int = 64
    memorizer_steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        name = "AssetsConfig."
        _text(name + "data", self.data)
        _text(name + "classifier", self.classifier, optional=True)
        _text(name + "device", self.device)
        # the FD reference of the Goldilocks quintiles and of the sample-quality check is a covariance
        check_integer(name + "n_heldout", self.n_heldout, 2, note="a covariance of the held-out images needs two")
        for steps in ("classifier_steps", "general_steps", "memorizer_steps"):
            check_integer(name + steps, getattr(self, steps), 1)
        if not (isinstance(self.model, str) and self.model in ("mlp", "unet", "auto")):
            raise ValueError(f"{name}model must be 'mlp', 'unet' or 'auto', got {self.model!r}")
        # an MLP of width 1 ends in a LayerNorm of one feature, which is always 0: its velocity is
        # a constant, every sample has the same KPE, and the studies' correlations are undefined
        width = optional_integer(name + "width", self.width, 2, note="an MLP of width 1 draws a constant field")
        if self.model == "unet" and width is not None and width % 2:
            raise ValueError(f"{name}width must be even for the U-Net (its time embedding pairs sines and "
                             f"cosines), got {self.width!r}")
        # the gap ratio (a sample's two nearest training items) and the memorizer's principal span
        # need two training images; the subset is drawn from the training split
        n_train = optional_integer(name + "n_train", self.n_train, MIN_TRAIN,
                                   note="the loader's floor for a training split")
        check_integer(name + "memorizer_n", self.memorizer_n, 2, n_train,
                      note="the gap ratio needs two training items" if n_train is None else
                      "two for the gap ratio, at most the n_train images it is drawn from")
        check_integer(name + "batch_size", self.batch_size, 1)
        _positive_real(name + "lr", self.lr, "the velocity nets' AdamW learning rate")
        check_seed(name + "seed", self.seed, 2)  # the nets' seed and, + 1, the judge's

    def sample_settings(self) -> dict:
        """The settings every study's samples depend on: all but the judging classifier's, which
        only the metrics read (a study's cached result is keyed on the judge's weights:
        :mod:`~kinetic_fm.studies.study_cache`)."""
        settings = asdict(self)
        del settings["classifier"], settings["classifier_steps"]
        if names_the_cpu(settings["device"]):   # cpu:0 samples what cpu does: one cache for both
            settings["device"] = "cpu"
        return settings


@dataclass(frozen=True)
class SemanticsConfig:
    """Semantics and support studies' samples of the generalising model: ``n_samples`` seeds from
    ``seed_start``, ``solver`` with ``steps`` steps; low vs high groups are the bottom and top
    ``quantile`` by KPE; ``bootstrap`` resamples (and permutations) per interval."""

    n_samples: int = 1000
    steps: int = 50
    solver: str = "heun"
    quantile: float = 0.2
    bootstrap: int = 1000
    seed_start: int = 0

    def __post_init__(self) -> None:
        name = "SemanticsConfig."
        # the Goldilocks study (memorization) splits these samples into KPE quintiles, and each
        # quintile's Fréchet distance needs a covariance: two samples in each of five
        n = check_integer(name + "n_samples", self.n_samples, 10, note="two per KPE quintile of the Goldilocks study")
        check_integer(name + "steps", self.steps, 1)
        if not (isinstance(self.solver, str) and self.solver in STUDY_SOLVERS):
            raise ValueError(f"{name}solver must be one of {STUDY_SOLVERS} (a fixed-step solver: the studies "
                             f"draw every sample on one time grid), got {self.solver!r}")
        # compare_groups' own check, and the group size it takes: quantile·n rounded half up (n // 2 >= 5 here)
        from ..metrics.stats import check_group_quantile, group_size

        per_group = group_size(check_group_quantile(name + "quantile", self.quantile), n)
        if per_group < 2:
            raise ValueError(f"{name}quantile must leave at least 2 of the {name}n_samples in each group "
                             f"(quantile · n_samples rounded half up): {self.quantile!r} of {n} leaves "
                             f"{per_group}; take quantile >= {1.5 / n:.3g}")
        _bootstrap(name + "bootstrap", self.bootstrap)
        _seed_start("SemanticsConfig", self.seed_start, n, "sample")


@dataclass(frozen=True)
class SupportConfig:
    """Local support: the ``k``-th nearest training neighbour's distance (and the KDE) per sample of
    the semantics study, ``bootstrap`` resamples per interval."""

    k: int = 5
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        # at most the training split's size: checked by ReproduceConfig when n_train is given
        check_integer("SupportConfig.k", self.k, 1)
        _bootstrap("SupportConfig.bootstrap", self.bootstrap)


@dataclass(frozen=True)
class MemorizationConfig:
    """Memorization study: exact EFM over training subsets of each size in ``efm_sizes``
    (``efm_samples`` trajectories each, Euler ``efm_steps`` steps, float64), and the memorizing
    net at its saved checkpoints (``checkpoint_samples`` samples each, Euler ``steps`` steps);
    seeds from ``seed_start``. ``bootstrap`` is the Goldilocks test's count of permutations and of
    paired resamples, at most 200 of each (every one recomputes five quintiles' Fréchet distances);
    the study's other intervals are Wilson and Fieller intervals."""

    efm_sizes: tuple[int, ...] = (16, 64, 256, 1024)
    efm_samples: int = 200
    efm_steps: int = 100
    checkpoint_samples: int = 300
    steps: int = 100
    bootstrap: int = 1000
    seed_start: int = 100_000

    def __post_init__(self) -> None:
        name = "MemorizationConfig."
        sizes = self.efm_sizes
        # sizes above the training split's are cut to it by the study
        if not (isinstance(sizes, (tuple, list)) and sizes and all(_at_least(size, 2) for size in sizes)):
            raise ValueError(f"{name}efm_sizes must be a non-empty tuple of integers >= 2 (training subsets; "
                             f"the gap ratio needs two training items), got {sizes!r}")
        # the late-spike claim's Fieller interval needs a variance
        efm_samples = check_integer(name + "efm_samples", self.efm_samples, 2, note="Fieller's interval needs two")
        check_integer(name + "efm_steps", self.efm_steps, 1)
        checkpoint_samples = check_integer(name + "checkpoint_samples", self.checkpoint_samples, 2,
                                           note="a checkpoint's Fréchet distance needs a covariance")
        check_integer(name + "steps", self.steps, 1)
        _bootstrap(name + "bootstrap", self.bootstrap)
        _seed_start("MemorizationConfig", self.seed_start, max(efm_samples, checkpoint_samples), "sample of a run")


@dataclass(frozen=True)
class ShapingConfig:
    """KTS ablation on the memorizing net: ``n_samples`` seeds from ``seed_start`` under every
    setting, Euler ``steps`` steps (the NFE rows use ``more_steps``), ``bootstrap`` paired
    resamples per interval."""

    n_samples: int = 500
    steps: int = 100
    more_steps: int = 250
    bootstrap: int = 500
    seed_start: int = 200_000

    def __post_init__(self) -> None:
        name = "ShapingConfig."
        n = check_integer(name + "n_samples", self.n_samples, 2,
                          note="each setting's Fréchet distance needs a covariance")
        steps = check_integer(name + "steps", self.steps, 1)
        # the NFE rows sample with more_steps against the base rows' steps: as many compare nothing
        # (and 0 read as "the base steps", under a "0 steps" label)
        check_integer(name + "more_steps", self.more_steps, steps + 1, note=f"more than steps = {steps}")
        _bootstrap(name + "bootstrap", self.bootstrap)
        _seed_start("ShapingConfig", self.seed_start, n, "sample")


@dataclass(frozen=True)
class ReproduceConfig:
    """Everything ``kfm reproduce`` runs: the ``mode`` preset's name, the shared assets and one
    configuration per study. A stage's cache key is its part of this (see ``Workspace``)."""

    mode: str = "quick"
    assets: AssetsConfig = field(default_factory=AssetsConfig)
    semantics: SemanticsConfig = field(default_factory=SemanticsConfig)
    support: SupportConfig = field(default_factory=SupportConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.mode, str) and self.mode in MODES):
            raise ValueError(f"ReproduceConfig.mode must be one of {MODES}, got {self.mode!r}")
        for part, kind in (("assets", AssetsConfig), ("semantics", SemanticsConfig), ("support", SupportConfig),
                           ("memorization", MemorizationConfig), ("shaping", ShapingConfig)):
            if not isinstance(getattr(self, part), kind):
                raise ValueError(f"ReproduceConfig.{part} must be a {kind.__name__}, "
                                 f"got {type(getattr(self, part)).__name__}")
        n_train = self.assets.n_train
        if n_train is not None:  # else the split's size is known once the data load (local_support checks it)
            check_integer("SupportConfig.k", self.support.k, 1, n_train,
                          note="the k-th nearest of the AssetsConfig.n_train training images")

    @classmethod
    def preset(cls, mode: str = "quick", *, data: str = "digits", device: str = "cpu", seed: int = 0) -> "ReproduceConfig":
        """``tiny`` (seconds; tests), ``quick`` (minutes on 2 CPU cores) or ``full`` (paper-like sizes)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        image_set = data != "digits"
        # The U-Net is the better model for 32x32 images but several times slower than the MLP per
        # step on a CPU; tiny and quick runs on a CPU use the MLP so they finish in minutes.
        model = "mlp" if mode == "tiny" or (mode == "quick" and names_the_cpu(device)) else "auto"
        assets = AssetsConfig(data=data, device=device, seed=seed, model=model)
        if mode == "tiny":
            return cls(
                mode=mode,
                assets=replace(assets, n_train=300 if image_set else None, n_heldout=100, classifier_steps=60,
                               general_steps=60, memorizer_n=16, memorizer_steps=60, batch_size=64, width=64),
                semantics=SemanticsConfig(n_samples=64, steps=8, bootstrap=100),
                support=SupportConfig(bootstrap=100),
                memorization=MemorizationConfig(efm_sizes=(8, 32), efm_samples=32, efm_steps=20,
                                                checkpoint_samples=32, steps=10, bootstrap=100),
                shaping=ShapingConfig(n_samples=48, steps=10, more_steps=20, bootstrap=50),
            )
        if mode == "quick":
            return cls(mode=mode, assets=replace(assets, n_train=5000 if image_set else None))
        return cls(
            mode=mode,
            assets=replace(assets, n_train=20_000 if image_set else None, classifier_steps=2000,
                           general_steps=20_000, memorizer_steps=20_000, memorizer_n=128),
            semantics=SemanticsConfig(n_samples=4000, steps=100),
            memorization=MemorizationConfig(efm_sizes=(16, 64, 256, 1024, 4096), efm_samples=500,
                                            checkpoint_samples=1000, steps=250),
            shaping=ShapingConfig(n_samples=2000, bootstrap=1000),
        )
