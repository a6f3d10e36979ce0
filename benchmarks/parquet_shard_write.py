"""Writing a run shard to Parquet with and without dictionary encoding, side by side.

``kfm sample`` writes each shard (seed, six per-sample energies, the sample x as a fixed-size
list) with ``use_dictionary=False`` since the eleventh session. Builds such tables from real
``kfm.sample`` results, writes each to memory both ways in alternating rounds, and prints the
median times, the file sizes and whether the values read back equal.

    python benchmarks/parquet_shard_write.py
"""
from __future__ import annotations

import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import kinetic_fm as kfm
from _common import interleaved_rounds


def shard_table(n: int, dim: int) -> pa.Table:
    res = kfm.sample(kfm.GaussianTarget(mean=2.0 * torch.ones(dim), std=0.5), seeds=range(n), shape=(dim,), steps=5)
    columns = {"seed": pa.array(np.arange(n, dtype=np.int64))}
    columns |= {name: pa.array(getattr(res, name).numpy()) for name in ("kpe", "kpe_raw", "early", "late", "peak")}
    columns["x"] = pa.FixedSizeListArray.from_arrays(pa.array(res.x.reshape(-1).numpy()), dim)
    return pa.table(columns)


def main() -> None:
    for n, dim in ((50, 784), (2000, 784), (50, 2)):
        table = shard_table(n, dim)

        def write(use_dictionary: bool):
            def run() -> pa.Buffer:
                for _ in range(10):
                    sink = pa.BufferOutputStream()
                    pq.write_table(table, sink, write_page_checksum=True, use_dictionary=use_dictionary)
                return sink.getvalue()
            return run

        times, files = interleaved_rounds({"dictionary": write(True), "plain": write(False)}, 7, warmup=True)
        same = all(pq.read_table(pa.BufferReader(files[k])).equals(table) for k in files)
        old, new = (statistics.median(times[k]) / 10 * 1e3 for k in ("dictionary", "plain"))
        print(f"{n} x {dim}: dictionary {old:.2f} ms ({len(files['dictionary']) // 1024} KiB), "
              f"plain {new:.2f} ms ({len(files['plain']) // 1024} KiB): {old / new:.1f}x; values equal: {same}")


if __name__ == "__main__":
    main()
