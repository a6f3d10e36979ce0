"""``kfm train``: conditional flow-matching training of a small velocity net, resumable.

Writes ``<out>/config.json`` (the net, settings, data spec and, as ``data_sha256``, the sha256 of
the items trained on, which ``--resume`` and ``kfm memorization --train <out>`` check),
``<out>/checkpoints/step_*.safetensors`` (log-spaced steps 1, 2, 4,
... and the last; model and EMA weights with their config), ``<out>/final.safetensors`` and
``<out>/data_mean.safetensors`` for centred data (CelebA: add it back to samples) and
``<out>/resume.pt`` (everything needed to continue bit-identically after an interruption:
rerun the same command with ``--resume``, optionally with a larger ``--steps``, another
``--save-every`` or ``--checkpoints``, which change no weight). Load the trained
net with ``kinetic_fm.models.load_model(<out>)`` and sample it with ``kinetic_fm.sample``.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..checks import DEVICE_FORMS
from ._types import check_output_path, seed_number, user_path, writing
from ._flag_names import SettingFlags, flag_value, flag_words, named_by_its_flag, where_named

if TYPE_CHECKING:
    from ..models.train import ResumeSettingsError

DATA_HELP = ("digits | moons | gmm | checkerboard | mnist:DIR | cifar10:PATH | celeba:PATH | folder:PATH "
             "(PATH a folder or .zip; folder: loads one channel where every image is grey, else RGB). digits: "
             "scikit-learn's 8x8 digits, bundled; moons: two half circles; gmm: 8 Gaussians (σ 0.4) on a ring of "
             "radius 4; checkerboard: a 2-D checkerboard")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a small flow-matching velocity net (EMA, checkpoints, resume)",
                              description=__doc__.replace("``", "`"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--n", type=int, default=None,
                   help="training-set size >= 1: a seeded image subset, or the number of 2-D points "
                        "(default all / 20000)")
    p.add_argument("--model", choices=("auto", "mlp", "unet"), default="auto",
                   help="auto (the default): mlp for 2-D data and 8x8 digits, unet for larger images (the unet learns "
                        "images far better per step but is tens of times slower per step on a CPU: 2,000 "
                        "MNIST steps at --batch-size 64 take ~24 min on 2 cores, the mlp's ~30 s)")
    p.add_argument("--width", type=int, default=None,
                   help="mlp hidden width or unet base channels, >= 1: 256 or 32 unless given")
    p.add_argument("--class-cond", action="store_true",
                   help="condition on the data's labels (null class for classifier-free guidance)")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps, >= 1 (default 2000)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="training batch, >= 1, drawn from the items with replacement: a batch larger than the "
                        "data set repeats items (default 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, a finite number > 0 (default 1e-3)")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps, >= 0 (default 0)")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW weight decay, a finite number >= 0 (default 0)")
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="decay of the EMA weights that are saved and sampled, in [0, 1) (default 0.999)")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="max gradient norm, a finite number >= 0; 0 disables clipping (default 1)")
    p.add_argument("--label-dropout", type=float, default=None,
                   help="with --class-cond: share of labels replaced by the null class, in [0, 1) (default 0.1)")
    p.add_argument("--seed", type=seed_number, default=0, help="a non-negative integer below 2**32 (default 0)")
    p.add_argument("--checkpoints", default="log2",
                   help="log2 (steps 1, 2, 4, ... and the last; the default), none, or comma-separated steps")
    p.add_argument("--save-every", type=int, default=100, help="steps between resume states, >= 1 (default 100)")
    p.add_argument("--out", required=True, type=user_path, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from <out>/resume.pt if it exists")
    p.add_argument("--device", default="cpu", help=f"{DEVICE_FORMS} (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, interrupt_hint=KEPT_HINT)


# what Ctrl-C and SIGTERM keep once training has begun: "finished work is kept" read as if every step so far were
KEPT_HINT = ("the steps up to the last resume state (saved every --save-every steps) are kept, later ones are "
             "redone; rerun the same command with --resume to continue")


def run(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    import torch

    from ..data import dataset_rows, load_dataset
    from ..models import TrainConfig, default_model, train
    from ..models.train import RESUME_FILE, ResumeSettingsError, check_train_dir
    from ..runs.distributed import single_process_device
    from ._rows import grey_as_recorded

    # a stop before train() (the data loading, the net built) trained nothing: "the steps up to the
    # last resume state are kept" spoke of steps and states that may not exist
    args.interrupt_hint = ("while preparing the run, before this run trained a step; the folder is left as it was: "
                           "rerun the same command" if args.resume else
                           "while preparing the run, before any step was trained: rerun the same command")
    device = single_process_device(args.device, "train")   # a bad --device fails before the data loads
    check_output_path("--out", args.out, folder=True)
    try:  # train() checks it again, under the folder's lock; here it comes before the data loads
        recorded = check_train_dir(args.out, resume=args.resume)
    except ValueError as err:
        raise ValueError(f"--out {where_named(str(err), _FLAGS)}") from None   # "resume=True": "--resume"
    if args.label_dropout is not None and not args.class_cond:  # it would be ignored without a word
        raise ValueError("--label-dropout applies to --class-cond only")
    label_dropout = 0.1 if args.label_dropout is None else args.label_dropout
    if args.width is not None and args.width < 1:
        raise ValueError(f"--width must be >= 1, got {args.width}")
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if not (math.isfinite(args.grad_clip) and args.grad_clip >= 0):  # TrainConfig's "None" is the flag's 0
        raise ValueError(f"--grad-clip must be a finite number >= 0 (0 disables clipping), got {args.grad_clip}")
    checkpoints = args.checkpoints
    if checkpoints not in ("log2", "none"):
        try:
            checkpoints = tuple(int(s) for s in checkpoints.split(","))
        except ValueError:
            raise ValueError(f"--checkpoints must be log2, none or comma-separated steps, got {args.checkpoints!r}") from None
        outside = sorted(s for s in checkpoints if not 1 <= s <= args.steps)
        if outside:
            raise ValueError(f"--checkpoints steps must lie in [1, --steps] = [1, {args.steps}], got {outside}")
    with flag_words(_FLAGS, anywhere=False):  # its errors and warnings (lr × weight_decay) in the flags' words
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, warmup=args.warmup, ema_decay=args.ema_decay,
                             grad_clip=args.grad_clip or None, label_dropout=label_dropout, seed=args.seed,
                             checkpoints=checkpoints, save_every=args.save_every)
    with flag_words({}, source=("--data", args.data)):  # the loader's errors name the spec or its files
        try:
            ds = load_dataset(args.data, n=args.n, seed=args.seed, progress=not args.no_progress)
        except ValueError as err:  # "n must be an integer in [1, 1_797] (the available items)"
            raise named_by_its_flag(err, _FLAGS) from None
    data = dataset_rows(ds)
    saved = _saved_config(args.out, recorded) if args.resume else None
    if saved is not None:  # a run from before folder: loaded a grey folder as one channel: its three equal channels
        data = grey_as_recorded(data, saved.get("data_shape"), args.data)
    if args.model == "unet" and data.dim() != 4:  # default_model's own refusal names neither flag
        raise ValueError(f"--model unet needs image data (C, H, W), but --data {args.data} holds "
                         f"{'vectors' if data.dim() == 2 else 'items'} of shape {tuple(data.shape[1:])}; "
                         "for vector data use --model mlp (or auto, which picks it)")
    labels = ds.labels if args.class_cond else None
    if args.class_cond and labels is None:
        raise ValueError(f"--class-cond: data {args.data!r} has no labels{_why_unlabelled(args.data)}")
    # the data set's classes, not the subset's largest label: a --n subset without the top class
    # made that class's label the null class
    classes = getattr(ds, "classes", None)
    num_classes = (len(classes) if classes else int(labels.max()) + 1) if labels is not None else None
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)  # initial weights depend on the seed only
        try:  # --width is the U-Net's base_channels (even) or the MLP's hidden width
            model = default_model(args.model, data.shape[1:], num_classes=num_classes, width=args.width)
        except ValueError as err:
            raise named_by_its_flag(err, _FLAGS) from None
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"data {ds.source}: {tuple(data.shape)}; model {model.kind} ({n_params:,} parameters); out {args.out}")
    if config.batch_size > len(data):  # accepted, as a draw with replacement allows, but not without a word
        print(f"--batch-size {config.batch_size} is larger than the {len(data)} items: each batch draws them with "
              "replacement, so items repeat within a batch")
    # centred data (CelebA): keep what sampling must add back, written under the folder's lock
    mean = getattr(ds, "mean", None)
    extra = None if mean is None else {"data_mean.safetensors": {"mean": mean}}
    info = {"data": _recorded_spec(args.data, saved), "n": args.n}

    # said by train() once it accepted the resume state, before the steps run: the summary's "resumed from"
    # came only after the last one, and said before train() compared the settings, a refused resume said it too
    # (the summary no longer says it again: the same news twice)
    def resuming(step: int) -> None:
        print(f"resuming from step {step} of {args.steps} ({Path(args.out) / RESUME_FILE})", flush=True)

    # a guard: a warning of the training call that names an argument (none does today) in the flags' words,
    # where the library's names stand as arguments (its prose says "steps"); its errors are worded below
    # (a changed setting by _resume_refusal, the others by _flags_for_settings)
    args.interrupt_hint = KEPT_HINT
    with writing("--out", args.out), flag_words(_FLAGS, anywhere=False, errors=False):
        try:
            result = train(model, data, config, labels=labels, out=args.out, resume=args.resume,
                           progress=not args.no_progress, info=info, extra_weights=extra, on_resume=resuming)
        except ResumeSettingsError as err:
            raise ValueError(_resume_refusal(err)) from None
        except ValueError as err:
            raise ValueError(_flags_for_settings(str(err))) from None
        except KeyboardInterrupt as err:
            if hasattr(err, "resume_step"):
                args.interrupt_hint = _interrupted_hint(err.resume_step, err.interrupted_step, args)
            raise
    tail = result.losses[-min(100, config.steps):].mean().item()
    print(f"done: {config.steps} steps, mean loss of the last {min(100, config.steps)} steps {tail:.4f}; "
          f"{len(result.checkpoints)} checkpoints; final weights {result.out / 'final.safetensors'}")
    return 0


# TrainConfig's, load_dataset's and train's argument names -> the flags that set them
_FLAGS = {"resume": "--resume", "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "warmup": "--warmup",
          "weight_decay": "--weight-decay", "ema_decay": "--ema-decay", "label_dropout": "--label-dropout",
          "save_every": "--save-every", "n": "--n", "base_channels": "--width", "hidden": "--width",
          "seed": "--seed", "grad_clip": "--grad-clip"}
# what a resume compares, by the flags that decide it (each record by its name in the run's record): the saved
# TrainConfig's settings ("train.lr"; --steps, --save-every and --checkpoints are free to change; its betas no
# flag sets), the data spec and the net's kind, width and classes
SETTINGS = SettingFlags(
    direct={**{f"train.{name}": _FLAGS[name] for name in ("batch_size", "lr", "warmup", "weight_decay", "ema_decay",
                                                          "grad_clip", "label_dropout", "seed")},
            "info.data": "--data", "info.n": "--n", "info": "--data/--n", "model.kind": "--model",
            "model.config.hidden": "--width", "model.config.base_channels": "--width",
            "model.config.num_classes": "--class-cond"})
# records those flags decide, in order, each named only where none of its flags is, nor of the records before it:
# the data's shape (a folder changed since the run), then the net's other settings (its dim: the data's too). Not
# SettingFlags.derived, which is hidden by any direct setting that differs (kfm sample's rule)
_DERIVED = {"data_shape": "--data/--n", "model": "--model/--width/--class-cond"}


def _flags_for_settings(text: str) -> str:
    """An error of the training call in the flags' words where its arguments stand as arguments:
    "beyond steps=2" as "beyond --steps 2", "a smaller learning rate (lr)" as "(--lr)" (a resume's
    changed settings are :func:`_resume_refusal`'s)."""
    return where_named(text, _FLAGS)


def _resume_refusal(err: ResumeSettingsError) -> str:
    """A :class:`~kinetic_fm.models.train.ResumeSettingsError` in the flags the user typed, each change
    once: "--n (the run's 500, now 400)", where the run's record holds it as the data's shape and the
    spec's n; other data of the run's shape as the library says it."""
    changed = _changed_flags(err.differ)
    changes = [f"{flag} (the run's {was}, now {now})" for flag, was, now in changed]
    # other data after a changed --data or --n is that change said again, with the library's way on
    data = "" if _one_by_one(f for f, _, _ in changed) & {"--data", "--n"} else err.data
    settings = ("settings differ from the saved run: " + "; ".join(changes) + ("" if data else
                "; resume with the run's settings (--steps, --save-every and --checkpoints may change), or train a "
                "new run in another --out")) if changes else ""
    return f"cannot resume {err.path}: " + "; and ".join(p for p in (settings, _flags_for_settings(data)) if p)


def _one_by_one(flags: Iterable[str]) -> set[str]:
    """Each flag of ``flags`` (a flag, or flags joined by "/": "--data/--n") alone."""
    return {flag for joined in flags for flag in joined.split("/")}


def _changed_flags(differ: dict) -> list[tuple[str, str, str]]:
    """(flag, the run's value, this one's) for each setting that ``differ`` (record name -> (saved,
    now)) holds, by the flag that sets it (:data:`SETTINGS`): the data spec's "data" and "n" as --data
    and --n, the net's kind (which decides what its width means), or else width, and classes as --model,
    --width and --class-cond; the data's shape and the net's other settings (which the data decide)
    only where nothing else names the change (:data:`_DERIVED`)."""
    from ..models.run_config import short_json

    unset = {"train.grad_clip": "0", "info.n": "all"}   # the flags' "no clipping" and "every item"

    def typed(name: str, value) -> str:
        if isinstance(value, (float, str)) or value is None and name in unset:
            return flag_value(value, none=unset.get(name, "none"))
        return short_json(value)

    changes = []
    for name, (was, now) in differ.items():
        for record, old, new in _records(name, was, now):
            if record not in _DERIVED:
                changes.append((SETTINGS.flag_of(record) or record, typed(record, old), typed(record, new)))
    hiding = set()   # a derived record's flags and those of the records before it
    for name, flags in _DERIVED.items():
        hiding |= _one_by_one([flags])
        if name in differ and not _one_by_one(flag for flag, _, _ in changes) & hiding:
            was, now = differ[name]
            changes.append((flags, f"data of shape {short_json(was)}" if name == "data_shape" else short_json(was),
                            short_json(now)))
    return changes


def _records(name: str, was, now) -> list[tuple[str, object, object]]:
    """The record ``name`` (saved ``was``, now ``now``) as the settings a flag sets: a net's record
    (:data:`SETTINGS`' "model.kind", "model.config.hidden", ...; its kind instead of its width where that
    changed, its classes as on / off) and the data spec's ("info.data", "info.n") by their keys where both are
    records, else itself."""
    if not (name in ("model", "info") and isinstance(was, dict) and isinstance(now, dict)):
        return [(name, was, now)]
    if name == "info":
        return [(f"info.{key}", was.get(key), now.get(key)) for key in dict.fromkeys([*was, *now])
                if was.get(key) != now.get(key)]
    old, new = was.get("config") or {}, now.get("config") or {}
    # the net's kind changes what its width means: named instead of the width
    records = ([("model.kind", was.get("kind"), now.get("kind"))] if was.get("kind") != now.get("kind") else
               [(f"model.config.{key}", old.get(key), new.get(key)) for key in ("hidden", "base_channels")
                if old.get(key) != new.get(key)])
    if old.get("num_classes") != new.get("num_classes"):
        records.append(("model.config.num_classes", *(flag_value(c is not None) for c in (old.get("num_classes"),
                                                                                           new.get("num_classes")))))
    return records or [("model", was, now)]   # the net's other settings: no flag of this command sets them


def _interrupted_hint(kept: int, stopped: int, args: argparse.Namespace) -> str:
    """What Ctrl-C or SIGTERM in step ``stopped`` kept: the resume state of step ``kept`` (0: none
    yet). One signal waits for the step under way to end and saves it (``kept == stopped``: nothing
    lost); a second one stops at once, and the steps after ``kept`` are lost and redone. "the steps up
    to the last resume state are kept" named neither step, so a user could not tell 99 steps lost from none.
    One in the final weights' write after the last step is held until they are whole; a second one cuts it."""
    if stopped == kept == args.steps:
        from pathlib import Path

        final = Path(args.out) / "final.safetensors"  # an earlier leg's end went aside as this leg began
        if final.is_file():
            return f"all {kept} steps were trained and the final weights written ({final}): the run is complete"
        return (f"all {kept} steps were trained and step {kept}'s resume state saved, but the final weights were not "
                "written; rerun the same command with --resume to write them")
    if stopped == kept and kept:
        return (f"step {kept} of {args.steps} was finished and its resume state saved, no step is lost; "
                "rerun the same command with --resume to continue")
    saved = (f"the resume state of step {kept} of {args.steps} is kept (saved every --save-every "
             f"{args.save_every} steps)" if kept else
             f"no resume state was saved yet (the first comes at step {min(args.save_every, args.steps)}, "
             f"--save-every {args.save_every})")
    lost = ""
    if stopped > kept:
        steps = f"step {stopped} is" if stopped == kept + 1 else f"steps {kept + 1} to {stopped} are"
        lost = (f"; {steps} lost, redone by the resume (a second Ctrl-C or SIGTERM stops at once, without "
                "waiting for the step under way to end and be saved)")
    return f"{saved}{lost}; rerun the same command with --resume to continue"


def _why_unlabelled(spec: str) -> str:
    """``": <why>"`` for a ``folder:`` spec whose tree gives no labels (all images in one folder, or one
    beside the class folders), else ""."""
    from ..data.images import why_unlabelled
    from ..data.registry import parse_spec

    name, path = parse_spec(spec)
    reason = why_unlabelled(path) if name == "folder" else None
    return f": {reason}" if reason else ""


def _saved_config(out: str, recorded: dict | None) -> dict | None:
    """The record a kfm train run folder ``out`` keeps, or None where there is none (no run yet).

    Without a resume.pt, ``recorded``: what :func:`~kinetic_fm.models.train.check_train_dir` read of its
    config.json before the data loaded (not read twice before the lock; train() reads it again under
    the lock, where it decides). Beside one, read from its config.json; where that is damaged or another
    program's (after check_train_dir, only beside a resume.pt), from resume.pt, the
    record the resume compares and writes into config.json again: read as None, a run recorded by a
    relative spec or as grey items was refused as other data (resume.pt's values but its tensors,
    which are mapped, not read; only then). None when resume.pt cannot be read either: the resume names
    what is wrong."""
    import json
    from pathlib import Path

    from ..models.checkpoint import load_state
    from ..models.run_config import read_train_config
    from ..models.train import RESUME_FILE
    from ..run_files import TRAIN_CONFIG_NAME

    if not (Path(out) / RESUME_FILE).is_file():
        return recorded
    try:
        saved = read_train_config(Path(out) / TRAIN_CONFIG_NAME)
    except (OSError, ValueError):  # absent, or damaged (DamagedTrainConfigError)
        saved = None
    if saved is not None:
        return saved
    try:
        saved = json.loads(load_state(Path(out) / RESUME_FILE, mmap=True)["config"])  # its tensors left unread
    except Exception:  # noqa: BLE001 - an unreadable state: train's own load names what is wrong
        return None
    return saved if isinstance(saved, dict) else None


def _recorded_spec(spec: str, saved: dict | None) -> str:
    """The data spec config.json records: its path made absolute, so that ``kfm memorization
    --train`` finds the data from any folder; but a resumed run folder whose record ``saved``
    (:func:`_saved_config`) holds the same data by a relative path (written before paths were made
    absolute) keeps its own record, which the resume compares with this run's."""
    from ..data.registry import absolute_spec

    spec = absolute_spec(spec)
    if saved is None:
        return spec
    try:
        recorded = saved["info"]["data"]
        if recorded != spec and absolute_spec(recorded) == spec:
            return recorded
    except (ValueError, KeyError, TypeError):
        pass  # not a kfm train record: the resume itself says what differs
    return spec
