"""Atomic Parquet shards, verified merge and resume of kinetic_fm.runs (single process).

The per-seed "computation" here is a deterministic function of the seed (noise from that seed's
own generator), so the expected table is known independently of how the run was cut up.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kinetic_fm.runs import IncompleteRunError, ResumeMismatchError, RunManifest, inspect_shard, merge_shards, read_run, run_sharded
from kinetic_fm.runs.atomic import atomic_write
from kinetic_fm.runs.shards import RESULTS_NAME, receipt_path, shard_path


def _row(seed: int) -> dict:
    z = np.random.default_rng(seed).standard_normal(3)
    return {"seed": seed, "energy": 0.5 * float(z @ z), "x": z.tolist()}


def expected_frame(seeds) -> pd.DataFrame:
    return pd.DataFrame([_row(int(s)) for s in seeds])


class Recorder:
    """compute(seeds, advance) that remembers which seed blocks it was asked for."""

    def __init__(self):
        self.calls: list[list[int]] = []

    def __call__(self, seeds, advance):
        self.calls.append(seeds.tolist())
        advance(len(seeds))
        return expected_frame(seeds)


def _manifest(**changes) -> RunManifest:
    base = dict(kind="test", config={"a": 1}, identity={"h": "0"}, seed_start=3, n=10, shard_size=3)
    base.update(changes)
    return RunManifest(**base)


def _run(run_dir, manifest=None, resume=False, compute=None):
    return run_sharded(run_dir, manifest or _manifest(), compute or Recorder(), resume=resume, progress=False,
                       log=lambda m: None)


def _assert_same(table_or_frame, seeds):
    df = table_or_frame.to_pandas() if isinstance(table_or_frame, pa.Table) else table_or_frame
    want = expected_frame(seeds)
    pd.testing.assert_frame_equal(df.drop(columns="x"), want.drop(columns="x"), check_exact=True)
    assert np.array_equal(np.stack(df["x"].to_list()), np.array(want["x"].to_list()))


def test_run_writes_every_shard_and_a_verified_merge(tmp_path):
    compute = Recorder()
    out = _run(tmp_path / "run", compute=compute)
    seeds = np.arange(3, 13)
    assert compute.calls == [[3, 4, 5], [6, 7, 8], [9, 10, 11], [12]]
    assert out.computed == (0, 1, 2, 3) and out.skipped == () and out.redone == ()
    _assert_same(out.table, seeds)
    _assert_same(pd.read_parquet(tmp_path / "run" / RESULTS_NAME), seeds)
    _assert_same(read_run(tmp_path / "run"), seeds)
    assert sorted(p.name for p in (tmp_path / "run" / "shards").iterdir()) == sorted(
        f"shard-0000{i}-of-00004.{ext}" for i in range(4) for ext in ("json", "parquet"))
    # per-sample floats are all distinct: dictionary encoding only slowed the writes (5x at 50 x 784)
    import pyarrow.parquet as pq

    for path in [tmp_path / "run" / RESULTS_NAME, *(tmp_path / "run" / "shards").glob("*.parquet")]:
        meta = pq.ParquetFile(path).metadata
        encodings = {e for g in range(meta.num_row_groups) for c in range(meta.num_columns)
                     for e in meta.row_group(g).column(c).encodings}
        assert not any("DICTIONARY" in e for e in encodings), (path.name, encodings)


def test_existing_run_needs_resume_and_a_foreign_folder_is_refused(tmp_path):
    _run(tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        _run(tmp_path / "run")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no manifest.json"):
        _run(tmp_path / "other")


def test_resume_of_a_complete_run_computes_nothing(tmp_path):
    _run(tmp_path / "run")
    compute = Recorder()
    out = _run(tmp_path / "run", resume=True, compute=compute)
    assert compute.calls == [] and out.skipped == (0, 1, 2, 3)
    _assert_same(out.table, np.arange(3, 13))


def test_on_start_is_called_once_before_sampling_and_only_when_shards_remain(tmp_path):
    # the caller's start-of-run words (kfm sample's warnings on its settings) came before the folder's
    # verdict: a refused resume, or one of a finished run, said them of a run that sampled nothing
    run, events = tmp_path / "run", []

    def compute(seeds, advance):
        events.append("compute")
        return Recorder()(seeds, advance)

    def start():
        events.append("start")

    def sharded(**kwargs):
        return run_sharded(run, kwargs.pop("manifest", _manifest()), compute, progress=False, log=lambda m: None,
                           on_start=start, **kwargs)

    sharded()
    assert events == ["start"] + ["compute"] * 4
    events.clear()
    sharded(resume=True)   # nothing left to sample
    assert events == []
    with pytest.raises(ResumeMismatchError):
        sharded(resume=True, manifest=_manifest(n=11))
    assert events == []
    shard_path(run, _manifest().plan, 2).unlink()
    sharded(resume=True)
    assert events == ["start", "compute"]


@pytest.mark.parametrize("rank_1_pending", [False, True])
def test_on_start_is_called_by_rank_0_when_only_another_rank_has_shards_left(tmp_path, rank_1_pending):
    # rank 0 of two, its own shards all kept: the run still samples (rank 1's), so rank 0 says its words
    from kinetic_fm.runs.distributed import Coordinator, World

    class RankZeroOfTwo(Coordinator):   # rank 1 stood in for: same settings, and its pending shards or none
        def barrier(self):
            pass

        def from_main(self, value):
            return value

        def from_all(self, value):
            return [value, [] if isinstance(value, list) else rank_1_pending]

    run, started = tmp_path / "run", []
    _run(run)
    run_sharded(run, _manifest(), Recorder(), resume=True, progress=False, log=lambda m: None,
                coordinator=RankZeroOfTwo(World(rank=0, world_size=2)), on_start=lambda: started.append(1))
    assert started == [1] * rank_1_pending


def test_resume_refuses_a_changed_config_naming_the_field(tmp_path):
    _run(tmp_path / "run")
    with pytest.raises(ResumeMismatchError, match=r"config\.a \(stored 1, now 2\)"):
        _run(tmp_path / "run", manifest=_manifest(config={"a": 2}), resume=True)


def test_resume_refuses_a_setting_equal_only_in_python_and_the_run_stays_readable(tmp_path):
    # 1 == 1.0 in Python, not in the run id: such a resume was let through, redid every shard
    # under the new id, and left a run that read_run (the stored manifest's id) refused
    run = tmp_path / "run"
    _run(run)
    compute = Recorder()
    with pytest.raises(ResumeMismatchError, match=r"config\.a \(stored 1, now 1\.0\)"):
        _run(run, manifest=_manifest(config={"a": 1.0}), resume=True, compute=compute)
    assert compute.calls == []
    _assert_same(read_run(run), np.arange(3, 13))


def test_missing_shard_fails_the_merge_and_is_redone_on_resume(tmp_path):
    run = tmp_path / "run"
    _run(run)
    manifest = _manifest()
    shard_path(run, manifest.plan, 2).unlink()
    with pytest.raises(IncompleteRunError, match=r"shard-00002-of-00004\.parquet \(missing\)"):
        merge_shards(run)
    compute = Recorder()
    out = _run(run, resume=True, compute=compute)
    assert compute.calls == [[9, 10, 11]] and out.redone == ()
    _assert_same(out.table, np.arange(3, 13))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle_bytes(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 3  # inside the column chunks, far from the footer
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _copy_other_shard(path):
    for name in (path, receipt_path(path)):
        name.write_bytes(name.with_name(name.name.replace("00001-of", "00000-of")).read_bytes())


def _truncate_and_forge_receipt(path):
    """Past the receipt check, the Parquet reader itself must still refuse a truncated file."""
    _truncate(path)
    receipt = json.loads(receipt_path(path).read_text())
    data = path.read_bytes()
    receipt.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    receipt_path(path).write_text(json.dumps(receipt))


def _drop_receipt(path):
    receipt_path(path).unlink()


def _receipt_not_an_object(path):
    receipt_path(path).write_text("[]")         # valid JSON: .get raised AttributeError (helper-100)


def _receipt_a_folder(path):
    receipt_path(path).unlink()
    receipt_path(path).mkdir()


def _shard_a_folder(path):
    path.unlink()
    path.mkdir()


def _reissue_receipt(path):
    """A receipt that vouches for the shard's present bytes: only the checks past the sha256 remain."""
    receipt = json.loads(receipt_path(path).read_text())
    data = path.read_bytes()
    receipt.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    receipt_path(path).write_text(json.dumps(receipt))


def _flip_sample_values_and_reissue_receipt(path):
    """Damage the sha256 cannot see: the Parquet page checksums must still catch it. (The bytes
    flipped lie among the energies' values, in their data page: the footer, most of a small
    file, carries no page checksum.)"""
    import pyarrow.parquet as pq

    chunk = pq.ParquetFile(path).metadata.row_group(0).column(1)  # seed, energy, x
    end = chunk.data_page_offset + chunk.total_compressed_size
    data = bytearray(path.read_bytes())
    for i in range(end - 16, end - 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    _reissue_receipt(path)


def _other_runs_shard_with_reissued_receipt(path):
    """The same shard of a run with another config (same plan, same seeds) under this run's receipt:
    the run id stamped in the Parquet must still refuse it."""
    run = path.parent.parent
    other = run.parent / "other-run"
    _run(other, manifest=_manifest(config={"a": 2}))
    path.write_bytes((other / "shards" / path.name).read_bytes())
    _reissue_receipt(path)


def _shifted_seeds_with_reissued_receipt(path):
    """This run's stamps and a matching receipt, but each seed one too high (a writer's off-by-one)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("seed"), "seed", pa.compute.add(table.column("seed"), 1))
    pq.write_table(table, path)
    _reissue_receipt(path)


@pytest.mark.parametrize("damage,reason", [
    (_truncate, "corrupt"),
    (_flip_middle_bytes, "corrupt"),
    (_truncate_and_forge_receipt, "unreadable"),
    (_copy_other_shard, "another shard"),
    (_drop_receipt, "no receipt"),
    (_flip_sample_values_and_reissue_receipt, "unreadable"),
    (_other_runs_shard_with_reissued_receipt, "different run"),
    (_shifted_seeds_with_reissued_receipt, "seeds differ from 6..8"),
    (_receipt_not_an_object, "unreadable receipt (not a JSON object"),
    (_receipt_a_folder, "unreadable receipt"),
    (_shard_a_folder, "unreadable"),
])
def test_damaged_shard_is_detected_never_merged_and_redone(tmp_path, damage, reason):
    run = tmp_path / "run"
    _run(run)
    manifest = _manifest()
    damage(shard_path(run, manifest.plan, 1))
    status = inspect_shard(run, manifest, 1)
    assert status.state == "invalid" and reason in status.reason
    with pytest.raises(IncompleteRunError, match=r"shard-00001-of-00004\.parquet \(invalid"):
        read_run(run)
    with pytest.raises(IncompleteRunError, match=r"shard-00001-of-00004\.parquet \(invalid"):
        merge_shards(run, columns=["energy"])  # a reader of a few columns refuses it too
    compute = Recorder()
    out = _run(run, resume=True, compute=compute)
    assert compute.calls == [[6, 7, 8]] and out.redone == (1,)
    _assert_same(out.table, np.arange(3, 13))


def test_shard_of_another_run_is_rejected(tmp_path):
    _run(tmp_path / "a")
    _run(tmp_path / "b", manifest=_manifest(config={"a": 2}))
    plan = _manifest().plan
    for path in (shard_path(tmp_path / "a", plan, 0), receipt_path(shard_path(tmp_path / "a", plan, 0))):
        path.write_bytes(Path(str(path).replace(str(tmp_path / "a"), str(tmp_path / "b"))).read_bytes())
    status = inspect_shard(tmp_path / "a", _manifest(), 0)
    assert status.state == "invalid" and "different run" in status.reason


@pytest.mark.parametrize("wrong", [
    lambda seeds: seeds[:-1],   # a row short
    lambda seeds: seeds + 1,    # the right count, each seed one too high (an off-by-one in compute)
    lambda seeds: seeds[::-1],  # the right seeds, out of order
])
def test_wrong_rows_are_rejected_at_write_time(tmp_path, wrong):
    def faulty(seeds, advance):
        return expected_frame(wrong(seeds))

    with pytest.raises(ValueError, match="must hold seeds 3..5 in order"):
        _run(tmp_path / "run", compute=faulty)
    assert not list((tmp_path / "run" / "shards").iterdir())  # refused before anything is written


def test_every_bad_shard_is_named_in_the_refusal(tmp_path):
    run = tmp_path / "run"
    _run(run)
    plan = _manifest().plan
    shard_path(run, plan, 0).unlink()
    _truncate(shard_path(run, plan, 2))
    with pytest.raises(IncompleteRunError, match="2 of 4 shards") as err:
        merge_shards(run)
    assert "shard-00000-of-00004.parquet (missing)" in str(err.value)
    assert "shard-00002-of-00004.parquet (invalid: corrupt" in str(err.value)
    assert "shard-00001" not in str(err.value) and "shard-00003" not in str(err.value)


def test_killed_writer_leftovers_are_ignored_and_cleaned(tmp_path):
    run = tmp_path / "run"
    _run(run)
    plan = _manifest().plan
    final = shard_path(run, plan, 3)
    final.unlink()
    stale = final.with_name(f".{final.name}.tmp-424242")
    stale.write_bytes(b"PAR1 half a shard")
    kept = shard_path(run, plan, 0)                 # a complete shard, a results file and the
    others = [kept.with_name(f".{kept.name}.tmp-7"),  # manifest whose killed rewrites left temporaries
              run / ".results.parquet.tmp-7", run / ".manifest.json.tmp-7"]
    for other in others:
        other.write_bytes(b"half")
    with pytest.raises(IncompleteRunError):
        merge_shards(run)
    _run(run, resume=True)
    assert not stale.exists() and not any(other.exists() for other in others)
    _assert_same(read_run(run), np.arange(3, 13))


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "f.bin"

    def failing(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []


def test_read_run_names_bad_arguments_and_a_damaged_manifest(tmp_path):
    from kinetic_fm.cli import main
    from kinetic_fm.runs import read_run

    run = tmp_path / "run"
    assert main(["sample", "--field", "gaussian", "--dim", "2", "--n", "3", "--steps", "2", "--out", str(run),
                 "--no-progress"]) == 0
    with pytest.raises(ValueError, match=r"columns must be a list of column names, got 'kpe'"):  # iterated 'k'
        read_run(run, columns="kpe")
    with pytest.raises(ValueError, match=r"has no column\(s\) \['nope'\]"):
        read_run(run, columns=["kpe", "nope"])
    with pytest.raises(ValueError, match="columns must be a list of column names"):            # picked column 1
        read_run(run, columns=[1])
    with pytest.raises(TypeError, match="run_dir must be a path"):
        read_run(None)
    for columns in (["kpe", "kpe"], []):       # a duplicated column, a 3 x 0 frame (helper-100)
        with pytest.raises(ValueError, match=r"columns must name at least one column, each once"):
            read_run(run, columns=columns)
    assert list(read_run(run, columns=["seed", "kpe"]).columns) == ["seed", "kpe"]
    (run / "manifest.json").write_text('{"format": 1, "kind": ')                               # cut short
    with pytest.raises(ValueError, match=r"manifest.json: the run manifest is not valid JSON"):
        read_run(run)


@pytest.mark.parametrize("damage", ["truncated", "not an object", "missing key"])
def test_a_run_whose_manifest_is_damaged_is_refused_by_every_reader_saying_how_to_go_on(tmp_path, damage):
    # "manifest.json: the run manifest is not valid JSON (...); was it edited or cut short?", and no way on
    from kinetic_fm.cli import main
    from kinetic_fm.runs import read_profile, read_run, read_samples
    from kinetic_fm.runs.manifest import DamagedManifestError

    run = tmp_path / "run"
    assert main(["sample", "--field", "gaussian", "--dim", "2", "--n", "3", "--steps", "2", "--profile", "--out",
                 str(run), "--no-progress"]) == 0
    path = run / "manifest.json"
    text = path.read_text()
    damaged = {"truncated": text[:40], "not an object": "3", "missing key": text.replace('"kind"', '"kin"')}
    path.write_text(damaged[damage])
    for reader in (read_run, read_samples, read_profile):
        with pytest.raises(DamagedManifestError) as caught:
            reader(run)
        said = str(caught.value)
        assert said.startswith(f"{path}: the run manifest") and "put back a good copy" in said.lower(), said
        assert "the kfm sample command that made the run and --resume --repair" in said, said


def test_profile_from_table_gives_arrays_for_both_layouts():
    from kinetic_fm.runs import profile_from_table

    fixed = pa.table({"seed": [0, 1], "profile": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0]), 2)})
    times, increments = profile_from_table(fixed, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(times, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(increments, [[1.0, 2.0], [3.0, 4.0]])
    assert increments.flags.writeable and times.flags.writeable   # arrays of its own, not Arrow's buffers
    with pytest.raises(ValueError, match="needs its grid"):
        profile_from_table(fixed)
    with pytest.raises(ValueError, match=r"times must have shape \(3,\)"):
        profile_from_table(fixed, [0.0, 1.0])
    with pytest.raises(ValueError, match="without --profile"):
        profile_from_table(fixed.drop(["profile"]))
    # dopri5: each row its own steps; in two chunks, as a merge of shards gives them
    lists = pa.list_(pa.float64())
    ragged = pa.concat_tables([
        pa.table({"profile": pa.array([[1.0], [2.0, 3.0]], lists), "times": pa.array([[0.0, 1.0], [0.0, 0.4, 1.0]], lists)}),
        pa.table({"profile": pa.array([[4.0, 5.0, 6.0]], lists), "times": pa.array([[0.0, 0.2, 0.6, 1.0]], lists)}),
    ])
    times, increments = profile_from_table(ragged)
    np.testing.assert_array_equal(increments, [[1.0, 0.0, 0.0], [2.0, 3.0, 0.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(times, [[0.0, 1.0, np.nan, np.nan], [0.0, 0.4, 1.0, np.nan], [0.0, 0.2, 0.6, 1.0]])
    with pytest.raises(ValueError, match="'times' column"):
        profile_from_table(ragged.drop(["times"]))


@pytest.mark.slow  # eight interpreters importing torch; and it can fail only on a busy machine
def test_a_merged_table_held_until_exit_does_not_abort_the_process(tmp_path):
    # Shards were parsed from Python bytes; a table still holding them at interpreter exit, with
    # torch loaded, could end the process with "terminate called without an active exception"
    # (exit status 134; torch 2.13, pyarrow 26): `kfm memorization --samples RUN` did so after
    # refusing a --no-save-x run. A race at exit: on a busy machine 3/10 to 13/20 of such runs
    # aborted, on a quiet one none, so this test can only catch it under load. The shards are
    # now read into Arrow's memory.
    import subprocess
    import sys

    from kinetic_fm.cli import main

    run = tmp_path / "run"
    assert main(["sample", "--field", "gaussian", "--n", "4", "--steps", "2", "--no-save-x", "--out", str(run),
                 "--no-progress"]) == 0
    script = f"import torch\nfrom kinetic_fm.runs import merge_shards\ntable = merge_shards({str(run)!r})\n"
    codes = [subprocess.run([sys.executable, "-c", script], capture_output=True).returncode for _ in range(8)]
    assert codes == [0] * 8


def test_samples_from_a_table_that_went_through_pandas_read_as_before():
    # read_run(...) -> DataFrame.to_parquet turns the fixed-size x column into list<double>; the
    # chunk-by-chunk reader of fixed-size lists raised AttributeError (no list_size) on it
    import io

    import pyarrow.parquet as pq

    from kinetic_fm.runs.shards import samples_from_table

    rows = np.arange(12.0).reshape(3, 4)
    buffer = io.BytesIO()
    pd.DataFrame({"seed": [0, 1, 2], "x": list(rows)}).to_parquet(buffer)
    table = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert pa.types.is_list(table.schema.field("x").type)
    samples = samples_from_table(table, (2, 2))
    np.testing.assert_array_equal(samples, rows.reshape(3, 2, 2))
    assert samples.flags.writeable


def test_a_fixed_step_profile_that_went_through_pandas_reads_with_its_grid():
    # the fixed-size profile column becomes list<double> through pandas; with the grid given it
    # reads as before (it was taken for a dopri5 profile and refused for want of a times column)
    import io

    import pyarrow.parquet as pq

    from kinetic_fm.runs.shards import profile_from_table

    rows = np.arange(9.0).reshape(3, 3)
    grid = np.array([0.0, 0.25, 0.5, 1.0])
    buffer = io.BytesIO()
    pd.DataFrame({"seed": [0, 1, 2], "profile": list(rows)}).to_parquet(buffer)
    table = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert pa.types.is_list(table.schema.field("profile").type)
    times, increments = profile_from_table(table, grid)
    np.testing.assert_array_equal(times, grid)
    np.testing.assert_array_equal(increments, rows)
    with pytest.raises(ValueError, match=r"times must have shape \(S \+ 1,\)"):
        profile_from_table(table, grid[:-1])
