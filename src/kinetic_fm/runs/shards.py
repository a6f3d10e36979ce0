"""Per-sample results as Parquet shards: atomic writes, validation, and the verified merge.

A shard is one Parquet file under ``<run>/shards/`` holding the rows of a contiguous seed range
(see :class:`~kinetic_fm.runs.plan.ShardPlan`), with a ``seed`` int64 column in seed order, the
run id and its index in its schema metadata, and Parquet page checksums. It is written to a
temporary name and renamed into place; then a small receipt (``shard-….json``: run id, rows,
seeds, sha256 of the Parquet bytes) is written the same way. The receipt is the commit record:
a shard counts as complete only if its receipt exists and matches, its bytes hash to the recorded
sha256 (this catches corruption anywhere, the footer included), it reads back with verified
checksums, and it holds exactly its expected seeds. Anything else (truncated, corrupt, foreign,
killed between the two renames) is reported and redone on resume, never merged.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_write, atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from .manifest import RunManifest, read_manifest
from .plan import ShardPlan

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

SHARD_DIR = "shards"
RESULTS_NAME = "results.parquet"
SEED = "seed"
PROFILE = "profile"              # per-step applied-energy increments (kfm sample --profile)
TIMES = "times"                  # a dopri5 profile's per-sample step times
PROFILE_TIMES = "profile_times"  # the manifest's runtime key holding a fixed-step profile's grid
SAMPLES = "x"                    # the final samples, one flattened sample per row
# field metadata of a merged table's samples column: one sample's shape as a JSON list, so that a
# reader holding results.parquet alone (kfm memorization --samples) can restore the images
SAMPLE_SHAPE_KEY = b"kfm.sample_shape"
_RUN_ID_KEY = b"kfm.run_id"
_SHARD_KEY = b"kfm.shard"
# page checksums let a reader detect a damaged shard; dictionary encoding is left off because
# per-sample floats are all distinct: trying it made 50-row shards of 784-D samples 5x slower to
# write and larger (234 vs 157 KiB), for no gain on any column a run writes
_PARQUET_OPTIONS = {"write_page_checksum": True, "use_dictionary": False}


class IncompleteRunError(RuntimeError):
    """Some shards of a run are missing or invalid, so it cannot be merged."""


@dataclass(frozen=True)
class ShardStatus:
    """Outcome of checking one shard file: ``state`` is "complete", "missing" or "invalid"."""

    index: int
    path: Path
    state: str
    reason: str = ""

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def shard_path(run_dir: str | os.PathLike, plan: ShardPlan, index: int) -> Path:
    return Path(run_dir) / SHARD_DIR / plan.name(index)


def write_shard(run_dir: str | os.PathLike, manifest: RunManifest, index: int, table: pa.Table) -> Path:
    """Atomically write shard ``index`` of the run; ``table`` must hold exactly its seeds in order."""
    plan = manifest.plan
    expected = plan.seeds(index)
    if SEED not in table.column_names:
        raise ValueError(f"a shard table needs a {SEED!r} column; got columns {table.column_names}")
    seeds = table.column(SEED).to_numpy()
    if not np.array_equal(seeds, expected):
        raise ValueError(
            f"shard {index} must hold seeds {expected[0]}..{expected[-1]} in order; "
            f"got {len(seeds)} rows starting at {seeds[:1].tolist()}"
        )
    table = table.replace_schema_metadata({
        **(table.schema.metadata or {}),
        _RUN_ID_KEY: manifest.run_id.encode(),
        _SHARD_KEY: str(index).encode(),
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **_PARQUET_OPTIONS)
    data = sink.getvalue().to_pybytes()
    path = shard_path(run_dir, plan, index)
    atomic_write_bytes(path, data)
    receipt = {"run_id": manifest.run_id, "shard": index, "rows": len(expected),
               "first_seed": int(expected[0]), "last_seed": int(expected[-1]),
               "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_text(receipt_path(path), json.dumps(receipt, indent=1) + "\n")
    return path


def receipt_path(shard: Path) -> Path:
    """The commit record of a shard file: ``shard-….parquet`` -> ``shard-….json``."""
    return shard.with_suffix(".json")


def _load_shard(run_dir, manifest: RunManifest, index: int,
                columns: list[str] | None = None) -> tuple[ShardStatus, pa.Table | None]:
    """Check shard ``index`` and parse it: every column, or ``seed`` and those of ``columns`` it
    holds, in its order (the sha256 of the whole file still vouches for the columns left unread)."""
    plan = manifest.plan
    path = shard_path(run_dir, plan, index)

    def invalid(reason: str):
        return ShardStatus(index, path, "invalid", reason), None

    if not path.exists():
        return ShardStatus(index, path, "missing"), None
    try:
        receipt = json.loads(receipt_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return invalid("no receipt: its writer stopped before committing it")
    except (ValueError, OSError) as err:  # not JSON, not UTF-8, a folder in its place
        return invalid(f"unreadable receipt ({err})")
    if not isinstance(receipt, dict):
        return invalid(f"unreadable receipt (not a JSON object: {type(receipt).__name__})")
    if receipt.get("run_id") != manifest.run_id or receipt.get("shard") != index:
        return invalid("written by a different run or for another shard")
    # read once into memory Arrow owns, hashed and parsed from there: a table parsed from Python's
    # own bytes holds them, and releasing them at interpreter exit with torch loaded aborted the
    # process ("terminate called without an active exception", exit status 134) in most runs
    try:
        with pa.OSFile(str(path), "rb") as file:
            data = file.read_buffer()
    except OSError as err:  # a folder in its place
        return invalid(f"unreadable ({err})")
    if len(data) != receipt.get("bytes") or hashlib.sha256(data).hexdigest() != receipt.get("sha256"):
        return invalid(f"corrupt: {len(data)} bytes whose sha256 differs from the receipt's")
    try:
        if columns is None:
            table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        else:
            parquet = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
            table = parquet.read(columns=[c for c in parquet.schema_arrow.names if c == SEED or c in columns])
    except Exception as err:  # pyarrow raises several types for truncated / corrupt files
        return invalid(f"unreadable ({type(err).__name__}: {err})")
    meta = table.schema.metadata or {}
    if meta.get(_RUN_ID_KEY) != manifest.run_id.encode() or meta.get(_SHARD_KEY) != str(index).encode():
        return invalid("written by a different run or for another shard")
    expected = plan.seeds(index)
    if table.num_rows != len(expected):
        return invalid(f"{table.num_rows} rows, expected {len(expected)}")
    if SEED not in table.column_names or not np.array_equal(table.column(SEED).to_numpy(), expected):
        return invalid(f"seeds differ from {expected[0]}..{expected[-1]}")
    return ShardStatus(index, path, "complete"), table


def inspect_shard(run_dir: str | os.PathLike, manifest: RunManifest, index: int) -> ShardStatus:
    """Check shard ``index``: committed by this run, intact (sha256, checksums), exactly its seeds."""
    return _load_shard(run_dir, manifest, index)[0]


def discard_shard(run_dir: str | os.PathLike, plan: ShardPlan, index: int) -> None:
    """Remove shard ``index`` and any temporaries a killed writer left for it."""
    path = shard_path(run_dir, plan, index)
    for file in (path, receipt_path(path)):
        if file.is_dir() and not file.is_symlink():
            try:  # an empty folder in a shard file's place goes; one holding files is not ours to delete
                file.rmdir()
            except OSError:
                raise ValueError(f"{file} is a folder where the run keeps a shard file; move it away and "
                                 "resume again") from None
        else:
            file.unlink(missing_ok=True)
        remove_stale_temporaries(file.parent, file.name)


def _each_verified_shard(run_dir, manifest: RunManifest, columns: list[str] | None,
                         take: Callable[[int, pa.Table], None]) -> None:
    """Verify every shard of the run in seed order and hand each to ``take(first_row, table)``
    (``first_row``: its first row's position in the whole run) while no shard before it was bad, so
    a reader may copy one out and let it go before the next is read. Raises
    :class:`IncompleteRunError` listing every missing / invalid shard once all were checked."""
    plan = manifest.plan
    bad: list[ShardStatus] = []
    first_row = 0
    for index in range(plan.count):
        status, table = _load_shard(run_dir, manifest, index, columns)
        if not status.complete:
            bad.append(status)
        elif not bad:
            take(first_row, table)
        first_row += len(plan.seeds(index))
        del table
    if bad:
        listed = ", ".join(f"{s.path.name} ({s.state}{': ' + s.reason if s.reason else ''})" for s in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise IncompleteRunError(
            f"run {run_dir} is incomplete: {len(bad)} of {plan.count} shards are not complete: "
            f"{listed}{more}. Finish it by running its command again with --resume (`kfm sample`; "
            "resume=True in Python), with the same settings."
        )


def merge_shards(run_dir: str | os.PathLike, manifest: RunManifest | None = None, *,
                 columns: list[str] | None = None) -> pa.Table:
    """Concatenate every shard of the run in seed order, after verifying each one.

    Raises :class:`IncompleteRunError` listing missing / invalid shards; the returned table holds
    every seed of the run exactly once, sorted by seed. ``columns``: parse only ``seed`` and those
    of these the shards hold (a name they lack is left out, not an error), in the shards' order,
    for a reader that needs a few; every shard is still hashed whole, so damage in a column left
    unread is caught all the same.
    """
    if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
        raise ValueError(f"columns must be a list of column names, got {columns!r}")
    manifest = manifest or read_manifest(run_dir)
    plan = manifest.plan
    tables: list[pa.Table] = []
    _each_verified_shard(run_dir, manifest, columns, lambda _, table: tables.append(table))
    table = pa.concat_tables(tables).replace_schema_metadata(None)
    seeds = table.column(SEED).to_numpy()
    if not np.array_equal(seeds, plan.all_seeds()):  # holds by construction; cheap to re-check
        raise IncompleteRunError(f"run {run_dir}: merged seeds are not exactly the run's seed range")
    shape = manifest.config.get("sample_shape")
    if shape is not None and SAMPLES in table.column_names:
        table = with_sample_shape(table, shape)
    return table


def with_sample_shape(table: pa.Table, shape: tuple[int, ...] | list[int], column: str = SAMPLES) -> pa.Table:
    """``table`` with one sample's ``shape`` recorded in the field metadata of its flattened list
    ``column`` (key :data:`SAMPLE_SHAPE_KEY`), which Parquet keeps: :func:`samples_from_table` and
    ``kfm memorization --samples results.parquet`` read the rows back as (rows, *shape)."""
    shape = [int(d) for d in shape]
    kind = table.schema.field(column).type
    if pa.types.is_fixed_size_list(kind) and kind.list_size != int(np.prod(shape)):
        raise ValueError(f"column {column!r} holds {kind.list_size} values per row, not a sample of shape {shape}")
    i = table.schema.get_field_index(column)
    field = table.schema.field(i)
    tagged = field.with_metadata({**(field.metadata or {}), SAMPLE_SHAPE_KEY: json.dumps(shape).encode()})
    return pa.Table.from_arrays(table.columns, schema=table.schema.set(i, tagged))


def recorded_sample_shape(field: pa.Field) -> tuple[int, ...] | None:
    """The sample shape :func:`with_sample_shape` recorded on ``field``, or None (a table written
    before it existed, or by anything else)."""
    raw = (field.metadata or {}).get(SAMPLE_SHAPE_KEY)
    if raw is None:
        return None
    try:
        shape = tuple(json.loads(raw))
    except ValueError:
        raise ValueError(f"column {field.name!r} records an unreadable sample shape {raw!r}") from None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"column {field.name!r} records an invalid sample shape {raw.decode(errors='replace')}")
    return shape


def write_results(run_dir: str | os.PathLike, table: pa.Table) -> Path:
    """Atomically write the merged table to ``<run>/results.parquet``."""
    path = Path(run_dir) / RESULTS_NAME
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, **_PARQUET_OPTIONS))


def read_run(run_dir: str | os.PathLike, *, columns: list[str] | None = None) -> pd.DataFrame:
    """The verified per-sample table of a finished run, as a pandas DataFrame (one row per seed).

    Reads the shards (not ``results.parquet``) so that what is returned is always checked for
    completeness: every seed of the manifest's range present exactly once, every shard intact.

    Args:
        run_dir: the run's folder (``kfm sample --out``).
        columns: the column names to read (None: all), in the order wanted.

    Raises:
        FileNotFoundError: no run manifest in ``run_dir``. IncompleteRunError (a RuntimeError):
            shards missing or invalid. ValueError: an unreadable manifest, ``columns`` not a list
            of names, or a column the run does not hold.
    """
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise ValueError(f"columns must be a list of column names, got {columns!r}")
        if not columns or len(set(columns)) != len(columns):  # a frame of no columns, or one twice
            raise ValueError(f"columns must name at least one column, each once, got {columns!r}")
    manifest = read_manifest(run_dir)
    table = merge_shards(run_dir, manifest, columns=columns)  # parses only the columns asked for
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            held = pq.read_schema(shard_path(run_dir, manifest.plan, 0)).names  # a shard merge_shards verified
            raise ValueError(f"run {run_dir} has no column(s) {missing}; it holds {held}")
        table = table.select(list(columns))
    return table.to_pandas()


def samples_from_table(table: pa.Table, shape: tuple[int, ...] | list[int] | None = None,
                       column: str = SAMPLES) -> np.ndarray:
    """Final states stored as a list column (fixed-size, as ``kfm sample`` writes it, or lists of
    equal length, as a table that went through pandas holds it), reshaped to (rows, *shape): a writable
    copy, which ``torch.from_numpy`` takes without a warning (Arrow's own buffer is read-only).
    ``shape`` None: the one the column records (a merged table's, see :func:`with_sample_shape`)."""
    if column not in table.column_names:
        raise ValueError(f"the table has no {column!r} column (was the run made with --no-save-x?)")
    if shape is None:
        shape = recorded_sample_shape(table.schema.field(column))
        if shape is None:
            raise ValueError(f"the table's {column!r} column records no sample shape: pass shape")
    values = table.column(column)
    if not pa.types.is_fixed_size_list(values.type):  # e.g. a table that went through pandas: list<double>
        flat = np.array(values.combine_chunks().flatten().to_numpy(zero_copy_only=False))  # a copy of its own
        return flat.reshape(table.num_rows, *shape)
    return _fixed_size_rows(values).reshape(table.num_rows, *shape)


def read_samples(run_dir: str | os.PathLike) -> np.ndarray:
    """Final samples x of a finished ``kfm sample`` run in the folder ``run_dir``, (n, *sample_shape)
    in the stored dtype, in seed order; errors as :func:`read_run` (ValueError also for a run
    saved without x or without its sample shape)."""
    manifest = read_manifest(run_dir)
    shape = manifest.config.get("sample_shape")
    if shape is None:
        raise ValueError(f"the manifest of {run_dir} records no sample_shape")
    return samples_from_table(merge_shards(run_dir, manifest, columns=[SAMPLES]), shape)


def profile_from_table(table: pa.Table, times: np.ndarray | Sequence[float] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(times, increments)`` from a table with a ``profile`` column (``kfm sample --profile``).

    Fixed-step runs store ``profile`` as a fixed-size list of S per-step applied-energy increments
    and their grid once, outside the table: pass it as ``times`` ((S + 1,)); returns it as a
    float64 array and ``increments`` (rows, S). (A table that went through pandas holds the same
    rows as plain lists of S values; read alike.) dopri5 runs store each sample's own steps as
    variable-length lists, ``profile`` (steps) and ``times`` (steps + 1); returns them padded
    like ``kfm.sample``'s result: ``times`` (rows, W + 1) NaN-padded, ``increments`` (rows, W)
    zero-padded, W the most steps of any row. Either way the kinetic power ½η²‖v‖² of step j
    is ``increments[..., j] / diff(times)[..., j]``, and a row's increments sum to its ``kpe``.
    """
    if PROFILE not in table.column_names:
        raise ValueError(f"the table has no {PROFILE!r} column (was the run made without --profile?)")
    column = table.column(PROFILE)
    if pa.types.is_fixed_size_list(column.type):
        return _fixed_grid(times, column.type.list_size), _fixed_size_rows(column)
    if TIMES not in table.column_names and times is not None:
        # a fixed-step profile that went through pandas (read_run(...).to_parquet): equal-length lists
        times = np.asarray(times, dtype=np.float64)
        lengths = np.concatenate([np.diff(chunk.offsets.to_numpy()) for chunk in column.chunks] or [[]])
        if times.ndim != 1 or (lengths != times.shape[0] - 1).any():
            raise ValueError(f"times must have shape (S + 1,) for a profile of S steps per sample; got "
                             f"{times.shape} for lists of {sorted(set(lengths.tolist()))[:5]} steps")
        return times, _padded(column, 0.0)
    if TIMES not in table.column_names:
        raise ValueError(f"a per-sample (dopri5) profile needs the table's {TIMES!r} column")
    increments = _padded(column, 0.0)
    times = _padded(table.column(TIMES), np.nan)
    if times.shape[1] != increments.shape[1] + 1:
        raise ValueError(f"the {TIMES!r} lists must be one longer than the {PROFILE!r} lists")
    return times, increments


def _fixed_grid(times, width: int) -> np.ndarray:
    """A fixed-step profile's grid ``times`` as float64 (S + 1,), checked against S = ``width``."""
    if times is None:
        raise ValueError("a fixed-step profile needs its grid: pass times, (S + 1,)")
    times = np.asarray(times, dtype=np.float64)
    if times.shape != (width + 1,):
        raise ValueError(f"times must have shape ({width + 1},) for {width} steps per sample, got {times.shape}")
    return times


def _fixed_size_rows(column: pa.ChunkedArray, out: np.ndarray | None = None) -> np.ndarray:
    """A fixed-size list column of w values a row as a (rows, w) array of its own, writable and
    apart from Arrow's read-only buffers: one copy, chunk by chunk (a merge of shards has a chunk
    per shard, which combining first would copy once more), into ``out`` when given."""
    width = column.type.list_size
    rows = np.empty((len(column), width), dtype=column.type.value_type.to_pandas_dtype()) if out is None else out
    start = 0
    for chunk in column.chunks:
        rows[start:start + len(chunk)] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), width)
        start += len(chunk)
    return rows


def _padded(column: pa.ChunkedArray, fill: float) -> np.ndarray:
    """A variable-length list column as a (rows, longest) float64 array, ``fill`` past each row's
    end, filled chunk by chunk (no combined copy of the column)."""
    lengths = [np.diff(chunk.offsets.to_numpy()) for chunk in column.chunks]
    out = np.full((len(column), int(max((n.max(initial=0) for n in lengths), default=0))), fill)
    start = 0
    for chunk, length in zip(column.chunks, lengths):
        offsets = chunk.offsets.to_numpy()
        rows = np.repeat(np.arange(start, start + len(chunk)), length)
        out[rows, np.arange(offsets[-1] - offsets[0]) - np.repeat(offsets[:-1] - offsets[0], length)] = \
            chunk.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy(zero_copy_only=False)
        start += len(chunk)
    return out


def read_profile(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(times, increments)`` of a finished ``kfm sample --profile`` run, rows in seed order (see
    :func:`profile_from_table`): fixed-step runs give times (S + 1,) and increments (n, S), dopri5
    runs times (n, W + 1) NaN-padded and increments (n, W) zero-padded. Either way
    ``kfm.energy_after(increments, times, t)`` is each sample's energy spent at times ≥ t."""
    manifest = read_manifest(run_dir)
    times = manifest.runtime.get(PROFILE_TIMES)
    rows: list[np.ndarray] = []     # a fixed-step run's (n, S), filled shard by shard
    tables: list[pa.Table] = []     # a dopri5 run's shards, padded once all are read

    def take(first_row: int, table: pa.Table) -> None:
        if PROFILE not in table.column_names:
            raise ValueError(f"run {run_dir} holds no {PROFILE!r} column: it was made without --profile")
        column = table.column(PROFILE)
        if times is None or not pa.types.is_fixed_size_list(column.type):
            tables.append(table)
        else:  # copied out at once: the run's Arrow columns are never all held beside the result
            if not rows:
                _fixed_grid(times, column.type.list_size)
                rows.append(np.empty((manifest.plan.n, column.type.list_size),
                                     dtype=column.type.value_type.to_pandas_dtype()))
            _fixed_size_rows(column, out=rows[0][first_row:first_row + len(column)])

    _each_verified_shard(run_dir, manifest, [PROFILE, TIMES], take)  # not x, which can be far larger
    if rows:
        return _fixed_grid(times, rows[0].shape[1]), rows[0]
    return profile_from_table(pa.concat_tables(tables), times)
