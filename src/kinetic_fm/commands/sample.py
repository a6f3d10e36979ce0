"""``kfm sample``: per-sample KPE of a built-in field or a trained net into a sharded, resumable run directory.

Writes ``<out>/manifest.json``, ``<out>/shards/shard-*.parquet`` and ``<out>/results.parquet``
(one row per seed: seed, kpe, kpe_raw, early, late, peak, peak_time, nfe, steps, nonfinite, the
class ``label`` for a class-conditional net, for ``--field empirical`` the posterior's largest weight
``posterior_max_weight`` and its entropy ``posterior_entropy`` at the sample's last evaluation (and
under ``--truncate`` ``neglected_bound_max``, the largest over the sample's evaluations of the bound on
the posterior mass one evaluation left out: a maximum, not a sum, set by the early evaluations),
unless ``--no-save-x`` the final sample ``x`` flattened into a fixed-size list column
(results.parquet records one sample's shape on it, so ``kfm memorization --samples <out>`` or its
results.parquet sees images), and with ``--profile`` the per-step energy increments
``profile``), then prints a summary table and, with ``--figure``,
draws the run. Works unchanged under torchrun (``python -m torch.distributed.run --nproc-per-node
P -m kinetic_fm.cli sample --num-samples N ...``: after torchrun spell ``--n`` as
``--num-samples``): each rank samples its own shards and rank 0 merges. One writer at a time:
while a run writes, ``<out>/.lock`` is locked, and a second ``kfm sample`` on that folder stops at
once, naming the first. Read results back with ``kinetic_fm.runs.read_run`` / ``read_samples`` /
``read_profile``.
"""
from __future__ import annotations

import argparse

from ..checks import DEVICE_FORMS, SEED_LIMIT, SEED_NOTE
from ..run_files import MANIFEST_NAME
from ..sampling.energy import POWER_BAND  # the power panel's legend, in a module `import kinetic_fm` loads
from ._types import check_output_path, faiss_for, seed_number, user_path, writing
from ._flag_names import SettingFlags, flag_value, flag_words, named_by_its_flag, where_named

FIELDS = ("gaussian", "point", "mixture")
EMPIRICAL = "empirical"  # the exact EFM field of the --train items: not built in, it needs them
SOLVERS = ("euler", "midpoint", "heun", "rk4", "rk4_38", "dopri5")
DEFAULT_DTYPE = "float32"  # the state x's dtype when --dtype is not typed (energies are float64 either way)
# KTS flags; giving any of them turns shaping on (the others take KTS's defaults)
_KTS_FLAGS = {"alpha0": "alpha0", "beta0": "beta0", "tau": "tau_split", "launch": "launch",
              "landing": "landing", "k": "k", "renormalize": "renormalize"}


def _spelled_as_flag(name: str) -> str:
    """The flag named as the setting it sets: ``on_nonfinite`` -> ``--on-nonfinite``."""
    return "--" + name.replace("_", "-")


# kfm.sample's argument names -> the flags that set them, then KTS's
_SAMPLER_FLAGS = {name: _spelled_as_flag(name) for name in (
    "steps", "solver", "grid", "quadrature", "split", "on_nonfinite", "dtype", "device", "rtol", "atol", "first_step",
    "max_steps")}
_SHAPING_FLAGS = {kts_name: f"--{flag}" for flag, kts_name in _KTS_FLAGS.items()}
_SAMPLE_FLAGS = _SAMPLER_FLAGS | _SHAPING_FLAGS
# dopri5's step control, each passed to kfm.sample only when given (None: kfm.sample's default)
_STEP_CONTROL = ("rtol", "atol", "first_step", "max_steps")
SUMMARY_COLUMNS = ("kpe", "kpe_raw", "early", "late")
# --field empirical's per-sample posterior, summarised after the energies where the table has it
POSTERIOR_COLUMNS = ("posterior_max_weight", "posterior_entropy", "neglected_bound_max")
DEFAULT_STEPS, DEFAULT_GRID = 100, "uniform"
DEFAULT_FIELD, DEFAULT_DIM = "gaussian", 2


def register(subparsers) -> None:
    # loaded with kinetic_fm: --k's help gives the default brake's limit
    from ..sampling.shaping import KTS, max_k_as_printed

    p = subparsers.add_parser(
        "sample",
        help="sample a built-in field or a trained net and record per-sample kinetic energies "
             "(sharded, resumable)",
        description=__doc__.replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f = p.add_argument_group("velocity field")
    f.add_argument("--field", choices=(*FIELDS, EMPIRICAL), default=None,
                   help="gaussian: N(2·1, 0.5²I); point: the point 2·1; mixture: 8 Gaussians (σ 0.3) "
                        "on a ring of radius 4 in the first two coordinates (evenly on [-4, 4] at --dim 1); "
                        "empirical: the exact empirical flow-matching field (kfm.EmpiricalFlow) of the "
                        "--train items, whose samples land on training items and take their shape "
                        f"(default: {DEFAULT_FIELD})")
    f.add_argument("--dim", type=int, default=None,
                   help=f"dimension D >= 1 of a built-in field's samples (default {DEFAULT_DIM})")
    f.add_argument("--train", default=None, type=user_path,
                   help="--field empirical only: its training items, as kfm memorization --train reads them: "
                        "an array file (.npy, .npz, .pt, .parquet; --train-key names an array inside), a folder "
                        "or .zip of images (one channel when every image is grey, as folder:PATH loads it), a "
                        "data spec such as mnist:PATH (its training split), a kfm train "
                        "run folder (the items it trained on), or a --field empirical run folder (its items); required "
                        "with --field empirical, refused without it. The "
                        "sha256 of the loaded float tensor identifies "
                        "the run: a --resume against other data is refused")
    f.add_argument("--train-key", default=None,
                   help="--field empirical only: the array/column name inside --train; when not given, "
                        "the file's only array (or list column)")
    f.add_argument("--train-n", type=int, default=None,
                   help="--field empirical only: a seeded subset of N >= 1 training items (a data spec draws it as "
                        "kfm train --n does; for a 2-D sampler such as moons, N points); without it, every item")
    f.add_argument("--train-seed", type=seed_number, default=None,
                   help="--field empirical only: the seed of the --train-n subset (or of a 2-D sampler's "
                        "points), as kfm train --seed: an integer in [0, 2**32); 0 when not given")
    f.add_argument("--truncate", type=int, default=None,
                   help="--field empirical only: keep the K atoms of largest posterior weight per evaluation, "
                        "K in [1, N] (EmpiricalFlow's truncated mode); the table's neglected_bound_max column is "
                        "the largest, over a sample's evaluations, of the bound on the posterior mass one evaluation "
                        "left out (a maximum, not a sum; the early evaluations, where many atoms weigh, set it: "
                        "near 1 for a sample whose late ones left out 1e-9); without it, all N atoms. "
                        "An approximation, not a speed-up: per call it costs about what the exact field does late "
                        "in a run and several times more early (at t <= 0.2, K = 64 about 5x, K = N about 100x "
                        "on a CPU at N = 2,000; BENCHMARKS.md, truncated EFM)")
    f.add_argument("--backend", choices=("torch", "faiss"), default=None,
                   help="--field empirical with --truncate only: how truncated mode picks its K atoms, from the "
                        "logits of one product with all N items (torch, the default) or by a faiss nearest-"
                        "neighbour search of x/t (needs faiss-cpu), as kfm memorization --backend searches; the "
                        "same samples to round-off, another neglected_bound_max. Part of the run's settings: a "
                        "--resume must repeat it")
    f.add_argument("--model", default=None, type=user_path,
                   help="sample a trained net instead of --field: a `kfm train` run folder or .safetensors file "
                        "(EMA weights); its weights' sha256 identifies the run. When not given, --field is sampled")
    f.add_argument("--shape", default=None,
                   help="one sample's shape for --model, e.g. 1,28,28 (default: the net's own, when it records one)")
    f.add_argument("--label", default=None,
                   help="required for a class-conditional --model: a class index K for every sample, 'seed' "
                        "(sample s gets class s mod the number of classes) or 'null' (the net's unconditional "
                        "null class); stored per sample in the table's label column. Refused without a "
                        "class-conditional --model, which in turn refuses to run without it (no default)")
    f.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale w, any finite number, with --label K or seed: "
                        "v = v_null + w·(v_label − v_null), "
                        "one net call on a doubled batch (label and null) per evaluation (default: the conditional "
                        "velocity, w = 1, a plain call)")

    s = p.add_argument_group("sampler")
    # --num-samples: the spelling to use after torchrun, whose parser takes "--n" as an abbreviation
    s.add_argument("--n", "--num-samples", dest="n", type=int, default=1000,
                   help="number of samples, in [1, 2**32] (default 1000)")
    s.add_argument("--seed-start", type=seed_number, default=0,
                   help="first seed S, in [0, 2**32 - N] for N = --n: the seeds S .. S + N - 1 stay below 2**32 "
                        "(default 0)")
    s.add_argument("--steps", type=int, default=None,
                   help=f"steps of fixed-step solvers, an integer >= 1 (default {DEFAULT_STEPS}; dopri5 ignores it, "
                        "with a warning)")
    s.add_argument("--solver", choices=SOLVERS, default="euler", help="ODE solver (default euler)")
    s.add_argument("--rtol", type=float, default=None,
                   help="dopri5 only: relative tolerance of each sample's step control, > 0 (default 1e-5)")
    s.add_argument("--atol", type=float, default=None,
                   help="dopri5 only: absolute tolerance, > 0 (default 1e-5)")
    s.add_argument("--first-step", type=float, default=None,
                   help="dopri5 only: every sample's first step, in (0, 1] (default: estimated per sample "
                        "from its starting velocity)")
    s.add_argument("--max-steps", type=int, default=None,
                   help="dopri5 only: attempted steps (accepted or rejected) before a batch with samples "
                        "short of t = 1 stops the run, >= 1 (default 10000); a limit, not a setting: a "
                        "--resume may raise it")
    s.add_argument("--grid", choices=("uniform", "cosine"), default=None,
                   help=f"time grid of fixed-step solvers (default {DEFAULT_GRID}; dopri5 refuses cosine and ignores "
                        f"{DEFAULT_GRID}, with a warning)")
    s.add_argument("--quadrature", choices=("solver", "left"), default="solver",
                   help="energy quadrature: the solver's stage weights (default), or the reference left sum")
    s.add_argument("--split", type=float, default=None,
                   help="τ in [0, 1] splitting early/late energy (default: --tau when shaping, else 0.6)")
    s.add_argument("--on-nonfinite", choices=("raise", "flag"), default="raise",
                   help="a NaN/Inf velocity stops the run (raise, the default) or marks the sample (flag)")
    s.add_argument("--dtype", choices=("float32", "float64"), default=None,  # None: DEFAULT_DTYPE, not typed (_run)
                   help="dtype of the state x (default float32; energies are float64 either way)")
    s.add_argument("--device", default="cpu",
                   help=f"{DEVICE_FORMS}; under torchrun, cuda means cuda:<LOCAL_RANK> (default cpu)")

    k = p.add_argument_group(
        "kinetic trajectory shaping (KTS)",
        "Without these flags: plain flow matching (η = 1). Any one of them turns KTS on, and those\n"
        "not given take KTS's defaults, the brake included: --alpha0 0.05 alone runs α0 = 0.05 with\n"
        "the landing brake β0 = 0.01 (exponential, τ = 0.6).\n"
        "Launch boost only: --alpha0 0.05 --beta0 0; landing brake only: --beta0 0.02 --alpha0 0.")
    k.add_argument("--alpha0", type=float, default=None,
                   help="launch boost α0 in [0, 1e6] (default 0.01 under KTS; 0: no boost)")
    k.add_argument("--beta0", type=float, default=None,
                   help="landing brake β0 >= 0, below 1/(e^k − 1) ≈ 0.0524 for the exponential landing "
                        "(k = 3), below 1 for the others (default 0.01 under KTS; 0: no brake)")
    k.add_argument("--tau", type=float, default=None, help="τ_split in (0, 1) (default 0.6 under KTS)")
    k.add_argument("--launch", choices=("linear", "constant", "exponential"), default=None,
                   help="form of the launch boost for t < τ (default linear under KTS)")
    k.add_argument("--landing", choices=("exponential", "linear", "constant"), default=None,
                   help="form of the landing brake for t >= τ (default exponential under KTS)")
    k.add_argument("--k", type=float, default=None,
                   help="rate of the exponential forms, in (0, 700] (default 3 under KTS); the exponential landing "
                        f"needs β0 < 1/(e^k − 1), i.e. k < ln(1 + 1/β0) ≈ {max_k_as_printed(KTS.beta0)} at the "
                        f"default β0 {KTS.beta0:g}")
    k.add_argument("--renormalize", action="store_true", default=None,
                   help="rescale η so that ∫η dt = 1 (not in the paper)")

    r = p.add_argument_group("run directory")
    r.add_argument("--out", required=True, type=user_path, help="run directory to create (or to continue with --resume)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --out: keep complete shards, redo missing or broken ones")
    r.add_argument("--repair", action="store_true",
                   help="with --resume, of a run whose manifest.json is damaged: write it again from this command's "
                        "settings, when they give the run id its shards' receipts record (which proves them the "
                        "run's; the damaged file is kept as manifest.json.damaged); a readable manifest is left as "
                        "it is")
    r.add_argument("--shard-size", type=int, default=1000,
                   help="samples per Parquet shard, >= 1 (default 1000); each shard is sampled on its own, so a "
                        "shard smaller than --batch-size caps the batch (keep it a multiple); the unit of --resume: "
                        "an interruption (Ctrl-C, SIGTERM) loses the shard in progress, so a slow field (EFM of "
                        "a large training set) wants small shards")
    r.add_argument("--batch-size", type=int, default=256,
                   help="samples per sampler call, >= 1 (default 256); a memory setting: results do not depend on it, "
                        "beyond float32 round-off in a net's batched GEMMs, which under dopri5 can move "
                        "adaptive steps (numbers then move by dopri5's own error)")
    r.add_argument("--no-save-x", dest="save_x", action="store_false",
                   help="do not store the final samples x in the table")
    r.add_argument("--profile", action="store_true",
                   help="also store each sample's energy profile: its per-step applied-energy increments "
                        "(they sum to its kpe; increment / Δt is the kinetic power ½η²‖v‖²) as a list column "
                        "'profile' of --steps values, their step times t_0..t_S once in manifest.json "
                        "(runtime.profile_times). dopri5 picks each sample's own steps: its 'profile' holds one "
                        "value per step that sample took (its 'steps'), and a second list column 'times' their "
                        "steps + 1 times. Part of the run's settings: a --resume must repeat it. "
                        "kinetic_fm.runs.read_profile(OUT) gives (times, increments) arrays")
    r.add_argument("--figure", default=None, type=user_path, metavar="PATH.png",
                   help="after the run (none when not given), draw it into a .png: the per-sample KPE histogram "
                        "and, with --profile, "
                        f"beside it the kinetic power ½η²‖v‖² over t ({POWER_BAND.replace('%', '%%')}; dopri5's own "
                        "steps are averaged over 100 equal bins). An axis spanning two decades or more is drawn in log "
                        "scale. Works on the --resume of a finished run (redrawn from its results)")
    r.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bars: the samples', and the steps' of a batch running over "
                        f"{STEP_BAR_DELAY:g} s")
    p.set_defaults(func=run)


class _Target:
    """What is sampled: the velocity callable, one sample's shape, and an identity hash source.

    This is the seam for other sources of velocity (e.g. a ``--model`` checkpoint whose identity
    is the sha256 of its weights file): anything that yields these three can be run.
    """

    def __init__(self, velocity, shape: tuple[int, ...], identity: dict, classes: int | None = None,
                 train: dict | None = None):
        self.velocity, self.shape, self.identity = velocity, shape, identity
        self.classes = classes  # a class-conditional net's class count (its null class is this index)
        self.train = train  # --field empirical: where its training items came from (for the manifest's runtime)


def _builtin_field(name: str, dim: int) -> _Target:
    import math

    import torch

    from ..fields.analytic import GaussianMixtureTarget, GaussianTarget, PointTarget

    if dim < 1:
        raise ValueError(f"--dim must be >= 1, got {dim}")
    ones = torch.ones(dim, dtype=torch.float64)
    if name == "gaussian":
        params = {"mean": 2.0 * ones, "std": 0.5}
        velocity = GaussianTarget(**params)
    elif name == "point":
        params = {"point": 2.0 * ones}
        velocity = PointTarget(**params)
    elif name == "mixture":
        means = torch.zeros(8, dim, dtype=torch.float64)
        if dim == 1:
            means[:, 0] = torch.linspace(-4.0, 4.0, 8, dtype=torch.float64)
        else:
            angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
            means[:, 0], means[:, 1] = 4.0 * torch.cos(angle), 4.0 * torch.sin(angle)
        params = {"means": means, "std": 0.3}
        velocity = GaussianMixtureTarget(**params)
    else:  # argparse restricts the choices; kept for programmatic callers
        raise ValueError(f"--field must be one of {FIELDS}, got {name!r}")
    from ..runs import fingerprint

    identity = {"field": name, "class": type(velocity).__name__, "params_sha256": fingerprint(params)}
    return _Target(velocity, (dim,), identity)


def _model_target(path: str, shape_arg: str | None, stored=None) -> _Target:
    """A velocity net saved by ``kfm train`` (EMA weights), identified by the digest of its weights.

    The path is not part of the identity: the same weights reached by another spelling (relative
    or absolute, the folder or its final file, another working directory), or written again by a
    resumed or repeated training (same tensors, another header order), resume the same run.
    ``stored``: the manifest of a run being resumed (None: none), which may hold the older identity,
    the sha256 of the file's bytes; the same file still matches it."""
    from pathlib import Path

    from ..models.checkpoint import load_model, recorded_sample_shape, resolve_weights, weights_digest
    from ..runs.manifest import sha256_file

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"--model {path}: no such file or folder")
    with flag_words({}, source=("--model", path)):  # the loader's errors name the file only
        weights = resolve_weights(source)  # a run folder still training: its latest checkpoint
        net = load_model(weights)
    if shape_arg:
        try:
            shape = tuple(int(d) for d in shape_arg.split(","))
        except ValueError:
            raise ValueError(f"--shape must be comma-separated integers such as 1,28,28, got {shape_arg!r}") from None
        if min(shape) < 1:  # kfm.noise would refuse it as "shape", a name the command line does not have
            raise ValueError(f"--shape must be positive integers such as 1,28,28, got {shape_arg!r}")
    elif getattr(net, "shape", None):
        shape = tuple(net.shape)
    elif (recorded := recorded_sample_shape(weights)) is not None:
        shape = recorded
    else:
        raise ValueError(f"--model {path} does not record its sample shape; give --shape C,H,W")
    digest = weights_digest(weights)
    recorded = stored.identity.get("weights_sha256") if stored is not None else None
    if recorded is not None and recorded != digest and recorded == sha256_file(weights):
        digest = recorded  # a run started before the digest ignored header order: same file, same run
    identity = {"kind": getattr(net, "kind", type(net).__name__), "weights_sha256": digest}
    return _Target(net, shape, identity, classes=getattr(net, "null_class", None))


def _empirical_target(args, device, stored=None) -> _Target:
    """The exact EFM field of the --train items (a subset with --train-n) on ``device``, identified by
    the sha256 of the loaded float tensor's bytes, its shape and dtype: the same items reached by another
    path or spelling resume the same run, other items are refused. Where they came from (the
    spec or file, key and subset) goes into the manifest's runtime, for the reader and for the
    refusal's message. ``stored``: the manifest of an empirical run being resumed (None: none), whose
    --train may be a ``kfm sample`` results table, refused as --train only since the run was made
    (its recorded sha256 then checks the items)."""
    import warnings
    from pathlib import Path

    import torch

    from ..data.registry import absolute_spec
    from ..fields.empirical import EmpiricalFlow
    from ._rows import float_items, grey_as_recorded, is_spec, items_digest, load_rows

    seed = 0 if args.train_seed is None else args.train_seed
    resumed = stored is not None and stored.identity.get("field") == EMPIRICAL
    rows, _, positions, _ = load_rows("--train", args.train, args.train_key, args.progress, specs=True,
                                      n=args.train_n, seed=seed, recorded=resumed)
    if rows.dim() < 2 or rows.shape[0] == 0:
        n = rows.shape[0] if rows.dim() == 1 else 0
        # N numbers are N one-value items to kfm memorization, which reads the same file as (N, 1)
        hint = (f"; for {n} one-value item{'s' if n != 1 else ''} (as kfm memorization reads this array), save it "
                f"as shape ({n}, 1) (x.reshape(-1, 1))" if n else "")
        raise ValueError(f"--train {args.train}: needs items of shape (N, ...), N >= 1, got {tuple(rows.shape)}{hint}")
    if rows.dtype == torch.uint8:  # image files and data specs are read as [-1, 1]; an array is taken as it is
        warnings.warn(f"--train {args.train} holds uint8 values (0 to 255), sampled on that scale: beside them the "
                      "N(0, I) noise is small and the field picks its atom early; the image loaders (a folder or "
                      ".zip of images, a data spec) give [-1, 1], as x / 127.5 - 1 does", stacklevel=2)
    if resumed:  # a run from before a grey folder loaded as one channel: the three equal channels it sampled
        rows = grey_as_recorded(rows, stored.identity.get("train_shape"), args.train)
    rows = float_items(rows)  # integers (uint8 images) as float32 where that keeps every value, else float64
    if rows.dtype == torch.float64 and not args.dtype_typed:  # a resume's --dtype float64 would be refused
        said = ("which this run samples in float32 (--dtype's default when it started): a float64 run needs "
                "another --out, with --dtype float64" if resumed else
                "sampled in float32 (--dtype's default): pass --dtype float64 to sample them in float64")
        warnings.warn(f"--train {args.train} holds float64 items, {said}", stacklevel=2)
    if args.train_n is not None and positions is not None:  # EmpiricalFlow would name the subset's row only
        from ..knn import first_nonfinite, nonfinite_rows

        if (bad := nonfinite_rows(rows)).numel():
            first = int(bad[0])
            raise ValueError(f"--train contains NaN or inf in {bad.numel()} row(s), first at row {first} of the "
                             f"--train-n {args.train_n} subset: row {int(positions[first])} of {args.train} "
                             f"({first_nonfinite(rows[first])})")
    n = rows.shape[0]
    if args.truncate is not None and args.truncate > n:
        raise ValueError(f"--truncate must lie in [1, N] = [1, {n}] (the --train items), got {args.truncate}")
    with flag_words({"train": "--train", "truncate": "--truncate"}):
        field = EmpiricalFlow(rows.to(device), truncate=args.truncate, backend=args.backend or "torch")
    identity = {"field": EMPIRICAL, "train_sha256": items_digest(rows), "train_shape": list(rows.shape),
                "train_dtype": str(rows.dtype).removeprefix("torch.")}
    source = absolute_spec(args.train) if is_spec(args.train, True) else str(Path(args.train).resolve())
    record = {"source": source, "key": args.train_key, "n": args.train_n, "seed": seed}
    return _Target(field, tuple(rows.shape[1:]), identity, train=record)


def _refuse_other_training_data(args, target: _Target, manifest) -> None:
    """On --resume of an empirical run (``manifest``: its stored one, or None), a clear refusal when
    --train now loads other items than the run was sampled from (the manifest comparison would only
    name identity.train_sha256)."""
    if manifest is None or manifest.identity.get("field") != EMPIRICAL:
        return  # no run yet, or another kind of run: the manifest comparison names what differs
    stored, now = manifest.identity, target.identity
    if all(stored.get(key) == now[key] for key in ("train_sha256", "train_shape", "train_dtype")):
        return
    raise _other_items_refusal(args, manifest, "loads", f"{now['train_dtype']} {now['train_shape']}, sha256 "
                                                         f"{now['train_sha256'][:16]}…")


def _refuse_other_training_data_before_reading(args, manifest) -> None:
    """On --resume of an empirical run (``manifest``: its stored one, or None), the refusal of
    :func:`_refuse_other_training_data` before the --train items are read, where what they are is
    known without reading them (50,000 CIFAR-10 images take 15 s to decode, only to be refused):
    an empirical run folder's recorded identity, the count --train-n draws, a .npy file's shape
    (its header), a folder or .zip of images' count of image files. Else the check after loading
    decides."""
    if manifest is None or manifest.identity.get("field") != EMPIRICAL or args.field != EMPIRICAL:
        return
    stored = manifest.identity
    foreseen = _foreseen_items(args)
    if foreseen is None:
        return
    known, words = foreseen
    shape = stored.get("train_shape")
    differs = [key for key, value in known.items()
               if (stored.get(key) != value if key != "n" else not shape or shape[0] != value)]
    if differs:
        raise _other_items_refusal(args, manifest, "holds", words)


def _foreseen_items(args) -> tuple[dict, str] | None:
    """``(known, words)``: what --train will load, known before reading it (see
    :func:`_refuse_other_training_data_before_reading`), as identity keys (``train_sha256``,
    ``train_shape``, ``train_dtype``) or ``n``, the item count, and in words; None when nothing is."""
    from pathlib import Path

    from ._rows import empirical_run_manifest, image_folder_given, is_spec

    path = Path(args.train)
    if is_spec(args.train, True):
        return None if args.train_n is None else ({"n": args.train_n}, f"{args.train_n} items by --train-n")
    run = path.is_dir() and (path / MANIFEST_NAME).is_file()
    record = empirical_run_manifest(path) if run else None
    if run and (record is None or args.train_key is not None):  # another run's folder, a key: the loader refuses
        return None
    if record is not None and args.train_n is None:
        identity = {key: record.identity.get(key) for key in ("train_sha256", "train_shape", "train_dtype")}
        return identity, (f"{identity['train_dtype']} {identity['train_shape']}, sha256 "
                          f"{str(identity['train_sha256'])[:16]}…, as that run records its items")
    if args.train_n is not None:  # the subset has N items, or the loader refuses it
        return {"n": args.train_n}, f"{args.train_n} items by --train-n"
    try:
        if path.suffix.lower() == ".npy" and path.is_file() and args.train_key is None:
            import numpy as np

            shape = list(np.load(path, mmap_mode="r", allow_pickle=False).shape)  # the header alone
            return ({"train_shape": shape}, f"shape {shape} by its header") if len(shape) >= 2 else None
        if image_folder_given(args.train):
            from ..data.images import image_names

            count = len(image_names(path))
            return ({"n": count}, f"{count} image files") if count else None
    except (OSError, ValueError):  # unreadable: the loader says what is wrong
        return None
    return None


def _other_items_refusal(args, manifest, verb: str, now: str) -> ValueError:
    """The refusal of a --resume whose --train ``verb``s (loads, holds) other items than the
    run's, ``now`` saying what they are."""
    stored, was = manifest.identity, manifest.runtime.get("train") or {}
    flags = _train_flags(was)
    subset = f",{flags}" if flags else ""
    return ValueError(f"--resume: --train {args.train} {verb} other training items than the run in {args.out} was "
                      f"sampled from ({now}; the run's: {stored.get('train_dtype')} {stored.get('train_shape')}, "
                      f"sha256 {str(stored.get('train_sha256'))[:16]}…, read from {was.get('source', '?')}{subset}); "
                      "resume with those items, or sample these into another --out")


def _train_flags(record: dict) -> str:
    """The --train-key, --train-n and --train-seed an empirical run's items were read with (its
    runtime.train record), as flags: " --train-n 8 --train-seed 0", the seed also alone (a 2-D
    sampler's points), "" when none was given."""
    given = {"train-key": record.get("key"), "train-n": record.get("n")}
    if record.get("n") is not None or record.get("seed", 0) != 0:
        given["train-seed"] = record.get("seed", 0)
    return "".join(f" --{flag} {value}" for flag, value in given.items() if value is not None)


def _refuse_another_kind_of_run(args, manifest) -> None:
    """On --resume (``manifest``: the run's stored one, or None), a --field empirical run resumed as
    another kind of run, or another kind resumed as one, refused saying what the folder holds (the
    manifest comparison listed every identity and config key that differs), and before the --train
    items or the net are read."""
    if manifest is None:
        return
    stored = manifest.identity.get("field") == EMPIRICAL
    if stored == (args.field == EMPIRICAL and not args.model):
        return
    if stored:
        was = manifest.runtime.get("train") or {}
        flags, source = _train_flags(was), was.get("source", "?")
        raise ValueError(f"--resume: the run in {args.out} samples the exact field of --train items "
                         f"({source}{',' if flags else ''}{flags}): resume it with --field empirical --train "
                         f"{source}{flags}, or start another --out")
    field = manifest.config.get("field")
    what = "a net (--model)" if field is None else f"the built-in field {field}"
    raise ValueError(f"--resume: the run in {args.out} samples {what}, not --field empirical: resume it as it was "
                     "made, or sample the --train items into another --out")


def _refuse_changed_settings_before_reading(args, kts, manifest) -> None:
    """On --resume of a --field empirical run, its settings compared as the run folder compares them
    before the --train items are read (50,000 CIFAR-10 images take 15 s to decode, only to be
    refused over --steps): with the run's own identity and sample shape, which the items decide
    and which are checked once they are read."""
    from ..runs import RunManifest
    from ..runs.manifest import check_resume

    if manifest is None or manifest.identity.get("field") != EMPIRICAL or args.field != EMPIRICAL:
        return
    target = _Target(None, tuple(manifest.config.get("sample_shape") or ()), manifest.identity)
    check_resume(manifest, RunManifest(kind="sample", config=_config(args, target, kts), identity=manifest.identity,
                                       seed_start=args.seed_start, n=args.n, shard_size=args.shard_size))


class _Conditioning:
    """The class each seed is sampled with, and the guidance scale: ``label`` is a class index,
    "seed" (seed mod ``classes``) or "null" (the null class, index ``classes``)."""

    def __init__(self, label: int | str, guidance: float | None, classes: int):
        self.label, self.guidance, self.classes = label, guidance, classes

    def labels(self, seeds: list[int]):
        import torch

        if self.label == "seed":
            return torch.tensor([s % self.classes for s in seeds], dtype=torch.int64)
        index = self.classes if self.label == "null" else self.label
        return torch.full((len(seeds),), index, dtype=torch.int64)

    def velocity(self, net, labels):
        """The field for one batch: the net at its labels, or classifier-free guidance."""
        from ..fields.adapters import ModelXT
        from ..fields.guidance import ClassifierFreeGuidance

        if self.guidance is None or self.guidance == 1.0:
            return ModelXT(net, per_sample=["y"], y=labels)
        return ClassifierFreeGuidance(net, labels, self.guidance, null_label=self.classes)

    def describe(self) -> str:
        if self.label == "seed":
            what = f"class = seed mod {self.classes}"
        else:
            what = "the null class" if self.label == "null" else f"class {self.label}"
        return what + ("" if self.guidance is None else f", guidance w = {self.guidance:g}")


def _conditioning(args, target: _Target) -> _Conditioning | None:
    """--label / --guidance checked against the target: required for a class-conditional net,
    refused for anything else."""
    import math

    if target.classes is None:
        for flag in ("label", "guidance"):
            if getattr(args, flag) is not None:
                what = ("--model is not class-conditional" if args.model else "--field empirical takes no class"
                        if args.field == EMPIRICAL else "a built-in --field takes no class")
                raise ValueError(f"--{flag} applies to a class-conditional --model only; {what}")
        return None
    n = target.classes
    if args.label is None:
        raise ValueError(f"--model {args.model} is class-conditional ({n} classes): pass --label K (0..{n - 1}) "
                         f"for one class, --label seed (class = seed mod {n}), or --label null for its "
                         "unconditional null class")
    label = args.label
    if label not in ("seed", "null"):
        try:
            label = int(label)
        except ValueError:
            label = None
        if label is None or not 0 <= label < n:
            raise ValueError(f"--label must be a class index in [0, {n - 1}], 'seed' or 'null', got {args.label!r}")
    if args.guidance is not None:
        if not math.isfinite(args.guidance):
            raise ValueError(f"--guidance must be a finite number, got {args.guidance}")
        if label == "null":
            raise ValueError("--guidance needs a class to guide towards: --label K or seed, not null")
    return _Conditioning(label, args.guidance, n)


def _shaping(args):
    """A KTS built from the given flags (defaults for the rest), or None when none was given."""
    from .. import KTS
    from ..sampling.shaping import InadmissibleBeta0Error

    given = {kts_name: getattr(args, flag) for flag, kts_name in _KTS_FLAGS.items()
             if getattr(args, flag) is not None}
    if not given:
        return None
    import warnings

    try:
        with warnings.catch_warnings():
            # KTS's own "k applies to ... only" (for a k other than 3) names the argument; the one
            # below names the flag, given with any value
            warnings.filterwarnings("ignore", message="k applies to the exponential", category=UserWarning)
            kts = KTS(**given)
    except InadmissibleBeta0Error as err:
        if "beta0" not in given:  # not "--beta0 = 0.01 (the default) makes ...", of a --k alone: a flag never typed
            raise ValueError(f"the default --beta0 {err.beta0!r}{where_named(err.consequence, _SAMPLE_FLAGS)}") \
                from None
        raise named_by_its_flag(err, _SAMPLE_FLAGS) from None
    except ValueError as err:  # KTS names its parameters; the user typed flags (tau_split is --tau)
        # the tail's too ("the largest admissible beta0", "with k = 3"), not the prose's "exponential landing"
        raise named_by_its_flag(err, _SAMPLE_FLAGS) from None
    if args.k is not None and "exponential" not in (kts.launch, kts.landing):
        # recorded in the run's config, as given, but no form reads it: a sweep over --k would
        # run the same gain under every value without a word
        warnings.warn(f"--k applies to the exponential launch or landing only, and this gain has neither "
                      f"(--launch {kts.launch}, --landing {kts.landing}); ignored", stacklevel=2)
    return kts


def _config(args, target: _Target, kts, cond: _Conditioning | None = None) -> dict:
    """Every parameter that determines the per-sample numbers (compared on --resume)."""
    from dataclasses import asdict

    # the class keys only for conditional nets, so that unconditional runs resume as before
    classes = {} if cond is None else {"label": cond.label, "guidance": cond.guidance}
    # the truncation only for empirical runs (the training items themselves are in the identity)
    empirical = {"truncate": args.truncate} if args.field == EMPIRICAL and not args.model else {}
    if args.backend == "faiss":  # only then, so that runs made without it (or before it) resume as before
        empirical["backend"] = args.backend
    return {
        **classes, **empirical,
        "field": None if args.model else args.field, "dim": args.dim,
        "sample_shape": list(target.shape),
        "steps": args.steps, "solver": args.solver, "grid": args.grid, "quadrature": args.quadrature,
        "split": args.split, "on_nonfinite": args.on_nonfinite, "dtype": args.dtype,
        "device": args.device, "shaping": asdict(kts) if kts is not None else None,
        "save_x": args.save_x,
        # only when on, so that runs made without it (and before it existed) resume as before
        **({"profile": True} if args.profile else {}),
        **_recorded_step_control(args),
    }


def _step_control(args) -> dict:
    """The dopri5 step-control flags given, as ``kfm.sample`` keyword arguments (the rest keep its
    defaults)."""
    return {name: getattr(args, name) for name in _STEP_CONTROL if getattr(args, name) is not None}


def _recorded_step_control(args) -> dict:
    """The step-control settings that change the numbers (rtol, atol, first_step), for the run's
    config: only those given with a value other than ``kfm.sample``'s default, as ``profile`` is
    only recorded when on. A run made without them, or before the flags existed, has none of these
    keys and ran at those defaults, so it resumes without the flags and refuses a resume with
    another value. (Should ``kfm.sample``'s defaults ever change, a missing key still means the
    old ones.) max_steps only decides whether a run stops, never what it computes: not compared."""
    import inspect

    from .. import sample

    defaults = inspect.signature(sample).parameters
    return {name: value for name, value in _step_control(args).items()
            if name != "max_steps" and value != defaults[name].default}


def _fixed_grid_defaults(args) -> None:
    """Fill --steps and --grid with their defaults; under dopri5, which picks each sample's own
    steps, refuse a grid other than the default (kfm.sample does, once the run has started) and
    say that the ones given are ignored (they are still recorded in the run's config, as they
    always were, so that older runs resume)."""
    import warnings

    if args.solver == "dopri5" and args.grid not in (None, DEFAULT_GRID):
        raise ValueError(f"--grid {args.grid} applies to fixed-step solvers only; dopri5 picks each sample's steps")
    given = [flag for flag, value in (("--steps", args.steps), ("--grid", args.grid)) if value is not None]
    if given and args.solver == "dopri5":
        warnings.warn(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --solver dopri5, "
                      "which picks each sample's steps (--rtol, --atol); ignored", stacklevel=2)
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.grid = DEFAULT_GRID if args.grid is None else args.grid


def _validate(args) -> None:
    from pathlib import Path

    _fixed_grid_defaults(args)

    if not 1 <= args.n <= SEED_LIMIT:  # one seed a sample, each below 2**32
        raise ValueError(f"--n must lie in [1, 2**32], got {args.n}")
    if args.seed_start > SEED_LIMIT - args.n:  # the run plan refuses it too, as "seed_start", after the net loads
        raise ValueError(f"--seed-start must lie in [0, {SEED_LIMIT - args.n}] (0 to 2**32 - N, N being --n = "
                         f"{args.n}: the seeds S .. S + N - 1 stay below 2**32; {SEED_NOTE}), got {args.seed_start}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.repair and not args.resume:  # it would be ignored without a word
        raise ValueError("--repair applies to --resume only: it writes a resumed run's damaged manifest.json again")
    if args.shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {args.shard_size}")
    if args.shape is not None and args.model is None:  # it would be ignored without a word
        raise ValueError("--shape applies to --model only; a built-in --field takes --dim")
    _validate_empirical(args)
    given = [flag for flag, value in (("--field", args.field), ("--dim", args.dim)) if value is not None]
    if given and args.model is not None:  # they too would be ignored without a word
        raise ValueError(f"{' and '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to a built-in field only; "
                         "--model samples the net, in the shape its run records (or --shape)")
    # the defaults, filled after that check: a --model run's config records dim 2, as it always has;
    # an empirical run none (its items' shape is its sample_shape)
    args.field = DEFAULT_FIELD if args.field is None else args.field
    args.dim = DEFAULT_DIM if args.dim is None and args.field != EMPIRICAL else args.dim
    _validate_step_control(args)
    if args.split is not None:  # kfm.sample checks it too, but only after the run folder is written
        from ..checks import SPLIT_PERCENT_FROM, check_unit_number

        check_unit_number("--split", args.split, percent_from=SPLIT_PERCENT_FROM)
    if args.figure is not None and Path(args.figure).suffix.lower() != ".png":  # before a whole run is spent
        raise ValueError(f"--figure must end in .png, got {args.figure!r}")
    # before the net loads and the run starts ("[Errno 20] Not a directory" came after both); a
    # folder that holds another run is refused, by rank 0, in _lock_a_busy_folder
    check_output_path("--out", args.out, folder=True)
    if args.figure is not None:
        check_output_path("--figure", args.figure, folder=False)


def _validate_empirical(args) -> None:
    """--field empirical needs --train, and --train and its companions need --field empirical; it
    refuses --model and --dim (its samples take the training items' shape)."""
    from ..data.registry import POINT_SETS

    empirical = args.field == EMPIRICAL
    if empirical and args.model is not None:
        raise ValueError("--field empirical samples the exact field of the --train items and --model samples a "
                         "trained net: give one of them")
    if empirical and args.train is None:
        raise ValueError("--field empirical needs --train: the training items whose exact field is sampled (an "
                         "array file, a folder or .zip of images, a data spec such as mnist:PATH, or a kfm train "
                         "run folder)")
    companions = [("--train", args.train), ("--train-key", args.train_key), ("--train-n", args.train_n),
                  ("--train-seed", args.train_seed), ("--truncate", args.truncate), ("--backend", args.backend)]
    given = [flag for flag, value in companions if value is not None]
    if given and not empirical:  # they would be ignored without a word
        what = "--model samples a net" if args.model else f"--field {args.field or DEFAULT_FIELD} is built in"
        raise ValueError(f"{' and '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --field empirical only "
                         f"(the exact field of a training set); {what}")
    if not empirical:
        return
    if args.dim is not None:
        raise ValueError("--dim applies to a built-in field only; --field empirical samples in the shape of the "
                         "--train items")
    if args.train_n is not None and args.train_n < 1:
        raise ValueError(f"--train-n must be >= 1, got {args.train_n}")
    if args.train_seed is not None and args.train_n is None and args.train.partition(":")[0] not in POINT_SETS:
        raise ValueError("--train-seed seeds the --train-n subset (or a 2-D sampler's points); give --train-n too")
    if args.truncate is not None and args.truncate < 1:  # its upper end, N, is checked once --train is read
        raise ValueError(f"--truncate must lie in [1, N] (N: the --train items), got {args.truncate}")
    if args.backend is not None and args.truncate is None:  # EmpiricalFlow would warn that it ignores it
        raise ValueError(f"--backend {args.backend} picks the atoms of --truncate's truncated mode; give --truncate K "
                         "(without it the field weighs all N items, and searches none)")
    if args.backend == "faiss":  # the field's own ImportError named backend='faiss', with a traceback
        faiss_for("--backend faiss")


def _validate_step_control(args) -> None:
    """--rtol, --atol, --first-step, --max-steps: the ranges ``kfm.sample`` accepts, and only with
    dopri5 (a fixed-step solver would ignore them without a word, as it ignores them in Python)."""
    import math

    positive = {"rtol": args.rtol, "atol": args.atol}
    for name, value in positive.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a positive finite number, got {value}")
    if args.first_step is not None and not (math.isfinite(args.first_step) and 0 < args.first_step <= 1):
        raise ValueError(f"--first-step must be a number in (0, 1], got {args.first_step}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    given = [name for name in _STEP_CONTROL if getattr(args, name) is not None]
    if given and args.solver != "dopri5":
        flags = ", ".join(_SAMPLER_FLAGS[name] for name in given)
        raise ValueError(f"{flags} appl{'ies' if len(given) == 1 else 'y'} to --solver dopri5 only; "
                         f"{args.solver} takes --steps fixed steps")


def _stored_manifest(run_dir: str, repair: bool):
    """The manifest of the run in ``run_dir``, or None (no run yet). ``run`` reads it once, under the
    folder's lock (a folder another writer holds is refused as such, whatever its settings), for the
    checks that come before the field or net loads; ``run_sharded`` reads it again, the check that
    counts (a folder without a ``.lock`` file is locked only there, and a new run may start in between).

    A damaged manifest is refused here, saying how to go on, before the field or net loads for a
    resume certain to be refused (it read as no run); with ``repair`` it is None, and ``run_sharded``
    writes it again from this command's settings, once they are known, where the shards vouch for them."""
    from pathlib import Path

    from ..runs.manifest import DamagedManifestError, read_manifest
    from ..runs.runner import stored_manifest
    from ._rows import damaged_manifest

    try:
        # under repair a damaged one reads as None: stored_manifest's scan of the shard receipts, for a
        # refusal, would be thrown away (run_sharded scans them under the lock)
        return read_manifest(Path(run_dir)) if repair else stored_manifest(Path(run_dir))
    except FileNotFoundError:
        return None
    except DamagedManifestError as err:
        if repair:
            return None
        raise damaged_manifest("--out", run_dir, err) from None


# a compared manifest field -> the flag that sets it; the identities follow from --field, --model, --train,
# and fields another setting decides are named only when no setting differs (a --dim change moves the
# sample shape and the field's parameter hash too; a net's kind comes with its weights)
SETTINGS = SettingFlags(
    direct={
        "seeds.n": "--n", "seeds.seed_start": "--seed-start", "shard_size": "--shard-size",
        **{f"config.{name}": _spelled_as_flag(name) for name in (
            "field", "dim", "profile", "label", "guidance", "truncate", "backend")},
        # kfm.sample's arguments but max_steps, which decides only whether a run stops (not recorded)
        **{f"config.{name}": flag for name, flag in _SAMPLER_FLAGS.items() if name != "max_steps"},
        "config.save_x": "--no-save-x",
        **{f"config.shaping.{kts_name}": flag for kts_name, flag in _SHAPING_FLAGS.items()},
        "config.shaping": "the KTS flags",
        "identity.weights_sha256": "--model",
        **{f"identity.train_{name}": "--train" for name in ("sha256", "shape", "dtype")},
    },
    derived={"config.sample_shape": "--shape", "identity.field": "--field", "identity.class": "--field",
             "identity.params_sha256": "--field", "identity.kind": "--model"})
_SWITCHES = {"config.profile", "config.shaping.renormalize"}  # on/off; --no-save-x is save_x turned off
_flag_of = SETTINGS.flag_of  # the flag that sets a compared manifest field (seeds.n: --n), or None


def _as_typed(field: str, value) -> str:
    """A stored or new value of ``field`` as the command line gives it: ``heun``, not ``'heun'``;
    off / on for a switch; "default" for a key a run records only when set (--rtol, --profile)."""
    if field == "config.save_x":
        value = not value if isinstance(value, bool) else value
    if field in _SWITCHES or field == "config.save_x":
        return flag_value(value is True)
    if value == "<absent>":
        return "default"
    if value is None:
        return flag_value(None, none="none: plain FM" if field == "config.shaping" else "unset")
    if field == "config.shaping":
        given = [(flag, value[name]) for flag, name in _KTS_FLAGS.items() if name in value]  # in --help's order
        return " ".join(f"--{flag}" + ("" if isinstance(v, bool) else f" {_as_typed('', v)}")
                        for flag, v in given if v is not False)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"{value[:16]}…"   # a sha256
    return flag_value(value)


def _resume_refusal_in_flags(err, out: str) -> ValueError:
    """The runner's refusal of a changed setting (a :class:`~kinetic_fm.runs.manifest.ResumeMismatchError`
    naming manifest fields: "config.steps (stored 60, now 30); seeds.n (stored 9, now 12)") in the
    flags the user typed: "--steps (the run's 60, now 30); --n (the run's 9, now 12)". A field no
    flag sets (a producer's other kind of run) keeps its name."""
    named_fields = set(SETTINGS.named(d.field for d in err.differences))
    named, lines = set(), []
    for d in (d for d in err.differences if d.field in named_fields):
        flag = SETTINGS.flag_of(d.field)
        if flag is None:
            lines.append(str(d))
        elif flag not in named:  # --train's sha256, shape and dtype: one line
            named.add(flag)
            was, now = (_as_typed(d.field, v) for v in (d.stored, d.now))
            if d.field == "identity.weights_sha256":
                was, now = f"weights sha256 {was}", f"weights sha256 {now}"
            lines.append(f"{flag} (the run's {was}, now {now})")
    return ValueError(f"--resume: the run in {out} was made with other settings: {'; '.join(lines)}. Resume with "
                      "the run's settings (--batch-size may change), or start a new run in another --out")


def _resume_as_recorded(args, kts, stored) -> None:
    """On --resume, take the run's own record of settings that change no number: --steps under
    dopri5 (ignored there, but recorded, as it always was), --split given or left out where
    both mean the same τ (left out: --tau under shaping, else 0.6), and --device where both name
    the CPU (cpu, cpu:0). The run then resumes instead of being refused as a different
    configuration, and its manifest, hence its run id, stays as it was written. ``stored``: the
    run's manifest, or None."""
    from ..checks import names_the_cpu
    from ..sampling.sample import resolved_split
    from ..sampling.shaping import gain_tau

    if stored is None:
        return
    recorded = stored.config
    if names_the_cpu(recorded.get("device")) and names_the_cpu(args.device):
        args.device = recorded["device"]
    if args.solver == "dopri5" and recorded.get("solver") == "dopri5" and "steps" in recorded:
        args.steps = recorded["steps"]
    if "split" in recorded and recorded["split"] != args.split:
        tau = gain_tau(kts)
        meant = [resolved_split(value, tau) for value in (recorded["split"], args.split)]
        if meant[0] == meant[1]:
            args.split = recorded["split"]


def _warn_on_batch_change(args, manifest) -> None:
    """A net's round-off depends on the batch size (its GEMMs sum in another order), so a resume
    with another --batch-size computes its shards' last bits otherwise than an uninterrupted run
    would; under dopri5 that round-off can move a sample's adaptive steps, and its numbers then
    change by up to dopri5's own error. The EFM field's products round by batch too (under any
    solver). ``manifest``: the run's stored one, or None. A built-in field rounds alike in any batch."""
    import warnings

    empirical = args.field == EMPIRICAL and not args.model
    if not (args.resume and (empirical or args.model)):
        return
    started = manifest.runtime.get("batch_size") if manifest is not None else None
    if started is None or started == args.batch_size:
        return
    if empirical:
        warnings.warn(f"this run of --field empirical started with --batch-size {started}; the field's float32 "
                      f"products round by batch, so with {args.batch_size} the samples computed now may differ "
                      "from an uninterrupted run in their last bits (more where such a difference tips a "
                      f"posterior between near-equal atoms); resume with --batch-size {started} for an identical "
                      "table", stacklevel=2)
    elif args.solver == "dopri5":
        warnings.warn(f"this dopri5 run of a net started with --batch-size {started}; with {args.batch_size}, "
                      "the net's round-off can move adaptive steps, so the samples computed now may differ "
                      "from an uninterrupted run by dopri5's own error (about 1e-3 relative in KPE, more "
                      "for a rough net), "
                      f"not by round-off; resume with --batch-size {started} for an identical table",
                      stacklevel=2)
    else:  # a fixed-step net's samples differed in their last bits, without a word (helper-188)
        warnings.warn(f"this run of a net started with --batch-size {started}; the net's round-off depends on "
                      f"the batch size, so with {args.batch_size} the samples computed now may differ from an "
                      f"uninterrupted run in their last bits; resume with --batch-size {started} for an identical "
                      "table", stacklevel=2)


def _resuming(args) -> bool:
    """Whether the call resumes a stored run (its manifest damaged, under --repair, too), whose finished
    shards stay in the folder; a --resume into a folder that holds no run yet starts a new one."""
    from pathlib import Path

    return bool(args.resume) and (Path(args.out) / MANIFEST_NAME).is_file()


def _nothing_sampled_hint(stage: str, resuming: bool) -> str:
    """What an interruption in ``stage`` ("while reading --train t.npy"), before the run is started,
    says: no sample was computed yet, so a fresh run's folder keeps nothing to resume; when
    ``resuming`` a stored run, this run computed none, and the folder keeps its finished shards."""
    if resuming:
        return (f"{stage}, before this run computed a sample; the folder keeps its finished shards: rerun the same "
                "command")
    return f"{stage}, before any sample was computed: rerun the same command"


def _interrupted_run_hint(run_dir, manifest) -> str:
    """What an interruption kept: "finished work is kept" read as if the samples so far were, when
    the shard in progress (all of a run of fewer than --shard-size samples) is dropped."""
    from ..runs.shards import receipt_path, shard_path

    plan = manifest.plan
    done = [i for i in range(plan.count) if receipt_path(shard_path(run_dir, plan, i)).is_file()]
    samples = sum(len(plan.seeds(i)) for i in done)
    return (f"{len(done)} of {plan.count} shard(s) finished ({samples} of {plan.n} samples), kept; the samples of "
            "unfinished shards are lost (--shard-size bounds that loss); rerun the same command with --resume "
            "to continue")


# seconds a batch runs before its step bar shows under the sample bar, which moves only when a batch
# ends: a slow field (EFM of 50,000 CIFAR-10 images, a big net) could sit at 0/n for minutes
STEP_BAR_DELAY = 2.0


def _sampler_settings(args, kts) -> dict:
    """The ``kfm.sample`` settings its warnings read (:func:`~kinetic_fm.sampling.sample.warn_of_settings`),
    as every batch of the run passes them."""
    import torch

    # dopri5 takes no steps (the CLI has said --steps is ignored), kfm.sample would say it again
    steps = {} if args.solver == "dopri5" else {"steps": args.steps}
    return dict(**steps, solver=args.solver, grid=args.grid, shaping=kts, quadrature=args.quadrature,
                dtype=getattr(torch, args.dtype), **_step_control(args))


def _shard_sampler(target: _Target, kts, args, device, cond: _Conditioning | None = None, step_bar: bool = False):
    """compute(seeds, advance) -> pyarrow Table with one row per seed, sampled in batches; with
    ``step_bar`` (rank 0's, as the sample bar) a batch running over STEP_BAR_DELAY shows its steps (under
    dopri5, the least t its unfinished samples reached)."""

    import numpy as np
    import pyarrow as pa

    from .. import sample
    from ..fields.empirical import EmpiricalFlow, PosteriorRecorder
    from ..sampling.guards import NonFiniteVelocityError, StepLimitError
    settings = _sampler_settings(args, kts)

    def run_batch(chunk: list[int], labels):
        velocity = target.velocity if labels is None else cond.velocity(target.velocity, labels.to(device))
        recorder = PosteriorRecorder(velocity) if isinstance(velocity, EmpiricalFlow) else None
        try:
            res = sample(velocity if recorder is None else recorder, seeds=chunk, shape=target.shape, **settings,
                         split=args.split, on_nonfinite=args.on_nonfinite, device=device,
                         profile=args.profile, progress=STEP_BAR_DELAY if step_bar else False)
            return res, None if recorder is None else _posterior_columns(recorder.trace(), args.truncate is not None)
        except NonFiniteVelocityError as err:
            seeds_hit = [chunk[i] for i in err.indices]
            # fixed-step solvers form a float32 state's ‖v‖² in float32 (dopri5 in float64)
            wide = (" (or so large that its float32 squared norm overflows, ‖v‖ > 1.8e19: then pass --dtype "
                    "float64)" if args.dtype == "float32" and args.solver != "dopri5" else "")
            raise ValueError(f"the velocity is non-finite at step {err.step} (t = {err.time:.6g}) for seed(s) "
                             f"{seeds_hit[:20]}{' ...' if len(seeds_hit) > 20 else ''}{wide}; pass --on-nonfinite "
                             "flag to record such samples with NaN energies and go on") from None
        except StepLimitError as err:
            seeds_hit = [chunk[i] for i in err.indices]
            raise ValueError(f"dopri5 made more than --max-steps {err.max_steps} attempted steps with seed(s) "
                             f"{seeds_hit[:20]}{' ...' if len(seeds_hit) > 20 else ''} short of t = 1; loosen "
                             "--rtol/--atol or raise --max-steps, and --resume to keep the finished shards") from None

    def compute(seeds: np.ndarray, advance) -> pa.Table:
        shard = _ShardColumns(save_x=args.save_x, profile=args.profile, per_sample_steps=args.solver == "dopri5")
        for lo in range(0, len(seeds), args.batch_size):
            chunk = [int(s) for s in seeds[lo:lo + args.batch_size]]
            labels = None if cond is None else cond.labels(chunk)
            res, posterior = run_batch(chunk, labels)
            shard.add(res, labels, posterior)
            advance(len(chunk))
        return shard.table()

    return compute


class _ShardColumns:
    """One shard's table, gathered batch by batch and built as Arrow arrays: the per-sample
    scalars (``SampleResult.columns``, then ``label`` for a class-conditional net), then ``x``
    flattened into a fixed-size list, then ``profile`` (a fixed-size list, or for dopri5 each
    sample's own steps as variable lists, with ``times``).

    Schema, column order, dtypes and metadata are what earlier versions wrote through a pandas
    frame of the scalars (``pa.Table.from_pandas``, the list columns appended after it), so that
    old and new shards read alike and a resume mixes them; the frame cost 2.7 ms a shard.
    """

    def __init__(self, *, save_x: bool, profile: bool, per_sample_steps: bool):
        self.save_x, self.profile, self.per_sample_steps = save_x, profile, per_sample_steps
        self.scalars: list[dict] = []
        self.finals: list = []
        self.profiles: list = []
        self.grids: list = []

    def add(self, res, labels=None, extra: dict | None = None) -> None:
        """One batch's result ``res`` (a ``SampleResult``), its (B,) int64 class ``labels``, and
        ``extra`` (B,) columns after them (the EFM posterior's)."""
        columns = res.columns()
        if labels is not None:
            columns["label"] = labels.numpy()
        columns.update(extra or {})
        self.scalars.append(columns)
        if self.save_x:
            self.finals.append(res.x.detach().reshape(len(res), -1).cpu().numpy())
        if self.profile:
            increments = res.profile.cpu().numpy()
            if self.per_sample_steps:  # each sample's own steps, without the batch's padding
                counts, times = res.steps.cpu().numpy(), res.times.cpu().numpy()
                self.profiles += [increments[i, :k] for i, k in enumerate(counts)]
                self.grids += [times[i, :k + 1] for i, k in enumerate(counts)]
            else:
                self.profiles.append(increments)

    def table(self):
        import numpy as np
        import pyarrow as pa

        from ..runs.shards import PROFILE, SAMPLES, TIMES

        names = list(self.scalars[0])
        arrays = [pa.array(np.concatenate([batch[name] for batch in self.scalars])) for name in names]
        schema = pa.schema([pa.field(name, array.type) for name, array in zip(names, arrays)])
        table = pa.Table.from_arrays(arrays, schema=schema.with_metadata(_pandas_metadata(schema)))
        if self.save_x:
            table = table.append_column(SAMPLES, _fixed_size_lists(np.concatenate(self.finals)))
        if self.profile and self.per_sample_steps:
            table = table.append_column(PROFILE, pa.array(self.profiles, type=pa.list_(pa.float64())))
            table = table.append_column(TIMES, pa.array(self.grids, type=pa.list_(pa.float64())))
        elif self.profile:
            table = table.append_column(PROFILE, _fixed_size_lists(np.concatenate(self.profiles)))
        return table


def _posterior_columns(trace, truncated: bool) -> dict:
    """Per-sample columns of an EFM run's :class:`~kinetic_fm.fields.empirical.PosteriorTrace`:
    the posterior's largest weight and entropy at the sample's last evaluation (dopri5 evaluates
    each sample at its own times; a call that skipped a sample holds NaN for it), and when
    ``truncated`` the largest, over the sample's evaluations, of the bound on the mass one evaluation
    left out (NaNs skipped): a maximum over the run, not a per-step record nor a sum."""
    import math

    import torch

    calls = torch.arange(trace.t.shape[0], device=trace.t.device)[:, None]
    last = torch.where(trace.t.isnan(), -1, calls).amax(dim=0).clamp_min(0)[None]

    def at_last(values):
        return values.gather(0, last)[0].cpu().numpy()

    columns = {"posterior_max_weight": at_last(trace.max_weight), "posterior_entropy": at_last(trace.entropy)}
    if truncated:
        bound = trace.neglected_bound.masked_fill(trace.neglected_bound.isnan(), -math.inf).amax(dim=0)
        columns["neglected_bound_max"] = bound.masked_fill(bound == -math.inf, math.nan).cpu().numpy()
    return columns


def _fixed_size_lists(rows):
    """A (n, w) array as an Arrow fixed-size list column of n lists of w values."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])


_PANDAS_METADATA: dict = {}


def _pandas_metadata(schema) -> dict:
    """The schema metadata ``pa.Table.from_pandas(frame, preserve_index=False)`` writes for a
    frame of ``schema``'s flat columns, taken from pyarrow itself on an empty frame of those
    dtypes (once per schema: it names the installed pandas and pyarrow versions)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    key = tuple((field.name, str(field.type)) for field in schema)
    if key not in _PANDAS_METADATA:
        empty = pd.DataFrame({field.name: np.empty(0, dtype=field.type.to_pandas_dtype()) for field in schema})
        _PANDAS_METADATA[key] = pa.Schema.from_pandas(empty, preserve_index=False).metadata
    return _PANDAS_METADATA[key]


def _trial_call(target: _Target, args, device) -> None:
    """One velocity evaluation at t = 0 on the first seed, checked like the sampler checks it."""
    import torch

    from .. import noise
    from ..sampling.guards import check_velocity_output

    x = noise([args.seed_start], target.shape, dtype=getattr(torch, args.dtype), device=device)
    try:
        with torch.no_grad():
            v = target.velocity(x, torch.zeros(1, dtype=x.dtype, device=device))
    except (RuntimeError, ValueError) as err:  # e.g. a net fed samples of the wrong shape (our nets: ValueError)
        hint = " (the shape given by --shape)" if args.model and args.shape is not None else ""
        raise ValueError(f"the velocity failed on one sample of shape {target.shape}{hint}: {err}") from None
    check_velocity_output(v, x)


def summary_frame(table, columns=SUMMARY_COLUMNS):
    """mean, std, min, quantiles (5/25/50/75/95 %) and max of each energy column (NaNs skipped), or of
    each of ``columns``."""
    import pandas as pd

    df = table.select(list(columns)).to_pandas()
    stats = {
        "mean": df.mean(), "std": df.std(), "min": df.min(),
        "q05": df.quantile(0.05), "q25": df.quantile(0.25), "median": df.median(),
        "q75": df.quantile(0.75), "q95": df.quantile(0.95), "max": df.max(),
    }
    return pd.DataFrame(stats)


def run(args) -> int:
    # a Ctrl-C in the first seconds (importing torch and pyarrow, checking the flags) computed nothing:
    # the generic "finished work is kept; rerun ... with --resume" spoke of a folder that may not exist
    args.interrupt_hint = _nothing_sampled_hint("while preparing the run", _resuming(args))
    import contextlib

    from ..runs.distributed import warnings_of_rank_0
    from ..runs.manifest import ResumeMismatchError

    try:
        # under torchrun every rank reads the same flags and inputs: their warnings are said once, by
        # rank 0, up to the sampling (_run closes ``setup`` there); kfm.sample's on the run's settings too
        # (_run), its others come from the rank that meets them
        with contextlib.ExitStack() as setup:
            setup.enter_context(warnings_of_rank_0())
            return _run(args, setup)
    except ResumeMismatchError as err:
        if not err.differences:  # another refusal (ranks started with other settings): as it is
            raise
        raise _resume_refusal_in_flags(err, args.out) from None


def _run(args, setup) -> int:
    import contextlib
    import os
    import warnings
    from pathlib import Path

    import pandas as pd
    import torch

    from ..runs import RunLockedError, RunManifest, run_sharded, world_session
    from ..runs.manifest import DamagedManifestError
    from ..sampling.sample import SamplerSettingsWarning, warn_of_settings
    from ..runs.shards import PROFILE_TIMES
    from ._rows import damaged_manifest

    # a --dtype typed is what the user asked for; only the default is said of float64 items (_empirical_target)
    args.dtype_typed, args.dtype = args.dtype is not None, args.dtype or DEFAULT_DTYPE
    _validate(args)
    kts = _shaping(args)
    # a Ctrl-C while the ranks meet, the folder is locked, a net is read and hashed, the items load
    # (50,000 CIFAR-10 images take 15 s), a net moves to its device or makes its trial call leaves no
    # shard behind; once run_sharded starts, the folder keeps finished shards: its own hint
    resuming = _resuming(args)
    preparing = args.interrupt_hint = _nothing_sampled_hint("while preparing the run", resuming)
    with world_session(args.device) as (coordinator, device), contextlib.ExitStack() as held:
        with writing("--out", args.out):  # before --model is read and hashed (a big file takes long)
            lock = _lock_a_busy_folder(args.out, args.resume, coordinator)
        if lock is not None:
            held.callback(lock.release)  # run_sharded lets it go at its end; this, when an error comes first
        # under the lock, as README has it: another writer's folder with other settings was refused as a
        # settings change, where the user needs to hear of the writer. Its device, if --device and the run's
        # both name the CPU (cpu, cpu:0), is the run's from here on: the same numbers either way
        stored = _stored_manifest(args.out, args.repair) if args.resume else None  # read once for the checks below
        if args.resume:
            _resume_as_recorded(args, kts, stored)
            _refuse_another_kind_of_run(args, stored)
            _refuse_changed_settings_before_reading(args, kts, stored)
            _refuse_other_training_data_before_reading(args, stored)
        if args.model:
            args.interrupt_hint = _nothing_sampled_hint(f"while reading --model {args.model}", resuming)
            target = _model_target(args.model, args.shape, stored)
            args.interrupt_hint = preparing
        elif args.field == EMPIRICAL:
            args.interrupt_hint = _nothing_sampled_hint(f"while reading --train {args.train}", resuming)
            target = _empirical_target(args, device, stored)
            args.interrupt_hint = preparing
            if args.resume:
                _refuse_other_training_data(args, target, stored)
        else:
            target = _builtin_field(args.field, args.dim)
        cond = _conditioning(args, target)
        world = coordinator.world
        if world.distributed and device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)  # P processes share the cores
        if isinstance(target.velocity, torch.nn.Module):  # a trained net: onto the samples' device and dtype
            target.velocity.to(device=device, dtype=getattr(torch, args.dtype))
        _trial_call(target, args, device)  # a wrong --shape or --dtype fails before the run folder exists
        manifest = RunManifest(
            kind="sample", config=_config(args, target, kts, cond), identity=target.identity,
            seed_start=args.seed_start, n=args.n, shard_size=args.shard_size,
            runtime={"batch_size": args.batch_size, "world_size": world.world_size,
                     **({"model": str(args.model)} if args.model else {}),
                     **({"train": target.train} if target.train is not None else {}),
                     **({PROFILE_TIMES: _profile_times(args)} if args.profile and args.solver != "dopri5" else {})},
        )
        args.interrupt_hint = None   # the run's own, below
        setup.close()   # here, not inside flag_words below: two catch_warnings blocks must nest
        try:
            # kfm.sample's warnings (quadrature='left' under dopri5, "a smaller beta0") in the flags' words
            with writing("--out", args.out), flag_words(_SAMPLE_FLAGS, anywhere=False, errors=False):
                compute = _shard_sampler(target, kts, args, device, cond, step_bar=args.progress and world.is_main)

                def on_start() -> None:
                    # the run's warnings once, from rank 0 (which may sample no shard), once the folder has taken
                    # the run and only when shards are left: a refused or finished resume says none
                    _warn_on_batch_change(args, stored)
                    warn_of_settings(target.velocity, **_sampler_settings(args, kts))
                    warnings.simplefilter("ignore", SamplerSettingsWarning)   # not again by each batch's kfm.sample

                # one change of the filters for the run: each change makes Python forget the warnings it has shown,
                # so a filter set per shard repeated a field's own warning once per shard
                with warnings.catch_warnings():
                    if not world.is_main:   # rank 0 says them, in on_start
                        warnings.simplefilter("ignore", SamplerSettingsWarning)
                    outcome = run_sharded(args.out, manifest, compute, resume=args.resume, coordinator=coordinator,
                                          progress=args.progress, lock=lock, repair=args.repair, on_start=on_start)
        except KeyboardInterrupt:
            args.interrupt_hint = _interrupted_run_hint(args.out, manifest)
            raise
        except DamagedManifestError as err:   # --repair's read, under the lock: named as the early read names it
            raise damaged_manifest("--out", args.out, err) from None
        except OSError as err:
            # a full disk said only "cannot be written (No space left on device)": whether the
            # finished work survives, and how to go on, is what the user needs (helper-188)
            if isinstance(err, RunLockedError) or not (Path(args.out) / MANIFEST_NAME).is_file():
                raise
            raise OSError(f"{err}; the shards finished so far are kept in it: rerun the same command with --resume "
                          "once that is fixed") from err
    if outcome.table is None:  # ranks other than 0 are done once their shards are written
        return 0
    table = outcome.table
    nonfinite = int(table.column("nonfinite").to_numpy().sum()) if "nonfinite" in table.column_names else 0
    shaping = "plain FM" if kts is None else str(kts)
    if args.model:
        what = f"model {args.model} (shape {target.shape})"
    elif args.field == EMPIRICAL:
        truncated = "" if args.truncate is None else f", truncated to {args.truncate} atom{'s' * (args.truncate > 1)}"
        truncated += " picked by faiss" if args.backend == "faiss" else ""
        what = f"the empirical field of {target.velocity.n} items of shape {target.shape} ({args.train}{truncated})"
    else:
        what = f"{args.field} (D={args.dim})"
    if cond is not None:
        what += f", {cond.describe()}"
    print(f"kfm sample: {table.num_rows} samples of {what}, {_stepping(args)}, {shaping}; "
          f"world size {world.world_size}")
    print(f"run directory: {outcome.run_dir}  (results.parquet, {manifest.plan.count} shard(s); "
          f"this process computed {len(outcome.computed)}, kept {len(outcome.skipped)})")
    if nonfinite:
        # through warnings, as the command's other warnings: kfm's hook words it "kfm sample: warning: ..."
        warnings.warn(f"{nonfinite} sample(s) hit a non-finite velocity (energies NaN)", UserWarning, stacklevel=2)
    with pd.option_context("display.float_format", "{:.6g}".format, "display.width", 120):
        # an empirical run's posterior too: a max weight near 1 (entropy near 0) is a sample on an atom
        posterior = tuple(name for name in POSTERIOR_COLUMNS if name in table.column_names)
        print(summary_frame(table, SUMMARY_COLUMNS + posterior).to_string())
    if args.figure is not None:
        steps = _stepping(args)
        gain = "plain FM" if kts is None else _describe_gain(kts)
        with writing("--figure", args.figure):
            path = _write_figure(args.figure, table, outcome.manifest, label="plain FM" if kts is None else "KTS",
                                 title=f"{what}; {steps}; {gain}", shaped=kts is not None)
        print(f"figure: {path}")
    return 0


def _stepping(args) -> str:
    """How the run steps, for its summary: "heun, 100 steps, uniform grid", or dopri5's settings
    other than kfm.sample's defaults ("dopri5, rtol 1e-07")."""
    if args.solver != "dopri5":
        return f"{args.solver}, {args.steps} steps, {args.grid} grid"
    given = _recorded_step_control(args)
    return ", ".join(["dopri5", *(f"{name.replace('_', ' ')} {value:g}" for name, value in given.items())])


def _lock_a_busy_folder(out: str, resume: bool, coordinator):
    """``out``'s RunLock, held, when the folder has a ``.lock`` file; RunLockedError when another
    writer holds it; else None. Then a ValueError naming --out when the folder may not take this
    run (it holds a run and ``resume`` is False, or it holds files but no run), which
    ``run_sharded`` found only after the net had loaded. Every rank gets rank 0's verdict; only
    rank 0 holds the lock, and only rank 0 looks into the folder, since it alone creates it.

    Rank 0 keeps the lock from here through ``run_sharded`` (which it is handed to), so no writer
    can start while the model loads; taken and let go here, a writer starting in between was
    refused only inside ``run_sharded``. A folder without a ``.lock`` file has no writer, and is
    left untouched (no lock file is put into it here: ``run_sharded`` first checks that the folder
    is a run's, and two new runs on one new folder still meet there).
    """
    from pathlib import Path

    from ..runs.lock import LOCK_NAME, RunLock
    from ..runs.runner import check_run_dir

    verdict, lock = None, None
    if coordinator.world.is_main:
        try:
            if (Path(out) / LOCK_NAME).is_file():
                lock = RunLock(Path(out)).acquire()
            try:
                check_run_dir(out, resume=resume)
            except ValueError as err:
                raise ValueError(f"--out {err}") from None
        except (OSError, ValueError) as err:
            coordinator.from_main(("error", str(err)))
            if lock is not None:
                lock.release()
            raise
        verdict = ("ok", None)
    try:
        if coordinator.from_main(verdict)[0] == "error":  # rank 0 has raised (and reports) the error itself
            raise ValueError(f"rank {coordinator.world.rank}: stopped because rank 0 refused the run directory")
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _profile_times(args) -> list[float]:
    """The step times t_0 .. t_S of a fixed-step run: the grid ``kfm.sample`` builds from them."""
    from ..sampling.grids import time_grid

    return time_grid(args.grid, args.steps).tolist()


def _describe_gain(kts) -> str:
    """The KTS gain for a figure's title: every setting that changes η(t), k only where a form reads it."""
    def form(name: str) -> str:
        return f"{name}, k = {kts.k:g}" if name == "exponential" else name

    return (f"KTS α0 = {kts.alpha0:g} ({form(kts.launch)}), β0 = {kts.beta0:g} ({form(kts.landing)}), "
            f"τ = {kts.tau_split:g}" + (", renormalized" if kts.renormalize else ""))


def _write_figure(path: str, table, manifest, *, label: str, title: str, shaped: bool):
    """The run's KPE histogram, beside its kinetic power over t when the table holds a profile; ``shaped``:
    a KTS gain acts on the run (its axes name η)."""
    from ..runs.shards import PROFILE, PROFILE_TIMES, profile_from_table
    from ..studies.figures import sample_run_figure

    profile = None
    if PROFILE in table.column_names:
        profile = profile_from_table(table, manifest.runtime.get(PROFILE_TIMES))
    figure = sample_run_figure("sample_run", "", table.column("kpe").to_numpy(), profile, label=label, title=title,
                               shaped=shaped)
    return figure.save(path)  # atomic: an interrupted redraw leaves the old figure
