"""Conditional flow-matching training with EMA, log-spaced checkpoints and exact resume.

Objective (t = 0 noise, t = 1 data): x0 ~ N(0, I), x1 ~ data, t ~ U[0, 1],
x_t = (1 − t)·x0 + t·x1, loss = mean ‖v(x_t, t) − (x1 − x0)‖² over all coordinates.

Determinism: every random draw comes from two generators seeded by ``TrainConfig.seed`` (one
for the data order, one for noise/times/label dropout) plus the global RNGs (dropout). All of
them, the optimizer, the EMA and the loss history are saved in ``resume.pt`` every
``save_every`` steps, so a run that is killed and resumed ends with bit-identical weights; Ctrl-C
and SIGTERM wait for the step under way to end and write its resume state, so they lose no step.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import check_flag, check_integer, check_real, check_seed, torch_readable
from ..run_files import MANIFEST_NAME, TRAIN_CONFIG_NAME
from ..runs.atomic import (atomic_write_text, foreign_entries, holds_only_leftovers, is_leftover, named_few,
                           remove_temporaries)
from ..runs.lock import RunLock
from .checkpoint import FROM_STEP_0, UnsafeCheckpointError, load_state, save_model, save_state, save_weights
from .run_config import DamagedTrainConfigError, read_train_config, short_json

RESUME_FILE = "resume.pt"
# load_resume_state's stacklevel from the lambda that train() and train_classifier() hand SignalsAtStepEnd.load:
# the lambda, load, the _train function, its torch.enable_grad wrapper, then train() and its caller
RESUME_STACKLEVEL = 6
# config.json's (and resume.pt's) record of the values trained on; runs from before it have none
DATA_DIGEST = "data_sha256"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
        steps: optimizer steps in total.
        batch_size: samples per step (drawn with replacement).
        lr: AdamW learning rate, after ``warmup`` linear warm-up steps.
        weight_decay, betas: AdamW settings.
        ema_decay: EMA decay; the effective decay min(decay, (1 + s)/(10 + s)) ramps up early.
        grad_clip: max global gradient norm, or None.
        label_dropout: probability of replacing a label by the null class (classifier-free
            guidance); used only for class-conditional models trained with labels (the run folder of
            another model records 0).
        seed: seeds everything.
        checkpoints: "log2" (steps 1, 2, 4, ... and the last), "none", or explicit steps.
        save_every: steps between resume states (the work since the last one is redone on resume).
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0
    label_dropout: float = 0.1
    seed: int = 0
    checkpoints: str | tuple[int, ...] = "log2"
    save_every: int = 100

    def __post_init__(self) -> None:
        # plain ints: a float step count breaks the loop late, and a NumPy one config.json
        for name, low in (("steps", 1), ("batch_size", 1), ("save_every", 1), ("warmup", 0)):
            object.__setattr__(self, name, check_integer(name, getattr(self, name), low))
        # what kfm train --seed takes; 2**64 and beyond failed inside the run folder's lock
        object.__setattr__(self, "seed", check_seed("seed", self.seed))
        try:
            betas = tuple(self.betas)
        except TypeError:  # one number
            betas = ()
        if len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1) (AdamW's), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(check_real(f"betas[{i}]", b, 0.0, 1.0, "in [0, 1)")
                                                for i, b in enumerate(betas)))
        # plain floats too (a NumPy float32 lr stopped config.json being written), each in its range
        for name, low, high, what in (
                ("lr", 0.0, math.inf, "a finite number > 0"), ("weight_decay", 0.0, math.inf, "a finite number >= 0"),
                ("ema_decay", 0.0, 1.0, "in [0, 1)"), ("label_dropout", 0.0, 1.0, "in [0, 1)")):
            object.__setattr__(self, name, check_real(name, getattr(self, name), low, high, what, open_low=name == "lr"))
        # AdamW hands its step, lr / (1 - β1^k) (largest at k = 1), to the weights as a float: beyond float32's
        # largest number the first step failed ("cannot be converted to type float without overflow")
        largest, beta1 = float(torch.finfo(torch.float32).max), self.betas[0]
        if self.lr / (1 - beta1) > largest:
            raise ValueError(f"lr must be a finite number in (0, {largest * (1 - beta1):.3g}], got {self.lr!r}: "
                             f"AdamW's first step, lr / (1 - β1) with β1 = {beta1}, must not exceed float32's "
                             f"largest number, {largest:.3g}")
        # AdamW's decoupled decay multiplies the weights by 1 - lr·weight_decay at each step (at full lr); at 1 or
        # more it zeroes them or flips their sign. Runs went through so, and may go on: a warning, not a refusal
        product = self.lr * self.weight_decay
        if product >= 1:
            warnings.warn(f"lr = {self.lr!r} and weight_decay = {self.weight_decay!r} multiply to {product:.3g} >= 1: "
                          f"AdamW's decoupled weight decay multiplies the weights by 1 - {product:.3g} = "
                          f"{1 - product:.3g} at each step at this lr, which zeroes them or flips their sign; training "
                          f"goes on, but weight decay is meant to shrink them a little (a product well below 1)",
                          UserWarning, stacklevel=3)
        if self.grad_clip is not None:
            object.__setattr__(self, "grad_clip", check_real("grad_clip", self.grad_clip, 0.0, math.inf,
                                                             "None or a finite number > 0", open_low=True))
        if isinstance(self.checkpoints, str):
            if self.checkpoints not in ("log2", "none"):
                raise ValueError(f"checkpoints must be 'log2', 'none' or a list of steps, got {self.checkpoints!r}")
        else:  # checked here, not when the run folder already exists
            object.__setattr__(self, "checkpoints", tuple(
                check_integer(f"checkpoints[{i}]", step, 1, self.steps, note="steps of this training")
                for i, step in enumerate(self.checkpoints)))


def checkpoint_steps(total: int, spec: str | Sequence[int] = "log2") -> list[int]:
    """Steps after which a checkpoint is written: "log2" gives 1, 2, 4, ..., plus ``total``."""
    if spec == "none":
        return []
    total = check_integer("total", total, 1)  # NumPy and 0-d tensor counts too, as a Python int
    if spec == "log2":  # bit_length: log2 of 2**49 − 1 rounds up to 49 in floating point
        steps = {2 ** k for k in range(total.bit_length())} | {total}
    else:
        steps = {int(s) for s in spec}
        if any(s < 1 or s > total for s in steps):
            raise ValueError(f"checkpoint steps must be in [1, {total}], got {sorted(steps)}")
    return sorted(steps)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained net (raw weights, eval mode).
        ema: the EMA copy (eval mode), the one to sample from.
        losses: (steps,) float32 loss of every step.
        checkpoints: step -> path of the run's checkpoints in ``out/checkpoints``, those an
            earlier leg of a resumed run wrote included (empty without ``out``).
        out: the run folder, or None.
        resumed_from: the step a resumed run started from (0 for a fresh run).
    """

    model: nn.Module
    ema: nn.Module
    losses: Tensor
    checkpoints: dict[int, Path] = field(default_factory=dict)
    out: Path | None = None
    resumed_from: int = 0


def _rng_state(generators: dict[str, torch.Generator], device: torch.device, *,
               global_rngs: bool = True) -> dict[str, Any]:
    """The states of ``generators`` (by name) and, with ``global_rngs``, of torch's, NumPy's and
    Python's global generators (and ``device``'s, on a GPU)."""
    named = {name: g.get_state() for name, g in generators.items()}
    if not global_rngs:
        return named
    np_state = np.random.get_state()
    py_state = random.getstate()
    # a net on a GPU draws its dropout from that device's default generator, not the CPU's
    cuda = {"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
    return {
        "torch": torch.get_rng_state(),
        **cuda,
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
        **named,
    }


def _set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator], device: torch.device) -> None:
    """Restore what :func:`_rng_state` saved: the global generators only when it saved them."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
        if device.type == "cuda" and "cuda" in state:  # a resume.pt from before this was saved has none
            torch.cuda.set_rng_state(state["cuda"], device)
        np_s = state["numpy"]
        np.random.set_state(("MT19937", np_s["key"].numpy().astype(np.uint32), np_s["pos"], np_s["has_gauss"],
                             np_s["cached"]))
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    for name, g in generators.items():
        g.set_state(state[name])


def save_resume_state(path: Path, step: int, parts: dict[str, Any], losses: Tensor,
                      generators: dict[str, torch.Generator], device: torch.device, run_config: dict[str, Any],
                      *, global_rngs: bool = True) -> None:
    """Write a training loop's ``resume.pt`` atomically: the step, the ``state_dict()`` of every
    part (net, EMA, optimizer, scheduler: name -> object), the (step,) losses so far, the random
    generators' states (see :func:`_rng_state`) and the settings, ``run_config``, as JSON."""
    save_state({
        "step": step, **{name: part.state_dict() for name, part in parts.items()},
        "losses": losses[:step].clone(), "rng": _rng_state(generators, device, global_rngs=global_rngs),
        "config": json.dumps(run_config),
    }, path)


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """``path``'s (device, inode, modification time in ns), None where it does not exist: it changes once
    ``os.replace`` puts another file there (that file existed beside the old one, so its inode differs)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, info.st_mtime_ns


class ResumeSettingsError(ValueError):
    """A resume refused because the run's settings or data differ from the saved ones: the message, and
    what a command needs to say it in its own words.

    Attributes:
        path: the resume state compared.
        differ: each record that differs, by its name in the run's record ("train.lr", "model",
            "data_shape", "info") -> (saved, now).
        data: the refusal of other data (of the same shape, or another dtype) than the run's, or "".
    """

    def __init__(self, path: Path, differ: dict[str, tuple[Any, Any]], data: str) -> None:
        values = "; ".join(f"{k}: saved {short_json(old)}, now {short_json(new)}" for k, (old, new) in differ.items())
        settings = f"settings differ from the saved run ({', '.join(differ)}): {values}" if differ else ""
        super().__init__(f"cannot resume {path}: " + "; and ".join(part for part in (settings, data) if part))
        self.path, self.differ, self.data = path, differ, data

    def __reduce__(self):  # the differences survive pickling (ValueError's would call __init__ with the message alone)
        return type(self), (self.path, self.differ, self.data)


def load_resume_state(path: Path, steps: int, parts: dict[str, Any], losses: Tensor,
                      generators: dict[str, torch.Generator], device: torch.device, run_config: dict[str, Any],
                      *, free: tuple[str, ...] = ("steps",), optional: tuple[str, ...] = (),
                      stacklevel: int = 2) -> int:
    """Restore what :func:`save_resume_state` wrote into ``parts``, ``losses`` and ``generators``
    (and the global generators, when it saved them); returns the step to continue from.

    The saved ``run_config`` must equal this one, except the ``train`` settings named in ``free``, and
    ``label_dropout`` where either side recorded no labels (that side drops none); ValueError names
    every difference. ``steps`` (this run's total) must not be below the saved step. A key of
    ``run_config`` named in ``optional`` that the saved config lacks (a state written before it was
    recorded) is not compared and is removed from ``run_config``, so the run goes on recording what it
    did; :data:`DATA_DIGEST` differing alone (the same shape) is refused as other data (the labels
    compared only where both sides recorded some: one side's alone is a net with classes and one
    without, its record named), and so is data recorded in another dtype than the run's (sha256s of two
    dtypes do not compare) where the nets' dtypes agree (:func:`train` records its data in the net's
    dtype, so only ``train_classifier``'s images, recorded as given, can differ so). Resuming a CPU
    state on a GPU, or the reverse, warns: the result is then not bit-identical (``stacklevel`` points
    the warning at the caller)."""
    try:
        state = load_state(path, holds="state")
    except UnsafeCheckpointError:  # a format or contents torch does not read, not damage: it names the way out
        raise
    except ValueError as err:  # it said what is wrong, not how to go on (helper-188)
        raise ValueError(f"{err}; a resume state is written whole or not at all, so it was damaged after its run: "
                         f"{FROM_STEP_0}") from None
    saved = json.loads(state["config"])
    saved_digest, digest = saved.get(DATA_DIGEST), run_config.get(DATA_DIGEST)
    # a side trained without labels (its record's labels None) drops none: its label_dropout is 0 whatever the
    # other side's, and its labels do not compare with the other's: a change the net's classes make (its record
    # differs, named), neither a rate nor other data to name
    unlabelled = any(isinstance(side, dict) and side.get("labels") is None for side in (saved_digest, digest))
    if unlabelled:
        free = (*free, "label_dropout")
    for key in optional:
        if key not in saved:
            run_config.pop(key, None)
    differ = {k: (saved.get(k), run_config[k]) for k in run_config
              if k not in ("train", DATA_DIGEST) and saved.get(k) != run_config[k]}
    differ |= {f"train.{k}": (saved["train"][k], run_config["train"].get(k)) for k in saved["train"]
               if k not in free and saved["train"][k] != run_config["train"].get(k)}
    # other values of the same shape and dtype (a shape difference is named above, a net's dtype below); a
    # saved record without a digest (optional) is not compared
    compared = digest is not None and "data_shape" not in differ and isinstance(saved_digest, dict)
    if compared and unlabelled:
        saved_digest, digest = ({k: v for k, v in side.items() if k != "labels"} for side in (saved_digest, digest))
    other_data = compared and saved_digest != digest and saved_digest.get("dtype") == digest["dtype"]
    # load_state_dict would round the saved weights (and the optimizer its moments) into another
    # dtype without a word: the run would end neither the saved dtype's nor this one's
    other_nets = {}
    for name, part in parts.items():
        if isinstance(part, nn.Module):
            saved_dtypes, dtypes = (sorted({str(v.dtype) for v in sd.values() if v.is_floating_point()})
                                    for sd in (state[name], part.state_dict()))
            if saved_dtypes != dtypes:
                other_nets[name] = (saved_dtypes, dtypes)
    # data in another dtype than the run's whose net kept its dtype (train_classifier records its images
    # as given): sha256s of two dtypes do not compare, and such a resume went on unchecked
    other_dtype = compared and saved_digest.get("dtype") != digest["dtype"] and not other_nets
    if differ or other_data or other_dtype:
        # one way on for both where settings differ too: the data's alone led to a second refusal, for the settings
        resume_with = "resume with the run's settings and the data" if differ else "resume with the data"
        data = _other_data(saved_digest, digest, run_config["data_shape"], resume_with) if other_data else ""
        if other_dtype:
            data = (f"the data are {digest['dtype']}, the run trained on {saved_digest.get('dtype')} (values of two "
                    f"dtypes do not compare by sha256): {resume_with} it trained on, in its dtype "
                    f"(.to(torch.{saved_digest.get('dtype')})), or train a new run in another folder")
        raise ResumeSettingsError(path, differ, data)
    start = int(state["step"])
    if start > steps:
        raise ValueError(f"cannot resume {path}: it is at step {start}, beyond steps={steps}")
    if other_nets:  # the first part whose dtype differs
        name, (saved_dtypes, dtypes) = next(iter(other_nets.items()))
        raise ValueError(f"cannot resume {path}: the run's {'net' if name == 'model' else name} is "
                         f"{', '.join(saved_dtypes)}, this one {', '.join(dtypes)}; build it in the "
                         "run's dtype (or start a new run)")
    for name, part in parts.items():
        part.load_state_dict(state[name])
    losses[:start] = state["losses"][:start]
    if "torch" in state["rng"] and ("cuda" in state["rng"]) != (device.type == "cuda"):
        saved_on = "a CUDA device" if "cuda" in state["rng"] else "the CPU"
        warnings.warn(f"resuming {path} on {device}, saved on {saved_on}: training goes on, but "
                      "the result will not be bit-identical to an uninterrupted run on either",
                      stacklevel=stacklevel + 1)
    _set_rng_state(state["rng"], generators, device)
    return start


def _other_data(saved: dict[str, Any], now: dict[str, Any], shape: list[int], resume_with: str) -> str:
    """The refusal of a resume given other data (or labels) of the run's shape: what differs, by
    sha256, and what to do (``resume_with``: "resume with the data", and the run's settings where they
    differ too). ``saved`` and ``now`` are :func:`data_digest` records whose differing values are
    sha256s (:func:`load_resume_state` leaves out labels one side lacks)."""
    what = [f"{name} (sha256 {saved[name][:12]}… saved, {now[name][:12]}… now)" for name in ("data", "labels")
            if saved.get(name) != now.get(name)]
    return (f"the {' and '.join(what)} differ from those the run trained on (of the same shape {shape}): "
            f"{resume_with} it trained on (kfm train: the same --data, --n and --seed, over the same files; a "
            "folder whose images were added, removed or replaced since draws other items) or train a new run in "
            "another folder")


def data_digest(data: Tensor, labels: Tensor | None) -> dict[str, Any]:
    """What a training run records of the values it trains on, as :data:`DATA_DIGEST`: the sha256
    of ``data`` (N, ...) as the net trains on it (in its dtype, also recorded) and of ``labels``
    (N,) int64 (None without); see :func:`kinetic_fm.data.digest.tensor_sha256` (about 0.4 s for
    CIFAR-10's 614 MB)."""
    from ..data.digest import tensor_sha256

    return {"data": tensor_sha256(data), "dtype": str(data.dtype).removeprefix("torch."),
            "labels": None if labels is None else tensor_sha256(labels)}


def check_train_dir(out: str | Path, *, resume: bool) -> dict[str, Any] | None:
    """The record of the training ``config.json`` it read (where no resume.pt stands beside one), else None;
    ValueError when ``out`` already holds a training run and ``resume`` is False (its files
    would be overwritten). A folder holding a training ``config.json`` alone holds no step (a run
    that failed or was stopped before its first save), so a new run may start there, as a resume
    would; another program's config.json (no resume.pt beside it) is refused as that program's
    file, with ``resume`` too (a folder named config.json as well), a damaged one
    (:class:`DamagedTrainConfigError`) naming what is wrong and how to go on, and one that cannot be read
    (a permission, an I/O error: a training run's it may be) as unreadable, naming the error. Beside a
    resume.pt a config.json is not read: resume.pt records the settings a resume compares, and the
    resume writes config.json again. :func:`train` checks it under the folder's lock; ``kfm train``
    calls it before the data loads. A ``kfm sample`` run folder (its ``manifest.json``) is refused,
    with ``resume`` too: training wrote its files among the run's shards. So is a folder holding none
    of a run's files (config.json, resume.pt, final.safetensors, checkpoints/) but others (a user's
    images): our own leftovers, the lock file, a killed writer's temporaries and a ``checkpoints/``
    holding nothing else, count as no run."""
    out = Path(out)
    if (out / MANIFEST_NAME).exists():
        raise ValueError(f"{out} holds a kfm sample run ({MANIFEST_NAME}), not a training run; choose another folder")
    config = out / TRAIN_CONFIG_NAME
    record = None
    if config.exists() and not (out / RESUME_FILE).exists():
        try:  # a folder named config.json is not a run's (opening it raises PermissionError on Windows)
            record = None if config.is_dir() else read_train_config(config)
        except DamagedTrainConfigError as err:
            raise DamagedTrainConfigError(
                f"{out} holds a training run's config.json that {err.fault} With no {RESUME_FILE} beside it the "
                "folder holds no step to resume (config.json records settings, not weights or the optimiser's "
                f"state): move it away to train in {out} from step 0, or choose another folder", err.fault) from None
        except OSError as err:  # EACCES, EIO: a training run's it may well be
            raise ValueError(f"{out} holds a config.json that cannot be read ({err.strerror or err}); make it "
                             "readable, or choose another folder") from None
        if record is None and (resume or config.is_file()):
            # a resume without resume.pt starts afresh and would write its own config.json over this one
            raise ValueError(f"{out} holds a config.json that is not a training run's (another program's, or damaged "
                             "beyond recognition); " + ("resume=True continues training runs only: " if resume else
                                                        "training would write its own over it: ")
                             + "move it away, or choose another folder")
    earlier = _run_files(out)
    if earlier and not (earlier == [TRAIN_CONFIG_NAME] and record is not None) and not resume:
        raise ValueError(f"{out} already holds a training run ({', '.join(earlier)}); continue it with "
                         "resume=True or choose another folder")
    if not earlier:
        _refuse_others_files(out)
    return record


def _run_files(out: Path) -> list[str]:
    """The names of a training run's files that ``out`` holds, our leftovers (:func:`_leftover`) not counted."""
    return [name for name in (TRAIN_CONFIG_NAME, RESUME_FILE, "final.safetensors", "checkpoints")
            if (out / name).exists() and not _leftover(out / name)]


def _leftover(path: Path) -> bool:
    """Whether ``path`` in a training folder is what our writers leave behind and holds no step: the
    lock file, a killed writer's temporary, a ``checkpoints/`` holding nothing else (a run killed in
    its first checkpoint's write)."""
    if is_leftover(path):
        return True
    return (path.name == "checkpoints" and path.is_dir() and not path.is_symlink()
            and holds_only_leftovers(path))


def _refuse_others_files(out: Path) -> None:
    """ValueError when the folder ``out``, which holds none of a training run's files (:func:`_run_files`
    is empty; the caller asks), holds anything else than our leftovers (:func:`_leftover`): training would
    write its run among them, and ``kfm memorization --train`` read such a folder as the run."""
    others = foreign_entries(out, leftover=_leftover) if out.is_dir() else []
    if others:
        raise ValueError(f"{out} is not empty and holds no training run (it holds {named_few(others)}): training "
                         "would write its files among them; choose a new or empty folder")


def remove_leftover_temporaries(out: Path) -> int:
    """Delete the temporaries writers killed mid-save left in the training folder ``out`` and its
    ``checkpoints/`` (:func:`~kinetic_fm.runs.atomic.remove_temporaries`; hold ``out``'s lock);
    returns how many went."""
    return remove_temporaries((out, out / "checkpoints"))


def _config_json(config: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["betas"] = list(d["betas"])
    if not isinstance(d["checkpoints"], str):
        d["checkpoints"] = list(d["checkpoints"])
    return d


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    # one multi-tensor call, not one lerp_ per parameter: the same arithmetic, elementwise
    averaged = list(ema.parameters())
    if averaged:  # the multi-tensor op refuses an empty list
        torch._foreach_lerp_(averaged, list(model.parameters()), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def train(
    model: nn.Module,
    data: Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    labels: Tensor | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    callback: Callable[[int, Tensor], None] | None = None,
    info: dict[str, Any] | None = None,
    extra_weights: dict[str, dict[str, Tensor]] | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` (a velocity net ``model(x, t[, y])``) by conditional flow matching.

    Args:
        model: the net, trained in place; its device is used for the batches.
        data: (N, ...) float training samples (x1), e.g. images in [-1, 1] or 2-D points; the
            batches take the net's parameter dtype.
        config: hyper-parameters, see :class:`TrainConfig`.
        labels: (N,) int64 classes for a class-conditional model (one with ``null_class``).
        out: run folder for ``config.json``, ``checkpoints/step_*.safetensors``, ``final.safetensors``
            and ``resume.pt``; None keeps everything in memory. Training holds the folder's lock
            (:class:`~kinetic_fm.runs.RunLock`): a second writer is refused with
            :class:`~kinetic_fm.runs.RunLockedError` instead of overwriting this run's states.
            ``config.json`` records, last, ``data_sha256``: the sha256 of ``data`` in the net's
            dtype and of ``labels`` (:func:`data_digest`; about 0.4 s per 600 MB). A folder that
            holds files but none of a run's is refused (:func:`check_train_dir`), ``resume`` too.
        resume: continue from ``out/resume.pt`` when it exists (the saved config must match
            except ``steps``, which may grow, and the data and labels must be the same values,
            by their sha256, where the run recorded them; else :class:`ResumeSettingsError`);
            otherwise start afresh.
        progress: show a tqdm bar.
        callback: called as ``callback(step, loss)`` after each step (1-based ``step``, loss a
            0-d tensor); an exception raised there stops training (the last resume state stays).
            With ``out``, in the main thread, Ctrl-C (SIGINT) and SIGTERM wait for the step under way
            to end (or the resume state's load, or ``final.safetensors``' write) where their handler is a
            Python function (Ctrl-C's default, ``kfm``'s SIGTERM, your own): that step's resume state is
            written, then the handler runs (and raises, as a rule), so no finished step is lost; a second
            signal runs its handler at once, and the handlers are restored when training ends. A
            ``KeyboardInterrupt`` (or subclass) raised from the resume's load to the final write leaves
            with ``interrupted_step`` (the step under way, the last one finished outside the loop) and
            ``resume_step`` (the step of the resume state ``out`` keeps, 0 for none) set on it: equal when
            nothing was lost, else the steps after ``resume_step`` are redone by a resume (neither is set
            where a second signal stopped the load, before that step was known).
        info: extra JSON-able values recorded in ``config.json`` and the checkpoints' metadata
            (e.g. the data spec).
        extra_weights: more safetensors files for ``out`` (file name -> tensors, e.g.
            ``{"data_mean.safetensors": {"mean": m}}``), written under the folder's lock once it is
            known to hold this run (with ``config.json``), so a refused call writes none of them.
        on_resume: called as ``on_resume(step)`` once ``out``'s resume state is accepted and loaded
            (``resume=True``), before any step runs; ``step`` is the one training goes on from. Not
            called for a run that starts afresh or a resume refused (kfm train says "resuming from
            step N" there, not before the settings are compared).

    Returns:
        :class:`TrainResult`.
    """
    # every argument is checked before the run folder is made and locked: a refused call leaves
    # no folder and no .lock behind (a lock file is never deleted, see runs.lock)
    refuse_inference_mode("train()")
    data, labels = _training_data(model, data, labels)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    resume = check_flag("resume", resume)
    try:  # as config.json will read back (a tuple as a list), so that a resume compares like with like
        info = json.loads(json.dumps(dict(info or {})))
    except (TypeError, ValueError) as err:
        raise ValueError(f"info must hold JSON values (it is written to config.json): {err}") from None
    taken = sorted(_RESERVED_INFO_KEYS & info.keys())
    if taken:  # save_model's own arguments ("step" failed at the first checkpoint), the net's metadata
        raise ValueError(f"info must not use the key {taken[0]!r}: the checkpoints' metadata uses "
                         f"{', '.join(sorted(_RESERVED_INFO_KEYS))}; rename it")
    if out is None:
        if extra_weights:
            raise ValueError("extra_weights are files for the run folder: pass out= too")
        return _train(model, data, config, labels, None, resume, progress, callback, info, on_resume=on_resume)
    for name, tensors in (extra_weights or {}).items():
        if not (isinstance(tensors, dict) and all(isinstance(t, Tensor) for t in tensors.values())):
            raise ValueError(f"extra_weights[{name!r}] must be a dict of tensors (name -> tensor)")
    if getattr(model, "kind", None) is None or not hasattr(model, "config"):
        # its checkpoints are kinetic_fm nets' files (kind and config rebuild the net): another net
        # trained to the end and failed at its first save, its EMA lost
        raise ValueError(f"out= saves kinetic_fm.models nets (they carry .kind and .config); {type(model).__name__} "
                         "does not: train it with out=None and save result.ema's state_dict yourself")
    out = Path(out)
    if not _run_files(out):  # before the folder gets a .lock; check_train_dir does the rest under the lock
        _refuse_others_files(out)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        return _train(model, data, config, labels, out, resume, progress, callback, info, extra_weights, on_resume)


# keys of save_model's arguments and of the metadata a checkpoint records beside info's
_RESERVED_INFO_KEYS = frozenset({"model", "path", "ema", "kind", "config", "step", "sample_shape"})


def _training_data(model: nn.Module, data: Any, labels: Any) -> tuple[Tensor, Tensor | None]:
    """``data`` (N, ...) float and ``labels`` (N,) int64 (or None) as tensors, checked against
    ``model`` (a class-conditional one needs labels); ValueError naming the argument.

    A model without parameters has nothing to train (and no device to read the batches' from):
    refused here, not by a StopIteration from inside the run folder's lock."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a velocity net model(x, t)), got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"model has no parameters to train ({type(model).__name__})")
    if any(p.dtype == torch.float16 for p in model.parameters()):
        # g² below 6e-8 and AdamW's eps = 1e-8 are 0 in float16: the first step divided 0 by 0
        raise ValueError("model is float16: AdamW's moments underflow in float16 and its first step gives NaN "
                         "weights; train it in float32 or bfloat16 and cast the trained net (result.ema.half())")
    data = torch.as_tensor(torch_readable(data)).detach()  # the loss backpropagated into a caller's leaf's .grad
    if data.ndim < 2 or data.shape[0] < 1 or not data.is_floating_point():
        raise ValueError(f"data must be a float tensor of shape (N, ...) with N >= 1, got {tuple(data.shape)} {data.dtype}")
    finite = torch.isfinite(data.reshape(data.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):  # one NaN made every loss NaN from step 1, silently
        rows = torch.nonzero(~finite).flatten()
        raise ValueError(f"data must be finite; {rows.numel()} row(s) hold NaN or inf, the first row {int(rows[0])}")
    if labels is not None:
        labels = torch.as_tensor(torch_readable(labels))
        if labels.is_floating_point() and not bool((torch.isfinite(labels) & (labels == labels.round())).all()):
            # as_tensor(..., dtype=long) cut 1.7 to class 1
            raise ValueError("labels must be whole class numbers; got non-integer or non-finite values")
        labels = labels.to(torch.long)
        if labels.shape != (data.shape[0],):
            raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
    null_class = getattr(model, "null_class", None)
    if null_class is not None and labels is None:
        raise ValueError("the model is class-conditional: pass labels=")
    if null_class is None and labels is not None:  # they were ignored: the net has no classes to read
        raise ValueError("labels= needs a class-conditional model (one built with num_classes); this one is not")
    if null_class is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= null_class):
        raise ValueError(f"labels must be classes in [0, {null_class - 1}] (the model's num_classes = {null_class}; "
                         f"{null_class} is its null class), got labels in [{int(labels.min())}, {int(labels.max())}]")
    weights = next(model.parameters())
    if weights.is_floating_point():  # the batches in the net's precision (float64 data met a float32 net's GEMM)
        data = data.to(weights.dtype)
    return data, labels


def _checkpoints_up_to(out: Path, step: int) -> dict[int, Path]:
    """The ``checkpoints/step_*.safetensors`` in the run folder ``out`` at steps <= ``step``."""
    found = {}
    for path in (out / "checkpoints").glob("step_*.safetensors"):
        number = path.name[len("step_"):-len(".safetensors")]
        if number.isdigit() and int(number) <= step:
            found[int(number)] = path
    return found


def refuse_inference_mode(call: str) -> None:
    """Training needs autograd: refused inside ``torch.inference_mode()`` (before any folder is
    made), where tensors cannot be saved for backward even with grad mode switched back on."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{call} trains a net, which needs autograd: call it outside torch.inference_mode()")


# grad mode on whatever the caller's (a notebook's torch.set_grad_enabled(False) or no_grad() failed
# with "element 0 of tensors does not require grad"); the same bits as under the default
@torch.enable_grad()
def _train(model: nn.Module, data: Tensor, config: TrainConfig, labels: Tensor | None, out: Path | None,
           resume: bool, progress: bool, callback: Callable[[int, Tensor], None] | None,
           info: dict[str, Any], extra_weights: dict[str, dict[str, Tensor]] | None = None,
           on_resume: Callable[[int], None] | None = None) -> TrainResult:
    """:func:`train`'s work on checked arguments, with ``out``'s lock held."""
    from tqdm.auto import tqdm

    conditional = getattr(model, "null_class", None) is not None
    device = next(model.parameters()).device

    ema = copy.deepcopy(model).requires_grad_(False)
    # foreach: the multi-tensor update (torch's default on CUDA, not on CPU), the same bits as
    # the per-parameter loop and a few % faster per step
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay, foreach=True)
    data_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator().manual_seed(config.seed + 1_000_003)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2 ** 32)
    random.seed(config.seed)
    losses = torch.zeros(config.steps, dtype=torch.float32)
    start = 0

    settings = _config_json(config)
    if not conditional:  # what the run uses: it drops no label (config.json said TrainConfig's default rate)
        settings["label_dropout"] = 0.0
    run_config = {"model": {"kind": getattr(model, "kind", None), "config": getattr(model, "config", None)},
                  "train": settings, "data_shape": list(data.shape), "info": info}
    if out is not None:  # added last: config.json's earlier keys keep their order for older readers
        run_config[DATA_DIGEST] = data_digest(data, labels)
    recorded = {**info, "sample_shape": list(data.shape[1:])}  # lets `kfm sample --model` size its noise
    state_path = None if out is None else out / RESUME_FILE
    if out is not None:
        check_train_dir(out, resume=resume)
    parts = {"model": model, "ema": ema, "optimizer": optimizer}
    generators = {"data": data_gen, "noise": noise_gen}
    on_disk = ResumeStateOnDisk(state_path)
    # Ctrl-C and SIGTERM wait for the step under way to end, so that a run with a folder loses no finished step:
    # held from the resume's load (which learns the step on disk) to the final weights' write, whose cut left a
    # finished run without them (without a folder nothing is saved: no wait)
    signals = SignalsAtStepEnd(on_disk)
    with signals:
        if resume:
            # what a run saves (resume states, checkpoints) draws nothing and steps nothing: free to change; a run
            # without labels on either side leaves label_dropout out too (load_resume_state)
            start = signals.load(lambda path: load_resume_state(
                path, config.steps, parts, losses, generators, device, run_config,
                free=("steps", "save_every", "checkpoints"), optional=(DATA_DIGEST,), stacklevel=RESUME_STACKLEVEL))
            if start and on_resume is not None:
                on_resume(start)
        if out is not None:
            remove_leftover_temporaries(out)
            atomic_write_text(out / TRAIN_CONFIG_NAME, json.dumps(run_config, indent=2) + "\n")
            for name, tensors in (extra_weights or {}).items():
                save_weights(tensors, out / name)

            final = out / "final.safetensors"
            if 0 < start < config.steps and final.is_file():
                # an extension under way: load_model(out) must not read the old end as the run's end,
                # but an interrupted extension must leave it loadable: it becomes the checkpoint of
                # its step (or goes, when that checkpoint exists: the same weights)
                kept = out / "checkpoints" / f"step_{start:07d}.safetensors"
                if kept.is_file():
                    final.unlink()
                else:
                    kept.parent.mkdir(exist_ok=True)
                    os.replace(final, kept)

        schedule = set(checkpoint_steps(config.steps, config.checkpoints))
        # the checkpoints earlier legs of this run wrote up to its resume state, those off this
        # schedule included: log2's last of a run since extended (steps 12, then 20) is one of them
        written = {} if out is None else _checkpoints_up_to(out, start)

        def finite_weights() -> bool:  # one synchronisation for all parameters
            return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())

        def save_resume(step: int) -> None:
            on_disk.write(step, lambda path: save_resume_state(path, step, parts, losses, generators, device,
                                                               run_config))

        def save_step(step: int, *, checkpoint: bool = False, resume_state: bool = True) -> None:
            """Write ``step``'s checkpoint and/or resume state (a signal's save: the latter alone) once its weights
            are checked: a finite loss can still step to non-finite weights, and a NaN resume.pt replaced the last
            good one."""
            if not finite_weights():
                raise diverged(step, "the weights are no longer finite")
            if checkpoint:
                path = out / "checkpoints" / f"step_{step:07d}.safetensors"
                save_model(model, path, ema=ema, step=step, **recorded)
                written[step] = path
            if resume_state:
                save_resume(step)

        def diverged(step: int, what: str) -> ValueError:
            kept = (f"{out} keeps the resume state of step {on_disk.step}" if out is not None and on_disk.step
                    else "no resume state was saved")
            return ValueError(f"training diverged at step {step}: {what}; try a smaller learning rate (lr) or "
                              f"gradient clipping (grad_clip); {kept}")

        n = data.shape[0]
        model.train()
        ema.eval()
        bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train",
                   disable=not progress)
        # a signal held in the load or the folder's writes: delivered before any step (the one on disk is start's)
        signals.at_step_end(start, save_step)
        for i in bar:
            step = signals.step = i + 1
            if config.warmup:
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * min(1.0, step / config.warmup)
            idx = torch.randint(n, (config.batch_size,), device="cpu", generator=data_gen)
            x1 = data[idx].to(device)
            # drawn in float32 whatever torch's default dtype (float64 drew other numbers from the seed)
            x0 = torch.randn(x1.shape, device="cpu", dtype=torch.float32,
                             generator=noise_gen).to(device=device, dtype=x1.dtype)
            t = torch.rand(config.batch_size, device="cpu", dtype=torch.float32,
                           generator=noise_gen).to(device=device, dtype=x1.dtype)
            tb = t.reshape(-1, *([1] * (x1.ndim - 1)))
            xt = (1 - tb) * x0 + tb * x1
            if conditional:
                y = labels[idx].clone()
                drop = torch.rand(config.batch_size, device="cpu", dtype=torch.float32,
                                  generator=noise_gen) < config.label_dropout
                y[drop] = model.null_class
                v = model(xt, t, y.to(device))
            else:
                v = model(xt, t)
            loss = (v - (x1 - x0)).square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            _ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
            losses[i] = loss.detach().to("cpu", torch.float32)
            if not math.isfinite(float(losses[i])):  # the copy above synchronised already: free to read
                raise diverged(step, f"the loss is {float(losses[i])}")
            if progress and (step % 50 == 0 or step == config.steps):
                bar.set_postfix(loss=f"{losses[max(0, i - 49): i + 1].mean().item():.4f}")
            checkpoint = out is not None and step in schedule
            resume_state = out is not None and (step % config.save_every == 0 or step == config.steps)
            if checkpoint or resume_state:
                save_step(step, checkpoint=checkpoint, resume_state=resume_state)
            if callback is not None:
                callback(step, loss.detach())
            signals.at_step_end(step, save_step)
        bar.close()
        if out is not None:
            if config.steps in schedule and config.steps not in written:
                # resumed at its last step (a killed run finished with steps = its resume step): no
                # step ran to write the schedule's last checkpoint, and the net is at that step
                path = out / "checkpoints" / f"step_{config.steps:07d}.safetensors"
                save_model(model, path, ema=ema, step=config.steps, **recorded)
                written[config.steps] = path
            save_model(model, out / "final.safetensors", ema=ema, step=config.steps, **recorded)
    model.eval()
    return TrainResult(model, ema, losses, dict(sorted(written.items())), out, resumed_from=start)


class ResumeStateOnDisk:
    """A training loop's resume state file ``path`` (None: none is kept, :meth:`write` does nothing) and
    ``step``, the step of the state on disk (0 for none, the start; None while a resume loads it, not known
    yet): :meth:`write` keeps it current."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.step = path, 0

    def write(self, step: int, save: Callable[[Path], None]) -> None:
        """``save(path)``, which writes ``step``'s state there atomically; ``step`` is the one on disk once
        another file stands at ``path`` (:func:`file_identity`), even where ``save`` then raised: a second
        signal after the rename, in the folder's fsync, left that step's state."""
        if self.path is None:
            return
        before = file_identity(self.path)
        try:
            save(self.path)
        finally:
            if file_identity(self.path) != before:
                self.step = step


class SignalsAtStepEnd:
    """Ctrl-C and SIGTERM held to the end of a training step, so that its resume state can be written
    first (:func:`train` and :func:`~kinetic_fm.models.classifier.train_classifier` with a run folder).

    Inside the block (in the main thread), the first SIGINT or SIGTERM whose handler is a Python
    function (Ctrl-C's KeyboardInterrupt, ``kfm``'s SIGTERM, a program's own) is held back: the loop
    sets :attr:`step` as each step starts and calls :meth:`at_step_end` at its end, which, where one came,
    writes that step's resume state and runs its handler (:meth:`deliver`); a KeyboardInterrupt leaving
    the block gets :meth:`note_on`. :func:`train` enters it before a resume's load and leaves it after the
    final weights are written: one that came in the load is delivered before the first step, one in the
    final write once the file is whole.
    A second one runs its handler at once (an impatient user, a save that hangs). Handlers left to the
    system (SIG_DFL, SIG_IGN) are left alone, and so is every handler outside the main thread, where
    Python cannot set one, and without a resume state file (``on_disk.path`` None: nothing to save, no wait).

    On leaving, each replaced handler comes back where this one still stands (a handler that set
    another, as kfm's SIGTERM sets SIG_DFL for a second one, keeps its choice); one held back when the
    block ends without an error is delivered then, one held back when it ends by an error is dropped
    (the error stops the run anyway)."""

    def __init__(self, on_disk: ResumeStateOnDisk) -> None:
        self.on_disk = on_disk  # the loop's resume state on disk: its step is the one a signal need not save
        self.step = on_disk.step  # the step under way, set by the loop (the first one's start before it)
        self.active = on_disk.path is not None
        self.replaced: dict[int, Any] = {}  # signal number -> the handler it had
        self._pending: tuple[int, Any] | None = None  # (signal number, frame) of the one held back
        self._handler = self._hold  # one bound method, to know it again by identity

    @property
    def held(self) -> bool:
        return self._pending is not None

    def _hold(self, signum: int, frame: Any) -> None:
        if self._pending is None:
            self._pending = (signum, frame)
        else:
            self.replaced[signum](signum, frame)

    def load(self, resume: Callable[[Path], int]) -> int:
        """The step to train from: 0 where no resume state file stands at ``on_disk.path``, else the step
        ``resume(path)`` loads its state of (and returns), held as the one on disk and the one under way;
        while it loads, the step on disk is not known (None: a second signal there names none). The
        caller's :meth:`at_step_end` of that step delivers a signal held in the load."""
        path = self.on_disk.path
        if path is None or not path.is_file():
            return 0
        self.on_disk.step = None
        start = resume(path)
        self.on_disk.step = self.step = start
        return start

    def at_step_end(self, step: int, save: Callable[[int], None]) -> None:
        """The loop's call at the end of ``step``: where a signal came during it, ``save(step)`` writes
        that step's resume state (unless the one on disk is that step's already), then the signal's
        handler runs (:meth:`deliver`)."""
        if self.held:
            if self.on_disk.step != step:
                save(step)
            self.deliver()

    def note_on(self, err: KeyboardInterrupt) -> None:
        """Set on ``err``, raised in step :attr:`step`, what the interruption lost where a folder keeps resume
        states (``active``): ``interrupted_step`` (that step) and ``resume_step`` (the step of the resume
        state on disk, 0 for none); the steps after it are redone by a resume. Nothing while that step is not
        known (a second signal while a resume loads it)."""
        if self.active and self.on_disk.step is not None:
            err.interrupted_step, err.resume_step = self.step, self.on_disk.step

    def deliver(self) -> None:
        """Run the handler of the signal held back (it raises, as a rule)."""
        signum, frame = self._pending
        self._pending = None
        self.replaced[signum](signum, frame)

    def __enter__(self) -> "SignalsAtStepEnd":
        import signal
        import threading

        if self.active and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if callable(handler):  # not SIG_DFL, SIG_IGN, nor None (set outside Python)
                    self.replaced[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        import signal

        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.note_on(error)
        for signum, handler in self.replaced.items():
            if signal.getsignal(signum) is self._handler:
                signal.signal(signum, handler)
        if kind is None and self.held:
            try:
                self.deliver()
            except KeyboardInterrupt as err:
                self.note_on(err)
                raise
