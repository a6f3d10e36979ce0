"""``kfm sample --field empirical --train TRAIN``: the exact EFM field of a training set from the shell."""
from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import kinetic_fm as kfm
import kinetic_fm.commands.sample as command
from kinetic_fm.cli import main
from kinetic_fm.data.subset import select_indices
from kinetic_fm.runs import read_run, read_samples


def kfm_sample(out, *flags) -> int:
    return main(["sample", "--out", str(out), "--no-progress", *map(str, flags)])


def _points(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 3


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _saved(tmp_path, train: torch.Tensor):
    """``train`` as a file kfm memorization --train reads too: .npy for points, .pt for images."""
    if train.dim() == 2:
        path = tmp_path / "train.npy"
        np.save(path, train.numpy())
    else:
        path = tmp_path / "train.pt"
        torch.save(train, path)
    return path


def _grey_folder(tmp_path, seed: int, n: int = 6):
    """A folder of n random 4x4 grey PNGs ("L" files), named 0.png, 1.png, ..."""
    from PIL import Image

    folder = tmp_path / "grey"
    folder.mkdir()
    for j, image in enumerate(np.random.default_rng(seed).integers(0, 256, (n, 4, 4), dtype=np.uint8)):
        Image.fromarray(image).save(folder / f"{j}.png")
    return folder


def _audits(samples, train, capsys) -> None:
    """kfm memorization --samples SAMPLES --train TRAIN runs to the end (its stderr shown if not)."""
    capsys.readouterr()
    assert main(["memorization", "--samples", str(samples), "--train", str(train), "--bootstrap", "0",
                 "--no-progress"]) == 0, capsys.readouterr().err


def _distance_to_nearest_atom(x: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """(B,) float64 distance of each sample to its nearest training item, by brute force."""
    x, train = x.reshape(len(x), -1).double(), train.reshape(len(train), -1).double()
    return (x[:, None, :] - train[None, :, :]).norm(dim=2).min(dim=1).values


@pytest.mark.parametrize("make", [_points, _images], ids=["32 points in 2-D", "16 images 1x4x4"])
def test_an_empirical_run_lands_on_atoms_and_is_what_the_library_samples(tmp_path, capsys, make):
    train = make()
    flags = ["--field", "empirical", "--train", _saved(tmp_path, train), "--n", 12, "--seed-start", 5,
             "--steps", 400, "--batch-size", 12]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    assert "the empirical field of" in capsys.readouterr().out
    df, x = read_run(tmp_path / "run"), torch.from_numpy(read_samples(tmp_path / "run"))
    assert x.shape == (12, *train.shape[1:])  # the samples take the training items' shape
    assert _distance_to_nearest_atom(x, train).max() < 1e-3
    seeds = list(range(5, 17))
    direct = kfm.sample(kfm.EmpiricalFlow(train), seeds=seeds, shape=tuple(train.shape[1:]), steps=400)
    assert df["seed"].tolist() == seeds
    np.testing.assert_array_equal(df["kpe"].to_numpy(), direct.kpe.numpy())
    np.testing.assert_array_equal(x.numpy(), direct.x.numpy())
    # the posterior at the last evaluation (t = 1 - 1/400) sits on one atom
    assert (df["posterior_max_weight"] > 0.999).all() and (df["posterior_entropy"] < 1e-2).all()
    assert "neglected_bound_max" not in df.columns
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["identity"] == {"field": "empirical", "train_sha256": hashlib.sha256(train.numpy()).hexdigest(),
                                    "train_shape": list(train.shape), "train_dtype": "float32"}
    assert manifest["config"]["truncate"] is None and manifest["config"]["dim"] is None
    assert manifest["runtime"]["train"]["source"] == str(_saved(tmp_path, train).resolve())


def test_the_posterior_columns_are_the_recorders_at_each_samples_last_evaluation(tmp_path):
    train = _points()
    flags = ["--field", "empirical", "--train", _saved(tmp_path, train), "--n", 6, "--steps", 7,
             "--solver", "heun", "--truncate", 3, "--batch-size", 6]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    df = read_run(tmp_path / "run")
    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(train, truncate=3))
    direct = kfm.sample(recorder, seeds=range(6), shape=(2,), steps=7, solver="heun")
    trace = recorder.trace()
    np.testing.assert_array_equal(df["kpe"].to_numpy(), direct.kpe.numpy())
    np.testing.assert_array_equal(df["posterior_max_weight"].to_numpy(), trace.max_weight[-1].numpy())
    np.testing.assert_array_equal(df["posterior_entropy"].to_numpy(), trace.entropy[-1].numpy())
    # a truncated run records the largest bound on the dropped posterior mass along the run
    bound = df["neglected_bound_max"].to_numpy()
    np.testing.assert_array_equal(bound, trace.neglected_bound.amax(dim=0).numpy())
    assert ((0 < bound) & (bound <= 1)).all()   # early on, far more than 3 atoms weigh
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["truncate"] == 3


def test_the_posterior_columns_under_dopri5_take_each_samples_own_last_call(tmp_path):
    train = _points()
    flags = ["--field", "empirical", "--train", _saved(tmp_path, train), "--n", 5, "--solver", "dopri5",
             "--truncate", 4]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    df = read_run(tmp_path / "run")
    recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(train, truncate=4))
    direct = kfm.sample(recorder, seeds=range(5), shape=(2,), solver="dopri5")
    np.testing.assert_array_equal(df["kpe"].to_numpy(), direct.kpe.numpy())
    trace = recorder.trace()
    t = trace.t.numpy()
    assert np.isnan(t).any(), "dopri5 must skip finished samples for this test to mean anything"
    last = [max(j for j in range(len(t)) if not np.isnan(t[j, i])) for i in range(5)]
    assert len(set(last)) > 1   # the samples finish at different calls
    at_last = {name: [getattr(trace, name)[j, i].item() for i, j in enumerate(last)]
               for name in ("max_weight", "entropy")}
    np.testing.assert_array_equal(df["posterior_max_weight"], at_last["max_weight"])
    np.testing.assert_array_equal(df["posterior_entropy"], at_last["entropy"])
    np.testing.assert_array_equal(df["neglected_bound_max"], np.nanmax(trace.neglected_bound.numpy(), axis=0))


def test_a_subset_of_the_training_items_is_the_one_its_seed_draws(tmp_path):
    train = _points()
    flags = ["--field", "empirical", "--train", _saved(tmp_path, train), "--train-n", 8, "--train-seed", 3,
             "--n", 6, "--steps", 300]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    subset = train[select_indices(32, n=8, seed=3)]
    direct = kfm.sample(kfm.EmpiricalFlow(subset), seeds=range(6), shape=(2,), steps=300)
    np.testing.assert_array_equal(read_run(tmp_path / "run")["kpe"].to_numpy(), direct.kpe.numpy())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["identity"]["train_shape"] == [8, 2]
    assert manifest["runtime"]["train"]["n"] == 8 and manifest["runtime"]["train"]["seed"] == 3


def test_a_data_spec_subset_is_what_kfm_train_loads(tmp_path):
    from kinetic_fm.data import dataset_rows, load_dataset

    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", "digits", "--train-n", 16,
                      "--train-seed", 4, "--n", 4, "--steps", 50) == 0
    digits = dataset_rows(load_dataset("digits", n=16, seed=4))
    direct = kfm.sample(kfm.EmpiricalFlow(digits), seeds=range(4), shape=tuple(digits.shape[1:]), steps=50)
    np.testing.assert_array_equal(read_samples(tmp_path / "run"), direct.x.numpy())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["runtime"]["train"]["source"] == "digits"
    assert manifest["identity"]["train_sha256"] == hashlib.sha256(digits.numpy()).hexdigest()


_RESUMED = ["--field", "empirical", "--n", 9, "--shard-size", 3, "--batch-size", 3, "--steps", 60, "--truncate", 5]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    path = _saved(tmp_path, _images())
    flags = ["--train", path, *_RESUMED]
    columns = command._posterior_columns
    calls = []

    def interrupted_in_the_second_shard(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return columns(*args)

    monkeypatch.setattr(command, "_posterior_columns", interrupted_in_the_second_shard)
    assert kfm_sample(tmp_path / "run", *flags) == 130
    assert "1 of 3 shard(s) finished (3 of 9 samples), kept" in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.parquet").exists()
    monkeypatch.setattr(command, "_posterior_columns", columns)
    assert kfm_sample(tmp_path / "run", *flags, "--resume") == 0
    assert "this process computed 2, kept 1" in capsys.readouterr().out
    assert kfm_sample(tmp_path / "whole", *flags) == 0
    resumed, whole = read_run(tmp_path / "run"), read_run(tmp_path / "whole")
    pd.testing.assert_frame_equal(resumed.drop(columns="x"), whole.drop(columns="x"), check_exact=True)
    np.testing.assert_array_equal(read_samples(tmp_path / "run"), read_samples(tmp_path / "whole"))
    assert {"posterior_max_weight", "posterior_entropy", "neglected_bound_max"} <= set(resumed.columns)


def test_resume_against_other_training_data_is_refused_and_the_same_data_elsewhere_resumes(tmp_path, capsys):
    train = _images()
    path = _saved(tmp_path, train)
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED) == 0
    moved = tmp_path / "elsewhere" / "items.pt"   # the same items by another path resume the run
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert kfm_sample(tmp_path / "run", "--train", moved, *_RESUMED, "--resume") == 0
    capsys.readouterr()
    changed = train.clone()
    changed[3, 0, 1, 2] += 0.25
    torch.save(changed, path)
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED, "--resume") == 2
    err = capsys.readouterr().err
    assert f"--resume: --train {path} loads other training items than the run in {tmp_path / 'run'}" in err
    assert str(path.resolve()) in err   # where the run's items were read from
    # a subset of the same file is other items too
    torch.save(train, path)
    assert kfm_sample(tmp_path / "run", "--train", path, "--train-n", 15, *_RESUMED, "--resume") == 2
    err = capsys.readouterr().err   # refused before they are read
    assert "holds other training items than the run" in err and "(15 items by --train-n;" in err
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED, "--resume") == 0


def test_resuming_with_another_batch_size_warns_that_the_last_bits_may_move(tmp_path, capsys):
    # the field's float32 products round by batch composition, under any solver
    path = _saved(tmp_path, _images())
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED) == 0
    capsys.readouterr()
    shard = next((tmp_path / "run" / "shards").glob("shard-00001-*.parquet"))
    shard.unlink()
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED, "--resume") == 0
    assert "warning" not in capsys.readouterr().err
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED, "--batch-size", 1, "--resume") == 0
    assert "warning" not in capsys.readouterr().err   # the run is finished: nothing is computed with 1
    shard.unlink()
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED, "--batch-size", 1, "--resume") == 0
    err = capsys.readouterr().err
    assert "kfm sample: warning: this run of --field empirical started with --batch-size 3; the field's" in err


@pytest.mark.parametrize("flags,message", [
    (["--train", "T"], "--train applies to --field empirical only"),
    (["--field", "gaussian", "--truncate", 2], "--truncate applies to --field empirical only"),
    (["--train-n", 4], "--train-n applies to --field empirical only"),
    (["--field", "empirical"], "--field empirical needs --train"),
    (["--field", "empirical", "--train", "T", "--model", "T"],
     "--field empirical samples the exact field of the --train items and --model samples a trained net"),
    (["--field", "empirical", "--train", "T", "--truncate", 0], "--truncate must lie in [1, N] (N: the --train items)"),
    (["--field", "empirical", "--train", "T", "--truncate", 33], "--truncate must lie in [1, N] = [1, 32]"),
    (["--field", "empirical", "--train", "T", "--dim", 3], "--dim applies to a built-in field only"),
    (["--field", "empirical", "--train", "T", "--train-n", 0], "--train-n must be >= 1"),
    (["--field", "empirical", "--train", "T", "--train-n", 33], "--train-n must be an integer in [1, 32]"),
    (["--field", "empirical", "--train", "T", "--train-seed", 1], "--train-seed seeds the --train-n subset"),
    (["--field", "empirical", "--train", "T", "--label", 1], "--field empirical takes no class"),
    (["--field", "empirical", "--train", "T", "--backend", "faiss"],
     "--backend faiss picks the atoms of --truncate's truncated mode; give --truncate K"),
    (["--field", "gaussian", "--backend", "torch"], "--backend applies to --field empirical only"),
])
def test_misplaced_or_out_of_range_flags_are_one_line_before_the_folder(tmp_path, capsys, flags, message):
    path = _saved(tmp_path, _points())
    flags = [path if flag == "T" else flag for flag in flags]
    assert kfm_sample(tmp_path / "run", *flags, "--n", 2, "--steps", 2) == 2
    err = capsys.readouterr().err
    assert err.startswith("kfm sample: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_help_names_the_empirical_flags(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("empirical: the exact empirical flow-matching field", "--train TRAIN", "--train-n",
                  "--train-seed", "--truncate", "neglected_bound_max", "posterior_max_weight",
                  "An approximation, not a speed-up", "--backend {torch,faiss}",
                  "the largest, over a sample's evaluations, of the bound on the posterior mass one evaluation left "
                  "out (a maximum, not a sum"):
        assert words in text


def test_real_mnist_digits_are_copied_by_their_exact_field(tmp_path, capsys, shared_data):
    mnist = f"mnist:{shared_data / 'mnist'}"
    if not (shared_data / "mnist").is_dir():
        pytest.skip(f"MNIST not found under {shared_data}")
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", mnist, "--train-n", 256,
                      "--n", 256, "--steps", 200) == 0
    table = tmp_path / "audit.parquet"
    assert main(["memorization", "--samples", str(tmp_path / "run"), "--train", mnist, "--no-progress",
                 "--out", str(table)]) == 0
    assert read_samples(tmp_path / "run").shape == (256, 1, 28, 28)
    assert pd.read_parquet(table)["memorized"].mean() >= 0.99


def test_on_cuda_the_field_sits_on_the_samples_device_and_gives_the_cpus_table(tmp_path):
    from fake_cuda import fake_cuda

    path = _saved(tmp_path, _points())
    flags = ["--field", "empirical", "--train", path, "--n", 4, "--steps", 20, "--truncate", 8]
    assert kfm_sample(tmp_path / "cpu", *flags) == 0
    with fake_cuda(emulate_tf32=False, separate_cuda_rng=False):
        assert kfm_sample(tmp_path / "cuda", *flags, "--device", "cuda") == 0
    pd.testing.assert_frame_equal(read_run(tmp_path / "cuda"), read_run(tmp_path / "cpu"), check_exact=True)


def test_an_archive_of_several_arrays_asks_for_train_key_in_kfm_samples_words(tmp_path, capsys):
    # the loader said "name one with a key (kfm memorization: --key or --train-key)" under kfm sample,
    # which has no --key; each command now names its own flag
    np.savez(tmp_path / "two.npz", images=_points().numpy(), labels=np.zeros(32))
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", tmp_path / "two.npz", "--n", 2) == 2
    err = capsys.readouterr().err
    assert "['images', 'labels']; name one with --train-key" in err and "kfm memorization" not in err
    assert main(["memorization", "--samples", str(tmp_path / "two.npz"), "--train", str(tmp_path / "two.npz"),
                 "--key", "images"]) == 2
    assert "['images', 'labels']; name one with --train-key" in capsys.readouterr().err
    assert main(["memorization", "--samples", str(tmp_path / "two.npz"), "--train", str(tmp_path / "two.npz"),
                 "--train-key", "images"]) == 2
    assert "['images', 'labels']; name one with --key" in capsys.readouterr().err


def test_ctrl_c_while_the_training_items_load_says_nothing_was_sampled(tmp_path, capsys, monkeypatch):
    # it said "finished work is kept; rerun the same command with --resume to continue" of a run
    # folder that did not exist yet (50,000 CIFAR-10 images take 15 s to decode)
    import kinetic_fm.commands._rows as rows

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    path = _saved(tmp_path, _points())
    monkeypatch.setattr(rows, "load_rows", interrupted)
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 2) == 130
    err = capsys.readouterr().err
    assert f"interrupted: while reading --train {path}, before any sample was computed: rerun the same" in err
    assert "finished work is kept" not in err and not (tmp_path / "run").exists()
    monkeypatch.undo()   # once the items are read, the usual hint: the folder keeps finished shards
    columns = command._posterior_columns

    def interrupted_sampling(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "_posterior_columns", interrupted_sampling)
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 2) == 130
    # one shard, unfinished: "finished work is kept" read as if the samples so far were
    assert ("interrupted: 0 of 1 shard(s) finished (0 of 2 samples), kept; the samples of unfinished shards are "
            "lost (--shard-size bounds that loss); rerun the same command with --resume") in capsys.readouterr().err
    monkeypatch.setattr(command, "_posterior_columns", columns)


def test_kfm_memorization_takes_an_empirical_run_as_train_the_items_its_field_was_made_of(tmp_path, capsys):
    # a --train-n subset could only be audited against the whole file or split: no other command
    # line names the subset (for a celeba: subset, centred by its own mean, not even in its frame)
    train = _points()
    path = _saved(tmp_path, train)
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--train-n", 8, "--train-seed", 3,
                      "--n", 6, "--steps", 300) == 0
    capsys.readouterr()
    table = tmp_path / "audit.parquet"
    assert main(["memorization", "--samples", str(tmp_path / "run"), "--train", str(tmp_path / "run"),
                 "--no-progress", "--out", str(table)]) == 0
    out = capsys.readouterr().out
    assert f"--train {tmp_path / 'run'}: the 8 items its field was made of ({path.resolve()}, n=8, seed=3)" in out
    audit = pd.read_parquet(table)
    subset = train[select_indices(32, n=8, seed=3)]
    x = torch.from_numpy(read_samples(tmp_path / "run"))
    assert audit["memorized"].all() and audit["nearest"].max() < 8   # rows of the subset
    np.testing.assert_array_equal(audit["nearest"], torch.cdist(x.double(), subset.double()).argmin(dim=1))
    # and nearest_item their rows in the whole file
    np.testing.assert_array_equal(audit["nearest_item"], select_indices(32, n=8, seed=3).numpy()[audit["nearest"]])
    # items that changed since are refused, not audited against
    torch_changed = train.clone()
    torch_changed[select_indices(32, n=8, seed=3)[0], 0] += 1.0
    np.save(path, torch_changed.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "run"), "--train", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--train {str(tmp_path / 'run')!r}: {path.resolve()} (n=8, seed=3) now loads other items" in err
    assert "the data changed since the run" in err
    # a 2-D sampler's points are drawn by their seed alone, an array named by its key
    assert kfm_sample(tmp_path / "moons", "--field", "empirical", "--train", "moons", "--train-seed", 5, "--n", 2,
                      "--steps", 5) == 0
    np.savez(tmp_path / "two.npz", images=train.numpy(), labels=np.zeros(32))
    assert kfm_sample(tmp_path / "keyed", "--field", "empirical", "--train", tmp_path / "two.npz", "--train-key",
                      "images", "--n", 2, "--steps", 5) == 0
    capsys.readouterr()
    for run, what in (("moons", "20000 items its field was made of (moons, seed=5)"),
                      ("keyed", f"32 items its field was made of ({tmp_path / 'two.npz'}, key images)")):
        assert main(["memorization", "--samples", str(tmp_path / run), "--train", str(tmp_path / run),
                     "--no-progress"]) == 0
        assert f"--train {tmp_path / run}: the {what}" in capsys.readouterr().out


def test_a_celeba_subsets_run_audited_against_itself_has_no_common_offset(tmp_path, capsys, shared_data):
    faces = shared_data / "celeba" / "celeba_align_subset6000.zip"
    if not faces.is_file():
        pytest.skip(f"CelebA not found under {shared_data}")
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", f"celeba:{faces}", "--train-n", 64,
                      "--n", 8, "--steps", 200) == 0
    table = tmp_path / "audit.parquet"
    capsys.readouterr()
    assert main(["memorization", "--samples", str(tmp_path / "run"), "--train", str(tmp_path / "run"),
                 "--no-progress", "--out", str(table)]) == 0
    assert "common offset" not in capsys.readouterr().err   # the subset's own frame
    audit = pd.read_parquet(table)
    assert audit["memorized"].all() and audit["d1"].max() < 1e-3 and audit["nearest"].max() < 64
    from kinetic_fm.data import load_dataset

    positions = load_dataset(f"celeba:{faces}", n=64, seed=0, progress=False).indices.numpy()
    np.testing.assert_array_equal(audit["nearest_item"], positions[audit["nearest"]])   # faces of all 6,000
    assert audit["nearest_file"].str.endswith(".jpg").all()


def test_the_printed_summary_shows_the_posterior_columns_of_an_empirical_run(tmp_path, capsys):
    # the summary showed the energies only: whether the samples landed on atoms took reading the table
    path = _saved(tmp_path, _points())
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 4, "--steps", 300) == 0
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[3:]}
    assert list(lines) == ["kpe", "kpe_raw", "early", "late", "posterior_max_weight", "posterior_entropy"]
    df = read_run(tmp_path / "run")
    assert float(lines["posterior_max_weight"][2]) == pytest.approx(df["posterior_max_weight"].min(), rel=1e-5)
    assert kfm_sample(tmp_path / "cut", "--field", "empirical", "--train", path, "--n", 4, "--steps", 30,
                      "--truncate", 2) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[0] == "neglected_bound_max"
    assert kfm_sample(tmp_path / "gauss", "--n", 4, "--steps", 3) == 0   # a built-in field: energies only
    assert capsys.readouterr().out.splitlines()[-1].split()[0] == "late"


def test_a_nonfinite_item_of_a_subset_is_named_by_its_row_in_the_file(tmp_path, capsys):
    # "--train contains NaN or inf in 1 row(s), first at row 1": row 1 of the subset, row 3 of the file
    train = _points()
    train[3, 1] = float("nan")
    path = _saved(tmp_path, train)
    chosen = select_indices(32, n=20, seed=0).tolist()
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--train-n", 20, "--n", 2) == 2
    err = capsys.readouterr().err
    assert (f"--train contains NaN or inf in 1 row(s), first at row {chosen.index(3)} of the --train-n 20 "
            f"subset: row 3 of {path} (NaN at column 1)") in err
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 2) == 2  # the whole file
    assert "--train contains NaN or inf in 1 row(s), first at row 3 (NaN at column 1)\n" in capsys.readouterr().err


def test_the_summary_names_a_truncation_to_one_atom_in_the_singular(tmp_path, capsys):
    path = _saved(tmp_path, _points())
    assert kfm_sample(tmp_path / "one", "--field", "empirical", "--train", path, "--n", 2, "--truncate", 1) == 0
    assert f"({path}, truncated to 1 atom), euler" in capsys.readouterr().out   # it read "1 atoms"
    assert kfm_sample(tmp_path / "two", "--field", "empirical", "--train", path, "--n", 2, "--truncate", 2) == 0
    assert f"({path}, truncated to 2 atoms), euler" in capsys.readouterr().out


def test_a_key_given_with_the_other_commands_run_folder_names_the_folder_for_what_it_is(tmp_path, capsys):
    # "--train 'RUN' is a folder of images" of a kfm sample run folder given --train-key
    path = _saved(tmp_path, _points())
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 2, "--steps", 5) == 0
    capsys.readouterr()
    assert main(["memorization", "--samples", str(tmp_path / "run"), "--train", str(tmp_path / "run"),
                 "--train-key", "x", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--train-key names an array inside a file; --train {str(tmp_path / 'run')!r} is a kfm sample run" in err


def test_items_too_large_for_float32_velocities_are_told_to_take_dtype_float64(tmp_path, capsys):
    # float64 items at 1e20: the velocity's float32 squared norm overflows at step 0, which read as
    # "non-finite ... pass --on-nonfinite flag", a remedy that records every sample as NaN
    path = tmp_path / "far.npy"
    np.save(path, _points().double().numpy() * 1e20)
    flags = ["--field", "empirical", "--train", path, "--n", 2, "--steps", 50]
    assert kfm_sample(tmp_path / "run", *flags) == 2
    err = capsys.readouterr().err
    assert "the velocity is non-finite at step 0 (t = 0) for seed(s) [0, 1]" in err
    assert ("[0, 1] (or so large that its float32 squared norm overflows, ‖v‖ > 1.8e19: then pass --dtype "
            "float64); pass --on-nonfinite flag") in err
    assert kfm_sample(tmp_path / "wide", *flags, "--dtype", "float64") == 0
    assert (read_run(tmp_path / "wide")["posterior_max_weight"] > 0.999).all()


def test_float64_items_sampled_in_float32_by_default_are_said_once(tmp_path, capsys):
    # --dtype's default, float32, rounded the state of a float64 training set without a word
    path = tmp_path / "wide.npy"
    np.save(path, _points().double().numpy())
    flags = ["--field", "empirical", "--train", path, "--n", 2, "--steps", 10]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    err = capsys.readouterr().err
    said = (f"warning: --train {path} holds float64 items, sampled in float32 (--dtype's default): "
            "pass --dtype float64 to sample them in float64")
    assert said in err and err.count("--dtype float64") == 1
    assert read_samples(tmp_path / "run").dtype == np.float32
    for dtype in ("float64", "float32"):             # a --dtype typed is what the user asked for
        assert kfm_sample(tmp_path / dtype, *flags, "--dtype", dtype) == 0
        assert "--dtype" not in capsys.readouterr().err
    np.save(path, _points().numpy())                  # float32 items lose nothing
    assert kfm_sample(tmp_path / "narrow", *flags) == 0
    assert "--dtype" not in capsys.readouterr().err


def test_a_resume_of_float64_items_sampled_in_float32_is_not_told_to_pass_dtype_float64(tmp_path, capsys):
    # every resume said "pass --dtype float64", and a resume that did was refused ("made with other
    # settings: --dtype"): the run samples in float32, a float64 run needs another --out
    path = tmp_path / "wide.npy"
    np.save(path, _points().double().numpy())
    flags = ["--field", "empirical", "--train", path, "--n", 2, "--steps", 10]
    assert kfm_sample(tmp_path / "run", *flags) == 0
    capsys.readouterr()
    assert kfm_sample(tmp_path / "run", *flags, "--resume") == 0
    err = capsys.readouterr().err
    assert "pass --dtype float64" not in err, err
    assert (f"warning: --train {path} holds float64 items, which this run samples in float32 (--dtype's default "
            "when it started): a float64 run needs another --out, with --dtype float64") in err, err
    assert kfm_sample(tmp_path / "run", *flags, "--dtype", "float64", "--resume") == 2   # what it had said
    assert "made with other settings: --dtype (the run's float32, now float64)" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "fresh", *flags, "--resume") == 0   # --resume of no run yet: a new run
    assert "pass --dtype float64 to sample them in float64" in capsys.readouterr().err


def test_a_subset_of_a_folder_of_images_decodes_only_its_images(tmp_path, monkeypatch):
    # --train-n 100 of the 6,000 CelebA JPEGs as a .zip decoded all of them at full size (3.7 GB,
    # 11 s) and then kept 100
    from PIL import Image

    import kinetic_fm.data.images as images

    folder = tmp_path / "faces"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (12, 4, 4), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    whole = images.load_image_folder(folder, labels_from_folders=False, grayscale=None).images  # grey: one channel
    decoded = []
    decode_many = images.decode_many

    def counted(source, names, **kwargs):
        decoded.extend(names)
        return decode_many(source, names, **kwargs)

    monkeypatch.setattr(images, "decode_many", counted)
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", folder, "--train-n", 3, "--train-seed", 1,
                      "--n", 2, "--steps", 5) == 0
    chosen = select_indices(12, n=3, seed=1)
    assert decoded == [f"{i:02d}.png" for i in chosen.tolist()]
    identity = json.loads((tmp_path / "run" / "manifest.json").read_text())["identity"]
    assert identity["train_sha256"] == hashlib.sha256(whole[chosen].contiguous().numpy()).hexdigest()
    table = tmp_path / "audit.parquet"
    assert main(["memorization", "--samples", str(tmp_path / "run"), "--train", str(tmp_path / "run"),
                 "--no-progress", "--out", str(table)]) == 0
    audit = pd.read_parquet(table)
    np.testing.assert_array_equal(audit["nearest_item"], chosen.numpy()[audit["nearest"]])
    assert audit["nearest_file"].tolist() == [f"{i:02d}.png" for i in audit["nearest_item"]]


def test_resuming_an_empirical_run_as_another_kind_of_run_or_the_reverse_says_which_it_is(tmp_path, capsys,
                                                                                          monkeypatch):
    # a wall of eleven differing fields (identity.train_sha256 stored '45d6…', now '<absent>', ...)
    # rather than what the folder holds; the reverse read the --train items first (15 s for CIFAR-10)
    path = _saved(tmp_path, _images())
    assert kfm_sample(tmp_path / "run", "--train", path, "--train-n", 8, *_RESUMED) == 0
    capsys.readouterr()
    assert kfm_sample(tmp_path / "run", "--n", 9, "--steps", 60, "--resume") == 2
    err = capsys.readouterr().err
    assert (f"--resume: the run in {tmp_path / 'run'} samples the exact field of --train items "
            f"({path.resolve()}, --train-n 8 --train-seed 0): resume it with --field empirical --train") in err
    assert "differing field(s)" not in err
    assert kfm_sample(tmp_path / "gauss", "--n", 2, "--steps", 3) == 0
    capsys.readouterr()
    import kinetic_fm.commands._rows as rows

    def unread(*args, **kwargs):
        raise AssertionError("the items were read")

    monkeypatch.setattr(rows, "load_rows", unread)
    assert kfm_sample(tmp_path / "gauss", "--field", "empirical", "--train", path, "--n", 2, "--steps", 3,
                      "--resume") == 2
    err = capsys.readouterr().err
    gauss = tmp_path / "gauss"
    assert f"--resume: the run in {gauss} samples the built-in field gaussian, not --field empirical" in err


@pytest.mark.parametrize("damage", ["truncated", "not an object", "missing key"])
def test_a_resume_of_a_run_whose_manifest_is_damaged_is_refused_before_the_items_are_read(tmp_path, capsys,
                                                                                         monkeypatch, damage):
    # the damaged manifest read as no run: the --train items were read (15 s for CIFAR-10) for a resume
    # certain to be refused, and a Ctrl-C meanwhile said "before any sample was computed", as of a fresh run
    import kinetic_fm.commands._rows as rows

    path = _saved(tmp_path, _images())
    flags = ["--train", path, "--train-n", 8, *_RESUMED]
    run = tmp_path / "run"
    assert kfm_sample(run, *flags) == 0
    manifest = run / "manifest.json"
    text = manifest.read_text()
    manifest.write_text({"truncated": text[: len(text) // 2], "not an object": "[]",
                         "missing key": text.replace('"shard_size"', '"shard-size"')}[damage])
    (run / "shards" / "shard-00001-of-00003.parquet").unlink()   # a shard to compute, once resumed
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rows, "load_rows", interrupted)
    assert kfm_sample(run, *flags, "--resume") == 2
    err = capsys.readouterr().err
    assert f"--out {run}: its manifest.json" in err and "cannot be resumed as it is" in err, err
    assert "rerun it with --repair" in err and "put back a good copy" in err and "choose a new --out" in err
    # with --repair the items must be read (this command's settings vouched for by the shards' receipts):
    # an interruption then says that the folder keeps its finished shards
    assert kfm_sample(run, *flags, "--resume", "--repair") == 130
    err = capsys.readouterr().err
    assert "before this run computed a sample; the folder keeps its finished shards" in err, err
    assert "before any sample was computed" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_resume_into_a_kfm_train_folder_is_refused_before_the_items_or_the_net_are_read(tmp_path, capsys,
                                                                                          monkeypatch):
    # the folder's kind is told by its files alone: neither the --train items nor the --model net load first
    import kinetic_fm.commands._rows as rows
    import kinetic_fm.commands.sample as sample_command

    trained = tmp_path / "trained"
    assert main(["train", "--data", "gmm", "--n", "40", "--batch-size", "8", "--width", "8", "--steps", "2",
                 "--no-progress", "--out", str(trained)]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()}

    def unread(*args, **kwargs):
        raise AssertionError("read before the folder was checked")

    monkeypatch.setattr(rows, "load_rows", unread)
    monkeypatch.setattr(sample_command, "_model_target", unread)
    path = _saved(tmp_path, _points())
    for flags in (["--field", "empirical", "--train", path], ["--model", trained]):
        assert kfm_sample(trained, *flags, "--n", 2, "--steps", 3, "--resume") == 2
        err = capsys.readouterr().err
        assert f"--out {trained} is not empty and holds no manifest.json; choose a new --out" in err, err
    assert {p: p.read_bytes() for p in trained.rglob("*") if p.is_file()} == before


def test_an_empirical_run_whose_manifest_is_damaged_is_named_so_as_train_not_taken_for_samples(tmp_path, capsys):
    # it read as no empirical run: "is a kfm sample run folder (samples, not training items ...)"; then
    # "--samples RUN/manifest.json: the run manifest is ..." (and as kfm memorization's --train no flag at all),
    # where a damaged config.json reads "--train RUN: its config.json is ..." (helper-295)
    path = _saved(tmp_path, _points())
    run = tmp_path / "run"
    assert kfm_sample(run, "--field", "empirical", "--train", path, "--n", 2, "--steps", 3) == 0
    (run / "manifest.json").write_text("{")
    capsys.readouterr()
    way_on = ("; was it edited or cut short? Put back a good copy of it, or write it again with the kfm sample command "
              "that made the run and --resume --repair (it checks that command's settings against the shards' "
              "receipts)\n")
    for samples, train, flag in ((run, path, "--samples"), (path, run, "--train")):
        assert main(["memorization", "--samples", str(samples), "--train", str(train), "--no-progress",
                     "--out", str(tmp_path / "audit.parquet")]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"kfm memorization: error: {flag} {re.escape(str(run))}: its manifest.json is not valid "
                            rf"JSON \(Expecting .*\){re.escape(way_on)}", err), err
    assert kfm_sample(tmp_path / "again", "--field", "empirical", "--train", run, "--n", 2, "--steps", 3) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"kfm sample: error: --train {re.escape(str(run))}: its manifest.json is not valid "
                        rf"JSON \(Expecting .*\){re.escape(way_on)}", err), err


def test_uint8_items_are_sampled_on_their_scale_with_a_warning(tmp_path, capsys):
    # 0..255 against N(0, I) noise: KPE near 190,000 for 4x4 images, without a word on the scale
    pixels = np.random.default_rng(0).integers(0, 256, (16, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", pixels)
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", tmp_path / "u8.npy", "--n", 2,
                      "--steps", 50) == 0
    err = capsys.readouterr().err
    assert f"warning: --train {tmp_path / 'u8.npy'} holds uint8 values (0 to 255), sampled on that scale" in err
    x = read_samples(tmp_path / "run")
    assert _distance_to_nearest_atom(torch.from_numpy(x), torch.from_numpy(pixels).float()).max() < 1e-2
    np.save(tmp_path / "f.npy", pixels.astype(np.float32) / 127.5 - 1)
    assert kfm_sample(tmp_path / "scaled", "--field", "empirical", "--train", tmp_path / "f.npy", "--n", 2) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_resume_refusal_names_every_flag_the_runs_items_were_read_with(tmp_path, capsys):
    # "read from moons" of 20,000 points --train-seed 5 drew, and nothing of a --train-key
    assert kfm_sample(tmp_path / "moons", "--field", "empirical", "--train", "moons", "--train-seed", 5, "--n", 2,
                      "--steps", 5) == 0
    assert kfm_sample(tmp_path / "moons", "--field", "empirical", "--train", "moons", "--n", 2, "--steps", 5,
                      "--resume") == 2
    assert "read from moons, --train-seed 5); resume with those items" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "moons", "--n", 2, "--steps", 5, "--resume") == 2
    assert "resume it with --field empirical --train moons --train-seed 5, or" in capsys.readouterr().err
    np.savez(tmp_path / "two.npz", a=_points().numpy(), b=_points(seed=1).numpy())
    assert kfm_sample(tmp_path / "keyed", "--field", "empirical", "--train", tmp_path / "two.npz", "--train-key", "a",
                      "--n", 2, "--steps", 5) == 0
    assert kfm_sample(tmp_path / "keyed", "--field", "empirical", "--train", tmp_path / "two.npz", "--train-key", "b",
                      "--n", 2, "--steps", 5, "--resume") == 2
    assert f"read from {tmp_path / 'two.npz'}, --train-key a); resume with those items" in capsys.readouterr().err


def test_a_resume_with_a_changed_setting_is_refused_before_the_items_are_read(tmp_path, capsys, monkeypatch):
    # --steps, --truncate, --n ... were compared only once the items were read (15 s for CIFAR-10)
    path = _saved(tmp_path, _images())
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED) == 0
    capsys.readouterr()
    import kinetic_fm.commands._rows as rows

    def unread(*args, **kwargs):
        raise AssertionError("the items were read")

    monkeypatch.setattr(rows, "load_rows", unread)
    # named by the flags typed, not the manifest's fields (config.steps, seeds.n), since helper-203
    for changed, named in ((["--steps", 30], "--steps (the run's 60, now 30)"),
                           (["--truncate", 4], "--truncate (the run's 5, now 4)"),
                           (["--n", 12], "--n (the run's 9, now 12)")):
        flags = [*_RESUMED, *changed]
        assert kfm_sample(tmp_path / "run", "--train", path, *flags, "--resume") == 2
        err = capsys.readouterr().err
        assert f"the run in {tmp_path / 'run'} was made with other settings: {named}. Resume with" in err
    monkeypatch.undo()
    assert kfm_sample(tmp_path / "run", "--train", path, *_RESUMED, "--resume") == 0   # unchanged: it resumes


def test_a_one_dimensional_train_array_is_told_to_take_shape_n_by_1(tmp_path, capsys):
    # it read only "needs items of shape (N, ...)", though N numbers are N one-value items to
    # kfm memorization, which reads the same file as (N, 1)
    path = tmp_path / "line.npy"
    np.save(path, np.arange(5.0))
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 2, "--steps", 2) == 2
    err = capsys.readouterr().err
    assert f"--train {path}: needs items of shape (N, ...), N >= 1, got (5,)" in err
    assert "; for 5 one-value items (as kfm memorization reads this array), save it as shape (5, 1)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
    np.save(path, np.arange(5.0)[:, None])   # as the message says: 5 points on a line, sampled
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 2, "--steps", 2) == 0
    assert read_samples(tmp_path / "run").shape == (2, 1)


def test_an_empirical_runs_results_table_as_train_points_at_its_run_folder(tmp_path, capsys):
    # the table's x (the samples) was read as training items; the run folder gives the items its
    # field was made of
    path = _saved(tmp_path, _points())
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 4, "--steps", 5) == 0
    capsys.readouterr()
    table = tmp_path / "run" / "results.parquet"
    assert main(["memorization", "--samples", str(tmp_path / "run"), "--train", str(table), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (f"--train {str(table)!r} is the results table of a kfm sample --field empirical run (its samples, not "
            f"training items): pass its run folder {str(tmp_path / 'run')!r} as --train") in err
    # nor is an empirical field made of another run's samples
    assert kfm_sample(tmp_path / "again", "--field", "empirical", "--train", table, "--n", 2, "--steps", 2) == 2
    err = capsys.readouterr().err
    assert f"--train {str(table)!r} is the results table of a kfm sample --field empirical run" in err
    assert not (tmp_path / "again").exists()


def test_a_run_made_from_a_results_table_before_it_was_refused_resumes_and_reads_back(tmp_path, capsys, monkeypatch):
    # before 88b60a5 a kfm sample run's results.parquet was taken as --train; such a run was
    # refused by its own --resume, and kfm memorization --train RUN could not read its items
    import kinetic_fm.commands._rows as rows

    assert kfm_sample(tmp_path / "base", "--field", "gaussian", "--n", 6, "--steps", 3) == 0
    table = tmp_path / "base" / "results.parquet"
    flags = ["--field", "empirical", "--train", table, "--n", 4, "--steps", 3, "--shard-size", 2]
    with monkeypatch.context() as patched:
        patched.setattr(rows, "is_results_table", lambda path: False)   # as made then
        assert kfm_sample(tmp_path / "old", *flags) == 0
    whole = read_run(tmp_path / "old")
    last = sorted((tmp_path / "old" / "shards").glob("shard-00001-*"))
    assert len(last) == 2
    for path in last:  # its second shard lost (its parquet and receipt): the resume recomputes it
        path.unlink()
    capsys.readouterr()
    assert kfm_sample(tmp_path / "old", *flags, "--resume") == 0
    assert "this process computed 1, kept 1" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_run(tmp_path / "old"), whole, check_exact=True)
    # its items read back as kfm memorization --train: the base run's 6 samples, checked by their sha256
    assert main(["memorization", "--samples", str(tmp_path / "old"), "--train", str(tmp_path / "old"),
                 "--no-progress"]) == 0
    assert "--train " + str(tmp_path / "old") + ": the 6 items its field was made of" in capsys.readouterr().out
    # a new run of it is still refused, as is a --resume into a folder that holds no run yet
    assert kfm_sample(tmp_path / "new", *flags) == 2
    assert kfm_sample(tmp_path / "new", *flags, "--resume") == 2
    assert "is the results table of a kfm sample run" in capsys.readouterr().err


def test_a_resume_against_other_items_is_refused_before_they_are_read_where_their_count_is_known(
        tmp_path, capsys, monkeypatch):
    # 50,000 CIFAR-10 images were decoded (15 s) only to be refused; the run records its items'
    # shape and sha256, and a .npy header, --train-n, a folder's image files or an empirical run's
    # manifest tell enough before anything is read
    import kinetic_fm.commands._rows as rows
    from PIL import Image

    path = _saved(tmp_path, _points())                        # 32 points
    flags = ["--field", "empirical", "--n", 4, "--steps", 3]
    assert kfm_sample(tmp_path / "run", "--train", path, *flags) == 0
    assert kfm_sample(tmp_path / "other_run", "--train", path, "--train-n", 20, *flags) == 0
    np.save(tmp_path / "more.npy", _points(40).numpy())
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4), 50 * i, dtype=np.uint8)).save(images / f"{i}.png")
    capsys.readouterr()
    read = []
    real = rows.load_rows
    monkeypatch.setattr(rows, "load_rows", lambda *a, **k: read.append(a) or real(*a, **k))
    for train, now in [(tmp_path / "more.npy", "shape [40, 2] by its header"),
                       ([path, "--train-n", 31], "31 items by --train-n"),
                       ([path, "--train-n", 999], "999 items by --train-n"),
                       (images, "3 image files"),
                       (tmp_path / "other_run", "float32 [20, 2], sha256")]:
        given = train if isinstance(train, list) else [train]
        assert kfm_sample(tmp_path / "run", "--train", *given, *flags, "--resume") == 2
        err = capsys.readouterr().err
        assert f"--resume: --train {given[0]} holds other training items than the run in {tmp_path / 'run'}" in err
        assert f"({now}" in err and "the run's: float32 [32, 2], sha256" in err
    assert read == []   # nothing was loaded
    # a built-in field's run folder is no items: the loader says so, whatever --train-n says
    assert kfm_sample(tmp_path / "gaussian", "--n", 2, "--steps", 2) == 0
    assert kfm_sample(tmp_path / "run", "--train", tmp_path / "gaussian", "--train-n", 3, *flags, "--resume") == 2
    assert "is a kfm sample run folder (samples, not training items" in capsys.readouterr().err
    read.clear()
    # the same items, however reached, still resume: the file, its empirical run, a "subset" of all 32
    for given in ([path], [tmp_path / "run"], [path, "--train-n", 32]):
        assert kfm_sample(tmp_path / "run", "--train", *given, *flags, "--resume") == 0
    assert len(read) == 3
    # another file of the right count is read, and refused by its values
    np.save(tmp_path / "same_shape.npy", _points(seed=1).numpy())
    assert kfm_sample(tmp_path / "run", "--train", tmp_path / "same_shape.npy", *flags, "--resume") == 2
    assert "loads other training items than the run" in capsys.readouterr().err
    assert len(read) == 4


def test_backend_faiss_picks_the_truncated_atoms_by_faiss_and_is_part_of_the_run(tmp_path, capsys):
    pytest.importorskip("faiss")
    train = _points()
    flags = ["--field", "empirical", "--train", _saved(tmp_path, train), "--n", 6, "--steps", 7,
             "--solver", "heun", "--truncate", 3, "--batch-size", 6]
    assert kfm_sample(tmp_path / "run", *flags, "--backend", "faiss") == 0
    assert "truncated to 3 atoms picked by faiss" in capsys.readouterr().out
    df = read_run(tmp_path / "run")
    bounds = {}
    for backend in ("torch", "faiss"):
        recorder = kfm.PosteriorRecorder(kfm.EmpiricalFlow(train, truncate=3, backend=backend))
        direct = kfm.sample(recorder, seeds=range(6), shape=(2,), steps=7, solver="heun")
        bounds[backend] = recorder.trace().neglected_bound.amax(dim=0).numpy()
        if backend == "faiss":
            np.testing.assert_array_equal(df["kpe"].to_numpy(), direct.kpe.numpy())
            np.testing.assert_array_equal(read_samples(tmp_path / "run"), direct.x.numpy())
    # the faiss search bounds the dropped mass otherwise: its column is faiss's, not the default's
    np.testing.assert_array_equal(df["neglected_bound_max"].to_numpy(), bounds["faiss"])
    assert not np.array_equal(bounds["faiss"], bounds["torch"])
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["backend"] == "faiss"
    # compared on resume, named by its flag; the default (given or not) is not recorded
    assert kfm_sample(tmp_path / "run", *flags, "--backend", "torch", "--resume") == 2
    assert "--backend (the run's faiss, now default)" in capsys.readouterr().err
    assert kfm_sample(tmp_path / "run", *flags, "--backend", "faiss", "--resume") == 0
    assert kfm_sample(tmp_path / "plain", *flags, "--backend", "torch") == 0
    assert "backend" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())["config"]
    assert kfm_sample(tmp_path / "plain", *flags, "--resume") == 0


def test_runs_made_when_folder_specs_loaded_grey_images_as_rgb_are_still_read(tmp_path, monkeypatch, capsys):
    # folder: loads a grey folder as one channel now; runs made on its three equal channels are still audited
    # and resumed (their items: the one channel, repeated as they trained on it)
    import kinetic_fm.data.images as images

    folder = _grey_folder(tmp_path, seed=6)
    spec = f"folder:{folder}"
    load = images.load_image_folder
    monkeypatch.setattr(images, "load_image_folder", lambda *a, **k: load(*a, **{**k, "grayscale": False}))
    flags = ["--train", spec, "--field", "empirical", "--n", 3, "--shard-size", 3, "--batch-size", 3, "--steps", 8]
    assert kfm_sample(tmp_path / "empirical", *flags) == 0
    assert main(["train", "--data", spec, "--steps", "1", "--model", "mlp", "--width", "8", "--batch-size", "2",
                 "--checkpoints", "none", "--no-progress", "--out", str(tmp_path / "trained")]) == 0
    old = load(folder).images                                          # (6, 3, 4, 4): what both runs were made of
    monkeypatch.setattr(images, "load_image_folder", load)
    assert kfm.data.load_dataset(spec, progress=False).images.shape == (6, 1, 4, 4)
    np.save(tmp_path / "near.npy", (old[[4, 1]] + 0.01).numpy())
    for samples, train in ((tmp_path / "empirical",) * 2, (tmp_path / "near.npy", tmp_path / "trained")):
        _audits(samples, train, capsys)
    assert kfm_sample(tmp_path / "empirical", *flags, "--resume") == 0, capsys.readouterr().err
    assert main(["train", "--data", spec, "--steps", "2", "--model", "mlp", "--width", "8", "--batch-size", "2",
                 "--checkpoints", "none", "--no-progress", "--out", str(tmp_path / "trained"), "--resume"]) == 0, \
        capsys.readouterr().err
    assert "resuming from step 1 of 2" in capsys.readouterr().out


def test_a_grey_folder_given_by_its_path_loads_what_its_folder_spec_loads(tmp_path, monkeypatch, capsys):
    # one folder, one rule: --train FOLDER samples the field of the one channel --train folder:FOLDER loads
    # (it was three equal channels, another field: D and every squared distance tripled); a run made by the
    # path on the three channels is still resumed and audited
    import kinetic_fm.data.images as images

    folder = _grey_folder(tmp_path, seed=7)
    flags = ["--field", "empirical", "--n", 3, "--shard-size", 3, "--batch-size", 3, "--steps", 8]
    identity = lambda run: json.loads((run / "manifest.json").read_text())["identity"]  # noqa: E731
    assert kfm_sample(tmp_path / "spec", "--train", f"folder:{folder}", *flags) == 0
    assert kfm_sample(tmp_path / "path", "--train", folder, *flags) == 0
    assert identity(tmp_path / "path")["train_shape"] == [6, 1, 4, 4]
    assert identity(tmp_path / "path")["train_sha256"] == identity(tmp_path / "spec")["train_sha256"]
    _audits(tmp_path / "path", tmp_path / "path", capsys)

    load = images.load_image_folder
    monkeypatch.setattr(images, "load_image_folder", lambda *a, **k: load(*a, **{**k, "grayscale": False}))  # before
    assert kfm_sample(tmp_path / "old", "--train", folder, *flags) == 0
    assert identity(tmp_path / "old")["train_shape"] == [6, 3, 4, 4]
    monkeypatch.setattr(images, "load_image_folder", load)
    _audits(tmp_path / "old", tmp_path / "old", capsys)
    assert kfm_sample(tmp_path / "old", "--train", folder, *flags, "--resume") == 0, capsys.readouterr().err


def test_a_folder_by_its_path_and_its_folder_spec_load_the_same_rows(tmp_path):
    # one loader call for both spellings: a .zip of grey images, a folder mixing grey and colour files
    # (three channels), and subsets of it, one channel where the images drawn are all grey
    from PIL import Image

    from kinetic_fm.commands._rows import load_rows

    folder = _grey_folder(tmp_path, seed=8)
    archive = shutil.make_archive(str(tmp_path / "grey"), "zip", folder)
    mixed = shutil.copytree(folder, tmp_path / "mixed")
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(mixed / "6.png")
    seeds = [seed for seed in range(50) if 6 not in select_indices(7, n=3, seed=seed).tolist()][:1]
    seeds += [seed for seed in range(50) if 6 in select_indices(7, n=3, seed=seed).tolist()][:1]
    cases = ((archive, None, 0, 6, 1), (mixed, None, 0, 7, 3), (mixed, 3, seeds[0], 3, 1), (mixed, 3, seeds[1], 3, 3))
    for source, n, seed, rows, channels in cases:
        by_path, files, items, _ = load_rows("--train", str(source), None, False, specs=True, n=n, seed=seed)
        by_spec, spec_files, spec_items, _ = load_rows("--train", f"folder:{source}", None, False, specs=True, n=n,
                                                       seed=seed)
        assert by_path.shape == (rows, channels, 4, 4)
        assert torch.equal(by_path, by_spec) and files == spec_files
        assert (items is None) == (spec_items is None) and (items is None or np.array_equal(items, spec_items))


def test_a_slow_batch_shows_its_steps_under_the_sample_bar(tmp_path, capsys, monkeypatch):
    """The sample bar moves when a batch ends: 16 EFM samples of 50,000 CIFAR-10 images in one
    batch sat at 0/16 for minutes. A batch that runs past STEP_BAR_DELAY shows its steps; here
    the delay is 0 so that the tiny batch counts as slow, and every step is counted."""
    monkeypatch.setattr(command, "STEP_BAR_DELAY", 0.0)
    train = _saved(tmp_path, _images())
    assert main(["sample", "--out", str(tmp_path / "run"), "--field", "empirical", "--train", str(train),
                 "--n", "3", "--steps", "7"]) == 0
    err = capsys.readouterr().err
    assert "euler sampling" in err and "0/7 [" in err
    assert main(["sample", "--out", str(tmp_path / "quiet"), "--field", "empirical", "--train", str(train),
                 "--n", "3", "--steps", "7", "--no-progress"]) == 0
    assert "sampling" not in capsys.readouterr().err


def test_a_slow_dopri5_batch_shows_the_time_its_slowest_sample_reached(tmp_path, capsys, monkeypatch):
    """Under dopri5 the step bar counted finished samples, and EFM samples finish together: the bar
    sat at 0/16 until the batch ended. It shows the least t reached (and the samples done); the
    delay is 0 here so that the tiny batch counts as slow."""
    monkeypatch.setattr(command, "STEP_BAR_DELAY", 0.0)
    train = _saved(tmp_path, _images())
    flags = ["--field", "empirical", "--train", str(train), "--n", "3", "--solver", "dopri5"]
    assert main(["sample", "--out", str(tmp_path / "run"), *flags]) == 0
    err = capsys.readouterr().err
    assert "dopri5 sampling: t 0.000/1 |" in err
    assert main(["sample", "--out", str(tmp_path / "quiet"), *flags, "--no-progress"]) == 0
    assert "sampling" not in capsys.readouterr().err
    np.testing.assert_array_equal(read_samples(tmp_path / "run"), read_samples(tmp_path / "quiet"))
    shown, quiet = read_run(tmp_path / "run"), read_run(tmp_path / "quiet")
    for name in ("kpe", "nfe"):  # the bar changes no number
        np.testing.assert_array_equal(shown[name].to_numpy(), quiet[name].to_numpy())


def test_the_audit_of_a_run_names_each_samples_seed_to_join_its_energies_by(tmp_path, capsys):
    # the table's sample is a row; a run started at --seed-start 100 has seeds 100, 101, ...: the
    # audit gave no seed to join it with the run's own table (kpe, posterior columns) by
    train = _points()
    path = _saved(tmp_path, train)
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", path, "--n", 5, "--seed-start", 100,
                      "--steps", 20, "--shard-size", 2) == 0
    energies = read_run(tmp_path / "run")
    x = torch.from_numpy(read_samples(tmp_path / "run"))
    for samples in (tmp_path / "run", tmp_path / "run" / "results.parquet"):
        capsys.readouterr()
        table = tmp_path / "audit.csv"
        assert main(["memorization", "--samples", str(samples), "--train", str(path), "--bootstrap", "0",
                     "--no-progress", "--out", str(table)]) == 0, capsys.readouterr().err
        audit = pd.read_csv(table)
        assert list(audit.columns[:2]) == ["sample", "seed"]
        np.testing.assert_array_equal(audit["seed"], np.arange(100, 105))
        joined = audit.merge(energies, on="seed")
        assert len(joined) == 5
        # each seed's row holds its own sample's nearest item, by brute force
        nearest = torch.cdist(torch.from_numpy(np.stack(joined["x"])).double(), train.double()).argmin(dim=1)
        np.testing.assert_array_equal(joined["nearest"], nearest)
        np.testing.assert_array_equal(audit["nearest"], torch.cdist(x.double(), train.double()).argmin(dim=1))
    # other samples keep the table as it was: no seed to name
    np.save(tmp_path / "x.npy", x.numpy())
    assert main(["memorization", "--samples", str(tmp_path / "x.npy"), "--train", str(path), "--bootstrap", "0",
                 "--no-progress", "--out", str(tmp_path / "plain.csv")]) == 0
    assert "seed" not in pd.read_csv(tmp_path / "plain.csv").columns


def test_an_audited_runs_seeds_come_from_its_manifest_not_a_second_read_of_its_shards(tmp_path, monkeypatch):
    # _run_seeds merged and verified every shard again (read_run) for a seed range the manifest fixes,
    # and read a results table's schema twice
    import pyarrow.parquet as pq

    import kinetic_fm.commands.memorization as audit
    import kinetic_fm.runs as runs

    assert kfm_sample(tmp_path / "run", "--field", "gaussian", "--n", 5, "--seed-start", 100, "--steps", 2,
                      "--shard-size", 2) == 0
    stored = read_run(tmp_path / "run", columns=["seed"])["seed"].to_numpy()
    schemas, read_schema = [], pq.read_schema
    monkeypatch.setattr(runs, "read_run", lambda *a, **kw: pytest.fail("the shards were read again"))
    monkeypatch.setattr(pq, "read_schema", lambda *a, **kw: schemas.append(a) or read_schema(*a, **kw))
    seeds = audit._run_seeds(str(tmp_path / "run"))
    assert seeds.dtype == np.int64
    np.testing.assert_array_equal(seeds, stored)
    np.testing.assert_array_equal(audit._run_seeds(str(tmp_path / "run" / "results.parquet")), stored)
    assert len(schemas) == 1


def test_the_audit_figure_names_each_pair_by_its_row_seed_and_nearest_item_as_the_table_does(tmp_path, capsys,
                                                                                            monkeypatch):
    # the figure's columns were labelled by their ratio alone: no way to find a pair in the table
    from kinetic_fm.studies import figures as F

    ticks, render = [], F._render

    def keep(fig, name, caption):
        ticks.extend([t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes[1:])
        return render(fig, name, caption)

    monkeypatch.setattr(F, "_render", keep)
    train = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(3)) * 2 - 1
    np.save(tmp_path / "train.npy", train.numpy())
    assert kfm_sample(tmp_path / "run", "--field", "empirical", "--train", tmp_path / "train.npy", "--n", 10,
                      "--seed-start", 100, "--steps", 3, "--shard-size", 4) == 0
    for samples, seeded in ((tmp_path / "run", True), (tmp_path / "x.npy", False)):
        np.save(tmp_path / "x.npy", read_samples(tmp_path / "run"))
        ticks.clear()
        assert main(["memorization", "--samples", str(samples), "--train", str(tmp_path / "train.npy"),
                     "--bootstrap", "0", "--no-progress", "--out", str(tmp_path / "audit.csv"),
                     "--figure", str(tmp_path / "audit.png")]) == 0, capsys.readouterr().err
        table = pd.read_csv(tmp_path / "audit.csv")
        shown = table.sort_values("ratio", kind="stable").head(8)       # the 8 smallest ratios, in order
        (labels,) = ticks
        assert len(labels) == 8
        for label, (_, row) in zip(labels, shown.iterrows()):
            lines = label.split("\n")
            assert lines[0] == f"{row['ratio']:.2f}" and lines[1] == f"sample {row['sample']}"
            assert lines[-1] == f"nearest {row['nearest']}"
            assert (lines[2] == f"seed {row['seed']}") if seeded else len(lines) == 3 and "seed" not in table


@pytest.mark.parametrize("rank", [0, 1])
def test_under_torchrun_the_setup_warnings_come_from_rank_0_alone(tmp_path, capsys, monkeypatch, rank):
    # every rank reads the same --train and flags: each said "holds uint8 values", "holds float64 items"
    # and "--k applies to ..." once per rank. A two-rank world without processes: the session and the
    # folder's lock (collectives) are stood in for, and the run stops before it would sample
    import contextlib
    import warnings

    import kinetic_fm.commands.sample as command
    import kinetic_fm.runs as runs
    from kinetic_fm.runs.distributed import Coordinator, World

    @contextlib.contextmanager
    def two_ranks(device=None, **kwargs):
        yield Coordinator(World(rank=rank, world_size=2, local_rank=rank)), torch.device("cpu")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(runs, "world_session", two_ranks)
    monkeypatch.setattr(command, "_lock_a_busy_folder", lambda *args: None)
    monkeypatch.setattr(command, "_trial_call", stopped)
    np.save(tmp_path / "u8.npy", np.random.default_rng(0).integers(0, 256, (16, 1, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "wide.npy", _points().double().numpy())
    said = {"u8.npy": "holds uint8 values (0 to 255)", "wide.npy": "holds float64 items, sampled in float32"}
    filters = list(warnings.filters)
    for name, warning in said.items():
        assert kfm_sample(tmp_path / f"run-{name}", "--field", "empirical", "--train", tmp_path / name, "--n", 2,
                          "--launch", "linear", "--landing", "linear", "--k", 2) == 130
        err = capsys.readouterr().err
        assert (warning in err) == (rank == 0), err
        assert ("--k applies to the exponential launch or landing only" in err) == (rank == 0), err
        assert "interrupted: while preparing the run" in err     # what stops a rank still comes from each
    assert warnings.filters == filters   # the other ranks' silence ends with the command


def test_a_subset_names_its_flags_where_they_are_arguments_not_in_prose(tmp_path):
    # --train-n and --train-seed replaced "n" and "seed" wherever they stood as words: a table's
    # warning "a label or seed column among them" read "a label or --train-seed column"
    from kinetic_fm.commands._rows import load_rows

    path = tmp_path / "table.parquet"
    pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0], "name": list("wxyz")}).to_parquet(path)
    with pytest.warns(UserWarning) as caught:
        rows, _, _, _ = load_rows("--train", str(path), None, False, specs=True, n=2, seed=1)
    assert rows.shape == (2, 2)
    text = " ".join(str(w.message) for w in caught)
    assert "a label or seed column among them counts as a feature: name one column with --train-key" in text
    assert "--train-seed" not in text and "--train-n" not in text
    with pytest.raises(ValueError, match=r"^--train-n must be an integer in \[1, 4\] \(the available items\), got 9"):
        load_rows("--train", str(path), None, False, specs=True, n=9, seed=1)


def test_a_spec_named_zip_as_samples_is_read_as_a_path_to_images(tmp_path, capsys):
    # --samples takes no data specs: a missing celeba:/x.zip is a .zip of images by its path, as it
    # always was (as --train, a spec): the loader says it is not found, --key that it is no array file
    from kinetic_fm.commands import _rows

    train = _saved(tmp_path, _points())
    value = f"celeba:{tmp_path / 'none.zip'}"
    assert _rows.is_folder_or_zip_path(value, specs=False) and not _rows.is_folder_or_zip_path(value)
    common = ["memorization", "--samples", value, "--train", str(train), "--no-progress"]
    assert main(common) == 2
    assert f"--samples: image source not found: {value} (expected a folder or a .zip)" in capsys.readouterr().err
    assert main([*common, "--key", "x"]) == 2
    assert (f"--key names an array inside a file; --samples {value!r} is a folder of images"
            in capsys.readouterr().err)


def test_what_reads_as_a_folder_or_zip_given_by_its_path(tmp_path, monkeypatch):
    # is_image_source answered True for any spec whose PATH ends in .zip (celeba:/x.zip, folder:/x.zip):
    # the name promised an image source, and specs are none of the paths it is asked about
    from kinetic_fm.commands import _rows

    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "imgs.zip").write_bytes(b"")
    (tmp_path / "celeba:local.zip").write_bytes(b"")     # KIND:PATH is the spec; the file is ./celeba:local.zip
    answers = {value: _rows.is_folder_or_zip_path(value) for value in (
        "celeba:/x.zip", "folder:/x.zip", "folder:imgs", "digits", "imgs", "imgs.zip", "IMGS.ZIP", "run",
        "t.npy", "celeba:local.zip", "./celeba:local.zip")}
    assert answers == {"celeba:/x.zip": False, "folder:/x.zip": False, "folder:imgs": False, "digits": False,
                       "imgs": True, "imgs.zip": True, "IMGS.ZIP": True, "run": True, "t.npy": False,
                       "celeba:local.zip": False, "./celeba:local.zip": True}
    assert not hasattr(_rows, "is_image_source")
    # a run folder is a folder, but no folder of images given by its path
    assert [_rows.image_folder_given(v) for v in ("imgs", "imgs.zip", "run", "celeba:/x.zip")] == [
        True, True, False, False]
