"""The rows an input flag of the ``kfm`` commands names, read as ``kfm memorization --samples`` /
``--train`` and ``kfm sample --train`` read them: a data spec, a ``kfm train`` or ``kfm reproduce``
run folder (the items its net trained on), a ``kfm sample`` run folder (its samples), a folder or
.zip of images, or an array file."""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from ..run_files import MANIFEST_NAME, TRAIN_CONFIG_NAME
from ._flag_names import flag_words

if TYPE_CHECKING:
    from ..runs.manifest import RunManifest


def load_rows(name: str, value: str, key: str | None, progress: bool, *, specs: bool,
               n: int | None = None, seed: int = 0, recorded: bool = False):
    """``(rows, files, items, mean)``: the rows named by ``value``, their image files' names for a
    folder or .zip of images or a data spec of image files (else None), for a kfm train or
    reproduce run folder the rows' positions in the split its data spec loads whole, for a ``kfm
    sample --field empirical`` run folder (its training items, ``specs`` only) or a subset their
    positions in the whole file or split (else None), and the mean image a centred data set
    (celeba:) subtracted from its items (else None): a data spec (if ``specs``), a run folder, a
    folder or .zip of images, or an array file
    (:func:`kinetic_fm.data.arrays.load_array`, with ``key``). With ``n``, a subset of n rows
    drawn by ``seed``: a data spec loads it as ``kfm train --n --seed`` does (for a 2-D sampler, n
    points), anything else keeps the rows :func:`~kinetic_fm.data.subset.select_indices` picks (the
    same draw). Errors and warnings name ``name`` (the flag), the key's flag and, with ``n``, the
    subset's flags ``<name>-n`` and ``<name>-seed`` (kfm sample's --train-n, --train-seed).
    ``recorded``: the items of an existing ``kfm sample --field empirical`` run being read again (its
    --resume), whose identity vouches for them: a ``kfm sample`` run's results table is then read
    (its samples), as it was before such a table was refused as --train."""
    from ..data.arrays import NAME_ONE

    key_flag = "--key" if name == "--samples" else "--train-key"
    # the key's flag only where one was given: without it, "name one with a key" is prose
    flags = {"key": key_flag} if key is not None else {}
    # the subset's flags only where they stand as arguments: the loaders' prose says "seed" and "n"
    # too ("a label or seed column among them")
    subset = (flag_words({"n": f"{name}-n", "seed": f"{name}-seed"}, anywhere=False) if n is not None
              else contextlib.nullcontext())
    try:
        with flag_words(flags, source=(name, value)), subset, _key_flag_in_warnings(key_flag):
            return _read_rows(name, value, key, progress, specs=specs, n=n, seed=seed, recorded=recorded)
    except ValueError as err:  # an archive of several arrays: the flag that names one, in this command
        if not str(err).endswith(NAME_ONE):
            raise
        raise ValueError(f"{str(err).removesuffix(NAME_ONE)}name one with {key_flag}") from None


@contextlib.contextmanager
def _key_flag_in_warnings(key_flag: str):
    """The library's warnings inside the block with "a key" (``NAME_A_COLUMN``: a Parquet file's
    numeric columns read side by side) as this command's flag for it, ``key_flag``."""
    import warnings

    from ..data.arrays import NAME_A_COLUMN

    flagged = NAME_A_COLUMN.removesuffix("a key") + key_flag
    with warnings.catch_warnings():   # the hook is restored when the block ends
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            text = str(message)
            if NAME_A_COLUMN in text:
                try:
                    message = category(text.replace(NAME_A_COLUMN, flagged))
                except Exception:  # a warning class that takes more than its text
                    message = text.replace(NAME_A_COLUMN, flagged)
            shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def _read_rows(name: str, value: str, key: str | None, progress: bool, *, specs: bool,
               n: int | None = None, seed: int = 0, recorded: bool = False):
    """:func:`load_rows`' work, in the library's words."""
    # a folder or .zip of images decodes its subset alone: the same rows, without decoding every image
    if n is not None and not is_spec(value, specs) and not image_folder_given(value):
        from ..data.subset import select_indices

        rows, files, items, mean = _read_rows(name, value, key, progress, specs=specs, recorded=recorded)
        chosen = select_indices(rows.shape[0], n=n, seed=seed).numpy()
        return (rows[chosen], None if files is None else [files[i] for i in chosen.tolist()],
                chosen if items is None else items[chosen], mean)
    return _read_whole(name, value, key, progress, specs=specs, n=n, seed=seed, recorded=recorded)


def is_spec(value: str, specs: bool) -> bool:
    """Whether ``value`` is read as a data spec (when ``specs``), by one rule: a spec's kind and a
    colon (``folder:x``, ``digits:``) always, as :func:`~kinetic_fm.data.registry.parse_spec` reads it,
    so that a file named so is given by its path (``./folder:x``); a spec's bare name (``digits``)
    unless a file or folder of that name exists (``./digits`` of images is read as that folder)."""
    from pathlib import Path

    from ..data.registry import SPEC_KINDS

    kind, colon, _ = value.partition(":")
    return specs and kind in SPEC_KINDS and (bool(colon) or not Path(value).exists())


def _read_whole(name: str, value: str, key: str | None, progress: bool, *, specs: bool,
                n: int | None = None, seed: int = 0, recorded: bool = False):
    """:func:`_read_rows` without a subset, except a data spec's, which its loader draws."""
    from pathlib import Path

    from ..data.arrays import load_array
    from ..data.registry import load_dataset, misspelt_spec, spec_hint
    from ..data.subset import dataset_rows

    path = Path(value)
    spec_given = is_spec(value, specs)
    # kfm sample writes manifest.json into its run folder, kfm train config.json
    is_run = path.is_dir() and (path / (TRAIN_CONFIG_NAME if specs else MANIFEST_NAME)).is_file()
    is_images = not is_run and is_folder_or_zip_path(value, specs)
    # the other command's run folder: a kfm sample run as --train, a kfm train run as --samples
    other_run = path.is_dir() and (path / (MANIFEST_NAME if specs else TRAIN_CONFIG_NAME)).is_file() and not is_run
    if (spec_given or is_run or is_images) and key is not None:
        flag = "--key" if name == "--samples" else "--train-key"
        what = ("a data spec" if spec_given else "a run folder" if is_run else "a kfm sample run folder"
                if other_run and specs else _net_folder_kind(path) if other_run else "a folder of images")
        raise ValueError(f"{flag} names an array inside a file; {name} {value!r} is {what}")
    if not specs and other_run:
        raise ValueError(f"--samples {value!r} is {_net_folder_kind(path)} (a net, not samples): sample it with "
                         "kfm sample --model and pass that run folder; as --train it gives the items the net "
                         "trained on")
    if specs and other_run and (record := empirical_run_manifest(path)) is not None:
        return _empirical_training_rows(path, record, progress)
    if specs and other_run:
        # read as a folder of images, it said "contains no image files"
        raise ValueError(f"--train {value!r} is a kfm sample run folder (samples, not training items; kfm "
                         f"memorization takes it as --samples): {_PASS_THE_ITEMS}")
    if specs and not recorded and path.suffix.lower() == ".parquet" and is_results_table(path):
        # its x column was read as training items without a word: a run's samples audited against themselves
        raise ValueError(_results_table_as_train(value, path))
    if is_run and specs:
        return _training_rows(path, progress)
    if is_run:
        import torch

        from ..runs.manifest import DamagedManifestError
        from ..runs.shards import read_samples

        try:
            return torch.from_numpy(read_samples(path)), None, None, None
        except DamagedManifestError as err:
            raise damaged_manifest(name, path, err) from None
    if spec_given:
        data = load_dataset(value, n=n, seed=seed, progress=progress)
        # a subset's positions in the whole split (a 2-D sampler's n points are all it has)
        indices = getattr(data, "indices", None) if n is not None else None
        items = None if indices is None else indices.numpy()
        return dataset_rows(data), _spec_item_files(value, data), items, getattr(data, "mean", None)
    if is_images:
        from ..data.images import ImageSizesDiffer, image_names, load_image_folder

        # a subset (n) is drawn as select_indices draws it from the rows, and only it is decoded; one channel
        # where every image loaded is grey, as folder:PATH loads the same folder (one rule, whatever the spelling)
        try:
            data = load_image_folder(path, grayscale=None, labels_from_folders=False, n=n, seed=seed,
                                     progress=progress)
        except ImageSizesDiffer as err:   # no command takes a size: the way out is the files', as load_dataset's
            raise err.telling_to_resize_files() from None
        names = image_names(path)
        if n is None:
            return data.images, names, None, None
        return data.images, [names[i] for i in data.indices.tolist()], data.indices.numpy(), None
    if specs and ":" in value and not path.exists() and misspelt_spec(value) is not None:
        # a spec of a misspelt kind (folde:PATH) read as a file's name said "no such file" alone
        raise FileNotFoundError(f"no such file: {value}, nor a data spec{spec_hint(value)}")
    return load_array(value, key), None, None, None


_PASS_THE_ITEMS = ("pass as --train what the net was trained on: its kfm train run folder (the items it trained on) "
                   "or its data (a data spec such as digits or cifar10:PATH, an array file, a folder of images)")


def is_results_table(path) -> bool:
    """Whether the Parquet file ``path`` is a ``kfm sample`` run's results table (see
    :func:`results_table_schema`)."""
    return results_table_schema(path) is not None


def results_table_schema(path):
    """The schema of the Parquet file ``path`` when it is a ``kfm sample`` run's results table, by
    the schema alone: a column recording one sample's shape (the samples x), or the run's energy
    columns (a table written with --no-save-x); else None. An unreadable file is not one here
    (reading it names what is wrong)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..runs.shards import SAMPLE_SHAPE_KEY

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError):
        return None
    shaped = any(SAMPLE_SHAPE_KEY in (field.metadata or {}) for field in schema)
    return schema if shaped or {"seed", "kpe", "kpe_raw"} <= set(schema.names) else None


def _results_table_as_train(value: str, path) -> str:
    """The refusal of a ``kfm sample`` results table as --train, pointing at the run folder it sits
    in when that is an empirical run's (whose folder gives the items its field was made of)."""
    run = path.parent
    if (run / MANIFEST_NAME).is_file() and empirical_run_manifest(run) is not None:
        return (f"--train {value!r} is the results table of a kfm sample --field empirical run (its samples, not "
                f"training items): pass its run folder {str(run)!r} as --train, which gives the items its field "
                "was made of")
    beside = (run / MANIFEST_NAME).is_file()
    where = f"; its run folder {str(run)!r} goes to" if beside else "; it, or its run folder, goes to"
    return (f"--train {value!r} is the results table of a kfm sample run (samples, not training items{where} "
            f"kfm memorization --samples): {_PASS_THE_ITEMS}")


def float_items(rows):
    """:func:`kinetic_fm.data.digest.float_items` (imported here on first use: the command line
    loads this module at start)."""
    from ..data.digest import float_items as as_float

    return as_float(rows)


def items_digest(rows) -> str:
    """The sha256 of :func:`float_items`' bytes: a ``kfm sample --field empirical`` run's identity."""
    from ..data.digest import tensor_sha256

    return tensor_sha256(rows)


def empirical_run_manifest(path: str | os.PathLike) -> RunManifest | None:
    """A ``kfm sample --field empirical`` run folder's manifest, when ``path`` holds one that records
    where its training items came from; else None (no run, another kind of run, another format).
    A damaged manifest is refused naming it, as --train's (every caller reads ``path`` as --train; it
    read as another kind of run: "samples, not training items")."""
    from ..runs.manifest import DamagedManifestError, read_manifest

    try:
        manifest = read_manifest(path)
    except DamagedManifestError as err:
        raise damaged_manifest("--train", path, err) from None
    except (OSError, ValueError):
        return None
    train = manifest.runtime.get("train")
    if manifest.identity.get("field") != "empirical" or not isinstance(train, dict) or not train.get("source"):
        return None
    return manifest


def damaged_manifest(flag: str, run, err) -> ValueError:
    """The refusal of ``run`` (``flag``'s value), whose manifest.json is damaged (``err``, a
    DamagedManifestError), in the words of the flag's other refusals of a run folder: "--train RUN: its
    manifest.json is not valid JSON (...); was it edited or cut short? Put back a good copy of it, ..."."""
    return ValueError(" ".join(part for part in (f"{flag} {run}: its {MANIFEST_NAME}{err.fault}", err.way_on) if part))


def _empirical_training_rows(run, manifest, progress: bool):
    """The items a ``kfm sample --field empirical`` run sampled the exact field of, read again from
    the source, key and subset its manifest records and checked against their sha256 (its identity):
    ``(items, files, positions, mean)`` as :func:`load_rows` returns them for that source, positions
    the items' rows in the whole file or split (for a subset, the rows it drew)."""
    import numpy as np

    record, identity = manifest.runtime["train"], manifest.identity
    source, key, n, seed = record["source"], record.get("key"), record.get("n"), record.get("seed", 0)
    # the seed of a subset, or of a 2-D sampler's points (its only draw without n)
    drawn = [f"{name}{value}" for name, value, shown in (("key ", key, key is not None), ("n=", n, n is not None),
                                                          ("seed=", seed, n is not None or seed != 0)) if shown]
    subset = f" ({', '.join(drawn)})" if drawn else ""
    try:
        # a run made before a results table was refused as --train: its identity checks the rows below
        rows, files, items, mean = _read_rows("--train", source, key, progress, specs=True, n=n, seed=seed,
                                              recorded=True)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--train {run} was sampled from {source}{subset}, which is not found from here: "
                                f"{err}") from None
    rows = grey_as_recorded(rows, identity.get("train_shape"), source)
    rows = float_items(rows)
    if items_digest(rows) != identity.get("train_sha256"):
        raise ValueError(f"--train {str(run)!r}: {source}{subset} now loads other items than the run sampled the "
                         f"field of ({str(rows.dtype).removeprefix('torch.')} {list(rows.shape)}; the run's: "
                         f"{identity.get('train_dtype')} {identity.get('train_shape')}): the data changed since the "
                         "run")
    print(f"--train {run}: the {rows.shape[0]} items its field was made of ({', '.join([source, *drawn])})")
    return rows, files, np.arange(rows.shape[0]) if items is None else items, mean


def grey_as_recorded(items, recorded, source: str):
    """``items`` (N, 1, H, W) loaded from ``source`` where :func:`grey_loads_as_one_channel`, as the
    (N, 3, H, W) a run recorded (``recorded``, its items' shape; None: no run) where it was made before
    such a source loaded a grey folder as one channel: the three equal channels it trained on, so that
    the run is still read; else unchanged."""
    if not (isinstance(recorded, list) and isinstance(source, str) and grey_loads_as_one_channel(source)):
        return items
    if items.dim() == 4 and items.shape[1] == 1 and recorded == [items.shape[0], 3, *items.shape[2:]]:
        return items.repeat(1, 3, 1, 1)
    return items


def _net_folder_kind(path) -> str:
    """What a folder holding a trained net's config.json is, in words: a kfm reproduce net's
    (models/general-*, memorizer-*, which record their training items) or a kfm train run folder."""
    from ..studies.assets import TRAINING_ITEMS

    return "a kfm reproduce net's folder" if (path / TRAINING_ITEMS).is_file() else "a kfm train run folder"


def image_folder_given(value: str) -> bool:
    """Whether ``value``, as ``--train``, is read as a folder or .zip of images given by its path: not a
    data spec, nor a kfm train or kfm sample run folder."""
    from pathlib import Path

    path = Path(value)
    run = path.is_dir() and ((path / TRAIN_CONFIG_NAME).is_file() or (path / MANIFEST_NAME).is_file())
    return is_folder_or_zip_path(value) and not run


def grey_loads_as_one_channel(value: str) -> bool:
    """Whether :func:`load_rows` reads ``value`` (as --train, or as --samples) with one channel where
    every image is grey (R = G = B) and three otherwise: a ``folder:`` spec, or a folder or .zip of images
    given by its path (:func:`image_folder_given`); not a run folder, an array, nor another spec."""
    return (is_spec(value, True) and value.startswith("folder:")) or image_folder_given(value)


def is_folder_or_zip_path(value: str, specs: bool = True) -> bool:
    """Whether ``value``, given by its path, names a folder or a .zip file: not a data spec (when
    ``specs``, as :func:`is_spec`), whose PATH may end in .zip too (celeba:/x.zip). What the folder
    holds is not asked: a kfm run folder is one (:func:`image_folder_given` leaves those out)."""
    from pathlib import Path

    path = Path(value)
    return not is_spec(value, specs) and (path.is_dir() or path.suffix.lower() == ".zip")


def _spec_item_files(spec: str, data) -> list[str] | None:
    """The image file of each item a ``folder:`` or ``celeba:`` spec loaded (named as for a folder
    of images given directly), or a ``cifar10:`` spec loaded from an image tree (``train/cat/…``),
    else None: the items of digits, mnist and CIFAR-10's python batches have no name beyond their
    index in the split, which the table's ``nearest`` column already is."""
    from ..data.cifar10 import item_files
    from ..data.images import image_names
    from ..data.registry import parse_spec

    name, path = parse_spec(spec)
    if name == "cifar10":
        return item_files(path, "train", data.indices)   # the split load_dataset reads
    if name not in ("folder", "celeba"):  # both read every image file of PATH, in image_names' order
        return None
    files = image_names(path)
    return [files[i] for i in data.indices.tolist()]


def _training_rows(run, progress: bool):
    """The items a run folder's net trained on, loaded again and checked against the recorded
    shape: for ``kfm train``, the data spec, ``--n`` and ``--seed`` its config.json records; for a
    ``kfm reproduce`` net (``models/general-*``, ``models/memorizer-*``), the data spec, load and
    rows its training_items.json records. Returns ``(items, files, positions, mean)``: the items,
    their image files (None where the data has none), their positions in the split the spec loads
    whole (None for 2-D points) and the mean image a centred set subtracted (else None)."""
    from pathlib import Path

    from ..data.registry import load_dataset, parse_spec
    from ..data.subset import dataset_rows
    from ..models.train import DATA_DIGEST
    from ..studies.assets import TRAINING_ITEMS

    spec, n, seed, rows, config = training_record(run)
    try:
        data = load_dataset(spec, n=n, seed=seed, progress=progress)
    except FileNotFoundError as err:
        path = parse_spec(spec)[1]   # it parsed: the loader did not find its path
        hint = ("; it is a relative path, which a run folder written before paths were recorded absolute "
                "leaves to be read from the folder the training ran in: run from there"
                if path and not Path(path).is_absolute() else "")
        raise FileNotFoundError(f"--train {run} trained on {spec!r}, which is not found from here ({Path.cwd()}): "
                                f"{err}{hint}") from None
    items, files, positions = dataset_rows(data), _spec_item_files(spec, data), data.indices
    loads = f"{spec!r}" + ("" if n is None else f" (n={n}, seed={seed})")  # n None: the whole split
    if rows is not None:
        if not all(isinstance(i, int) and 0 <= i < len(items) for i in rows):
            raise ValueError(f"--train {run}: its {TRAINING_ITEMS} names rows outside the {len(items)} items "
                             f"{loads} loads: the data changed since")
        items = items[rows]
        files = None if files is None else [files[i] for i in rows]
        positions = None if positions is None else positions[rows]
    items = grey_as_recorded(items, config.get("data_shape"), spec)
    if list(items.shape) != config.get("data_shape"):
        raise ValueError(f"--train {run}: {loads} now loads {list(items.shape)}, but the "
                         f"run trained on {config.get('data_shape')}: the data changed since")
    # a kfm reproduce net's config.json records the sha256 of the rows it trained on (training_record keeps it)
    _check_digest(run, items, config.get(DATA_DIGEST), loads)
    subset = "" if rows is None else f", {len(rows)} rows of them"
    print(f"--train {run}: the {items.shape[0]} items it trained on ({spec}"
          + ("" if n is None else f", n={n}, seed={seed}") + f"{subset})")
    return items, files, None if positions is None else positions.numpy(), getattr(data, "mean", None)


def _check_digest(run, items, digest, loads: str) -> None:
    """ValueError naming --train ``run``, the spec and ``n``/``seed`` it loads (``loads``) and the
    remedy when ``items`` are not the values its config.json's ``data_sha256`` (``digest``)
    records: a folder's files changed since the run, so the same spec and subset redraw other
    items. Without a record (a run from before it was written) nothing is checked and nothing said:
    the shape check above is all such a run had."""
    import torch

    from ..data.digest import float_items, tensor_sha256

    if not isinstance(digest, dict) or not isinstance(digest.get("data"), str):
        return
    dtype = getattr(torch, str(digest.get("dtype")), None)
    values = float_items(items)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:  # the values as the net trained on them
        values = values.to(dtype)
    now = tensor_sha256(values)
    if now != digest["data"]:
        raise ValueError(f"--train {str(run)!r}: {loads} now loads other items than the run trained on (the same "
                         f"shape {list(items.shape)}, other values: sha256 {now[:12]}…, the run's "
                         f"{digest['data'][:12]}…): its files changed since the run (images added, removed or "
                         "replaced, or listed otherwise by this version, which redraws an --n subset from other "
                         "files); restore the data the run trained on, or pass the training items themselves")


def training_record(run):
    """``(spec, n, seed, rows, record)`` of the items a run folder's net trained on, as its
    training_items.json (a kfm reproduce net) or config.json (kfm train) records them (``rows``
    None for the latter), and the record read (for a kfm reproduce net, training_items.json's with
    config.json's ``data_sha256`` of those rows, where training wrote one); ValueError naming
    --train when neither holds them."""
    import json

    from ..models.run_config import DamagedTrainConfigError, read_train_config
    from ..models.train import DATA_DIGEST
    from ..studies.assets import TRAINING_ITEMS

    config, rows = None, None
    try:  # None: another program's config.json, which names no data spec
        config = read_train_config(run / TRAIN_CONFIG_NAME)
    except DamagedTrainConfigError as err:  # "names no data spec" hid what is wrong with it
        raise ValueError(f"--train {run}: its {TRAIN_CONFIG_NAME} {err.fault} Put back a good copy of it, or pass "
                         "the training items themselves") from None
    try:
        if (run / TRAINING_ITEMS).is_file():
            digest = config.get(DATA_DIGEST) if isinstance(config, dict) else None
            config = json.loads((run / TRAINING_ITEMS).read_text(encoding="utf-8"))
            spec, n, seed, rows = config["data"], config["n"], config["seed"], config["rows"]
            config = {**config, DATA_DIGEST: digest}   # of the rows it trained on (studies/assets.py)
        else:
            spec, n, seed = config["info"]["data"], config["info"].get("n"), config["train"]["seed"]
    except (ValueError, KeyError, TypeError):
        study = isinstance(config, dict) and isinstance(config.get("info"), dict) and "study" in config["info"]
        raise ValueError(f"--train {run}: " + (
            f"this kfm reproduce net records no training items ({TRAINING_ITEMS}, written since this "
            "version); run the same kfm reproduce command on its folder again (it trains nothing) to write "
            "it, or pass the training items themselves" if study else
            f"its {TRAIN_CONFIG_NAME} names no data spec (kfm train writes one); pass the training items "
            "themselves")) from None
    return spec, n, seed, rows, config
