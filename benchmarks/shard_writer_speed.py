"""One ``kfm sample`` shard's table built through a pandas frame (the route before) and as Arrow
arrays directly (``_ShardColumns``), side by side.

Samples the batches of a shard once with ``kfm.sample``, then in alternating rounds builds its
table both ways, alone and followed by the Parquet write ``write_shard`` does (to memory), and
prints the median times per shard, their ratio, and whether both routes give the same Parquet
bytes.

    python benchmarks/shard_writer_speed.py
"""
from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import kinetic_fm as kfm
from _common import interleaved_rounds
from kinetic_fm.commands.sample import _ShardColumns
from kinetic_fm.runs.shards import _PARQUET_OPTIONS

REPEATS = 21


def pandas_route(results, *, save_x: bool, profile: bool) -> pa.Table:
    """The table as kfm sample built it before: each batch's frame, concatenated, from_pandas."""
    frames, finals, profiles = [], [], []
    for res in results:
        frames.append(res.to_frame())
        if save_x:
            finals.append(res.x.reshape(len(res), -1).numpy())
        if profile:
            profiles.append(res.profile.numpy())
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    for name, rows, keep in (("x", finals, save_x), ("profile", profiles, profile)):
        if keep:
            rows = np.concatenate(rows)
            table = table.append_column(name, pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)),
                                                                                rows.shape[1]))
    return table


def arrow_route(results, *, save_x: bool, profile: bool) -> pa.Table:
    shard = _ShardColumns(save_x=save_x, profile=profile, per_sample_steps=False)
    for res in results:
        shard.add(res)
    return shard.table()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **_PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()


def main() -> None:
    torch.manual_seed(0)
    print(f"{'shard (rows x D, steps)':<34} {'pandas':>9} {'arrow':>9} {'ratio':>6}   "
          f"{'+ write: pandas':>15} {'arrow':>9} {'ratio':>6}  same bytes")
    for rows, dim, steps, save_x, profile in ((1000, 2, 100, True, False), (1000, 2, 100, True, True),
                                              (50, 784, 20, True, False), (256, 784, 20, True, True)):
        field = kfm.GaussianTarget(mean=2.0 * torch.ones(dim), std=0.5)
        results = [kfm.sample(field, seeds=range(lo, min(lo + 256, rows)), shape=(dim,), steps=steps, profile=profile)
                   for lo in range(0, rows, 256)]
        kw = {"save_x": save_x, "profile": profile}
        fns = {"pandas": lambda: pandas_route(results, **kw), "arrow": lambda: arrow_route(results, **kw),
               "pandas+write": lambda: parquet_bytes(pandas_route(results, **kw)),
               "arrow+write": lambda: parquet_bytes(arrow_route(results, **kw))}
        times, out = interleaved_rounds(fns, REPEATS, warmup=True)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        what = f"{rows} x {dim}, {steps}" + (", x" if save_x else "") + (", profile" if profile else "")
        print(f"{what:<34} {ms['pandas']:7.2f}ms {ms['arrow']:7.2f}ms {ms['pandas'] / ms['arrow']:5.1f}x   "
              f"{ms['pandas+write']:13.2f}ms {ms['arrow+write']:7.2f}ms {ms['pandas+write'] / ms['arrow+write']:5.2f}x  "
              f"{out['pandas+write'] == out['arrow+write']}")


if __name__ == "__main__":
    main()
