"""Read a 2-D (or higher) numeric array from a file into a torch tensor: .npy, .npz, .pt, .parquet.

The rows a ``kfm`` command's input flag names when it is an array file (``kfm memorization
--samples`` / ``--train``, ``kfm sample --train``); the heavy readers are imported only for the
format at hand. ``NAME_ONE`` and ``NAME_A_COLUMN`` end the errors and the warning that ask for a
key, so a command can put its own flag for the key in their place.
"""
from __future__ import annotations

import math
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from ..checks import torch_readable, warn_of_label_columns

__all__ = ["ARRAY_FORMATS", "NAME_A_COLUMN", "NAME_ONE", "load_array"]

ARRAY_FORMATS = (".npy", ".npz", ".pt", ".pth", ".parquet")  # the suffixes load_array reads (any case)
NAME_ONE = "name one with a key"  # the kfm commands put their flag for it in place of "a key"
NAME_A_COLUMN = "name one column with a key"  # in a warning; the kfm commands put their flag for it
_UNREADABLE = (ValueError, EOFError, zipfile.BadZipFile, zlib.error)  # what np.load raises on a damaged file


def load_array(path: str | Path, key: str | None = None) -> torch.Tensor:
    """The array stored in ``path`` as a tensor of shape (n, ...).

    * ``.npy``: the array. ``.npz``: the array named ``key``, else the only one (an archive of
      several, e.g. images and labels, must be told which: guessing could audit the labels).
    * ``.pt`` / ``.pth``: a tensor (no ``key``), or the tensor named ``key`` (else the only one) in a dict;
      loaded with ``weights_only=True`` (no arbitrary code runs).
    * ``.parquet``: the list/array column ``key`` (lists nested to any depth, e.g. images, are
      flattened row by row, and restored to one sample's shape when the column records it, as a
      ``kfm sample`` run's results.parquet does), else the only list column (or, among several,
      the only one recording a sample shape: x beside ``--profile``'s columns), else all numeric
      columns side by side as (rows, columns); where other columns are left out, a warning names
      them and the columns taken (the first 5, then how many more), and a column named like a
      class label (``label(s)``, ``y``, ``target(s)``, ``class(es)``, ``class_id``, ``category``,
      any case) holding whole numbers is warned of: it is read as one more feature (a table of
      features alone, and ``x`` beside ``y``, are read without a word).

    Each array comes back in the dtype it is stored in, whatever the file's other arrays hold
    (float64 items beside float32 labels stay float64; float16 and bfloat16 stay as they are;
    nothing is cast to torch's default dtype), except numeric Parquet columns read side by side,
    which come back as float64 (exact for any mix of their integer and float types up to 2**53).

    Raises ValueError naming the file when it is damaged, holds no real numbers (strings,
    complex), holds a single value instead of rows, or is ambiguous (see above).
    """
    given, path = path, Path(path)
    if not path.is_file():  # the path as given: Path drops "./", and "a:b" read as a data spec's
        raise FileNotFoundError(f"no such file: {given}")
    suffix = path.suffix.lower()
    if suffix not in ARRAY_FORMATS:
        raise ValueError(f"{path}: unsupported format {suffix!r}; use one of {', '.join(ARRAY_FORMATS)}")
    if suffix in (".npy", ".npz"):
        if suffix == ".npy" and key is not None:
            raise ValueError(f"{path}: a .npy file holds one array; key={key!r} does not apply")
        return _to_tensor(path, _read_numpy(path, key))
    if suffix in (".pt", ".pth"):
        from ..models.checkpoint import load_state

        obj = load_state(path, holds="array")  # weights only: a file holding code is refused, never run
        if isinstance(obj, dict):
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if key is not None:
                if key in obj and key not in tensors:
                    entry = obj[key]
                    what = (f"a {type(entry).__name__} of {len(entry)} items"
                            if isinstance(entry, (list, tuple)) else f"a {type(entry).__name__}")
                    stacked = (": torch.cat (or torch.stack) them into one" if isinstance(entry, (list, tuple))
                               and entry and all(isinstance(e, torch.Tensor) for e in entry) else "")
                    raise ValueError(f"{path}: its entry {key!r} is {what}, not a tensor{stacked}; "
                                     f"its tensors are {sorted(tensors)}")
                if key not in tensors:
                    raise ValueError(f"{path}: no tensor named {key!r}; it holds {sorted(tensors)}")
                obj = tensors[key]
            elif len(tensors) == 1:
                obj = next(iter(tensors.values()))
            else:
                raise ValueError(f"{path}: a dict of {len(tensors)} tensors {sorted(tensors)}; {NAME_ONE}")
        elif key is not None and isinstance(obj, torch.Tensor):  # as for .npy: the key would be ignored
            raise ValueError(f"{path}: holds one tensor (not a dict), so key={key!r} does not apply")
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor, found {type(obj).__name__}")
        if obj.dim() == 0:
            raise ValueError(f"{path}: holds a single value (shape ()); needs shape (n, ...)")
        return obj
    return _load_parquet(path, key)


def _read_numpy(path: Path, key: str | None):
    """The array in a .npy file, or the one named ``key`` (else the only one) in a .npz archive."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except _UNREADABLE as err:
        kind = "a valid .npz archive" if path.suffix.lower() == ".npz" else "a readable .npy file"
        raise ValueError(f"{path}: not {kind} ({err})") from None
    if isinstance(loaded, np.ndarray):
        if key is not None:  # an .npz name on a plain .npy file: the key would be silently ignored
            raise ValueError(f"{path}: holds one array (a .npy file), so key={key!r} does not apply")
        return loaded
    with loaded as archive:
        names = list(archive.files)
        if not names:
            raise ValueError(f"{path}: the .npz archive is empty")
        if key is not None and key not in names:
            raise ValueError(f"{path}: no array named {key!r}; it holds {names}")
        if key is None and len(names) > 1:
            raise ValueError(f"{path}: an archive of {len(names)} arrays {names}; {NAME_ONE}")
        name = key if key is not None else names[0]
        try:
            data = archive[name]
        except _UNREADABLE as err:
            raise ValueError(f"{path}: array {name!r} cannot be read ({err})") from None
    if not isinstance(data, np.ndarray):  # a member without the .npy header comes back as bytes
        raise ValueError(f"{path}: {name!r} is not a .npy array")
    return data


def _to_tensor(path: Path, data) -> torch.Tensor:
    """The NumPy array ``data`` read from ``path`` as a tensor of rows; ValueError unless it holds real numbers."""
    import numpy as np

    if data.ndim == 0:
        raise ValueError(f"{path}: holds a single value (shape ()); needs shape (n, ...)")
    if data.dtype.kind not in "biuf":  # strings, objects, complex, dates: nothing to measure distances on
        raise ValueError(f"{path}: holds {data.dtype} values, need real numbers")
    if data.dtype.kind == "f" and data.dtype.itemsize > 8:
        data = data.astype(np.float64)  # long double: torch has no such type
    data = np.ascontiguousarray(torch_readable(data))  # e.g. big-endian files written elsewhere
    return torch.from_numpy(data if data.flags.writeable else data.copy())  # Arrow's buffers are read-only


def _load_parquet(path: Path, key: str | None) -> torch.Tensor:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    if table.num_rows == 0:
        raise ValueError(f"{path}: the table has no rows")
    list_columns = [f.name for f in table.schema if _is_list(f.type)]
    if key is None and len(list_columns) > 1:
        from ..runs.shards import SAMPLE_SHAPE_KEY

        # a kfm sample run's table: the samples x beside --profile's energy increments (and times)
        shaped = [f.name for f in table.schema if f.name in list_columns and SAMPLE_SHAPE_KEY in (f.metadata or {})]
        if len(shaped) != 1:
            raise ValueError(f"{path}: several list columns {list_columns}; {NAME_ONE}")
        list_columns = shaped
    if key is not None or list_columns:
        name = key if key is not None else list_columns[0]
        if name not in table.column_names:
            raise ValueError(f"{path}: no column named {name!r}; it holds {table.column_names}")
        column = table.column(name).combine_chunks()
        if column.null_count:
            raise ValueError(f"{path}: column {name!r} has {column.null_count} null rows")
        if _is_list(column.type):
            return _to_tensor(path, _sample_shaped(path, table.schema.field(name), _list_rows(path, name, column)))
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise ValueError(f"{path}: column {name!r} holds {column.type}, need numbers or lists of numbers")
        return _to_tensor(path, column.to_numpy(zero_copy_only=False).astype(np.float64)[:, None])
    if {"seed", "kpe", "kpe_raw"} <= set(table.column_names):  # its energies are no features
        raise ValueError(f"{path}: a kfm sample results table without its samples' 'x' column "
                         "(was the run made with --no-save-x?)")
    # a DataFrame saved with an index other than 0..n−1 (after a filter or a shuffle) keeps it as a
    # column that pandas reads back as the index: row labels, no feature (they became one)
    index = [name for name in ((table.schema.pandas_metadata or {}).get("index_columns") or [])
             if isinstance(name, str)]
    numeric = [f.name for f in table.schema
               if f.name not in index and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if not numeric:
        raise ValueError(f"{path}: no numeric or list columns")
    left_out = [name for name in table.column_names if name not in numeric and name not in index]
    if left_out:  # e.g. file names beside the features: say so, or a later size mismatch is a puzzle
        # the columns taken by name: a label or seed column among them is read as a feature
        warnings.warn(f"{path}: read the {len(numeric)} numeric columns {_first_few(numeric)} as features; "
                      f"left out {_first_few(left_out)} (not numbers); a label or seed column among them "
                      f"counts as a feature: {NAME_A_COLUMN} to read it alone (no option picks several: save "
                      "a file holding only the feature columns)", stacklevel=3)
    columns = {name: table.column(name).to_numpy() for name in numeric}
    # a label beside the features: (rows, D + 1), its class gaps in every distance
    warn_of_label_columns(str(path), columns, table.column_names,
                          lambda labels: f"save the table without it (frame.drop(columns={labels}).to_parquet(...)): "
                                         "no option drops a column here")
    return _to_tensor(path, np.column_stack(list(columns.values())).astype(np.float64))


def _first_few(names: list[str], few: int = 5) -> str:
    """``names`` as a list, only its first ``few`` then "and N more" when longer."""
    if len(names) <= few:
        return str(names)
    return f"{names[:few]} and {len(names) - few} more"


def _is_list(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _sample_shaped(path: Path, field, rows):
    """(rows, values) as (rows, *shape) when the column records one sample's shape (the samples
    column of a ``kfm sample`` run's results.parquet); unchanged otherwise."""
    from ..runs.shards import recorded_sample_shape

    try:
        shape = recorded_sample_shape(field)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if shape is None:
        return rows
    size = math.prod(shape)
    if size != rows.shape[1]:
        raise ValueError(f"{path}: column {field.name!r} records samples of shape {list(shape)} "
                         f"({size} values) but its rows hold {rows.shape[1]}")
    return rows.reshape(rows.shape[0], *shape)


def _list_rows(path: Path, name: str, column):
    """A list column without null rows, its lists nested to any depth, as a (rows, values) array.

    Each level is unnested in turn while ``bounds`` follows where every row starts and ends, so a
    row of 3 lists of 1024 values (an image as Hugging Face's Array3D stores it) becomes 3072 values.
    Every row must hold the same number of values.
    """
    import numpy as np
    import pyarrow as pa

    bounds = np.arange(len(column) + 1)  # row i spans values[bounds[i]:bounds[i + 1]] at the current level
    values = column
    while _is_list(values.type):
        if values.null_count:  # the top level was checked by the caller
            raise ValueError(f"{path}: column {name!r} has null lists inside its rows")
        lengths = np.asarray(values.value_lengths(), dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(lengths)])[bounds]
        values = values.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise ValueError(f"{path}: column {name!r} holds lists of {values.type}, need numbers")
    sizes = np.diff(bounds)
    if sizes.min() != sizes.max():
        raise ValueError(f"{path}: rows of column {name!r} have different lengths ({sizes.min()}..{sizes.max()})")
    return values.to_numpy(zero_copy_only=False).reshape(len(column), int(sizes[0]))
