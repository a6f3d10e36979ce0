"""Configuration of ``kfm reproduce``: one dataclass per study plus the shared assets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

MODES = ("tiny", "quick", "full")


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

    def sample_settings(self) -> dict:
        """The settings every study's samples depend on: all but the judging classifier's, which
        only the metrics read (and those are recomputed from the cached samples on every run)."""
        settings = asdict(self)
        del settings["classifier"], settings["classifier_steps"]
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


@dataclass(frozen=True)
class SupportConfig:
    """Local support: the ``k``-th nearest training neighbour's distance (and the KDE) per sample of
    the semantics study, ``bootstrap`` resamples per interval."""

    k: int = 5
    bootstrap: int = 1000


@dataclass(frozen=True)
class MemorizationConfig:
    """Memorization study: exact EFM over training subsets of each size in ``efm_sizes``
    (``efm_samples`` trajectories each, Euler ``efm_steps`` steps, float64), and the memorizing
    net at its saved checkpoints (``checkpoint_samples`` samples each, Euler ``steps`` steps);
    seeds from ``seed_start``, ``bootstrap`` resamples per interval."""

    efm_sizes: tuple[int, ...] = (16, 64, 256, 1024)
    efm_samples: int = 200
    efm_steps: int = 100
    checkpoint_samples: int = 300
    steps: int = 100
    bootstrap: int = 1000
    seed_start: int = 100_000


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

    @classmethod
    def preset(cls, mode: str = "quick", *, data: str = "digits", device: str = "cpu", seed: int = 0) -> "ReproduceConfig":
        """``tiny`` (seconds; tests), ``quick`` (minutes on 2 CPU cores) or ``full`` (paper-like sizes)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        image_set = data != "digits"
        # The U-Net is the better model for 32x32 images but several times slower than the MLP per
        # step on a CPU; tiny and quick runs on a CPU use the MLP so they finish in minutes.
        model = "mlp" if mode == "tiny" or (mode == "quick" and device == "cpu") else "auto"
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
