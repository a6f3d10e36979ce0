"""A training run's record, the ``config.json`` :func:`~kinetic_fm.models.train.train` writes into
its run folder: reading it, and telling another program's config.json and a damaged one apart.

Its own module under both readers: :mod:`~kinetic_fm.models.checkpoint` reads a run's recorded
sample shape from it and :mod:`~kinetic_fm.models.train` checks a folder before training there;
the file reader does not depend on the trainer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence


class DamagedTrainConfigError(ValueError):
    """A training run's ``config.json`` is not one any more: not UTF-8 JSON, not a JSON object, or
    an object holding some of the keys :func:`~kinetic_fm.models.train.train` writes but not all, or
    a ``data_shape`` that is no shape (written atomically, it was damaged after the run: edited, or
    a copy cut short). The message names the file and what is wrong; each reader adds its own way on."""


# what every config.json train writes holds; an object with none of them is another program's
TRAIN_CONFIG_KEYS = ("model", "train", "data_shape")


def read_train_config(path: str | os.PathLike, keys: Sequence[str] = TRAIN_CONFIG_KEYS) -> dict[str, Any] | None:
    """The record ``path`` (a run folder's ``config.json``) holds when
    :func:`~kinetic_fm.models.train.train` wrote it; None when it is another program's (a JSON object
    holding none of :data:`TRAIN_CONFIG_KEYS`: a Hugging Face model folder holds a config.json too);
    :class:`DamagedTrainConfigError` when it is damaged (see there); ``keys`` as in
    :func:`train_config_from_text`. OSError (FileNotFoundError when absent) as reading raises it."""
    path = Path(path)
    try:
        return train_config_from_text(path.read_text(encoding="utf-8"), path, keys)
    except UnicodeDecodeError as err:
        raise DamagedTrainConfigError(f"{path}: the training run's config.json is not UTF-8 text ({err}); was "
                                      "it edited or cut short?") from None


def train_config_from_text(text: str, path: str | os.PathLike,
                           keys: Sequence[str] = TRAIN_CONFIG_KEYS) -> dict[str, Any] | None:
    """:func:`read_train_config` on ``text``, the contents of the config.json at ``path`` (named in
    the error). ``keys``: those a training run's record must hold (a reader of ``data_shape`` alone
    gives ``("data_shape",)``); an object holding none of them is another program's (None)."""
    def damaged(what: str) -> DamagedTrainConfigError:
        return DamagedTrainConfigError(f"{path}: the training run's config.json {what}")

    try:
        body = json.loads(text)
    except ValueError as err:
        raise damaged(f"is not valid JSON ({err}); was it edited or cut short?") from None
    if not isinstance(body, dict):
        raise damaged(f"must be a JSON object, got {type(body).__name__}; was it edited?")
    missing = [key for key in keys if key not in body]
    if len(missing) == len(keys):
        return None
    if missing:
        raise damaged(f"lacks {', '.join(map(repr, missing))}; was it edited?")
    shape = body.get("data_shape")
    if "data_shape" in body and not (isinstance(shape, list) and len(shape) > 1
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise damaged(f"records a data_shape that is no shape (a list of two or more sizes), got {_short(shape)}; "
                      "was it edited?")
    return body


def _short(value: Any, width: int = 80) -> str:
    """``value`` as JSON, cut to ``width`` characters for an error message."""
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"
