"""The public result dataclasses show as a few lines in a REPL or notebook, not as tensor dumps."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.metrics import semantics


def _results() -> dict[str, object]:
    """One of each public result that holds tensors, of 256 samples (a notebook's sizes)."""
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(256, 8, generator=g, dtype=torch.float64)
    train = torch.randn(300, 8, generator=g, dtype=torch.float64)
    field = kfm.GaussianTarget(torch.zeros(2, dtype=torch.float64), 0.5)
    logits = torch.randn(256, 10, generator=g)
    torch.manual_seed(0)
    return {
        "sample": kfm.sample(field, seeds=range(256), shape=(2,), steps=100, solver="heun", shaping=kfm.KTS(),
                             profile=True),
        "memorization": kfm.memorization(samples, train, bootstrap=100),
        "nearest_neighbors": kfm.nearest_neighbors(samples, train, k=2),
        "local_support": kfm.local_support(samples, train, k=5),
        "kde_log_density": kfm.kde_log_density(samples, train),
        "precision_recall": kfm.precision_recall(train[:256], samples, k=3),
        "classifier_margin": kfm.classifier_margin(torch.nn.Linear(8, 10).double(), samples,
                                                   target=torch.arange(256) % 10),
        "clip_scores": semantics.ClipScores(score=logits[:, 0], margin=None, predicted=logits.argmax(1),
                                            class_scores=logits, template="a photo of a {}", model="ViT-B/32"),
    }


RESULTS = _results()


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_a_result_shows_its_tensors_as_shapes_and_dtypes(name):
    # a SampleResult of 256 samples with a profile showed as a 26 KB, 480-line tensor dump
    result = RESULTS[name]
    text = repr(result)
    assert len(text) < 1200 and text.count("\n") == 0, text
    assert text.startswith(type(result).__name__ + "("), text
    for f in (f for f in dataclasses.fields(result) if f.repr):   # PrecisionRecall leaves its tensors out
        value = getattr(result, f.name)
        assert f"{f.name}=" in text, (f.name, text)
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            assert f"shape={tuple(value.shape)}, dtype={str(value.dtype).removeprefix('torch.')}" in text, text


def test_the_headline_numbers_are_shown():
    res, rep = RESULTS["sample"], RESULTS["memorization"]
    assert "shape=(256, 2), dtype=float32" in repr(res) and "shape=(256, 100), dtype=float64" in repr(res)
    assert f"kpe=Tensor(shape=(256,), dtype=float64, mean={res.kpe.mean().item():.6g})" in repr(res)
    assert "solver='heun'" in repr(res) and "seeds=(0, 1, 2, …, 255) [256 seeds]" in repr(res)
    assert f"fraction={rep.fraction!r}" in repr(rep) and f"ci={rep.ci!r}" in repr(rep)
    assert f"memorized=Tensor(shape=(256,), dtype=bool, {int(rep.memorized.sum())} true)" in repr(rep)


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_fields_and_equality_are_those_of_the_dataclass(name):
    result = RESULTS[name]
    assert result == result
    assert dataclasses.replace(result) is not result
    assert dataclasses.fields(type(result)) == dataclasses.fields(result)
    assert str(result) == (repr(result) if "__str__" not in type(result).__dict__ else str(result))
