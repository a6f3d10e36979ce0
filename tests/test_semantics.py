"""Classifier margins against hand-computed logits; CLIP scores through a tiny local CLIP."""
from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest
import torch

from kinetic_fm.metrics.features import feature_space
from kinetic_fm.metrics.semantics import (
    CLIPScorer,
    classifier_margin,
    clip_scores,
    load_clip,
    margin_from_scores,
)


def test_margin_from_scores_by_hand():
    s = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    m, c = margin_from_scores(s)
    assert c.tolist() == [1, 0] and m.tolist() == [1.0, 0.5]
    m, c = margin_from_scores(s, torch.tensor([2, 1]))
    assert m.tolist() == [-1.0, -1.5]
    with pytest.raises(ValueError, match="C >= 2"):
        margin_from_scores(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\]"):
        margin_from_scores(s, torch.tensor([3, 0]))


def test_classifier_margin_and_confidence():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x = torch.randn(23, 3, 2, 2)
    with torch.no_grad():
        logits = net(x).double().numpy()
    target = torch.randint(0, 5, (23,))
    res = classifier_margin(net, x, target, batch_size=4)
    for i in range(23):
        t = int(target[i])
        others = np.delete(logits[i], t)
        assert res.margin[i].item() == pytest.approx(logits[i, t] - others.max(), abs=1e-6)
        p = np.exp(logits[i] - logits[i].max())
        assert res.confidence[i].item() == pytest.approx(p[t] / p.sum(), abs=1e-6)
    assert res.predicted.tolist() == logits.argmax(1).tolist()
    pred = classifier_margin(net, x)  # no target: the predicted class, so margins are >= 0
    assert (pred.margin >= 0).all() and torch.all(pred.confidence >= 1 / 5)
    assert res.margin.dtype == torch.float64
    # batch invariance
    torch.testing.assert_close(classifier_margin(net, x, target, batch_size=100).margin, res.margin)
    frame = res.to_frame()
    assert list(frame.columns) == ["classifier_margin", "classifier_confidence", "classifier_predicted",
                                   "classifier_target"]
    assert frame["classifier_target"].tolist() == res.target.tolist()
    assert "classifier_target" not in pred.to_frame()              # the predicted class was scored
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 4\], got range \[7, 7\]"):
        classifier_margin(net, x, 7)
    with pytest.raises(ValueError, match="integer class indices"):
        classifier_margin(net, x, 1.7)                          # not silently class 1


def test_feature_networks_receive_floating_inputs_in_their_own_dtype():
    # float64 samples (a float64 sampling run) into a float32 network failed inside torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x = torch.randn(9, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = net(x.float()).double()
    assert torch.equal(classifier_margin(net, x).margin,
                       margin_from_scores(expected, expected.argmax(1))[0])
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).double().eval()
    with torch.no_grad():
        expected = wide(x.float().double())                     # float32 input, float64 network
    assert torch.equal(feature_space(wide)(x.float()), expected)

    seen = []

    class ReadsBytes(torch.nn.Module):                          # uint8 images are scaled by the net
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, images):
            seen.append(images.dtype)
            return images.flatten(1).float() / 255 * self.scale

    feature_space(ReadsBytes())(torch.zeros(2, 3, dtype=torch.uint8))
    assert seen == [torch.uint8]


# --- a tiny random CLIP, saved and loaded through the real transformers path -----------------

_WORDS = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as ImageProcessor

    path = tmp_path_factory.mktemp("tiny_clip")
    # a character-level BPE vocabulary (no merges): every lowercase word tokenizes
    vocab = {c: i for i, c in enumerate(_WORDS)}
    vocab.update({c + "</w>": len(_WORDS) + i for i, c in enumerate(_WORDS)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    try:
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    except TypeError:  # transformers < 5 reads the vocabulary and merges from files
        (path / "vocab.json").write_text(json.dumps(vocab))
        (path / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    special = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
               "pad_token_id": vocab["<|endoftext|>"]}
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=40,
                          projection_dim=8, **special)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, image_size=32, patch_size=8, projection_dim=8)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                         projection_dim=8)).save_pretrained(path)
    ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_clip_scores_from_a_local_directory(tiny_clip_dir):
    scorer = load_clip(tiny_clip_dir)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 40, 48, generator=g)
    classes = ["cat", "dog", "ship", "truck"]
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    res = scorer.scores(images, classes, labels, batch_size=4, return_class_scores=True)
    assert res.score.shape == res.margin.shape == (6,)
    assert torch.isfinite(res.score).all() and torch.isfinite(res.margin).all()
    assert (res.score.abs() <= 100 + 1e-9).all()
    # margins consistent with the scores: true-class score minus the best other
    cs = res.class_scores.numpy()
    for i, t in enumerate(labels.tolist()):
        assert res.score[i].item() == pytest.approx(cs[i, t], abs=1e-12)
        assert res.margin[i].item() == pytest.approx(cs[i, t] - np.delete(cs[i], t).max(), abs=1e-12)
    assert res.predicted.tolist() == cs.argmax(1).tolist()

    # independent recomputation with the raw transformers objects
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    proc = AutoImageProcessor.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        out = model(input_ids=tok([f"a photo of a {c}" for c in classes], padding=True,
                                  return_tensors="pt")["input_ids"],
                    # floats are scored as the 8-bit images they round to
                    pixel_values=proc(images=list((images.double() * 255).round().to(torch.uint8)),
                                      return_tensors="pt")["pixel_values"])
        # logits_per_image = exp(logit_scale) · cos
        cos = (out.logits_per_image / model.logit_scale.exp()).double().numpy()
    np.testing.assert_allclose(cs, 100 * cos, atol=1e-4)

    # functional form, path loading, template and unlabeled mode
    free = clip_scores(images, classes, model=tiny_clip_dir, template="an image of a {}")
    assert free.template == "an image of a {}" and free.class_scores is None
    assert (free.margin >= 0).all()  # best class vs second best
    assert list(free.to_frame().columns) == ["clip_score", "clip_margin", "clip_predicted"]
    # value_range: [-1, 1] images give the same scores as their [0, 1] versions
    same = scorer.scores(images * 2 - 1, classes, labels, value_range=(-1.0, 1.0))
    torch.testing.assert_close(same.score, res.score, rtol=0, atol=1e-4)
    prompts = scorer.scores(images[:2], prompts=["a photo of a cat", "a photo of a dog"])
    torch.testing.assert_close(prompts.score, res.score[:2], rtol=0, atol=1e-4)
    assert prompts.margin is None


def test_clip_errors(tiny_clip_dir, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        CLIPScorer(tmp_path / "missing")
    scorer = load_clip(tiny_clip_dir)
    with pytest.raises(ValueError, match="exactly one"):
        scorer.scores(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="template"):
        scorer.scores(torch.rand(1, 3, 8, 8), ["a", "b"], template="no slot")
    # rows named, as classifier_margin names them (it said "images contain NaN or inf")
    broken = torch.rand(4, 3, 8, 8)
    broken[0, 1, 2, 3], broken[2, 0, 0, 0] = math.inf, math.nan
    with pytest.raises(ValueError, match=r"^images have non-finite values in rows \[0, 2\]$"):
        scorer.scores(broken, ["a", "b"])
    with pytest.raises(TypeError, match="sequence of names"):
        scorer.scores(torch.rand(1, 3, 8, 8), "ab")
    with pytest.raises(ValueError, match="with prompts give no labels"):
        scorer.scores(torch.rand(1, 3, 8, 8), labels=[0], prompts=["a photo"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        scorer.scores(torch.rand(1, 8, 8), ["a", "b"])

    # transformers absent (its import blocked, as Python marks it); tests/test_optional.py the rest
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"CLIPScorer needs the transformers package: pip install transformers "
                                          r"\(or pip install kinetic_fm\[clip\]\)"):
        CLIPScorer(tiny_clip_dir)


# --- input validation (audit D8, D9, D11, D12, D13, C16) -------------------------------------

def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()


def test_classifier_margin_needs_a_callable_classifier():
    # None was the identity feature map: the inputs themselves were scored as logits
    with pytest.raises(TypeError, match="classifier must be callable"):
        classifier_margin(None, torch.randn(6, 5))


def test_classifier_margin_target_must_be_scalar_or_per_sample():
    x = torch.randn(6, 3, 2, 2)
    with pytest.raises(ValueError, match=r"target must be one class index or have shape \(6,\)"):
        classifier_margin(_net(), x, torch.zeros(2, 3, dtype=torch.long))   # was flattened to (6,)
    one = classifier_margin(_net(), x, torch.tensor(2))
    per = classifier_margin(_net(), x, torch.full((6,), 2))
    torch.testing.assert_close(one.margin, per.margin, rtol=0, atol=0)
    for wrong in (torch.full((5,), 2), [2] * 7, np.zeros(0, dtype=np.int64)):   # named, not gather's RuntimeError
        with pytest.raises(ValueError, match=rf"^target must be one class or one per sample \(6\), got {len(wrong)}$"):
            classifier_margin(_net(), x, wrong)


@pytest.mark.parametrize("batch_size", [True, 0, 2.7, "2"])
def test_classifier_margin_batch_size_must_be_a_positive_integer(batch_size):
    with pytest.raises(ValueError, match="^batch_size must be a positive integer"):
        classifier_margin(_net(), torch.randn(6, 3, 2, 2), batch_size=batch_size)


def test_classifier_margin_refuses_empty_x():
    with pytest.raises(ValueError, match="x must hold at least one sample"):
        classifier_margin(_net(), torch.randn(0, 3, 2, 2))


@pytest.mark.parametrize("value_range", [(0.0, 0.0), (1.0, 0.0), (0.0, math.nan), (0.0, math.inf), 1, (0, 1, 2),
                                         ("0", "1"), (True, 2)])
def test_clip_value_range_must_be_two_finite_increasing_numbers(tiny_clip_dir, value_range):
    scorer = load_clip(tiny_clip_dir)
    with pytest.raises(ValueError, match="^value_range must be two finite numbers"):
        scorer.scores(torch.rand(2, 3, 8, 8), ["cat", "dog"], value_range=value_range)


def test_clip_value_range_accepts_numpy_and_tensor_bounds(tiny_clip_dir):
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(2, 3, 8, 8)
    a = scorer.scores(images * 2 - 1, ["cat", "dog"], value_range=(np.float32(-1), torch.tensor(1)))
    b = scorer.scores(images * 2 - 1, ["cat", "dog"], value_range=(-1.0, 1.0))
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=0)


def test_clip_refuses_images_far_outside_their_value_range_and_clips_small_overshoots(tiny_clip_dir):
    # [-1, 1] images read as [0, 1] lost every dark pixel to the clip, moving scores by up to 17
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match=r"images span \[-0\.9.*beyond value_range=\(0, 1\).*pass value_range=\(-1, 1\)"):
        scorer.scores(images * 2 - 1, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"beyond value_range=\(-1, 1\)"):
        scorer.scores(images * 6 - 3, ["cat", "dog"], value_range=(-1, 1))
    overshoot = images.clone()
    overshoot[0, 0, 0, 0], overshoot[1, 0, 0, 0] = 1.05, -0.05            # a generated sample's few %
    clipped = scorer.scores(overshoot, ["cat", "dog"], return_class_scores=True).class_scores
    want = scorer.scores(overshoot.clamp(0, 1), ["cat", "dog"], return_class_scores=True).class_scores
    torch.testing.assert_close(clipped, want, rtol=0, atol=0)


def test_clip_refuses_a_text_tower_that_cannot_tell_the_classes_apart(tiny_clip_dir, monkeypatch):
    scorer = load_clip(tiny_clip_dir)
    same = torch.nn.functional.normalize(torch.ones(1, 8, dtype=torch.float64), dim=1)
    monkeypatch.setattr(scorer, "text_embeddings", lambda prompts, batch_size=256: same.expand(len(prompts), 8))
    with pytest.raises(ValueError, match="one embedding for every class prompt, so every margin would be 0"):
        scorer.scores(torch.rand(2, 3, 16, 16), ["cat", "dog"])


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64])
def test_clip_integer_images_of_any_dtype_read_as_0_255(tiny_clip_dir, dtype):
    # int64 0..255 images were read as floats in [0, 1] and clamped to white
    scorer = load_clip(tiny_clip_dir)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    want = scorer.scores(images, ["cat", "dog"], return_class_scores=True).class_scores
    got = scorer.scores(images.to(dtype), ["cat", "dog"], return_class_scores=True).class_scores
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"integer images are read as \[0, 255\], got values in \[0, 300\]"):
        scorer.scores(torch.full((1, 3, 8, 8), 300, dtype=dtype).index_fill_(3, torch.tensor([0]), 0),
                      ["cat", "dog"])


def test_clip_float_images_score_as_the_uint8_images_they_equal(tiny_clip_dir):
    # the processor's float-to-PIL step truncated: 20.9 % of pixels one level darker, margins up to
    # 0.0175 off the uint8 images' (helper-101); floats are rounded to 8 bits first, as PIL would
    scorer = load_clip(tiny_clip_dir)
    pixels = torch.randint(0, 256, (3, 3, 16, 16), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    want = scorer.scores(pixels, ["cat", "dog"], return_class_scores=True).class_scores
    for images, value_range in ((pixels.double() / 255, (0, 1)), (pixels.float() / 127.5 - 1, (-1, 1))):
        got = scorer.scores(images, ["cat", "dog"], value_range=value_range, return_class_scores=True).class_scores
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    exactly_a_tenth = pixels.double() / 255                          # 1.1 in float64 read 1.10000002
    exactly_a_tenth[0, 0, 0, 0] = 1.1
    scorer.scores(exactly_a_tenth, ["cat", "dog"])


def test_clip_refuses_complex_bool_and_empty_images(tiny_clip_dir):
    scorer = load_clip(tiny_clip_dir)
    with pytest.raises(ValueError, match="images must hold real numbers"):
        scorer.scores(torch.rand(1, 3, 8, 8, dtype=torch.complex64), ["cat", "dog"])
    with pytest.raises(ValueError, match="images must hold real numbers"):
        scorer.scores(torch.ones(1, 3, 8, 8, dtype=torch.bool), ["cat", "dog"])
    with pytest.raises(ValueError, match="images must hold at least one image"):
        scorer.scores(torch.rand(0, 3, 8, 8), ["cat", "dog"])


def test_clip_flags_batch_size_template_and_model_checked_first(tiny_clip_dir, monkeypatch):
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(2, 3, 8, 8)
    calls = []
    monkeypatch.setattr(scorer.model, "get_image_features", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="return_class_scores must be True or False"):
        scorer.scores(images, ["cat", "dog"], return_class_scores="no")
    for batch_size in (True, 0, -1):
        with pytest.raises(ValueError, match="^batch_size must be a positive integer"):
            scorer.scores(images, ["cat", "dog"], batch_size=batch_size)
    with pytest.raises(ValueError, match="template must be a string"):
        scorer.scores(images, ["cat", "dog"], template=None)
    with pytest.raises(ValueError, match="exactly one"):
        scorer.scores(images, ["cat", "dog"], template="{} {}")
    with pytest.raises(ValueError, match=r"^labels must hold class indices in \[0, 1\], got range \[0, 5\]$"):
        scorer.scores(images, ["cat", "dog"], labels=[0, 5])
    assert calls == []                                   # nothing was embedded before the errors
    with pytest.raises(TypeError, match="model must be a local CLIP directory"):
        clip_scores(images, ["cat", "dog"], model=None)


def test_classifier_margin_accepts_nested_lists_as_float32():
    x = torch.randn(6, 3, 2, 2)
    from_list = classifier_margin(_net(), x.tolist())
    torch.testing.assert_close(from_list.margin, classifier_margin(_net(), x).margin, rtol=0, atol=0)


def test_clip_free_prompts_must_be_one_per_image(tiny_clip_dir):
    scorer = load_clip(tiny_clip_dir)
    with pytest.raises(ValueError, match=r"prompts must hold one prompt per image \(3\), got 1"):
        scorer.scores(torch.rand(3, 3, 8, 8), prompts=["a photo"])


# --- mutation audit: boundaries, to_frame values and refusals the tests above left open ------

def test_margin_from_scores_refuses_a_negative_target_by_name():
    # gather reads index -1 as an IndexError-like RuntimeError, not the documented ValueError
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\]"):
        margin_from_scores(torch.zeros(2, 3), torch.tensor([-1, 0]))


@pytest.mark.parametrize("target", [-1, 5])
def test_classifier_margin_names_the_class_range_just_outside_it(target):
    with pytest.raises(ValueError, match=r"^target must hold class indices in \[0, 4\]"):
        classifier_margin(_net(), torch.randn(4, 3, 2, 2), target)


def test_classifier_margin_refuses_non_finite_logits_by_their_rows():
    # it said "classifier returned non-finite logits" without the rows, where margin_from_scores names them
    def with_nan(x):
        out = x.flatten(1)[:, :3].clone()
        out[1, 2] = math.nan
        out[12:, 0] = -math.inf
        return out

    with pytest.raises(ValueError, match=r"^classifier returned non-finite logits in rows \[1, 12, 13, 14, 15, 16, 17, "
                                         r"18, 19, 20\] \.\.\.$"):
        classifier_margin(with_nan, torch.randn(22, 4))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_classifier_margin_names_non_finite_inputs_not_the_classifier(bad):
    # a NaN pixel in the images was reported as "classifier returned non-finite logits"
    x = torch.randn(5, 3, 2, 2)
    x[3, 1, 1, 0] = bad
    with pytest.raises(ValueError, match=r"^x has non-finite values in rows \[3\]"):
        classifier_margin(_net(), x)


def test_margin_from_scores_refuses_nan_scores_by_name():
    # a NaN score gave a NaN margin (or a NaN row's argmax) without a word
    scores = torch.tensor([[0.0, 1.0], [math.nan, 2.0]])
    with pytest.raises(ValueError, match=r"^scores must be finite, got NaN or inf in rows \[1\]"):
        margin_from_scores(scores)


def test_classifier_margin_refuses_logits_that_are_not_b_by_c():
    # a (b, 2, 5) output was flattened and scored as 10 classes, a (b,) one met "C >= 2 classes"
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"classifier must return \(b, C\) logits, got shape \(4, 2, 5\)$"):
        classifier_margin(lambda x: torch.randn(x.shape[0], 2, 5), x)
    with pytest.raises(ValueError, match=r"got shape \(4,\); a single-logit binary classifier"):
        classifier_margin(lambda x: x[:, 0], x)
    # a convolutional head's (b, C, 1, 1) is (b, C)
    torch.testing.assert_close(classifier_margin(lambda x: x[:, :, None, None], x).margin,
                               classifier_margin(lambda x: x, x).margin, rtol=0, atol=0)
    # the hint's logits: softmax of (−z/2, z/2) is sigmoid(z), so the confidence is the sigmoid's
    z = torch.tensor([-2.0, -0.5, 0.0, 3.0])
    scored = classifier_margin(lambda x: torch.stack([-x[:, 0] / 2, x[:, 0] / 2], 1), z[:, None].expand(4, 3))
    torch.testing.assert_close(scored.confidence, torch.sigmoid(z.abs()).double())
    torch.testing.assert_close(scored.margin, z.abs().double())


def test_classifier_margin_frame_holds_each_field_in_its_own_dtype():
    # float64 hand computation: margin = logit[t] − best other, confidence = softmax(logits)[t]
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 3.5], [1.0, 1.0, -2.0]], dtype=torch.float64)
    res = classifier_margin(lambda x: x, logits, torch.tensor([0, 1, 2]))
    frame = res.to_frame()
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    np.testing.assert_allclose(frame["classifier_margin"], [1.5, -0.5, -3.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(frame["classifier_confidence"], p[[0, 1, 2], [0, 1, 2]], rtol=1e-14)
    assert frame["classifier_predicted"].tolist() == [0, 2, 0]
    assert frame["classifier_target"].tolist() == [0, 1, 2]
    assert frame.dtypes.to_dict() == {"classifier_margin": np.float64, "classifier_confidence": np.float64,
                                      "classifier_predicted": np.int64, "classifier_target": np.int64}


def test_clip_frame_holds_score_margin_and_predicted_class(tiny_clip_dir):
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    res = scorer.scores(images, ["cat", "dog", "ship"], return_class_scores=True)
    cs = res.class_scores.numpy()
    frame = res.to_frame()
    assert frame.dtypes.to_dict() == {"clip_score": np.float64, "clip_margin": np.float64, "clip_predicted": np.int64}
    np.testing.assert_array_equal(frame["clip_score"], cs.max(1))
    np.testing.assert_array_equal(frame["clip_margin"], cs.max(1) - np.sort(cs, 1)[:, -2])
    assert frame["clip_predicted"].tolist() == cs.argmax(1).tolist()


@pytest.mark.parametrize("value, ok", [(0, True), (255, True), (-1, False), (256, False)])
def test_clip_integer_images_are_refused_just_outside_0_255(tiny_clip_dir, value, ok):
    scorer = load_clip(tiny_clip_dir)
    images = torch.full((1, 3, 8, 8), 128, dtype=torch.int32)
    images[0, 0, 0, 0] = value
    if ok:
        assert torch.isfinite(scorer.scores(images, ["cat", "dog"]).score).all()
    else:
        with pytest.raises(ValueError, match=r"integer images are read as \[0, 255\]"):
            scorer.scores(images, ["cat", "dog"])


@pytest.mark.parametrize("peak, ok", [(1.09, True), (1.15, False), (-0.09, True), (-0.15, False)])
def test_clip_float_images_may_overshoot_their_range_by_a_tenth_of_it_and_no_more(tiny_clip_dir, peak, ok):
    scorer = load_clip(tiny_clip_dir)
    images = torch.full((1, 3, 8, 8), 0.5)
    images[0, 0, 0, 0] = peak * 2 - 1                      # in value_range=(-1, 1): a tenth is 0.2
    if ok:
        scorer.scores(images, ["cat", "dog"], value_range=(-1, 1))
    else:
        with pytest.raises(ValueError, match=r"by more than a tenth of its width"):
            scorer.scores(images, ["cat", "dog"], value_range=(-1, 1))


def test_clip_prompts_longer_than_the_text_tower_are_truncated_not_refused(tiny_clip_dir):
    # the tiny tower has 40 positions and the character-level tokenizer spends one per letter:
    # two names alike in their first 50 letters read the same
    scorer = load_clip(tiny_clip_dir)
    long = "x" * 50
    with pytest.warns(UserWarning, match=r"class_names repeat 'x+a' \(at 0, 1\): their prompts tokenize alike"):
        res = scorer.scores(torch.rand(2, 3, 16, 16), [long + "a", long + "b", "cat"], return_class_scores=True)
    torch.testing.assert_close(res.class_scores[:, 0], res.class_scores[:, 1], rtol=0, atol=0)


def test_clip_refuses_one_class_or_a_label_past_the_last_before_embedding(tiny_clip_dir, monkeypatch):
    scorer = load_clip(tiny_clip_dir)
    calls = []
    monkeypatch.setattr(scorer.model, "get_image_features", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match="at least 2 class names"):
        scorer.scores(torch.rand(2, 3, 8, 8), ["cat"])
    with pytest.raises(ValueError, match=r"^labels must hold class indices in \[0, 1\]"):
        scorer.scores(torch.rand(2, 3, 8, 8), ["cat", "dog"], labels=[0, 2])
    assert calls == []


def test_clip_identical_class_names_score_equal_not_as_a_broken_tokenizer(tiny_clip_dir):
    # the mismatch check must not fire when the prompts themselves are the same
    with pytest.warns(UserWarning, match="class_names repeat 'cat'"):
        res = load_clip(tiny_clip_dir).scores(torch.rand(2, 3, 8, 8), ["cat", "cat"])
    assert res.margin.tolist() == [0.0, 0.0]


DEVICE_MESSAGE = r"^device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'$"


def test_a_device_that_is_no_torch_device_is_named_by_margins_and_feature_spaces(tmp_path):
    # torch's own error listing every device type, from inside the first chunk
    with pytest.raises(ValueError, match=DEVICE_MESSAGE):
        classifier_margin(torch.nn.Linear(2, 3), torch.zeros(2, 2), device="gpu")
    with pytest.raises(ValueError, match=DEVICE_MESSAGE):
        feature_space(None, device="gpu")
    with pytest.raises(ValueError, match=DEVICE_MESSAGE):  # before the folder is looked at
        clip_scores(torch.rand(2, 3, 8, 8), ["a", "b"], model=tmp_path / "no_clip", device="gpu")


def test_clip_scores_names_a_device_that_is_no_torch_device(tiny_clip_dir):
    with pytest.raises(ValueError, match=DEVICE_MESSAGE):
        clip_scores(torch.rand(2, 3, 8, 8), ["a", "b"], model=tiny_clip_dir, device="gpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_classifier_margin_warns_of_a_classifier_that_returns_probabilities(dtype):
    # a net ending in softmax gave margins of probabilities (in [-1, 1]) and a softmax of a softmax
    # as confidence, without a word
    import warnings

    torch.manual_seed(0)
    for classes in (2, 10, 1000):
        body = torch.nn.Linear(6, classes).eval().to(dtype)
        x = (torch.randn(40, 6) * 4).to(dtype)
        probabilities = torch.nn.Sequential(body, torch.nn.Softmax(dim=1))
        with pytest.warns(UserWarning, match=r"look like probabilities.*return the logits") as got:
            classifier_margin(probabilities, x, batch_size=16)
        assert got[0].filename == __file__
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # the logits, or their log-softmax, are logits
            plain = classifier_margin(body, x)
            logs = classifier_margin(lambda rows: torch.log_softmax(body(rows), dim=1), x)
        if dtype == torch.float64:
            torch.testing.assert_close(logs.margin, plain.margin)
    z = torch.randn(30)
    with pytest.warns(UserWarning, match="look like probabilities"):   # a sigmoid's (1 - p, p)
        classifier_margin(lambda rows: torch.stack([1 - torch.sigmoid(rows), torch.sigmoid(rows)], 1), z)


def test_genuine_logits_are_not_taken_for_probabilities():
    import warnings

    from kinetic_fm.metrics.semantics import _probability_rows

    torch.manual_seed(0)
    # two logits in [0, 1] each, one row at a time: a row must sum to 1 within 7e-7 to pass
    pairs = torch.rand(200_000, 2).double()
    near = pairs[(pairs.sum(1) - 1).abs() < 1e-3]   # a few hundred rows; the rest sum further from 1
    assert len(near) > 100 and not any(_probability_rows(row[None], torch.float32) for row in near)
    assert _probability_rows(torch.tensor([[0.25, 0.75]], dtype=torch.float64), torch.float32)
    assert not _probability_rows(torch.tensor([[0.25, 0.75], [0.5, 0.5 + 1e-5]], dtype=torch.float64),
                                 torch.float32)
    assert not _probability_rows(torch.tensor([[1.25, -0.25]], dtype=torch.float64), torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for classes in (2, 10):   # an untrained net's logits near 0, a trained one's spread wide
            for scale in (0.01, 1.0, 10.0):
                net = torch.nn.Linear(6, classes).eval()
                classifier_margin(lambda rows: net(rows) * scale, torch.randn(50, 6))


# --- review (helper-187): margins by hand, class counts, targets of any integer kind, prompts --

def test_classifier_margins_equal_the_hand_computed_margins_of_tied_logits_in_any_chunking():
    logits = torch.tensor([[2.0, 2.0, -1.0], [0.0, 3.0, 3.0], [1.0, 1.0, 1.0], [-5.0, 4.0, 0.5],
                           [7.0, -7.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([1, 0, 2, 2, 0])
    want_margin = [0.0, -3.0, 0.0, -3.5, 7.0]                          # logit[t] − the best other, by hand
    p = torch.softmax(logits, dim=1)
    for batch_size in (1, 2, 5):
        res = classifier_margin(lambda x: x, logits, target, batch_size=batch_size)
        assert res.margin.tolist() == want_margin
        assert res.predicted.tolist() == [0, 1, 0, 1, 0]                 # ties go to the first class
        torch.testing.assert_close(res.confidence, p[torch.arange(5), target], rtol=1e-15, atol=0)
        pred = classifier_margin(lambda x: x, logits, batch_size=batch_size)
        assert pred.margin.tolist() == [0.0, 0.0, 0.0, 3.5, 7.0]
    alone = classifier_margin(lambda x: x, logits[3:4], target[3:4])
    assert alone.margin.tolist() == [-3.5] and alone.predicted.tolist() == [1]


def test_a_single_logit_classifier_of_shape_b_by_1_gets_the_two_column_hint():
    # nn.Linear(d, 1), the usual binary head, met "need (B, C) scores with C >= 2 classes" alone
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"got shape \(4, 1\); a single-logit binary classifier z gives the "
                                         r"logits torch.stack\(\[-z / 2, z / 2\], 1\)"):
        classifier_margin(lambda x: x[:, :1], x)


@pytest.mark.parametrize("target", [torch.tensor([2, 0, 1], dtype=torch.int32), [2, 0, 1],
                                    np.array([2, 0, 1], dtype=np.uint8), (2, 0, 1)])
def test_margin_from_scores_takes_class_indices_of_any_integer_kind(target):
    # int32 met gather's "Expected dtype int32/int64 for index", a list "'list' object has no
    # attribute 'shape'", an array gather's "must be Tensor, not numpy.ndarray"
    scores = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0], [4.0, 4.5, 4.0]])
    margin, chosen = margin_from_scores(scores, target)
    assert margin.tolist() == [-1.0, -5.0, 0.5] and chosen.tolist() == [2, 0, 1] and chosen.dtype == torch.int64


def test_margin_from_scores_refuses_fractional_class_indices():
    with pytest.raises(ValueError, match="target must hold integer class indices, got dtype torch.float32"):
        margin_from_scores(torch.zeros(2, 3), torch.tensor([0.0, 2.0]))


def test_margin_from_scores_moves_a_cpu_target_to_the_scores_device():
    from fake_cuda import fake_cuda

    scores = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    with fake_cuda():
        margin, chosen = margin_from_scores(scores.to("cuda"), torch.tensor([2, 0]))
        assert margin.device.type == chosen.device.type == "cuda"
        assert margin.cpu().tolist() == [-1.0, -5.0]


def test_clip_text_embeddings_refuse_a_string_and_no_prompts(tiny_clip_dir):
    # a string was embedded character by character: "a cat" gave 5 rows
    scorer = load_clip(tiny_clip_dir)
    with pytest.raises(TypeError, match="prompts must be a sequence of strings, got the string 'a cat'"):
        scorer.text_embeddings("a cat")
    with pytest.raises(ValueError, match="prompts must hold at least one prompt"):
        scorer.text_embeddings([])
    with pytest.raises(ValueError, match="batch_size"):
        scorer.text_embeddings(["a cat"], batch_size=0)
    one, both = scorer.text_embeddings(["a cat"]), scorer.text_embeddings(["a cat", "a dog"], batch_size=1)
    assert one.shape == (1, 8) and both.shape == (2, 8)
    torch.testing.assert_close(both[:1], one, rtol=0, atol=1e-6)


def test_clip_warns_of_repeated_class_names_whose_margins_cannot_exceed_0(tiny_clip_dir):
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(3, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"class_names repeat 'cat' \(at 0, 2\): .*margin"):
        res = scorer.scores(images, ["cat", "dog", "cat"], labels=0, return_class_scores=True)
    assert (res.margin <= 0).all()   # the repeat is the best other class whenever cat wins
    torch.testing.assert_close(res.class_scores[:, 0], res.class_scores[:, 2], rtol=0, atol=0)


def test_clip_class_names_that_tokenize_alike_are_repeats_not_a_broken_tokenizer(tiny_clip_dir):
    # CLIP's tokenizer lower-cases and collapses white space: "Cat" and "cat" are one prompt to the
    # model. Two such names read "its tokenizer and model do not match"; with a third, margins of 0
    # came without a word
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"class_names repeat 'cat' \(at 0, 1\)"):
        assert scorer.scores(images, ["cat", "Cat"]).margin.tolist() == [0.0, 0.0]
    with pytest.warns(UserWarning, match=r"class_names repeat 'cat' \(at 0, 1\)"):
        res = scorer.scores(images, ["cat", "cat ", "dog"], labels=0)
    assert (res.margin <= 0).all()


def test_clip_label_errors_name_labels_the_argument_given(tiny_clip_dir):
    # they named "target", which clip_scores has no argument of
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^labels must hold integer class indices, got dtype torch.float32$"):
        scorer.scores(images, ["cat", "dog"], labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^labels must be one class or one per sample \(2\), got 3$"):
        clip_scores(images, ["cat", "dog"], labels=[0, 1, 1], model=scorer)
    with pytest.raises(ValueError, match=r"^labels must be one class index or have shape \(2,\)"):
        scorer.scores(images, ["cat", "dog"], labels=[[0, 1]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_clip_half_precision_images_score_as_the_float32_images_of_their_values(tiny_clip_dir, dtype):
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(3, 3, 8, 8).to(dtype)
    half = scorer.scores(images, ["cat", "dog"], labels=[0, 1, 0], return_class_scores=True)
    full = scorer.scores(images.float(), ["cat", "dog"], labels=[0, 1, 0], return_class_scores=True)
    assert torch.equal(half.class_scores, full.class_scores) and torch.equal(half.margin, full.margin)


def test_clip_class_names_must_have_an_order_and_may_come_from_any_iterable(tiny_clip_dir):
    # a set's order is the string hashes' (another in every interpreter), so labels indexed names at
    # random; a generator met "object of type 'generator' has no len()"
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(TypeError, match=r"class_names must be an ordered sequence .* got a set"):
        scorer.scores(images, {"cat", "dog"}, labels=[0, 1])
    listed = scorer.scores(images, ["cat", "dog", "ship"], labels=[0, 2], return_class_scores=True)
    names_in_order = ((n for n in ("cat", "dog", "ship")), np.array(["cat", "dog", "ship"]),
                      {"cat": 0, "dog": 1, "ship": 2})
    for names in names_in_order:
        got = scorer.scores(images, names, labels=[0, 2], return_class_scores=True)
        assert torch.equal(got.class_scores, listed.class_scores) and torch.equal(got.margin, listed.margin)
    with pytest.raises(ValueError, match=r"a CLIP margin needs at least 2 class names, got 1"):
        scorer.scores(images, iter(["cat"]))


def test_clip_free_prompts_must_have_an_order(tiny_clip_dir):
    # a set of one prompt per image failed on "'set' object is not subscriptable", after the images
    scorer = load_clip(tiny_clip_dir)
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(TypeError, match=r"prompts must be an ordered sequence .* got a set"):
        scorer.scores(images, prompts={"a cat", "a dog"})
    with pytest.raises(TypeError, match=r"prompts must be an ordered sequence .* got a set"):
        scorer.text_embeddings({"a cat", "a dog"})
    listed = scorer.scores(images, prompts=["a cat", "a dog"])
    assert torch.equal(scorer.scores(images, prompts=(p for p in ("a cat", "a dog"))).score, listed.score)


def test_classifier_margin_stacks_a_list_of_image_tensors():
    # a list of (3, 2, 2) tensors (a dataset's items) failed inside torch.as_tensor ("only one
    # element tensors can be converted to Python scalars"); it is stacked as the (6, 3, 2, 2) batch
    x = torch.randn(6, 3, 2, 2)
    whole = classifier_margin(_net(), x, 2)
    for items in (list(x), tuple(x)):
        got = classifier_margin(_net(), items, 2)
        torch.testing.assert_close(got.margin, whole.margin, rtol=0, atol=0)
        assert torch.equal(got.predicted, whole.predicted)
    with pytest.raises(ValueError, match=r"^x: a list of tensors must hold tensors of one shape, got \(3, 2, 2\) "
                                         r"at item 0 and \(3, 2\) at item 2; pass \(B, \.\.\.\) items"):
        classifier_margin(_net(), [x[0], x[1], x[2, :, 0]])
    with pytest.raises(ValueError, match=r"^x: a tuple of tensors must hold only tensors, got list at item 1; x may be "
                                         r"one tensor, an array, nested lists of numbers, or a list or tuple of "
                                         r"tensors of one shape on one device$"):
        classifier_margin(_net(), (x[0], x[1].tolist()))


def test_classifier_margin_names_x_for_mixed_or_scattered_tensor_lists():
    # a list mixing tensors and numbers was refused without saying what x may be, and tensors on
    # two devices failed in torch.stack with torch's "Tensor on device meta is not on the expected
    # device cpu!", which names no argument
    def net(x):
        return torch.stack([x.sum(1), -x.sum(1)], 1)

    accepted = ("; x may be one tensor, an array, nested lists of numbers, or a list or tuple of tensors of one "
                "shape on one device")
    for mixed, item, kind in (([torch.ones(3), 1.0], 1, "float"), ([2, torch.ones(())], 0, "int")):
        mixed_message = f"x: a list of tensors must hold only tensors, got {kind} at item {item}{accepted}"
        with pytest.raises(ValueError, match="^" + re.escape(mixed_message) + "$"):
            classifier_margin(net, mixed)
    scattered = ("x: a list of tensors must hold tensors on one device, got cpu at item 0 and meta at item 1 "
                 f"(move them to one device: [t.to(device) for t in x]){accepted}")
    with pytest.raises(ValueError, match="^" + re.escape(scattered) + "$"):
        classifier_margin(net, [torch.ones(3), torch.ones(3, device="meta")])


def test_classifier_margin_target_of_one_class_is_a_proper_tensor():
    # one class index came back as target.expand(B): a stride-0 view, whose every element is the
    # same memory (an in-place write to one changed all, and .numpy() of it is read-only)
    got = classifier_margin(_net(), torch.randn(6, 3, 2, 2), 2)
    assert got.target.shape == (6,) and got.target.stride() == (1,)
    got.target[0] = 4
    assert got.target.tolist() == [4, 2, 2, 2, 2, 2]


# --- a CLIP folder missing its tokenizer or image processor (helper-321) ----------------------

_SAVED = ("(save_pretrained of the tokenizer and the image processor, or of a CLIPProcessor holding both, "
          "writes them; nothing is downloaded)")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def _copy_without(folder, tmp_path, *names):
    import shutil

    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    for name in names:
        (copy / name).unlink(missing_ok=True)
    return copy


def test_a_clip_folder_without_tokenizer_files_is_refused_not_scored_with_an_empty_vocabulary(tiny_clip_dir,
                                                                                            tmp_path):
    # transformers built an empty CLIPTokenizer: every prompt read [0, 2, 2, ...], the class names
    # were warned of as repeats and every margin was 0
    bare = _copy_without(tiny_clip_dir, tmp_path, *_TOKENIZER_FILES)
    message = (f"the CLIP folder {str(bare)!r} lacks its tokenizer: tokenizer.json, or vocab.json and merges.txt "
               f"{_SAVED}")
    with pytest.raises(FileNotFoundError, match="^" + re.escape(message) + "$"):
        clip_scores(torch.rand(2, 3, 32, 32), ["cat", "dog"], torch.tensor([0, 1]), model=bare)


def test_a_clip_folder_without_its_image_processor_is_refused_in_our_words(tiny_clip_dir, tmp_path):
    # transformers' own OSError told of huggingface.co, though nothing is downloaded
    bare = _copy_without(tiny_clip_dir, tmp_path, "preprocessor_config.json")
    message = (f"the CLIP folder {str(bare)!r} lacks its image processor: preprocessor_config.json "
               f"{_SAVED}")
    with pytest.raises(FileNotFoundError, match="^" + re.escape(message) + "$"):
        CLIPScorer(bare)


def test_a_clip_folder_missing_both_names_both_at_once(tiny_clip_dir, tmp_path):
    bare = _copy_without(tiny_clip_dir, tmp_path, "preprocessor_config.json", *_TOKENIZER_FILES)
    with pytest.raises(FileNotFoundError, match=r"lacks its tokenizer: tokenizer\.json, or vocab\.json and "
                                                r"merges\.txt; and its image processor: preprocessor_config\.json "
                                                r"\(save_pretrained of"):
        CLIPScorer(bare)


def test_a_clip_tokenizer_saved_as_vocab_and_merges_alone_is_accepted(tiny_clip_dir, tmp_path):
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(tiny_clip_dir).get_vocab()
    files = _copy_without(tiny_clip_dir, tmp_path, *_TOKENIZER_FILES)
    (files / "vocab.json").write_text(json.dumps(vocab))
    (files / "merges.txt").write_text("#version: 0.2\n")
    half = _copy_without(files, tmp_path / "half", "merges.txt")      # vocab.json alone is no tokenizer
    with pytest.raises(FileNotFoundError, match="lacks its tokenizer"):
        CLIPScorer(half)
    prompts = ["a photo of a cat", "a photo of a dog"]
    torch.testing.assert_close(load_clip(files).text_embeddings(prompts),
                               load_clip(tiny_clip_dir).text_embeddings(prompts), rtol=0, atol=0)


def test_a_clip_image_processor_saved_inside_processor_config_is_accepted(tiny_clip_dir, tmp_path):
    # transformers 5's CLIPProcessor.save_pretrained nests it in processor_config.json; an older one reads
    # preprocessor_config.json alone (it raised its own OSError about huggingface.co on such a folder)
    from importlib.metadata import version

    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_clip_dir)
    nested = _copy_without(tiny_clip_dir, tmp_path, "preprocessor_config.json")
    (nested / "processor_config.json").write_text(json.dumps({"image_processor": processor.to_dict()}))
    if int(version("transformers").split(".")[0]) < 5:
        with pytest.raises(FileNotFoundError, match="lacks its image processor: preprocessor_config.json"):
            CLIPScorer(nested)
        return
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(load_clip(nested).image_embeddings(images),
                               load_clip(tiny_clip_dir).image_embeddings(images), rtol=0, atol=0)
    (nested / "processor_config.json").write_text(json.dumps({"processor_class": "CLIPProcessor"}))
    with pytest.raises(FileNotFoundError, match="lacks its image processor"):
        CLIPScorer(nested)


def test_clip_grey_images_are_refused_with_the_way_to_three_channels(tiny_clip_dir):
    scorer = load_clip(tiny_clip_dir)
    message = ("images must have shape (B, 3, H, W), got (4, 1, 32, 32): CLIP reads colour images; repeat a grey "
               "channel as three with images.expand(-1, 3, -1, -1)")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        scorer.scores(torch.rand(4, 1, 32, 32), ["cat", "dog"])
    with pytest.raises(ValueError, match=r"^images must have shape \(B, 3, H, W\), got \(4, 4, 32, 32\)$"):
        scorer.scores(torch.rand(4, 4, 32, 32), ["cat", "dog"])
