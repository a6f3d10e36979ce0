"""A training run's record, the ``config.json`` :func:`~kinetic_fm.models.train.train` writes into
its run folder: reading it, and telling another program's config.json and a damaged one apart.

Its own module under both readers: :mod:`~kinetic_fm.models.checkpoint` reads a run's recorded
sample shape from it and :mod:`~kinetic_fm.models.train` checks a folder before training there;
the file reader does not depend on the trainer.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from ..checks import shortened


class DamagedTrainConfigError(ValueError):
    """A training run's ``config.json`` is not one any more: one that looks written by
    :func:`~kinetic_fm.models.train.train` (see :func:`read_train_config`) but is no longer JSON, lacks
    some of the keys train writes, or holds a ``data_shape`` that is no shape (written atomically, it was
    damaged after the run: edited, or a copy cut short). The message names the file (or its folder) and
    what is wrong (``fault``, the words after "config.json", as :class:`~kinetic_fm.runs.manifest.DamagedManifestError`
    names its own); each reader adds its own way on."""

    def __init__(self, message: str, fault: str = "") -> None:
        super().__init__(message)
        self.fault = fault


# what every config.json train writes holds
TRAIN_CONFIG_KEYS = ("model", "train", "data_shape")

# how a config.json train wrote begins (json.dumps(..., indent=2) of {"model": {"kind": ...}, ...}), whatever
# the spacing: a copy cut short that starts so is a damaged training record, other text that is no JSON is not
_WRITTEN_START = re.compile(r'\s*\{\s*"model"\s*:\s*\{\s*"kind"\s*:')


def _written_by_train(body: dict[str, Any]) -> bool:
    """Whether the JSON object ``body`` holds what only train writes: a ``model`` naming its ``kind``, a
    ``train`` with ``steps`` and ``seed``, or a ``data_shape``. A model folder of another program (a
    Hugging Face config.json, {"model": {"name": ...}, "train": {"lr": ...}}) holds none of them."""
    model, settings = body.get("model"), body.get("train")
    return ((isinstance(model, dict) and "kind" in model)
            or (isinstance(settings, dict) and "steps" in settings and "seed" in settings)
            or "data_shape" in body)


def read_train_config(path: str | os.PathLike, keys: Sequence[str] = TRAIN_CONFIG_KEYS) -> dict[str, Any] | None:
    """The record ``path`` (a run folder's ``config.json``) holds when
    :func:`~kinetic_fm.models.train.train` wrote it. None when it is not a training run's: another
    program's (a Hugging Face model folder holds a config.json too) or damaged beyond recognition (an
    empty file, JSON that is no object, a JSON object holding nothing only train writes, UTF-16 or other
    bytes that are no JSON read as UTF-8). :class:`DamagedTrainConfigError` when it looks written by train
    (a ``model`` naming its ``kind``, a ``train`` with ``steps`` and ``seed``, a ``data_shape``, or for text
    that is no JSON, train's first words; bytes that are not UTF-8 read as U+FFFD) but is damaged: holds
    such a byte (train writes ASCII), is not JSON, lacks some of ``keys`` (those a training run's record
    must hold; a reader of ``data_shape`` alone gives ``("data_shape",)``), or holds a ``data_shape`` that
    is no shape.
    OSError (FileNotFoundError when absent) as reading raises it."""
    path = Path(path)

    def damaged(fault: str) -> DamagedTrainConfigError:
        return DamagedTrainConfigError(f"{path}: the training run's config.json {fault}", fault)

    raw = path.read_bytes()
    try:
        text, undecodable = raw.decode("utf-8"), None
    except UnicodeDecodeError as err:
        # train writes ASCII (json.dumps escapes the rest): read on with U+FFFD for the bad bytes, so that a record
        # of ours with a damaged byte is known by the rest of it; a UTF-16 file or binary is no JSON, nor begins so
        text, undecodable = raw.decode("utf-8", errors="replace"), err
    not_utf8 = None if undecodable is None else (
        f"holds a byte that is not UTF-8 (0x{raw[undecodable.start]:02x} at byte {undecodable.start}; train writes "
        "ASCII); was it edited or damaged?")
    try:
        body = json.loads(text)
    except ValueError as err:
        if _WRITTEN_START.match(text):
            raise damaged(not_utf8 or f"is not valid JSON ({err}); was it edited or cut short?") from None
        return None
    if not isinstance(body, dict) or not _written_by_train(body):
        return None
    if not_utf8:
        raise damaged(not_utf8)
    missing = [key for key in keys if key not in body]
    if missing:
        raise damaged(f"lacks {', '.join(map(repr, missing))}; was it edited?")
    shape = body.get("data_shape")
    if "data_shape" in body and not (isinstance(shape, list) and len(shape) > 1
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise damaged(f"records a data_shape that is no shape (a list of two or more sizes), got {short_json(shape)}; "
                      "was it edited?")
    return body


def short_json(value: Any, width: int = 80) -> str:
    """``value`` as JSON, cut to ``width`` characters for an error message."""
    return shortened(json.dumps(value), width)
