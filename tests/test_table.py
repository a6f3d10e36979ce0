"""The per-sample table: joins on seed, strict about duplicates and missing seeds, round-trips Parquet."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.metrics.density import kde_log_density, local_support
from kinetic_fm.metrics.table import load_table, per_sample_table, save_table


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    train = torch.randn(200, 2, dtype=torch.float64) + 3.0
    seeds = [11, 4, 27, 8, 15, 2]
    res = kfm.sample(kfm.GaussianTarget(3.0, 1.0), seeds=seeds, shape=(2,), steps=20,
                     dtype=torch.float64)
    return seeds, train, res


def test_joins_sample_memorization_support_and_semantics(run, tmp_path):
    seeds, train, res = run
    rep = kfm.memorization(res.x, train, bootstrap=0)
    sup = local_support(res.x, train, k=2, ks=(1,))
    kde = kde_log_density(res.x, train, 0.5)
    clip = {"clip_score": torch.arange(6, dtype=torch.float64)}
    table = per_sample_table(res, rep, sup, kde, clip)
    assert table["seed"].tolist() == seeds
    assert len(table) == 6 and table.columns[0] == "seed"
    for col in ("kpe", "early", "late", "ratio", "memorized", "knn_radius_k2", "kde_log_density",
                "clip_score"):
        assert col in table.columns
    # values land on their own sample's row
    np.testing.assert_allclose(table["kpe"], res.kpe.numpy())
    np.testing.assert_allclose(table["ratio"], rep.ratio.numpy())
    np.testing.assert_allclose(table["knn_radius_k2"], sup.radius.numpy())
    # shuffled part with its own seed column: the join realigns it
    shuffled = pd.DataFrame({"seed": seeds[::-1], "score": np.arange(6.0)[::-1]})
    joined = per_sample_table(res, shuffled)
    assert joined["score"].tolist() == list(np.arange(6.0))

    path = save_table(table, tmp_path / "deep" / "samples.parquet")
    back = load_table(path)
    pd.testing.assert_frame_equal(back, table)


def test_explicit_seeds_and_join_modes():
    a = {"x": [1.0, 2.0, 3.0]}
    b = pd.DataFrame({"seed": [7, 9], "y": [0.5, 0.25]})
    table = per_sample_table(a, seeds=[9, 7, 5])
    assert table["seed"].tolist() == [9, 7, 5]
    with pytest.raises(ValueError, match="seeds differ.*1 missing \\[5\\]"):
        per_sample_table(a, b, seeds=[9, 7, 5])
    inner = per_sample_table(a, b, seeds=[9, 7, 5], how="inner")
    assert inner["seed"].tolist() == [9, 7] and inner["y"].tolist() == [0.25, 0.5]
    outer = per_sample_table(a, b, seeds=[9, 7, 5], how="outer")
    assert len(outer) == 3 and outer["y"].isna().sum() == 1
    # pandas sorts an outer merge by key: rows must keep the first part's order (res.x and images
    # are attached by position), then the seeds only later parts hold, as they first appear
    c = pd.DataFrame({"seed": [11, 1, 7], "z": [11.0, 1.0, 7.0]})
    outer = per_sample_table(a, b, c, seeds=[9, 7, 5], how="outer")
    assert outer["seed"].tolist() == [9, 7, 5, 11, 1]
    assert outer["x"].tolist()[:3] == [1.0, 2.0, 3.0] and outer["z"].tolist()[1] == 7.0
    seed_inside = pd.DataFrame({"x": [1.0, 2.0], "seed": [7, 9]})  # seed not the first column
    assert list(per_sample_table(seed_inside, {"y": [3.0, 4.0]}).columns) == ["seed", "x", "y"]


def test_clear_errors():
    with pytest.raises(ValueError, match="duplicate seeds \\[3\\]"):
        per_sample_table(pd.DataFrame({"seed": [1, 3, 3], "x": [0, 1, 2]}))
    with pytest.raises(ValueError, match="no 'seed' column"):
        per_sample_table({"x": [1, 2]})
    with pytest.raises(ValueError, match="3 rows but 2 seeds"):
        per_sample_table({"x": [1, 2, 3]}, seeds=[1, 2])
    with pytest.raises(ValueError, match="column 'x' appears in part 0"):
        per_sample_table({"x": [1, 2]}, {"x": [3, 4]}, seeds=[1, 2])
    with pytest.raises(TypeError, match="to_frame"):
        per_sample_table(42, seeds=[1])
    # every part carries its seeds: seeds= was dropped without a word, even disagreeing (helper-132)
    with pytest.raises(ValueError, match="every part has one .* drop seeds="):
        per_sample_table(pd.DataFrame({"seed": [0, 1, 2, 3], "x": [0, 1, 2, 3]}), seeds=[10, 11])
    with pytest.raises(FileNotFoundError):
        load_table("/nonexistent/table.parquet")


# --- input validation (audit D5, C17, D23) ---------------------------------------------------

@pytest.mark.parametrize("seeds", [[0.5, 1.5, 2.5, 3.5, 4.5], torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5]),
                                   [True, False, True, False, True], ["1", "2", "3", "4", "5"], "abcde", 5])
def test_seeds_must_be_integers_not_truncated(seeds):
    part = {"a": np.arange(5.0)}
    with pytest.raises(ValueError, match="^seeds must be"):
        per_sample_table(part, seeds=seeds)


def test_integer_seeds_of_any_integer_kind_work():
    part = {"a": np.arange(3.0)}
    for seeds in ([4, 5, 6], np.array([4, 5, 6]), torch.tensor([4, 5, 6]), [np.int64(4), torch.tensor(5), 6]):
        assert per_sample_table(part, seeds=seeds).seed.tolist() == [4, 5, 6]


@pytest.mark.parametrize("values", [3, np.ones((3, 2)), "abc"])
def test_mapping_columns_must_be_one_value_per_sample(values):
    with pytest.raises(ValueError, match="column 'a' must hold \\(n,\\) values"):
        per_sample_table({"a": values}, seeds=[0, 1, 2])


def test_a_parts_own_seed_column_must_hold_integers():
    frame = pd.DataFrame({"seed": [0.0, 1.0, 2.7], "a": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="'seed' column that is not integers .*2.7"):
        per_sample_table(frame, {"b": np.ones(3)}, seeds=[0, 1, 2], how="inner")
    ok = pd.DataFrame({"seed": [0.0, 1.0, 2.0], "a": [1.0, 2.0, 3.0]})      # integral floats join
    assert per_sample_table(ok, {"b": np.ones(3)}, seeds=[0, 1, 2]).shape == (3, 3)


def test_object_seed_columns_hold_plain_integers_or_are_refused():
    import pandas as pd

    ok = pd.DataFrame({"seed": pd.Series([0, 1, 2], dtype=object), "a": [1.0, 2.0, 3.0]})
    assert per_sample_table(ok).seed.tolist() == [0, 1, 2]
    bad = pd.DataFrame({"seed": pd.Series([0, True, 2], dtype=object), "a": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="'seed' column that is not integers"):
        per_sample_table(bad)                           # True would have been joined as seed 1


def _half_written(method: str):
    """A stand-in for a DataFrame writer killed mid-write: some bytes land in the target, then an error."""
    def write(self, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"PAR1 half a table")
        raise OSError(f"{method} killed mid-write")
    return write


def test_a_table_write_that_fails_midway_leaves_the_previous_table(tmp_path, monkeypatch):
    # save_table wrote straight into the target: an interrupted write left a truncated file
    # where a complete table had been
    before = pd.DataFrame({"seed": [1, 2, 3], "kpe": [0.5, 1.5, 2.5]})
    path = save_table(before, tmp_path / "samples.parquet")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _half_written("to_parquet"))
    with pytest.raises(OSError, match="killed mid-write"):
        save_table(before.assign(kpe=0.0), path)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(load_table(path), before)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.parquet"]  # no temporary left either


def test_save_table_refuses_other_suffixes_a_folder_and_a_non_table_by_name(tmp_path):
    # a .csv path got Parquet bytes, an existing folder failed in the rename naming the
    # temporary, and a dict failed with AttributeError 'to_parquet'
    table = pd.DataFrame({"kpe": [1.0, 2.0]})
    for name in ("table.csv", "table", "table.pq"):
        with pytest.raises(ValueError, match=rf"path must end in \.parquet .*, got '.*{name}'"):
            save_table(table, tmp_path / name)
        assert not (tmp_path / name).exists()
    (tmp_path / "folder.parquet").mkdir()
    with pytest.raises(IsADirectoryError, match=r"path is a folder, not a file: '.*folder.parquet'"):
        save_table(table, tmp_path / "folder.parquet")
    with pytest.raises(TypeError, match="table must be a pandas DataFrame .*, got dict"):
        save_table({"kpe": [1.0]}, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(load_table(save_table(table, tmp_path / "T.PARQUET")), table)


# --- mutation audit: join contracts and exact round-trips ------------------------------------

def test_exact_refuses_a_later_part_with_seeds_the_first_lacks():
    # a left merge would drop seed 5 silently
    with pytest.raises(ValueError, match=r"seeds differ.*0 missing \[\], 1 extra \[5\]"):
        per_sample_table({"x": [1.0, 2.0]}, pd.DataFrame({"seed": [7, 9, 5], "y": [0.1, 0.2, 0.3]}), seeds=[9, 7])


def test_how_is_checked_even_with_one_part():
    with pytest.raises(ValueError, match="how must be 'exact', 'inner' or 'outer', got 'left'"):
        per_sample_table({"x": [1.0]}, seeds=[3], how="left")


def test_parts_without_seeds_align_with_the_first_part_that_has_them():
    first = pd.DataFrame({"seed": [4, 2, 9], "a": [40.0, 20.0, 90.0]})
    later = pd.DataFrame({"seed": [9, 4, 2], "b": [9.0, 4.0, 2.0]})
    table = per_sample_table(first, later, {"c": [4, 2, 9]})
    assert table["seed"].tolist() == table["c"].tolist() == [4, 2, 9]
    assert table["b"].tolist() == [4.0, 2.0, 9.0]


def test_unsigned_seed_columns_join():
    part = pd.DataFrame({"seed": np.array([3, 1], dtype=np.uint64), "a": [0.3, 0.1]})
    table = per_sample_table(part, {"b": [30.0, 10.0]}, seeds=[3, 1])
    assert table["a"].tolist() == [0.3, 0.1] and table["b"].tolist() == [30.0, 10.0]


def test_a_dataframe_part_without_seeds_is_not_modified():
    part = pd.DataFrame({"a": [1.0, 2.0]})
    per_sample_table(part, seeds=[5, 6])
    assert list(part.columns) == ["a"]


def test_a_to_frame_that_returns_a_series_becomes_one_column():
    class Scores:
        def to_frame(self):
            return pd.Series([0.5, 0.25], name="score")

    table = per_sample_table(Scores(), seeds=[1, 2])
    assert list(table.columns) == ["seed", "score"] and table["score"].tolist() == [0.5, 0.25]


def test_an_outer_table_is_numbered_from_zero_in_its_own_order():
    a = pd.DataFrame({"seed": [9, 7], "x": [1.0, 2.0]})
    b = pd.DataFrame({"seed": [1, 7], "y": [3.0, 4.0]})
    table = per_sample_table(a, b, how="outer")
    assert table["seed"].tolist() == [9, 7, 1]
    pd.testing.assert_index_equal(table.index, pd.RangeIndex(3))


def test_semantic_results_round_trip_through_parquet_with_exact_dtypes(tmp_path):
    from kinetic_fm.metrics.semantics import ClipScores, classifier_margin

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 3.5]], dtype=torch.float64)
    margin = classifier_margin(lambda x: x, logits, torch.tensor([0, 1]))
    clip = ClipScores(torch.tensor([25.0, 31.5], dtype=torch.float64), torch.tensor([1.5, -0.5], dtype=torch.float64),
                      torch.tensor([0, 2]), None, "a photo of a {}", "tiny")
    table = per_sample_table(margin, clip, {"label": ["cat", "dog"]}, seeds=[12, 4])
    assert list(table.columns) == ["seed", "classifier_margin", "classifier_confidence", "classifier_predicted",
                                   "classifier_target", "clip_score", "clip_margin", "clip_predicted", "label"]
    assert table["classifier_margin"].tolist() == [1.5, -0.5]      # 2 − 0.5 and 3 − 3.5
    assert table["clip_predicted"].tolist() == [0, 2] and table["clip_margin"].tolist() == [1.5, -0.5]
    for col in ("seed", "classifier_predicted", "classifier_target", "clip_predicted"):
        assert table[col].dtype == np.int64, col
    back = load_table(save_table(table, tmp_path / "semantics.parquet"))
    pd.testing.assert_frame_equal(back, table, check_exact=True)
    assert dict(back.dtypes) == dict(table.dtypes)


def test_a_filtered_table_saves_its_columns_only_and_reloads_numbered_from_zero(tmp_path):
    table = pd.DataFrame({"seed": [1, 2, 3, 4], "kpe": [0.5, 2.5, 1.0, 3.0]})
    high = table[table.kpe > 1.0]                                   # index [1, 3]
    back = load_table(save_table(high, tmp_path / "high.parquet"))
    pd.testing.assert_frame_equal(back, high.reset_index(drop=True), check_exact=True)


def test_loading_a_folder_is_refused_not_read_as_an_empty_table(tmp_path):
    # pyarrow reads a folder as a (here empty) data set: a mistyped run folder gave a 0-row table
    with pytest.raises(FileNotFoundError, match="no table at"):
        load_table(tmp_path)


def test_precision_recall_joins_the_table_by_its_generated_samples():
    # PrecisionRecall had no to_frame: per_sample_table(res, pr) raised TypeError (helper-136)
    import kinetic_fm as kfm

    res = kfm.sample(lambda x, t: -x, seeds=range(6), shape=(2,), steps=2)
    real = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    pr = kfm.precision_recall(real, res.x, k=2)
    table = per_sample_table(res, pr)
    assert table["in_real_manifold"].tolist() == pr.fake_in_real.tolist()
    assert table["in_real_manifold"].mean() == pytest.approx(pr.precision)


def test_mapping_columns_pair_by_position_and_series_with_different_indexes_are_refused():
    # a mapping's columns are (n,) values row by row; pandas would align two Series on their
    # index labels instead: {"a": a.sort_values(), "b": b} paired a = 3 with b = 30 (labels),
    # {"a": a.sort_values(), "b": b.to_numpy()} paired a = 1 with b = 30 (positions), and two
    # Series of disjoint labels made a 6-row part ("6 rows but 3 seeds")
    a, b = pd.Series([3.0, 1.0, 2.0]), pd.Series([30.0, 10.0, 20.0])
    for columns in ({"a": a.sort_values(), "b": b}, {"a": pd.Series([1.0, 2.0, 3.0], index=[5, 6, 7]), "b": b}):
        with pytest.raises(ValueError, match="columns 'a' and 'b' are pandas Series with different indexes"):
            per_sample_table(columns, seeds=[7, 8, 9])
    # one Series, or Series of one index, pair by position as arrays do
    table = per_sample_table({"a": a.sort_values(), "b": b.to_numpy()}, seeds=[7, 8, 9])
    assert table.a.tolist() == [1.0, 2.0, 3.0] and table.b.tolist() == [30.0, 10.0, 20.0]
    shuffled = a.sort_values()
    table = per_sample_table({"a": shuffled, "b": shuffled * 10}, seeds=[7, 8, 9])
    assert table.a.tolist() == [1.0, 2.0, 3.0] and table.b.tolist() == [10.0, 20.0, 30.0]


def test_a_part_indexed_by_seed_joins_by_its_index():
    # a frame or Series indexed by seed (set_index("seed"), a groupby over seeds) has its seeds in
    # the index: it was dropped and the rows paired by position, so seed 3 got seed 1's value
    first = pd.DataFrame({"seed": [3, 1, 2], "a": [0.3, 0.1, 0.2]})
    by_seed = pd.Index([1, 2, 3], name="seed")
    for part in (pd.DataFrame({"b": [10.0, 20.0, 30.0]}, index=by_seed), pd.Series([10.0, 20.0, 30.0],
                                                                                     index=by_seed, name="b")):
        table = per_sample_table(first, part)
        assert table.seed.tolist() == [3, 1, 2] and table.b.tolist() == [30.0, 10.0, 20.0]
    with pytest.raises(ValueError, match="seeds differ"):
        per_sample_table(first, pd.DataFrame({"b": [1.0, 2.0, 3.0]}, index=pd.Index([1, 2, 4], name="seed")))


def test_local_supports_of_two_spaces_join_each_under_its_space():
    # the second's columns clashed with the first's, though the space they were measured in tells them apart
    g = torch.Generator().manual_seed(0)
    x, reference = torch.randn(4, 3, generator=g), torch.randn(12, 3, generator=g)

    def first(z):
        return z[:, :1]

    pixels, one = local_support(x, reference, k=2, ks=()), local_support(x, reference, k=2, ks=(), space=first)
    table = per_sample_table(pixels, one, seeds=[5, 6, 7, 8])
    assert list(table.columns) == ["seed", "pixels_knn_radius_k2", "pixels_knn_log_density_k2",
                                   "first_knn_radius_k2", "first_knn_log_density_k2"]
    np.testing.assert_array_equal(table["first_knn_radius_k2"], one.radius.numpy())
    np.testing.assert_array_equal(table["pixels_knn_radius_k2"], pixels.radius.numpy())
    # a part of no recorded space keeps its clash: which space its columns belong to is not known
    with pytest.raises(ValueError, match=r"column 'knn_radius_k2' appears in part 0 \(DataFrame\) and part 1"):
        per_sample_table(pixels.to_frame(), one, seeds=[5, 6, 7, 8])
