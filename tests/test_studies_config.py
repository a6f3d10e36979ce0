"""kfm reproduce's configuration: every dataclass refuses, when it is built, a value its study cannot
use, naming the field and the range; the smallest accepted values build, and the presets are the
same configurations as before (cache keys and run ids hash ``asdict``)."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, replace

import numpy as np
import pytest

from kinetic_fm.studies.config import (AssetsConfig, MemorizationConfig, ReproduceConfig, SemanticsConfig,
                                       ShapingConfig, SupportConfig)

TINY = ReproduceConfig.preset("tiny")

# (part of the tiny preset, field, bad value, what the message must say after "<Class>.<field> must be")
BAD = [
    ("assets", "data", None, "a string"),
    ("assets", "classifier", 3, "None or a string"),
    ("assets", "device", None, "a string"),
    ("assets", "n_train", 15, "None or an integer >= 16"),
    ("assets", "n_train", 300.0, "None or an integer >= 16"),
    ("assets", "n_heldout", 1, "an integer >= 2"),
    ("assets", "n_heldout", 0, "an integer >= 2"),
    ("assets", "classifier_steps", 0, "a positive integer"),
    ("assets", "general_steps", 0, "a positive integer"),
    ("assets", "memorizer_steps", -1, "a positive integer"),
    ("assets", "model", "resnet", "'mlp', 'unet' or 'auto'"),
    ("assets", "width", 1, "None or an integer >= 2"),
    ("assets", "width", 0, "None or an integer >= 2"),
    ("assets", "memorizer_n", 1, "an integer >= 2"),
    ("assets", "batch_size", 0, "a positive integer"),
    ("assets", "batch_size", True, "a positive integer"),
    ("assets", "lr", 0.0, "a finite number > 0"),
    ("assets", "lr", -1e-3, "a finite number > 0"),
    ("assets", "lr", math.nan, "a finite number > 0"),
    ("assets", "lr", math.inf, "a finite number > 0"),
    ("assets", "seed", -1, "an integer in [0, 4_294_967_294]"),
    ("assets", "seed", 2**32 - 1, "an integer in [0, 4_294_967_294]"),   # its + 1 seeds the judge
    ("assets", "seed", 2**63, "an integer in [0, 4_294_967_294] (its 2 seeds stay below 2**32; torch's generator"),
    ("semantics", "n_samples", 1, "an integer >= 10"),
    ("semantics", "n_samples", 9, "an integer >= 10"),
    ("semantics", "steps", 0, "a positive integer"),
    ("semantics", "solver", "foo", "one of ('euler', 'midpoint', 'heun', 'rk4', 'rk4_38')"),
    ("semantics", "solver", "dopri5", "one of ('euler', 'midpoint', 'heun', 'rk4', 'rk4_38')"),
    ("semantics", "quantile", 0.7, r"a real number in (0, 0.5]"),
    ("semantics", "quantile", 0.0, r"a real number in (0, 0.5]"),
    ("semantics", "quantile", math.nan, r"a real number in (0, 0.5]"),
    ("semantics", "quantile", "0.2", r"a real number in (0, 0.5]"),
    ("semantics", "bootstrap", 1, "an integer >= 2"),     # one resample: a zero-width interval, read as certain
    ("semantics", "bootstrap", 0, "an integer >= 2"),     # none: every interval NaN
    ("semantics", "seed_start", -1, "an integer in [0, "),
    ("semantics", "seed_start", 2**32 - 63, "an integer in [0, "),      # the tiny preset's 64 seeds pass 2**32 - 1
    ("support", "k", 0, "a positive integer"),
    ("support", "bootstrap", 1, "an integer >= 2"),
    ("memorization", "efm_sizes", (), "a non-empty tuple of integers >= 2"),
    ("memorization", "efm_sizes", (8, 1), "a non-empty tuple of integers >= 2"),
    ("memorization", "efm_sizes", (8, 32.0), "a non-empty tuple of integers >= 2"),
    ("memorization", "efm_sizes", 8, "a non-empty tuple of integers >= 2"),
    ("memorization", "efm_samples", 1, "an integer >= 2"),
    ("memorization", "efm_steps", 0, "a positive integer"),
    ("memorization", "checkpoint_samples", 1, "an integer >= 2"),
    ("memorization", "steps", 0, "a positive integer"),
    ("memorization", "bootstrap", 1, "an integer >= 2"),   # the Goldilocks test's resamples
    ("memorization", "seed_start", 2**32 - 31, "an integer in [0, "),   # the tiny preset's 32 seeds
    ("shaping", "n_samples", 1, "an integer >= 2"),
    ("shaping", "steps", 0, "a positive integer"),
    ("shaping", "more_steps", 10, "an integer >= 11"),                   # the tiny preset's steps: 10
    ("shaping", "more_steps", 0, "an integer >= 11"),
    ("shaping", "bootstrap", 1, "an integer >= 2"),
    ("shaping", "seed_start", -5, "an integer in [0, "),
]


@pytest.mark.parametrize("part, name, value, allowed", BAD, ids=[f"{p}.{n}={v!r}" for p, n, v, _ in BAD])
def test_a_bad_value_is_refused_when_the_config_is_built_naming_the_field_and_its_range(part, name, value, allowed):
    owner = type(getattr(TINY, part)).__name__
    with pytest.raises(ValueError, match=re.escape(f"{owner}.{name} must be {allowed}")):
        replace(getattr(TINY, part), **{name: value})


def test_a_value_a_study_of_the_whole_run_cannot_use_is_refused_with_both_fields_named():
    # the memorizer's subset, and the kNN neighbour, are drawn from the n_train training images
    with pytest.raises(ValueError, match=re.escape("AssetsConfig.memorizer_n must be an integer in [2, 20] (two for "
                                                   "the gap ratio, at most the n_train images")):
        AssetsConfig(n_train=20, memorizer_n=21)
    with pytest.raises(ValueError, match=re.escape("SupportConfig.k must be an integer in [1, 16] (the k-th nearest "
                                                   "of the AssetsConfig.n_train training images), got 17")):
        replace(TINY, assets=replace(TINY.assets, n_train=16), support=SupportConfig(k=17))
    # quantile · n_samples rounded half up is each KPE group's size, which compare_groups needs >= 2
    with pytest.raises(ValueError, match=re.escape("SemanticsConfig.quantile must leave at least 2 of the "
                                                   "SemanticsConfig.n_samples in each group")):
        SemanticsConfig(n_samples=10, quantile=0.1)
    with pytest.raises(ValueError, match=re.escape("AssetsConfig.width must be even for the U-Net")):
        AssetsConfig(model="unet", width=3)
    with pytest.raises(ValueError, match=re.escape("ReproduceConfig.mode must be one of ('tiny', 'quick', 'full'), "
                                                   "got 'medium'")):
        replace(TINY, mode="medium")
    with pytest.raises(ValueError, match=re.escape("ReproduceConfig.semantics must be a SemanticsConfig, got dict")):
        replace(TINY, semantics={"n_samples": 64})


def test_the_group_size_rule_is_the_one_compare_groups_applies():
    from kinetic_fm.metrics.stats import compare_groups

    for n in (10, 11, 13, 20, 30):
        for quantile in (0.05, 0.1, 0.15, 0.2, 0.25, 0.5):
            values = np.arange(n, dtype=float)
            try:
                compare_groups(values, values, quantile=quantile)
                runs = True
            except ValueError:
                runs = False
            try:
                SemanticsConfig(n_samples=n, quantile=quantile)
                built = True
            except ValueError:
                built = False
            assert built == runs, (n, quantile)


def test_the_group_size_rule_reads_the_quantile_as_written():
    # 0.0024 of 625 samples is 1.5, two per group rounded half up; the float product is
    # 1.4999999999999998: compare_groups takes 2 (helper-193) and the config must not refuse it
    from kinetic_fm.metrics.stats import compare_groups

    values = np.arange(625, dtype=float)
    assert compare_groups(values, values, quantile=0.0024).n_low == 2
    assert SemanticsConfig(n_samples=625, quantile=0.0024).quantile == 0.0024
    with pytest.raises(ValueError, match="leaves 1"):
        SemanticsConfig(n_samples=625, quantile=0.0023)


def test_the_smallest_accepted_values_build():
    """Each a tiny run at that value reached a report (the next smaller one failed or read wrong)."""
    smallest = ReproduceConfig(
        mode="tiny",
        assets=AssetsConfig(n_train=16, n_heldout=2, classifier_steps=1, model="unet", width=2, general_steps=1,
                            memorizer_n=2, memorizer_steps=1, batch_size=1, lr=1e-9, seed=2**32 - 2),
        semantics=SemanticsConfig(n_samples=10, steps=1, solver="rk4_38", quantile=0.15, bootstrap=2,
                                  seed_start=2**32 - 10),
        support=SupportConfig(k=16, bootstrap=2),
        memorization=MemorizationConfig(efm_sizes=(2,), efm_samples=2, efm_steps=1, checkpoint_samples=2, steps=1,
                                        bootstrap=2, seed_start=2**32 - 2),
        shaping=ShapingConfig(n_samples=2, steps=1, more_steps=2, bootstrap=2, seed_start=2**32 - 2),
    )
    assert smallest.semantics.quantile == 0.15
    # the shared integer rule: NumPy integers count, and an efm_sizes list is read as the tuple is
    SemanticsConfig(n_samples=np.int64(10), quantile=np.float32(0.5))
    MemorizationConfig(efm_sizes=[2, np.int32(4)])
    AssetsConfig(model="mlp", width=3)   # an odd width is refused for the U-Net only


PRESET = {
    "assets": {"data": "digits", "n_train": None, "classifier": None, "model": "mlp", "lr": 0.001, "seed": 0,
               "device": "cpu"},
    "semantics": {"solver": "heun", "quantile": 0.2, "seed_start": 0},
    "memorization": {"seed_start": 100_000},
    "shaping": {"seed_start": 200_000},
}
PRESETS = {
    "tiny": {
        "assets": {**PRESET["assets"], "n_heldout": 100, "classifier_steps": 60, "width": 64, "general_steps": 60,
                   "memorizer_n": 16, "memorizer_steps": 60, "batch_size": 64},
        "semantics": {**PRESET["semantics"], "n_samples": 64, "steps": 8, "bootstrap": 100},
        "support": {"k": 5, "bootstrap": 100},
        "memorization": {**PRESET["memorization"], "efm_sizes": (8, 32), "efm_samples": 32, "efm_steps": 20,
                         "checkpoint_samples": 32, "steps": 10, "bootstrap": 100},
        "shaping": {**PRESET["shaping"], "n_samples": 48, "steps": 10, "more_steps": 20, "bootstrap": 50},
    },
    "quick": {
        "assets": {**PRESET["assets"], "n_heldout": 300, "classifier_steps": 800, "width": None,
                   "general_steps": 3000, "memorizer_n": 64, "memorizer_steps": 4000, "batch_size": 256},
        "semantics": {**PRESET["semantics"], "n_samples": 1000, "steps": 50, "bootstrap": 1000},
        "support": {"k": 5, "bootstrap": 1000},
        "memorization": {**PRESET["memorization"], "efm_sizes": (16, 64, 256, 1024), "efm_samples": 200,
                         "efm_steps": 100, "checkpoint_samples": 300, "steps": 100, "bootstrap": 1000},
        "shaping": {**PRESET["shaping"], "n_samples": 500, "steps": 100, "more_steps": 250, "bootstrap": 500},
    },
    "full": {
        "assets": {**PRESET["assets"], "model": "auto", "n_heldout": 300, "classifier_steps": 2000, "width": None,
                   "general_steps": 20_000, "memorizer_n": 128, "memorizer_steps": 20_000, "batch_size": 256},
        "semantics": {**PRESET["semantics"], "n_samples": 4000, "steps": 100, "bootstrap": 1000},
        "support": {"k": 5, "bootstrap": 1000},
        "memorization": {**PRESET["memorization"], "efm_sizes": (16, 64, 256, 1024, 4096), "efm_samples": 500,
                         "efm_steps": 100, "checkpoint_samples": 1000, "steps": 250, "bootstrap": 1000},
        "shaping": {**PRESET["shaping"], "n_samples": 2000, "steps": 100, "more_steps": 250, "bootstrap": 1000},
    },
}


@pytest.mark.parametrize("mode", ["tiny", "quick", "full"])
def test_the_presets_build_unchanged(mode):
    assert asdict(ReproduceConfig.preset(mode)) == {"mode": mode, **PRESETS[mode]}
    # an image set is capped in size (and a spec without its path still builds: the loader reads it)
    for data in ("mnist", "cifar10:/data/cifar"):
        images = ReproduceConfig.preset(mode, data=data, device="cuda", seed=7)
        n_train = {"tiny": 300, "quick": 5000, "full": 20_000}[mode]
        model = "mlp" if mode == "tiny" else "auto"
        assets = {**PRESETS[mode]["assets"], "data": data, "device": "cuda", "seed": 7, "n_train": n_train,
                  "model": model}
        assert asdict(images) == {"mode": mode, **PRESETS[mode], "assets": assets}


@pytest.mark.parametrize("device, model", [("cpu", "mlp"), ("cpu:0", "mlp"), ("cpu:1", "mlp"), ("cuda", "auto"),
                                            ("cuda:0", "auto")])
def test_the_quick_preset_picks_the_cpu_model_for_any_spelling_of_the_cpu(device, model):
    # cpu:0 is the same CPU as cpu, but the quick preset took the U-Net ("auto") for it
    assert ReproduceConfig.preset("quick", data="mnist", device=device).assets.model == model
    # and one sampling cache for every spelling of the CPU (the device is part of its key)
    cpu = ReproduceConfig.preset("quick", data="mnist", device="cpu").assets.sample_settings()
    same = ReproduceConfig.preset("quick", data="mnist", device=device).assets.sample_settings() == cpu
    assert same == (model == "mlp")


def test_the_largest_accepted_seed_start_samples_up_to_the_last_seed(tmp_path):
    # seed_start may reach 2**32 - n (the last seed 2**32 - 1, as kfm.noise takes it); when seeds
    # reached 2**63 the cached run's seed column was torch.arange(start, stop), which overflowed int64
    import torch

    from kinetic_fm.sampling.noise import noise
    from kinetic_fm.studies.samples import sampled
    from kinetic_fm.studies.workspace import Workspace

    seeds = range(2**32 - 3, 2**32)
    run = sampled(Workspace(tmp_path), "last-seeds", {"field": "zero"}, lambda x, t: torch.zeros_like(x), seeds,
                  (2,), steps=1)
    assert run["seeds"].tolist() == list(seeds) and run["seeds"].dtype == torch.int64
    torch.testing.assert_close(run["x"], noise(seeds, (2,)))


def test_a_data_set_too_small_for_the_split_says_the_size_it_needs():
    # the loader keeps at least 16 training images (AssetsConfig's floor for n_train): it said
    # "has 1797 images; need at least n_heldout + memorizer_n = 1793" and refused them anyway
    from kinetic_fm.studies.assets import _load_split

    with pytest.raises(ValueError, match=re.escape("'digits' has 1797 images; need at least n_heldout + "
                                                   "max(memorizer_n, 16) = 1801")):
        _load_split(AssetsConfig(n_heldout=1785, memorizer_n=8), progress=False)



def test_the_quantile_is_refused_in_one_message_by_compare_groups_and_the_config():
    # compare_groups and SemanticsConfig wrote the (0, 0.5] check twice, in two wordings, and a 0-d tensor
    # printed as its float32 value (0.699999988079071) in one and as the tensor in the other
    import torch

    from kinetic_fm.metrics.stats import compare_groups

    values = np.arange(10.0)
    words = ("quantile must be a real number in (0, 0.5] (the share of the samples in each of the low and "
             "high groups), got ")
    for given, shown in ((0.7, "0.7"), (torch.tensor(0.7), "tensor(0.7000)"), ("0.2", "'0.2'"),
                         (30, "30; did you mean 0.3?"), (torch.tensor(30), "tensor(30); did you mean 0.3?")):
        with pytest.raises(ValueError) as by_stats:
            compare_groups(values, values, quantile=given)
        with pytest.raises(ValueError) as by_config:
            SemanticsConfig(quantile=given)
        assert str(by_stats.value) == words + shown
        assert str(by_config.value) == "SemanticsConfig." + words + shown
