"""Read a 2-D (or higher) numeric array from a file into a torch tensor: .npy, .npz, .pt, .parquet.

Used by command-line metrics; the heavy readers are imported only for the format at hand.
"""
from __future__ import annotations

from pathlib import Path

import torch

FORMATS = (".npy", ".npz", ".pt", ".pth", ".parquet")
_NAME_ONE = "name one with a key (kfm memorization: --key or --train-key)"


def load_array(path: str | Path, key: str | None = None) -> torch.Tensor:
    """The array stored in ``path`` as a tensor of shape (n, ...).

    * ``.npy``: the array. ``.npz``: the array named ``key``, else the only one (an archive of
      several, e.g. images and labels, must be told which: guessing could audit the labels).
    * ``.pt`` / ``.pth``: a tensor, or the tensor named ``key`` (else the only one) in a dict;
      loaded with ``weights_only=True`` (no arbitrary code runs).
    * ``.parquet``: the list/array column ``key``, else the only list column, else all numeric
      columns side by side as (rows, columns).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: unsupported format {suffix!r}; use one of {', '.join(FORMATS)}")
    if suffix in (".npy", ".npz"):
        import numpy as np

        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if not names:
                    raise ValueError(f"{path}: the .npz archive is empty")
                if key is not None and key not in names:
                    raise ValueError(f"{path}: no array named {key!r}; it holds {names}")
                if key is None and len(names) > 1:
                    raise ValueError(f"{path}: an archive of {len(names)} arrays {names}; {_NAME_ONE}")
                data = archive[key if key is not None else names[0]]
        else:
            if key is not None:
                raise ValueError(f"{path}: a .npy file holds one array; key={key!r} does not apply")
            data = np.load(path, allow_pickle=False)
        if not data.dtype.isnative:  # e.g. big-endian files written elsewhere; torch needs native order
            data = data.astype(data.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(data))
    if suffix in (".pt", ".pth"):
        from ..models.checkpoint import load_state

        obj = load_state(path)  # weights only: a file holding code is refused, never run
        if isinstance(obj, dict):
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if key is not None:
                if key not in tensors:
                    raise ValueError(f"{path}: no tensor named {key!r}; it holds {sorted(tensors)}")
                obj = tensors[key]
            elif len(tensors) == 1:
                obj = next(iter(tensors.values()))
            else:
                raise ValueError(f"{path}: a dict of {len(tensors)} tensors {sorted(tensors)}; {_NAME_ONE}")
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{path}: expected a tensor, found {type(obj).__name__}")
        return obj
    return _load_parquet(path, key)


def _load_parquet(path: Path, key: str | None) -> torch.Tensor:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.num_rows == 0:
        raise ValueError(f"{path}: the table has no rows")
    list_columns = [f.name for f in table.schema
                    if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                    or pa.types.is_fixed_size_list(f.type)]
    if key is not None or list_columns:
        name = key if key is not None else list_columns[0]
        if key is None and len(list_columns) > 1:
            raise ValueError(f"{path}: several list columns {list_columns}; {_NAME_ONE}")
        if name not in table.column_names:
            raise ValueError(f"{path}: no column named {name!r}; it holds {table.column_names}")
        column = table.column(name).combine_chunks()
        if column.null_count:
            raise ValueError(f"{path}: column {name!r} has {column.null_count} null rows")
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                or pa.types.is_fixed_size_list(column.type)):
            return torch.from_numpy(column.to_numpy(zero_copy_only=False).astype(np.float64)[:, None])
        lengths = np.asarray(column.value_lengths())
        if lengths.min() != lengths.max():
            raise ValueError(f"{path}: rows of column {name!r} have different lengths ({lengths.min()}..{lengths.max()})")
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(np.array(flat.reshape(len(column), -1)))  # a writable copy
    numeric = [f.name for f in table.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    if not numeric:
        raise ValueError(f"{path}: no numeric or list columns")
    return torch.from_numpy(np.column_stack([table.column(c).to_numpy() for c in numeric]).astype(np.float64))
