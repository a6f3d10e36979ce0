"""The public result dataclasses show as a few lines in a REPL or notebook, not as tensor dumps."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.metrics import semantics
from kinetic_fm.result_repr import result_repr


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


def _made_by_dataclasses(method) -> bool:
    """True for a method the dataclass decorator generated (compiled from a string), not one a class wrote."""
    code = getattr(inspect.unwrap(method), "__code__", None)   # object's own methods have none
    return code is not None and code.co_filename == "<string>"


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_only_the_repr_is_result_repr_equality_and_str_stay_the_dataclass_s(name):
    result = RESULTS[name]
    cls = type(result)
    if cls.__repr__ is not result_repr:   # PrecisionRecall: the dataclass's, which leaves its tensors out
        assert _made_by_dataclasses(cls.__repr__)
        assert not [f for f in dataclasses.fields(result)
                    if f.repr and isinstance(getattr(result, f.name), torch.Tensor)]
    # equality is the generated one, fields compared as a tuple: the same tensors are equal (identity first),
    # equal copies of them ask a tensor's ==, elementwise, for one truth value, which torch refuses
    assert cls.__dataclass_params__.eq and _made_by_dataclasses(cls.__eq__)
    assert result == dataclasses.replace(result)
    copies = {f.name: getattr(result, f.name).clone() for f in dataclasses.fields(result)
              if isinstance(getattr(result, f.name), torch.Tensor) and getattr(result, f.name).numel() > 1}
    assert copies
    with pytest.raises(RuntimeError, match="more than one value is ambiguous"):
        result == dataclasses.replace(result, **copies)   # noqa: B015
    assert cls.__eq__(result, object()) is NotImplemented
    # str is repr's one line, but where the class writes its own summary (MemorizationReport, PrecisionRecall)
    if "__str__" in cls.__dict__:
        assert cls.__name__ in ("MemorizationReport", "PrecisionRecall") and str(result) != repr(result)
    else:
        assert cls.__str__ is object.__str__ and str(result) == repr(result)
