"""Semantic strength per sample: classifier margin/confidence and CLIP score/margin.

- Classifier margin: ``logit[c] − max_{j≠c} logit[j]`` with ``c`` the target class (or the
  predicted one), and the softmax probability of ``c`` as confidence.
- CLIP score: ``100 · cos(image embedding, prompt embedding)`` (not clipped at 0, so margins
  stay meaningful), with the prompt ``template.format(class name)``. CLIP margin: the score of
  the true-class prompt minus the best other class prompt's score. The model, tokenizer and
  image processor load from a LOCAL directory (``transformers``' ``save_pretrained`` layout);
  nothing is downloaded.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..checks import as_scalar, check_device, check_flag, is_real, positive_integer
from ..checks import caller_outside_the_package
from ..knn import refuse_nonfinite_rows
from ..result_repr import result_repr
from .features import as_tensor, feature_space

if TYPE_CHECKING:  # pragma: no cover - pandas is imported where a table is built
    import pandas as pd

__all__ = ["ClassifierMargin", "ClipScores", "CLIPScorer", "classifier_margin", "clip_scores",
           "load_clip", "margin_from_scores"]


def margin_from_scores(scores: Tensor, target: Any = None) -> tuple[Tensor, Tensor]:
    """``scores[i, c_i] − max_{j≠c_i} scores[i, j]`` and ``c_i`` (the target, or the argmax).

    Args:
        scores: (B, C) finite, with C >= 2. target: (B,) integer class indices (a tensor of any integer
            dtype on any device, an array or a sequence), or None.

    Returns:
        (B,) margins in the scores' dtype and (B,) int64 classes ``c_i``, on the scores' device.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"need (B, C) scores with C >= 2 classes, got shape {tuple(scores.shape)}")
    # a NaN score gave a NaN margin, or chose a NaN row's class, without a word
    refuse_nonfinite_rows(scores, "scores must be finite, got NaN or inf in rows")
    if target is not None:
        target = as_tensor(target).to(device=scores.device)
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
        if target.shape != (scores.shape[0],) or bool(((target < 0) | (target >= scores.shape[1])).any()):
            raise ValueError(f"target must be ({scores.shape[0]},) class indices in [0, {scores.shape[1] - 1}]")
        target = target.to(torch.int64)  # gather's index
    chosen = scores.argmax(dim=1) if target is None else target
    return _margin(scores, chosen), chosen


def _margin(scores: Tensor, chosen: Tensor) -> Tensor:
    """(B,) ``scores[i, chosen_i] − max_{j≠chosen_i} scores[i, j]`` of checked (B, C) ``scores`` and (B,) int64
    classes ``chosen`` (:func:`margin_from_scores` checks both)."""
    own = scores.gather(1, chosen[:, None]).squeeze(1)
    others = scores.scatter(1, chosen[:, None], -math.inf)
    return own - others.max(dim=1).values


def _targets(target: Any, b: int, n_classes: int, device: torch.device, name: str = "target") -> Tensor | None:
    """``target`` (None, one class index, or (b,) indices) as a (b,) int64 tensor on ``device``, its
    classes in [0, n_classes − 1]; ValueError naming the argument ``name`` otherwise."""
    if target is None:
        return None
    t = as_tensor(target).to(device=device)
    if t.ndim > 1:
        raise ValueError(f"{name} must be one class index or have shape ({b},), got shape {tuple(t.shape)}")
    t = t.reshape(-1)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() == 1 and b != 1:
        t = t.repeat(b)  # its own memory: an expanded (stride-0) view wrote every element at once
    if t.shape[0] != b:
        raise ValueError(f"{name} must be one class or one per sample ({b}), got {t.shape[0]}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"{name} must hold class indices in [0, {n_classes - 1}], got range "
                         f"[{int(t.min())}, {int(t.max())}]")
    return t


@dataclass(frozen=True)
class ClassifierMargin:
    """Per-sample classifier strength.

    Attributes:
        margin: (B,) float64, logit of the scored class minus the best other logit (> 0 means
            the scored class wins).
        confidence: (B,) float64, softmax probability of the scored class.
        predicted: (B,) int64 argmax class.
        target: (B,) int64 scored class when a target was given, else None (the predicted
            class was scored).
    """

    margin: Tensor
    confidence: Tensor
    predicted: Tensor
    target: Tensor | None

    __repr__ = result_repr  # shapes and dtypes, not every element

    def to_frame(self) -> "pd.DataFrame":
        """pandas DataFrame: ``classifier_margin``, ``classifier_confidence``, ``classifier_predicted``
        and, when a target was scored, ``classifier_target``."""
        import pandas as pd

        columns = {"classifier_margin": self.margin.cpu().numpy(),
                   "classifier_confidence": self.confidence.cpu().numpy(),
                   "classifier_predicted": self.predicted.cpu().numpy()}
        if self.target is not None:
            columns["classifier_target"] = self.target.cpu().numpy()
        return pd.DataFrame(columns)


def classifier_margin(classifier: Callable[[Tensor], Tensor], x: Any, target: Any = None,
                      batch_size: int = 256, *, device: torch.device | str | None = None
                      ) -> ClassifierMargin:
    """Margin and confidence of any classifier on samples ``x``.

    Args:
        classifier: nn.Module or callable mapping (b, ...) inputs to (b, C) logits (put modules
            in ``eval()`` first); run in chunks of ``batch_size`` under inference mode.
        x: (B, ...) inputs (a tensor, an array, or nested lists, which become float32), or a list
            or tuple of B tensors of one shape (...), stacked (other shapes are refused by name).
        target: None (score the predicted class), one class index for all, or (B,) indices
            (other shapes are refused, not flattened).
        batch_size: rows per classifier call, a positive integer.
        device: where the classifier runs; a module must already be there (inputs are moved
            chunk by chunk). None: the module's own device.

    Returns:
        :class:`ClassifierMargin`, its tensors on x's device (the CPU for an array or list).
        ValueError for an empty x, NaN or inf in x (naming its rows) or in the logits, or targets
        out of [0, C − 1]. A UserWarning when every row of the outputs lies in [0, 1] and sums to 1:
        probabilities, not logits.
    """
    if classifier is None or not callable(classifier):
        raise TypeError(f"classifier must be callable (an nn.Module or a function), got {type(classifier).__name__}")
    _check_batch_size(batch_size)
    # a nested list becomes a tensor of torch's default dtype (float32), as a network expects;
    # through NumPy it was float64 and failed inside the network with a dtype mismatch
    x = x if isinstance(x, (Tensor, np.ndarray)) else _stacked(x) if _holds_tensors(x) else torch.as_tensor(x)
    x = as_tensor(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"x must hold at least one sample, got shape {tuple(x.shape)}")
    # else blamed on the classifier: "classifier returned non-finite logits"
    refuse_nonfinite_rows(x, "x has non-finite values in rows")
    judge = feature_space(classifier, batch_size=batch_size, device=device)
    raw = judge.map(x, flatten=False)  # warned of a training-mode classifier, its buffers put back
    logits = raw.to(torch.float64)
    if logits.dim() > 2 and math.prod(logits.shape[2:]) == 1:   # a convolutional head's (b, C, 1, 1)
        logits = logits.reshape(logits.shape[:2])
    if logits.dim() != 2 or logits.shape[1] < 2:   # a (b, 2, 5) output was read as 10 classes
        single = logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)   # nn.Linear(d, 1)'s too
        hint = ("; a single-logit binary classifier z gives the logits torch.stack([-z / 2, z / 2], 1), "
                "whose softmax is sigmoid(z)" if single else "")
        raise ValueError(f"classifier must return (b, C) logits, got shape {tuple(logits.shape)}{hint}")
    # named as the classifier's, where margin_from_scores names its direct callers' scores
    refuse_nonfinite_rows(logits, "classifier returned non-finite logits in rows")
    if _probability_rows(logits, raw.dtype):
        warnings.warn(
            f"classifier_margin: every row of the classifier's {logits.shape[1]} outputs lies in [0, 1] and sums to 1: "
            "these look like probabilities (a net ending in softmax), not the logits the margin and confidence are "
            "defined on (a margin of probabilities lies in [-1, 1] and the confidence is a softmax taken twice); "
            "return the logits, before the softmax, or their logarithm (log-probabilities give the logits' "
            "margins: a per-row constant cancels)", UserWarning, stacklevel=caller_outside_the_package())
    t = _targets(target, logits.shape[0], logits.shape[1], logits.device)
    predicted = logits.argmax(dim=1)
    chosen = predicted if t is None else t
    confidence = torch.softmax(logits, dim=1).gather(1, chosen[:, None]).squeeze(1)
    return ClassifierMargin(_margin(logits, chosen), confidence, predicted, t)


def _holds_tensors(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and any(isinstance(item, Tensor) for item in x)


def _stacked(items: Sequence[Any]) -> Tensor:
    """A list or tuple of same-shape tensors on one device (a dataset's items) stacked into one
    (B, ...) batch; ValueError naming ``x`` and what it may be for items of different shapes or
    devices or that are not tensors (torch.as_tensor failed on them with "only one element tensors
    can be converted to Python scalars", torch.stack on two devices with its own device error)."""
    kind = "a list" if isinstance(items, list) else "a tuple"
    accepted = ("x may be one tensor, an array, nested lists of numbers, or a list or tuple of tensors of one shape "
                "on one device")
    for i, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise ValueError(f"x: {kind} of tensors must hold only tensors, got {type(item).__name__} at item {i}; "
                             f"{accepted}")
    first = items[0]
    for i, item in enumerate(items):
        if item.shape != first.shape:
            raise ValueError(f"x: {kind} of tensors must hold tensors of one shape, got {tuple(first.shape)} at item 0 "
                             f"and {tuple(item.shape)} at item {i}; pass (B, ...) items of one shape, or one tensor")
        if item.device != first.device:
            raise ValueError(f"x: {kind} of tensors must hold tensors on one device, got {first.device} at item 0 and "
                             f"{item.device} at item {i} (move them to one device: [t.to(device) for t in x]); "
                             f"{accepted}")
    return torch.stack(list(items))


def _probability_rows(scores: Tensor, dtype: torch.dtype) -> bool:
    """Whether every row of the (B, C) float64 ``scores`` (a classifier's outputs, made in ``dtype``)
    lies in [0, 1] and sums to 1 within a softmax's rounding: each probability rounded to ``dtype``
    (at most eps/2 of the sum) after a float32 sum of C terms; the measured worst of torch's softmax
    is under 0.4 of this bound, from C = 2 to 10,000, in float32, float16 and bfloat16. Genuine
    logits do that only by chance, a row at a time: a row sum within 7e-7 of 1 (C = 2, float32)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    tolerance = 2 * (eps + scores.shape[1] * torch.finfo(torch.float32).eps)
    return bool(((scores >= 0) & (scores <= 1)).all()) and bool(((scores.sum(dim=1) - 1).abs() <= tolerance).all())


@dataclass(frozen=True)
class ClipScores:
    """Per-sample CLIP scores.

    Attributes:
        score: (B,) float64, 100 · cos(image, prompt of the label) — or of the predicted class
            when no labels were given, or of the sample's own prompt in free-prompt mode.
        margin: (B,) float64, score minus the best other class prompt's score (None in
            free-prompt mode).
        predicted: (B,) int64 class with the highest score (None in free-prompt mode).
        class_scores: (B, C) float64 all class scores when requested, else None.
        template: prompt template used; model: the model directory's name.
    """

    score: Tensor
    margin: Tensor | None
    predicted: Tensor | None
    class_scores: Tensor | None
    template: str
    model: str

    __repr__ = result_repr  # shapes and dtypes, not every element

    def to_frame(self) -> "pd.DataFrame":
        """pandas DataFrame: ``clip_score`` (+ ``clip_margin``, ``clip_predicted`` when classes were used)."""
        import pandas as pd

        cols = {"clip_score": self.score.cpu().numpy()}
        if self.margin is not None:
            cols["clip_margin"] = self.margin.cpu().numpy()
            cols["clip_predicted"] = self.predicted.cpu().numpy()
        return pd.DataFrame(cols)


def _check_batch_size(batch_size: Any) -> None:
    positive_integer("batch_size", batch_size)


_OVERSHOOT = 0.1  # share of value_range's width that float images may exceed it by (then clipped)


def _value_range(value_range: Any) -> tuple[float, float]:
    """``value_range`` as two finite floats lo < hi; ValueError naming it otherwise ((0, 0)
    divided by zero, (1, 0) inverted the images, (0, nan) failed inside transformers)."""
    try:
        lo, hi = (as_scalar(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be two finite numbers (lo, hi) with lo < hi, got {value_range!r}") from None
    if not (is_real(lo, finite=True) and is_real(hi, finite=True) and lo < hi):
        raise ValueError(f"value_range must be two finite numbers (lo, hi) with lo < hi, got {value_range!r}")
    return float(lo), float(hi)


def _as_images(images: Any) -> Tensor:
    """(B, 3, H, W) images, B >= 1, real; integer images (any integer dtype) must lie in [0, 255]
    and come back as uint8."""
    x = as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3:
        grey = (": CLIP reads colour images; repeat a grey channel as three with images.expand(-1, 3, -1, -1)"
                if x.ndim == 4 and x.shape[1] == 1 else "")
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(x.shape)}{grey}")
    if x.shape[0] == 0:
        raise ValueError("images must hold at least one image, got 0")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"images must hold real numbers (float, or integers in [0, 255]), got dtype {x.dtype}")
    if not x.is_floating_point() and x.dtype != torch.uint8:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images are read as [0, 255], got values in [{lo}, {hi}]; "
                             "pass float images with value_range instead")
        x = x.to(torch.uint8)
    return x


def _pooled(out: Any) -> Tensor:
    # transformers < 5 returns the projected embedding; >= 5 returns an output whose
    # pooler_output holds it
    if isinstance(out, Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")
    return pooled


def _check_clip_folder(path: Path, nested_processor: bool = True) -> None:
    """Refuse a CLIP folder without the files of its tokenizer or image processor, naming them all.

    Without them transformers built an empty tokenizer (every prompt tokenized alike, so every margin
    read 0) or raised an OSError about huggingface.co. A tokenizer is ``tokenizer.json`` (the fast
    one's) or ``vocab.json`` with ``merges.txt`` (the BPE files either kind is built from); an image
    processor is ``preprocessor_config.json``, or ``processor_config.json`` holding one (transformers 5's
    ``CLIPProcessor.save_pretrained``) where ``nested_processor`` (an older transformers reads only the former)."""
    missing = []
    if not ((path / "tokenizer.json").is_file() or all((path / f).is_file() for f in ("vocab.json", "merges.txt"))):
        missing.append("its tokenizer: tokenizer.json, or vocab.json and merges.txt")
    if not ((path / "preprocessor_config.json").is_file()
            or nested_processor and _holds_image_processor(path / "processor_config.json")):
        missing.append("its image processor: preprocessor_config.json")
    if missing:
        raise FileNotFoundError(f"the CLIP folder {str(path)!r} lacks {'; and '.join(missing)} (save_pretrained of "
                                "the tokenizer and the image processor, or of a CLIPProcessor holding both, writes "
                                "them; nothing is downloaded)")


def _transformers_major() -> int:
    from importlib.metadata import version

    return int(version("transformers").split(".")[0])


def _holds_image_processor(config: Path) -> bool:
    if not config.is_file():
        return False
    try:
        return isinstance(json.loads(config.read_text()).get("image_processor"), dict)
    except (ValueError, AttributeError, OSError):  # not JSON, or not an object: transformers cannot read it either
        return False


class CLIPScorer:
    """A CLIP model, tokenizer and image processor loaded from a local directory.

    Args:
        model_dir: folder written by ``save_pretrained`` holding the model (``config.json`` +
            weights), the tokenizer (``tokenizer.json``, or ``vocab.json`` and ``merges.txt``) and the
            image processor (``preprocessor_config.json``); FileNotFoundError naming what it lacks,
            before anything is loaded.
        device: where the model runs (default CPU).

    Reproducibility: the model runs in float32, and its scores (100 · cos) move in the last digits
    with how it is run, found by today's review of the metrics (helpers 187 and 193):

    - batch size: about 4e-6 between ``batch_size`` values on one device. A float32 GEMM or
      convolution picks its blocking, and so its order of summation, from the batch's shape, so
      an image's embedding rounds differently beside other images (float32 u = 6e-8 per
      operation, accumulated through the towers' layers).
    - device: about 2e-3 between the CPU and a CUDA GPU whose float32 matrix products run in TF32
      (``torch.backends.cuda.matmul.allow_tf32``, see
      :func:`~kinetic_fm.metrics.neighbors.cuda_matmul_uses_tf32`): TF32 keeps 10 mantissa bits,
      u = 4.9e-4 instead of 6e-8. With TF32 off the difference falls to that of the kernels'
      float32 rounding.

    Compare scores made with one device, TF32 setting and batch size; differences below these
    figures are not signal.
    """

    def __init__(self, model_dir: str | Path, *, device: torch.device | str | None = None) -> None:
        self.device = check_device(device) or torch.device("cpu")
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP model at {path} (expected a local save_pretrained "
                                    "folder with config.json; nothing is downloaded)")
        from ..optional import optional_names

        # the package first: without it the folder's files are moot, and its install is the first thing to do
        AutoImageProcessor, AutoTokenizer, CLIPModel = optional_names(
            "transformers", "CLIPScorer", "AutoImageProcessor", "AutoTokenizer", "CLIPModel")
        _check_clip_folder(path, nested_processor=_transformers_major() >= 5)
        self.name = path.name
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str], batch_size: int = 256) -> Tensor:
        """(P, E) float64 unit-norm embeddings of the P >= 1 ``prompts`` (a sequence of strings;
        a single string is refused, it was embedded character by character), ``batch_size`` at a time."""
        prompts = _ordered("prompts", prompts)
        _check_batch_size(batch_size)
        if len(prompts) == 0:
            raise ValueError("prompts must hold at least one prompt, got none")
        out = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(list(prompts[start:start + batch_size]), padding=True,
                                    truncation=True, max_length=self.max_length, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            out.append(_pooled(self.model.get_text_features(**tokens)).to(torch.float64))
        return torch.nn.functional.normalize(torch.cat(out), dim=1)

    @torch.inference_mode()
    def image_embeddings(self, images: Any, batch_size: int = 64,
                         value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
        """(B, E) float64 unit-norm embeddings of images (B, 3, H, W).

        Float images are mapped from ``value_range`` (two finite numbers lo < hi) to [0, 1]:
        overshoots of up to a tenth of the range, common in generated samples, are clipped, and
        images reaching further out are refused (the wrong range: [-1, 1] images read as [0, 1]
        lose every dark pixel); then rounded to 8 bits, so a float image scores as the uint8
        image it equals. Integer images of any integer dtype are taken as [0, 255]
        (values outside it are refused; ``value_range`` does not apply to them). Resizing,
        cropping and normalisation are the saved image processor's.
        """
        _check_batch_size(batch_size)
        lo, hi = _value_range(value_range)
        x = _as_images(images)
        uint8 = x.dtype == torch.uint8
        if not uint8:
            refuse_nonfinite_rows(x, "images have non-finite values in rows")
            found = tuple(float(v) for v in torch.aminmax(x))  # mapped in Python floats: an overshoot
            low, high = ((v - lo) / (hi - lo) for v in found)    # of exactly a tenth stays one
            if low < -_OVERSHOOT or high > 1.0 + _OVERSHOOT:
                hint = " (images in [-1, 1], as kinetic_fm's loaders give: pass value_range=(-1, 1))" if found[0] < 0 <= lo else ""
                raise ValueError(f"images span [{found[0]:.3g}, {found[1]:.3g}], beyond value_range=({lo:g}, {hi:g}) "
                                 f"by more than a tenth of its width{hint}")
            # rounded to 8 bits here, as the uint8 path: the processor's own float-to-PIL step
            # truncates (a fifth of the pixels one level darker than the uint8 image they equal);
            # mapped in float64 chunk by chunk (a whole float64 copy doubled the images' memory)
            step = max(1, batch_size)
            x, uint8 = torch.cat([((x[i:i + step].double() - lo) / (hi - lo)).clamp(0.0, 1.0).mul(255).round()
                                  .to(torch.uint8) for i in range(0, x.shape[0], step)]), True
        out = []
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start:start + batch_size].cpu()
            pixels = self.processor(images=list(chunk), return_tensors="pt",
                                    do_rescale=uint8)["pixel_values"]
            feats = self.model.get_image_features(pixel_values=pixels.to(self.device))
            out.append(_pooled(feats).to(torch.float64))
        return torch.nn.functional.normalize(torch.cat(out), dim=1).to(x.device)

    def scores(self, images: Any, class_names: Sequence[str] | None = None, labels: Any = None, *,
               prompts: Sequence[str] | None = None, template: str = "a photo of a {}",
               batch_size: int = 64, value_range: tuple[float, float] = (0.0, 1.0),
               return_class_scores: bool = False) -> ClipScores:
        """See :func:`clip_scores`."""
        if (class_names is None) == (prompts is None):
            raise ValueError("give exactly one of class_names (class prompts from the template) "
                             "or prompts (one free prompt per image)")
        if labels is not None and prompts is not None:
            raise ValueError("labels choose among class_names; with prompts give no labels")
        return_class_scores = check_flag("return_class_scores", return_class_scores)
        # every argument is checked before the (costly) image embeddings
        _check_batch_size(batch_size)
        _value_range(value_range)
        n_images = _as_images(images).shape[0]
        if prompts is not None:
            prompts = prompts if isinstance(prompts, str) else _ordered("prompts", prompts)
            if isinstance(prompts, str) or len(prompts) != n_images:
                got = repr(prompts) if isinstance(prompts, str) else len(prompts)
                raise ValueError(f"prompts must hold one prompt per image ({n_images}), got {got}")
            img = self.image_embeddings(images, batch_size, value_range)
            txt = self.text_embeddings(prompts).to(img.device)
            return ClipScores(100.0 * (img * txt).sum(1), None, None, None, "{}", self.name)
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"template must be a string containing '{{}}' for the class name, got {template!r}")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"template must have exactly one '{{}}' slot (no other fields), got {template!r}") from None
        if isinstance(class_names, str):
            raise TypeError(f"class_names must be a sequence of names, got the string {class_names!r}")
        class_names = _ordered("class_names", class_names)
        if len(class_names) < 2:
            raise ValueError(f"a CLIP margin needs at least 2 class names, got {len(class_names)}")
        t = _targets(labels, n_images, len(class_names), torch.device("cpu"), name="labels")
        class_prompts = [template.format(c) for c in class_names]
        # the model's inputs, not the strings, decide repeats: the tokenizer lower-cases and collapses
        # white space ("Cat" and "cat " are "cat"), and truncates past the text tower's length
        token_ids = [tuple(ids) for ids in self.tokenizer(class_prompts, truncation=True,
                                                          max_length=self.max_length)["input_ids"]]
        _warn_of_repeated_classes(class_names, token_ids)
        txt = self.text_embeddings(class_prompts)
        if len(set(token_ids)) > 1 and bool((txt == txt[:1]).all()):
            raise ValueError(f"the text tower of {self.name} gives one embedding for every class prompt, so "
                             "every margin would be 0: its tokenizer and model do not match (token ids outside "
                             "the model's vocabulary, or a vocabulary that cannot spell the class names)")
        img = self.image_embeddings(images, batch_size, value_range)
        txt = txt.to(img.device)
        per_class = 100.0 * img @ txt.T
        if t is not None:
            t = t.to(per_class.device)
        margin, chosen = margin_from_scores(per_class, t)
        score = per_class.gather(1, chosen[:, None]).squeeze(1)
        return ClipScores(score, margin, per_class.argmax(dim=1),
                          per_class if return_class_scores else None, template, self.name)


def _ordered(name: str, items: Any) -> list:
    """``items`` (a list, tuple, array, generator or any iterable) as a list in its order; a string
    (one prompt, not a sequence of them) or a set (iterated in its strings' hash order, another in
    every interpreter: labels and images were paired with them at random) is a TypeError naming ``name``."""
    if isinstance(items, str):
        raise TypeError(f"{name} must be a sequence of strings, got the string {items!r}; pass [{name[:-1]}] for one")
    if isinstance(items, (set, frozenset)):
        raise TypeError(f"{name} must be an ordered sequence (a list or tuple) whose positions are paired with the "
                        f"labels or images, got a {type(items).__name__}; pass a list")
    return list(items)


def _warn_of_repeated_classes(class_names: Sequence[Any], token_ids: Sequence[tuple[int, ...]]) -> None:
    """A UserWarning naming the class names whose prompts tokenize alike: one text embedding, so each
    copy is the best other class of the other and the margin of an image whose true (or best) class is
    repeated is 0 at most."""
    where: dict[tuple[int, ...], list[int]] = {}
    for i, ids in enumerate(token_ids):
        where.setdefault(ids, []).append(i)
    repeats = [at for at in where.values() if len(at) > 1]
    if repeats:
        named = "; ".join(f"{str(class_names[at[0]])!r} (at {', '.join(map(str, at))})" for at in repeats)
        warnings.warn(f"class_names repeat {named}: their prompts tokenize alike (one text embedding), so the CLIP "
                      "margin of an image whose true or best class is repeated is at most 0 (the copy is the best "
                      "other class); pass each class once", UserWarning, stacklevel=caller_outside_the_package())


def load_clip(model_dir: str | Path, *, device: torch.device | str | None = None) -> CLIPScorer:
    """Load a :class:`CLIPScorer` from a local ``save_pretrained`` directory."""
    return CLIPScorer(model_dir, device=device)


def clip_scores(images: Any, class_names: Sequence[str] | None = None, labels: Any = None, *,
                model: str | Path | CLIPScorer, prompts: Sequence[str] | None = None,
                template: str = "a photo of a {}", batch_size: int = 64,
                value_range: tuple[float, float] = (0.0, 1.0), return_class_scores: bool = False,
                device: torch.device | str | None = None) -> ClipScores:
    """CLIP score and margin per image.

    Args:
        images: (B, 3, H, W) float in ``value_range`` (default [0, 1]: pass (-1, 1) for
            kinetic_fm's images; values beyond the range by more than a tenth of its width are
            refused, smaller overshoots clipped), or integers (any integer dtype) in [0, 255];
            integer values outside [0, 255] are refused.
        class_names: C >= 2 class names in the order ``labels`` index them (a list, tuple, array or
            any iterable in its order; a set, which has none, is refused); each becomes
            ``template.format(name)``.
        labels: None (score the best-matching class; margin = best − second best), one class
            index, or (B,) indices of each image's true class.
        model: a local CLIP directory or an already loaded :class:`CLIPScorer` (reuse it across
            calls: loading costs more than scoring a small batch).
        prompts: instead of classes, one free prompt per image (text-to-image); score only.
        template: prompt template with one ``{}``.
        batch_size: images per model call, a positive integer.
        value_range: (lo, hi), two finite numbers with lo < hi, the range of float images.
        return_class_scores: keep the (B, C) matrix of class scores (True or False).
        device: where a model loaded from a directory runs (None: the CPU); a given
            :class:`CLIPScorer` keeps its own.

    Returns:
        :class:`ClipScores` (float64, on the images' device).
    """
    if not isinstance(model, (CLIPScorer, str, Path)):
        raise TypeError(f"model must be a local CLIP directory (str or Path) or a CLIPScorer, got {type(model).__name__}")
    scorer = model if isinstance(model, CLIPScorer) else load_clip(model, device=device)
    return scorer.scores(images, class_names, labels, prompts=prompts, template=template,
                         batch_size=batch_size, value_range=value_range,
                         return_class_scores=return_class_scores)
