"""``kfm memorization``: gap-ratio memorization audit of samples against a training set."""
from __future__ import annotations

import argparse
import math

from ..checks import DEVICE_FORMS
from ..run_files import MANIFEST_NAME, TRAIN_CONFIG_NAME
from ._rows import (empirical_run_manifest, is_folder_or_zip_path, is_spec, load_rows,
                    results_table_schema, training_record)
from ._types import bootstrap_seed_number, check_output_path, faiss_for, user_path, writing
from ._flag_names import flag_words

SPACE_FORMS = "'pca:K', 'pca:K+residual', 'resnet20:PATH' or 'resnet56:PATH'"
# kfm.memorization's argument names (as its errors and warnings give them) -> the flags that feed them
_AUDIT_FLAGS = {"samples": "--samples", "train": "--train", "bootstrap": "--bootstrap",
                "space(samples)": "--samples in --space", "space(train)": "--train in --space"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "memorization",
        help="F_mem (d1/d2 < threshold) of samples against a training set, with a CI",
        description=(
            "Exact 2-nearest-neighbour gap-ratio audit. Inputs: .npy, .npz (its only array, or --key), "
            ".pt (a tensor, or a dict of them with --key, loaded with weights_only=True), .parquet (a list "
            "column or the numeric columns), or a folder or .zip of images (PNG/JPEG, read as [-1, 1], one "
            "channel when all are grey, unless the other input is colour); --train may also be a data spec (cifar10:PATH, mnist:PATH, celeba:PATH, "
            "folder:PATH (one channel when all are grey, unless --samples are colour), digits: its whole "
            "training split, in [-1, 1]; celeba: grey, centred by the "
            "mean image of all its faces, as --samples images from a folder or .zip are then too; KIND:PATH is read "
            "as the spec even where a file is so named, given then as ./folder:x). "
            "A net trained on a subset (kfm train --n) is audited against "
            "that subset with --train RUN, its kfm train run folder, and a kfm reproduce net against its "
            "training images with --train OUT/models/general-* or memorizer-*; kfm reproduce keeps its samples "
            "in OUT/cache/<stage>-<hash>.pt (the memorizer's at checkpoint k: memorizer-step<k>-*.pt), read with "
            "--key x, so --space pca:N-1 (N training images) re-audits them as its span column and --clamp as "
            "its pixel one (exactly when the N images reach -1 and 1; kfm reproduce clamps to its whole training "
            "split's range, for centred CelebA wider than the N images'). Rows are flattened; a kfm sample "
            "run folder or its results.parquet gives each sample its recorded shape, so --figure can "
            "show images."
        ),
    )
    parser.add_argument("--samples", required=True, type=user_path,
                        help="generated samples, shape (B, ...): an array file, a folder/.zip of images, or a "
                             "kfm sample run folder (its final samples x, in their recorded shape)")
    parser.add_argument("--train", required=True, type=user_path,
                        help="training items, shape (N, ...): an array file, a folder/.zip of images, a "
                             "data spec such as cifar10:/data/cifar-10-batches-py, or a kfm train run folder "
                             "(exactly the items it trained on: its data spec, --n subset and --seed, read "
                             "from its config.json), or a kfm reproduce net's folder, OUT/models/general-* or "
                             "memorizer-* (its training images, read from its training_items.json), or a kfm "
                             "sample --field empirical run folder (the items its field was made of, read as its "
                             "manifest records them and checked against their sha256); for a run folder the "
                             "table's nearest is a row of that subset and nearest_item the item's position in the "
                             "data spec's whole split (or the file's)")
    parser.add_argument("--key", default=None,
                        help="array/column name inside --samples; when not given, the file's only array "
                             "(or list column)")
    parser.add_argument("--train-key", default=None,
                        help="array/column name inside --train; when not given, the file's only array (or list column)")
    parser.add_argument("--threshold", type=float, default=1 / 3, help="gap-ratio threshold in (0, 1) (default 1/3)")
    parser.add_argument("--bootstrap", type=int, default=None,
                        help="bootstrap resamples for the CI, an integer in [0, 10_000_000] (default 1000; --interval "
                             "bootstrap only)")
    parser.add_argument("--interval", choices=("bootstrap", "wilson", "clopper-pearson"), default="bootstrap",
                        help="the CI of F_mem: percentile bootstrap (default), Wilson score, or Clopper-Pearson "
                             "(exact binomial); the bootstrap has zero width when F_mem is 0 or 1")
    parser.add_argument("--seed", type=bootstrap_seed_number, default=None,
                        help="bootstrap seed in [0, 2**63) (default 0; --interval bootstrap only)")
    parser.add_argument("--backend", choices=("torch", "faiss"), default="torch",
                        help="nearest-neighbour search by torch (default) or by faiss (needs faiss-cpu)")
    parser.add_argument("--device", default="cpu",
                        help=f"where the search runs: {DEVICE_FORMS} (default cpu; faiss searches on the CPU)")
    parser.add_argument("--space", default=None,
                        help="audit in a feature space instead of pixels (pixels when not given): pca:K, the top K "
                             "principal directions "
                             "of the training items (K from 1 to min(N − 1, D); K = N − 1 projects the samples "
                             "onto the training items' affine span, which keeps every distance between training "
                             "items and drops noise outside it, so copies drowned in pixel noise show; too few "
                             "directions also match fresh images); pca:K+residual, the same plus the length of "
                             "what the K directions leave out (at K = N − 1 that gives the pixel ratios back); "
                             "or resnet20:PATH or resnet56:PATH, a pretrained CIFAR-10 ResNet's 64-d features "
                             "(inputs: images (n, 3, 32, 32) or (n, 3072) in [-1, 1])")
    parser.add_argument("--clamp", action="store_true",
                        help="clamp the samples to the training items' value range [min, max] before the audit, "
                             "as kfm reproduce does (off by default: the samples are audited as given; clamping "
                             "turns zero-mean pixel noise on a flat background into a one-sided offset, which "
                             "a pca: space no longer drops)")
    parser.add_argument("--out", default=None, type=user_path,
                        help="per-sample table: .parquet or .csv (not written when not given); for a kfm sample "
                             "run's samples its seed column joins the run's own table")
    parser.add_argument("--figure", default=None, type=user_path,
                        help="a .png: the gap-ratio histogram and, for image inputs, the samples with the "
                             "smallest ratios beside their nearest training images (not written when not given)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import warnings

    from ..checks import PERCENT_FROM, ValueRangeWarning, check_integer, inside_unit_interval
    from ..metrics.memorization import MAX_BOOTSTRAP, memorization
    from ..runs.distributed import single_process_device

    # before the inputs load and the audit runs, each named by its flag (the library names its
    # arguments, and the OS its paths: "[Errno 17] File exists" came after the whole audit)
    inside_unit_interval("--threshold", args.threshold, percent_from=PERCENT_FROM, ratio=True)
    for flag, value in (("--bootstrap", args.bootstrap), ("--seed", args.seed)):
        if value is not None and args.interval != "bootstrap":  # it would be ignored without a word
            raise ValueError(f"{flag} applies to --interval bootstrap only (the {args.interval} interval "
                             "draws no resamples)")
    resamples = {} if args.bootstrap is None else {  # unset: kfm.memorization's own default
        "bootstrap": check_integer("--bootstrap", args.bootstrap, 0, MAX_BOOTSTRAP)}
    if args.seed is not None:
        resamples["seed"] = args.seed
    if args.out is not None and Path(args.out).suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"--out must end in .parquet or .csv, got {args.out!r}")
    if args.figure is not None and Path(args.figure).suffix.lower() != ".png":
        raise ValueError(f"--figure must end in .png, got {args.figure!r}")
    for flag, path in (("--out", args.out), ("--figure", args.figure)):
        if path is not None:
            check_output_path(flag, path, folder=False)
            _check_not_an_input(flag, path, ("--samples", args.samples), ("--train", args.train))
    if args.backend == "faiss":  # the search's own ImportError named backend='faiss', with a traceback
        faiss_for("--backend faiss")
    device = single_process_device(args.device, "memorization")
    space, space_name = None, "pixels"
    principal = None if args.space is None else _principal_spec(args.space)
    if args.space is not None and principal is None:
        from ..metrics.features import feature_space
        from ..metrics.memorization import SPACE_CHUNK
        from ..models.resnet_cifar import load_cifar_resnet_spec

        net, space_name = load_cifar_resnet_spec(args.space, name="--space")
        net.warn_of_range = False  # _cifar_images checks each whole set, in the flags' names
        # named by the spec's network (its bound method's default name is "features"), in the chunks a
        # network takes in memorization()
        space = feature_space(net.to(device).features, name=space_name, batch_size=SPACE_CHUNK)
    samples, sample_files, _, _ = load_rows("--samples", args.samples, args.key, args.progress, specs=False)
    train, train_files, train_items, train_mean = load_rows("--train", args.train, args.train_key, args.progress,
                                                             specs=True)
    _check_one_dimensional(("--samples", args.samples, samples), ("--train", args.train, train))
    samples_folder = sample_files is not None and is_folder_or_zip_path(args.samples)
    samples = _grey_beside_colour(samples, args.samples, train)
    train = _grey_beside_colour(train, args.train, samples)
    if train_mean is not None:
        samples = _centred_as_train(samples, train, samples_folder, train_mean, args.samples, args.train)
    samples, train = samples.to(device), train.to(device)
    clamped, scale_warned = "", False
    if args.clamp:
        samples, clamped, scale_warned = _clamped_to(train, samples)
    if principal is not None:
        if samples.shape[1:].numel() != train.shape[1:].numel():  # the space is fitted on --train's rows
            raise ValueError(f"--space {args.space} projects rows of --train's size, but --samples has rows of "
                             f"{samples.shape[1:].numel()} values and --train of {train.shape[1:].numel()}")
        space = _principal_space(args.space, *principal, train)
        space_name = space.name
        print(f"--space {args.space}: {space.name}, the top {space.k} principal directions of the "
              f"{train.shape[0]} training items ({space.share:.1%} of their variance)"
              + (", and the length of the rest" if space.residual else ""))
    elif space is not None:
        # after a scale warning the clamp has moved the samples (uint8 ones into [0, 1]): no second one
        samples = _cifar_images("--samples", samples, scale_warned=scale_warned)
        train = _cifar_images("--train", train)
    with warnings.catch_warnings():
        if args.clamp:  # the scale was checked before the clamp, which can misname it (_clamped_to)
            warnings.simplefilter("ignore", ValueRangeWarning)
        with flag_words(_AUDIT_FLAGS):
            report = memorization(samples, train, threshold=args.threshold, **resamples, space=space,
                                  interval=args.interval, backend=args.backend, progress=args.progress)
    print(report)
    if train_mean is not None and not samples_folder:
        _warn_of_a_common_offset(samples, train, report, args.train)
    shown = report.shown_interval()
    if report._zero_width(shown) is not None:
        _, low, high = shown
        print(f"note: the bootstrap interval has no width at F_mem = {report.fraction:g} (every resample "
              f"agrees) and covers far less than {report.confidence:.0%} near it; --interval wilson gives "
              f"the Wilson interval quoted beside it, {low:.4f}–{high:.4f}")
    # the figure is drawn (its PNG rendered) before either file is written: drawn after the table,
    # a Ctrl-C in that second left the new table beside the previous run's figure; a figure that
    # fails to draw still lets the table be written, then its error is raised
    figure, failed = None, None
    seeds = _run_seeds(args.samples) if args.figure is not None or args.out is not None else None
    if args.figure is not None:
        from ..studies.figures import memorization_figure

        title = f"audited in {space_name}" + (f"; samples clamped to {clamped}" if clamped else "")
        try:
            # each pair named by its row (and seed) and its nearest item's row, as the table names them
            figure = memorization_figure("memorization", "", report, samples, train, title=title, seeds=seeds)
        except Exception as err:
            failed = err
    if args.out is not None:
        frame = _per_sample_frame(report, sample_files, train_files, train_items, seeds)
        frame["space"] = space_name   # the CLI's table stands alone: each row says what it was audited in
        frame["clamped"] = args.clamp
        from ..runs.atomic import atomic_write

        out = Path(args.out)
        with writing("--out", args.out):
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.suffix.lower() == ".csv":
                atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
            else:
                atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
        print(f"per-sample table: {out}")
    if failed is not None:
        raise failed
    if figure is not None:
        with writing("--figure", args.figure):
            saved = figure.save(args.figure)
        print(f"figure: {saved}")
    return 0


def _check_one_dimensional(*inputs: tuple[str, str, object]) -> None:
    """ValueError naming the flag of a 1-D input (``(flag, value, rows)`` each) whose N numbers, read
    as N one-value items, meet items of D > 1 values in the other: "must have the same number of
    features, got 4 and 1" did not say that the 1 came from the array's shape, nor how to fix it."""
    (flag, value, rows), (other, _, items) = inputs if inputs[0][2].dim() == 1 else inputs[::-1]
    if rows.dim() != 1 or items.dim() == 1:
        return
    n, d = rows.shape[0], items.shape[1:].numel()
    if d == 1:
        return   # N one-value items beside one-value items: the same space
    hint = (f"if it is one item of {n} values, save it as shape (1, {n})" if n == d else
            f"if it holds {n // d} items of {d} values, save it as shape ({n // d}, {d}) (x.reshape(-1, {d}))"
            if n % d == 0 else f"save it as shape (N, {d}), one item a row")
    raise ValueError(f"{flag} {value}: a 1-D array of {n} numbers is read as {n} one-value items, but {other} "
                     f"holds items of {d} values; {hint}")


def _check_not_an_input(flag: str, out: str, *inputs: tuple[str, str]) -> None:
    """ValueError naming the flags when the file ``out`` (--out's table, --figure's PNG) would replace
    what an input reads: the input file itself (``--samples s.parquet --out s.parquet``), a kfm
    sample run folder's results table or shards (``--samples RUN --out RUN/results.parquet``), or an
    image of a folder of images, given directly, by a ``folder:``/``celeba:`` spec or as the data
    a ``--train RUN`` trained on (``--samples imgs --figure imgs/0.png``: a new image there would
    be read as one next time); the table replaced the samples, and the figure a sample image,
    without a word. Paths are compared as files (:func:`_same_file`), so another name for the same
    one (a hard link, another case on a case-insensitive file system, a symbolic link) counts."""
    from pathlib import Path

    from ..data.images import IMAGE_EXTENSIONS
    from ..runs.shards import RESULTS_NAME, SHARD_DIR

    # its folder resolved, not a link it may be: the write replaces the link, where it lies
    target = Path(out).parent.resolve() / Path(out).name
    for name, value in inputs:
        for path, behind in _input_paths(name, value):
            run = path.is_dir() and (path / MANIFEST_NAME).is_file()
            # a kfm train or reproduce net's folder is read for its config.json (the data it names is
            # among the paths): a figure beside the weights read as "an image added to the folder of images"
            net = path.is_dir() and (path / TRAIN_CONFIG_NAME).is_file()
            if _same_file(target, path):
                what = "overwrite that file"
            elif run and _same_file(target, path / RESULTS_NAME):
                what = "overwrite the run's results table"
            elif run and _inside(target, path / SHARD_DIR):
                what = "overwrite the run's shards"
            elif (path.is_dir() and not (run or net) and _inside(target, path)
                  and target.suffix.lower() in IMAGE_EXTENSIONS):
                # the folder's images are read recursively: a new one would be read next time
                what = "overwrite one of the images" if target.exists() else "add an image to the folder of images"
            else:
                continue
            reads = "" if behind is None else f" ({behind})"
            raise ValueError(f"{flag} {out} would {what}, which {name} {value} reads{reads}; "
                             f"name another file for the {'figure' if flag == '--figure' else 'per-sample table'}")


def _input_paths(name: str, value: str):
    """``(path, behind)`` for each file or folder the input ``name`` ``value`` reads: the path given,
    a ``folder:``/``celeba:`` spec's folder (the only specs that name image files), and for
    ``--train RUN`` (a kfm train or reproduce net's folder, or a ``kfm sample --field empirical``
    run folder) the folder its recorded spec or source names; ``behind`` says what that folder is
    to the run ("the data it trained on, folder:/imgs"), else None. Paths that do not exist are left out."""
    from pathlib import Path

    from ..checks import split_spec
    from ..data.registry import parse_spec

    def spec_folder(spec: str):
        kind, spec_path = split_spec(spec)
        if kind not in ("folder", "celeba") or not spec_path:
            return None
        folder = Path(parse_spec(spec)[1])   # its path as the loader reads it (spaces around it dropped, ~ expanded)
        return folder.resolve() if folder.exists() else None

    path = Path(value)
    if is_spec(value, name == "--train") or not path.exists():   # a data spec (folder:x, even where a file is so named)
        folder = spec_folder(value)
        return [] if folder is None else [(folder, None)]
    paths = [(path.resolve(), None)]
    if name == "--train" and path.is_dir() and (path / TRAIN_CONFIG_NAME).is_file():
        try:
            spec = training_record(path)[0]
        except ValueError:  # the load names what is wrong with the record
            return paths
        folder = spec_folder(spec) if isinstance(spec, str) else None
        if folder is not None:
            paths.append((folder, f"the data it trained on, {spec}"))
    elif name == "--train" and path.is_dir() and (record := empirical_run_manifest(path)) is not None:
        source = record.runtime["train"]["source"]   # a resolved path, or a spec made absolute
        folder = Path(source) if Path(source).exists() else spec_folder(source)   # an array file too (--out)
        if folder is not None:
            paths.append((folder.resolve(), f"the items its field was made of, {source}"))
    return paths


def _same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file or folder: :func:`os.path.samefile` where both
    exist (it sees a hard link, and another case on a case-insensitive file system, which resolved
    paths compared as strings do not), the resolved paths otherwise."""
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:   # one of them does not exist (or cannot be read): nothing to overwrite by another name
        return a.resolve() == b.resolve()


def _inside(target, folder) -> bool:
    """Whether the path ``target`` lies in ``folder`` (at any depth), folders compared as files."""
    return any(_same_file(parent, folder) for parent in target.parents)


def _principal_spec(spec: str) -> tuple[int, bool] | None:
    """``(K, residual)`` of a ``--space`` value ``pca:K`` or ``pca:K+residual``; None for another
    kind of space (a ResNet's, checked where it is loaded). A malformed pca spec, or a value of
    no known kind, is a ValueError naming ``--space`` and the forms it takes."""
    kind, _, rest = spec.partition(":")
    if kind != "pca":
        if kind not in ("resnet20", "resnet56"):
            raise ValueError(f"--space must be {SPACE_FORMS}, got {spec!r}")
        return None
    count, plus, extra = rest.partition("+")
    if not (count.isdecimal() and count.isascii() and int(count) >= 1) or (plus and extra != "residual"):
        raise ValueError(f"--space must be 'pca:K' or 'pca:K+residual' with K a positive integer (the number of "
                         f"principal directions of the training items), got {spec!r}")
    return int(count), bool(plus)


def _principal_space(spec: str, k: int, residual: bool, train):
    """The :class:`~kinetic_fm.metrics.features.PrincipalSpace` of ``--space pca:K[+residual]``,
    fitted on the training items ``train`` (N, ...); K above min(N − 1, D) names --space."""
    import math

    from ..knn import check_finite
    from ..metrics.features import PrincipalSpace

    n, dim = train.shape[0], math.prod(train.shape[1:])
    largest = min(n - 1, dim)
    if largest < 1:
        raise ValueError(f"--space {spec} needs at least 2 training items of at least 1 value, got shape "
                         f"{tuple(train.shape)}")
    if k > largest:
        raise ValueError(f"--space {spec}: K must be an integer from 1 to min(N − 1, D) = {largest} for the N = {n} "
                         f"training items of D = {dim} values, got {k}")
    # as without --space: the fit's own words ("non-finite features in rows [3]") name neither value nor place
    check_finite("--train", train)
    with flag_words({"reference": "--train"}):  # the fit names the items it is fitted on "reference"
        return PrincipalSpace.fit(train, k, residual=residual)


def _clamped_to(train, samples):
    """``samples`` (as float64 if they are integers) clamped to the value range of ``train``, that
    range as text, and whether a warning came first because the two look like one kind of data on
    two scales (:func:`~kinetic_fm.checks.check_same_space`, read before the clamp hides the samples' own)."""
    import torch

    from ..checks import check_same_space
    from ..knn import check_finite

    if train.numel() == 0:
        raise ValueError(f"--clamp takes the range of the training items, but --train has shape {tuple(train.shape)}")
    check_finite("--train", train)  # its range would read [nan, nan] and clamp every sample to NaN
    # the scale as given: clamped, uint8 samples against [-1, 1] items read as [0, 1] ones (see run)
    warned = check_same_space(("--samples", samples), ("--train", train))
    low, high = (float(v) for v in torch.aminmax(train))
    samples = samples if samples.is_floating_point() else samples.to(torch.float64)
    inside = samples.clamp(low, high)
    changed = int(((inside != samples) & ~samples.isnan()).sum())  # NaN != NaN, but the clamp left it
    text = f"[{low:g}, {high:g}]"
    print(f"--clamp: samples clamped to the training items' range {text} ({changed:,} of {samples.numel():,} "
          "values changed)")
    return inside, text, warned


def _per_sample_frame(report, sample_files: list[str] | None, train_files: list[str] | None,
                      train_items=None, seeds=None):
    """The report's table (led by ``sample``, the row of --samples), with the samples' ``seeds`` (a kfm
    sample run's, to join its table by), the image files' names beside the rows and the nearest
    training items when the inputs were folders of images, and,
    for a run folder's training subset, ``nearest_item``: the nearest item's position in the
    split its data spec loads whole (``nearest`` is its row in the subset)."""
    frame = report.to_frame()
    if seeds is not None:
        frame.insert(1, "seed", seeds)
    if sample_files is not None:
        frame.insert(1, "file", sample_files)
    if train_items is not None:
        frame.insert(frame.columns.get_loc("nearest") + 1, "nearest_item", train_items[frame["nearest"].to_numpy()])
    if train_files is not None:
        frame.insert(frame.columns.get_loc("nearest") + 1, "nearest_file",
                     [train_files[j] for j in frame["nearest"]])
    return frame


def _run_seeds(value: str):
    """The seeds of the samples ``--samples value`` gives, in their order, when it is a kfm sample run
    folder or its results table (int64 array; the run's ``seed`` column), else None."""
    from pathlib import Path

    path = Path(value)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        from ..runs import read_manifest

        # read_samples' order, by seed; its merge checked the shards hold exactly these seeds
        return read_manifest(path).plan.all_seeds()
    if path.is_file() and path.suffix.lower() == ".parquet":
        schema = results_table_schema(path)
        if schema is not None and "seed" in schema.names:
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=["seed"]).column("seed").to_numpy()
    return None


def _centred_as_train(samples, train, from_images: bool, mean, samples_value: str, train_value: str):
    """``samples`` against training items centred by their ``mean`` image (celeba:, or a run trained
    on it): decoded from image files (which hold [-1, 1] images, never centred ones), centred by the
    same mean, with a line saying so; as they are otherwise (a kfm sample run of such a net makes
    centred samples), with a warning when they look uncentred (:func:`_looks_uncentred`). Exact
    copies of the training faces read F_mem = 0 (d1 = ‖mean‖) before."""
    import torch

    same = tuple(samples.shape[1:]) == tuple(mean.shape)
    if not same and (from_images or math.prod(samples.shape[1:]) != mean.numel()):
        return samples  # the search names the mismatch (flat (n, H·W) arrays are compared as items)
    if from_images:
        print(f"--samples {samples_value}: images centred by the mean image of --train {train_value}'s items, "
              "as those are")
        return samples.to(torch.float32) - mean.to(samples.device)
    if samples.is_floating_point() and _looks_uncentred(samples, train, mean):
        import warnings

        warnings.warn(f"--samples {samples_value} look uncentred: with the mean image --train {train_value} "
                      "subtracted from its items taken off them too, they lie less than half as far from those "
                      "items; subtract that mean first (kinetic_fm.data.load_dataset(spec).mean, or a kfm train "
                      "run's data_mean.safetensors), or the distances measure the offset, not the items",
                      stacklevel=2)
    return samples


# how many samples (evenly spaced) _looks_uncentred searches twice
_CENTRING_PROBES = 64


def _looks_uncentred(samples, train, mean) -> bool:
    """Whether samples audited against items centred by ``mean`` lie less than half as far from
    them (median nearest distance of up to 64 evenly spaced samples) once ``mean`` is taken off.

    Centred samples move away by about ‖mean‖ when it is taken off, copies of training items
    most of all; uncentred copies land on their items and uncentred fresh samples shed the
    offset. A statistic of the samples alone cannot tell: a centred face's coefficient on the mean
    image spreads with its brightness (σ ≈ 0.8 on CelebA), so centred copies of a few training
    faces (a memorizing net's samples) averaged above 0.5 in a third of draws at n = 1."""
    import torch

    from ..knn import nearest_neighbors

    picks = torch.linspace(0, samples.shape[0] - 1, min(samples.shape[0], _CENTRING_PROBES)).round().long()
    probes = samples[picks.to(samples.device)].reshape(len(picks), -1).double()
    items = train.reshape(train.shape[0], -1)
    if items.shape[1] != probes.shape[1] or not bool(torch.isfinite(probes).all()):
        return False  # the audit names the mismatch or the bad row
    shift = mean.reshape(1, -1).double().to(probes.device)
    as_given = nearest_neighbors(probes, items, 1).distances[:, 0].median()
    shed = nearest_neighbors(probes - shift, items, 1).distances[:, 0].median()
    return bool(shed < 0.5 * as_given)


# how many memorized samples (evenly spaced) _warn_of_a_common_offset compares
_OFFSET_PROBES = 256


def _warn_of_a_common_offset(samples, train, report, train_value: str) -> None:
    """Warn when the memorized samples sit one common offset from their nearest training items
    (centred ones: celeba:, or a run trained on it): taken off, each sample's estimated from the
    samples nearest to other items (so that a sample's own miss, shared by repeated copies of its
    item, cannot read as one), their median d1 falls below half.

    Samples centred by another mean image than the items' do that: ``load_celeba(n=...)`` centres
    by its subset's mean, ``celeba:PATH`` by all the faces' (on the shared 6,000 faces a 1,000
    subset's copies read d1 = 0.33, not 0, and a copy of a face with a near twin, d2 = 0.81, was
    judged not memorized). Array samples carry no record of the mean they were centred by."""
    import torch

    rows = torch.nonzero(report.memorized.cpu()).squeeze(1)
    if rows.numel() < 2:
        return  # one sample's miss is its own: no offset common to several to see
    memorized = rows.numel()
    rows = rows[torch.linspace(0, rows.numel() - 1, min(rows.numel(), _OFFSET_PROBES)).round().long()]
    nearest = report.nearest.cpu()[rows]
    misses = (samples[rows.to(samples.device)].double() - train[nearest.to(train.device)].double())
    misses = misses.reshape(rows.numel(), -1).cpu()
    _, item = torch.unique(nearest, return_inverse=True)
    own_sum = torch.zeros(int(item.max()) + 1, misses.shape[1], dtype=misses.dtype).index_add_(0, item, misses)[item]
    others = rows.numel() - torch.bincount(item)[item]
    kept = others > 0
    if int(kept.sum()) < 2:
        return  # the samples copy one item: its copies' shared miss may be its own
    estimate = (misses.sum(0) - own_sum[kept]) / others[kept, None]
    given = misses[kept].norm(dim=1).median()
    shed = (misses[kept] - estimate).norm(dim=1).median()
    if not (given > 0 and shed < 0.5 * given):
        return
    import warnings

    offset = float(misses.mean(0).norm())
    probed = "" if rows.numel() == memorized else f" ({rows.numel()} of them compared)"
    warnings.warn(f"the {memorized} memorized --samples{probed} sit one common offset from their nearest training "
                  f"items (its norm {offset:.3g}): taken off, their median d1 falls from {float(given):.3g} to "
                  f"{float(shed):.3g}. Samples centred by another mean image than --train {train_value}'s items "
                  "do that: load_celeba(n=...) centres by its subset's mean image, a celeba: spec its items by "
                  "the mean of all its faces. Move such samples into --train's frame (x + faces.mean - "
                  "kinetic_fm.data.load_dataset(spec).mean), or audit them against the subset itself (its kfm "
                  "train run folder or kfm sample --field empirical run folder, or the subset's images saved as "
                  "--train)", stacklevel=2)


def _grey_beside_colour(images, value: str, other):
    """``images`` (N, 1, H, W), a grey folder ``value`` loaded as one channel (a folder or .zip of images,
    or a ``folder:`` spec: :func:`~kinetic_fm.commands._rows.grey_loads_as_one_channel`), as three equal
    channels where ``other`` are (M, 3, H, W) images of their size: grey samples of a colour set, or a
    net's samples trained on those three channels (as the folder loaded before it read grey as one
    channel) meet "H·W and 3·H·W features" otherwise; else unchanged (a grey folder beside another)."""
    from ._rows import grey_loads_as_one_channel

    one = images.dim() == 4 and images.shape[1] == 1 and grey_loads_as_one_channel(value)
    if one and other.dim() == 4 and other.shape[1] == 3 and other.shape[2:] == images.shape[2:]:
        return images.repeat(1, 3, 1, 1)
    return images


def _cifar_images(name: str, x, *, scale_warned: bool = False):
    """``x`` as (n, 3, 32, 32) float32 images in [-1, 1], what the CIFAR-10 ResNets take; a warning
    when they look like [0, 1] images, unless ``scale_warned`` (their scale was warned about already)."""
    import torch

    if x.shape[0] == 0:
        raise ValueError(f"{name} holds no rows")
    if tuple(x.shape[1:]) not in ((3, 32, 32), (3 * 32 * 32,)):
        # a (32, 32, 3) item reshaped to (3, 32, 32) would scramble its pixels, silently
        raise ValueError(f"--space needs CIFAR-sized images, (n, 3, 32, 32) or (n, 3072); {name} has shape "
                         f"{tuple(x.shape)}" + (" (channels-last: bring it to (n, 3, 32, 32) first, "
                                                "e.g. x.transpose(0, 3, 1, 2))" if x.shape[1:] == (32, 32, 3) else ""))
    x = x.reshape(x.shape[0], 3, 32, 32).to(torch.float32)
    low, high = (float(v) for v in torch.aminmax(x))
    if low < -1.001 or high > 1.001:
        raise ValueError(f"--space needs images scaled to [-1, 1]; {name} spans [{low:g}, {high:g}]"
                         + (" (generated samples overshoot: --clamp clips them to the training images' range)"
                            if name == "--samples" else ""))
    if low >= 0.0 and high > 0.0 and not scale_warned:  # no pixel below mid-grey in a whole set: [0, 1] images
        import warnings

        warnings.warn(f"{name} has no negative value (it spans [{low:g}, {high:g}]): the ResNet takes images "
                      "in [-1, 1], so [0, 1] images must be rescaled first (2x − 1), or their features are "
                      "those of washed-out images", stacklevel=2)
    return x
