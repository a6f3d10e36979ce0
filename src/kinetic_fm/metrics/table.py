"""One per-sample table per run: KPE, early/late energy, memorization, support and semantic
scores joined on the sample seed, so any study is a group-by away.

Example::

    res = kfm.sample(field, seeds=range(1000), shape=(2,), steps=100)   # to_frame() has `seed`
    table = per_sample_table(res, kfm.memorization(res.x, train),
                             local_support(res.x, train), kde_log_density(res.x, train))
    save_table(table, "run/samples.parquet")
    table.groupby(pd.qcut(table.kpe, 5)).knn_log_density_k5.mean()
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from ..checks import as_scalar, is_integer

if TYPE_CHECKING:  # pragma: no cover - pandas is imported where a table is built
    import pandas as pd

__all__ = ["per_sample_table", "save_table", "load_table"]


def _frame(part: Any, label: str) -> "pd.DataFrame":
    import pandas as pd

    if isinstance(part, pd.DataFrame):
        return _numbered(part)
    if hasattr(part, "to_frame"):
        frame = part.to_frame()
        if isinstance(frame, pd.Series):  # a Series' to_frame
            frame = frame.to_frame()
        return _numbered(frame)
    if isinstance(part, Mapping):
        cols = {}
        indexed: tuple[str, Any] | None = None  # the first pandas Series: (name, its index)
        for name, values in part.items():
            if isinstance(values, pd.Series):
                # columns pair row by row; pandas would align Series on their labels instead
                if indexed is not None and not values.index.equals(indexed[1]):
                    raise ValueError(f"{label}: columns {indexed[0]!r} and {str(name)!r} are pandas Series with "
                                     "different indexes, and a mapping's columns pair row by row: align them "
                                     "first or pass .to_numpy() of each if the order is right")
                indexed = indexed or (str(name), values.index)
                values = values.reset_index(drop=True)
            if hasattr(values, "detach"):
                values = values.detach().cpu().numpy()
            shape = getattr(values, "shape", None)
            if shape is None and not isinstance(values, (str, bytes)) and hasattr(values, "__len__"):
                shape = (len(values),)
            if shape is None or len(shape) != 1:
                raise ValueError(f"{label}: column {name!r} must hold (n,) values, one per sample; "
                                 f"got {'shape ' + str(tuple(shape)) if shape is not None else type(values).__name__}")
            cols[str(name)] = values
        return pd.DataFrame(cols)
    raise TypeError(f"{label}: expected a DataFrame, an object with to_frame() (SampleResult, "
                    f"MemorizationReport, LocalSupport, ...) or a mapping of columns; "
                    f"got {type(part).__name__}")


def _numbered(frame: "pd.DataFrame") -> "pd.DataFrame":
    """``frame`` numbered from 0; an index named ``seed`` (``set_index("seed")``, a groupby over
    seeds) becomes its ``seed`` column, joined by, where it has none (it was dropped, and the
    rows paired by position)."""
    if frame.index.name == "seed" and "seed" not in frame.columns:
        return frame.reset_index()
    return frame.reset_index(drop=True)


def _seed_list(seeds: Any) -> list[int]:
    """``seeds`` as a list of Python ints; ValueError naming ``seeds`` unless it is a sequence of
    integers (NumPy integers and 0-d integer tensors count; 2.5, '3' and True do not: a seed is
    joined on, so a truncated one would silently match the wrong row)."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a sequence of integers, got {seeds!r}")
    values = [as_scalar(s) for s in seeds]
    bad = [v for v in values if not is_integer(v)]
    if bad:
        raise ValueError(f"seeds must be integers, got {bad[0]!r}"
                         f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}")
    return [int(v) for v in values]


def _check_seed_column(column: Any, label: str) -> None:
    """A part's own ``seed`` column must hold integers (integral floats, e.g. after a NaN-filled
    join, are accepted); 2.7 would be joined on as a seed that no sample has."""
    import numpy as np

    values = column.to_numpy()
    kind = values.dtype.kind
    if kind in "iu":
        return
    if kind == "f" and bool(np.all(np.isfinite(values) & (values == np.round(values)))):
        return
    if kind == "O" and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return
    bad = [v for v in values.tolist() if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and np.isfinite(v) and float(v).is_integer())]
    raise ValueError(f"{label} has a 'seed' column that is not integers (e.g. {bad[:3]!r}); seeds are joined on")


def _named_by_space(frames: list, spaces: list) -> list:
    """``frames`` with the columns of each part that records its feature space (``space``, a string:
    MemorizationReport, LocalSupport, KDELogDensity) led by ``<space>_`` where they share a column
    with a part of another recorded space, so that measures of one sample in two spaces join side
    by side. Clashes within one space, or with a part of no recorded space, are left to be refused."""
    spaces = [space if isinstance(space, str) else None for space in spaces]
    renamed: set[int] = set()
    for i, j in itertools.combinations(range(len(frames)), 2):
        if None not in (spaces[i], spaces[j]) and spaces[i] != spaces[j] and \
                (set(frames[i].columns) & set(frames[j].columns)) - {"seed"}:
            renamed |= {i, j}
    return [frame.rename(columns=lambda c, s=spaces[i]: c if c == "seed" else f"{s}_{c}") if i in renamed else frame
            for i, frame in enumerate(frames)]


def _duplicates(values: Any) -> list:
    import pandas as pd

    s = pd.Series(values)
    return s[s.duplicated()].unique().tolist()


def per_sample_table(*parts: Any, seeds: Sequence[int] | None = None,
                     how: Literal["exact", "inner", "outer"] = "exact") -> "pd.DataFrame":
    """Join per-sample parts on ``seed`` into one pandas DataFrame.

    Args:
        parts: DataFrames, objects with ``to_frame()`` (``SampleResult``, ``MemorizationReport``,
            ``LocalSupport``, ``KDELogDensity``, ``ClassifierMargin``, ``ClipScores``,
            ``PrecisionRecall``) or mappings ``column -> (n,) values`` (row by row: pandas
            Series of a mapping pair by position, and Series with different indexes are refused
            rather than aligned on their labels). A part with a ``seed``
            column joins by it; a part without one is aligned row by row with ``seeds`` (or, when
            ``seeds`` is None, with the first part that has a ``seed`` column) and must have the
            same length. An index named ``seed`` counts as the part's ``seed`` column.
        seeds: the seed of each row of the parts that have no ``seed`` column: a sequence of
            integers (NumPy integers, 0-d or 1-D integer tensors count; fractional values,
            strings and bools are refused rather than truncated).
        how: ``"exact"`` (every part must hold exactly the same seeds, else ValueError),
            ``"inner"`` (keep seeds present everywhere) or ``"outer"`` (keep all, NaN-filled).

    Returns:
        DataFrame with ``seed`` first, then every part's columns in order, rows in the first
        part's order. Column names must be unique across parts (ValueError names the clash;
        rename with ``frame.add_prefix(...)``), but for parts that record the feature space they
        were measured in (``MemorizationReport``, ``LocalSupport``, ``KDELogDensity``): two such
        parts of different spaces that share a column both have every column led by their space's
        name (``pixels_ratio`` beside ``features_ratio``).
    """
    if not parts:
        raise ValueError("per_sample_table needs at least one part")
    if how not in ("exact", "inner", "outer"):
        raise ValueError(f"how must be 'exact', 'inner' or 'outer', got {how!r}")
    frames = [_frame(p, f"part {i} ({type(p).__name__})") for i, p in enumerate(parts)]
    labels = [f"part {i} ({type(p).__name__})" for i, p in enumerate(parts)]
    frames = _named_by_space(frames, [getattr(p, "space", None) for p in parts])

    if seeds is None:
        seeds = next((f["seed"].tolist() for f in frames if "seed" in f.columns), None)
    else:
        seeds = _seed_list(seeds)
        if all("seed" in f.columns for f in frames):  # it was dropped without a word, even when it disagreed
            raise ValueError("seeds= labels the rows of parts without a 'seed' column, and every part has one "
                             "(a SampleResult sampled with seeds carries them) and joins by it: drop seeds=")
    owner: dict[str, str] = {}
    for frame, label in zip(frames, labels):
        if "seed" not in frame.columns:
            if seeds is None:
                raise ValueError(f"{label} has no 'seed' column and no seeds are known: pass "
                                 "seeds=... or a part with a 'seed' column (e.g. a SampleResult "
                                 "sampled with seeds)")
            if len(frame) != len(seeds):
                raise ValueError(f"{label} has {len(frame)} rows but {len(seeds)} seeds are "
                                 "known; parts without a 'seed' column must align row by row")
            frame.insert(0, "seed", list(seeds))
        _check_seed_column(frame["seed"], label)
        dup = _duplicates(frame["seed"])
        if dup:
            raise ValueError(f"{label} has duplicate seeds {dup[:5]}{' ...' if len(dup) > 5 else ''}")
        for col in frame.columns:
            if col == "seed":
                continue
            if col in owner:
                raise ValueError(f"column {col!r} appears in {owner[col]} and {label}; rename one "
                                 "(e.g. frame.add_prefix('x_'))")
            owner[col] = label

    if how == "exact":
        first = set(frames[0]["seed"].tolist())
        for frame, label in zip(frames[1:], labels[1:]):
            other = set(frame["seed"].tolist())
            if other != first:
                missing, extra = sorted(first - other), sorted(other - first)
                raise ValueError(
                    f"seeds differ between {labels[0]} and {label}: {len(missing)} missing "
                    f"{missing[:5]}, {len(extra)} extra {extra[:5]} (pass how='inner' or 'outer' "
                    "to join anyway)")
    table = frames[0]
    for frame in frames[1:]:
        table = table.merge(frame, on="seed", how="left" if how == "exact" else how,
                            validate="one_to_one", sort=False)
    if how == "outer":
        # pandas sorts an outer merge's keys whatever sort= says: restore the first part's order,
        # then the seeds only later parts hold, in the order they first appear
        order: dict = {}
        for frame in frames:
            for seed in frame["seed"].tolist():
                order.setdefault(seed, len(order))
        table = table.sort_values("seed", key=lambda column: column.map(order), kind="stable")
    return table[["seed", *(c for c in table.columns if c != "seed")]].reset_index(drop=True)


def save_table(table: Any, path: str | Path) -> Path:
    """Write ``table``, a pandas DataFrame, to Parquet (pyarrow) atomically (a killed process
    leaves the old file or none, never half a table), creating parent folders; returns the path.

    ``path`` must end in ``.parquet``: a ``.csv`` path got Parquet bytes. TypeError for a table
    that is not a DataFrame, IsADirectoryError for a path that is a folder."""
    import pandas as pd

    from ..runs.atomic import atomic_write

    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame (e.g. per_sample_table's), got {type(table).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"path must end in .parquet (save_table writes Parquet; for CSV use "
                         f"table.to_csv(path, index=False)), got {str(path)!r}")
    if path.is_dir():  # the rename onto it failed naming the temporary
        raise IsADirectoryError(f"path is a folder, not a file: {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: table.to_parquet(tmp, engine="pyarrow", index=False))


def load_table(path: str | Path) -> "pd.DataFrame":
    """Read a table written by :func:`save_table`."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no table at {path}")
    return pd.read_parquet(path, engine="pyarrow")
